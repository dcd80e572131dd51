//! Per-worker weights and slow start, driven by curl: a weight-3 worker takes three requests
//! for every one of its neighbour's; one added by a reload starts with a trickle and reaches its
//! full share once `slow_start` has passed; bad settings are located errors.

mod fixture;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fixture::{
    eventually, loopback_config, run, target_group, Balancer, Scratch, Stub, StubRequest,
};
use fulcrum_balancer::Policy;
use http_body_util::Full;

fn named(name: &'static str) -> Stub {
    Stub::start(move |_: &StubRequest| {
        http::Response::new(Full::new(Bytes::from(format!("<{name}>"))))
    })
}

/// `n` requests in one curl (one connection, one after another): how many `b` answered.
fn answered_by_b(url: &str, n: usize) -> usize {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", &format!("{url}/[1-{n}]")])
        .output()
        .expect("curl is installed (scripts/install-test-deps)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("<a>").count() + text.matches("<b>").count(),
        n,
        "{text}"
    );
    text.matches("<b>").count()
}

#[test]
fn weights_split_requests_and_a_new_worker_ramps_up_over_slow_start() {
    let (a, b) = (named("a"), named("b"));
    let slow_start = Duration::from_secs(3);
    let mut group = target_group("g", &[a.addr]);
    group.policy = Policy::RoundRobin;
    group.weights.insert(b.addr.to_string(), 3);
    group.slow_start = slow_start;
    let mut file = loopback_config();
    file.group(group.clone()).route("/", "g");
    file.access_log.enabled = false;
    let lb = Balancer::start_file(&file);
    assert_eq!(answered_by_b(&lb.url("/x"), 10), 0);
    // a itself ramps up from its first healthy check: let it reach its full share first.
    std::thread::sleep(slow_start + Duration::from_secs(1));

    // b joins: its share starts at a trickle (5% of its weight of 3 against a's 1).
    group = group.workers([a.addr.to_string(), b.addr.to_string()]);
    file.target_groups[0] = fulcrum_balancer::config::file::unplaced(group);
    lb.write_file(&file);
    lb.proc.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || {
        lb.status()["target_groups"][0]["workers"]
            .as_array()
            .is_some_and(|w| w.len() == 2)
    }));
    let joined = Instant::now();
    let early = answered_by_b(&lb.url("/x"), 40);
    let early_share = lb.status()["target_groups"][0]["shares"][b.addr.to_string()]
        .as_f64()
        .unwrap();
    eprintln!("b took {early} of 40 just after joining, share {early_share:.2}");
    assert!(
        joined.elapsed() < slow_start / 2,
        "the early batch took too long"
    );
    // Without slow start b would take 30 of 40 at once.
    assert!(early <= 16, "{early} of 40 went to b just after it joined");
    assert!(early_share < 2.0, "b's share {early_share} while ramping");

    // Once slow start has passed (counted from b's first healthy check), b takes 3 of 4.
    std::thread::sleep(slow_start + Duration::from_secs(2));
    let status = lb.status();
    assert_eq!(
        status["target_groups"][0]["shares"][b.addr.to_string()],
        3.0,
        "{status}"
    );
    assert_eq!(answered_by_b(&lb.url("/x"), 400), 300);
}

#[test]
fn bad_weights_and_slow_starts_are_located_errors() {
    let dir = Scratch::new("weights-config");
    let path = dir.path("bad.toml");
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[route]]\nprefix = \"/\"\n\
                target_group = \"g\"\n\n[[target_group]]\nname = \"g\"\n\
                workers = [\"127.0.0.1:9001\"]\n";
    for (setting, message) in [
        (
            "weights = { \"127.0.0.1:9001\" = 0 }",
            "a weight is within 1..=1000",
        ),
        ("weights = { \"nowhere\" = 2 }", "weights: "),
        (
            "slow_start = \"20m\"",
            "slow_start is 0s (off) or within 1s..=900s",
        ),
        ("slow_start = \"soon\"", "expected a duration"),
    ] {
        std::fs::write(&path, format!("{base}{setting}\n")).unwrap();
        let (code, _, err) = run(&["balance", "--config", path.to_str().unwrap(), "--check"]);
        assert_eq!(code, 1, "{setting}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{setting}: {err}");
        // Errors about a group's settings point at the group.
        assert!(
            err.contains(&format!("{}:8:1: ", path.display()))
                || err.contains(&format!("{}:11:", path.display())),
            "{setting}: {err}"
        );
        assert!(
            err.contains(message),
            "{setting}: expected `{message}` in {err}"
        );
    }
    std::fs::write(
        &path,
        format!("{base}weights = {{ \"127.0.0.1:9001\" = 5 }}\nslow_start = \"30s\"\n"),
    )
    .unwrap();
    let (code, _, err) = run(&["balance", "--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(code, 0, "{err}");
}
