//! `fulcrum balance` under faults and abuse, with real processes on loopback: workers killed,
//! frozen, down or failing fast; slow, malformed and oversized clients; overload; SIGTERM,
//! SIGHUP and discovery changes while serving; the retry budget.
//!
//! Every answer the balancer gives itself is JSON with `error` and `request_id`. Requests its
//! HTTP/1.1 codec refuses before they reach a route (a malformed request line or field, an
//! ambiguous or invalid length, a bad Host, a head beyond the codec's hard limits) are counted in
//! `fulcrum_balancer_client_protocol_errors_total` and the connection is closed after the
//! answer; everything later (the configured limits, routing, workers) in
//! `fulcrum_balancer_errors_total`. No answer at all, the connection closed: a request head not
//! complete within `timeouts.client_header` (slowloris), HTTP/2 protocol errors (a GOAWAY or a
//! RST_STREAM), and a connection beyond `limits.max_connections`, closed at accept
//! (`fulcrum_balancer_connections_rejected_total`). Each phase of an exchange has its own
//! timeout, blamed on whoever stalls; only the worker's failures count towards its ejection.
//!
//! Tests that keep CPUs busy on purpose have `under_load` or `busy` in their names (nextest's
//! one-at-a-time `cpu-heavy` group).

mod fixture;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fixture::{
    block_on, by_instance, client, echo_and_c1, eventually, get, metric_sum, one_group, paced,
    policy_group, routed, send, stub_status, target_group, worker, Balancer, Proc, Reply, Shot,
    Stub,
};
use fulcrum_balancer::config::WhenAllUnhealthy;
use fulcrum_balancer::Policy;

/// Runs a paced load in the background; `join` returns the shots and the instant the run
/// started, so events can be placed on its timeline.
struct Load {
    started: Instant,
    thread: std::thread::JoinHandle<Vec<Shot>>,
}

impl Load {
    fn start(url: String, per_second: u32, run: Duration) -> Load {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            block_on(async move {
                let c = client();
                tx.send(Instant::now()).unwrap();
                paced(&c, &url, per_second, run).await
            })
        });
        let started = rx.recv().unwrap();
        Load { started, thread }
    }

    fn join(self) -> Vec<Shot> {
        self.thread.join().unwrap()
    }

    /// How far into the run `t` is.
    fn offset(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.started)
    }
}

/// Panics with the first few failures if any request failed or was not a 200.
fn assert_all_ok(shots: &[Shot], what: &str) {
    let bad: Vec<String> = shots
        .iter()
        .filter(|s| !matches!(&s.result, Ok(r) if r.status == 200))
        .map(|s| match &s.result {
            Ok(r) => format!("at {:?}: {} {}", s.at, r.status, r.text()),
            Err(e) => format!("at {:?}: {e}", s.at),
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} requests failed: {:?}",
        bad.len(),
        shots.len(),
        &bad[..bad.len().min(10)]
    );
}

/// The balancer's own error answer: JSON with a stable code and the request id it also puts in
/// `x-request-id`.
fn assert_error_answer(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), "application/json");
    let j = r.json();
    assert_eq!(j["error"], code, "{j}");
    assert_eq!(j["request_id"], r.header("x-request-id"), "{j}");
    assert!(j["message"].as_str().is_some_and(|m| !m.is_empty()), "{j}");
}

fn errors_counted(b: &Balancer, code: &str) -> f64 {
    metric_sum(
        &b.metrics(),
        "fulcrum_balancer_errors_total",
        &[&format!("error=\"{code}\"")],
    )
}

// ───────────────────────────── workers dying ─────────────────────────────

#[test]
fn sigkill_of_one_of_four_workers_under_load_loses_no_request() {
    let mut ws: Vec<Proc> = (0..4)
        .map(|i| worker(1, &format!("i-k{i}"), &["--work-us", "200"]))
        .collect();
    let addrs: Vec<SocketAddr> = ws.iter().map(|w| w.addr).collect();
    let b = Balancer::start_file(&one_group(&addrs, |_| {}));
    let victim = addrs[3];
    // Settle first: a worker's start-up calibration shows as CPU in its first load window, and
    // cpu-aware rightly avoids it until that report is refreshed or stale; the fault under
    // test should meet four workers in their steady state.
    assert!(
        eventually(Duration::from_secs(10), || {
            for _ in 0..8 {
                get(&b.url("/cluster1"));
            }
            addrs.iter().all(|a| {
                b.worker_status(*a).is_some_and(|w| {
                    w["health"] == "healthy"
                        && w["telemetry"]["inband"]["cpu_utilization"]
                            .as_f64()
                            .is_some_and(|u| u < 0.5)
                })
            })
        }),
        "the workers never settled: {}",
        b.status()
    );
    let load = Load::start(b.url("/cluster1"), 300, Duration::from_secs(6));

    std::thread::sleep(Duration::from_millis(1500));
    ws.pop().unwrap().signal(libc::SIGKILL); // reaped when dropped here
    let killed = Instant::now();
    let out = |b: &Balancer| {
        b.worker_status(victim)
            .is_some_and(|w| w["available"] == false)
    };
    assert!(
        eventually(Duration::from_secs(3), || out(&b)),
        "the killed worker was never taken out: {}",
        b.status()
    );
    let ejected_after = killed.elapsed();

    std::thread::sleep(Duration::from_millis(2500).saturating_sub(load.offset(Instant::now())));
    let port = victim.port().to_string();
    let restarted = Proc::start(&[
        "worker",
        "--cluster",
        "1",
        "--port",
        &port,
        "--instance-id",
        "i-k3-again",
        "--work-us",
        "200",
    ]);
    let restarted_at = load.offset(Instant::now());
    let shots = load.join();
    let status = b.status();
    drop(restarted);

    assert_all_ok(&shots, "SIGKILL of one worker");
    assert!(
        ejected_after <= Duration::from_secs(1),
        "ejected only after {ejected_after:?}"
    );
    let back = shots
        .iter()
        .filter(|s| s.instance() == Some("i-k3-again"))
        .map(|s| s.at + s.latency)
        .min()
        .unwrap_or_else(|| panic!("the restarted worker never took traffic: {status}"));
    assert!(
        back.saturating_sub(restarted_at) <= Duration::from_secs(3),
        "restarted at {restarted_at:?}, first answer at {back:?}"
    );
    eprintln!(
        "{} requests, ejected after {ejected_after:?}, back {:?} after restart; {:?}",
        shots.len(),
        back.saturating_sub(restarted_at),
        by_instance(shots.iter().filter_map(|s| s.result.as_ref().ok()))
    );
}

#[test]
fn sigstop_worker_requests_move_away_and_nothing_hangs() {
    let ws: Vec<Proc> = (0..3)
        .map(|i| worker(1, &format!("i-s{i}"), &["--work-us", "200"]))
        .collect();
    let addrs: Vec<SocketAddr> = ws.iter().map(|w| w.addr).collect();
    let b = Balancer::start_file(&one_group(&addrs, |g| {
        g.response_timeout = Duration::from_secs(1);
    }));
    // Resumed even if an assertion fails, so the worker can be killed and reaped normally.
    struct Resume<'a>(&'a Proc);
    impl Drop for Resume<'_> {
        fn drop(&mut self) {
            self.0.signal(libc::SIGCONT);
        }
    }
    let frozen = &ws[2];
    let load = Load::start(b.url("/cluster1"), 60, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    frozen.signal(libc::SIGSTOP);
    let _resume = Resume(frozen);
    let stopped_at = load.offset(Instant::now());
    // Once health checks have marked it down, it gets nothing more. (Passive ejection may take
    // it out sooner, but an ejection ends after its time and the worker is tried again, on
    // probation: that one request may go to it.)
    assert!(
        eventually(Duration::from_secs(4), || b
            .worker_status(frozen.addr)
            .is_some_and(|w| w["health"] == "unhealthy")),
        "{}",
        b.status()
    );
    let picks = |b: &Balancer| {
        b.worker_status(frozen.addr).unwrap()["picks"]
            .as_u64()
            .unwrap()
    };
    let before = picks(&b);
    let shots = load.join();
    assert_eq!(picks(&b), before, "the frozen worker was still picked");

    assert_all_ok(&shots, "SIGSTOP of one worker");
    let slowest = shots.iter().map(|s| s.latency).max().unwrap();
    assert!(
        slowest < Duration::from_millis(2500),
        "a request waited {slowest:?}; the response timeout is 1 s"
    );
    let late = shots
        .iter()
        .filter(|s| s.at > stopped_at && s.latency >= Duration::from_millis(900))
        .count();
    eprintln!(
        "{} requests, {late} waited for the frozen worker's timeout, slowest {slowest:?}",
        shots.len()
    );
    assert!(
        metric_sum(
            &b.metrics(),
            "fulcrum_balancer_retries_total",
            &["reason=\"reset_or_timeout\""]
        ) >= late as f64
    );
}

#[test]
fn all_workers_of_a_route_down_answers_503_json_at_once() {
    let c1: Vec<Proc> = (0..2)
        .map(|i| worker(1, &format!("i-d{i}"), &["--work-us", "0"]))
        .collect();
    let c2 = worker(2, "i-up", &["--work-us", "0"]);
    let down: Vec<SocketAddr> = c1.iter().map(|w| w.addr).collect();
    let mut strict = target_group("c1-strict", &down);
    strict.when_all_unhealthy = WhenAllUnhealthy::Reject;
    let b = Balancer::start_file(&routed([
        ("/cluster1", target_group("c1", &down)),
        ("/cluster1/strict", strict),
        ("/cluster2", target_group("c2", &[c2.addr])),
    ]));
    assert_eq!(get(&b.url("/cluster1")).status, 200);
    for w in &c1 {
        w.signal(libc::SIGKILL);
    }
    drop(c1);
    assert!(
        eventually(Duration::from_secs(6), || down.iter().all(|a| b
            .worker_status(*a)
            .is_some_and(|w| w["health"] == "unhealthy"))),
        "{}",
        b.status()
    );
    block_on(async {
        let c = client();
        for i in 0..20 {
            // Failing open (the default) and rejecting both answer at once.
            let path = if i % 2 == 0 {
                "/cluster1"
            } else {
                "/cluster1/strict"
            };
            let t0 = Instant::now();
            let r = send(&c, "GET", &b.url(path), b"").await.unwrap();
            let took = t0.elapsed();
            assert_error_answer(&r, 503, "no_healthy_workers");
            assert_eq!(r.header("retry-after"), "1");
            assert!(took <= Duration::from_millis(100), "{path}: {took:?}");
            let ok = send(&c, "GET", &b.url("/cluster2"), b"").await.unwrap();
            assert_eq!(ok.status, 200);
            assert_eq!(ok.header("x-fulcrum-instance"), "i-up");
        }
    });
    assert_eq!(errors_counted(&b, "no_healthy_workers"), 20.0);
}

/// Closed-loop clients against three real workers and one that answers 500 at once (and
/// passes its health checks): the fast failer must not soak up the traffic.
fn sinkhole_share(policy: Policy) -> (f64, String) {
    let ws: Vec<Proc> = (0..3)
        .map(|i| worker(1, &format!("i-ok{i}"), &["--work-us", "500"]))
        .collect();
    let failing = Stub::start(stub_status(500));
    let mut addrs: Vec<SocketAddr> = ws.iter().map(|w| w.addr).collect();
    addrs.push(failing.addr);
    let b = Balancer::start_file(&one_group(&addrs, |g| g.policy = policy));
    let url = b.url("/cluster1");
    let statuses = block_on(async move {
        let c = client();
        let stop = Instant::now() + Duration::from_secs(3);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (c, url) = (c.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while Instant::now() < stop {
                    got.push(send(&c, "GET", &url, b"").await.unwrap().status);
                }
                got
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let total = statuses.len() as f64;
    let to_failer = failing.hits() as f64;
    assert_eq!(
        statuses.iter().filter(|s| **s == 500).count() as f64,
        to_failer,
        "every 500 is the failing worker's, passed through"
    );
    (
        to_failer / total,
        format!("{}: {to_failer} of {total}; {}", policy.name(), b.status()),
    )
}

#[test]
fn a_worker_failing_fast_does_not_sink_traffic_under_load() {
    // An even share would be 25 %; a sinkhole takes most of it.
    for policy in [Policy::CpuAware, Policy::LeastOutstanding] {
        let (share, detail) = sinkhole_share(policy);
        eprintln!(
            "{}: {:.1} % to the failing worker",
            policy.name(),
            share * 100.0
        );
        assert!(share < 0.05, "{detail}");
    }
}

// ───────────────────────────── hostile clients ─────────────────────────────

#[test]
fn slowloris_connections_are_closed_after_the_header_timeout() {
    let w = worker(1, "i-sl", &["--work-us", "0"]);
    let mut file = one_group(&[w.addr], |_| {});
    file.timeouts.client_header = Duration::from_secs(1);
    let b = Balancer::start_file(&file);
    let addr = b.proc.addr;
    let admin = b.admin;
    let url = b.url("/cluster1");
    let (closed, normal) = block_on(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        // 400 trickle an HTTP/1.1 head, 50 the HTTP/2 preface, 50 send nothing at all; and
        // two more hold the admin listener the same ways.
        let mut slow = Vec::new();
        for i in 0..502 {
            let (kind, head): (&str, &'static [u8]) = match i % 10 {
                _ if i == 500 => ("admin silent", b""),
                _ if i == 501 => ("admin h1 head", b"GET /status HTTP/1.1\r\nHost: slow\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaa"),
                0 => ("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
                1 => ("silent", b""),
                _ => (
                    "h1 head",
                    b"GET /cluster1 HTTP/1.1\r\nHost: slow\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                ),
            };
            let to = if i >= 500 { admin } else { addr };
            slow.push(tokio::spawn(async move {
                // The balancer's clock starts at its accept, somewhere between asking to
                // connect and this task seeing the connection (on a crowded machine, well
                // after): "not before the timeout" is timed from the first, "not late" from
                // the second.
                let asked = Instant::now();
                let stream = tokio::net::TcpStream::connect(to).await.unwrap();
                let t0 = Instant::now();
                let (mut rd, mut wr) = stream.into_split();
                let trickle = async move {
                    for byte in head {
                        if wr.write_all(&[*byte]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    // Bytes exhausted: just hold the connection.
                    std::future::pending::<()>().await;
                };
                let mut buf = [0u8; 1024];
                let closed = async {
                    loop {
                        match rd.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {} // an error answer may come first
                        }
                    }
                };
                let closed_after = tokio::select! {
                    _ = trickle => None,
                    _ = closed => Some((asked.elapsed(), t0.elapsed())),
                    _ = tokio::time::sleep(Duration::from_secs(8)) => None,
                };
                (kind, closed_after)
            }));
        }
        // Normal requests alongside, from a client that lets its idle pooled connections go
        // before the balancer's 1 s timeout does (as clients should): one closed by the
        // server just as a request goes out on it would fail, a race of HTTP/1.1 itself.
        let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_millis(500))
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build_http();
        let normal = paced(&c, &url, 20, Duration::from_secs(2)).await;
        let mut closed = Vec::new();
        for t in slow {
            closed.push(t.await.unwrap());
        }
        (closed, normal)
    });
    assert_all_ok(&normal, "normal requests next to 500 slow ones");
    let open: Vec<&str> = closed
        .iter()
        .filter(|(_, c)| c.is_none())
        .map(|(kind, _)| *kind)
        .collect();
    assert!(
        open.is_empty(),
        "{} of 502 slow connections were never closed: {open:?}",
        open.len()
    );
    let times: Vec<(Duration, Duration)> = closed.into_iter().filter_map(|(_, c)| c).collect();
    let first = times.iter().map(|t| t.0).min().unwrap();
    let last = times.iter().map(|t| t.1).max().unwrap();
    eprintln!("slow connections closed between {first:?} and {last:?} after connecting");
    assert!(
        first >= Duration::from_millis(900),
        "closed before the timeout: {first:?}"
    );
    assert!(last <= Duration::from_secs(4), "closed late: {last:?}");
    assert!(
        eventually(Duration::from_secs(3), || metric_sum(
            &b.metrics(),
            "fulcrum_balancer_connections_open",
            &[]
        ) == 0.0),
        "connections still counted as open"
    );
    assert!(
        metric_sum(
            &b.metrics(),
            "fulcrum_balancer_client_protocol_errors_total",
            &["error=\"header_timeout\""]
        ) >= 500.0
    );
}

#[test]
fn idle_http2_connections_are_closed_and_busy_ones_are_kept() {
    use http_body_util::{BodyExt as _, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let w = worker(1, "i-idle", &["--work-us", "0", "--max-work-us", "2000000"]);
    let mut file = one_group(&[w.addr], |_| {});
    file.timeouts.client_idle = Duration::from_secs(1);
    let b = Balancer::start_file(&file);
    let addr = b.proc.addr;
    let (busy_status, idle) = block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        // Resolves when the balancer closes the connection.
        let conn = tokio::spawn(conn);
        // One request busy for longer than the idle timeout: the connection is not idle.
        let req = http::Request::get(format!("http://{addr}/cluster1?work_us=1300000"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = tx
            .send_request(req)
            .await
            .expect("the busy request is answered");
        let status = resp.status().as_u16();
        resp.into_body().collect().await.unwrap();
        // Then nothing: closed about a second after the last request ended.
        let idle_from = Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(10), conn).await;
        assert!(closed.is_ok(), "an idle HTTP/2 connection was never closed");
        (status, idle_from.elapsed())
    });
    assert_eq!(busy_status, 200);
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(4),
        "closed {idle:?} after going idle, not ~1 s"
    );
}

/// A raw exchange's status code, content type and body.
fn raw_answer(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let out = fixture::raw_exchange(addr, request, Duration::from_secs(3));
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

#[test]
fn malformed_oversized_and_truncated_requests_get_4xx_and_the_balancer_keeps_serving() {
    use std::io::Write as _;
    let w = worker(1, "i-mal", &["--work-us", "0"]);
    // The echo stub reads every body whole, so body errors surface at the balancer.
    let echo = Stub::start(stub_status(200));
    let mut file = echo_and_c1(echo.addr, w.addr);
    file.routes[0].get_mut().max_body_bytes = Some(1024);
    let b = Balancer::start_file(&file);
    let addr = b.proc.addr;
    let header = |n: usize| format!("X-Big: {}\r\n", "a".repeat(n));
    let many = |n: usize| (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
    // (what, request, status, the JSON error code): framing errors are the codec's (counted as
    // client protocol errors), limits beyond them the route's (counted as errors).
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("bad request line", b"GARBAGE\r\n\r\n".to_vec(), 400, "bad_request"),
        (
            "bad header line",
            b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "unknown version",
            b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
            505,
            "version_not_supported",
        ),
        (
            "conflicting content-length",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
                .to_vec(),
            400,
            "bad_content_length",
        ),
        (
            "invalid chunked encoding",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n"
                .to_vec(),
            400,
            "bad_request_body",
        ),
        (
            "chunked body over the route limit",
            format!(
                "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n320\r\n{a}\r\n320\r\n{a}\r\n0\r\n\r\n",
                a = "a".repeat(0x320)
            )
            .into_bytes(),
            413,
            "body_too_large",
        ),
        (
            "declared body over the route limit",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n".to_vec(),
            413,
            "body_too_large",
        ),
        (
            "40 KB of headers",
            format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", header(40_000)).into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "150 header fields",
            format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", many(150)).into_bytes(),
            431,
            "too_many_headers",
        ),
        (
            "300 header fields",
            format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", many(300)).into_bytes(),
            431,
            "too_many_headers",
        ),
        (
            "9 KB request target",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000)).into_bytes(),
            414,
            "uri_too_long",
        ),
        (
            "70 KB request target",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            414,
            "uri_too_long",
        ),
    ];
    for (what, req, status, code) in &cases {
        let (got, content_type, body) = raw_answer(addr, req);
        assert_eq!(got, *status, "{what}: {body}");
        assert_eq!(content_type, "application/json", "{what}");
        let j: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
        assert_eq!(j["error"], *code, "{what}: {j}");
        assert!(
            j["request_id"].as_str().is_some_and(|id| !id.is_empty()),
            "{what}: {j}"
        );
        assert_eq!(get(&b.url("/cluster1")).status, 200, "after {what}");
    }

    // 100 KB of headers: beyond what the codec reads for a head at all.
    let (got, _, _) = raw_answer(
        addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", header(100_000)).as_bytes(),
    );
    assert_eq!(got, 431);

    // Truncated: a head cut short gets nothing (the client left); a body cut short by a
    // client that stops sending gets 400.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /cluster1 HTTP/1.1\r\nHos").unwrap();
    drop(s);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut out);
    assert!(out.starts_with("HTTP/1.1 400"), "truncated body: {out}");
    assert!(out.contains("\"error\":\"bad_request_body\""), "{out}");

    assert_eq!(get(&b.url("/cluster1")).status, 200);
    assert!(
        b.proc.stderr_text().find("panicked").is_none(),
        "{}",
        b.proc.stderr_text()
    );
    let m = b.metrics();
    for (code, at_least) in [
        ("bad_request_body", 2.0),
        ("body_too_large", 2.0),
        ("headers_too_large", 1.0),
        ("too_many_headers", 1.0),
        ("uri_too_long", 1.0),
    ] {
        let n = metric_sum(
            &m,
            "fulcrum_balancer_errors_total",
            &[&format!("error=\"{code}\"")],
        );
        assert!(n >= at_least, "{code}: {n} in\n{m}");
    }
    // The codec's refusals, counted separately.
    for (code, at_least) in [
        ("bad_request", 2.0),
        ("version_not_supported", 1.0),
        ("bad_content_length", 1.0),
        ("too_many_headers", 1.0),
        ("uri_too_long", 1.0),
        ("headers_too_large", 1.0),
    ] {
        let n = metric_sum(
            &m,
            "fulcrum_balancer_client_protocol_errors_total",
            &[&format!("error=\"{code}\"")],
        );
        assert!(n >= at_least, "{code}: {n} in\n{m}");
    }
}

#[test]
fn overload_answers_503_with_retry_after_at_once_under_load() {
    let w = worker(1, "i-ov", &["--max-work-us", "1000000"]);
    let b = Balancer::start_file(&one_group(&[w.addr], |g| {
        g.max_in_flight_per_worker = 2;
        g.queue = 2;
        g.queue_timeout = Duration::from_secs(10);
    }));
    let url = b.url("/cluster1?work_us=300000");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let c = client();
    let held: Vec<_> = (0..4)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            rt.spawn(async move { send(&c, "GET", &url, b"").await.unwrap() })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || {
            let s = b.status();
            s["workers"][0]["in_flight"] == 2 && s["target_groups"][0]["queued"] == 2
        }),
        "never full: {}",
        b.status()
    );
    rt.block_on(async {
        let extra: Vec<_> = (0..6)
            .map(|_| {
                let (c, url) = (c.clone(), url.clone());
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    let r = send(&c, "GET", &url, b"").await.unwrap();
                    (r, t0.elapsed())
                })
            })
            .collect();
        for t in extra {
            let (r, took) = t.await.unwrap();
            assert_error_answer(&r, 503, "overloaded");
            assert_eq!(r.header("retry-after"), "1");
            assert!(took < Duration::from_millis(250), "not at once: {took:?}");
        }
        for t in held {
            assert_eq!(t.await.unwrap().status, 200, "admitted requests complete");
        }
    });
    assert_eq!(errors_counted(&b, "overloaded"), 6.0);
}

// ───────────────────────────── retry budget ─────────────────────────────

#[test]
fn retry_budget_holds_when_every_worker_fails() {
    let stubs: Vec<Stub> = (0..3).map(|_| Stub::start(stub_status(503))).collect();
    let addrs: Vec<SocketAddr> = stubs.iter().map(|s| s.addr).collect();
    let b = Balancer::start_file(&one_group(&addrs, |g| {
        g.retry.max_attempts = 3;
        g.retry.budget_percent = 20;
        g.retry.min_retries_per_second = 1;
    }));
    let shots = block_on(paced(
        &client(),
        &b.url("/cluster1"),
        100,
        Duration::from_secs(2),
    ));
    let requests = shots.len() as f64;
    for s in &shots {
        let r = s.result.as_ref().unwrap();
        // The last worker's own answer, passed through once the budget says stop.
        assert_eq!(r.status, 503, "{}", r.text());
    }
    let m = b.metrics();
    let retries = metric_sum(&m, "fulcrum_balancer_retries_total", &[]);
    let denied = metric_sum(&m, "fulcrum_balancer_retries_denied_total", &[]);
    let attempts: u64 = stubs.iter().map(|s| s.hits()).sum();
    eprintln!("{requests} requests, {retries} retries, {denied} denied, {attempts} attempts");
    // 20 % of the requests in the 10 s window, or the floor of 1/s × 10 s, whichever is more;
    // a few may race past the check.
    let budget = (0.2 * requests).max(10.0);
    assert!(
        retries <= budget + 3.0,
        "{retries} retries for {requests} requests"
    );
    assert!(retries >= 10.0, "the budget was not used: {retries}");
    assert!(denied > 0.0);
    assert_eq!(
        attempts as f64,
        requests + retries,
        "each retry is one more attempt"
    );

    // With no other worker to go to there is no retry to count, and the client gets the
    // worker's own answer rather than a 502 in its place.
    let only = Stub::start(stub_status(503));
    let b = Balancer::start_file(&one_group(&[only.addr], |g| g.retry.max_attempts = 3));
    for _ in 0..10 {
        assert_eq!(get(&b.url("/cluster1")).status, 503);
    }
    let m = b.metrics();
    assert_eq!(only.hits(), 10);
    assert_eq!(metric_sum(&m, "fulcrum_balancer_retries_total", &[]), 0.0);
}

// ───────────────────────────── shutdown, reload, discovery ─────────────────────────────

#[test]
fn sigterm_under_load_drains_every_in_flight_request_and_exits_zero() {
    use std::io::{Read as _, Write as _};
    let ws: Vec<Proc> = (0..2).map(|i| worker(1, &format!("i-t{i}"), &[])).collect();
    let addrs: Vec<SocketAddr> = ws.iter().map(|w| w.addr).collect();
    let mut file = one_group(&addrs, |g| {
        g.max_in_flight_per_worker = 3;
        g.queue_timeout = Duration::from_secs(20);
    });
    file.shutdown_timeout = Duration::from_secs(20);
    let mut b = Balancer::start_file(&file);
    // An idle keep-alive client must not hold the drain up.
    let mut idle = std::net::TcpStream::connect(b.proc.addr).unwrap();
    idle.write_all(b"GET /cluster1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    assert!(idle.read(&mut buf).unwrap() > 0);

    let url = b.url("/cluster1?work_us=100000");
    let (tx, rx) = std::sync::mpsc::channel();
    let load = std::thread::spawn(move || {
        block_on(async move {
            let c = client();
            let tasks: Vec<_> = (0..14)
                .map(|_| {
                    let (c, url) = (c.clone(), url.clone());
                    tokio::spawn(async move { send(&c, "GET", &url, b"").await })
                })
                .collect();
            let _ = tx.send(());
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        })
    });
    rx.recv().unwrap();
    // 6 at the workers, 8 waiting in the balancer's queue.
    assert!(
        eventually(Duration::from_secs(5), || {
            let s = b.status();
            let in_flight: u64 = s["workers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["in_flight"].as_u64().unwrap())
                .sum();
            in_flight == 6 && s["target_groups"][0]["queued"] == 8
        }),
        "{}",
        b.status()
    );
    b.proc.signal(libc::SIGTERM);
    let signalled = Instant::now();
    // No new connections once it stops accepting.
    assert!(eventually(Duration::from_secs(2), || {
        std::net::TcpStream::connect(b.proc.addr).is_err()
    }));
    let answers = load.join().unwrap();
    for a in &answers {
        let r = a.as_ref().expect("an in-flight request was lost");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let exit = b
        .proc
        .wait_timeout(Duration::from_secs(10))
        .expect("the balancer did not exit");
    assert_eq!(exit.code(), Some(0), "{}", b.proc.stderr_text());
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "the idle connection held the drain up"
    );
    assert!(b.proc.stderr_text().contains("drained; exiting"));
}

#[test]
fn sighup_reload_swaps_the_config_without_losing_requests_and_keeps_it_when_invalid() {
    let c1: Vec<Proc> = (0..2)
        .map(|i| worker(1, &format!("i-r{i}"), &["--work-us", "500"]))
        .collect();
    let c2 = worker(2, "i-r2", &["--work-us", "0"]);
    let c1_addrs: Vec<SocketAddr> = c1.iter().map(|w| w.addr).collect();
    // The reload also shortens the header timeout, which bounds idle keep-alive connections.
    let config = |extra_route: bool, policy: Policy| {
        let mut file = routed([("/cluster1", policy_group("g", policy, &c1_addrs))]);
        if extra_route {
            file.timeouts.client_header = Duration::from_secs(1);
            file.route("/cluster2", "c2")
                .group(target_group("c2", &[c2.addr]));
        }
        file
    };
    let b = Balancer::start_file(&config(false, Policy::CpuAware));
    assert_eq!(get(&b.url("/cluster2")).status, 404);
    let load = Load::start(b.url("/cluster1"), 150, Duration::from_secs(3));

    std::thread::sleep(Duration::from_millis(1000));
    b.write_file(&config(true, Policy::RoundRobin));
    b.proc.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(3), || b.status()
        ["config_generation"]
        == 2));
    std::thread::sleep(Duration::from_millis(500));
    b.write_config(
        &config(true, Policy::RoundRobin)
            .to_toml()
            .replace("[[route]]", "[[rout]]"),
    );
    b.proc.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(3), || metric_sum(
        &b.metrics(),
        "fulcrum_balancer_config_reloads_total",
        &["result=\"rejected\""]
    ) == 1.0));
    let shots = load.join();
    assert_all_ok(&shots, "reloads under load");

    let s = b.status();
    assert_eq!(
        s["config_generation"], 2,
        "the invalid config was not swapped in"
    );
    assert_eq!(s["target_groups"][0]["policy"], "round-robin");
    let r = get(&b.url("/cluster2"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-fulcrum-instance"), "i-r2");
    assert_eq!(
        metric_sum(
            &b.metrics(),
            "fulcrum_balancer_config_reloads_total",
            &["result=\"ok\""]
        ),
        1.0
    );
    let stderr = b.proc.stderr_text();
    assert!(
        stderr.contains("configuration rejected; keeping the one in force"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown field `rout`"), "{stderr}");

    // Connections accepted after the reload are served under the new header timeout: one
    // request, then idle, and the balancer closes it after about 1 s instead of 30 s.
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(b.listeners[0].0).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET /cluster2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let idle_from = loop {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if body.len() >= length {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                break Instant::now();
            }
        }
    };
    let closed = conn.read(&mut buf);
    let idle = idle_from.elapsed();
    assert!(matches!(closed, Ok(0)), "{closed:?} after {idle:?}");
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(5),
        "an idle keep-alive connection was closed after {idle:?}, not ~1 s"
    );
}

#[test]
fn discovery_adds_and_drains_workers_while_serving_under_load() {
    let ws: Vec<Proc> = (0..3)
        .map(|i| worker(1, &format!("i-dis{i}"), &["--work-us", "2000"]))
        .collect();
    let [a, bw, c] = [ws[0].addr, ws[1].addr, ws[2].addr];
    let list = |addrs: &[SocketAddr]| {
        format!(
            "{{\"workers\": [{}]}}",
            addrs
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut d = target_group("d", &[]);
    d.discovery_file = Some("workers.json".into());
    let config = routed([("/", d)]);
    let b = Balancer::start_file_with(&config, &[("workers.json", list(&[a, bw]).as_bytes())]);
    let write_list = |addrs: &[SocketAddr]| {
        let tmp = b.dir.path("workers.json.new");
        std::fs::write(&tmp, list(addrs)).unwrap();
        std::fs::rename(&tmp, b.dir.path("workers.json")).unwrap();
    };
    let known = |addr: SocketAddr| b.worker_status(addr).is_some();
    assert!(eventually(Duration::from_secs(3), || known(a) && known(bw)));

    let load = Load::start(b.url("/cluster1"), 150, Duration::from_secs(6));
    std::thread::sleep(Duration::from_millis(1000));
    write_list(&[a, bw, c]);
    let added_at = load.offset(Instant::now());
    assert!(eventually(Duration::from_secs(3), || known(c)));

    // A reload keeps what the balancer learnt about discovered workers.
    std::thread::sleep(Duration::from_millis(700));
    let served_before = b.worker_status(a).unwrap()["requests"].as_u64().unwrap();
    b.write_file(&config);
    b.proc.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(3), || b.status()
        ["config_generation"]
        == 2));
    let served_after = b.worker_status(a).map(|w| w["requests"].as_u64().unwrap());
    assert!(
        served_after.is_some_and(|n| n >= served_before),
        "a reload forgot discovered worker {a}: {served_before} requests before, {served_after:?} after"
    );
    let stderr = b.proc.stderr_text();
    assert!(
        !stderr.contains("worker removed; draining"),
        "a reload started draining discovered workers that are still listed: {stderr}"
    );

    std::thread::sleep(Duration::from_millis(800));
    write_list(&[a, c]);
    let removed_at = load.offset(Instant::now());
    assert!(
        eventually(Duration::from_secs(5), || !known(bw)),
        "the removed worker was never dropped: {}",
        b.status()
    );
    let shots = load.join();
    assert_all_ok(&shots, "discovery changes under load");

    let first_c = shots
        .iter()
        .filter(|s| s.instance() == Some("i-dis2"))
        .map(|s| s.at)
        .min()
        .expect("the added worker never took traffic");
    assert!(
        first_c.saturating_sub(added_at) <= Duration::from_millis(1500),
        "added at {added_at:?}, first request at {first_c:?}"
    );
    let last_b = shots
        .iter()
        .filter(|s| s.instance() == Some("i-dis1"))
        .map(|s| s.at)
        .max()
        .unwrap();
    assert!(
        last_b <= removed_at + Duration::from_millis(1500),
        "removed at {removed_at:?}, still sent requests at {last_b:?}"
    );
    eprintln!(
        "{:?}",
        by_instance(shots.iter().filter_map(|s| s.result.as_ref().ok()))
    );
}

// ───────────────────────────── each phase's timeout, and its blame ─────────────────────────────

/// A worker on a raw socket, scripted per request: `/health` is always a 200; anything else
/// gets what `answer` writes for the request's path (it may stall, or write megabytes).
struct RawWorker {
    addr: SocketAddr,
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl RawWorker {
    fn start(answer: fn(&str, &mut std::net::TcpStream)) -> RawWorker {
        use std::io::{Read as _, Write as _};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                let counted = counted.clone();
                std::thread::spawn(move || loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match s.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
                    if path == "/health" {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                        continue;
                    }
                    counted.fetch_add(1, Ordering::Relaxed);
                    answer(&path, &mut s);
                });
            }
        });
        RawWorker { addr, requests }
    }
}

fn raw_answer_small(s: &mut std::net::TcpStream) {
    use std::io::Write as _;
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nsmall");
}

#[test]
fn a_worker_stalling_mid_body_is_cut_off_and_blamed() {
    let w = RawWorker::start(|path, s| {
        use std::io::Write as _;
        if path == "/stall" {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly ten b");
            std::thread::sleep(Duration::from_secs(10));
        } else {
            raw_answer_small(s);
        }
    });
    let b = Balancer::start_file(&one_group(&[w.addr], |g| {
        g.max_in_flight_per_worker = 1;
        g.worker_body_idle = Duration::from_millis(500);
        g.health.interval = Duration::from_secs(30);
    }));
    let t0 = Instant::now();
    let got = fixture::raw_exchange(
        b.proc.addr,
        b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    let took = t0.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("only ten b"),
        "the client saw the body cut short: {text}"
    );
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "closed {took:?} after the request, worker_body_idle is 500 ms"
    );
    // The slot is free again: the only worker, capped at one request, answers the next.
    assert_eq!(get(&b.url("/small")).status, 200);
    let asked = w.requests.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(asked, 2, "no retry of a response already under way");
    let m = b.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "fulcrum_balancer_abandoned_total",
            &["error=\"worker_body_idle\""]
        ),
        1.0,
        "{m}"
    );
    let ws = b.worker_status(w.addr).unwrap();
    assert_eq!(
        ws["failures"], 1,
        "a stalled body is the worker's failure: {ws}"
    );
}

#[test]
fn clients_that_stop_reading_lose_their_slot_not_the_worker() {
    let w = RawWorker::start(|path, s| {
        use std::io::Write as _;
        if path == "/big" {
            let body = vec![b'x'; 32 << 20];
            let _ = s.write_all(
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes(),
            );
            let _ = s.write_all(&body);
        } else {
            raw_answer_small(s);
        }
    });
    let mut file = one_group(&[w.addr], |g| {
        g.max_in_flight_per_worker = 2;
        g.queue = 0;
        g.health.interval = Duration::from_secs(30);
    });
    file.timeouts.client_write_idle = Duration::from_secs(1);
    let b = Balancer::start_file(&file);
    // Two clients ask for 32 MB each and never read a byte.
    let stuck: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            use std::io::Write as _;
            let mut s = std::net::TcpStream::connect(b.proc.addr).unwrap();
            s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    // While they hold both slots, others are turned away...
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(&b.url("/small")).status, 503);
    // ...until the balancer gives up on them.
    assert!(
        eventually(Duration::from_secs(5), || get(&b.url("/small")).status
            == 200),
        "the stalled clients' slots were never freed"
    );
    // Both are cut off, each after its own client_write_idle.
    let cut_off = |b: &Balancer| {
        metric_sum(
            &b.metrics(),
            "fulcrum_balancer_abandoned_total",
            &["error=\"client_write_idle\""],
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || cut_off(&b) == 2.0),
        "{} stalled clients cut off, not 2",
        cut_off(&b)
    );
    let ws = b.worker_status(w.addr).unwrap();
    assert_eq!(
        ws["failures"], 0,
        "a client that stops reading is not the worker's failure: {ws}"
    );
    drop(stuck);
}

#[test]
fn a_slow_upload_is_the_clients_time_not_the_workers() {
    use std::io::{Read as _, Write as _};
    let stub = Stub::start(stub_status(200));
    let mut file = one_group(&[stub.addr], |g| {
        g.response_timeout = Duration::from_millis(500);
        g.outlier.consecutive_failures = 1;
    });
    file.timeouts.client_body_idle = Duration::from_secs(2);
    let b = Balancer::start_file(&file);
    let mut s = std::net::TcpStream::connect(b.proc.addr).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
        .unwrap();
    // 8 bytes over 1.6 s: three times the response timeout, each gap well inside client_body_idle.
    for byte in b"abcdefgh" {
        std::thread::sleep(Duration::from_millis(200));
        s.write_all(&[*byte]).unwrap();
    }
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = [0u8; 512];
    let n = s.read(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let ws = b.worker_status(stub.addr).unwrap();
    assert_eq!(ws["failures"], 0, "{ws}");
    // A client that stops sending its body altogether gets 408 after client_body_idle.
    let mut s = std::net::TcpStream::connect(b.proc.addr).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nabc")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("\"error\":\"client_body_idle\""), "{out}");
    let ws = b.worker_status(stub.addr).unwrap();
    assert_eq!(ws["failures"], 0, "{ws}");
}

#[test]
fn ejection_never_takes_a_groups_last_worker() {
    let failing = Stub::start(stub_status(500));
    let b = Balancer::start_file(&one_group(&[failing.addr], |g| {
        g.outlier.consecutive_failures = 1;
        g.outlier.max_ejected_percent = 100;
    }));
    for _ in 0..20 {
        // The worker's own answer each time, never "no healthy workers".
        assert_eq!(get(&b.url("/x")).status, 500);
    }
    let m = b.metrics();
    assert_eq!(
        metric_sum(&m, "fulcrum_balancer_ejections_total", &[]),
        0.0,
        "{m}"
    );
    assert_eq!(failing.hits(), 20);
}

#[test]
fn websocket_upgrades_are_tunnelled_both_ways() {
    use std::io::{Read as _, Write as _};
    let w = RawWorker::start(|path, s| {
        if path != "/ws" {
            return raw_answer_small(s);
        }
        let _ = s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n",
        );
        // Echo whatever comes, then close after a second of silence.
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Both);
    });
    let b = Balancer::start_file(&one_group(&[w.addr], |g| {
        g.health.interval = Duration::from_secs(30);
    }));
    let mut s = std::net::TcpStream::connect(b.proc.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed before the 101 ended");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("upgrade: websocket") && head.contains("connection: upgrade"),
        "{head}"
    );
    for frame in [&b"hello"[..], b"second frame"] {
        s.write_all(frame).unwrap();
        let mut echoed = vec![0u8; frame.len()];
        s.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, frame);
    }
    let m = b.metrics();
    assert_eq!(
        metric_sum(&m, "fulcrum_balancer_tunnels_opened_total", &[]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "fulcrum_balancer_tunnels_open", &[]),
        1.0,
        "{m}"
    );
    // The worker closes after a second of silence; so does the tunnel, and the count drops.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(eventually(Duration::from_secs(3), || {
        metric_sum(&b.metrics(), "fulcrum_balancer_tunnels_open", &[]) == 0.0
    }));
    assert!(metric_sum(&b.metrics(), "fulcrum_balancer_tunnel_bytes_total", &[]) >= 34.0);
}
