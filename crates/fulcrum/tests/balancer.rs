//! `fulcrum balance` with real workers on loopback: routing by cluster, each policy's
//! distinctive behaviour, stale telemetry, TLS and HTTP/2, proxy headers, configuration
//! errors, the admin page, `/status`, `/metrics` and the runtime policy switch.
//!
//! Tests that keep a CPU busy on purpose have `busy` or `quota` in their names, which puts them
//! in nextest's one-at-a-time `cpu-heavy` group (`.config/nextest.toml`).

mod fixture;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fixture::{
    addrs, block_on, by_instance, client, echo_and_c1, eventually, get, metric_sum, policy_group,
    request, routed, run, send, target_group, worker, Balancer, Proc, Reply, Stub, StubRequest,
};
use fulcrum_balancer::config::file::{TargetGroupSpec, TlsSpec};
use fulcrum_balancer::{Policy, TelemetrySource};
use http_body_util::{BodyExt as _, Full};

/// [`policy_group`] with CPU readings from polling each worker's `/load`.
fn polled(name: &str, policy: Policy, workers: &[SocketAddr]) -> TargetGroupSpec {
    let mut g = policy_group(name, policy, workers);
    g.telemetry = TelemetrySource::Poll;
    g
}

/// Sends `n` GETs one after the other and returns the answers (all must be 200).
fn sequential(url: &str, n: usize) -> Vec<Reply> {
    block_on(async {
        let c = client();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let r = send(&c, "GET", url, b"").await.unwrap();
            assert_eq!(r.status, 200, "{url}: {}", r.text());
            out.push(r);
        }
        out
    })
}

/// Keeps `concurrency` clients sending GET `url` directly to a worker until dropped: CPU
/// load the balancer did not send.
struct Busy {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn busy(url: String, concurrency: usize) -> Busy {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        block_on(async move {
            let c = client();
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let (c, url, flag) = (c.clone(), url.clone(), flag.clone());
                tasks.push(tokio::spawn(async move {
                    // Bounded even if nobody stops it.
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let _ = send(&c, "GET", &url, b"").await;
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    });
    Busy {
        stop,
        thread: Some(thread),
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The latest reading of `source` for the worker at `addr`, from `/status`.
fn reading(b: &Balancer, addr: SocketAddr, source: &str) -> Option<serde_json::Value> {
    let w = b.worker_status(addr)?;
    let r = w["telemetry"][source].clone();
    (!r.is_null()).then_some(r)
}

// ───────────────────────────── routing ─────────────────────────────

#[test]
fn each_cluster_route_is_answered_only_by_its_own_workers() {
    let c1 = [
        worker(1, "i-c1a", &["--work-us", "0"]),
        worker(1, "i-c1b", &["--work-us", "0"]),
    ];
    let c2 = [
        worker(2, "i-c2a", &["--work-us", "0"]),
        worker(2, "i-c2b", &["--work-us", "0"]),
    ];
    let list = |ws: &[Proc]| {
        ws.iter()
            .map(|w| format!("http://{}", w.addr))
            .collect::<Vec<_>>()
            .join(",")
    };
    // The quick form, as the issue shows it.
    let b = Proc::start(&[
        "balance",
        "--listen",
        "127.0.0.1:0",
        "--route",
        &format!("/cluster1={}", list(&c1)),
        "--route",
        &format!("/cluster2={}", list(&c2)),
        "--route",
        "/=@all",
        "--policy",
        "round-robin",
    ]);

    for (path, cluster, ids) in [
        ("/cluster1", "1", ["i-c1a", "i-c1b"]),
        ("/cluster2", "2", ["i-c2a", "i-c2b"]),
    ] {
        let answers = sequential(&b.url(path), 40);
        for r in &answers {
            assert_eq!(r.header("x-fulcrum-cluster"), cluster, "{path}");
            assert_eq!(r.json()["cluster"].to_string(), cluster, "{path}");
        }
        let seen = by_instance(&answers);
        assert_eq!(
            seen.keys().cloned().collect::<Vec<_>>(),
            ids,
            "{path}: {seen:?}"
        );
    }
    // A sub-path stays on its cluster's route; `/cluster10` is not `/cluster1`.
    let sub = get(&b.url("/cluster1/deeper"));
    assert_eq!(sub.header("x-fulcrum-cluster"), "1");

    let answers = sequential(&b.url("/"), 40);
    let clusters: BTreeMap<String, usize> = answers.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.header("x-fulcrum-cluster").to_owned())
            .or_default() += 1;
        m
    });
    assert_eq!(
        clusters.len(),
        2,
        "`/` must reach both clusters: {clusters:?}"
    );
    assert_eq!(
        by_instance(&answers).len(),
        4,
        "{:?}",
        by_instance(&answers)
    );
}

// ───────────────────────────── policies ─────────────────────────────

#[test]
fn round_robin_spreads_evenly() {
    let ws: Vec<Proc> = (0..3)
        .map(|i| worker(1, &format!("i-rr{i}"), &["--work-us", "0"]))
        .collect();
    let b = Balancer::start_file(&routed([(
        "/",
        policy_group("rr", Policy::RoundRobin, &addrs(&ws)),
    )]));
    let counts = by_instance(&sequential(&b.url("/cluster1"), 90));
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (id, n) in &counts {
        assert!((29..=31).contains(n), "{id} got {n} of 90: {counts:?}");
    }
}

/// Starts a worker allowed to run on one CPU only, so its CPU work runs one request at a time
/// and a long request keeps the others queued without burning more than one core.
fn single_core_worker(cluster: u32, id: &str, extra: &[&str]) -> Proc {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: sched_getaffinity fills a zeroed cpu_set_t for this process.
    let cpu = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .expect("some CPU is allowed")
    };
    let mut cmd = Command::new(fixture::BIN);
    cmd.args(["worker", "--port", "0", "--cluster", &cluster.to_string()])
        .args(["--instance-id", id])
        .args(extra);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Proc::start_cmd(cmd)
}

#[test]
fn least_outstanding_avoids_a_busy_worker_holding_slow_requests() {
    let slow = single_core_worker(1, "i-slow", &["--max-work-us", "1000000"]);
    let idle = worker(1, "i-idle", &["--work-us", "0"]);
    // `/cluster1` reaches only the slow worker; `/` balances both by least outstanding. The
    // two groups share the worker, so its in-flight count is one number.
    let mut slow_only = target_group("slow-only", &[slow.addr]);
    let mut lo = policy_group("lo", Policy::LeastOutstanding, &[slow.addr, idle.addr]);
    // Slow on purpose, and slower still on a crowded machine: no worker timeout may end it.
    slow_only.response_timeout = Duration::from_secs(60);
    lo.response_timeout = Duration::from_secs(60);
    let b = Balancer::start_file(&routed([("/cluster1", slow_only), ("/", lo)]));
    let slow_url = b.url("/cluster1?work_us=500000");
    let holders: Vec<_> = (0..3)
        .map(|_| {
            let url = slow_url.clone();
            std::thread::spawn(move || get(&url).status)
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || b
            .worker_status(slow.addr)
            .is_some_and(|w| w["in_flight"] == 3)),
        "the slow requests never were in flight: {}",
        b.status()
    );
    let answers = sequential(&b.url("/?work_us=0"), 40);
    let still_held = b.worker_status(slow.addr).unwrap()["in_flight"]
        .as_u64()
        .unwrap();
    let counts = by_instance(&answers);
    assert!(
        still_held > 0,
        "the slow requests ended before the check; the machine is too slow for this test"
    );
    assert_eq!(
        counts.get("i-slow"),
        None,
        "least-outstanding sent requests to the worker holding 3: {counts:?}"
    );
    for h in holders {
        assert_eq!(h.join().unwrap(), 200);
    }
    // Once nothing is held, ties are broken at random: both get traffic.
    let counts = by_instance(&sequential(&b.url("/?work_us=0"), 40));
    assert!(
        counts.get("i-slow").copied().unwrap_or(0) >= 5
            && counts.get("i-idle").copied().unwrap_or(0) >= 5,
        "{counts:?}"
    );
}

#[test]
fn lowest_cpu_follows_the_reported_cpu_of_a_busy_worker() {
    let a = worker(1, "i-a", &["--work-us", "0"]);
    let bw = worker(1, "i-b", &["--work-us", "0"]);
    let mut file = routed([("/", polled("seed", Policy::LowestCpu, &addrs([&a, &bw])))]);
    file.telemetry.poll_interval = Duration::from_millis(100);
    let b = Balancer::start_file(&file);
    let cpu = |w: &Proc| {
        reading(&b, w.addr, "poll")
            .and_then(|r| r["cpu_utilization"].as_f64())
            .unwrap_or(0.0)
    };
    for (hot, cold, cold_id) in [(&a, &bw, "i-b"), (&bw, &a, "i-a")] {
        let _load = busy(hot.url("/cluster1?work_us=20000"), 2);
        assert!(
            eventually(Duration::from_secs(8), || cpu(hot) > cpu(cold) + 0.15),
            "the balancer never saw {} busy: {}",
            hot.addr,
            b.status()
        );
        let counts = by_instance(&sequential(&b.url("/?work_us=0"), 30));
        // The argmin herds: every request to the idler worker (a poll may land mid-run and
        // flip a close reading, so allow a few).
        assert!(
            counts.get(cold_id).copied().unwrap_or(0) >= 27,
            "lowest-cpu did not follow the readings: {counts:?}; {}",
            b.status()
        );
    }
}

/// Two workers with different CPU quotas behind `cpu-aware`: the one allowed twice the CPU
/// is handed about twice the requests, and the small one still gets its share.
#[test]
fn cpu_aware_sends_more_to_a_larger_quota_without_starving_the_smaller() {
    let test = "cpu_aware_sends_more_to_a_larger_quota_without_starving_the_smaller";
    let Some(host) = fixture::cgroups_or_skip(test) else {
        return;
    };
    let period = Duration::from_millis(10);
    let start_in = |name: &str, quota: Duration, id: &str| {
        let cg = fixture::TestCgroup::new(host.clone(), name);
        cg.group.set_cpu_limit(quota, period).unwrap();
        let mut cmd = Command::new(fixture::BIN);
        cmd.args([
            "worker",
            "--cluster",
            "1",
            "--port",
            "0",
            "--instance-id",
            id,
        ]);
        cg.group.join_on_exec(&mut cmd);
        let w = Proc::start_cmd(cmd);
        (cg, w)
    };
    let (_small_cg, small) = start_in("lb-small", Duration::from_micros(2500), "i-small");
    let (_large_cg, large) = start_in("lb-large", Duration::from_micros(5000), "i-large");
    let b = Balancer::start_file(&routed([(
        "/",
        policy_group("hetero", Policy::CpuAware, &addrs([&small, &large])),
    )]));
    // Closed loop, more clients than either worker can serve at once.
    let url = b.url("/cluster1?work_us=4000");
    let answers = block_on(async move {
        let c = client();
        let stop = Instant::now() + Duration::from_secs(4);
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let (c, url) = (c.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                while Instant::now() < stop {
                    got.push(send(&c, "GET", &url, b"").await.unwrap());
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
    assert!(answers.iter().all(|r| r.status == 200));
    let counts = by_instance(&answers);
    let (s, l) = (
        counts.get("i-small").copied().unwrap_or(0) as f64,
        counts.get("i-large").copied().unwrap_or(0) as f64,
    );
    let status = b.status();
    eprintln!("cpu-aware with quotas 0.25 and 0.5 core: {counts:?}");
    assert!(
        l > 1.3 * s,
        "the larger quota should get clearly more: {counts:?}; {status}"
    );
    assert!(
        s >= 0.15 * (s + l),
        "the smaller worker is starved: {counts:?}; {status}"
    );
    let cores = |w: &Proc| b.worker_status(w.addr).unwrap()["cpu_cores"].as_f64();
    assert_eq!(cores(&small), Some(0.25));
    assert_eq!(cores(&large), Some(0.5));
}

/// One CPU reading, taken while worker A was saturated, then never refreshed (`poll_interval`
/// is a minute): `cpu-aware` avoids A while the reading is fresh (its saturation guard) and
/// falls back to in-flight counts once it is older than `stale_after`; `lowest-cpu` follows it
/// however old (the seed's behaviour).
#[test]
fn stale_reports_of_a_busy_worker_fall_back_as_documented() {
    let test = "stale_reports_of_a_busy_worker_fall_back_as_documented";
    let Some(host) = fixture::cgroups_or_skip(test) else {
        return;
    };
    // Equal small quotas: two clients saturate A however crowded the machine is, and equal
    // capacity leaves the CPU reading as the only difference between A and B.
    let start_in = |name: &str, id: &str| {
        let cg = fixture::TestCgroup::new(host.clone(), name);
        cg.group
            .set_cpu_limit(Duration::from_millis(2), Duration::from_millis(10))
            .unwrap();
        let mut cmd = Command::new(fixture::BIN);
        cmd.args(["worker", "--cluster", "1", "--port", "0", "--work-us", "0"])
            .args(["--instance-id", id]);
        cg.group.join_on_exec(&mut cmd);
        (cg, Proc::start_cmd(cmd))
    };
    let (_a_cg, a) = start_in("stale-a", "i-a");
    let (_b_cg, bw) = start_in("stale-b", "i-b");
    let load = busy(a.url("/cluster1?work_us=20000"), 2);
    // Let A's one-second load window fill before the balancer's only poll.
    assert!(eventually(Duration::from_secs(10), || {
        get(&a.url("/load")).json()["cpu_utilization"]
            .as_f64()
            .unwrap()
            > 0.92
    }));
    let both = addrs([&a, &bw]);
    let mut file = routed([
        ("/cluster1", polled("aware", Policy::CpuAware, &both)),
        ("/", polled("seed", Policy::LowestCpu, &both)),
    ]);
    file.telemetry.poll_interval = Duration::from_secs(60);
    file.telemetry.stale_after = Duration::from_secs(5);
    let b = Balancer::start_file(&file);
    assert!(eventually(Duration::from_secs(5), || {
        reading(&b, a.addr, "poll").is_some() && reading(&b, bw.addr, "poll").is_some()
    }));
    drop(load);
    let (ra, rb) = (
        reading(&b, a.addr, "poll").unwrap(),
        reading(&b, bw.addr, "poll").unwrap(),
    );
    assert!(
        ra["cpu_utilization"].as_f64().unwrap() > 0.92
            && rb["cpu_utilization"].as_f64().unwrap() < 0.5,
        "the only reading should show A saturated, B not: {ra} vs {rb}"
    );

    // Fresh: cpu-aware steers away from the saturated reading.
    let fresh = by_instance(&sequential(&b.url("/cluster1?work_us=0"), 30));
    let age = reading(&b, a.addr, "poll").unwrap();
    assert_eq!(
        age["stale"], false,
        "the machine is too slow for this test: the reading went stale mid-run"
    );
    assert_eq!(fresh.get("i-a"), None, "fresh report ignored: {fresh:?}");

    // Stale: the same reading no longer steers cpu-aware; in-flight counts (equal here)
    // decide, so both workers get traffic.
    assert!(
        eventually(Duration::from_secs(10), || reading(&b, a.addr, "poll")
            .unwrap()["stale"]
            == true),
        "{}",
        b.status()
    );
    let stale = by_instance(&sequential(&b.url("/cluster1?work_us=0"), 40));
    eprintln!("cpu-aware, fresh reading: {fresh:?}; stale: {stale:?}");
    assert!(
        stale.get("i-a").copied().unwrap_or(0) >= 8 && stale.get("i-b").copied().unwrap_or(0) >= 8,
        "cpu-aware kept following a stale reading: {stale:?}"
    );
    // lowest-cpu still herds onto the stale argmin.
    let seed = by_instance(&sequential(&b.url("/?work_us=0"), 30));
    assert_eq!(seed.get("i-a"), None, "{seed:?}");
    assert!(
        metric_sum(
            &b.metrics(),
            "fulcrum_balancer_worker_telemetry_age_seconds",
            &["source=\"poll\""]
        ) >= 10.0,
        "telemetry age is visible in /metrics"
    );
}

// ───────────────────────────── TLS and HTTP/2 ─────────────────────────────

fn tls_connector(
    trust: Option<&rustls::pki_types::CertificateDer<'static>>,
    alpn: &[u8],
) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let mut config = match trust {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.clone()).unwrap();
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        // `--self-signed` makes its certificate at start-up: nothing to trust in advance.
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(fulcrum_loadgen::tls::AnyCertificate::new(
                provider,
            )))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One GET over a fresh connection: TLS if `tls` is given (with that ALPN), HTTP/2 if `h2`
/// (by ALPN on TLS, by prior knowledge on plain TCP). Returns the answer, its HTTP version
/// and the protocol ALPN settled on.
async fn one_get(
    addr: SocketAddr,
    path: &str,
    tls: Option<&tokio_rustls::TlsConnector>,
    h2: bool,
) -> (Reply, http::Version, Option<Vec<u8>>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let req = http::Request::get(format!("{scheme}://localhost:{}{path}", addr.port()))
        .header(http::header::HOST, format!("localhost:{}", addr.port()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (resp, alpn) = match tls {
        Some(connector) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let stream = connector.connect(name, tcp).await.expect("TLS handshake");
            let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            let io = TokioIo::new(stream);
            let resp = if h2 {
                let (mut tx, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .unwrap();
                tokio::spawn(conn);
                // HTTP/2 carries the host as `:authority`, not a header.
                let mut req = req;
                req.headers_mut().remove(http::header::HOST);
                tx.send_request(req).await.unwrap()
            } else {
                let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                let (mut parts, body) = req.into_parts();
                parts.uri = path.parse().unwrap();
                tx.send_request(http::Request::from_parts(parts, body))
                    .await
                    .unwrap()
            };
            (resp, alpn)
        }
        None => {
            assert!(h2, "plain HTTP/1.1 is covered everywhere else");
            let (mut tx, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut req = req;
            req.headers_mut().remove(http::header::HOST);
            (tx.send_request(req).await.unwrap(), None)
        }
    };
    let version = resp.version();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        },
        version,
        alpn,
    )
}

/// Answers with the request it saw, as JSON: method, target, version and every header (values
/// of a repeated header joined with `|`).
fn echo(req: &StubRequest) -> http::Response<Full<Bytes>> {
    let mut headers = serde_json::Map::new();
    for name in req.headers.keys() {
        let all: Vec<&str> = req
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<binary>"))
            .collect();
        headers.insert(name.as_str().to_owned(), all.join("|").into());
    }
    let body = serde_json::json!({
        "method": req.method.as_str(),
        "target": req.target,
        "version": format!("{:?}", req.version),
        "headers": headers,
        "body_len": req.body.len(),
    });
    let mut r = http::Response::new(Full::new(Bytes::from(body.to_string())));
    let h = r.headers_mut();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("x-fulcrum-instance", "i-echo".parse().unwrap());
    h.insert(
        "endpoint-load-metrics",
        "TEXT cpu_utilization=0.250, rps_fractional=5.0, eps=0.0, named_metrics.cpu_cores=1.000"
            .parse()
            .unwrap(),
    );
    // Hop-by-hop on the way back: none of these may reach the client.
    h.insert("connection", "x-hop-back".parse().unwrap());
    h.insert("x-hop-back", "1".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("proxy-authenticate", "Basic realm=\"w\"".parse().unwrap());
    h.insert("via", "1.1 echo".parse().unwrap());
    r
}

#[test]
fn tls_and_h2_work_with_a_real_client() {
    let w = worker(1, "i-tls", &["--work-us", "0"]);
    let echo_stub = Stub::start(echo);
    let fixture::TestCa {
        cert,
        key,
        ca_der: ca,
        ..
    } = fixture::TestCa::new();
    let mut file = echo_and_c1(echo_stub.addr, w.addr);
    let tls = TlsSpec {
        cert: Some("cert.pem".into()),
        key: Some("key.pem".into()),
        ..TlsSpec::default()
    };
    file.listen("127.0.0.1:0", Some(tls));
    let b = Balancer::start_file_with(
        &file,
        &[("cert.pem", cert.as_bytes()), ("key.pem", key.as_bytes())],
    );
    let plain = b.listeners[0].0;
    let (tls_addr, is_tls) = b.listeners[1];
    assert!(is_tls, "{:?}", b.listeners);
    assert!(!b.listeners[0].1);

    block_on(async {
        let h2 = tls_connector(Some(&ca), b"h2");
        let h1 = tls_connector(Some(&ca), b"http/1.1");

        let (r, version, alpn) = one_get(tls_addr, "/cluster1", Some(&h2), true).await;
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(version, http::Version::HTTP_2);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-fulcrum-instance"), "i-tls");

        let (r, version, alpn) = one_get(tls_addr, "/cluster1", Some(&h1), false).await;
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(version, http::Version::HTTP_11);
        assert_eq!(r.status, 200);

        // h2c by prior knowledge on the plain listener.
        let (r, version, _) = one_get(plain, "/cluster1", None, true).await;
        assert_eq!(version, http::Version::HTTP_2);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-fulcrum-cluster"), "1");

        // What the worker saw: HTTP/1.1 with a Host, the client's protocol in the forwarding
        // headers and in `via`.
        let (r, _, _) = one_get(tls_addr, "/echo", Some(&h2), true).await;
        let seen = r.json();
        assert_eq!(seen["version"], "HTTP/1.1", "{seen}");
        let h = &seen["headers"];
        assert_eq!(
            h["host"],
            format!("localhost:{}", tls_addr.port()),
            "{seen}"
        );
        assert_eq!(h["x-forwarded-proto"], "https", "{seen}");
        assert_eq!(h["via"], "2 fulcrum", "{seen}");
        let fwd = h["forwarded"].as_str().unwrap();
        assert!(fwd.contains("proto=https"), "{fwd}");
        let (r, _, _) = one_get(plain, "/echo", None, true).await;
        assert_eq!(r.json()["headers"]["x-forwarded-proto"], "http");
    });

    // `--self-signed`: a certificate made at start-up, for local use.
    let quick = Proc::start(&[
        "balance",
        "--listen",
        "127.0.0.1:0",
        "--route",
        &format!("/={}", w.addr),
        "--self-signed",
    ]);
    block_on(async {
        let any = tls_connector(None, b"h2");
        let (r, version, _) = one_get(quick.addr, "/cluster1", Some(&any), true).await;
        assert_eq!(version, http::Version::HTTP_2);
        assert_eq!(r.status, 200);
        // Its certificate is not one anybody trusts.
        let strict = tls_connector(Some(&ca), b"h2");
        let tcp = tokio::net::TcpStream::connect(quick.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        assert!(strict.connect(name, tcp).await.is_err());
    });
}

// ───────────────────────────── proxy headers ─────────────────────────────

/// A raw HTTP/1.1 exchange: the status, the headers (lower-case names, repeated ones joined
/// with `|`) and the body.
fn raw_http(addr: SocketAddr, request: &str) -> (u16, BTreeMap<String, String>, String) {
    let out = fixture::raw_exchange(addr, request.as_bytes(), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let mut headers = BTreeMap::new();
    for l in lines {
        if let Some((n, v)) = l.split_once(':') {
            headers
                .entry(n.trim().to_ascii_lowercase())
                .and_modify(|old: &mut String| {
                    old.push('|');
                    old.push_str(v.trim());
                })
                .or_insert_with(|| v.trim().to_owned());
        }
    }
    (status, headers, body.to_owned())
}

#[test]
fn proxy_headers_are_rewritten_and_the_load_header_consumed() {
    let echo_stub = Stub::start(echo);
    let w = worker(1, "i-hdr", &["--work-us", "0"]);
    let config = |forward: bool| {
        let mut file = echo_and_c1(echo_stub.addr, w.addr);
        file.telemetry.forward_load_header = forward;
        file
    };
    let b = Balancer::start_file(&config(false));
    let request = "GET /echo/path?q=1 HTTP/1.1\r\n\
         Host: example.test:8080\r\n\
         Connection: keep-alive, x-secret\r\n\
         X-Secret: only for the next hop\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         X-Forwarded-For: 203.0.113.9\r\n\
         X-Forwarded-For: 198.51.100.7\r\n\
         Forwarded: for=203.0.113.9;proto=https\r\n\
         Via: 1.0 edge\r\n\
         X-Request-Id: trace-42\r\n\
         X-Keep: yes\r\n\
         Content-Length: 0\r\n\
         \r\n";
    let (status, headers, body) = raw_http(b.proc.addr, request);
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    let h = seen["headers"].as_object().unwrap();
    assert_eq!(seen["target"], "/echo/path?q=1");
    for gone in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached the worker: {seen}");
    }
    assert_eq!(h["host"], "example.test:8080", "Host is preserved");
    assert_eq!(h["x-keep"], "yes");
    // Both of the client's lines are kept, then this hop.
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 198.51.100.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(
        h["forwarded"],
        "for=203.0.113.9;proto=https, for=127.0.0.1;proto=http;host=\"example.test:8080\""
    );
    assert_eq!(h["via"], "1.0 edge, 1.1 fulcrum");
    assert_eq!(h["x-request-id"], "trace-42", "a plain client id is kept");

    // On the way back: hop-by-hop and the load report gone, `via` added, the id echoed.
    for gone in [
        "x-hop-back",
        "proxy-authenticate",
        "keep-alive",
        "endpoint-load-metrics",
    ] {
        assert!(
            !headers.contains_key(gone),
            "{gone} reached the client: {headers:?}"
        );
    }
    assert_ne!(
        headers.get("connection").map(String::as_str),
        Some("x-hop-back")
    );
    assert_eq!(headers["via"], "1.1 echo, 1.1 fulcrum");
    assert_eq!(headers["x-request-id"], "trace-42");
    assert_eq!(headers["x-fulcrum-instance"], "i-echo");

    // A real worker's report is consumed: used for the worker's reading, not passed on.
    let r = get(&b.url("/cluster1"));
    assert!(
        r.headers.get("endpoint-load-metrics").is_none(),
        "{:?}",
        r.headers
    );
    let id = r.header("x-request-id").to_owned();
    assert!(
        id.len() == 16 && id.bytes().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(reading(&b, w.addr, "inband").is_some(), "{}", b.status());
    // A client id that is not plain is replaced.
    let (_, headers, _) = raw_http(
        b.proc.addr,
        "GET /cluster1 HTTP/1.1\r\nHost: x\r\nX-Request-Id: <script>\r\nConnection: close\r\n\r\n",
    );
    assert_ne!(headers["x-request-id"], "<script>");

    // Configured to forward it, the balancer passes it through (a reload switches it).
    b.write_file(&config(true));
    b.proc.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || b.status()
        ["config_generation"]
        == 2));
    let r = get(&b.url("/cluster1"));
    assert!(
        r.header("endpoint-load-metrics").starts_with("TEXT "),
        "{:?}",
        r.headers
    );
    let (_, headers, _) = raw_http(
        b.proc.addr,
        "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(headers["endpoint-load-metrics"].contains("cpu_utilization=0.250"));
}

// ───────────────────────────── configuration errors ─────────────────────────────

const GOOD_CONFIG: &str = r#"[[listener]]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[[route]]
prefix = "/cluster1"
target_group = "c1"

[[route]]
prefix = "/"
target_group = "all"

[[target_group]]
name = "c1"
policy = "round-robin"
workers = ["127.0.0.1:9001", "http://127.0.0.1:9002"]

[[target_group]]
name = "all"
workers = ["@all"]
"#;

/// `(line, column)`, 1-based, of the first `needle` in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in config"));
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = at - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[test]
fn invalid_configs_are_one_line_errors_with_file_line_and_column() {
    let dir = fixture::Scratch::new("bad-config");
    let good = dir.path("good.toml");
    std::fs::write(&good, GOOD_CONFIG).unwrap();
    let (code, out, err) = run(&["balance", "--config", good.to_str().unwrap(), "--check"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("configuration OK: 1 listener(s), 2 route(s), 2 target group(s)"),
        "{out}"
    );

    // (replace, with, where the error must point (the text at that spot), message part)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "policy = \"round-robin\"",
            "policy = \"fastest\"",
            "\"fastest\"",
            "unknown variant `fastest`, expected one of `round-robin`, `least-outstanding`, `p2c-ewma`, `lowest-cpu`, `cpu-aware`",
        ),
        (
            "target_group = \"c1\"",
            "target_group = \"c3\"",
            "\"c3\"",
            "unknown target group `c3` (defined: all, c1)",
        ),
        (
            "\"127.0.0.1:9001\"",
            "\"127.0.0.1:notaport\"",
            "\"127.0.0.1:notaport\"",
            "is not host:port",
        ),
        (
            "policy = \"round-robin\"",
            "polcy = \"round-robin\"",
            "polcy",
            "unknown field `polcy`",
        ),
        (
            "prefix = \"/\"",
            "prefix = \"/cluster1\"",
            "prefix = \"/cluster1\"\ntarget_group = \"all\"",
            "route prefix `/cluster1` is defined twice",
        ),
        (
            "address = \"127.0.0.1:0\"\n\n[admin]",
            "address = \"localhost:80\"\n\n[admin]",
            "\"localhost:80\"",
            "is not an IP:port address",
        ),
    ];
    for (from, to, at, message) in cases {
        let text = GOOD_CONFIG.replacen(from, to, 1);
        assert_ne!(text, GOOD_CONFIG, "{from}");
        let path = dir.path("bad.toml");
        std::fs::write(&path, &text).unwrap();
        let (line, mut column) = position(&text, at);
        if at.starts_with("prefix = ") {
            // The duplicate is reported at its value.
            column += "prefix = ".len();
        }
        let expected = format!("{}:{line}:{column}: ", path.display());
        for check in [false, true] {
            let mut args = vec!["balance", "--config", path.to_str().unwrap()];
            if check {
                args.push("--check");
            }
            let (code, out, err) = run(&args);
            assert_eq!(code, 1, "{to}: {err}");
            assert!(out.is_empty(), "{to}: nothing is served: {out}");
            assert_eq!(err.trim_end().lines().count(), 1, "{to}: one line: {err}");
            assert!(
                err.starts_with(&format!("error: {expected}")),
                "{to}: expected `{expected}` in {err}"
            );
            assert!(err.contains(message), "{to}: expected `{message}` in {err}");
        }
    }

    // Not in any table: the file's first line, and a TOML syntax error, still one line.
    let path = dir.path("bad.toml");
    for (text, message) in [
        (
            GOOD_CONFIG.replace("[[route]]", "[[rout]]"),
            "unknown field `rout`",
        ),
        (
            "[[listener]]\naddress = \"127.0.0.1:0\"\n".to_string(),
            "no [[route]]",
        ),
        ("[[listener]\naddress = 1\n".to_string(), ""),
    ] {
        std::fs::write(&path, &text).unwrap();
        let (code, _, err) = run(&["balance", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
        assert!(
            err.starts_with(&format!("error: {}:", path.display())),
            "{err}"
        );
        assert!(err.contains(message), "{err}");
    }

    // The quick form: the same validator, errors naming the flag.
    let (code, _, err) = run(&["balance", "--listen", "127.0.0.1:0", "--route", "/x"]);
    assert_eq!(code, 1);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("PREFIX=WORKER"), "{err}");

    // Nothing starts half-configured: a second listener that cannot bind, a certificate that
    // cannot be read.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = GOOD_CONFIG.replacen(
        "[admin]",
        &format!("[[listener]]\naddress = \"127.0.0.1:{port}\"\n\n[admin]"),
        1,
    );
    std::fs::write(&path, &text).unwrap();
    let (code, out, err) = run(&["balance", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        out.is_empty(),
        "announced a listener it then abandoned: {out}"
    );
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let text = GOOD_CONFIG.replacen(
        "address = \"127.0.0.1:0\"\n\n[admin]",
        "address = \"127.0.0.1:0\"\ntls = { cert = \"missing.pem\", key = \"missing-key.pem\" }\n\n[admin]",
        1,
    );
    std::fs::write(&path, &text).unwrap();
    let (code, out, err) = run(&["balance", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("cannot read certificates from"), "{err}");
    assert!(err.contains("missing.pem"), "{err}");
}

// ───────────────────────────── admin ─────────────────────────────

fn two_worker_balancer(policy: Policy) -> (Vec<Proc>, Balancer) {
    let ws = vec![
        worker(1, "i-one", &["--work-us", "0"]),
        worker(2, "i-two", &["--work-us", "0"]),
    ];
    let b = Balancer::start_file(&routed([
        ("/cluster1", policy_group("c1", policy, &[ws[0].addr])),
        ("/cluster2", policy_group("c2", policy, &[ws[1].addr])),
    ]));
    (ws, b)
}

#[test]
fn admin_page_in_chromium_shows_every_worker_and_updates() {
    let Some(chromium) =
        fixture::browser::chromium_or_skip("admin_page_in_chromium_shows_every_worker_and_updates")
    else {
        return;
    };
    let (ws, b) = two_worker_balancer(Policy::CpuAware);
    for path in ["/cluster1", "/cluster2"] {
        sequential(&b.url(path), 5);
    }
    let page = fixture::browser::run_page(chromium, &b.admin_url("/"), Duration::from_millis(4500));
    let dom = &page.dom;
    assert!(dom.contains("fulcrum balancer"), "{dom}");
    assert_eq!(dom.matches("<tr class=\"worker\">").count(), 2, "{dom}");
    for (w, id) in ws.iter().zip(["i-one", "i-two"]) {
        assert!(
            dom.contains(&w.addr.to_string()),
            "{} missing: {dom}",
            w.addr
        );
        assert!(dom.contains(id), "{id} missing: {dom}");
    }
    let updates: u32 = dom
        .split("<b id=\"updates\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no updates counter: {dom}"));
    assert!(updates >= 2, "the page did not refresh: {updates} updates");
    assert!(
        dom.contains("<span id=\"error\"></span>"),
        "the page lost the balancer: {dom}"
    );
    let errors: Vec<&String> = page
        .console
        .iter()
        .filter(|l| l.contains("Uncaught") || l.contains("Error"))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn status_and_metrics_describe_routes_groups_and_workers() {
    let (ws, b) = two_worker_balancer(Policy::CpuAware);
    sequential(&b.url("/cluster1"), 6);
    sequential(&b.url("/cluster2"), 3);
    let missing = get(&b.url("/nowhere"));
    assert_eq!(missing.status, 404);
    let j = missing.json();
    assert_eq!(j["error"], "no_route");
    assert_eq!(j["request_id"], missing.header("x-request-id"));

    assert!(eventually(Duration::from_secs(5), || {
        b.status()["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["health"] == "healthy")
    }));
    let s = b.status();
    assert_eq!(s["config_generation"], 1);
    assert_eq!(s["stale_after_ms"], 2000);
    assert_eq!(
        s["routes"],
        serde_json::json!([
            {"prefix": "/cluster1", "target_group": "c1"},
            {"prefix": "/cluster2", "target_group": "c2"},
        ])
    );
    let groups = s["target_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0]["policy"], "cpu-aware");
    assert_eq!(groups[0]["telemetry"], "inband");
    assert_eq!(
        groups[0]["workers"],
        serde_json::json!([ws[0].addr.to_string()])
    );
    for (w, (id, cluster, served)) in ws.iter().zip([("i-one", 1, 6), ("i-two", 2, 3)]) {
        let st = b.worker_status(w.addr).unwrap();
        assert_eq!(st["instance_id"], id, "{st}");
        assert_eq!(st["cluster"], cluster, "{st}");
        assert_eq!(st["available"], true, "{st}");
        assert_eq!(st["in_flight"], 0, "{st}");
        assert_eq!(st["requests"], served, "{st}");
        assert_eq!(st["picks"], served, "{st}");
        assert_eq!(st["failures"], 0, "{st}");
        assert!(st["latency_ewma_ms"].as_f64().unwrap() > 0.0, "{st}");
        assert!(st["cpu_cores"].as_f64().unwrap() > 0.0, "{st}");
        let inband = &st["telemetry"]["inband"];
        assert!(inband["cpu_utilization"].as_f64().is_some(), "{st}");
        assert!(inband["age"].as_f64().is_some(), "{st}");
        assert!(inband["stale"].is_boolean(), "{st}");
        assert!(st["telemetry"]["poll"].is_null(), "not collected: {st}");
    }

    let m = b.metrics();
    let w1 = format!("worker=\"{}\"", ws[0].addr);
    assert_eq!(
        metric_sum(
            &m,
            "fulcrum_balancer_requests_total",
            &[
                "route=\"/cluster1\"",
                "target_group=\"c1\"",
                &w1,
                "code=\"200\""
            ]
        ),
        6.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "fulcrum_balancer_request_duration_seconds_count",
            &["route=\"/cluster2\""]
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "fulcrum_balancer_errors_total", &["error=\"no_route\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "fulcrum_balancer_worker_picks_total", &[&w1]),
        6.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "fulcrum_balancer_worker_healthy", &[]),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "fulcrum_balancer_worker_in_flight", &[]),
        0.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "fulcrum_balancer_config_generation", &[]),
        1.0,
        "{m}"
    );
    for family in [
        "fulcrum_balancer_worker_cpu_utilization{",
        "fulcrum_balancer_worker_telemetry_age_seconds{",
        "fulcrum_balancer_worker_latency_ewma_seconds{",
        "fulcrum_balancer_connections_open ",
        "fulcrum_balancer_target_group_queued{target_group=\"c1\"} 0",
    ] {
        assert!(m.contains(family), "missing {family}: {m}");
    }

    let health = get(&b.admin_url("/health"));
    assert_eq!(health.json()["status"], "serving");
    let nope = get(&b.admin_url("/nope"));
    assert_eq!(nope.status, 404);
    assert_eq!(nope.json()["error"], "not_found");
}

#[test]
fn policy_switch_at_runtime_through_the_admin_api() {
    let ws: Vec<Proc> = (0..2)
        .map(|i| worker(1, &format!("i-sw{i}"), &["--work-us", "0"]))
        .collect();
    let b = Balancer::start_file(&routed([(
        "/",
        policy_group("c1", Policy::LeastOutstanding, &addrs(&ws)),
    )]));
    let alternates = |answers: &[Reply]| {
        answers
            .windows(2)
            .all(|p| p[0].header("x-fulcrum-instance") != p[1].header("x-fulcrum-instance"))
    };
    // Sequential requests leave both idle, so least-outstanding breaks every tie at random:
    // 30 in strict alternation would be a 1-in-2^29 accident.
    let before = sequential(&b.url("/cluster1"), 30);
    assert!(!alternates(&before), "{:?}", by_instance(&before));

    let put = request(
        "PUT",
        &b.admin_url("/target-groups/c1"),
        br#"{"policy": "round-robin"}"#,
    );
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(
        put.json(),
        serde_json::json!({"target_group": "c1", "policy": "round-robin", "telemetry": "inband"})
    );
    assert_eq!(b.status()["target_groups"][0]["policy"], "round-robin");
    let after = sequential(&b.url("/cluster1"), 30);
    assert!(alternates(&after), "round-robin must alternate: {after:?}");

    for (body, status, code) in [
        (&br#"{"policy": "fastest"}"#[..], 400, "bad_request"),
        (br#"{"telemetry": "poll"}"#, 400, "bad_request"),
        (br#"{"polcy": "round-robin"}"#, 400, "bad_request"),
        (b"not json", 400, "bad_request"),
    ] {
        let r = request("PUT", &b.admin_url("/target-groups/c1"), body);
        assert_eq!(r.status, status, "{}", r.text());
        assert_eq!(r.json()["error"], code);
    }
    let r = request(
        "PUT",
        &b.admin_url("/target-groups/nope"),
        br#"{"policy": "round-robin"}"#,
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "no_such_target_group");
    // The switch lasts until the next reload, which restores the file's policy.
    b.proc.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || b.status()
        ["config_generation"]
        == 2));
    assert_eq!(
        b.status()["target_groups"][0]["policy"],
        "least-outstanding"
    );
}
