//! Per-client rate limits, driven by curl: a client past its burst gets 429 JSON with
//! Retry-After and its bucket refills at the configured rate; keyed by a header, two API keys
//! from one address have a bucket each; bad settings are located errors.

mod fixture;

use std::process::Command;
use std::time::Duration;

use fixture::{routed, run, target_group, worker, Balancer, Scratch};
use fulcrum_balancer::config::file::{unplaced, RateLimitSpec};

/// `n` requests in one curl run (one connection, one after another), each with `extra` curl
/// arguments: the status codes, in order.
fn statuses(url: &str, n: usize, extra: &[&str]) -> Vec<u16> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\\n",
        ])
        .args(extra)
        .arg(format!("{url}?[1-{n}]"))
        .output()
        .expect("curl is installed (scripts/install-test-deps)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

fn limited(rate: f64, burst: u32, key: &str) -> (fixture::Proc, Balancer) {
    let w = worker(1, "i-limited", &["--work-us", "0"]);
    let mut file = routed([("/cluster1", target_group("c1", &[w.addr]))]);
    file.access_log.enabled = false;
    file.rate_limit = Some(unplaced(RateLimitSpec {
        requests_per_second: rate,
        burst,
        key: key.into(),
        max_clients: 1000,
    }));
    let b = Balancer::start_file(&file);
    (w, b)
}

#[test]
fn a_client_past_its_burst_gets_429_with_retry_after_and_refills_at_the_rate() {
    let (_w, b) = limited(2.0, 5, "source");
    let url = b.url("/cluster1");
    let codes = statuses(&url, 8, &[]);
    assert_eq!(codes[..5], [200; 5], "{codes:?}");
    assert!(codes[5..].iter().all(|c| *c == 429), "{codes:?}");

    let out = Command::new("curl")
        .args(["-sS", "-D", "-", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 429"), "{text}");
    assert!(text.contains("retry-after: 1\r\n"), "{text}");
    let body: serde_json::Value =
        serde_json::from_str(text.rsplit("\r\n\r\n").next().unwrap()).unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");

    // At 2 per second, a second and a half gives three tokens back (less than the burst).
    std::thread::sleep(Duration::from_millis(1500));
    let codes = statuses(&url, 5, &[]);
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 3, "{codes:?}");

    // HTTP/2 clients share the same bucket. (One curl per request: curl 7.88 fails to reuse
    // an h2c prior-knowledge connection, "Error in the HTTP2 framing layer", before sending.)
    for _ in 0..2 {
        assert_eq!(statuses(&url, 1, &["--http2-prior-knowledge"]), [429]);
    }

    let status = b.status();
    assert_eq!(status["rate_limit"]["clients"], 1, "{status}");
    let metrics = b.metrics();
    assert!(
        metrics.contains("fulcrum_balancer_errors_total{error=\"rate_limited\"}"),
        "{metrics}"
    );
}

#[test]
fn keyed_by_a_header_each_api_key_has_its_own_bucket() {
    let (_w, b) = limited(0.5, 2, "header:X-Api-Key");
    let url = b.url("/cluster1");
    let alice = statuses(&url, 3, &["-H", "x-api-key: alice"]);
    let bob = statuses(&url, 3, &["-H", "x-api-key: bob"]);
    assert_eq!(alice, [200, 200, 429]);
    assert_eq!(bob, [200, 200, 429]);
    // Without the header, the source address is the key.
    assert_eq!(statuses(&url, 3, &[]), [200, 200, 429]);
    assert_eq!(b.status()["rate_limit"]["clients"], 3);
}

#[test]
fn bad_rate_limits_are_located_errors() {
    let dir = Scratch::new("rate-config");
    let path = dir.path("bad.toml");
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[route]]\nprefix = \"/\"\n\
                target_group = \"g\"\n\n[[target_group]]\nname = \"g\"\n\
                workers = [\"127.0.0.1:9001\"]\n\n[rate_limit]\n";
    for (settings, message) in [
        (
            "requests_per_second = 0\nburst = 1",
            "requests_per_second must be above 0",
        ),
        (
            "requests_per_second = 5\nburst = 0",
            "burst must be at least 1",
        ),
        (
            "requests_per_second = 5\nburst = 5\nkey = \"cookie\"",
            "`source` or `header:NAME`",
        ),
        (
            "requests_per_second = 5\nburst = 5\nmax_clients = 1",
            "max_clients",
        ),
        ("requests_per_second = 5", "missing field `burst`"),
    ] {
        std::fs::write(&path, format!("{base}{settings}\n")).unwrap();
        let (code, _, err) = run(&["balance", "--config", path.to_str().unwrap(), "--check"]);
        assert_eq!(code, 1, "{settings}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{settings}: {err}");
        // Pointed at the `[rate_limit]` table.
        assert!(
            err.contains(&format!("{}:12:", path.display())),
            "{settings}: {err}"
        );
        assert!(
            err.contains(message),
            "{settings}: expected `{message}` in {err}"
        );
    }
}
