//! Pass/fail thresholds for CI, k6-style: `p99<50ms,errors=0,rps>100`.
//!
//! Metrics: `p50 p90 p99 p999 max mean` (durations: `ms`, `s` or `us`), `errors` (a count),
//! `error_rate` (a percentage, `%` optional), `rps` (achieved responses per second).
//! Operators: `<`, `<=`, `>`, `>=`, `=`.

use std::fmt;

use crate::results::Run;

#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub metric: Metric,
    pub op: Op,
    /// Milliseconds for latencies, a count for errors, percent for error_rate, per second for rps.
    pub value: f64,
    text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    P50,
    P90,
    P99,
    P999,
    Max,
    Mean,
    Errors,
    ErrorRate,
    Rps,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("threshold `{text}`: {why}")]
pub struct ThresholdError {
    pub text: String,
    pub why: String,
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses a comma-separated list of thresholds.
pub fn parse(spec: &str) -> Result<Vec<Threshold>, ThresholdError> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_one)
        .collect()
}

fn parse_one(text: &str) -> Result<Threshold, ThresholdError> {
    let err = |why: &str| ThresholdError {
        text: text.to_owned(),
        why: why.to_owned(),
    };
    let pos = text
        .find(['<', '>', '='])
        .ok_or_else(|| err("expected an operator: < <= > >= ="))?;
    let (name, rest) = text.split_at(pos);
    let (op, value) = if let Some(v) = rest.strip_prefix("<=") {
        (Op::Le, v)
    } else if let Some(v) = rest.strip_prefix(">=") {
        (Op::Ge, v)
    } else if let Some(v) = rest.strip_prefix('<') {
        (Op::Lt, v)
    } else if let Some(v) = rest.strip_prefix('>') {
        (Op::Gt, v)
    } else {
        (Op::Eq, rest.trim_start_matches('=').trim_start_matches('='))
    };
    let metric = match name.trim() {
        "p50" => Metric::P50,
        "p90" => Metric::P90,
        "p99" => Metric::P99,
        "p999" | "p99.9" => Metric::P999,
        "max" => Metric::Max,
        "mean" => Metric::Mean,
        "errors" => Metric::Errors,
        "error_rate" => Metric::ErrorRate,
        "rps" => Metric::Rps,
        _ => {
            return Err(err(
                "unknown metric; one of p50 p90 p99 p999 max mean errors error_rate rps",
            ))
        }
    };
    let value = value.trim();
    let number = |s: &str| s.trim().parse::<f64>().map_err(|_| err("not a number"));
    let value = match metric {
        Metric::P50 | Metric::P90 | Metric::P99 | Metric::P999 | Metric::Max | Metric::Mean => {
            if let Some(v) = value.strip_suffix("ms") {
                number(v)?
            } else if let Some(v) = value.strip_suffix("us") {
                number(v)? / 1000.0
            } else if let Some(v) = value.strip_suffix('s') {
                number(v)? * 1000.0
            } else {
                return Err(err("a latency needs a unit: ms, s or us"));
            }
        }
        Metric::ErrorRate => number(value.trim_end_matches('%'))?,
        Metric::Errors | Metric::Rps => number(value)?,
    };
    Ok(Threshold {
        metric,
        op,
        value,
        text: text.to_owned(),
    })
}

impl Threshold {
    /// The measured value this threshold reads from a run.
    pub fn measured(&self, run: &Run) -> f64 {
        let l = &run.latency;
        match self.metric {
            Metric::P50 => l.p50_ms,
            Metric::P90 => l.p90_ms,
            Metric::P99 => l.p99_ms,
            Metric::P999 => l.p999_ms,
            Metric::Max => l.max_ms,
            Metric::Mean => l.mean_ms,
            Metric::Errors => (run.errors.total() + run.unsent_requests) as f64,
            Metric::ErrorRate => {
                let total = run.responses + run.errors.connect + run.errors.timeout + run.errors.io;
                if total == 0 {
                    0.0
                } else {
                    100.0 * (run.errors.total() as f64) / total as f64
                }
            }
            Metric::Rps => run.achieved_rate,
        }
    }

    pub fn holds(&self, run: &Run) -> bool {
        let m = self.measured(run);
        match self.op {
            Op::Lt => m < self.value,
            Op::Le => m <= self.value,
            Op::Gt => m > self.value,
            Op::Ge => m >= self.value,
            Op::Eq => (m - self.value).abs() < 1e-9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_k6_style_list() {
        let t = parse("p99<50ms, errors=0,rps>=100 , error_rate<1%,max<=2s,p50<800us").unwrap();
        assert_eq!(t.len(), 6);
        assert_eq!(
            (t[0].metric, t[0].op, t[0].value),
            (Metric::P99, Op::Lt, 50.0)
        );
        assert_eq!(
            (t[1].metric, t[1].op, t[1].value),
            (Metric::Errors, Op::Eq, 0.0)
        );
        assert_eq!((t[2].metric, t[2].op), (Metric::Rps, Op::Ge));
        assert_eq!(t[3].value, 1.0);
        assert_eq!(t[4].value, 2000.0);
        assert_eq!(t[5].value, 0.8);
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert!(parse("p99<50").unwrap_err().why.contains("unit"));
        assert!(parse("p42<5ms").unwrap_err().why.contains("unknown metric"));
        assert!(parse("errors").unwrap_err().why.contains("operator"));
        assert!(parse("rps>lots").unwrap_err().why.contains("number"));
    }
}
