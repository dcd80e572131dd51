//! `fulcrum bench`: real generator, real workers (and a balancer) on loopback.

mod fixture;

use std::time::Duration;

use fixture::{run, Proc, Scratch};

fn worker(cluster: &str, id: &str) -> Proc {
    Proc::start(&[
        "worker",
        "--cluster",
        cluster,
        "--port",
        "0",
        "--instance-id",
        id,
        "--work-us",
        "0",
    ])
}

fn bench_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench", "--json", "-q"];
    all.extend_from_slice(args);
    let (code, out, err) = run(&all);
    assert_eq!(code, 0, "bench {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn closed_model_counts_exactly_and_attributes_every_response() {
    let scratch = Scratch::new("bench-closed");
    let w1 = worker("1", "i-bench-a");
    let w2 = worker("2", "i-bench-b");
    let balancer = Proc::start(&[
        "balance",
        "--listen",
        "127.0.0.1:0",
        "--route",
        &format!("/={},{}", w1.addr, w2.addr),
        "--policy",
        "round-robin",
    ]);
    let out = scratch.path("results.json");
    let r = bench_json(&[
        &balancer.url("/"),
        "-n",
        "600",
        "-c",
        "12",
        "-t",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r["responses"], 600);
    assert_eq!(r["errors"]["status_5xx"], 0);
    assert_eq!(r["connections"], 12);
    assert_eq!(r["threads"], 2);
    // Per-instance and per-cluster counts add up to exactly what was sent.
    let by_instance = r["by_instance"].as_object().unwrap();
    let sum: u64 = by_instance
        .values()
        .map(|g| g["responses"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, 600);
    assert_eq!(by_instance["i-bench-a"]["cluster"], "1");
    assert_eq!(
        by_instance["i-bench-a"]["responses"], 300,
        "round-robin splits evenly"
    );
    let by_cluster = r["by_cluster"].as_object().unwrap();
    assert_eq!(
        by_cluster["1"]["responses"].as_u64().unwrap()
            + by_cluster["2"]["responses"].as_u64().unwrap(),
        600
    );
    // Percentiles are ordered and come from the merged histogram.
    let l = &r["latency"];
    let p = |k: &str| l[k].as_f64().unwrap();
    assert!(p("min_ms") <= p("p50_ms") && p("p50_ms") <= p("p90_ms") && p("p90_ms") <= p("p99_ms"));
    assert!(p("p99_ms") <= p("p999_ms") && p("p999_ms") <= p("max_ms"));
    assert_eq!(l["count"], 600);
    // The timeline covers every response; the generator measured itself.
    let timeline_total: u64 = r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["responses"].as_u64().unwrap())
        .sum();
    assert_eq!(timeline_total, 600);
    assert!(r["generator"]["cpu_seconds"].as_f64().unwrap() > 0.0);
    // results.json holds the same run, with the schema version and the command.
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(file["schema"], 1);
    assert_eq!(file["runs"][0]["responses"], 600);
    assert!(file["command"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "-n"));
    assert!(file["machine"]["cores"].as_u64().unwrap() >= 1);
}

#[test]
fn errors_are_counted_by_kind() {
    // Nothing listens on this port: every request is a connect error.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let r = bench_json(&[
        &format!("http://127.0.0.1:{port}/"),
        "-n",
        "20",
        "-c",
        "2",
        "--timeout",
        "1s",
    ]);
    assert_eq!(r["responses"], 0);
    assert_eq!(r["errors"]["connect"], 20);
    // The other cluster's route answers 404 on a worker: counted as 4xx.
    let w = worker("1", "i-bench-404");
    let r = bench_json(&[&w.url("/cluster2"), "-n", "30", "-c", "3"]);
    assert_eq!(r["responses"], 30);
    assert_eq!(r["errors"]["status_4xx"], 30);
    assert_eq!(r["by_status_class"]["4xx"]["responses"], 30);
}

#[test]
fn thresholds_set_the_exit_code() {
    let w = worker("1", "i-bench-thr");
    let url = w.url("/cluster1");
    let (code, out, _) = run(&[
        "bench",
        &url,
        "-n",
        "200",
        "-c",
        "4",
        "-q",
        "--threshold",
        "errors=0,p99<5s,rps>1",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("thresholds  all 3 hold"), "{out}");
    let (code, _, err) = run(&[
        "bench",
        &url,
        "-n",
        "200",
        "-c",
        "4",
        "-q",
        "--threshold",
        "p99<1us",
    ]);
    assert_eq!(code, 3);
    assert!(err.contains("thresholds failed: p99<1us"), "{err}");
    let (code, _, err) = run(&["bench", &url, "-n", "10", "--threshold", "p99<5"]);
    assert_eq!(code, 1);
    assert!(err.contains("unit"), "{err}");
}

/// The open model's correction, proven: freeze the target for about a second in the middle of a
/// constant-rate run. Requests due during the freeze are timed from when they were due, so the
/// corrected p99 shows the stall, while the service time (what a closed-loop tool reports)
/// barely notices it.
#[test]
fn open_model_corrects_coordinated_omission() {
    let w = worker("1", "i-bench-co");
    let url = w.url("/cluster1");
    let pid = w.pid();
    let freezer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        // SAFETY: signals to the worker this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(1000));
        unsafe { libc::kill(pid, libc::SIGCONT) };
    });
    let r = bench_json(&[
        &url,
        "--rate",
        "200",
        "--duration",
        "4s",
        "-c",
        "2",
        "--timeout",
        "5s",
    ]);
    freezer.join().unwrap();
    let corrected = r["latency"]["p99_ms"].as_f64().unwrap();
    let service = r["service_time"]["p99_ms"].as_f64().unwrap();
    assert!(
        corrected > 500.0,
        "corrected p99 {corrected} ms should show the 1 s freeze"
    );
    assert!(
        corrected > 10.0 * service,
        "corrected p99 {corrected} ms vs service time p99 {service} ms"
    );
    assert_eq!(r["target_rate"], 200.0);
    assert!(
        r["late_requests"].as_u64().unwrap() > 50,
        "{}",
        r["late_requests"]
    );
    // Everything due was sent and answered once the worker thawed.
    assert_eq!(r["unsent_requests"], 0);
    assert_eq!(r["errors"]["timeout"], 0);
}
