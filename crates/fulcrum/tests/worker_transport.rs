//! Workers over TLS and HTTP/2, with real servers on loopback: `https://` workers verified
//! against a CA file and named by SNI, a client certificate shown to a worker that asks for
//! one, `insecure` taking a self-signed worker, HTTP/2 workers (h2c and h2 over TLS) taking
//! HTTP/1.1 and HTTP/2 clients with their bodies and trailers, gRPC (tonic's health service)
//! balanced unary and streaming, a reload that changes how workers are reached, and every
//! mistake in the settings a located error.

mod fixture;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fixture::{eventually, raw_exchange, run, Balancer, Scratch, TestCa};
use hyper::body::{Body, Frame};

/// What a [`TlsWorker`] saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    version: http::Version,
    path: String,
    /// The name the client sent as SNI.
    sni: Option<String>,
    client_cert: bool,
    headers: http::HeaderMap,
    body: Bytes,
}

/// How a [`TlsWorker`] serves.
struct Serving {
    /// TLS with this server configuration (its ALPN says which HTTP it speaks), or plain.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Speak HTTP/2 only (prior knowledge on plain TCP).
    h2_only: bool,
}

/// A worker that speaks TLS and/or HTTP/2, answering `200 ok` to everything (with a trailer
/// `x-checksum` when the path asks for `/trailers`) and recording what it saw.
struct TlsWorker {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsWorker {
    fn start(serving: Serving) -> TlsWorker {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (seen2, conns2) = (seen.clone(), connections.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(serve(serving, seen2, conns2, addr_tx, stopped));
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        TlsWorker {
            addr,
            seen,
            connections,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        let all = self.seen.lock().unwrap().clone();
        all.into_iter().filter(|s| s.path != "/health").collect()
    }
}

impl Drop for TlsWorker {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    serving: Serving,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicU64>,
    addr_tx: std::sync::mpsc::Sender<SocketAddr>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    addr_tx.send(listener.local_addr().unwrap()).unwrap();
    let acceptor = serving.tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut stopped => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        connections.fetch_add(1, Ordering::Relaxed);
        let (acceptor, seen) = (acceptor.clone(), seen.clone());
        let h2_only = serving.h2_only;
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(tcp, None, false, h2_only, seen).await,
                Some(a) => {
                    let Ok(tls) = a.accept(tcp).await else { return };
                    let conn = tls.get_ref().1;
                    let sni = conn.server_name().map(str::to_owned);
                    let cert = conn.peer_certificates().is_some();
                    serve_connection(tls, sni, cert, h2_only, seen).await
                }
            }
        });
    }
}

async fn serve_connection<I>(
    io: I,
    sni: Option<String>,
    client_cert: bool,
    h2_only: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt as _;
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (seen, sni) = (seen.clone(), sni.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let trailers = parts.uri.path() == "/trailers";
            seen.lock().unwrap().push(Seen {
                version: parts.version,
                path: parts.uri.path().to_owned(),
                sni,
                client_cert,
                headers: parts.headers,
                body,
            });
            Ok::<_, std::convert::Infallible>(http::Response::new(Answer {
                data: Some(Bytes::from_static(b"ok")),
                trailers,
            }))
        }
    });
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    if h2_only {
        builder = builder.http2_only();
    }
    let _ = builder
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .await;
}

/// `ok`, then a trailer when asked.
struct Answer {
    data: Option<Bytes>,
    trailers: bool,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(d) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if std::mem::take(&mut self.trailers) {
            let mut t = http::HeaderMap::new();
            t.insert("x-checksum", http::HeaderValue::from_static("c0ffee"));
            return std::task::Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        std::task::Poll::Ready(None)
    }
}

/// A server configuration with `ca`'s leaf (names `localhost`, `127.0.0.1`), speaking `alpn`;
/// asking for a client certificate issued by `client_ca` when given.
fn server_tls(
    ca: &TestCa,
    alpn: &[&[u8]],
    client_ca: Option<&rustls::pki_types::CertificateDer<'static>>,
) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(ca.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(ca.key.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(root) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(root.clone()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).unwrap();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(config)
}

/// A TLS worker with `ca`'s leaf speaking `alpn` (HTTP/2 only if that is `h2`).
fn tls_worker(ca: &TestCa, alpn: &'static [u8]) -> TlsWorker {
    TlsWorker::start(Serving {
        tls: Some(server_tls(ca, &[alpn], None)),
        h2_only: alpn == b"h2",
    })
}

/// A balancer on `config` with `ca`'s certificate written beside it as `ca.pem`.
fn trusting(ca: &TestCa, config: &str) -> Balancer {
    Balancer::start_with(config, &[("ca.pem", ca.ca_pem.as_bytes())])
}

/// One `[[target_group]]` behind `prefix`, with the text of its extra settings.
fn config(groups: &[(&str, &str, &str)]) -> String {
    let mut text = String::from(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n",
    );
    for (name, _, settings) in groups {
        text += &format!("[[target_group]]\nname = \"{name}\"\n{settings}\n\n");
    }
    for (name, prefix, _) in groups {
        text += &format!("[[route]]\nprefix = \"{prefix}\"\ntarget_group = \"{name}\"\n\n");
    }
    text
}

/// `curl` a URL: the status and the body.
fn curl(args: &[&str]) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed (scripts/install-test-deps)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn https_workers_are_verified_by_the_ca_file_named_by_sni_and_their_connections_reused() {
    let ca = TestCa::new();
    let worker = tls_worker(&ca, b"http/1.1");
    let settings = format!(
        "workers = [\"https://{}\"]\ntls = {{ ca_file = \"ca.pem\", server_name = \"localhost\" }}",
        worker.addr
    );
    let b = trusting(&ca, &config(&[("secure", "/", &settings)]));
    for _ in 0..5 {
        let (code, body) = curl(&[&b.url("/x")]);
        assert_eq!((code, body.as_str()), (200, "ok"));
    }
    let seen = worker.seen();
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|s| s.sni.as_deref() == Some("localhost")));
    assert!(seen.iter().all(|s| s.version == http::Version::HTTP_11));
    assert!(seen
        .iter()
        .all(|s| s.headers.contains_key("x-forwarded-for")));
    // Five requests one after another: the TLS connection is pooled and reused (the health
    // checks have their own).
    assert!(
        worker.connections.load(Ordering::Relaxed) <= 3,
        "{} connections for 5 requests",
        worker.connections.load(Ordering::Relaxed)
    );
    let status = b.status();
    let group = &status["target_groups"][0];
    assert_eq!(group["worker_tls"]["server_name"], "localhost");
    assert_eq!(group["worker_protocol"], "http1");
}

#[test]
fn an_untrusted_worker_gets_no_request_unless_the_group_is_insecure() {
    let ca = TestCa::new();
    let start = || tls_worker(&ca, b"http/1.1");
    let (untrusted, unverified) = (start(), start());
    // The system's roots do not know the test CA.
    let strict = format!("workers = [\"https://{}\"]", untrusted.addr);
    let lax = format!(
        "workers = [\"https://{}\"]\ntls = {{ insecure = true }}",
        unverified.addr
    );
    let b = Balancer::start(&config(&[
        ("strict", "/strict", &strict),
        ("lax", "/lax", &lax),
    ]));
    let (code, body) = curl(&[&b.url("/strict")]);
    assert!(code == 502 || code == 503, "{code} {body}");
    assert!(untrusted.seen().is_empty(), "{:?}", untrusted.seen());
    let (code, body) = curl(&[&b.url("/lax")]);
    assert_eq!((code, body.as_str()), (200, "ok"));
    assert_eq!(unverified.seen().len(), 1);
    assert_eq!(
        b.status()["target_groups"][1]["worker_tls"]["insecure"],
        true
    );
}

/// A client CA and a client certificate it issued (PEM), for workers that ask for one.
fn client_identity() -> (rustls::pki_types::CertificateDer<'static>, String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["fulcrum-balancer".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.der().clone(), leaf.pem(), key.serialize_pem())
}

#[test]
fn a_worker_that_asks_for_a_client_certificate_gets_the_configured_one() {
    let ca = TestCa::new();
    let (client_ca, client_cert, client_key) = client_identity();
    let start = || {
        TlsWorker::start(Serving {
            tls: Some(server_tls(&ca, &[b"http/1.1"], Some(&client_ca))),
            h2_only: false,
        })
    };
    let (refused, worker) = (start(), start());
    let without = format!(
        "workers = [\"https://{}\"]\ntls = {{ ca_file = \"ca.pem\" }}",
        refused.addr
    );
    let with = format!(
        "workers = [\"https://{}\"]\n[target_group.tls]\nca_file = \"ca.pem\"\nclient_cert = \"client.pem\"\nclient_key = \"client.key\"",
        worker.addr
    );
    let b = Balancer::start_with(
        &config(&[("without", "/without", &without), ("with", "/with", &with)]),
        &[
            ("ca.pem", ca.ca_pem.as_bytes()),
            ("client.pem", client_cert.as_bytes()),
            ("client.key", client_key.as_bytes()),
        ],
    );
    let (code, body) = curl(&[&b.url("/without")]);
    assert!(code == 502 || code == 503, "{code} {body}");
    assert!(refused.seen().is_empty());
    let (code, body) = curl(&[&b.url("/with")]);
    assert_eq!((code, body.as_str()), (200, "ok"));
    let seen = worker.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].client_cert);
    // Named by IP address: no SNI is sent for one (RFC 6066 §3).
    assert_eq!(seen[0].sni, None);
}

#[test]
fn http2_workers_take_http1_and_http2_clients_bodies_and_trailers() {
    let ca = TestCa::new();
    let h2c = TlsWorker::start(Serving {
        tls: None,
        h2_only: true,
    });
    let h2 = tls_worker(&ca, b"h2");
    let plain = format!("workers = [\"{}\"]\nprotocol = \"h2\"", h2c.addr);
    let secure = format!(
        "workers = [\"https://localhost:{}\"]\nprotocol = \"h2\"\ntls = {{ ca_file = \"ca.pem\" }}",
        h2.addr.port()
    );
    let b = trusting(
        &ca,
        &config(&[("h2c", "/", &plain), ("h2", "/tls", &secure)]),
    );
    let big = vec![b'x'; 300_000];
    let scratch = Scratch::new("h2-body");
    std::fs::write(scratch.path("big"), &big).unwrap();
    let file = format!("@{}", scratch.path("big").display());
    for (worker, prefix) in [(&h2c, ""), (&h2, "/tls")] {
        let url = b.url(&format!("{prefix}/upload"));
        // HTTP/1.1 with a length, HTTP/1.1 chunked, HTTP/2 (prior knowledge): all whole.
        for extra in [
            &[][..],
            &["-H", "transfer-encoding: chunked"][..],
            &["--http2-prior-knowledge"][..],
        ] {
            let mut args = vec!["--data-binary", &file, &url];
            args.extend_from_slice(extra);
            let (code, body) = curl(&args);
            assert_eq!((code, body.as_str()), (200, "ok"), "{extra:?}");
        }
        let seen = worker.seen();
        assert_eq!(seen.len(), 3);
        for s in &seen {
            assert_eq!(s.version, http::Version::HTTP_2);
            assert_eq!(s.body.len(), big.len());
            assert!(s.headers.contains_key("x-forwarded-for"));
            assert!(s.headers.get("transfer-encoding").is_none());
        }
    }
    assert_eq!(h2.seen()[0].sni.as_deref(), Some("localhost"));
    // An HTTP/1.1 client gets the worker's trailers in the last chunk.
    let answer = raw_exchange(
        b.proc.addr,
        b"GET /trailers HTTP/1.1\r\nHost: t\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(
        text.contains("2\r\nok\r\n0\r\nx-checksum: c0ffee\r\n\r\n"),
        "{text}"
    );
    let status = b.status();
    let worker = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["address"] == h2c.addr.to_string())
        .cloned()
        .unwrap();
    assert_eq!(worker["h2_connection_open"], true);
    assert!(b.metrics().contains("worker_h2_connection_open"));
}

#[test]
fn an_h2_group_does_not_send_to_a_worker_that_will_not_speak_http2() {
    let ca = TestCa::new();
    let h1_only = tls_worker(&ca, b"http/1.1");
    let settings = format!(
        "workers = [\"https://{}\"]\nprotocol = \"h2\"\ntls = {{ ca_file = \"ca.pem\", server_name = \"localhost\" }}",
        h1_only.addr
    );
    let b = trusting(&ca, &config(&[("h2", "/", &settings)]));
    let (code, body) = curl(&[&b.url("/")]);
    assert!(code == 502 || code == 503, "{code} {body}");
    assert!(h1_only.seen().is_empty());
    let log = b.proc.stderr_text();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_reload_changes_how_workers_are_reached() {
    let h2c = TlsWorker::start(Serving {
        tls: None,
        h2_only: true,
    });
    let before = format!("workers = [\"{}\"]", h2c.addr);
    let after = format!("workers = [\"{}\"]\nprotocol = \"h2\"", h2c.addr);
    let b = Balancer::start(&config(&[("g", "/", &before)]));
    let (code, _) = curl(&[&b.url("/")]);
    assert!(
        code >= 500,
        "HTTP/1.1 to an HTTP/2-only worker fails: {code}"
    );
    b.write_config(&config(&[("g", "/", &after)]));
    b.proc.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(20), || curl(&[&b.url("/")]).0 == 200),
        "after the reload the group speaks HTTP/2: {}",
        b.proc.stderr_text()
    );
    assert_eq!(b.status()["target_groups"][0]["worker_protocol"], "h2");
}

#[test]
fn mistakes_in_worker_transport_settings_are_located() {
    let dir = Scratch::new("transport-check");
    std::fs::write(dir.path("not-a-cert.pem"), "hello").unwrap();
    let cases: [(&str, &str); 7] = [
        (
            "workers = [\"https://127.0.0.1:1\", \"http://127.0.0.1:2\"]",
            "all `https://` or all `http://`",
        ),
        (
            "workers = [\"http://127.0.0.1:1\"]\ntls = { insecure = true }",
            "is plain HTTP but the group has a `tls` table",
        ),
        (
            "workers = [\"127.0.0.1:1\"]\ntls = { ca_file = \"missing.pem\" }",
            "missing.pem",
        ),
        (
            "workers = [\"127.0.0.1:1\"]\ntls = { ca_file = \"not-a-cert.pem\" }",
            "no certificate in",
        ),
        (
            "workers = [\"127.0.0.1:1\"]\ntls = { client_cert = \"not-a-cert.pem\" }",
            "client_cert and client_key go together",
        ),
        (
            "workers = [\"127.0.0.1:1\"]\ntls = { insecure = true, ca_file = \"not-a-cert.pem\" }",
            "trusts anything",
        ),
        (
            "workers = [\"127.0.0.1:1\"]\nprotocol = \"h3\"",
            "unknown variant `h3`",
        ),
    ];
    for (settings, expected) in cases {
        let path = dir.path("balancer.toml");
        std::fs::write(&path, config(&[("g", "/", settings)])).unwrap();
        let (code, _, err) = run(&["balance", "--config", path.to_str().unwrap(), "--check"]);
        assert_ne!(code, 0, "{settings}");
        assert!(err.contains("balancer.toml:"), "{settings}: {err}");
        assert!(err.contains(expected), "{settings}: {err}");
    }
    // One address, two ways of reaching it.
    let path = dir.path("balancer.toml");
    std::fs::write(
        &path,
        config(&[
            ("a", "/a", "workers = [\"127.0.0.1:1\"]"),
            ("b", "/b", "workers = [\"127.0.0.1:1\"]\nprotocol = \"h2\""),
        ]),
    )
    .unwrap();
    let (code, _, err) = run(&["balance", "--config", path.to_str().unwrap(), "--check"]);
    assert_ne!(code, 0);
    assert!(err.contains("one address speaks one way"), "{err}");
    assert!(err.contains("balancer.toml:"), "{err}");
}

// ───────────── gRPC ─────────────

/// A tonic health server on loopback reporting `service` as `status`; `tls` with the test
/// CA's leaf. Serves until the runtime ends.
async fn health_server(
    service: &str,
    status: tonic_health::ServingStatus,
    tls: Option<&TestCa>,
) -> (SocketAddr, tonic_health::server::HealthReporter) {
    let (reporter, health) = tonic_health::server::health_reporter();
    // tonic's TLS takes the process-wide provider; with every feature on, both ring and
    // aws-lc-rs are linked and none is chosen for it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reporter.set_service_status(service, status).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let mut server = tonic::transport::Server::builder();
    if let Some(ca) = tls {
        let identity = tonic::transport::Identity::from_pem(&ca.cert, &ca.key);
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap();
    }
    let router = server.add_service(health);
    tokio::spawn(router.serve_with_incoming(incoming));
    (addr, reporter)
}

async fn grpc_client(
    url: String,
    ca: Option<&TestCa>,
) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url).unwrap();
    if let Some(ca) = ca {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&ca.ca_pem))
            .domain_name("localhost");
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    let channel = endpoint.connect().await.expect("the balancer takes gRPC");
    tonic_health::pb::health_client::HealthClient::new(channel)
}

fn check(service: &str) -> tonic_health::pb::HealthCheckRequest {
    tonic_health::pb::HealthCheckRequest {
        service: service.into(),
    }
}

#[test]
fn grpc_unary_and_streaming_calls_are_balanced_over_h2c_workers() {
    use tonic_health::ServingStatus;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Two workers that disagree about the service: answers from both show the balancing.
        let (a, reporter_a) = health_server("shop", ServingStatus::Serving, None).await;
        let (b_addr, _reporter_b) = health_server("shop", ServingStatus::NotServing, None).await;
        let settings = format!(
            "workers = [\"{a}\", \"{b_addr}\"]\nprotocol = \"h2\"\npolicy = \"round-robin\"\nworker_body_idle = \"30s\""
        );
        let text = config(&[("grpc", "/", &settings)]);
        let b = tokio::task::spawn_blocking(move || Balancer::start(&text))
            .await
            .unwrap();
        let mut client = grpc_client(format!("http://{}", b.proc.addr), None).await;
        let mut statuses = Vec::new();
        for _ in 0..6 {
            let r = client.check(check("shop")).await.expect("a unary call");
            statuses.push(r.into_inner().status);
        }
        assert!(statuses.contains(&(ServingStatus::Serving as i32)), "{statuses:?}");
        assert!(statuses.contains(&(ServingStatus::NotServing as i32)), "{statuses:?}");
        // A failed call's status comes back in a trailers-only answer.
        let missing = client.check(check("nope")).await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        // A server stream: the first status, then a change made at the worker.
        let mut streams = Vec::new();
        for _ in 0..2 {
            let s = client.watch(check("shop")).await.expect("a streaming call");
            streams.push(s.into_inner());
        }
        let on_a = {
            let mut found = None;
            for (i, s) in streams.iter_mut().enumerate() {
                let first = s.message().await.unwrap().unwrap();
                if first.status == ServingStatus::Serving as i32 {
                    found = Some(i);
                }
            }
            found.expect("one of two round-robin streams is on worker a")
        };
        reporter_a
            .set_service_status("shop", ServingStatus::NotServing)
            .await;
        let next = tokio::time::timeout(Duration::from_secs(10), streams[on_a].message())
            .await
            .expect("the change arrives through the balancer")
            .unwrap()
            .unwrap();
        assert_eq!(next.status, ServingStatus::NotServing as i32);
        drop(streams);
        tokio::task::spawn_blocking(move || drop(b)).await.unwrap();
    });
}

#[test]
fn grpc_goes_over_tls_both_ways() {
    use tonic_health::ServingStatus;
    let ca = TestCa::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (w, _reporter) = health_server("shop", ServingStatus::Serving, Some(&ca)).await;
        let mut text = config(&[(
            "grpc",
            "/",
            &format!(
                "workers = [\"https://{w}\"]\nprotocol = \"h2\"\ntls = {{ ca_file = \"ca.pem\", server_name = \"localhost\" }}"
            ),
        )]);
        text = text.replacen(
            "address = \"127.0.0.1:0\"\n",
            "address = \"127.0.0.1:0\"\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\n",
            1,
        );
        let files = [
            ("ca.pem", ca.ca_pem.clone()),
            ("cert.pem", ca.cert.clone()),
            ("key.pem", ca.key.clone()),
        ];
        let b = tokio::task::spawn_blocking(move || {
            let files: Vec<(&str, &[u8])> =
                files.iter().map(|(n, c)| (*n, c.as_bytes())).collect();
            Balancer::start_with(&text, &files)
        })
        .await
        .unwrap();
        let url = format!("https://localhost:{}", b.proc.addr.port());
        let mut client = grpc_client(url, Some(&ca)).await;
        let r = client.check(check("shop")).await.expect("a unary call over TLS");
        assert_eq!(r.into_inner().status, ServingStatus::Serving as i32);
        tokio::task::spawn_blocking(move || drop(b)).await.unwrap();
    });
}

#[test]
fn health_checks_reach_https_and_h2_workers() {
    let ca = TestCa::new();
    let h2 = tls_worker(&ca, b"h2");
    let settings = format!(
        "workers = [\"https://{}\"]\nprotocol = \"h2\"\ntls = {{ ca_file = \"ca.pem\", server_name = \"localhost\" }}\nhealth = {{ path = \"/health\", interval = \"200ms\" }}",
        h2.addr
    );
    let b = trusting(&ca, &config(&[("g", "/", &settings)]));
    assert!(eventually(Duration::from_secs(10), || {
        b.worker_status(h2.addr)
            .is_some_and(|w| w["health"] == "healthy")
    }));
    let checks: Vec<Seen> = h2
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.path == "/health")
        .cloned()
        .collect();
    assert!(!checks.is_empty());
    assert!(checks.iter().all(|s| s.version == http::Version::HTTP_2));
}

#[test]
fn the_status_page_in_chromium_says_how_each_group_reaches_its_workers() {
    let Some(chromium) = fixture::browser::chromium_or_skip(
        "the_status_page_in_chromium_says_how_each_group_reaches_its_workers",
    ) else {
        return;
    };
    let ca = TestCa::new();
    let h2 = tls_worker(&ca, b"h2");
    let plain = TlsWorker::start(Serving {
        tls: None,
        h2_only: false,
    });
    let secure = format!(
        "workers = [\"https://{}\"]\nprotocol = \"h2\"\ntls = {{ ca_file = \"ca.pem\", server_name = \"localhost\" }}",
        h2.addr
    );
    let text = config(&[
        ("grpc", "/grpc", &secure),
        ("web", "/", &format!("workers = [\"{}\"]", plain.addr)),
    ]);
    let b = trusting(&ca, &text);
    let page = fixture::browser::run_page(chromium, &b.admin_url("/"), Duration::from_millis(2500));
    let dom = &page.dom;
    assert!(dom.contains("to workers"), "{dom}");
    assert!(dom.contains("HTTP/2 over TLS"), "{dom}");
    assert!(dom.contains("<td class=\"l\">HTTP/1.1</td>"), "{dom}");
}
