//! `--h2`: one generator connection speaking HTTP/2 — h2c with prior knowledge on `http://`,
//! ALPN `h2` on `https://` — with `streams` requests in flight on it at once.
//!
//! Each stream runs the same loop as an HTTP/1.1 connection (`client`): take the next request
//! from the schedule, send it, read the whole answer, record it; so the closed and open models,
//! late requests and latency from the intended send time mean the same over both protocols,
//! with connections × streams requests in flight at most. The streams of a connection share
//! one `h2` client connection, driven by its own task on the thread's runtime.
//!
//! The `h2` crate directly, not hyper's HTTP/2 client: hyper adds a dispatcher task, a channel
//! hop and a `Body` wrapper per request on top of the same `h2` streams, which a generator pays
//! for on every response.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, HeaderName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::client::{self, Run, Schedule};
#[cfg(test)]
use crate::request::RequestParts;
use crate::request::Template;
use crate::stats::{Outcome, ThreadStats};
use crate::tls::TlsTarget;

/// Flow-control windows we grant the server: large, so small answers never wait for a
/// WINDOW_UPDATE and few are sent (h2load's defaults are larger still).
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;

/// An HTTP/2 connection the streams of one generator connection share, reopened when it dies.
struct Connection {
    addr: SocketAddr,
    tls: Option<TlsTarget>,
    /// The live connection's handle and its generation (how many were opened before it).
    current: RefCell<Option<(u64, SendRequest<Bytes>)>>,
    /// A stream is opening a connection: the others wait for it rather than open one each.
    opening: Cell<bool>,
    /// Wakes every waiting stream at once when an opening ends, so they send their first
    /// requests together — in one write, as h2load does. Woken one by one (a lock handed
    /// on), they went out in several small writes, and a server answering each read's
    /// requests in one write kept the split for the rest of the run: twice the syscalls on
    /// both sides for the same requests.
    opened_or_failed: tokio::sync::Notify,
    opened: Cell<u64>,
}

impl Connection {
    /// A handle on the live connection, opening one if there is none or it is the generation
    /// the caller saw die.
    async fn handle(&self, dead: Option<u64>) -> Result<(u64, SendRequest<Bytes>), Outcome> {
        loop {
            if let Some((generation, send)) = self.current.borrow().as_ref() {
                if dead != Some(*generation) {
                    return Ok((*generation, send.clone()));
                }
            }
            if !self.opening.get() {
                break;
            }
            self.opened_or_failed.notified().await;
        }
        self.opening.set(true);
        // Also when this request times out while connecting: the others must not wait forever.
        let done = OnDrop(|| {
            self.opening.set(false);
            self.opened_or_failed.notify_waiters();
        });
        *self.current.borrow_mut() = None;
        let send = open(self.addr, self.tls.as_ref()).await?;
        let generation = self.opened.get() + 1;
        self.opened.set(generation);
        *self.current.borrow_mut() = Some((generation, send.clone()));
        drop(done);
        // The woken streams queue their requests first; this one's joins them, and the
        // connection's task writes them all at once.
        tokio::task::yield_now().await;
        Ok((generation, send))
    }
}

/// Runs its closure when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Connects, shakes hands (TLS with ALPN `h2`, then HTTP/2's preface and settings) and starts
/// the connection's driver task. Any failure is a connect error, as over HTTP/1.1.
async fn open(addr: SocketAddr, tls: Option<&TlsTarget>) -> Result<SendRequest<Bytes>, Outcome> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|_| Outcome::Connect)?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => handshake(tcp).await,
        Some(t) => {
            let stream = t
                .connector
                .connect(t.name.clone(), tcp)
                .await
                .map_err(|_| Outcome::Connect)?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(Outcome::Connect);
            }
            handshake(stream).await
        }
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Bytes>, Outcome>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (send, connection) = h2::client::Builder::new()
        .enable_push(false)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|_| Outcome::Connect)?;
    // Ends when every handle and stream is dropped, or the connection fails.
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    Ok(send)
}

/// One stream's hold on its connection: the handle it sends on, and the generation it last saw
/// die (so it asks for a new connection, not that one again).
struct Sender {
    connection: Rc<Connection>,
    current: Option<(u64, SendRequest<Bytes>)>,
    dead: Option<u64>,
}

impl Sender {
    /// A handle ready to open a stream (waiting while the server's concurrency limit is
    /// reached). A connection found dead here — the server closed it between requests — is
    /// replaced once without counting against the request, as over HTTP/1.1.
    async fn ready(&mut self) -> Result<&mut SendRequest<Bytes>, Outcome> {
        for _ in 0..2 {
            let (generation, send) = match self.current.take() {
                Some(current) => current,
                None => self.connection.handle(self.dead).await?,
            };
            match send.ready().await {
                Ok(send) => {
                    let (_, send) = self.current.insert((generation, send));
                    return Ok(send);
                }
                Err(_) => self.dead = Some(generation),
            }
        }
        Err(Outcome::Io)
    }

    /// The connection failed under a request: the next one asks for a new connection.
    fn lost(&mut self) {
        if let Some((generation, _)) = self.current.take() {
            self.dead = Some(generation);
        }
    }
}

/// What an HTTP/2 answer said.
struct Answer {
    status: u16,
    headers: HeaderMap,
}

/// Who answered, when the balancer or a worker says (parsed once, not per response).
const CLUSTER: HeaderName = HeaderName::from_static("x-fulcrum-cluster");
const INSTANCE: HeaderName = HeaderName::from_static("x-fulcrum-instance");

impl Answer {
    fn text(&self, name: &HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Whether a stream's failure took its connection with it: a reset stream (the server refused
/// or cancelled this one request) leaves the connection usable; GOAWAY, I/O and protocol errors
/// end it.
fn connection_lost(e: &h2::Error) -> bool {
    !e.is_reset() || e.is_go_away() || e.is_io()
}

/// Sends one request on its own stream and reads the whole answer (body and trailers).
async fn exchange(sender: &mut Sender, template: &Template) -> Result<Answer, Outcome> {
    let send = sender.ready().await?;
    let has_body = !template.body.is_empty();
    let sent = send.send_request(template.request(), !has_body);
    let result = async {
        let (response, mut stream) = sent?;
        if has_body {
            stream.send_data(template.body.clone(), true)?;
        }
        let (parts, mut body) = response.await?.into_parts();
        while let Some(chunk) = body.data().await {
            // Released at once: the window stays open however long the answer.
            let _ = body.flow_control().release_capacity(chunk?.len());
        }
        if !body.is_end_stream() {
            body.trailers().await?;
        }
        Ok::<_, h2::Error>(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
        })
    }
    .await;
    result.map_err(|e| {
        if connection_lost(&e) {
            sender.lost();
        }
        Outcome::Io
    })
}

/// One generator connection over HTTP/2: `streams` loops share it; returns the requests they
/// owed and never sent.
pub async fn connection(
    run: Rc<Run>,
    schedule: Rc<Schedule>,
    stats: Rc<std::cell::RefCell<ThreadStats>>,
    index: usize,
    target: usize,
    streams: usize,
) -> u64 {
    let to = &run.targets[target];
    let shared = Rc::new(Connection {
        addr: to.addr,
        tls: to.tls.clone(),
        current: RefCell::new(None),
        opening: Cell::new(false),
        opened_or_failed: tokio::sync::Notify::new(),
        opened: Cell::new(0),
    });
    let loops: Vec<_> = (0..streams)
        .map(|s| {
            let sender = Sender {
                connection: shared.clone(),
                current: None,
                dead: None,
            };
            let seed = (index * streams + s) as u64;
            tokio::task::spawn_local(stream_loop(
                run.clone(),
                schedule.clone(),
                stats.clone(),
                sender,
                seed,
                target,
            ))
        })
        .collect();
    let mut unsent = 0;
    for l in loops {
        unsent += l.await.unwrap_or(0);
    }
    unsent
}

/// One stream's loop: the HTTP/1.1 connection's loop, on a stream of a shared connection.
async fn stream_loop(
    run: Rc<Run>,
    schedule: Rc<Schedule>,
    stats: Rc<std::cell::RefCell<ThreadStats>>,
    mut sender: Sender,
    seed: u64,
    target: usize,
) -> u64 {
    let templates = &run.targets[target].h2;
    // Seeded by the stream's number, so its picks are the same from run to run.
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut timer = pin!(tokio::time::sleep_until(run.start.into()));
    timer.as_mut().await;
    let mut unsent = 0u64;
    while let Some(intended) = client::next_send(&schedule, &run, &mut unsent).await {
        let entry = run.weights.pick(&mut rng);
        let sent = Instant::now();
        // Pinned where it is built: the exchange's state machine is large (h2's response and
        // body futures, the answer's fields), and moving it into `within` by value copied it
        // several times per request.
        let work = pin!(exchange(&mut sender, &templates[entry]));
        let result = client::within(timer.as_mut(), sent + run.timeout, work).await;
        let exchange = client::Exchange {
            intended,
            sent,
            done: Instant::now(),
            target,
            entry,
        };
        let (outcome, cluster, instance) = match &result {
            Ok(a) => (
                Outcome::Status(a.status),
                a.text(&CLUSTER),
                a.text(&INSTANCE),
            ),
            Err(o) => (*o, None, None),
        };
        client::record(
            &run,
            &mut stats.borrow_mut(),
            &exchange,
            outcome,
            (cluster, instance),
        );
        if matches!(result, Err(Outcome::Connect)) {
            // Do not spin on a refused port: the schedule, not the error rate, sets the pace.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    unsent
}

/// Before a run: does every target speak HTTP/2? A server that does not is a setting that
/// cannot make a run, said in one line, rather than a run of nothing but errors. A target that
/// cannot be reached, or whose certificate is not trusted, is left to the run, which counts
/// connect errors as it does over HTTP/1.1.
pub fn check_targets(targets: &[(&str, &client::Target)], timeout: Duration) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime: {e}"))?;
    rt.block_on(async {
        for (url, target) in targets {
            speaks_h2(target, timeout)
                .await
                .map_err(|e| format!("--h2: {url}: {e}"))?;
        }
        Ok(())
    })
}

async fn speaks_h2(target: &client::Target, timeout: Duration) -> Result<(), String> {
    let Ok(Ok(tcp)) = tokio::time::timeout(timeout, TcpStream::connect(target.addr)).await else {
        return Ok(());
    };
    let Some(tls) = &target.tls else {
        return answers_preface(tcp, timeout).await;
    };
    match tokio::time::timeout(timeout, tls.connector.connect(tls.name.clone(), tcp)).await {
        Ok(Ok(stream)) => match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Ok(()),
            Some(other) => Err(format!(
                "the server chose {} over ALPN h2: it does not serve HTTP/2 here",
                String::from_utf8_lossy(other)
            )),
            None => {
                Err("the server negotiated no ALPN protocol: it does not serve HTTP/2 here".into())
            }
        },
        Ok(Err(e)) if refused_alpn(&e) => {
            Err("the server refused ALPN h2: it does not serve HTTP/2 here".into())
        }
        _ => Ok(()),
    }
}

/// The TLS handshake failed because the server has no protocol in common with our `h2`.
fn refused_alpn(e: &std::io::Error) -> bool {
    let alert = rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol);
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| *r == alert)
}

/// h2c with prior knowledge: the client's preface and an empty SETTINGS frame must be answered
/// with the server's SETTINGS frame (RFC 9113 §3.4).
async fn answers_preface(mut tcp: TcpStream, timeout: Duration) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    const NOT_H2C: &str =
        "it does not speak h2c (HTTP/2 over cleartext with prior knowledge); use an https:// URL \
         if it offers HTTP/2 over TLS";
    let mut frame_head = [0u8; 9];
    let exchange = async {
        tcp.write_all(PREFACE_AND_SETTINGS).await?;
        tcp.read_exact(&mut frame_head).await
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(format!(
            "no answer to the HTTP/2 preface in {timeout:?}: {NOT_H2C}"
        )),
        Ok(Err(_)) => Err(format!(
            "the server closed the connection on the HTTP/2 preface: {NOT_H2C}"
        )),
        Ok(Ok(_)) if frame_head.starts_with(b"HTTP/") => Err(format!(
            "the server answered the HTTP/2 preface in HTTP/1: {NOT_H2C}"
        )),
        // A frame of type SETTINGS (4) on stream 0.
        Ok(Ok(_)) if frame_head[3] == 4 && frame_head[5..9] == [0; 4] => Ok(()),
        Ok(Ok(_)) => Err(format!(
            "the server did not answer the HTTP/2 preface with SETTINGS: {NOT_H2C}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(method: &'a str, body: &'a [u8]) -> RequestParts<'a> {
        RequestParts {
            method,
            path: "/orders?x=1",
            body,
        }
    }

    #[test]
    fn templates_carry_the_request_as_http2_sends_it() {
        let headers = [("X-Tenant".to_owned(), "acme".to_owned())];
        let t = Template::new("https", "lb:8443", &headers, &parts("POST", b"{}")).unwrap();
        let r = t.request();
        assert_eq!(r.method(), "POST");
        assert_eq!(r.uri(), "https://lb:8443/orders?x=1");
        assert_eq!(r.headers()["x-tenant"], "acme");
        assert_eq!(r.headers()["user-agent"], "fulcrum-bench");
        assert_eq!(r.headers()["content-length"], "2");
        assert_eq!(t.body, &b"{}"[..]);
        let get = Template::new("http", "a", &[], &parts("GET", b"")).unwrap();
        assert!(get.request().headers().get("content-length").is_none());
    }

    #[test]
    fn connection_specific_headers_are_refused() {
        for (name, value) in [
            ("Upgrade", "websocket"),
            ("Keep-Alive", "5"),
            ("TE", "gzip"),
        ] {
            let headers = [(name.to_owned(), value.to_owned())];
            let e = Template::new("http", "a", &headers, &parts("GET", b"")).unwrap_err();
            assert!(e.contains("connection-specific"), "{name}: {e}");
        }
        let trailers = [("te".to_owned(), "trailers".to_owned())];
        assert!(Template::new("http", "a", &trailers, &parts("GET", b"")).is_ok());
    }

    /// A loopback listener that answers the preface with `reply` and closes.
    async fn answering(reply: &'static [u8]) -> TcpStream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut preface = [0u8; 33];
            s.read_exact(&mut preface).await.unwrap();
            s.write_all(reply).await.unwrap();
        });
        TcpStream::connect(addr).await.unwrap()
    }

    #[test]
    fn only_a_settings_frame_answers_the_preface() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let t = Duration::from_secs(5);
            let settings = b"\0\0\x06\x04\0\0\0\0\0\0\x03\0\0\0\x64";
            assert_eq!(answers_preface(answering(settings).await, t).await, Ok(()));
            let http1 = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
            let e = answers_preface(answering(http1).await, t)
                .await
                .unwrap_err();
            assert!(e.contains("answered the HTTP/2 preface in HTTP/1"), "{e}");
            let e = answers_preface(answering(b"").await, t).await.unwrap_err();
            assert!(e.contains("closed the connection"), "{e}");
            // A frame, but not SETTINGS (a PING).
            let ping = b"\0\0\x08\x06\0\0\0\0\0\0\0\0\0\0\0\0\0";
            let e = answers_preface(answering(ping).await, t).await.unwrap_err();
            assert!(
                e.contains("did not answer the HTTP/2 preface with SETTINGS"),
                "{e}"
            );
        });
    }
}
