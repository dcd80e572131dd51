//! Listener rules, driven by curl: conditions on host, path, method, header, query, source
//! address and protocol, in priority order before the prefix routes; forward (weighted for
//! blue/green), redirect (HTTP → HTTPS) and fixed responses; header edits both ways and the
//! forwarding headers; a reload that shifts weights; located configuration errors.

mod fixture;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use fixture::{
    eventually, loopback_config, run, target_group, Balancer, Scratch, Stub, StubRequest,
};
use fulcrum_balancer::config::file::{
    unplaced, FixedResponse, ForwardSpec, HeaderEdits, Redirect, RuleSpec, TlsSpec, WeightedSpec,
};
use http_body_util::Full;

/// A stub answering `{"who": NAME, "headers": {...}}` with a header of its own.
fn named(name: &'static str) -> Stub {
    Stub::start(move |req: &StubRequest| {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").into()))
            .collect();
        let body = serde_json::json!({"who": name, "target": req.target, "headers": headers});
        http::Response::builder()
            .header("content-type", "application/json")
            .header("x-stub-private", "internal")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    })
}

/// curl (a real client) with `args`: (status line's code, headers text, body).
fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "-"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/install-test-deps)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // With -L several heads come first; the last one is the answer's.
    let (heads, body) = text.rsplit_once("\r\n\r\n").unwrap_or((&text, ""));
    let head = heads.rsplit("\r\n\r\n").next().unwrap_or(heads);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn rule(priority: u32, name: &str) -> RuleSpec {
    RuleSpec {
        name: Some(name.into()),
        priority: unplaced(priority),
        host: Vec::new(),
        path: Vec::new(),
        method: Vec::new(),
        source: Vec::new(),
        protocol: Vec::new(),
        header: Default::default(),
        query: Default::default(),
        forward: None,
        redirect: None,
        fixed_response: None,
        request_headers: HeaderEdits::default(),
        response_headers: HeaderEdits::default(),
    }
}

fn strings(list: &[&str]) -> Vec<toml::Spanned<String>> {
    list.iter().map(|s| unplaced(s.to_string())).collect()
}

fn forward_to(group: &str) -> Option<toml::Spanned<ForwardSpec>> {
    Some(unplaced(ForwardSpec::One(group.into())))
}

fn who(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["who"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn conditions_choose_the_first_matching_rule_before_the_prefix_routes() {
    let names = ["default", "admin", "api", "canary"];
    let stubs = names.map(named);
    let mut file = loopback_config();
    for (name, stub) in names.iter().zip(&stubs) {
        file.group(target_group(name, &[stub.addr]));
    }
    file.route("/", "default");
    let mut blocked = rule(5, "admin-from-elsewhere");
    blocked.path = strings(&["/admin/*"]);
    blocked.source = strings(&["10.0.0.0/8"]);
    blocked.fixed_response = Some(unplaced(FixedResponse {
        status: 403,
        content_type: "text/plain".into(),
        body: "no".into(),
    }));
    let mut admin = rule(10, "admin");
    admin.path = strings(&["/admin/*"]);
    admin.source = strings(&["127.0.0.0/8"]);
    admin.forward = forward_to("admin");
    let mut api = rule(20, "api");
    api.host = strings(&["api.*.test"]);
    api.method = strings(&["GET", "POST"]);
    api.forward = forward_to("api");
    api.request_headers
        .set
        .insert("x-from-rule".into(), "api".into());
    api.request_headers.remove.push("x-secret".into());
    api.response_headers
        .add
        .insert("x-served-by".into(), "rule-api".into());
    api.response_headers.remove.push("x-stub-private".into());
    let mut canary = rule(30, "canary");
    canary.header.insert("X-Canary".into(), vec!["yes".into()]);
    canary.query.insert("version".into(), vec!["2*".into()]);
    canary.forward = forward_to("canary");
    let mut maintenance = rule(40, "maintenance");
    maintenance.path = strings(&["/maintenance"]);
    maintenance.fixed_response = Some(unplaced(FixedResponse {
        status: 503,
        content_type: "text/html".into(),
        body: "<h1>back soon</h1>".into(),
    }));
    file.rules = [blocked, admin, api, canary, maintenance]
        .into_iter()
        .map(unplaced)
        .collect();
    let b = Balancer::start_file(&file);
    let url = |path: &str| b.url(path);

    let (code, _, body) = curl(&[&url("/admin/users")]);
    assert_eq!((code, who(&body)), (200, "admin".into()), "{body}");
    let (_, _, body) = curl(&[&url("/adminx")]);
    assert_eq!(who(&body), "default");

    let (code, head, body) = curl(&[
        "-H",
        "Host: api.eu.test",
        "-H",
        "x-secret: s3cret",
        &url("/v1/items"),
    ]);
    assert_eq!((code, who(&body)), (200, "api".into()), "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["x-from-rule"], "api", "{seen}");
    assert!(seen["headers"].get("x-secret").is_none(), "{seen}");
    assert_eq!(seen["headers"]["x-forwarded-host"], "api.eu.test", "{seen}");
    assert_eq!(
        seen["headers"]["x-forwarded-port"],
        b.proc.addr.port().to_string(),
        "{seen}"
    );
    assert!(head.contains("x-served-by: rule-api"), "{head}");
    assert!(!head.contains("x-stub-private"), "{head}");
    // The method condition: a DELETE to the same host falls through to the prefix route.
    let (_, _, body) = curl(&["-X", "DELETE", "-H", "Host: api.eu.test", &url("/v1/items")]);
    assert_eq!(who(&body), "default");
    // Over HTTP/2 the authority is the host.
    let (_, _, body) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: api.us.test",
        &url("/v1"),
    ]);
    assert_eq!(who(&body), "api");

    // Header and query together; either alone is not enough.
    let (_, _, body) = curl(&["-H", "x-canary: YES", &url("/shop?version=2.1")]);
    assert_eq!(who(&body), "canary");
    let (_, _, body) = curl(&["-H", "x-canary: yes", &url("/shop?version=1")]);
    assert_eq!(who(&body), "default");
    let (_, _, body) = curl(&[&url("/shop?version=2")]);
    assert_eq!(who(&body), "default");

    let (code, head, body) = curl(&[&url("/maintenance")]);
    assert_eq!((code, body.as_str()), (503, "<h1>back soon</h1>"));
    assert!(head.contains("content-type: text/html"), "{head}");

    let metrics = b.metrics();
    assert!(
        metrics.contains("fulcrum_balancer_rules_matched_total{rule=\"rule:api\"} 2"),
        "{metrics}"
    );
    assert!(!metrics.contains("rule:admin-from-elsewhere"), "{metrics}");
}

/// `n` requests in one curl (one connection): how many each stub answered.
fn split_of(url: &str, n: usize) -> (usize, usize) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", &format!("{url}/[1-{n}]")])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    (
        text.matches("\"who\":\"blue\"").count(),
        text.matches("\"who\":\"green\"").count(),
    )
}

#[test]
fn weighted_forwarding_splits_blue_and_green_and_a_reload_moves_everyone() {
    let (blue, green) = (named("blue"), named("green"));
    let mut file = loopback_config();
    file.group(target_group("blue", &[blue.addr]))
        .group(target_group("green", &[green.addr]));
    let weighted = |b: u32, g: u32| {
        let mut r = rule(1, "blue-green");
        r.path = strings(&["/*"]);
        r.forward = Some(unplaced(ForwardSpec::Weighted(vec![
            WeightedSpec {
                target_group: "blue".into(),
                weight: b,
            },
            WeightedSpec {
                target_group: "green".into(),
                weight: g,
            },
        ])));
        unplaced(r)
    };
    file.rules = vec![weighted(90, 10)];
    let b = Balancer::start_file(&file);
    let (to_blue, to_green) = split_of(&b.url("/app"), 400);
    assert_eq!(to_blue + to_green, 400);
    // 90% of 400 is 360, with a standard deviation of 6: 330..=390 is five of them.
    assert!(
        (330..=390).contains(&to_blue),
        "{to_blue} blue, {to_green} green"
    );

    file.rules = vec![weighted(0, 100)];
    b.write_file(&file);
    b.proc.signal(libc::SIGHUP);
    assert!(eventually(Duration::from_secs(5), || split_of(
        &b.url("/app"),
        5
    ) == (0, 5)));
    assert_eq!(split_of(&b.url("/app"), 100), (0, 100));
}

#[test]
fn plain_http_is_redirected_to_https_which_is_forwarded() {
    let app = named("app");
    let mut file = loopback_config();
    file.listen(
        "127.0.0.1:0",
        Some(TlsSpec {
            self_signed: true,
            ..TlsSpec::default()
        }),
    );
    file.group(target_group("app", &[app.addr]))
        .route("/", "app");
    // The TLS listener's port is known once it is bound: start, read it, then add the rule.
    let b = Balancer::start_file(&file);
    let tls_port = b.listeners[1].0.port();
    let mut to_https = rule(1, "to-https");
    to_https.protocol = strings(&["http"]);
    to_https.redirect = Some(unplaced(Redirect {
        status: 301,
        protocol: Some("https".into()),
        host: Some("localhost".into()),
        port: Some(tls_port.to_string()),
        path: None,
        query: None,
    }));
    file.rules = vec![unplaced(to_https)];
    b.write_file(&file);
    b.proc.signal(libc::SIGHUP);
    let plain = b.url("/cart?id=7");
    assert!(eventually(Duration::from_secs(5), || curl(&[&plain]).0 == 301));

    let (code, head, _) = curl(&[&plain]);
    assert_eq!(code, 301);
    let location = format!("location: https://localhost:{tls_port}/cart?id=7");
    assert!(head.contains(&location), "{head}");
    // Following it lands on the TLS listener, which the rule does not match.
    let (code, _, body) = curl(&["-L", "-k", &plain]);
    assert_eq!(code, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");
    assert_eq!(seen["headers"]["x-forwarded-port"], tls_port.to_string());
    assert_eq!(
        seen["headers"]["x-forwarded-host"],
        format!("localhost:{tls_port}")
    );
    // HTTP/2 clients get the same redirect.
    let (code, head, _) = curl(&["--http2-prior-knowledge", &plain]);
    assert_eq!(code, 301);
    assert!(head.contains(&location), "{head}");
}

#[test]
fn bad_rules_are_located_errors() {
    let dir = Scratch::new("rules-config");
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[target_group]]\nname = \"g\"\n\
                workers = [\"127.0.0.1:9001\"]\n\n[[rule]]\npriority = 1\n";
    let path = dir.path("bad.toml");
    // (the rule's lines after its priority, the text the error points at (its last
    // occurrence; what concerns a whole rule points at its `[[rule]]`), message part)
    let cases = [
        (
            "forward = \"nope\"\n",
            "\"nope\"",
            "unknown target group `nope` (defined: g)",
        ),
        (
            "source = [\"10.0.0.0/40\"]\nforward = \"g\"\n",
            "\"10.0.0.0/40\"",
            "prefix length",
        ),
        (
            "path = [\"api/*\"]\nforward = \"g\"\n",
            "\"api/*\"",
            "must start with `/`",
        ),
        (
            "method = [\"get\"]\nforward = \"g\"\n",
            "\"get\"",
            "not a method",
        ),
        (
            "protocol = [\"ftp\"]\nforward = \"g\"\n",
            "\"ftp\"",
            "`http` or `https`",
        ),
        (
            "redirect = { status = 200 }\n",
            "{ status = 200 }",
            "use 301, 302, 303, 307 or 308",
        ),
        (
            "forward = \"g\"\nfixed_response = { status = 503 }\n",
            "[[rule]]",
            "exactly one of",
        ),
        (
            "forward = \"g\"\nrequest_headers = { remove = [\"Host\"] }\n",
            "[[rule]]",
            "not a field name a rule may change",
        ),
        (
            "forward = \"g\"\n\n[[rule]]\npriority = 1\nforward = \"g\"\n",
            "1\nforward",
            "priority 1 must be within 1..=50000 and used once",
        ),
    ];
    for (rest, at, message) in cases {
        let text = format!("{base}{rest}");
        std::fs::write(&path, &text).unwrap();
        let (code, _, err) = run(&["balance", "--config", path.to_str().unwrap(), "--check"]);
        assert_eq!(code, 1, "{rest}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{rest}: {err}");
        let offset = text
            .rfind(at)
            .unwrap_or_else(|| panic!("{at} not in {text}"));
        let line = text[..offset].matches('\n').count() + 1;
        let column = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
        let expected = format!("{}:{line}:{column}: ", path.display());
        assert!(
            err.contains(&expected),
            "{rest}: expected `{expected}` in {err}"
        );
        assert!(
            err.contains(message),
            "{rest}: expected `{message}` in {err}"
        );
    }
    // Rules alone (no prefix route) are a valid configuration.
    std::fs::write(&path, format!("{base}forward = \"g\"\n")).unwrap();
    let (code, out, err) = run(&["balance", "--config", path.to_str().unwrap(), "--check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration OK"), "{out}");
}

#[test]
fn the_status_page_in_chromium_lists_the_rules_and_what_they_matched() {
    let Some(chromium) = fixture::browser::chromium_or_skip(
        "the_status_page_in_chromium_lists_the_rules_and_what_they_matched",
    ) else {
        return;
    };
    let (blue, green) = (named("blue"), named("green"));
    let mut file = loopback_config();
    file.group(target_group("blue", &[blue.addr]))
        .group(target_group("green", &[green.addr]))
        .route("/", "blue");
    let mut r = rule(7, "canary");
    r.path = strings(&["/app/*"]);
    r.forward = Some(unplaced(ForwardSpec::Weighted(vec![
        WeightedSpec {
            target_group: "blue".into(),
            weight: 3,
        },
        WeightedSpec {
            target_group: "green".into(),
            weight: 1,
        },
    ])));
    file.rules = vec![unplaced(r)];
    file.access_log.enabled = false;
    let b = Balancer::start_file(&file);
    let (to_blue, to_green) = split_of(&b.url("/app"), 12);
    assert_eq!(to_blue + to_green, 12);
    let page = fixture::browser::run_page(chromium, &b.admin_url("/"), Duration::from_millis(2500));
    let dom = &page.dom;
    let row = dom
        .split("<tr class=\"rule\">")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_else(|| panic!("no rule row: {dom}"));
    for cell in [
        "<td>7</td>",
        "canary",
        "path /app/*",
        "forward blue 75%, green 25%",
        "<td>12</td>",
    ] {
        assert!(row.contains(cell), "{cell} missing from {row}");
    }
    assert!(dom.contains("Access log: off"), "{dom}");
    assert!(dom.contains("id=\"norules\" hidden"), "{dom}");
}
