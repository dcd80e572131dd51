//! The access log: one line per request, as JSON or in a text format close to ALB's, written
//! off the request path.
//!
//! A request formats its finished [`Record`] into its proxy thread's batch; a full batch (or
//! one 100 ms old, `flush_local` on the thread's tick) goes to the writer thread through a
//! bounded queue. Handing over lines one by one would wake the writer for every request — a
//! context switch per request on the proxy's own core — where a batch wakes it once per ~200
//! lines. When the queue is full the batch is counted as dropped, never waited for, so a slow
//! disk or a stalled stdout cannot slow a request. The writer writes each batch whole and
//! flushes when the queue runs dry. It reopens its file when asked (every SIGHUP, so
//! logrotate's `postrotate` can signal the balancer) and follows a reload that moves the log.
//! One access log per process: the batches are per thread, not per log.
//!
//! It owns the record and its two formats; what a request did is measured on the request path
//! (`proxy.rs`, `forward.rs`), and the settings live in `config/`.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;

use crate::config::AccessLogFormat;
use crate::errors::ProxyError;
use crate::route::{Decision, RouteEntry, RuleEntry};

/// A thread's batch goes to the writer once it holds this many bytes (~200 lines).
const BATCH_BYTES: usize = 64 * 1024;

/// Emptied batch buffers kept for reuse (one or two per proxy thread in practice).
const SPARE_BATCHES: usize = 16;

/// Batches waiting for the writer; beyond this they are dropped and counted (at most ~16 MB
/// held).
const QUEUE_BATCHES: usize = 256;

thread_local! {
    /// This thread's lines not yet handed to the writer, and how many.
    static BATCH: std::cell::RefCell<(Vec<u8>, u64)> = const { std::cell::RefCell::new((Vec::new(), 0)) };
}

/// How often an idle writer looks for a reopen request.
const IDLE_LOOK: Duration = Duration::from_millis(100);

/// What one request did, as the access log tells it.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// When its head had been read.
    pub time: Option<SystemTime>,
    pub client: Option<SocketAddr>,
    pub listener: Option<SocketAddr>,
    /// `HTTP/1.1`, `HTTP/1.0` or `HTTP/2.0`.
    pub protocol: &'static str,
    /// The TLS version, on a TLS listener.
    pub tls: Option<&'static str>,
    pub method: String,
    pub target: String,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub status: u16,
    /// Bytes read from the client for this request, head and body (as framed).
    pub bytes_in: u64,
    /// Bytes written to the client for this response, head and body (as framed).
    pub bytes_out: u64,
    pub request_id: String,
    /// The route's prefix, and its target group and the group's policy at the time.
    pub route: Option<String>,
    pub target_group: Option<String>,
    pub policy: Option<&'static str>,
    pub trace: Trace,
    /// From head to the response's last byte handed to the client.
    pub total: Duration,
    /// The balancer's own error code (as in its JSON errors and metrics), if the request failed.
    pub error: Option<&'static str>,
}

/// How a request was forwarded: filled in by `forward` as its attempts go.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// Attempts after the first.
    pub retries: u32,
    /// The worker of the last attempt.
    pub worker: Option<SocketAddr>,
    /// From the head to the last attempt's start (picking, queueing, failed attempts).
    pub request: Option<Duration>,
    /// Opening a new connection to the worker, when the last attempt did.
    pub connect: Option<Duration>,
    /// From the last attempt's start to the worker's response head.
    pub worker_time: Option<Duration>,
    /// The worker's status, when it answered.
    pub worker_status: Option<u16>,
}

impl Trace {
    /// A new attempt (`attempt` 0 is the first) on `worker`, `since_head` after the head.
    pub fn begin(&mut self, attempt: u32, worker: SocketAddr, since_head: Duration) {
        *self = Trace {
            retries: attempt,
            worker: Some(worker),
            request: Some(since_head),
            ..Trace::default()
        };
    }
}

/// What serving one request came to: for the connection, and for the access log.
pub struct Served<'r> {
    /// The connection may serve another request.
    pub keep: bool,
    pub status: u16,
    pub error: Option<&'static str>,
    pub route: Option<&'r RouteEntry>,
    /// The rule that answered the request itself (a redirect, a fixed response).
    pub rule: Option<&'r RuleEntry>,
    pub trace: Trace,
}

impl<'r> Served<'r> {
    pub fn refused(
        keep: bool,
        e: &ProxyError,
        route: Option<&'r RouteEntry>,
        trace: Trace,
    ) -> Self {
        Served {
            keep,
            status: e.status().as_u16(),
            error: Some(e.code.as_str()),
            route,
            rule: None,
            trace,
        }
    }

    pub fn forwarded(status: u16, route: &'r RouteEntry, trace: Trace) -> Self {
        Served {
            keep: true,
            status,
            error: None,
            route: Some(route),
            rule: None,
            trace,
        }
    }

    pub fn answered(keep: bool, decision: &Decision<'r>) -> Self {
        Served {
            keep,
            status: decision.answer_status(),
            error: None,
            route: None,
            rule: decision.rule(),
            trace: Trace::default(),
        }
    }

    pub fn fill(self, r: &mut Record, started: Instant) {
        r.status = self.status;
        r.error = self.error;
        r.trace = self.trace;
        r.total = started.elapsed();
        if let Some(route) = self.route {
            r.route = Some(route.prefix.clone());
            r.target_group = Some(route.group.name.clone());
            r.policy = Some(route.group.policy().name());
        } else if let Some(rule) = self.rule {
            r.route = Some(rule.label.to_string());
        }
    }
}

/// A record whose response is still streaming (HTTP/2 responses outlive their handler): it is
/// written when dropped, with the time and bytes by then.
pub struct Unfinished {
    record: Record,
    started: Instant,
    format: AccessLogFormat,
    log: Arc<AccessLog>,
    pub bytes_out: u64,
}

impl Unfinished {
    pub fn new(
        record: Record,
        started: Instant,
        format: AccessLogFormat,
        log: Arc<AccessLog>,
    ) -> Unfinished {
        Unfinished {
            record,
            started,
            format,
            log,
            bytes_out: 0,
        }
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let mut r = std::mem::take(&mut self.record);
        r.total = self.started.elapsed();
        r.bytes_out = self.bytes_out;
        self.log.write(r, self.format);
    }
}

/// The access log of one balancer process.
pub struct AccessLog {
    queue: SyncSender<Message>,
    /// A destination to switch to, taken by the writer before its next batch.
    reopen: Arc<Mutex<Option<PathBuf>>>,
    reopen_asked: Arc<AtomicBool>,
    /// Batch buffers the writer is done with, for threads to fill again: a fresh 64 KiB
    /// buffer per batch would fault its pages in every time.
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    dropped: Counter,
    written: Counter,
    /// The writer's last open or write error, for the status document.
    last_error: Arc<Mutex<Option<String>>>,
}

enum Message {
    /// Whole lines, and how many.
    Lines(Vec<u8>, u64),
    /// Write out everything queued before this, then answer.
    Flush(mpsc::Sender<()>),
}

impl AccessLog {
    /// Opens `path` (`-` is stdout) and starts the writer thread, which counts what it writes
    /// in `written`; what it cannot take is counted in `dropped`.
    pub fn start(path: &Path, written: Counter, dropped: Counter) -> io::Result<AccessLog> {
        let sink = Sink::open(path)?;
        let (queue, rx) = mpsc::sync_channel(QUEUE_BATCHES);
        let log = AccessLog {
            queue,
            reopen: Arc::default(),
            reopen_asked: Arc::default(),
            spare: Arc::default(),
            dropped,
            written,
            last_error: Arc::default(),
        };
        let writer = Writer {
            rx,
            sink,
            reopen: log.reopen.clone(),
            reopen_asked: log.reopen_asked.clone(),
            spare: log.spare.clone(),
            written: log.written.clone(),
            last_error: log.last_error.clone(),
        };
        std::thread::Builder::new()
            .name("fulcrum-access-log".into())
            .spawn(move || writer.run())?;
        Ok(log)
    }

    /// Adds `record` to this thread's batch, handing the batch to the writer when it is full.
    pub fn write(&self, record: Record, format: AccessLogFormat) {
        let full = BATCH.with_borrow_mut(|(lines, n)| {
            if lines.capacity() == 0 {
                *lines = self
                    .spare
                    .lock()
                    .expect("never poisoned")
                    .pop()
                    .unwrap_or_default();
                lines.reserve(BATCH_BYTES + 4096);
            }
            format_record(lines, &record, format);
            *n += 1;
            lines.len() >= BATCH_BYTES
        });
        if full {
            self.flush_local();
        }
    }

    /// Hands this thread's batch to the writer; a full queue drops it (counted): a request
    /// never waits.
    pub fn flush_local(&self) {
        let (lines, n) = BATCH.with_borrow_mut(std::mem::take);
        if n == 0 {
            return;
        }
        match self.queue.try_send(Message::Lines(lines, n)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc_by(n);
            }
        }
    }

    /// Asks the writer to (re)open `path`: the same file after logrotate moved it, or a new one
    /// after a reload.
    pub fn reopen(&self, path: &Path) {
        *self.reopen.lock().expect("never poisoned") = Some(path.to_owned());
        self.reopen_asked.store(true, Ordering::Release);
    }

    /// Waits (at most `limit`) until everything queued so far (this thread's batch included)
    /// is written.
    pub fn flush(&self, limit: Duration) -> bool {
        self.flush_local();
        let deadline = Instant::now() + limit;
        let (tx, rx) = mpsc::channel();
        let mut msg = Message::Flush(tx);
        loop {
            match self.queue.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    pub fn written(&self) -> u64 {
        self.written.get()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("never poisoned").clone()
    }
}

/// Where lines go.
enum Sink {
    Stdout(BufWriter<io::Stdout>),
    File(BufWriter<File>),
}

impl Sink {
    fn open(path: &Path) -> io::Result<Sink> {
        if path == Path::new("-") {
            return Ok(Sink::Stdout(BufWriter::with_capacity(
                64 * 1024,
                io::stdout(),
            )));
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Sink::File(BufWriter::with_capacity(64 * 1024, file)))
    }

    fn out(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File(w) => w,
        }
    }
}

/// The writer thread's side.
struct Writer {
    rx: Receiver<Message>,
    sink: Sink,
    reopen: Arc<Mutex<Option<PathBuf>>>,
    reopen_asked: Arc<AtomicBool>,
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    written: Counter,
    last_error: Arc<Mutex<Option<String>>>,
}

impl Writer {
    fn run(mut self) {
        loop {
            self.take_reopen();
            let first = match self.rx.recv_timeout(IDLE_LOOK) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut next = Some(first);
            // Everything already queued goes out in one batch, then one flush.
            while let Some(m) = next {
                match m {
                    Message::Lines(mut lines, n) => {
                        self.put(&lines, n);
                        lines.clear();
                        let mut spare = self.spare.lock().expect("never poisoned");
                        if spare.len() < SPARE_BATCHES {
                            spare.push(lines);
                        }
                    }
                    Message::Flush(done) => {
                        self.flush();
                        let _ = done.send(());
                    }
                }
                next = self.rx.try_recv().ok();
            }
            self.flush();
        }
        self.flush();
    }

    fn put(&mut self, lines: &[u8], n: u64) {
        match self.sink.out().write_all(lines) {
            Ok(()) => {
                self.written.inc_by(n);
            }
            Err(e) => self.failed(format!("cannot write the access log: {e}")),
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.sink.out().flush() {
            self.failed(format!("cannot write the access log: {e}"));
        }
    }

    fn take_reopen(&mut self) {
        if !self.reopen_asked.swap(false, Ordering::Acquire) {
            return;
        }
        let Some(path) = self.reopen.lock().expect("never poisoned").take() else {
            return;
        };
        self.flush();
        match Sink::open(&path) {
            Ok(sink) => self.sink = sink,
            Err(e) => self.failed(format!(
                "cannot open the access log {}: {e}; still writing to the one open before",
                path.display()
            )),
        }
    }

    fn failed(&self, message: String) {
        tracing::error!("{message}");
        *self.last_error.lock().expect("never poisoned") = Some(message);
    }
}

/// Appends `r` as one line in `format`. Written by hand, byte by byte, rather than through
/// `serde_json` and `format!`: it runs once per request on the proxy's own core, and the
/// generic path (a map serializer, `Display` for every number and address, a time string
/// built each time) cost several times what these few loops do.
pub fn format_record(out: &mut Vec<u8>, r: &Record, format: AccessLogFormat) {
    match format {
        AccessLogFormat::Json => json_line(out, r),
        AccessLogFormat::Text => text_line(out, r),
    }
    out.push(b'\n');
}

/// The JSON line: every field present (null when unknown), durations in milliseconds.
fn json_line(out: &mut Vec<u8>, r: &Record) {
    let t = &r.trace;
    out.extend_from_slice(b"{\"time\":\"");
    push_time(out, r.time);
    out.extend_from_slice(b"\",\"client\":");
    json_opt(out, r.client, |o, a| json_str_with(o, |o| push_addr(o, a)));
    out.extend_from_slice(b",\"listener\":");
    json_opt(out, r.listener, |o, a| {
        json_str_with(o, |o| push_addr(o, a))
    });
    out.extend_from_slice(b",\"protocol\":");
    json_str(out, r.protocol);
    out.extend_from_slice(b",\"tls\":");
    json_opt(out, r.tls, json_str);
    out.extend_from_slice(b",\"method\":");
    json_str(out, &r.method);
    out.extend_from_slice(b",\"target\":");
    json_str(out, &r.target);
    out.extend_from_slice(b",\"host\":");
    json_opt(out, r.host.as_deref(), json_str);
    out.extend_from_slice(b",\"status\":");
    push_int(out, r.status);
    out.extend_from_slice(b",\"worker_status\":");
    json_opt(out, t.worker_status, push_int);
    out.extend_from_slice(b",\"bytes_in\":");
    push_int(out, r.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    push_int(out, r.bytes_out);
    for (name, d) in [
        (&b",\"request_ms\":"[..], t.request),
        (b",\"connect_ms\":", t.connect),
        (b",\"worker_ms\":", t.worker_time),
        (b",\"total_ms\":", Some(r.total)),
    ] {
        out.extend_from_slice(name);
        json_opt(out, d, |o, d| push_fixed(o, d.as_micros() as u64, 3));
    }
    out.extend_from_slice(b",\"worker\":");
    json_opt(out, t.worker, |o, a| json_str_with(o, |o| push_addr(o, a)));
    out.extend_from_slice(b",\"route\":");
    json_opt(out, r.route.as_deref(), json_str);
    out.extend_from_slice(b",\"target_group\":");
    json_opt(out, r.target_group.as_deref(), json_str);
    out.extend_from_slice(b",\"policy\":");
    json_opt(out, r.policy, json_str);
    out.extend_from_slice(b",\"retries\":");
    push_int(out, t.retries);
    out.extend_from_slice(b",\"request_id\":");
    json_str(out, &r.request_id);
    out.extend_from_slice(b",\"user_agent\":");
    json_opt(out, r.user_agent.as_deref(), json_str);
    out.extend_from_slice(b",\"error\":");
    json_opt(out, r.error, json_str);
    out.push(b'}');
}

fn json_opt<T>(out: &mut Vec<u8>, v: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        Some(v) => put(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string: `"`, `\` and control characters escaped (RFC 8259 §7).
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// A JSON string of text that needs no escaping (addresses).
fn json_str_with(out: &mut Vec<u8>, put: impl FnOnce(&mut Vec<u8>)) {
    out.push(b'"');
    put(out);
    out.push(b'"');
}

fn push_int(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `n` / 10^`decimals` with exactly `decimals` digits after the point.
fn push_fixed(out: &mut Vec<u8>, n: u64, decimals: u32) {
    let scale = 10u64.pow(decimals);
    push_int(out, n / scale);
    out.push(b'.');
    push_padded(out, n % scale, decimals as usize);
}

/// `n` in at least `width` digits, zeros in front.
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n).as_bytes();
    out.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(digits);
}

fn push_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_int(out, octet);
            }
        }
        SocketAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "[{}]", v6.ip());
        }
    }
    out.push(b':');
    push_int(out, a.port());
}

thread_local! {
    /// The last whole second formatted on this thread, and its text (`YYYY-MM-DDTHH:MM:SS`).
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// RFC 3339 in UTC with microseconds (`2026-12-02T12:35:10.908931Z`); the date and time of
/// day are formatted once per second per thread.
fn push_time(out: &mut Vec<u8>, t: Option<SystemTime>) {
    let since = t
        .unwrap_or_else(SystemTime::now)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let formatted = humantime::format_rfc3339_seconds(whole).to_string();
        text.copy_from_slice(&formatted.as_bytes()[..19]);
        SECOND.set((secs, text));
    }
    out.extend_from_slice(&text);
    out.push(b'.');
    push_padded(out, since.subsec_micros() as u64, 6);
    out.push(b'Z');
}

/// ALB's field order, space-separated, strings quoted: type, time, client:port,
/// worker:port, request/worker/response processing times in seconds (-1 when there was no
/// worker answer), status, worker status, bytes in, bytes out, "request line", "user agent",
/// TLS version, target group, "request id", "host", then fulcrum's own: route, policy,
/// retries, connect seconds, error.
fn text_line(out: &mut Vec<u8>, r: &Record) {
    let t = &r.trace;
    let kind: &[u8] = match (r.protocol, r.tls.is_some()) {
        ("HTTP/2.0", _) => b"h2",
        (_, true) => b"https",
        _ => b"http",
    };
    let secs = |out: &mut Vec<u8>, d: Option<Duration>| match d {
        Some(d) => push_fixed(out, d.as_micros() as u64, 6),
        None => out.extend_from_slice(b"-1"),
    };
    let response = t
        .request
        .zip(t.worker_time)
        .map(|(a, b)| r.total.saturating_sub(a + b));
    out.extend_from_slice(kind);
    out.push(b' ');
    push_time(out, r.time);
    for addr in [r.client, t.worker] {
        out.push(b' ');
        text_opt(out, addr, push_addr);
    }
    for d in [t.request, t.worker_time, response] {
        out.push(b' ');
        secs(out, d);
    }
    out.push(b' ');
    push_int(out, r.status);
    out.push(b' ');
    text_opt(out, t.worker_status, push_int);
    for n in [r.bytes_in, r.bytes_out] {
        out.push(b' ');
        push_int(out, n);
    }
    out.extend_from_slice(b" \"");
    let scheme = if r.tls.is_some() {
        "https://"
    } else {
        "http://"
    };
    let host = r.host.as_deref().unwrap_or("-");
    for part in [
        r.method.as_str(),
        " ",
        scheme,
        host,
        &r.target,
        " ",
        r.protocol,
    ] {
        quoted_inner(out, part);
    }
    out.extend_from_slice(b"\" ");
    quoted(out, r.user_agent.as_deref().unwrap_or("-"));
    out.push(b' ');
    out.extend_from_slice(r.tls.unwrap_or("-").as_bytes());
    out.push(b' ');
    text_opt(out, r.target_group.as_deref(), bare);
    out.push(b' ');
    quoted(out, &r.request_id);
    out.push(b' ');
    quoted(out, host);
    out.push(b' ');
    text_opt(out, r.route.as_deref(), bare);
    out.push(b' ');
    out.extend_from_slice(r.policy.unwrap_or("-").as_bytes());
    out.push(b' ');
    push_int(out, t.retries);
    out.push(b' ');
    secs(out, t.connect);
    out.push(b' ');
    out.extend_from_slice(r.error.unwrap_or("-").as_bytes());
}

fn text_opt<T>(out: &mut Vec<u8>, v: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        Some(v) => put(out, v),
        None => out.push(b'-'),
    }
}

/// `"..."` with `"`, `\` and anything not printable ASCII escaped (`\xHH`), so a line stays
/// one line and splits on spaces outside quotes.
fn quoted(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    quoted_inner(out, s);
    out.push(b'"');
}

/// The inside of [`quoted`].
fn quoted_inner(out: &mut Vec<u8>, s: &str) {
    escaped(out, s, true);
}

/// An unquoted field (a group name, a route): spaces escaped too, so it never splits.
fn bare(out: &mut Vec<u8>, s: &str) {
    escaped(out, s, false);
}

/// `s` with `"` and `\` backslash-escaped, and anything not printable ASCII (and a space,
/// unless `space_ok`) as `\xHH`.
fn escaped(out: &mut Vec<u8>, s: &str, space_ok: bool) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in s.as_bytes() {
        match b {
            b'"' | b'\\' => {
                out.push(b'\\');
                out.push(b);
            }
            0x21..=0x7e => out.push(b),
            b' ' if space_ok => out.push(b),
            _ => {
                out.extend_from_slice(b"\\x");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
        }
    }
}

/// Bytes from a request as text for the log: invalid UTF-8 replaced, not refused.
pub fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            client: Some("127.0.0.1:50000".parse().unwrap()),
            listener: Some("127.0.0.1:8080".parse().unwrap()),
            protocol: "HTTP/1.1",
            method: "GET".into(),
            target: "/cluster1?x=\"1\"".into(),
            host: Some("lb.example".into()),
            user_agent: Some("curl/8 \u{1}".into()),
            status: 200,
            bytes_in: 80,
            bytes_out: 300,
            request_id: "abc".into(),
            route: Some("/cluster1".into()),
            target_group: Some("cluster1".into()),
            policy: Some("least-outstanding"),
            trace: Trace {
                retries: 1,
                worker: Some("127.0.0.1:9001".parse().unwrap()),
                request: Some(Duration::from_micros(1500)),
                connect: None,
                worker_time: Some(Duration::from_micros(2500)),
                worker_status: Some(200),
            },
            total: Duration::from_micros(5000),
            ..Record::default()
        }
    }

    #[test]
    fn json_lines_carry_every_field_and_escape_strings() {
        let mut out = Vec::new();
        format_record(&mut out, &record(), AccessLogFormat::Json);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(v["target"], "/cluster1?x=\"1\"");
        assert_eq!(v["client"], "127.0.0.1:50000");
        assert_eq!(v["worker"], "127.0.0.1:9001");
        assert_eq!(v["request_ms"], 1.5);
        assert_eq!(v["worker_ms"], 2.5);
        assert_eq!(v["total_ms"], 5.0);
        assert_eq!(v["retries"], 1);
        assert!(v["connect_ms"].is_null() && v["error"].is_null() && v["tls"].is_null());
    }

    #[test]
    fn text_lines_follow_albs_order_and_stay_one_line() {
        let mut out = Vec::new();
        format_record(&mut out, &record(), AccessLogFormat::Text);
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with('\n') && line.lines().count() == 1, "{line}");
        assert!(
            line.starts_with(
                "http 2023-11-14T22:13:20.000000Z 127.0.0.1:50000 127.0.0.1:9001 \
                 0.001500 0.002500 0.001000 200 200 80 300 \
                 \"GET http://lb.example/cluster1?x=\\\"1\\\" HTTP/1.1\" \"curl/8 \\x01\" - \
                 cluster1 \"abc\" \"lb.example\" /cluster1 least-outstanding 1 -1 -"
            ),
            "{line}"
        );
    }

    #[test]
    fn lines_reach_a_file_and_follow_a_reopen() {
        let dir = std::env::temp_dir().join(format!("fulcrum-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (first, second) = (dir.join("a.log"), dir.join("b.log"));
        let log = AccessLog::start(&first, Counter::default(), Counter::default()).unwrap();
        log.write(record(), AccessLogFormat::Json);
        assert!(log.flush(Duration::from_secs(5)));
        log.reopen(&second);
        // The writer takes the reopen before its next batch.
        std::thread::sleep(IDLE_LOOK * 3);
        log.write(record(), AccessLogFormat::Text);
        assert!(log.flush(Duration::from_secs(5)));
        let a = std::fs::read_to_string(&first).unwrap();
        let b = std::fs::read_to_string(&second).unwrap();
        assert_eq!((a.lines().count(), b.lines().count()), (1, 1), "{a}\n{b}");
        assert!(a.starts_with('{') && b.starts_with("http "));
        assert_eq!(log.written(), 2);
        assert_eq!(log.dropped(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
