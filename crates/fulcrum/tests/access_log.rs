//! The access log, read as an operator would: curl's requests over HTTP/1.1, HTTP/2 (h2c and
//! over TLS) and refused ones each leave one line with what happened; a file follows
//! logrotate's rename-and-SIGHUP and a reload that turns it off; bad settings are located.

mod fixture;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fixture::{eventually, raw_exchange, routed, run, target_group, worker, Balancer, Scratch};
use fulcrum_balancer::config::file::{unplaced, TlsSpec};
use serde_json::Value;

/// Runs curl (a real client) with `args`; returns its stdout. curl must be installed
/// (`scripts/install-test-deps` does).
fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/install-test-deps)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The next `n` access-log lines on the balancer's stdout, parsed, by request id. Each proxy
/// thread hands over its own lines, so lines of requests served on different threads may come
/// in either order.
fn next_lines(b: &Balancer, n: usize) -> std::collections::HashMap<String, Value> {
    (0..n)
        .map(|i| {
            let line = b
                .proc
                .stdout
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("access-log line {} of {n} never came", i + 1));
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            (v["request_id"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

#[test]
fn every_request_leaves_one_json_line_with_what_happened() {
    let w = worker(1, "i-logged", &["--work-us", "0"]);
    let mut file = routed([("/cluster1", target_group("c1", &[w.addr]))]);
    file.listen(
        "127.0.0.1:0",
        Some(TlsSpec {
            self_signed: true,
            ..TlsSpec::default()
        }),
    );
    let b = Balancer::start_file(&file);
    let (plain, tls) = (b.listeners[0].0, b.listeners[1].0);

    curl(&[
        "-A",
        "tester \"quoted\"",
        "-H",
        "x-request-id: req-1",
        &format!("http://{plain}/cluster1?work_us=0&q=1"),
    ]);
    let get = &next_lines(&b, 1)["req-1"];
    assert_eq!(get["method"], "GET", "{get}");
    assert_eq!(get["target"], "/cluster1?work_us=0&q=1", "{get}");
    assert_eq!(get["host"], plain.to_string(), "{get}");
    assert_eq!(get["protocol"], "HTTP/1.1", "{get}");
    assert_eq!(get["status"], 200, "{get}");
    assert_eq!(get["worker_status"], 200, "{get}");
    assert_eq!(get["worker"], w.addr.to_string(), "{get}");
    assert_eq!(get["listener"], plain.to_string(), "{get}");
    assert_eq!(get["route"], "/cluster1", "{get}");
    assert_eq!(get["target_group"], "c1", "{get}");
    assert_eq!(get["policy"], "capacity-weighted", "{get}");
    assert_eq!(get["request_id"], "req-1", "{get}");
    assert_eq!(get["user_agent"], "tester \"quoted\"", "{get}");
    assert_eq!(get["retries"], 0, "{get}");
    assert!(get["tls"].is_null() && get["error"].is_null(), "{get}");
    assert!(get["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    // The first request to a worker opens a connection; the times add up.
    assert!(get["connect_ms"].as_f64().unwrap() > 0.0, "{get}");
    let (request, worker_ms, total) = (
        get["request_ms"].as_f64().unwrap(),
        get["worker_ms"].as_f64().unwrap(),
        get["total_ms"].as_f64().unwrap(),
    );
    assert!(request + worker_ms <= total + 0.001, "{get}");
    assert!(get["bytes_in"].as_u64().unwrap() > 80, "{get}");
    let time = get["time"].as_str().unwrap();
    assert!(time.ends_with('Z') && time.len() == 27, "{get}");

    // A body's bytes count as the request's; a 404 names its error and no worker.
    let body = "x".repeat(1000);
    curl(&[
        "-H",
        "x-request-id: post",
        "-d",
        &body,
        &format!("http://{plain}/cluster1"),
    ]);
    curl(&[
        "-H",
        "x-request-id: missing",
        "-o",
        "/dev/null",
        &format!("http://{plain}/elsewhere"),
    ]);
    let lines = next_lines(&b, 2);
    let (post, missing) = (&lines["post"], &lines["missing"]);
    assert_eq!(post["method"], "POST", "{post}");
    assert!(post["bytes_in"].as_u64().unwrap() >= 1000, "{post}");
    assert!(post["bytes_out"].as_u64().unwrap() > 0, "{post}");
    assert_eq!(missing["status"], 404, "{missing}");
    assert_eq!(missing["error"], "no_route", "{missing}");
    assert!(missing["worker"].is_null() && missing["route"].is_null());

    // HTTP/2 by prior knowledge, and over TLS (ALPN h2): the body's bytes are counted when
    // the stream ends.
    let (h2c_url, tls_url) = (
        format!("http://{plain}/cluster1"),
        format!("https://localhost:{}/cluster1", tls.port()),
    );
    curl(&[
        "-H",
        "x-request-id: h2c",
        "--http2-prior-knowledge",
        &h2c_url,
    ]);
    curl(&["-H", "x-request-id: h2", "--http2", "-k", &tls_url]);
    let lines = next_lines(&b, 2);
    for (id, tls_version) in [("h2c", None), ("h2", Some("TLSv1.3"))] {
        let line = &lines[id];
        assert_eq!(line["protocol"], "HTTP/2.0", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["tls"].as_str(), tls_version, "{line}");
        assert!(line["bytes_out"].as_u64().unwrap() > 0, "{line}");
    }
    assert_eq!(lines["h2"]["listener"], tls.to_string());

    // A head that is not HTTP still gets its line: the 400 and why.
    let answer = raw_exchange(plain, b"NOT HTTP\r\n\r\n", Duration::from_secs(5));
    assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");
    let lines = next_lines(&b, 1);
    let bad = lines.values().next().unwrap();
    assert_eq!(bad["status"], 400, "{bad}");
    assert_eq!(bad["method"], "-", "{bad}");
    assert!(bad["error"].as_str().is_some(), "{bad}");

    let status = b.status();
    assert_eq!(status["access_log"]["lines"], 6, "{status}");
    assert_eq!(status["access_log"]["dropped"], 0, "{status}");
    let metrics = b.metrics();
    assert!(
        metrics.contains("fulcrum_balancer_access_log_lines_total 6"),
        "{metrics}"
    );
}

/// Reads `path`'s lines (none if it does not exist).
fn file_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_file_log_follows_logrotate_and_a_reload_turns_it_off() {
    let w = worker(1, "i-rotated", &["--work-us", "0"]);
    let mut file = routed([("/cluster1", target_group("c1", &[w.addr]))]);
    // Relative to the configuration file's directory.
    file.access_log.path = Some(unplaced("access.log".into()));
    file.access_log.format = fulcrum_balancer::AccessLogFormat::Text;
    let b = Balancer::start_file(&file);
    let log = b.dir.path("access.log");
    let url = b.url("/cluster1");

    curl(&["-o", "/dev/null", &url]);
    assert!(eventually(Duration::from_secs(5), || file_lines(&log)
        .len()
        == 1));
    let line = &file_lines(&log)[0];
    assert!(
        line.starts_with("http ") && line.contains(" 200 200 ") && line.contains("\"GET http://"),
        "{line}"
    );
    assert!(line.contains(&format!(" {} ", w.addr)), "{line}");

    // logrotate: rename, then SIGHUP; the next line goes to a new file.
    let rotated = b.dir.path("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    b.proc.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || log.exists()));
    curl(&["-o", "/dev/null", &url]);
    assert!(eventually(Duration::from_secs(5), || file_lines(&log)
        .len()
        == 1));
    assert_eq!(file_lines(&rotated).len(), 1);

    // Off with one setting, in a reload.
    file.access_log.enabled = false;
    b.write_file(&file);
    b.proc.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || b.status()
        ["access_log"]["enabled"]
        == false));
    curl(&["-o", "/dev/null", &url]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(file_lines(&log).len(), 1, "a line written while off");
    assert!(
        b.proc.stdout.try_recv().is_err(),
        "nothing goes to stdout either"
    );
}

#[test]
fn bad_access_log_settings_are_located_errors() {
    let dir = Scratch::new("access-log-config");
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[route]]\nprefix = \"/\"\n\
                target_group = \"g\"\n\n[[target_group]]\nname = \"g\"\n\
                workers = [\"127.0.0.1:9001\"]\n\n[access_log]\n";
    let path = dir.path("bad.toml");
    for (setting, line, column, message) in [
        (
            "format = \"xml\"",
            13,
            10,
            "unknown variant `xml`, expected `json` or `text`",
        ),
        (
            "path = \"no/such/dir/access.log\"",
            13,
            8,
            "access_log.path: the directory",
        ),
        ("path = \"\"", 13, 8, "access_log.path is empty"),
        ("enabled = \"yes\"", 13, 11, "invalid type"),
    ] {
        std::fs::write(&path, format!("{base}{setting}\n")).unwrap();
        let (code, out, err) = run(&["balance", "--config", path.to_str().unwrap(), "--check"]);
        assert_eq!(code, 1, "{setting}: {out}");
        assert_eq!(err.trim_end().lines().count(), 1, "{setting}: {err}");
        let at = format!("{}:{line}:{column}: ", path.display());
        assert!(err.contains(&at), "{setting}: expected `{at}` in {err}");
        assert!(
            err.contains(message),
            "{setting}: expected `{message}` in {err}"
        );
    }
    std::fs::write(&path, format!("{base}enabled = false\nformat = \"text\"\n")).unwrap();
    let (code, _, err) = run(&["balance", "--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(code, 0, "{err}");
}
