//! The access log: one line per request, as JSON or in a text format close to ALB's, written
//! off the request path.
//!
//! A request hands its finished [`Record`] to the writer thread through a bounded queue; when
//! the queue is full the record is counted as dropped, never waited for, so a slow disk or a
//! stalled stdout cannot slow a request. The writer formats what has queued, writes it in one
//! batch and flushes when the queue runs dry. It reopens its file when asked (every SIGHUP, so
//! logrotate's `postrotate` can signal the balancer) and follows a reload that moves the log.
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
use serde::Serialize;

use crate::config::AccessLogFormat;

/// Records waiting for the writer; beyond this they are dropped and counted (at ~300 bytes a
/// line, at most ~20 MB held).
pub const QUEUE_RECORDS: usize = 65_536;

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
    dropped: Counter,
    written: Counter,
    /// The writer's last open or write error, for the status document.
    last_error: Arc<Mutex<Option<String>>>,
}

enum Message {
    Record(Box<Record>, AccessLogFormat),
    /// Write out everything queued before this, then answer.
    Flush(mpsc::Sender<()>),
}

impl AccessLog {
    /// Opens `path` (`-` is stdout) and starts the writer thread, which counts what it writes
    /// in `written`; what it cannot take is counted in `dropped`.
    pub fn start(path: &Path, written: Counter, dropped: Counter) -> io::Result<AccessLog> {
        let sink = Sink::open(path)?;
        let (queue, rx) = mpsc::sync_channel(QUEUE_RECORDS);
        let log = AccessLog {
            queue,
            reopen: Arc::default(),
            reopen_asked: Arc::default(),
            dropped,
            written,
            last_error: Arc::default(),
        };
        let writer = Writer {
            rx,
            sink,
            reopen: log.reopen.clone(),
            reopen_asked: log.reopen_asked.clone(),
            written: log.written.clone(),
            last_error: log.last_error.clone(),
        };
        std::thread::Builder::new()
            .name("fulcrum-access-log".into())
            .spawn(move || writer.run())?;
        Ok(log)
    }

    /// Queues `record`; a full queue drops it (counted), a request never waits.
    pub fn write(&self, record: Record, format: AccessLogFormat) {
        match self
            .queue
            .try_send(Message::Record(Box::new(record), format))
        {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }

    /// Asks the writer to (re)open `path`: the same file after logrotate moved it, or a new one
    /// after a reload.
    pub fn reopen(&self, path: &Path) {
        *self.reopen.lock().expect("never poisoned") = Some(path.to_owned());
        self.reopen_asked.store(true, Ordering::Release);
    }

    /// Waits (at most `limit`) until everything queued so far is written.
    pub fn flush(&self, limit: Duration) -> bool {
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
    written: Counter,
    last_error: Arc<Mutex<Option<String>>>,
}

impl Writer {
    fn run(mut self) {
        let mut line = Vec::with_capacity(1024);
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
                    Message::Record(r, format) => {
                        line.clear();
                        format_record(&mut line, &r, format);
                        self.put(&line);
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

    fn put(&mut self, line: &[u8]) {
        match self.sink.out().write_all(line) {
            Ok(()) => {
                self.written.inc();
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

/// Appends `r` as one line in `format`.
pub fn format_record(out: &mut Vec<u8>, r: &Record, format: AccessLogFormat) {
    match format {
        AccessLogFormat::Json => {
            serde_json::to_writer(&mut *out, &JsonLine::of(r)).expect("a record serializes");
        }
        AccessLogFormat::Text => text_line(out, r),
    }
    out.push(b'\n');
}

/// The JSON line: every field present (null when unknown), durations in milliseconds.
#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    client: Option<SocketAddr>,
    listener: Option<SocketAddr>,
    protocol: &'static str,
    tls: Option<&'static str>,
    method: &'a str,
    target: &'a str,
    host: Option<&'a str>,
    status: u16,
    worker_status: Option<u16>,
    bytes_in: u64,
    bytes_out: u64,
    request_ms: Option<f64>,
    connect_ms: Option<f64>,
    worker_ms: Option<f64>,
    total_ms: f64,
    worker: Option<SocketAddr>,
    route: Option<&'a str>,
    target_group: Option<&'a str>,
    policy: Option<&'static str>,
    retries: u32,
    request_id: &'a str,
    user_agent: Option<&'a str>,
    error: Option<&'static str>,
}

impl<'a> JsonLine<'a> {
    fn of(r: &'a Record) -> JsonLine<'a> {
        let t = &r.trace;
        JsonLine {
            time: rfc3339(r.time),
            client: r.client,
            listener: r.listener,
            protocol: r.protocol,
            tls: r.tls,
            method: &r.method,
            target: &r.target,
            host: r.host.as_deref(),
            status: r.status,
            worker_status: t.worker_status,
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            request_ms: t.request.map(ms),
            connect_ms: t.connect.map(ms),
            worker_ms: t.worker_time.map(ms),
            total_ms: ms(r.total),
            worker: t.worker,
            route: r.route.as_deref(),
            target_group: r.target_group.as_deref(),
            policy: r.policy,
            retries: t.retries,
            request_id: &r.request_id,
            user_agent: r.user_agent.as_deref(),
            error: r.error,
        }
    }
}

fn rfc3339(t: Option<SystemTime>) -> String {
    humantime::format_rfc3339_micros(t.unwrap_or_else(SystemTime::now)).to_string()
}

/// Milliseconds, to the microsecond.
fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// ALB's field order, space-separated, strings quoted: type, time, client:port,
/// worker:port, request/worker/response processing times in seconds (-1 when there was no
/// worker answer), status, worker status, bytes in, bytes out, "request line", "user agent",
/// TLS version, target group, "request id", "host", then fulcrum's own: route, policy,
/// retries, connect seconds, error.
fn text_line(out: &mut Vec<u8>, r: &Record) {
    let t = &r.trace;
    let kind = match (r.protocol, r.tls.is_some()) {
        ("HTTP/2.0", _) => "h2",
        (_, true) => "https",
        _ => "http",
    };
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let secs = |d: Option<Duration>| d.map_or("-1".into(), |d| format!("{:.6}", d.as_secs_f64()));
    let response = t
        .request
        .zip(t.worker_time)
        .map(|(a, b)| r.total.saturating_sub(a + b));
    let scheme = if r.tls.is_some() { "https" } else { "http" };
    let request_line = format!(
        "{} {scheme}://{}{} {}",
        r.method,
        r.host.as_deref().unwrap_or("-"),
        r.target,
        r.protocol
    );
    let fields = [
        kind.to_owned(),
        rfc3339(r.time),
        dash(r.client.map(|a| a.to_string())),
        dash(t.worker.map(|a| a.to_string())),
        secs(t.request),
        secs(t.worker_time),
        secs(response),
        r.status.to_string(),
        dash(t.worker_status.map(|s| s.to_string())),
        r.bytes_in.to_string(),
        r.bytes_out.to_string(),
        quoted(&request_line),
        quoted(r.user_agent.as_deref().unwrap_or("-")),
        r.tls.unwrap_or("-").to_owned(),
        dash(r.target_group.clone()),
        quoted(&r.request_id),
        quoted(r.host.as_deref().unwrap_or("-")),
        dash(r.route.clone()),
        r.policy.unwrap_or("-").to_owned(),
        t.retries.to_string(),
        secs(t.connect),
        r.error.unwrap_or("-").to_owned(),
    ];
    out.extend_from_slice(fields.join(" ").as_bytes());
}

/// `"..."` with `"`, `\` and anything not printable ASCII escaped (`\xHH`), so a line stays
/// one line and splits on spaces outside quotes.
fn quoted(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for b in s.bytes() {
        match b {
            b'"' => q.push_str("\\\""),
            b'\\' => q.push_str("\\\\"),
            0x20..=0x7e => q.push(b as char),
            _ => q.push_str(&format!("\\x{b:02x}")),
        }
    }
    q.push('"');
    q
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
