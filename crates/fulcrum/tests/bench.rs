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
    assert_eq!(file["schema"], 2);
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

/// Two workers as two targets, open model: each gets half the schedule, and results.json
/// attributes every response to the target that answered it.
#[test]
fn several_targets_share_the_load_evenly() {
    let scratch = Scratch::new("bench-targets");
    let w1 = worker("1", "i-bench-t1");
    let w2 = worker("1", "i-bench-t2");
    let (u1, u2) = (w1.url("/"), w2.url("/"));
    let out = scratch.path("results.json");
    let r = bench_json(&[
        &u1,
        &u2,
        "--rate",
        "200",
        "--duration",
        "2s",
        "-c",
        "4",
        "-t",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let total = r["responses"].as_u64().unwrap();
    assert!(
        (380..=420).contains(&total),
        "{total} responses for 400 due"
    );
    assert_eq!(r["errors"]["connect"], 0);
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let run = &file["runs"][0];
    assert_eq!(run["url"], u1.as_str());
    assert_eq!(run["targets"], serde_json::json!([u1, u2]));
    let by_target = run["by_target"].as_object().unwrap();
    assert_eq!(by_target.len(), 2);
    let mut sum = 0;
    for (url, id) in [(&u1, "i-bench-t1"), (&u2, "i-bench-t2")] {
        let n = by_target[url.as_str()]["responses"].as_u64().unwrap();
        let share = n as f64 / total as f64;
        assert!(
            (0.45..=0.55).contains(&share),
            "{url}: {n} of {total} responses"
        );
        // The target is who answered: its worker's own count agrees.
        assert_eq!(run["by_instance"][id]["responses"], n);
        sum += n;
    }
    assert_eq!(sum, total);
}

/// A mix against one worker: the URL's own path is ignored (`/cluster2` would be a 404 on a
/// cluster-1 worker), each send picks an entry by weight, and what was sent is counted.
#[test]
fn a_request_mix_sends_paths_by_weight() {
    let scratch = Scratch::new("bench-mix");
    let w = worker("1", "i-bench-mix");
    let mix = scratch.path("mix.toml");
    std::fs::write(
        &mix,
        "[[request]]\npath = \"/?work_us=0\"\nweight = 3\n\n[[request]]\npath = \"/cluster1?work_us=0\"\n",
    )
    .unwrap();
    let mix = mix.to_str().unwrap();
    let r = bench_json(&[&w.url("/cluster2"), "--mix", mix, "-n", "20000", "-c", "2"]);
    assert_eq!(r["responses"], 20000);
    assert_eq!(r["errors"]["status_4xx"], 0, "the URL's path was sent");
    let usage = &r["mix"];
    assert_eq!(usage["file"], mix);
    let entries = usage["entries"].as_array().unwrap();
    assert_eq!(entries[0]["path"], "/?work_us=0");
    assert_eq!(entries[0]["weight"], 3.0);
    assert_eq!(entries[1]["path"], "/cluster1?work_us=0");
    assert_eq!(entries[1]["weight"], 1.0);
    let sent: Vec<u64> = entries
        .iter()
        .map(|e| e["sent"].as_u64().unwrap())
        .collect();
    assert_eq!(sent.iter().sum::<u64>(), 20000);
    let ratio = sent[0] as f64 / sent[1] as f64;
    assert!(
        (2.85..=3.15).contains(&ratio),
        "sent {sent:?}: ratio {ratio}"
    );
    // The summary for a person says the same.
    let (code, out, err) = run(&[
        "bench",
        &w.url("/"),
        "--mix",
        mix,
        "-n",
        "40",
        "-c",
        "2",
        "-q",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("  mix         {mix}: /?work_us=0 (weight 3) ")),
        "{out}"
    );
}

#[test]
fn a_bad_mix_or_too_few_connections_is_refused_in_one_line() {
    let scratch = Scratch::new("bench-bad-mix");
    let mix = scratch.path("mix.toml");
    std::fs::write(&mix, "[[request]]\npath = \"/\"\nweight = -1\n").unwrap();
    let mix = mix.to_str().unwrap();
    // Nothing needs to listen: the mix is refused before anything is sent.
    let (code, _, err) = run(&["bench", "http://127.0.0.1:9/", "--mix", mix, "-n", "10"]);
    assert_ne!(code, 0);
    assert_eq!(
        err,
        format!("error: {mix}:3:10: expected a weight that is a finite number above 0, found -1\n")
    );
    let (code, _, err) = run(&[
        "bench",
        "http://127.0.0.1:9/a",
        "http://127.0.0.1:9/b",
        "-c",
        "1",
        "-n",
        "10",
    ]);
    assert_ne!(code, 0);
    assert_eq!(
        err,
        "error: 2 targets need at least as many connections (-c), not 1\n"
    );
}

/// What an echoing stub saw: method, path, one header, body.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, Option<String>, Vec<u8>)>>>;

/// Every kind of error a run counted, summed.
fn errors(r: &serde_json::Value) -> u64 {
    r["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum()
}

fn recording_stub() -> (fixture::Stub, Seen) {
    let seen: Seen = Default::default();
    let log = seen.clone();
    let stub = fixture::Stub::start(move |req: &fixture::StubRequest| {
        log.lock().unwrap().push((
            req.method.to_string(),
            req.target.clone(),
            req.headers
                .get("x-tenant")
                .map(|v| v.to_str().unwrap().to_owned()),
            req.body.to_vec(),
        ));
        http::Response::builder()
            .header("content-length", "5")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"hello",
            )))
            .unwrap()
    });
    (stub, seen)
}

#[test]
fn methods_headers_and_bodies_go_out_as_asked() {
    let scratch = Scratch::new("bench-shape");
    let (stub, seen) = recording_stub();
    let url = format!("http://{}/orders", stub.addr);
    let body = scratch.path("order.json");
    std::fs::write(&body, b"{\"item\": 42}").unwrap();
    let r = bench_json(&[
        &url,
        "-m",
        "POST",
        "-H",
        "x-tenant: acme",
        "--body",
        &format!("@{}", body.display()),
        "-n",
        "50",
        "-c",
        "2",
    ]);
    assert_eq!(r["responses"], 50);
    assert_eq!(errors(&r), 0, "{r}");
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 50);
    for (method, target, tenant, body) in &got {
        assert_eq!(
            (method.as_str(), target.as_str(), tenant.as_deref()),
            ("POST", "/orders", Some("acme"))
        );
        assert_eq!(body, b"{\"item\": 42}");
    }

    // HEAD: the answer's Content-Length announces a body that never comes, and no request
    // waits for it.
    seen.lock().unwrap().clear();
    let r = bench_json(&[&url, "-m", "HEAD", "-n", "30", "-c", "1", "--timeout", "2s"]);
    assert_eq!(r["responses"], 30, "{r}");
    assert_eq!(errors(&r), 0, "{r}");

    // A mix entry's own method and body.
    seen.lock().unwrap().clear();
    let mix = scratch.path("mix.toml");
    std::fs::write(
        &mix,
        "[[request]]\npath = \"/a\"\n\n[[request]]\npath = \"/b\"\nmethod = \"PUT\"\nbody = \"x=1\"\n",
    )
    .unwrap();
    let r = bench_json(&[&url, "--mix", mix.to_str().unwrap(), "-n", "200", "-c", "2"]);
    assert_eq!(r["responses"], 200);
    let got = seen.lock().unwrap().clone();
    assert!(got.iter().all(|(m, t, _, b)| match t.as_str() {
        "/a" => m == "GET" && b.is_empty(),
        "/b" => m == "PUT" && b == b"x=1",
        _ => false,
    }));
    assert!(got.iter().any(|(_, t, _, _)| t == "/b"));
}

#[test]
fn bad_methods_headers_and_bodies_are_one_line_errors() {
    for (args, message) in [
        (&["-m", "get"][..], "-m: expected a method like GET or POST"),
        (&["-H", "no colon"][..], "is not `Name: value`"),
        (
            &["-H", "Content-Length: 5"][..],
            "is the generator's own to send",
        ),
        (
            &["--body", "@/no/such/file"][..],
            "--body: cannot read /no/such/file",
        ),
    ] {
        let mut all = vec!["bench", "http://127.0.0.1:9/", "-n", "1"];
        all.extend_from_slice(args);
        let (code, _, err) = run(&all);
        assert_ne!(code, 0, "{args:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains(message),
            "{args:?}: expected `{message}` in {err}"
        );
    }
}

#[test]
fn https_targets_are_loaded_with_the_trust_asked_for() {
    use fulcrum_balancer::config::file::TlsSpec;
    let scratch = Scratch::new("bench-https");
    let w = worker("1", "i-bench-tls");
    let ca = fixture::TestCa::new();
    let mut file = fixture::routed([("/cluster1", fixture::target_group("c1", &[w.addr]))]);
    file.listen(
        "127.0.0.1:0",
        Some(TlsSpec {
            cert: Some("cert.pem".into()),
            key: Some("key.pem".into()),
            ..TlsSpec::default()
        }),
    );
    file.listen(
        "127.0.0.1:0",
        Some(TlsSpec {
            self_signed: true,
            ..TlsSpec::default()
        }),
    );
    file.access_log.enabled = false;
    let b = fixture::Balancer::start_file_with(
        &file,
        &[
            ("cert.pem", ca.cert.as_bytes()),
            ("key.pem", ca.key.as_bytes()),
        ],
    );
    let (signed, self_signed) = (b.listeners[1].0.port(), b.listeners[2].0.port());
    let ca_file = scratch.path("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let signed_url = format!("https://localhost:{signed}/cluster1");

    // Trusting the test CA: every request answered over TLS.
    let r = bench_json(&[
        &signed_url,
        "--cacert",
        ca_file.to_str().unwrap(),
        "-n",
        "300",
        "-c",
        "4",
    ]);
    assert_eq!((r["responses"].as_u64(), errors(&r)), (Some(300), 0), "{r}");
    assert_eq!(r["by_instance"]["i-bench-tls"]["responses"], 300, "{r}");

    // A self-signed listener with --insecure (-k).
    let r = bench_json(&[
        &format!("https://127.0.0.1:{self_signed}/cluster1"),
        "-k",
        "-n",
        "100",
        "-c",
        "2",
    ]);
    assert_eq!((r["responses"].as_u64(), errors(&r)), (Some(100), 0), "{r}");

    // Without trusting the CA, nothing gets through: every handshake fails, counted as a
    // connect error.
    let (code, out, _) = run(&["bench", &signed_url, "-n", "5", "-c", "1", "--json", "-q"]);
    assert_eq!(code, 0);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["responses"], 0, "{r}");
    assert!(r["errors"]["connect"].as_u64().unwrap() > 0, "{r}");

    let (code, _, err) = run(&["bench", &signed_url, "--cacert", "/no/such.pem", "-n", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("--cacert /no/such.pem"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

// ───────────── HTTP/2 (--h2) ─────────────

/// What the test-side HTTP/2 server saw.
#[derive(Default)]
struct H2Seen {
    /// Method, path and body of every request.
    requests: std::sync::Mutex<Vec<(String, String, Vec<u8>)>>,
    /// Connections that carried at least one request.
    connections_used: std::sync::atomic::AtomicUsize,
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
    /// The most requests in flight on any one connection.
    max_on_one_connection: std::sync::atomic::AtomicUsize,
}

/// A test-side h2c server (hyper's HTTP/2 only, no HTTP/1): answers `ok` after `delay`, and
/// counts connections and concurrent streams, so multiplexing can be seen from the server's
/// side. Runs until the test process ends (its thread is detached).
fn h2c_server(delay: Duration) -> (std::net::SocketAddr, std::sync::Arc<H2Seen>) {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    let seen = Arc::new(H2Seen::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let shared = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((stream, _)) = listener.accept().await {
                let seen = shared.clone();
                let on_this = Arc::new(AtomicUsize::new(0));
                let first = Arc::new(std::sync::Once::new());
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (seen, on_this, first) = (seen.clone(), on_this.clone(), first.clone());
                        async move {
                            use http_body_util::BodyExt;
                            first.call_once(|| {
                                seen.connections_used.fetch_add(1, SeqCst);
                            });
                            let now = seen.in_flight.fetch_add(1, SeqCst) + 1;
                            seen.max_in_flight.fetch_max(now, SeqCst);
                            let here = on_this.fetch_add(1, SeqCst) + 1;
                            seen.max_on_one_connection.fetch_max(here, SeqCst);
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes().to_vec());
                            tokio::time::sleep(delay).await;
                            seen.requests.lock().unwrap().push((
                                parts.method.to_string(),
                                parts.uri.path().to_owned(),
                                body.unwrap_or_default(),
                            ));
                            seen.in_flight.fetch_sub(1, SeqCst);
                            on_this.fetch_sub(1, SeqCst);
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
    });
    (addr, seen)
}

/// Two connections with eight streams each: the server sees two connections carry the whole
/// run with sixteen requests in flight, eight on one connection — multiplexed, not queued.
/// results.json says what was sent, and how.
#[test]
fn h2_streams_multiplex_requests_on_few_connections() {
    use std::sync::atomic::Ordering::SeqCst;
    let scratch = Scratch::new("bench-h2-streams");
    let (addr, seen) = h2c_server(Duration::from_millis(20));
    let out = scratch.path("results.json");
    let r = bench_json(&[
        &format!("http://{addr}/items"),
        "--h2",
        "--streams",
        "8",
        "-c",
        "2",
        "-n",
        "400",
        "-H",
        "Authorization: Bearer secret",
        "-H",
        "x-tenant: acme",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!((r["responses"].as_u64(), errors(&r)), (Some(400), 0), "{r}");
    assert_eq!(r["by_status_class"]["2xx"]["responses"], 400, "{r}");
    assert_eq!(seen.requests.lock().unwrap().len(), 400);
    assert_eq!(seen.connections_used.load(SeqCst), 2);
    assert_eq!(seen.max_in_flight.load(SeqCst), 16);
    assert_eq!(seen.max_on_one_connection.load(SeqCst), 8);
    assert_eq!(r["model"]["concurrency"], 16, "{r}");
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let sent = &file["runs"][0]["request"];
    assert_eq!(
        sent,
        &serde_json::json!({
            "protocol": "h2",
            "streams": 8,
            "method": "GET",
            "headers": [
                {"name": "Authorization", "value": "<redacted>"},
                {"name": "x-tenant", "value": "acme"},
            ],
            "body_bytes": 0,
            "body_file": null,
        })
    );
    // A file written before runs recorded what they sent still reads.
    let mut older = file.clone();
    older["runs"][0].as_object_mut().unwrap().remove("request");
    let older_path = scratch.path("older.json");
    std::fs::write(&older_path, serde_json::to_vec(&older).unwrap()).unwrap();
    let report_dir = scratch.path("report");
    let (code, _, err) = run(&[
        "report",
        older_path.to_str().unwrap(),
        "--out",
        report_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
}

/// A POST's body arrives whole over HTTP/2, from a file and inline (a mix entry's own), and
/// results.json names the file it came from.
#[test]
fn h2_posts_arrive_whole() {
    let scratch = Scratch::new("bench-h2-post");
    let (addr, seen) = h2c_server(Duration::ZERO);
    // Larger than HTTP/2's default 16 KiB frame and 64 KiB window: sent in several frames.
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let body = scratch.path("payload.bin");
    std::fs::write(&body, &payload).unwrap();
    let body_arg = format!("@{}", body.display());
    let out = scratch.path("results.json");
    let r = bench_json(&[
        &format!("http://{addr}/upload"),
        "--h2",
        "--streams",
        "4",
        "-m",
        "POST",
        "--body",
        &body_arg,
        "-n",
        "40",
        "-c",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!((r["responses"].as_u64(), errors(&r)), (Some(40), 0), "{r}");
    let got = std::mem::take(&mut *seen.requests.lock().unwrap());
    assert_eq!(got.len(), 40);
    for (method, path, got_body) in &got {
        assert_eq!((method.as_str(), path.as_str()), ("POST", "/upload"));
        assert!(got_body == &payload, "a body of {} bytes", got_body.len());
    }
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let sent = &file["runs"][0]["request"];
    assert_eq!(sent["method"], "POST");
    assert_eq!(sent["body_bytes"], 100_000);
    assert_eq!(sent["body_file"], body.to_str().unwrap());

    let mix = scratch.path("mix.toml");
    std::fs::write(
        &mix,
        "[[request]]\npath = \"/a\"\n\n[[request]]\npath = \"/b\"\nmethod = \"PUT\"\nbody = \"x=1\"\n",
    )
    .unwrap();
    let url = format!("http://{addr}/");
    let mix = mix.to_str().unwrap();
    let r = bench_json(&[&url, "--h2", "--mix", mix, "-n", "200", "-c", "2"]);
    assert_eq!((r["responses"].as_u64(), errors(&r)), (Some(200), 0), "{r}");
    let got = seen.requests.lock().unwrap().clone();
    assert!(got.iter().all(|(m, p, b)| match p.as_str() {
        "/a" => m == "GET" && b.is_empty(),
        "/b" => m == "PUT" && b == b"x=1",
        _ => false,
    }));
    assert!(got.iter().any(|(_, p, _)| p == "/b"));
}

/// The open model over HTTP/2: the schedule is kept with streams as with connections.
#[test]
fn h2_open_model_keeps_the_schedule() {
    let (addr, _seen) = h2c_server(Duration::from_millis(5));
    let r = bench_json(&[
        &format!("http://{addr}/"),
        "--h2",
        "--streams",
        "4",
        "-c",
        "1",
        "--rate",
        "300",
        "--duration",
        "2s",
    ]);
    let total = r["responses"].as_u64().unwrap();
    assert!(
        (580..=620).contains(&total),
        "{total} responses for 600 due"
    );
    assert_eq!(errors(&r), 0, "{r}");
    assert_eq!(r["unsent_requests"], 0);
    assert!(r["service_time"]["p50_ms"].as_f64().unwrap() >= 5.0, "{r}");
}

/// Through `fulcrum balance`: h2c on its plain listener, h2 over TLS trusting the test CA
/// (--cacert) and on a self-signed listener (-k); the balancer accepted one connection per -c
/// (and one for the generator's check that the target speaks HTTP/2), however many requests.
#[test]
fn h2_through_the_balancer_in_clear_and_over_tls() {
    use fulcrum_balancer::config::file::TlsSpec;
    let scratch = Scratch::new("bench-h2-balancer");
    let w = worker("1", "i-bench-h2");
    let ca = fixture::TestCa::new();
    let mut file = fixture::routed([("/cluster1", fixture::target_group("c1", &[w.addr]))]);
    for self_signed in [false, true] {
        let tls = TlsSpec {
            cert: (!self_signed).then(|| "cert.pem".into()),
            key: (!self_signed).then(|| "key.pem".into()),
            self_signed,
        };
        file.listen("127.0.0.1:0", Some(tls));
    }
    file.access_log.enabled = false;
    let b = fixture::Balancer::start_file_with(
        &file,
        &[
            ("cert.pem", ca.cert.as_bytes()),
            ("key.pem", ca.key.as_bytes()),
        ],
    );
    let accepted = || {
        fixture::metric_sum(
            &b.metrics(),
            "fulcrum_balancer_connections_accepted_total",
            &[],
        )
    };

    let before = accepted();
    let r = bench_json(&[
        &b.url("/cluster1"),
        "--h2",
        "--streams",
        "10",
        "-c",
        "2",
        "-n",
        "2000",
    ]);
    assert_eq!(
        (r["responses"].as_u64(), errors(&r)),
        (Some(2000), 0),
        "{r}"
    );
    assert_eq!(r["by_instance"]["i-bench-h2"]["responses"], 2000, "{r}");
    assert_eq!(accepted() - before, 3.0, "2 connections and the check");

    let ca_file = scratch.path("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let (signed, self_signed) = (b.listeners[1].0.port(), b.listeners[2].0.port());
    let r = bench_json(&[
        &format!("https://localhost:{signed}/cluster1"),
        "--h2",
        "--streams",
        "4",
        "--cacert",
        ca_file.to_str().unwrap(),
        "-n",
        "300",
        "-c",
        "2",
    ]);
    assert_eq!((r["responses"].as_u64(), errors(&r)), (Some(300), 0), "{r}");
    assert_eq!(r["by_instance"]["i-bench-h2"]["responses"], 300, "{r}");
    let r = bench_json(&[
        &format!("https://127.0.0.1:{self_signed}/cluster1"),
        "--h2",
        "--streams",
        "4",
        "-k",
        "-n",
        "100",
        "-c",
        "1",
    ]);
    assert_eq!((r["responses"].as_u64(), errors(&r)), (Some(100), 0), "{r}");
}

/// A server that speaks only HTTP/1.1 (a worker) is refused before the run, in one line that
/// says why; so is a header HTTP/2 cannot carry, and --streams without --h2.
#[test]
fn h2_against_an_http1_only_server_is_a_clear_error() {
    let w = worker("1", "i-bench-h1-only");
    let url = w.url("/cluster1");
    let (code, _, err) = run(&["bench", &url, "--h2", "-n", "10", "-c", "1"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(&format!("--h2: {url}: the server")), "{err}");
    assert!(err.contains("does not speak h2c"), "{err}");

    let (code, _, err) = run(&["bench", &url, "--h2", "-H", "Upgrade: websocket", "-n", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("`Upgrade` is connection-specific"), "{err}");
    let (code, _, err) = run(&["bench", &url, "--streams", "4", "-n", "1"]);
    assert_ne!(code, 0);
    assert!(err.contains("--h2"), "{err}");
}
