//! The in-band load report: ORCA's `endpoint-load-metrics` header in its TEXT form.
//!
//! Envoy, gRPC and vLLM read this header; fulcrum's worker writes it on every response and
//! the balancer's `inband` telemetry source parses it. Only the TEXT encoding is supported
//! (`TEXT key=value, key=value`); the JSON and binary encodings are not.

use std::fmt::Write as _;

/// The response header that carries a [`LoadReport`].
pub const LOAD_REPORT_HEADER: &str = "endpoint-load-metrics";

/// Longest header value the parser accepts. Real reports are < 200 bytes; the bound keeps a
/// hostile worker from making the balancer scan megabytes per response.
pub const MAX_REPORT_LEN: usize = 1024;

/// One worker's view of its own load, as it reports it.
///
/// Every field is optional in ORCA; a report with none of the fields we use is still valid
/// (it simply tells the balancer nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadReport {
    /// CPU used over the worker's sampling window, as a fraction of the CPU it is allowed
    /// (its cgroup quota, or the machine's cores). Usually in `[0, 1]`; may exceed 1 briefly.
    pub cpu_utilization: Option<f64>,
    /// Requests served per second over the same window.
    pub rps_fractional: Option<f64>,
    /// Error responses (5xx) per second over the same window.
    pub eps: Option<f64>,
    /// Requests in flight on the worker when the report was written (`named_metrics.inflight`).
    pub inflight: Option<f64>,
    /// CPU the worker is allowed, in cores (`named_metrics.cpu_cores`): its capacity.
    pub cpu_cores: Option<f64>,
    /// Of that, what it could use itself lately (`named_metrics.cpu_available`): the allowance
    /// less what other processes sharing it took (a co-tenant, a noisy neighbour).
    pub cpu_available: Option<f64>,
    /// 90th percentile of its recent service times in ms, queueing and throttling included
    /// (`named_metrics.service_p90_ms`): what every balancer's requests met lately.
    pub service_p90_ms: Option<f64>,
}

/// Why a load-report header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadReportError {
    #[error("load report is longer than {MAX_REPORT_LEN} bytes")]
    TooLong,
    #[error("load report does not start with `TEXT ` (only the TEXT encoding is supported)")]
    NotText,
    #[error("load report entry `{0}` is not `key=value`")]
    NotKeyValue(String),
    #[error("load report value for `{key}` is not a finite, non-negative number: `{value}`")]
    BadNumber { key: String, value: String },
}

impl LoadReport {
    /// Renders the report as an `endpoint-load-metrics` header value.
    pub fn to_header_value(&self) -> String {
        let mut out = String::with_capacity(128);
        out.push_str("TEXT ");
        let mut first = true;
        let mut field = |name: &str, value: Option<f64>, precision: usize| {
            if let Some(v) = value {
                if !first {
                    out.push_str(", ");
                }
                first = false;
                let _ = write!(out, "{name}={v:.precision$}");
            }
        };
        field("cpu_utilization", self.cpu_utilization, 3);
        field("rps_fractional", self.rps_fractional, 1);
        field("eps", self.eps, 1);
        field("named_metrics.inflight", self.inflight, 0);
        field("named_metrics.cpu_cores", self.cpu_cores, 3);
        field("named_metrics.cpu_available", self.cpu_available, 3);
        field("named_metrics.service_p90_ms", self.service_p90_ms, 2);
        out
    }

    /// Parses an `endpoint-load-metrics` header value in the TEXT encoding.
    ///
    /// Unknown keys are ignored (ORCA allows many more than we use), as are empty entries;
    /// a known key with a value that is not a finite non-negative number rejects the report.
    pub fn parse(value: &str) -> Result<LoadReport, LoadReportError> {
        if value.len() > MAX_REPORT_LEN {
            return Err(LoadReportError::TooLong);
        }
        let body = value
            .trim_start()
            .strip_prefix("TEXT")
            .filter(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
            .ok_or(LoadReportError::NotText)?;
        let mut report = LoadReport::default();
        for entry in body.split(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let (key, raw) = entry
                .split_once('=')
                .ok_or_else(|| LoadReportError::NotKeyValue(entry.to_owned()))?;
            let key = key.trim();
            let slot = match key {
                "cpu_utilization" => &mut report.cpu_utilization,
                "rps_fractional" => &mut report.rps_fractional,
                "eps" => &mut report.eps,
                "named_metrics.inflight" => &mut report.inflight,
                "named_metrics.cpu_cores" => &mut report.cpu_cores,
                "named_metrics.cpu_available" => &mut report.cpu_available,
                "named_metrics.service_p90_ms" => &mut report.service_p90_ms,
                _ => continue,
            };
            let raw = raw.trim();
            let number = raw
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| LoadReportError::BadNumber {
                    key: key.to_owned(),
                    value: raw.to_owned(),
                })?;
            *slot = Some(number);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_header_form() {
        let report = LoadReport {
            cpu_utilization: Some(0.42),
            rps_fractional: Some(113.0),
            eps: Some(0.0),
            inflight: Some(3.0),
            cpu_cores: Some(0.25),
            cpu_available: Some(0.125),
            service_p90_ms: Some(4.5),
        };
        let text = report.to_header_value();
        assert_eq!(
            text,
            "TEXT cpu_utilization=0.420, rps_fractional=113.0, eps=0.0, \
             named_metrics.inflight=3, named_metrics.cpu_cores=0.250, \
             named_metrics.cpu_available=0.125, named_metrics.service_p90_ms=4.50"
        );
        assert_eq!(LoadReport::parse(&text).unwrap(), report);
    }

    #[test]
    fn parses_envoy_style_reports_and_ignores_unknown_keys() {
        let r = LoadReport::parse(
            "TEXT cpu_utilization=0.3, rps_fractional=10.0, eps=1, mem_utilization=0.9, \
             named_metrics.queue=4",
        )
        .unwrap();
        assert_eq!(r.cpu_utilization, Some(0.3));
        assert_eq!(r.rps_fractional, Some(10.0));
        assert_eq!(r.eps, Some(1.0));
        assert_eq!(r.inflight, None);
        assert_eq!(LoadReport::parse("TEXT").unwrap(), LoadReport::default());
        assert_eq!(
            LoadReport::parse("TEXT , ,").unwrap(),
            LoadReport::default()
        );
    }

    #[test]
    fn rejects_what_it_cannot_trust() {
        assert_eq!(
            LoadReport::parse("JSON {\"cpu_utilization\": 1}"),
            Err(LoadReportError::NotText)
        );
        assert_eq!(
            LoadReport::parse("TEXTcpu=1"),
            Err(LoadReportError::NotText)
        );
        assert!(matches!(
            LoadReport::parse("TEXT cpu_utilization"),
            Err(LoadReportError::NotKeyValue(_))
        ));
        for bad in ["-0.5", "NaN", "inf", "abc", ""] {
            assert!(
                matches!(
                    LoadReport::parse(&format!("TEXT cpu_utilization={bad}")),
                    Err(LoadReportError::BadNumber { .. })
                ),
                "{bad} accepted"
            );
        }
        let long = format!("TEXT {}", "x".repeat(MAX_REPORT_LEN));
        assert_eq!(LoadReport::parse(&long), Err(LoadReportError::TooLong));
    }
}
