//! The balancer's configuration parser on arbitrary text: it must answer `Ok` or a located
//! error, never panic, and what it accepts must be internally consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match fulcrum_balancer::Config::parse(text, "fuzz.toml", None) {
        Ok(config) => {
            assert!(!config.listeners.is_empty());
            assert!(!config.routes.is_empty());
            for route in &config.routes {
                assert!(route.prefix.starts_with('/'));
                assert!(route.target_group < config.target_groups.len());
            }
            for group in &config.target_groups {
                assert!(group.max_in_flight_per_worker >= 1);
                assert!(group.retry.max_attempts >= 1);
            }
        }
        Err(e) => {
            // Located inside the text (1-based), or not located at all.
            let lines = text.split('\n').count();
            assert!(e.line <= lines, "{e} is past the last line ({lines})");
            assert_eq!(e.line == 0, e.column == 0, "{e}");
            // The one-line rendering the command line prints.
            let _ = e.to_string();
        }
    }
});
