//! How numbers are written in the report: milliseconds with precision that follows their size,
//! rates and counts with thousands separators, fractions as percentages; and the few composite
//! values written the same way wherever they appear (a load model, errors by kind).

use fulcrum_loadgen::results::{Errors, Model};

/// Groups the integer part of a decimal string in thousands: `12345.6` → `12,345.6`.
fn thousands(s: &str) -> String {
    let (sign, rest) = match s.strip_prefix('-') {
        Some(r) => ("-", r),
        None => ("", s),
    };
    let (int, frac) = match rest.find('.') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let mut grouped = String::with_capacity(int.len() + int.len() / 3);
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}{grouped}{frac}")
}

/// A value with about three significant digits (never fewer than the integer part).
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    let s = if a == 0.0 {
        "0".to_string()
    } else if a < 1.0 {
        format!("{v:.3}")
    } else if a < 10.0 {
        format!("{v:.2}")
    } else if a < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    };
    thousands(&s)
}

/// Milliseconds, number only (tables put the unit in the header).
pub fn ms(v: f64) -> String {
    num(v)
}

/// Milliseconds with the unit, for prose.
pub fn ms_u(v: f64) -> String {
    format!("{} ms", num(v))
}

/// A rate in requests per second, number only.
pub fn rate(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    if v.abs() < 10.0 {
        thousands(&format!("{v:.1}"))
    } else {
        thousands(&format!("{v:.0}"))
    }
}

/// A rate with its unit, for prose.
pub fn rate_u(v: f64) -> String {
    format!("{} req/s", rate(v))
}

pub fn count(n: u64) -> String {
    thousands(&n.to_string())
}

/// A fraction (0.0–1.0) as a percentage.
pub fn pct(f: f64) -> String {
    if !f.is_finite() {
        return "–".into();
    }
    let p = f * 100.0;
    if p != 0.0 && p.abs() < 10.0 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

/// A ratio such as `1.63×`, `45.0×` or `151×`.
pub fn times(r: f64) -> String {
    if !r.is_finite() {
        return "–".into();
    }
    if r < 10.0 {
        format!("{r:.2}×")
    } else if r < 100.0 {
        format!("{r:.1}×")
    } else {
        format!("{r:.0}×")
    }
}

/// `1 round`, `2 rounds`: a count with its noun.
pub fn counted(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

pub fn secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

/// `closed: 1,000 requests, 100 at a time` or `open: 500 req/s for 10.0 s`.
pub fn model(m: &Model) -> String {
    match m {
        Model::Closed {
            requests,
            concurrency,
        } => format!(
            "closed: {} requests, {} at a time",
            count(*requests),
            concurrency
        ),
        Model::Open { rate, duration_s } => {
            format!("open: {} for {}", rate_u(*rate), secs(*duration_s))
        }
    }
}

/// `2 connect, 1 timeout` (kinds with a count only), or `none`.
pub fn error_kinds(e: &Errors) -> String {
    let parts: Vec<String> = [
        ("connect", e.connect),
        ("timeout", e.timeout),
        ("I/O", e.io),
        ("4xx", e.status_4xx),
        ("5xx", e.status_5xx),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| format!("{} {k}", count(*n)))
    .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_about_three_digits_and_group_thousands() {
        assert_eq!(num(0.4123), "0.412");
        assert_eq!(num(4.123), "4.12");
        assert_eq!(num(41.23), "41.2");
        assert_eq!(num(412.3), "412");
        assert_eq!(num(12345.6), "12,346");
        assert_eq!(num(-1234.0), "-1,234");
        assert_eq!(num(0.0), "0");
        assert_eq!(rate(1234.4), "1,234");
        assert_eq!(rate(2.25), "2.2");
        assert_eq!(count(1_000_000), "1,000,000");
        assert_eq!(pct(0.1234), "12%");
        assert_eq!(pct(0.0123), "1.2%");
        assert_eq!(pct(1.0), "100%");
        assert_eq!(times(1.6666), "1.67×");
        assert_eq!(times(45.0), "45.0×");
        assert_eq!(times(151.37), "151×");
        assert_eq!(counted(1, "round"), "1 round");
        assert_eq!(counted(2, "round"), "2 rounds");
    }
}
