//! The `consistent-hash` policy, driven by curl: every request with one key (a header, a
//! cookie, or the client's address) reaches the same worker; when a worker leaves, only its
//! keys move; a bad `hash_key` is a located error.

mod fixture;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use fixture::{
    eventually, loopback_config, run, target_group, Balancer, Scratch, Stub, StubRequest,
};
use fulcrum_balancer::config::file::{unplaced, TargetGroupSpec};
use fulcrum_balancer::Policy;
use http_body_util::Full;

fn named(name: String) -> Stub {
    Stub::start(move |_: &StubRequest| http::Response::new(Full::new(Bytes::from(name.clone()))))
}

/// Which worker answered `url` for a request with `args` (curl, one request).
fn answered(url: &str, args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl is installed (scripts/install-test-deps)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn hashed_group(stubs: &[(String, Stub)], key: &str) -> TargetGroupSpec {
    let addrs: Vec<_> = stubs.iter().map(|(_, s)| s.addr).collect();
    let mut g = target_group("g", &addrs);
    g.policy = Policy::ConsistentHash;
    g.hash_key = key.into();
    g
}

#[test]
fn one_key_one_worker_and_a_leaving_worker_moves_only_its_keys() {
    let stubs: Vec<(String, Stub)> = (0..4)
        .map(|i| (format!("w{i}"), named(format!("w{i}"))))
        .collect();
    let mut file = loopback_config();
    file.group(hashed_group(&stubs, "header:x-user"))
        .route("/", "g");
    file.access_log.enabled = false;
    let b = Balancer::start_file(&file);
    let url = b.url("/cart");

    let users: Vec<String> = (0..24).map(|u| format!("user-{u}")).collect();
    let mut home = HashMap::new();
    for u in &users {
        let header = format!("x-user: {u}");
        let first = answered(&url, &["-H", &header]);
        for _ in 0..3 {
            assert_eq!(answered(&url, &["-H", &header]), first, "{u} moved");
        }
        home.insert(u.clone(), first);
    }
    let used: std::collections::HashSet<&String> = home.values().collect();
    assert!(used.len() >= 3, "24 keys landed on {used:?}");

    // w1 leaves in a reload: its users move, everyone else stays.
    let remaining: Vec<(String, Stub)> = stubs.into_iter().filter(|(n, _)| n != "w1").collect();
    file.target_groups[0] = unplaced(hashed_group(&remaining, "header:x-user"));
    b.write_file(&file);
    b.proc.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || {
        b.status()["target_groups"][0]["workers"]
            .as_array()
            .is_some_and(|w| w.len() == 3)
    }));
    for u in &users {
        let now = answered(&url, &["-H", &format!("x-user: {u}")]);
        if home[u] == "w1" {
            assert_ne!(now, "w1");
        } else {
            assert_eq!(now, home[u], "{u} moved though its worker stayed");
        }
    }
}

#[test]
fn a_cookie_or_the_client_address_is_the_key_when_configured() {
    let stubs: Vec<(String, Stub)> = (0..3)
        .map(|i| (format!("w{i}"), named(format!("w{i}"))))
        .collect();
    let mut file = loopback_config();
    let mut by_cookie = hashed_group(&stubs, "cookie:session");
    by_cookie.name = unplaced("by-cookie".into());
    let mut by_source = hashed_group(&stubs, "source");
    by_source.name = unplaced("by-source".into());
    file.group(by_cookie)
        .group(by_source)
        .route("/c", "by-cookie")
        .route("/", "by-source");
    file.access_log.enabled = false;
    let b = Balancer::start_file(&file);

    let mut seen = std::collections::HashSet::new();
    for s in 0..12 {
        let cookie = format!("theme=dark; session=s{s}");
        let first = answered(&b.url("/c"), &["-b", &cookie]);
        assert_eq!(answered(&b.url("/c"), &["-b", &cookie]), first);
        seen.insert(first);
    }
    assert!(seen.len() >= 2, "12 sessions all on {seen:?}");
    // One client address: one worker, whatever else the requests carry.
    let first = answered(&b.url("/x"), &[]);
    for i in 0..5 {
        assert_eq!(
            answered(&b.url(&format!("/x{i}")), &["-b", "session=z"]),
            first
        );
    }
}

#[test]
fn bad_hash_keys_and_stickiness_are_located_errors() {
    let dir = Scratch::new("hash-config");
    let path = dir.path("bad.toml");
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[route]]\nprefix = \"/\"\n\
                target_group = \"g\"\n\n[[target_group]]\nname = \"g\"\n\
                workers = [\"127.0.0.1:9001\"]\n";
    for (setting, message) in [
        (
            "policy = \"consistent-hash\"\nhash_key = \"url\"",
            "use `source`, `header:NAME` or `cookie:NAME`",
        ),
        (
            "stickiness = { cookie = \"a\", app_cookie = \"b\" }",
            "stickiness needs one of `cookie`",
        ),
        (
            "stickiness = { cookie = \"a b\" }",
            "a cookie name is a token",
        ),
        (
            "stickiness = { cookie = \"lb\", duration = \"30d\" }",
            "within 1s..=7days",
        ),
    ] {
        std::fs::write(&path, format!("{base}{setting}\n")).unwrap();
        let (code, _, err) = run(&["balance", "--config", path.to_str().unwrap(), "--check"]);
        assert_eq!(code, 1, "{setting}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{setting}: {err}");
        // The group, or the stickiness table on line 11.
        let at_group = err.contains(&format!("{}:8:1: ", path.display()));
        let at_table = err.contains(&format!("{}:11:", path.display()));
        assert!(at_group || at_table, "{setting}: {err}");
        assert!(
            err.contains(message),
            "{setting}: expected `{message}` in {err}"
        );
    }
}

/// A stub answering its name, setting `JSESSIONID` when asked to log in.
fn app(name: String) -> Stub {
    Stub::start(move |req: &StubRequest| {
        let mut r = http::Response::builder();
        if req.target.starts_with("/login") {
            r = r.header("set-cookie", "JSESSIONID=abc123; Path=/");
        }
        r.body(Full::new(Bytes::from(name.clone()))).unwrap()
    })
}

fn sticky_group(stubs: &[(String, Stub)], stickiness: &str) -> TargetGroupSpec {
    let addrs: Vec<_> = stubs.iter().map(|(_, s)| s.addr).collect();
    let mut g = target_group("g", &addrs);
    g.policy = Policy::RoundRobin;
    g.stickiness = Some(unplaced(toml::from_str(stickiness).unwrap()));
    g
}

#[test]
fn a_sticky_cookie_keeps_a_client_on_its_worker_until_that_worker_leaves() {
    let stubs: Vec<(String, Stub)> = (0..3)
        .map(|i| (format!("w{i}"), app(format!("w{i}"))))
        .collect();
    let mut file = loopback_config();
    file.group(sticky_group(&stubs, "cookie = \"lb\"\nduration = \"10m\""))
        .route("/", "g");
    file.access_log.enabled = false;
    let b = Balancer::start_file(&file);
    let dir = Scratch::new("sticky");
    let jar = dir.path("cookies.txt");
    let jar = jar.to_str().unwrap();
    let url = b.url("/page");

    // Without the cookie, round-robin moves on every request; the answer sets the cookie.
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "-c", jar, &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.contains("set-cookie: lb="), "{text}");
    assert!(text.contains("max-age=600; path=/; httponly"), "{text}");
    assert!(
        !text.contains("127.0.0.1"),
        "the cookie names no address: {text}"
    );
    let home = text.rsplit("\r\n\r\n").next().unwrap().to_owned();
    for _ in 0..6 {
        assert_eq!(answered(&url, &["-b", jar, "-c", jar]), home);
    }
    let without: std::collections::HashSet<String> = (0..6).map(|_| answered(&url, &[])).collect();
    assert_eq!(
        without.len(),
        3,
        "round-robin without the cookie: {without:?}"
    );

    // The worker leaves: the cookie no longer holds, the client gets a new home and cookie.
    let remaining: Vec<(String, Stub)> = stubs.into_iter().filter(|(n, _)| *n != home).collect();
    file.target_groups[0] = unplaced(sticky_group(
        &remaining,
        "cookie = \"lb\"\nduration = \"10m\"",
    ));
    b.write_file(&file);
    b.proc.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || {
        b.status()["target_groups"][0]["workers"]
            .as_array()
            .is_some_and(|w| w.len() == 2)
    }));
    let moved = answered(&url, &["-b", jar, "-c", jar]);
    assert_ne!(moved, home);
    for _ in 0..4 {
        assert_eq!(answered(&url, &["-b", jar, "-c", jar]), moved);
    }
}

#[test]
fn application_stickiness_starts_when_the_application_sets_its_cookie() {
    let stubs: Vec<(String, Stub)> = (0..2)
        .map(|i| (format!("w{i}"), app(format!("w{i}"))))
        .collect();
    let mut file = loopback_config();
    file.group(sticky_group(&stubs, "app_cookie = \"JSESSIONID\""))
        .route("/", "g");
    file.access_log.enabled = false;
    let b = Balancer::start_file(&file);
    let head = |path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-D", "-", "-o", "/dev/null", &b.url(path)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
    };
    assert!(
        !head("/browse").contains("fulcrum-sticky-app"),
        "no app cookie, no stickiness"
    );
    let login = head("/login");
    assert!(login.contains("set-cookie: jsessionid=abc123"), "{login}");
    assert!(login.contains("set-cookie: fulcrum-sticky-app="), "{login}");
    let cookie = login
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: fulcrum-sticky-app="))
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_owned();
    let header = format!("fulcrum-sticky-app={cookie}; JSESSIONID=abc123");
    let first = answered(&b.url("/cart"), &["-b", &header]);
    for _ in 0..5 {
        assert_eq!(answered(&b.url("/cart"), &["-b", &header]), first);
    }
}
