//! `fulcrum worker`, as a real process on loopback.

mod fixture;

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use fixture::{block_on, client, eventually, get, request, run, send, Proc};
use fulcrum_telemetry::LoadReport;

fn worker(extra: &[&str]) -> Proc {
    let mut args = vec!["worker", "--cluster", "1", "--port", "0"];
    args.extend_from_slice(extra);
    Proc::start(&args)
}

fn assert_identity_headers(r: &fixture::Reply, id: &str) {
    assert_eq!(r.header("x-fulcrum-instance"), id);
    assert_eq!(r.header("x-fulcrum-cluster"), "1");
    let report = LoadReport::parse(r.header("endpoint-load-metrics")).unwrap();
    assert!(report.cpu_utilization.is_some_and(|u| u >= 0.0));
    assert!(report.rps_fractional.is_some());
    assert!(report.eps.is_some());
    assert!(report.inflight.is_some());
    assert!(report.cpu_cores.is_some_and(|c| c > 0.0));
}

#[test]
fn routes_answer_with_json_identity_and_load_report() {
    let w = worker(&["--instance-id", "i-test1"]);

    let root = get(&w.url("/"));
    assert_eq!(root.status, 200);
    assert_eq!(root.header("content-type"), "application/json");
    assert_identity_headers(&root, "i-test1");
    let j = root.json();
    assert_eq!(j["message"], "Instance i-test1 has received the request");
    assert_eq!(j["instance_id"], "i-test1");
    assert_eq!(j["cluster"], 1);

    let own = get(&w.url("/cluster1"));
    assert_eq!(own.status, 200);
    assert_identity_headers(&own, "i-test1");
    assert_eq!(
        own.json()["message"],
        "Cluster 1 - Instance i-test1 is responding now!"
    );
    assert_eq!(own.json()["cluster"], 1);

    let other = get(&w.url("/cluster2"));
    assert_eq!(other.status, 404);
    assert_eq!(other.header("content-type"), "application/json");
    assert_identity_headers(&other, "i-test1");
    assert_eq!(other.json()["error"], "wrong_cluster");
    let msg = other.json()["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("belongs to cluster 1"), "{msg}");

    let health = get(&w.url("/health"));
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "serving");
    assert_identity_headers(&health, "i-test1");

    let load = get(&w.url("/load"));
    assert_eq!(load.status, 200);
    let l = load.json();
    for field in [
        "cpu_utilization",
        "cpu_cores",
        "cpu_seconds_total",
        "requests_per_second",
        "errors_per_second",
        "window_seconds",
    ] {
        assert!(l[field].as_f64().is_some_and(|v| v >= 0.0), "{field}: {l}");
    }
    assert_eq!(l["in_flight"], 0, "{l}");
    // `/` and `/cluster1` count; the other cluster's 404 counts as served, not as an error.
    assert_eq!(l["requests_served"], 3, "{l}");
    assert_eq!(l["errors_served"], 0, "{l}");
    assert_eq!(l["instance_id"], "i-test1");
    assert_eq!(l["cluster"], 1);
    assert_eq!(l["draining"], false);

    let metrics = get(&w.url("/metrics"));
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").starts_with("text/plain"));
    let m = metrics.text();
    for needle in [
        r#"fulcrum_worker_requests_total{instance="i-test1",cluster="1",route="/cluster",status="200"} 1"#,
        r#"fulcrum_worker_requests_total{instance="i-test1",cluster="1",route="/cluster (other)",status="404"} 1"#,
        "fulcrum_worker_request_duration_seconds_bucket",
        "fulcrum_worker_cpu_utilization",
        "fulcrum_worker_cpu_cores",
        "fulcrum_worker_in_flight",
    ] {
        assert!(m.contains(needle), "missing {needle} in:\n{m}");
    }

    let too_much = get(&w.url("/cluster1?work_us=100001"));
    assert_eq!(too_much.status, 400);
    assert_eq!(too_much.json()["error"], "work_us_out_of_range");
    assert_identity_headers(&too_much, "i-test1");
    let junk = get(&w.url("/cluster1?work_us=lots"));
    assert_eq!(junk.status, 400);
    assert_eq!(junk.json()["error"], "invalid_work_us");
    let max = get(&w.url("/cluster1?work_us=100000"));
    assert_eq!(max.status, 200);

    let post = request("POST", &w.url("/cluster1"), b"{}");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), "GET, HEAD");
    assert_eq!(post.json()["error"], "method_not_allowed");

    let missing = get(&w.url("/nowhere"));
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "not_found");
}

#[test]
fn work_costs_real_cpu_time() {
    let w = worker(&["--instance-id", "i-cpu"]);
    let before = get(&w.url("/load")).json()["cpu_seconds_total"]
        .as_f64()
        .unwrap();
    for _ in 0..10 {
        assert_eq!(get(&w.url("/cluster1?work_us=20000")).status, 200);
    }
    let after = get(&w.url("/load")).json()["cpu_seconds_total"]
        .as_f64()
        .unwrap();
    // 10 × 20 ms asked; calibration is on the thread CPU clock, so allow generous slack
    // for HTTP overhead but never accept a sleep (which would cost ~0).
    let used = after - before;
    assert!(
        (0.12..0.6).contains(&used),
        "used {used:.3}s of CPU for 0.2s of work"
    );
}

/// A tiny IMDSv2 on loopback: token first, then the instance id only with the token.
fn fake_imds(instance_id: &'static str) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        listener.set_nonblocking(false).unwrap();
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_lowercase();
            let first = req.lines().next().unwrap_or("").to_owned();
            seen.push(first.clone());
            let (status, body) = if first.starts_with("put /latest/api/token")
                && req.contains("x-aws-ec2-metadata-token-ttl-seconds")
            {
                ("200 OK", "TOKEN123".to_string())
            } else if first.starts_with("get /latest/meta-data/instance-id")
                && req.contains("x-aws-ec2-metadata-token: token123")
            {
                ("200 OK", instance_id.to_string())
            } else {
                ("401 Unauthorized", String::new())
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        seen
    });
    (port, handle)
}

#[test]
fn instance_id_comes_from_ec2_metadata_when_available() {
    let (port, imds) = fake_imds("i-0123456789abcdef0");
    let mut cmd = Command::new(fixture::BIN);
    cmd.args(["worker", "--cluster", "1", "--port", "0"]).env(
        fulcrum_worker::IMDS_ENDPOINT_ENV,
        format!("http://127.0.0.1:{port}"),
    );
    let w = Proc::start_cmd(cmd);
    let r = get(&w.url("/"));
    assert_eq!(r.json()["instance_id"], "i-0123456789abcdef0");
    assert_eq!(r.header("x-fulcrum-instance"), "i-0123456789abcdef0");
    let seen = imds.join().unwrap();
    assert!(seen[0].starts_with("put /latest/api/token"), "{seen:?}");
    assert!(
        seen[1].starts_with("get /latest/meta-data/instance-id"),
        "{seen:?}"
    );
}

#[test]
fn generated_instance_id_is_stable_across_restarts() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port = port.to_string();
    let first = {
        let w = Proc::start(&["worker", "--cluster", "2", "--port", &port]);
        get(&w.url("/")).json()["instance_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let w = Proc::start(&["worker", "--cluster", "2", "--port", &port]);
    let second = get(&w.url("/")).json()["instance_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(first, second);
    assert!(first.starts_with("i-0") && first.len() == 19, "{first}");
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let mut w = worker(&["--drain-delay", "400ms", "--instance-id", "i-drain"]);
    let url = w.url("/cluster1?work_us=100000");
    let slow = std::thread::spawn(move || {
        let started = Instant::now();
        let r = get(&url);
        (r.status, started.elapsed())
    });
    // Wait until the slow request is really in flight on the worker.
    assert!(eventually(Duration::from_secs(5), || {
        get(&w.url("/load")).json()["in_flight"] == 1
    }));
    w.signal(libc::SIGTERM);
    // During the drain delay the worker still accepts, but says it is draining.
    assert!(eventually(
        Duration::from_secs(2),
        || get(&w.url("/health")).status == 503
    ));
    assert_eq!(get(&w.url("/health")).json()["status"], "draining");
    let (status, _took) = slow.join().unwrap();
    assert_eq!(status, 200, "the in-flight request was lost");
    let exit = w
        .wait_timeout(Duration::from_secs(10))
        .expect("worker did not exit");
    assert_eq!(exit.code(), Some(0), "{}", w.stderr_text());
    assert!(w.stderr_text().contains("drained"));
}

#[test]
fn port_in_use_is_a_one_line_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, _out, err) = run(&["worker", "--cluster", "1", "--port", &port]);
    assert_eq!(code, 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains("address already in use"),
        "{err}"
    );
}

#[test]
fn bad_flags_are_one_line_errors() {
    for (args, needle) in [
        (vec!["worker", "--cluster", "x", "--port", "1"], "--cluster"),
        (vec!["worker", "--cluster", "1"], "--port"),
        (
            vec![
                "worker",
                "--cluster",
                "1",
                "--port",
                "1",
                "--work-us",
                "200000",
            ],
            "--work-us",
        ),
        (
            vec![
                "worker",
                "--cluster",
                "1",
                "--port",
                "1",
                "--bind",
                "nowhere",
            ],
            "--bind",
        ),
        (vec!["wroker"], "wroker"),
    ] {
        let (code, _out, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// Drives a worker confined to 0.2 of a core to saturation and back to idle, and reads the
/// utilization it reports of its own quota.
#[test]
fn load_reports_utilization_of_the_cgroup_quota() {
    let Some(host) = fixture::cgroups_or_skip("load_reports_utilization_of_the_cgroup_quota")
    else {
        return;
    };
    let cg = fixture::TestCgroup::new(host, "worker-quota");
    cg.group
        .set_cpu_limit(Duration::from_millis(2), Duration::from_millis(10))
        .unwrap();
    let mut cmd = Command::new(fixture::BIN);
    cmd.args([
        "worker",
        "--cluster",
        "1",
        "--port",
        "0",
        "--instance-id",
        "i-quota",
    ]);
    cg.group.join_on_exec(&mut cmd);
    let w = Proc::start_cmd(cmd);
    assert!(cg.group.procs().contains(&(w.pid() as u32)));

    let l = get(&w.url("/load")).json();
    assert!((l["cpu_cores"].as_f64().unwrap() - 0.2).abs() < 1e-6, "{l}");
    assert!(
        l["cpu_capacity_origin"]
            .as_str()
            .unwrap()
            .ends_with("-quota"),
        "{l}"
    );

    // Saturate: 8 clients asking for 5 ms of CPU each, far beyond 0.2 core, for 2.5 s.
    let url = w.url("/cluster1?work_us=5000");
    let (busy, inband) = block_on(async move {
        let c = client();
        let stop = Instant::now() + Duration::from_millis(2500);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (c, url) = (c.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let mut last = None;
                while Instant::now() < stop {
                    let r = send(&c, "GET", &url, b"").await.unwrap();
                    assert_eq!(r.status, 200);
                    last = Some(r.header("endpoint-load-metrics").to_owned());
                }
                last
            }));
        }
        let load_url = url.replace("/cluster1?work_us=5000", "/load");
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let busy = send(&c, "GET", &load_url, b"").await.unwrap().json();
        let mut inband = Vec::new();
        for t in tasks {
            inband.extend(t.await.unwrap());
        }
        (busy, inband)
    });
    let u = busy["cpu_utilization"].as_f64().unwrap();
    assert!((0.8..1.3).contains(&u), "saturated utilization {u}: {busy}");
    let reported = LoadReport::parse(&inband[0]).unwrap();
    assert!(reported.cpu_utilization.unwrap() > 0.6, "{reported:?}");
    assert!((reported.cpu_cores.unwrap() - 0.2).abs() < 1e-3);

    // Idle again: once the 1 s window has passed, utilization falls to near zero. Polled
    // gently: in a debug build each `/load` answer itself costs a visible slice of 0.2 core.
    assert!(
        fixture::eventually_every(Duration::from_secs(5), Duration::from_millis(300), || {
            get(&w.url("/load")).json()["cpu_utilization"]
                .as_f64()
                .unwrap()
                < 0.1
        }),
        "utilization did not fall when idle: {}",
        get(&w.url("/load")).json()
    );
}
