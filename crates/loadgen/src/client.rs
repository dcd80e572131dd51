//! One generator connection: a keep-alive HTTP/1.1 connection that sends one pre-serialized
//! request at a time and reads the response in place, in the closed or the open model, and
//! records each outcome.
//!
//! The generator speaks the little HTTP/1.1 a benchmark needs itself, on `httparse` (hyper's own
//! parser): it sends requests serialized once per target and mix entry, and reads back only the
//! status, two headers and the body's framing. hyper's client built a header map and ran its
//! dispatcher for every response, which held fulcrum bench to about three quarters of wrk's
//! requests/s against the same target (bench/loadgen.sh); wrk works this way too. Bodies are read and discarded: Content-Length,
//! chunked (trailers included) and close-delimited; `Connection: close` and HTTP/1.0 are honoured
//! by reconnecting. Anything malformed is an I/O error and the connection is not reused.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::mix::Weights;
pub use crate::request::RequestParts;
use crate::request::Template;
use crate::stats::{Completion, Outcome, ThreadStats};
use crate::tls::TlsTarget;

/// Where requests go, and every request it gets (one per mix entry), serialized once.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub requests: Box<[Bytes]>,
    /// For an `https://` target.
    pub tls: Option<TlsTarget>,
    /// `--h2`: the same requests as HTTP/2 sends them (empty over HTTP/1.1).
    pub h2: Box<[Template]>,
}

impl Target {
    pub fn new<'a>(
        addr: SocketAddr,
        authority: &str,
        headers: &[(String, String)],
        requests: &[RequestParts<'a>],
    ) -> Target {
        let own_agent = headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("user-agent"));
        let request = |r: &RequestParts<'_>| {
            let mut out = format!("{} {} HTTP/1.1\r\nHost: {authority}\r\n", r.method, r.path);
            if !own_agent {
                out.push_str("User-Agent: fulcrum-bench\r\n");
            }
            for (name, value) in headers {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
            // A body, or a method that defines one (an empty POST still says so).
            if !r.body.is_empty() || matches!(r.method, "POST" | "PUT" | "PATCH") {
                out.push_str(&format!("Content-Length: {}\r\n", r.body.len()));
            }
            out.push_str("\r\n");
            let mut bytes = out.into_bytes();
            bytes.extend_from_slice(r.body);
            Bytes::from(bytes)
        };
        Target {
            addr,
            requests: requests.iter().map(request).collect(),
            tls: None,
            h2: Box::new([]),
        }
    }
}

/// A response head larger than this is not a response a benchmark target sends.
const MAX_HEAD: usize = 64 * 1024;
/// Headers parsed per response; more is an error (the workers and the balancer send a dozen).
const MAX_HEADERS: usize = 100;
/// How much room each read gets.
const READ_CHUNK: usize = 16 * 1024;

/// A connection's byte stream: plain, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    async fn read_buf(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read_buf(buf).await,
            Stream::Tls(s) => s.read_buf(buf).await,
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => s.write_all(bytes).await,
        }
    }
}

struct Conn {
    stream: Stream,
    /// Starts with the last response's head (the answer's header ranges point into it); body
    /// bytes are read after it and discarded as they are framed.
    buf: Vec<u8>,
}

/// Connects (and for an `https://` target shakes hands); bounded by the request's own deadline
/// (`within`), like the exchange that follows. A failed handshake counts as a connect error.
async fn connect(addr: SocketAddr, tls: Option<&TlsTarget>) -> Result<Conn, Outcome> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|_| Outcome::Connect)?;
    let _ = tcp.set_nodelay(true);
    let stream = match tls {
        None => Stream::Plain(tcp),
        Some(t) => Stream::Tls(Box::new(
            t.connector
                .connect(t.name.clone(), tcp)
                .await
                .map_err(|_| Outcome::Connect)?,
        )),
    };
    Ok(Conn {
        stream,
        buf: Vec::with_capacity(READ_CHUNK),
    })
}

/// What a response said about who answered.
pub struct Answer {
    pub status: u16,
    /// Where `x-fulcrum-cluster` and `x-fulcrum-instance` are in the connection's buffer: read as
    /// text only when recorded, so a response costs no allocation.
    cluster: Option<Range<usize>>,
    instance: Option<Range<usize>>,
    /// The connection may carry another request.
    keep_alive: bool,
}

impl Conn {
    /// Whether the server closed (or wrote to) this connection while it idled between
    /// requests: a keep-alive connection closed by the server's idle timeout is not an error of
    /// the next request, which goes on a new connection instead. Costs a syscall only when the
    /// runtime has already seen the socket become readable.
    ///
    /// Over TLS this cannot be told from the socket (a TLS 1.3 server sends session tickets
    /// after the handshake, and a peek would take record bytes from rustls): a TLS connection
    /// the server closed fails its next request instead.
    fn closed_while_idle(&self) -> bool {
        let Stream::Plain(stream) = &self.stream else {
            return false;
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if stream.poll_read_ready(&mut cx).is_pending() {
            return false;
        }
        !matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    fn text(&self, range: &Option<Range<usize>>) -> Option<&str> {
        range
            .as_ref()
            .and_then(|r| std::str::from_utf8(&self.buf[r.clone()]).ok())
    }

    /// Reads more input after what is buffered; `Ok(0)` is the peer's end of stream.
    async fn read_more(&mut self) -> Result<usize, Outcome> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        self.stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|_| Outcome::Io)
    }

    /// Reads more input; the stream ending here is an error (a response was cut short).
    async fn fill(&mut self) -> Result<(), Outcome> {
        match self.read_more().await? {
            0 => Err(Outcome::Io),
            _ => Ok(()),
        }
    }

    /// Discards `n` body bytes starting at `at`, reading as needed; what follows them stays
    /// at `at`.
    async fn skip(&mut self, at: usize, mut n: u64) -> Result<(), Outcome> {
        loop {
            let buffered = (self.buf.len() - at) as u64;
            if buffered >= n {
                self.buf.drain(at..at + n as usize);
                return Ok(());
            }
            n -= buffered;
            self.buf.truncate(at);
            self.fill().await?;
        }
    }

    /// Makes sure a whole CRLF-terminated line is buffered at `at`; returns its length
    /// including the CRLF.
    async fn line(&mut self, at: usize) -> Result<usize, Outcome> {
        loop {
            if let Some(i) = self.buf[at..].windows(2).position(|w| w == b"\r\n") {
                return Ok(i + 2);
            }
            if self.buf.len() - at > MAX_HEAD {
                return Err(Outcome::Io);
            }
            self.fill().await?;
        }
    }

    /// Reads a chunked body after the head at `at`, trailers included.
    async fn skip_chunked(&mut self, at: usize) -> Result<(), Outcome> {
        loop {
            let size = loop {
                match httparse::parse_chunk_size(&self.buf[at..]) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.buf.drain(at..at + used);
                        break size;
                    }
                    Ok(httparse::Status::Partial) if self.buf.len() - at <= MAX_HEAD => {
                        self.fill().await?
                    }
                    _ => return Err(Outcome::Io),
                }
            };
            if size == 0 {
                // Trailer fields, then the empty line that ends the message.
                loop {
                    let n = self.line(at).await?;
                    self.buf.drain(at..at + n);
                    if n == 2 {
                        return Ok(());
                    }
                }
            }
            self.skip(at, size).await?;
            if self.line(at).await? != 2 {
                return Err(Outcome::Io);
            }
            self.buf.drain(at..at + 2);
        }
    }
}

/// How a response's body is delimited (RFC 9112 §6.3).
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// The parts of a response head the generator acts on.
struct Head {
    len: usize,
    status: u16,
    cluster: Option<Range<usize>>,
    instance: Option<Range<usize>>,
    framing: Framing,
    keep_alive: bool,
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses a response head at the start of `buf`: `Ok(None)` when more input is needed.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Outcome> {
    // Uninitialised slots: zeroing a hundred headers for every response costs more than parsing.
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
        _ => return Err(Outcome::Io),
    };
    let status = resp.code.ok_or(Outcome::Io)?;
    let http10 = resp.version == Some(0);
    let offset = |v: &[u8]| {
        let start = v.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + v.len()
    };
    let (mut cluster, mut instance, mut length, mut chunked) = (None, None, None, false);
    let mut keep_alive = !http10;
    for h in resp.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("x-fulcrum-cluster") {
            cluster = Some(offset(h.value));
        } else if name.eq_ignore_ascii_case("x-fulcrum-instance") {
            instance = Some(offset(h.value));
        } else if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or(Outcome::Io)?;
            // Differing lengths make the framing ambiguous (RFC 9112 §6.3).
            if length.is_some_and(|l| l != n) {
                return Err(Outcome::Io);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only counts as the final coding; anything else is delimited by close.
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                length = None;
                keep_alive = false;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            if has_token(h.value, "close") {
                keep_alive = false;
            } else if http10 && has_token(h.value, "keep-alive") {
                keep_alive = true;
            }
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    Ok(Some(Head {
        len,
        status,
        cluster,
        instance,
        framing,
        keep_alive,
    }))
}

/// Sends one request and reads the whole response.
async fn exchange(c: &mut Conn, request: &[u8]) -> Result<Answer, Outcome> {
    // Requests are not pipelined, so nothing read before this request belongs to it.
    c.buf.clear();
    c.stream.write_all(request).await.map_err(|_| Outcome::Io)?;
    let head = loop {
        match parse_head(&c.buf)? {
            // Interim responses (100 Continue and the like) precede the real one.
            Some(h) if (100..200).contains(&h.status) && h.status != 101 => {
                c.buf.drain(..h.len);
            }
            Some(h) if h.status == 101 => return Err(Outcome::Io),
            Some(h) => break h,
            None => c.fill().await?,
        }
    };
    let at = head.len;
    let mut keep_alive = head.keep_alive;
    // The answer to HEAD announces a body it does not carry (RFC 9110 §9.3.2).
    let framing = if request.starts_with(b"HEAD ") {
        Framing::Empty
    } else {
        head.framing
    };
    match framing {
        Framing::Empty => {}
        Framing::Length(n) => c.skip(at, n).await?,
        Framing::Chunked => c.skip_chunked(at).await?,
        Framing::UntilClose => loop {
            c.buf.truncate(at);
            if c.read_more().await? == 0 {
                break;
            }
        },
    }
    // More than one response's worth: the peer is out of step; do not reuse the connection.
    if c.buf.len() > at {
        keep_alive = false;
    }
    Ok(Answer {
        status: head.status,
        cluster: head.cluster,
        instance: head.instance,
        keep_alive,
    })
}

/// Runs `work` until `deadline`, on the connection's one timer.
///
/// The timer is re-armed lazily: it stays set to an earlier request's deadline (the sooner one,
/// with a fixed timeout), and when it fires before this one's, it moves there. A timer per
/// request (`tokio::time::timeout`) added and removed a timer-wheel entry for every response, a
/// few percent of the generator's CPU; this moves it about once per timeout period.
pub(crate) async fn within<T>(
    mut timer: Pin<&mut Sleep>,
    deadline: Instant,
    work: impl Future<Output = Result<T, Outcome>>,
) -> Result<T, Outcome> {
    if timer.deadline() > deadline.into() {
        timer.as_mut().reset(deadline.into());
    }
    let mut work = pin!(work);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = work.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return Poll::Ready(Err(Outcome::Timeout));
            }
            timer.as_mut().reset(deadline.into());
        }
        Poll::Pending
    })
    .await
}

/// The request schedule a connection draws from.
pub enum Schedule {
    /// Closed model: take the next of `total` requests (shared by every connection of every
    /// thread) as soon as the previous one ends.
    Closed {
        next: std::sync::Arc<std::sync::atomic::AtomicU64>,
        total: u64,
    },
    /// Open model: this thread's constant schedule for one target (its lane, see `spread`),
    /// `interval` apart from `start`, until `end`; `next` is shared by the thread's connections
    /// to that target.
    Open {
        next: Rc<Cell<u64>>,
        start: Instant,
        interval: Duration,
        end: Instant,
    },
}

/// Shared settings of one thread's connections.
#[derive(Clone)]
pub struct Run {
    pub targets: Vec<Target>,
    /// Which of a target's requests each send is.
    pub weights: Weights,
    pub timeout: Duration,
    /// When the first request may go (warm-up, if any, starts here).
    pub start: Instant,
    /// Responses completing before this are warm-up: sent, not measured.
    pub measure_from: Instant,
    /// Open model: the end of the schedule; completions inside `[measure_from, window_end)`
    /// make the achieved rate.
    pub window_end: Option<Instant>,
    /// Nothing is sent after this (open model: the schedule's end plus one timeout).
    pub stop_at: Instant,
    /// How every connection speaks: HTTP/1.1, or HTTP/2 with this many streams each.
    pub protocol: crate::Protocol,
}

/// Late requests: sent more than this after their intended time because the connection was
/// still busy when they were due.
const LATE: Duration = Duration::from_millis(1);

/// What the schedule says about this connection's next request.
enum Slot {
    /// The schedule is exhausted.
    Done,
    /// Owed past the hard stop: never sent.
    Unsent,
    /// Send now; in the open model, when it was due and whether it is late (the connection
    /// was busy when it was due).
    Send(Option<(Instant, bool)>),
}

/// Takes the next request from the schedule, waiting for its slot if it is ahead of time.
async fn next_slot(schedule: &Schedule, run: &Run) -> Slot {
    let (next, start, interval, end) = match schedule {
        Schedule::Closed { next, total } => {
            if next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= *total {
                return Slot::Done;
            }
            return Slot::Send(None);
        }
        Schedule::Open {
            next,
            start,
            interval,
            end,
        } => (next, start, interval, end),
    };
    let i = next.get();
    let at = *start + interval.mul_f64(i as f64);
    if at >= *end {
        return Slot::Done;
    }
    next.set(i + 1);
    let picked = Instant::now();
    if picked >= run.stop_at {
        // Still owed at the hard stop: never sent; counted, not timed.
        return if at >= run.measure_from {
            Slot::Unsent
        } else {
            Slot::Send(None)
        };
    }
    if at > picked {
        // Ahead of schedule: wait for the slot. The runtime's timer fires up to a millisecond
        // late; that slop is the generator's, not the server's, so the request is then timed
        // from when it really left.
        tokio::time::sleep_until(at.into()).await;
        Slot::Send(Some((at, false)))
    } else {
        // Behind schedule: this connection was still busy with an earlier request when this
        // one was due. That wait is exactly what coordinated omission hides, so the request is
        // timed from its intended send time.
        Slot::Send(Some((at, true)))
    }
}

/// The next request to send — when it was due and whether it is late, in the open model — or
/// `None` once the schedule is exhausted; requests owed past the hard stop are counted in
/// `unsent` and skipped.
pub(crate) async fn next_send(
    schedule: &Schedule,
    run: &Run,
    unsent: &mut u64,
) -> Option<Option<(Instant, bool)>> {
    loop {
        let intended = match next_slot(schedule, run).await {
            Slot::Done => return None,
            Slot::Unsent => {
                *unsent += 1;
                continue;
            }
            Slot::Send(intended) => intended,
        };
        if Instant::now() < run.stop_at {
            return Some(intended);
        }
        if intended.is_some_and(|(at, _)| at >= run.measure_from) {
            *unsent += 1;
        }
    }
}

/// One connection's loop, until the schedule is exhausted; returns the requests it owed and
/// never sent.
pub async fn connection(
    run: Rc<Run>,
    schedule: Rc<Schedule>,
    stats: Rc<std::cell::RefCell<ThreadStats>>,
    index: usize,
    target: usize,
) -> u64 {
    let to = &run.targets[target];
    // Seeded by the connection's number, so its picks are the same from run to run.
    let mut rng = fastrand::Rng::with_seed(index as u64);
    let mut conn: Option<Conn> = None;
    // The connection's one timer: first the run's start (nobody sends before it, so warm-up
    // and measurement begin on time), then each request's deadline.
    let mut timer = pin!(tokio::time::sleep_until(run.start.into()));
    timer.as_mut().await;
    let mut unsent = 0u64;
    while let Some(intended) = next_send(&schedule, &run, &mut unsent).await {
        let entry = run.weights.pick(&mut rng);
        let sent = Instant::now();
        let result = within(timer.as_mut(), sent + run.timeout, async {
            if conn.as_ref().is_none_or(Conn::closed_while_idle) {
                conn = Some(connect(to.addr, to.tls.as_ref()).await?);
            }
            exchange(conn.as_mut().expect("connected"), &to.requests[entry]).await
        })
        .await;
        let exchange = Exchange {
            intended,
            sent,
            done: Instant::now(),
            target,
            entry,
        };
        let (outcome, who) = match (&result, conn.as_ref()) {
            (Ok(a), Some(c)) => (
                Outcome::Status(a.status),
                (c.text(&a.cluster), c.text(&a.instance)),
            ),
            (Ok(a), None) => (Outcome::Status(a.status), (None, None)),
            (Err(o), _) => (*o, (None, None)),
        };
        record(&run, &mut stats.borrow_mut(), &exchange, outcome, who);
        // A failed connection, or one the server is closing, is not reused.
        if !result.as_ref().is_ok_and(|a| a.keep_alive) {
            conn = None;
        }
        if matches!(result, Err(Outcome::Connect)) {
            // Do not spin on a refused port: the schedule, not the error rate, sets the pace.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    unsent
}

/// One request's times and what it was.
pub(crate) struct Exchange {
    pub intended: Option<(Instant, bool)>,
    pub sent: Instant,
    pub done: Instant,
    pub target: usize,
    pub entry: usize,
}

/// Counts a completed request in the window and, when it falls in the measured part, records
/// its latency (from when it was due, if it was late) and service time.
/// `who` is the answer's cluster and instance, when it named them.
pub(crate) fn record(
    run: &Run,
    s: &mut ThreadStats,
    x: &Exchange,
    outcome: Outcome,
    (cluster, instance): (Option<&str>, Option<&str>),
) {
    let answered = matches!(outcome, Outcome::Status(_));
    let in_window = x.done >= run.measure_from && run.window_end.is_none_or(|end| x.done < end);
    if answered && in_window {
        s.window_completions += 1;
    }
    let scheduled = x.intended.map_or(x.sent, |(at, _)| at);
    if !(scheduled >= run.measure_from || (x.intended.is_none() && x.done >= run.measure_from)) {
        return;
    }
    if x.intended
        .is_some_and(|(at, behind)| behind && x.sent.duration_since(at) > LATE)
    {
        s.late += 1;
    }
    let origin = match x.intended {
        Some((at, true)) => at,
        _ => x.sent,
    };
    s.record(&Completion {
        outcome,
        latency_us: x.done.duration_since(origin).as_micros() as u64,
        service_us: x.done.duration_since(x.sent).as_micros() as u64,
        second: x.done.saturating_duration_since(run.measure_from).as_secs(),
        cluster,
        instance,
        target: x.target,
        entry: x.entry,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A loopback server that answers each request on one connection with the next canned
    /// response, written `step` bytes at a time, then closes.
    async fn server(responses: Vec<&'static [u8]>, step: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            for r in responses {
                // One whole request head before each answer.
                while !req.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if s.read(&mut b).await.unwrap() == 0 {
                        return;
                    }
                    req.push(b[0]);
                }
                req.clear();
                for chunk in r.chunks(step) {
                    s.write_all(chunk).await.unwrap();
                    s.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
        });
        addr
    }

    async fn ask(c: &mut Conn) -> Result<(u16, Option<String>, Option<String>, bool), Outcome> {
        let a = exchange(c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        let text = |r: &Option<Range<usize>>| c.text(r).map(str::to_owned);
        Ok((a.status, text(&a.cluster), text(&a.instance), a.keep_alive))
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn keep_alive_exchanges_with_every_framing() {
        rt().block_on(async {
            for step in [usize::MAX, 1] {
                let addr = server(
                    vec![
                        b"HTTP/1.1 200 OK\r\nx-fulcrum-cluster: 2\r\nx-fulcrum-instance: c2-i1\r\ncontent-length: 5\r\n\r\nhello",
                        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\nX-Fulcrum-Cluster: 1\r\n\r\n3;ext=1\r\nabc\r\n0\r\nx-trailer: t\r\n\r\n",
                        b"HTTP/1.1 204 No Content\r\n\r\n",
                        b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end",
                    ],
                    step,
                )
                .await;
                let mut c = connect(addr, None).await.unwrap();
                assert_eq!(
                    ask(&mut c).await.unwrap(),
                    (200, Some("2".into()), Some("c2-i1".into()), true)
                );
                assert_eq!(ask(&mut c).await.unwrap(), (503, Some("1".into()), None, true));
                assert_eq!(ask(&mut c).await.unwrap(), (204, None, None, true));
                assert_eq!(ask(&mut c).await.unwrap(), (200, None, None, false));
            }
        });
    }

    #[test]
    fn http10_closes_unless_kept_alive() {
        rt().block_on(async {
            let addr = server(
                vec![
                    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
                    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
                ],
                usize::MAX,
            )
            .await;
            let mut c = connect(addr, None).await.unwrap();
            assert!(ask(&mut c).await.unwrap().3);
            assert!(!ask(&mut c).await.unwrap().3);
        });
    }

    #[test]
    fn malformed_or_cut_short_responses_are_io_errors() {
        let bad: [&'static [u8]; 5] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
            b"not http at all\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ];
        rt().block_on(async {
            for r in bad {
                let addr = server(vec![r], usize::MAX).await;
                let mut c = connect(addr, None).await.unwrap();
                assert!(
                    matches!(ask(&mut c).await, Err(Outcome::Io)),
                    "{}",
                    String::from_utf8_lossy(r)
                );
            }
        });
    }

    #[test]
    fn a_connection_the_server_closed_while_idle_is_noticed_before_sending() {
        rt().block_on(async {
            // One response, then the server closes (the end of its `server` task).
            let addr = server(
                vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
                usize::MAX,
            )
            .await;
            let mut c = connect(addr, None).await.unwrap();
            assert!(!c.closed_while_idle());
            assert!(ask(&mut c).await.unwrap().3);
            let t0 = Instant::now();
            while !c.closed_while_idle() {
                assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "the close was never seen"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

    #[test]
    fn extra_bytes_after_a_response_retire_the_connection() {
        rt().block_on(async {
            let addr = server(
                vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"],
                usize::MAX,
            )
            .await;
            let mut c = connect(addr, None).await.unwrap();
            assert_eq!(ask(&mut c).await.unwrap(), (200, None, None, false));
        });
    }

    #[test]
    fn the_timer_fires_at_the_deadline_not_before() {
        rt().block_on(async {
            let mut timer = pin!(tokio::time::sleep_until(Instant::now().into()));
            let start = Instant::now();
            // Work that finishes in time, re-arming nothing it does not need.
            let ok = within(timer.as_mut(), start + Duration::from_secs(5), async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok::<_, Outcome>(1)
            })
            .await;
            assert!(matches!(ok, Ok(1)));
            // The timer is still armed at the first deadline: a sooner one must move it, and a
            // later one must not fire early.
            let late = within(
                timer.as_mut(),
                Instant::now() + Duration::from_millis(150),
                async { std::future::pending::<Result<(), Outcome>>().await },
            )
            .await;
            let waited = start.elapsed();
            assert!(matches!(late, Err(Outcome::Timeout)));
            assert!(waited >= Duration::from_millis(150), "{waited:?}");
            assert!(waited < Duration::from_secs(2), "{waited:?}");
            let start = Instant::now();
            let late = within(timer.as_mut(), start + Duration::from_millis(300), async {
                std::future::pending::<Result<(), Outcome>>().await
            })
            .await;
            assert!(matches!(late, Err(Outcome::Timeout)));
            assert!(start.elapsed() >= Duration::from_millis(300));
        });
    }
}
