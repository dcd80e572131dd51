//! The `endpoint-load-metrics` parser on arbitrary header values: a worker (or anything in
//! front of one) controls this text, and the balancer parses it on every response.
#![no_main]

use fulcrum_telemetry::{LoadReport, MAX_REPORT_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(report) = LoadReport::parse(text) else {
        return;
    };
    assert!(text.len() <= MAX_REPORT_LEN);
    let fields = [
        report.cpu_utilization,
        report.rps_fractional,
        report.eps,
        report.inflight,
        report.cpu_cores,
    ];
    for v in fields.into_iter().flatten() {
        assert!(v.is_finite() && v >= 0.0, "accepted {v} from {text:?}");
    }
    // What the worker would write for this report parses again, to the same fields present.
    let rendered = report.to_header_value();
    if rendered.len() <= MAX_REPORT_LEN {
        let again = LoadReport::parse(&rendered)
            .unwrap_or_else(|e| panic!("re-parsing {rendered:?} (from {text:?}): {e}"));
        assert_eq!(
            again.cpu_utilization.is_some(),
            report.cpu_utilization.is_some()
        );
        assert_eq!(again.cpu_cores.is_some(), report.cpu_cores.is_some());
    }
});
