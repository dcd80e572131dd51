//! A conformance corpus for the HTTP data path of `fulcrum balance`: every case in
//! `tests/conformance/*.toml` is sent, as raw bytes on a fresh client connection (or with a real
//! h2c client), through the real balancer binary to a [`RawWorker`] that frames what arrives
//! with its own strict parser and records every message. The expected decision comes from the
//! RFCs (9110, 9112, 9113), never from what fulcrum happens to do.
//!
//! A case (`[[case]]`) has a `name`, a `source` (the RFC section or attack class) and:
//! - what the client sends: `send` (a TOML basic string; every char is one byte, U+0000 to
//!   U+00FF, so `\r\n`, `\u0000` and `\xff` all work) or `send_hex`; `then_send` goes out once
//!   the first response head arrives (after `100 Continue`, or a `101`); `client_half_close`
//!   shuts the client's sending side after the last of it (a body cut short);
//! - what the worker answers: `reply` / `reply_hex` (default: a 200 whose body is the
//!   request-target), `reply_close = true` to close the connection after it;
//! - the decision: `expect = "reject"` with `status` (and `error`, the balancer's JSON code; no
//!   request may reach the worker unless `worker_requests` says so), or `expect = "forward"`
//!   (the worker gets `worker_requests`, default 1, and the client the worker's `client_status`,
//!   default 200);
//! - checks on what the worker got (the first message): `worker_head_has` / `_lacks` (header
//!   line prefixes, case-insensitive; one ending in `\r\n` is the whole line),
//!   `worker_head_once` (field names present exactly once), `worker_body` (after framing),
//!   `worker_trailers_has`, `worker_request_lines` (every message's first line, in order),
//!   `worker_tunnel` (bytes after a 101), `worker_connection_reused = false` (the requests after
//!   the case must not come on the worker connection the case's last request came on);
//! - checks on what the client got (the first final response): `client_status` or
//!   `client_statuses` (every response, in order), `client_head_has` / `_lacks` / `_once`,
//!   `client_body` (decoded) or `client_bodies`, `client_trailers_has`, `client_interim` (1xx
//!   statuses), `client_tunnel`, `client_keeps_alive` (a follow-up request on the same
//!   connection is answered, or the connection closes), `client_truncated` (no complete answer
//!   from the worker: the connection closes short of its end);
//! - HTTP/2 (`protocol = "h2"`): `h2_method`, `h2_uri`, `h2_headers = [[name, value]]`,
//!   `h2_body` (or `h2_body_size`: that many `a`s), `h2_body_after_pause` (more DATA after
//!   [`BODY_PAUSE`]), `h2_reset_ok` (a reset stream counts as the rejection),
//!   `h2_idle_goaway` (raw frames: after one request the idle connection must get a GOAWAY
//!   before it closes), `client_idle` (that case's balancer's `timeouts.client_idle`);
//! - `known_failure = "why"`: where the balancer departs from the RFC (a bug, or a SHOULD it
//!   does not follow, as the reason says), kept with the RIGHT expectation and reported apart;
//!   such a case that passes fails the run too, so the mark goes when the departure does.
//!
//! Every read is bounded: a case that hangs fails. After every case a plain request on a fresh
//! connection must still be answered.

mod fixture;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fixture::{
    framed_body, framing_of, latin1, strict_head_end, Balancer, Framing, RawRecord, RawReply,
    RawWorker,
};

/// How long one exchange may take before the case counts as hung.
const CASE_TIMEOUT: Duration = Duration::from_secs(5);
const HOST: &str = "conformance.test";
/// Between the parts of a staged HTTP/2 body: long enough for the balancer to have passed on
/// everything before it, even on a busy machine.
const BODY_PAUSE: Duration = Duration::from_secs(1);

// ───────────────────────────── the corpus ─────────────────────────────

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    H1,
    H2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Forward,
    Reject { status: u16, error: Option<String> },
}

#[derive(Debug, Default)]
struct WorkerChecks {
    requests: Option<usize>,
    /// On the first request the worker got.
    message: MessageChecks,
    request_lines: Option<Vec<String>>,
    tunnel: Option<Vec<u8>>,
    /// Whether the requests after the case may reuse the worker connection its last request
    /// came on (false: the balancer must have dropped that connection).
    connection_reused: Option<bool>,
}

#[derive(Debug, Default)]
struct ClientChecks {
    status: Option<u16>,
    statuses: Option<Vec<u16>>,
    /// On the (first) response the client got.
    message: MessageChecks,
    bodies: Option<Vec<Vec<u8>>>,
    interim: Option<Vec<u16>>,
    tunnel: Option<Vec<u8>>,
    keeps_alive: Option<bool>,
    truncated: bool,
}

/// What one message that arrived (at the worker or the client) is checked against: the
/// `PREFIX_head_has` / `_lacks` / `_once`, `PREFIX_body` and `PREFIX_trailers_has` keys.
#[derive(Debug, Default)]
struct MessageChecks {
    head_has: Vec<String>,
    head_lacks: Vec<String>,
    head_once: Vec<String>,
    body: Option<Vec<u8>>,
    trailers_has: Vec<String>,
}

impl MessageChecks {
    fn parse(t: &Table<'_>, prefix: &str) -> Result<MessageChecks, String> {
        Ok(MessageChecks {
            head_has: t.strings(&format!("{prefix}_head_has"))?,
            head_lacks: t.strings(&format!("{prefix}_head_lacks"))?,
            head_once: t.strings(&format!("{prefix}_head_once"))?,
            body: t.bytes(&format!("{prefix}_body"))?,
            trailers_has: t.strings(&format!("{prefix}_trailers_has"))?,
        })
    }

    fn is_empty(&self) -> bool {
        self.head_has.is_empty()
            && self.head_lacks.is_empty()
            && self.head_once.is_empty()
            && self.body.is_none()
            && self.trailers_has.is_empty()
    }
}

#[derive(Debug, Default)]
struct H2Request {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    body_after_pause: Option<Vec<u8>>,
    reset_ok: bool,
    idle_goaway: bool,
}

#[derive(Debug)]
struct Case {
    file: String,
    name: String,
    source: String,
    known_failure: Option<String>,
    protocol: Protocol,
    client_idle: String,
    send: Vec<u8>,
    then_send: Option<Vec<u8>>,
    /// Shut the client's sending side once everything is sent.
    half_close: bool,
    reply: Option<RawReply>,
    expect: Expect,
    worker: WorkerChecks,
    client: ClientChecks,
    h2: H2Request,
}

const KEYS: &[&str] = &[
    "name",
    "source",
    "known_failure",
    "protocol",
    "client_idle",
    "send",
    "send_hex",
    "then_send",
    "then_send_hex",
    "client_half_close",
    "reply",
    "reply_hex",
    "reply_close",
    "expect",
    "status",
    "error",
    "worker_requests",
    "worker_head_has",
    "worker_head_lacks",
    "worker_head_once",
    "worker_request_lines",
    "worker_body",
    "worker_body_hex",
    "worker_trailers_has",
    "worker_tunnel",
    "worker_tunnel_hex",
    "worker_connection_reused",
    "client_status",
    "client_statuses",
    "client_head_has",
    "client_head_lacks",
    "client_head_once",
    "client_body",
    "client_body_hex",
    "client_bodies",
    "client_trailers_has",
    "client_interim",
    "client_tunnel",
    "client_tunnel_hex",
    "client_keeps_alive",
    "client_truncated",
    "h2_method",
    "h2_uri",
    "h2_headers",
    "h2_body",
    "h2_body_size",
    "h2_body_after_pause",
    "h2_reset_ok",
    "h2_idle_goaway",
];

/// Typed reads of one `[[case]]` table; every error names the key.
struct Table<'t>(&'t toml::Table);

impl Table<'_> {
    fn string(&self, key: &str) -> Result<Option<String>, String> {
        match self.0.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(format!("`{key}` must be a string, not {v}")),
        }
    }

    /// `key` as bytes (each char one byte), or `key_hex` as hex digits.
    fn bytes(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        if let Some(hex) = self.string(&format!("{key}_hex"))? {
            return from_hex(&hex)
                .map(Some)
                .map_err(|e| format!("`{key}_hex`: {e}"));
        }
        let Some(text) = self.string(key)? else {
            return Ok(None);
        };
        text.chars()
            .map(|c| {
                u8::try_from(u32::from(c)).map_err(|_| format!("`{key}`: {c:?} is not a byte"))
            })
            .collect::<Result<Vec<u8>, String>>()
            .map(Some)
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, String> {
        self.list(key, |v| v.as_str().map(str::to_owned))
            .map(Option::unwrap_or_default)
    }

    fn list<T>(
        &self,
        key: &str,
        each: impl Fn(&toml::Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>, String> {
        match self.0.get(key) {
            None => Ok(None),
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|v| each(v).ok_or_else(|| format!("`{key}`: unexpected element {v}")))
                .collect::<Result<_, _>>()
                .map(Some),
            Some(v) => Err(format!("`{key}` must be an array, not {v}")),
        }
    }

    fn int(&self, key: &str) -> Result<Option<i64>, String> {
        match self.0.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) => Ok(Some(*i)),
            Some(v) => Err(format!("`{key}` must be an integer, not {v}")),
        }
    }

    fn status(&self, key: &str) -> Result<Option<u16>, String> {
        self.int(key)?
            .map(|i| u16::try_from(i).map_err(|_| format!("`{key}` is not a status")))
            .transpose()
    }

    fn flag(&self, key: &str) -> Result<bool, String> {
        Ok(self.flag_opt(key)?.unwrap_or(false))
    }

    fn flag_opt(&self, key: &str) -> Result<Option<bool>, String> {
        match self.0.get(key) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(format!("`{key}` must be true or false, not {v}")),
        }
    }
}

fn from_hex(hex: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<char> = hex.chars().filter(|c| !c.is_whitespace()).collect();
    let pairs = digits.chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return Err("an odd number of hex digits".into());
    }
    pairs
        .map(|p| {
            let pair: String = p.iter().collect();
            u8::from_str_radix(&pair, 16).map_err(|e| format!("{pair:?}: {e}"))
        })
        .collect()
}

fn parse_case(file: &str, table: &toml::Table) -> Result<Case, String> {
    if let Some(k) = table.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!("unknown key `{k}`"));
    }
    let t = Table(table);
    let need = |key: &str| t.string(key)?.ok_or_else(|| format!("`{key}` is required"));
    let protocol = match t.string("protocol")?.as_deref() {
        None | Some("h1") => Protocol::H1,
        Some("h2") => Protocol::H2,
        Some(p) => return Err(format!("`protocol` is h1 or h2, not {p:?}")),
    };
    let reply = t.bytes("reply")?.map(|bytes| RawReply::Canned {
        bytes,
        close: t.flag("reply_close").unwrap_or(false),
    });
    t.flag("reply_close")?;
    let send = t.bytes("send")?.unwrap_or_default();
    if protocol == Protocol::H1 && send.is_empty() {
        return Err("an HTTP/1 case needs `send`".into());
    }
    Ok(Case {
        file: file.to_owned(),
        name: need("name")?,
        source: need("source")?,
        known_failure: t.string("known_failure")?,
        protocol,
        client_idle: t.string("client_idle")?.unwrap_or_else(|| "60s".into()),
        send,
        then_send: t.bytes("then_send")?,
        half_close: t.flag("client_half_close")?,
        reply,
        expect: parse_expect(&t)?,
        worker: parse_worker_checks(&t)?,
        client: parse_client_checks(&t)?,
        h2: parse_h2(&t)?,
    })
}

fn parse_expect(t: &Table<'_>) -> Result<Expect, String> {
    match t.string("expect")?.as_deref() {
        Some("forward") => Ok(Expect::Forward),
        Some("reject") => Ok(Expect::Reject {
            status: t.status("status")?.ok_or("a rejection needs `status`")?,
            error: t.string("error")?,
        }),
        other => Err(format!(
            "`expect` is \"forward\" or \"reject\", not {other:?}"
        )),
    }
}

fn parse_worker_checks(t: &Table<'_>) -> Result<WorkerChecks, String> {
    Ok(WorkerChecks {
        requests: t
            .int("worker_requests")?
            .map(|n| usize::try_from(n).map_err(|_| "`worker_requests` < 0".to_string()))
            .transpose()?,
        message: MessageChecks::parse(t, "worker")?,
        request_lines: t.list("worker_request_lines", |v| v.as_str().map(str::to_owned))?,
        tunnel: t.bytes("worker_tunnel")?,
        connection_reused: t.flag_opt("worker_connection_reused")?,
    })
}

fn parse_client_checks(t: &Table<'_>) -> Result<ClientChecks, String> {
    let status_list =
        |key: &str| t.list(key, |v| v.as_integer().and_then(|i| u16::try_from(i).ok()));
    Ok(ClientChecks {
        status: t.status("client_status")?,
        statuses: status_list("client_statuses")?,
        message: MessageChecks::parse(t, "client")?,
        bodies: t.list("client_bodies", |v| v.as_str().map(|s| s.bytes().collect()))?,
        interim: status_list("client_interim")?,
        tunnel: t.bytes("client_tunnel")?,
        keeps_alive: t.flag_opt("client_keeps_alive")?,
        truncated: t.flag("client_truncated")?,
    })
}

fn parse_h2(t: &Table<'_>) -> Result<H2Request, String> {
    let pair = |v: &toml::Value| match v.as_array()?.as_slice() {
        [n, v] => Some((n.as_str()?.to_owned(), v.as_str()?.to_owned())),
        _ => None,
    };
    Ok(H2Request {
        method: t.string("h2_method")?.unwrap_or_else(|| "GET".into()),
        uri: t
            .string("h2_uri")?
            .unwrap_or_else(|| format!("http://{HOST}/c/h2")),
        headers: t.list("h2_headers", pair)?.unwrap_or_default(),
        body: match t.int("h2_body_size")? {
            Some(n) => vec![b'a'; usize::try_from(n).map_err(|_| "`h2_body_size` < 0")?],
            None => t.bytes("h2_body")?.unwrap_or_default(),
        },
        body_after_pause: t.bytes("h2_body_after_pause")?,
        reset_ok: t.flag("h2_reset_ok")?,
        idle_goaway: t.flag("h2_idle_goaway")?,
    })
}

/// Every case of every `tests/conformance/*.toml`, files in name order.
fn load_corpus() -> Vec<Case> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let doc: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("{file}: not TOML: {e}"));
        for (i, table) in doc["case"]
            .as_array()
            .expect("[[case]] tables")
            .iter()
            .enumerate()
        {
            let table = table.as_table().expect("a [[case]] is a table");
            let case =
                parse_case(&file, table).unwrap_or_else(|e| panic!("{file}: case #{}: {e}", i + 1));
            cases.push(case);
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for c in &cases {
        assert!(names.insert(&c.name), "two cases are named {:?}", c.name);
    }
    cases
}

// ───────────────────────────── HTTP/1.1 client ─────────────────────────────

/// A client connection with what it has read and not yet used, every read bounded by
/// `deadline`.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
    deadline: Instant,
}

enum Fill {
    Data,
    Eof,
    Timeout,
}

impl Wire {
    fn connect(addr: SocketAddr) -> Result<Wire, String> {
        let stream = TcpStream::connect_timeout(&addr, CASE_TIMEOUT).map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        Ok(Wire {
            stream,
            buf: Vec::new(),
            deadline: Instant::now() + CASE_TIMEOUT,
        })
    }

    /// Sends bytes; a peer that already answered and closed may refuse the rest, which is
    /// fine: its answer is what the case looks at.
    fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Sends the last bytes, then shuts the sending side if `half_close`.
    fn send_last(&mut self, bytes: &[u8], half_close: bool) {
        self.send(bytes);
        if half_close {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    fn fill(&mut self) -> Fill {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Fill::Timeout;
        }
        let _ = self.stream.set_read_timeout(Some(left));
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) => Fill::Eof,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Fill::Data
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Fill::Timeout
            }
            // A reset is the end of the connection, as a close is.
            Err(_) => Fill::Eof,
        }
    }
}

/// One response as the client read it.
#[derive(Debug, Clone)]
struct H1Response {
    status: u16,
    /// The head as text (latin-1), CRLFs included.
    head: String,
    /// The content: de-chunked, or what arrived before the connection ended.
    body: Vec<u8>,
    trailers: String,
    /// Its framing said where it ends, and it got there (a close-delimited body: the close came).
    complete: bool,
}

/// Everything one HTTP/1.1 conversation showed the client.
#[derive(Debug, Default)]
struct H1Outcome {
    interim: Vec<u16>,
    responses: Vec<H1Response>,
    tunnel: Vec<u8>,
    /// A client-side failure: a hang, or a response the client could not frame.
    error: Option<String>,
    /// Bytes after the last expected response that belong to none.
    leftover: Vec<u8>,
    /// Whether the connection was still usable afterwards (only when the case asks).
    alive: Option<bool>,
}

enum Next {
    Interim(u16),
    Final(H1Response),
    Eof,
    Failed(String),
}

/// A parsed response head: its length, status, text and declared framing.
fn response_head(buf: &[u8]) -> Result<Option<(usize, u16, String, Framing)>, String> {
    let Some(len) = strict_head_end(buf)? else {
        return Ok(None);
    };
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut slots);
    match resp.parse(&buf[..len]) {
        Ok(httparse::Status::Complete(n)) if n == len => {}
        other => return Err(format!("a response head that does not parse ({other:?})")),
    }
    let framing = framing_of(resp.headers, true)?;
    Ok(Some((
        len,
        resp.code.unwrap_or(0),
        latin1(&buf[..len]),
        framing,
    )))
}

/// Reads the next response (interim or final).
fn next_response(wire: &mut Wire, to_head: bool) -> Next {
    let (len, status, head, framing) = loop {
        match response_head(&wire.buf) {
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(e) => return Next::Failed(e),
        }
        match wire.fill() {
            Fill::Data => {}
            Fill::Eof if wire.buf.is_empty() => return Next::Eof,
            Fill::Eof => return Next::Failed("the connection closed mid-head".into()),
            Fill::Timeout => return Next::Failed("no answer in time (hang)".into()),
        }
    };
    wire.buf.drain(..len);
    if (100..200).contains(&status) && status != 101 {
        return Next::Interim(status);
    }
    // RFC 9112 §6.3 rules 1 and 2: these have no content whatever their fields say.
    let bodiless = to_head || status == 101 || status == 204 || status == 304;
    let framing = if bodiless { Framing::None } else { framing };
    read_body(wire, status, head, framing)
}

fn read_body(wire: &mut Wire, status: u16, head: String, framing: Framing) -> Next {
    let response = |body: Vec<u8>, trailers: &[u8], complete| {
        Next::Final(H1Response {
            status,
            head: head.clone(),
            body,
            trailers: latin1(trailers),
            complete,
        })
    };
    loop {
        match framed_body(framing, &wire.buf) {
            Ok(Some(body)) => {
                wire.buf.drain(..body.len);
                return response(body.content, &body.trailers, true);
            }
            Ok(None) => {}
            Err(e) => return Next::Failed(format!("the response body's framing: {e}")),
        }
        match wire.fill() {
            Fill::Data => {}
            Fill::Eof => {
                let rest = std::mem::take(&mut wire.buf);
                return response(rest, b"", framing == Framing::Close);
            }
            Fill::Timeout => return Next::Failed("the response body never ended (hang)".into()),
        }
    }
}

/// Sends the case and reads the responses it should get (more than one when pipelined).
fn h1_conversation(wire: &mut Wire, case: &Case) -> H1Outcome {
    match case.then_send {
        Some(_) => wire.send(&case.send),
        None => wire.send_last(&case.send, case.half_close),
    }
    let mut out = H1Outcome::default();
    let mut then_send = case.then_send.clone();
    let want = case.client.statuses.as_ref().map_or(1, Vec::len);
    let to_head = case.send.starts_with(b"HEAD ");
    while out.responses.len() < want {
        match next_response(wire, to_head && out.responses.is_empty()) {
            Next::Interim(status) => {
                out.interim.push(status);
                if let Some(b) = then_send.take() {
                    wire.send_last(&b, case.half_close);
                }
            }
            Next::Final(r) => {
                let (status, complete) = (r.status, r.complete);
                out.responses.push(r);
                if status == 101 {
                    if let Some(b) = then_send.take() {
                        wire.send_last(&b, case.half_close);
                    }
                    out.tunnel = read_tunnel(wire, case.client.tunnel.as_ref().map_or(0, Vec::len));
                    return out;
                }
                if !complete {
                    break;
                }
            }
            Next::Eof => break,
            Next::Failed(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    out.leftover = std::mem::take(&mut wire.buf);
    out
}

/// Bytes after a `101`, until `want` of them came (or a short wait when none are expected).
fn read_tunnel(wire: &mut Wire, want: usize) -> Vec<u8> {
    wire.deadline = Instant::now()
        + if want == 0 {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(3)
        };
    while wire.buf.len() < want.max(1) {
        if !matches!(wire.fill(), Fill::Data) {
            break;
        }
    }
    std::mem::take(&mut wire.buf)
}

/// Whether the connection still serves a request (`expect_alive`), or has been closed.
fn probe_connection(wire: &mut Wire, expect_alive: bool) -> bool {
    wire.deadline = Instant::now() + Duration::from_secs(3);
    if !expect_alive {
        // Closed means the end of the stream, with nothing more on it.
        return !matches!(wire.fill(), Fill::Eof);
    }
    wire.send(format!("GET /c/follow-up HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes());
    // The worker echoes the target here, so an answer that belongs to an earlier request (a
    // desynchronised connection) shows.
    match next_response(wire, false) {
        Next::Final(r) => r.status == 200 && r.body == b"/c/follow-up",
        _ => false,
    }
}

// ───────────────────────────── HTTP/2 client ─────────────────────────────

/// A request body sent in parts, [`BODY_PAUSE`] apart, with no length of its own (so the case's
/// `content-length`, or none, is what the balancer sees).
struct Staged {
    parts: VecDeque<Bytes>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for Staged {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(p) = this.pause.as_mut() {
            std::task::ready!(p.as_mut().poll(cx));
            this.pause = None;
        }
        let Some(part) = this.parts.pop_front() else {
            return Poll::Ready(None);
        };
        if !this.parts.is_empty() {
            this.pause = Some(Box::pin(tokio::time::sleep(BODY_PAUSE)));
        }
        Poll::Ready(Some(Ok(hyper::body::Frame::data(part))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty() && self.pause.is_none()
    }
}

#[derive(Debug)]
struct H2Answer {
    status: u16,
    /// `name: value` lines.
    head: String,
    body: Vec<u8>,
}

/// One request on a fresh h2c (prior knowledge) connection with hyper's client.
async fn h2_exchange(addr: SocketAddr, req: &H2Request) -> Result<H2Answer, String> {
    use http_body_util::BodyExt as _;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let resp = tx
        .send_request(h2_request(req)?)
        .await
        .map_err(|e| format!("stream failed: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body failed: {e}"))?
        .to_bytes();
    let head = parts
        .headers
        .iter()
        .map(|(n, v)| format!("{n}: {}\r\n", latin1(v.as_bytes())))
        .collect();
    Ok(H2Answer {
        status: parts.status.as_u16(),
        head,
        body: body.to_vec(),
    })
}

/// The case's request, its body in one or two parts.
fn h2_request(req: &H2Request) -> Result<http::Request<Staged>, String> {
    let mut builder = http::Request::builder()
        .method(req.method.as_str())
        .uri(&req.uri);
    for (n, v) in &req.headers {
        builder = builder.header(n, v);
    }
    let parts = [Some(&req.body), req.body_after_pause.as_ref()]
        .into_iter()
        .flatten()
        .filter(|b| !b.is_empty())
        .map(|b| Bytes::copy_from_slice(b))
        .collect();
    builder
        .body(Staged { parts, pause: None })
        .map_err(|e| e.to_string())
}

fn h2_case(addr: SocketAddr, req: &H2Request) -> Result<H2Answer, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(CASE_TIMEOUT, h2_exchange(addr, req))
            .await
            .unwrap_or_else(|_| Err("no answer in time (hang)".into()))
    })
}

/// HTTP/2 frame types and flags this file reads or writes (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn h2_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK literal fields without indexing, new names, no Huffman (RFC 7541 §6.2.2): the one
/// encoding that needs no table. Every name and value here is shorter than 127 bytes.
fn hpack_literals(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Raw frames, so the GOAWAY itself can be seen: one GET, then nothing. The idle connection
/// must get a GOAWAY (RFC 9113 §6.8) and then be closed. `Ok` describes the timing.
fn h2_idle_goaway(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, CASE_TIMEOUT).map_err(|e| e.to_string())?;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_frame(&mut out, SETTINGS, 0, 0, &[]);
    let block = hpack_literals(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/c/h2-idle"),
        (":authority", HOST),
    ]);
    h2_frame(&mut out, HEADERS, END_STREAM | END_HEADERS, 1, &block);
    s.write_all(&out).map_err(|e| e.to_string())?;
    let seen = read_until_close(&mut s)?;
    match (seen.answered, seen.goaway) {
        (Some(a), Some(g)) if g >= a + Duration::from_millis(700) => {
            Ok(format!("GOAWAY {:?} after the answer, then closed", g - a))
        }
        (Some(a), Some(g)) => Err(format!("GOAWAY only {:?} after the answer", g - a)),
        (None, _) => Err("the request was never answered".into()),
        (Some(_), None) => Err("closed without a GOAWAY".into()),
    }
}

/// When stream 1 ended and when the first GOAWAY came.
#[derive(Default)]
struct H2Timeline {
    answered: Option<Instant>,
    goaway: Option<Instant>,
}

/// Reads frames until the server closes the connection (≤ 6 s).
fn read_until_close(s: &mut TcpStream) -> Result<H2Timeline, String> {
    let deadline = Instant::now() + Duration::from_secs(6);
    let (mut buf, mut seen) = (Vec::new(), H2Timeline::default());
    let mut chunk = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the idle connection was never closed".into());
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut chunk) {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            // The deadline is checked at the top of the loop.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Ok(_) | Err(_) => return Ok(seen),
        }
        take_frames(&mut buf, s, &mut seen)?;
    }
}

/// Handles the whole frames at the start of `buf`: acknowledges SETTINGS and PING (a peer
/// waiting for those acknowledgements may close for its own reasons), notes the rest.
fn take_frames(buf: &mut Vec<u8>, s: &mut TcpStream, seen: &mut H2Timeline) -> Result<(), String> {
    while buf.len() >= 9 {
        let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
        if buf.len() < 9 + len {
            break;
        }
        let (kind, flags) = (buf[3], buf[4]);
        let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
        let payload: Vec<u8> = buf.drain(..9 + len).skip(9).collect();
        let mut reply = Vec::new();
        match kind {
            SETTINGS if flags & ACK == 0 => h2_frame(&mut reply, SETTINGS, ACK, 0, &[]),
            PING if flags & ACK == 0 => h2_frame(&mut reply, PING, ACK, 0, &payload),
            DATA | HEADERS if stream == 1 && flags & END_STREAM != 0 => {
                seen.answered = Some(Instant::now())
            }
            RST_STREAM if stream == 1 => return Err("the request's stream was reset".into()),
            GOAWAY => seen.goaway = seen.goaway.or(Some(Instant::now())),
            _ => {}
        }
        let _ = s.write_all(&reply);
    }
    Ok(())
}

// ───────────────────────────── running a case ─────────────────────────────

/// What a case produced, on either protocol.
#[derive(Debug, Default)]
struct Observed {
    h1: Option<H1Outcome>,
    h2: Option<Result<H2Answer, String>>,
    goaway: Option<Result<String, String>>,
    worker: RawRecord,
    /// The worker connections the requests after the case came on.
    after: Vec<u64>,
}

/// Waits until the worker's record stops changing (≤ 2 s), then takes it.
fn settle(worker: &RawWorker) -> RawRecord {
    let size = |r: &RawRecord| {
        (
            r.messages.len(),
            r.partial.len(),
            r.refused.len(),
            r.tunnel.len(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut last = size(&worker.peek());
    loop {
        std::thread::sleep(Duration::from_millis(150));
        let now = size(&worker.peek());
        if now == last || Instant::now() > deadline {
            return worker.take();
        }
        last = now;
    }
}

fn observe(case: &Case, addr: SocketAddr, worker: &RawWorker) -> Observed {
    match case.protocol {
        Protocol::H1 => observe_h1(case, addr, worker),
        Protocol::H2 => observe_h2(case, addr, worker),
    }
}

fn observe_h2(case: &Case, addr: SocketAddr, worker: &RawWorker) -> Observed {
    let mut seen = Observed::default();
    if case.h2.idle_goaway {
        seen.goaway = Some(h2_idle_goaway(addr));
    } else {
        seen.h2 = Some(h2_case(addr, &case.h2));
    }
    seen.worker = settle(worker);
    seen
}

/// The conversation, what the worker got, then (if the case asks) whether the connection
/// still serves or was closed.
fn observe_h1(case: &Case, addr: SocketAddr, worker: &RawWorker) -> Observed {
    let mut wire = match Wire::connect(addr) {
        Ok(w) => w,
        Err(e) => {
            let out = H1Outcome {
                error: Some(format!("connect: {e}")),
                ..H1Outcome::default()
            };
            return Observed {
                h1: Some(out),
                ..Observed::default()
            };
        }
    };
    let mut out = h1_conversation(&mut wire, case);
    let record = settle(worker);
    let mut after = Vec::new();
    if let Some(expected) = case.client.keeps_alive {
        worker.set_reply(RawReply::EchoTarget);
        out.alive = Some(probe_connection(&mut wire, expected));
        after.extend(worker.take().messages.iter().map(|m| m.conn));
    }
    Observed {
        h1: Some(out),
        worker: record,
        after,
        ..Observed::default()
    }
}

/// A plain request on a fresh connection after a case: the balancer must still serve. Returns
/// the worker connection it came on.
fn still_serves(addr: SocketAddr, worker: &RawWorker) -> Result<u64, String> {
    worker.set_reply(RawReply::EchoTarget);
    let mut wire = Wire::connect(addr)?;
    wire.send(format!("GET /c/alive HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes());
    let result = match next_response(&mut wire, false) {
        Next::Final(r) if r.status == 200 && r.body == b"/c/alive" => Ok(()),
        Next::Final(r) => Err(format!(
            "a plain request got {}: {}",
            r.status,
            latin1(&r.body)
        )),
        Next::Failed(e) => Err(format!("a plain request failed: {e}")),
        _ => Err("a plain request got no answer".into()),
    };
    drop(wire);
    // Answered, so already recorded: nothing of it is left to arrive.
    let conn = worker.take().messages.last().map(|m| m.conn);
    result.and_then(|()| conn.ok_or_else(|| "the plain request never reached the worker".into()))
}

// ───────────────────────────── checks ─────────────────────────────

/// Whether a head (CRLF-separated lines) has a line starting with `prefix`, ignoring case; a
/// prefix ending in CRLF must be the whole line.
fn has_line(head: &str, prefix: &str) -> bool {
    let prefix = prefix.to_ascii_lowercase();
    head.split("\r\n")
        .any(|l| format!("{}\r\n", l.to_ascii_lowercase()).starts_with(&prefix))
}

fn field_count(head: &str, name: &str) -> usize {
    head.split("\r\n")
        .skip(1)
        .filter(|l| {
            l.split(':')
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .count()
}

/// `who`'s message against `want`: head lines, body, and trailers when the protocol has them
/// (`None` for HTTP/2 answers, whose trailers are not read).
fn message_checks(
    who: &str,
    head: &str,
    body: &[u8],
    trailers: Option<&str>,
    want: &MessageChecks,
) -> Vec<String> {
    let mut bad = Vec::new();
    for p in want.head_has.iter().filter(|p| !has_line(head, p)) {
        bad.push(format!("{who} head lacks {p:?}"));
    }
    for p in want.head_lacks.iter().filter(|p| has_line(head, p)) {
        bad.push(format!("{who} head has {p:?}"));
    }
    for n in &want.head_once {
        let count = field_count(head, n);
        if count != 1 {
            bad.push(format!("{who} head has {count} {n:?} lines, not one"));
        }
    }
    if let Some(wanted) = want.body.as_ref().filter(|b| **b != body) {
        bad.push(format!(
            "{who} body was {}, not {}",
            show(body),
            show(wanted)
        ));
    }
    if let Some(trailers) = trailers {
        for t in want.trailers_has.iter().filter(|t| !has_line(trailers, t)) {
            bad.push(format!("{who} trailers {trailers:?} lack {t:?}"));
        }
    }
    bad
}

/// The balancer's own JSON error code, if the answer is one.
fn balancer_error(head: &str, body: &[u8]) -> Option<String> {
    if has_line(head, "x-conformance-worker:") {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    json["error"].as_str().map(str::to_owned)
}

fn show(bytes: &[u8]) -> String {
    let text = format!("{:?}", latin1(bytes));
    match text.char_indices().nth(120) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

fn worker_checks(case: &Case, rec: &RawRecord) -> Vec<String> {
    let w = &case.worker;
    let mut bad = count_checks(case, rec);
    for r in &rec.refused {
        bad.push(format!("the worker's strict framing refused {r}"));
    }
    if let Some(lines) = &w.request_lines {
        let got: Vec<String> = rec.messages.iter().map(|m| first_line(&m.head)).collect();
        if &got != lines {
            bad.push(format!(
                "the worker's request lines were {got:?}, not {lines:?}"
            ));
        }
    }
    if let Some(want) = &w.tunnel {
        if &rec.tunnel != want {
            bad.push(format!(
                "the worker's tunnel got {}, not {}",
                show(&rec.tunnel),
                show(want)
            ));
        }
    }
    bad.extend(first_message_checks(w, rec));
    bad
}

/// How many requests reached the worker: by default one when forwarded, none when refused
/// (unless the worker's answer is what gets refused).
fn count_checks(case: &Case, rec: &RawRecord) -> Vec<String> {
    let default = match (&case.expect, &case.reply) {
        (Expect::Forward, _) => Some(1),
        (Expect::Reject { .. }, None) => Some(0),
        (Expect::Reject { .. }, Some(_)) => None,
    };
    match case.worker.requests.or(default) {
        Some(n) if rec.messages.len() != n => {
            let lines: Vec<_> = rec.messages.iter().map(|m| first_line(&m.head)).collect();
            vec![format!(
                "the worker got {} requests, not {n}: {lines:?}",
                rec.messages.len()
            )]
        }
        _ => Vec::new(),
    }
}

fn first_line(head: &str) -> String {
    head.split("\r\n").next().unwrap_or("").to_owned()
}

fn first_message_checks(w: &WorkerChecks, rec: &RawRecord) -> Vec<String> {
    let wants_message = !w.message.is_empty();
    let Some(m) = rec.messages.first() else {
        return match wants_message {
            true => vec!["the worker got no request to check".into()],
            false => Vec::new(),
        };
    };
    message_checks(
        "the worker's",
        &m.head,
        &m.body,
        Some(&m.trailers),
        &w.message,
    )
}

/// The statuses the client should get, in order.
fn wanted_statuses(case: &Case) -> Vec<u16> {
    if let Some(s) = &case.client.statuses {
        return s.clone();
    }
    match &case.expect {
        Expect::Reject { status, .. } => vec![*status],
        Expect::Forward => vec![case.client.status.unwrap_or(200)],
    }
}

fn h1_checks(case: &Case, o: &H1Outcome) -> Vec<String> {
    let c = &case.client;
    let mut bad = Vec::new();
    if let Some(e) = &o.error {
        bad.push(format!("client: {e}"));
    }
    if !o.leftover.is_empty() {
        bad.push(format!(
            "the client got bytes after the answers: {}",
            show(&o.leftover)
        ));
    }
    let got: Vec<u16> = o.responses.iter().map(|r| r.status).collect();
    if !c.truncated && got != wanted_statuses(case) {
        bad.push(format!(
            "the client got statuses {got:?}, not {:?}",
            wanted_statuses(case)
        ));
    }
    if let Some(first) = o.responses.first() {
        bad.extend(decision_checks(case, &first.head, &first.body));
        bad.extend(first_response_checks(c, first));
    }
    if let Some(bodies) = &c.bodies {
        let got: Vec<&[u8]> = o.responses.iter().map(|r| &r.body[..]).collect();
        if got != bodies.iter().map(|b| &b[..]).collect::<Vec<_>>() {
            bad.push(format!(
                "the client's bodies were {:?}",
                got.iter().map(|b| latin1(b)).collect::<Vec<_>>()
            ));
        }
    }
    bad.extend(connection_checks(c, o));
    bad
}

/// The reject / forward decision as the first answer shows it.
fn decision_checks(case: &Case, head: &str, body: &[u8]) -> Vec<String> {
    match (&case.expect, balancer_error(head, body)) {
        (
            Expect::Reject {
                error: Some(want), ..
            },
            Some(code),
        ) if code != *want => {
            vec![format!(
                "the balancer's error code was {code:?}, not {want:?}"
            )]
        }
        (Expect::Reject { .. }, None) if case.reply.is_none() => {
            vec!["the answer came from the worker, not the balancer".into()]
        }
        (Expect::Forward, Some(code)) => vec![format!("the balancer answered itself ({code})")],
        _ => Vec::new(),
    }
}

fn first_response_checks(c: &ClientChecks, r: &H1Response) -> Vec<String> {
    let mut bad = message_checks(
        "the client's",
        &r.head,
        &r.body,
        Some(&r.trailers),
        &c.message,
    );
    if c.truncated && r.complete && balancer_error(&r.head, &r.body).is_none() {
        bad.push(format!(
            "a cut-short response reached the client looking complete ({} bytes)",
            r.body.len()
        ));
    }
    if !c.truncated && !r.complete {
        bad.push(format!(
            "the response ended early, after {} bytes",
            r.body.len()
        ));
    }
    bad
}

fn connection_checks(c: &ClientChecks, o: &H1Outcome) -> Vec<String> {
    let mut bad = Vec::new();
    if let Some(want) = &c.interim {
        if &o.interim != want {
            bad.push(format!(
                "the client's interim answers were {:?}, not {want:?}",
                o.interim
            ));
        }
    }
    if let Some(want) = c.tunnel.as_ref().filter(|t| **t != o.tunnel) {
        bad.push(format!(
            "the client's tunnel got {}, not {}",
            show(&o.tunnel),
            show(want)
        ));
    }
    match (c.keeps_alive, o.alive) {
        (Some(true), Some(false)) => bad.push("the connection did not serve a next request".into()),
        (Some(false), Some(true)) => bad.push("the connection stayed open".into()),
        _ => {}
    }
    bad
}

fn h2_checks(case: &Case, answer: &Result<H2Answer, String>) -> Vec<String> {
    let c = &case.client;
    let want = wanted_statuses(case)[0];
    let a = match (answer, &case.expect) {
        (Err(_), Expect::Reject { .. }) if case.h2.reset_ok => return Vec::new(),
        (Err(e), _) => return vec![format!("client: {e}")],
        (Ok(a), _) => a,
    };
    let mut bad = Vec::new();
    if a.status != want {
        bad.push(format!("the client got {}, not {want}", a.status));
    }
    let head = format!("\r\n{}", a.head);
    bad.extend(decision_checks(case, &head, &a.body));
    bad.extend(message_checks(
        "the client's",
        &head,
        &a.body,
        None,
        &c.message,
    ));
    bad
}

/// Whether the balancer kept using a worker connection it had to drop.
fn reuse_checks(case: &Case, seen: &Observed) -> Vec<String> {
    let last = seen.worker.messages.last().map(|m| m.conn);
    match (case.worker.connection_reused, last) {
        (Some(false), Some(c)) if seen.after.contains(&c) => {
            vec![format!("the next request reused worker connection {c}")]
        }
        (Some(true), Some(c)) if !seen.after.contains(&c) => {
            vec![format!("worker connection {c} was not reused")]
        }
        _ => Vec::new(),
    }
}

fn all_checks(case: &Case, seen: &Observed) -> Vec<String> {
    let mut bad = worker_checks(case, &seen.worker);
    bad.extend(reuse_checks(case, seen));
    if let Some(o) = &seen.h1 {
        bad.extend(h1_checks(case, o));
    }
    if let Some(a) = &seen.h2 {
        bad.extend(h2_checks(case, a));
    }
    if let Some(Err(e)) = &seen.goaway {
        bad.push(e.clone());
    }
    bad
}

// ───────────────────────────── the table ─────────────────────────────

fn expected(case: &Case) -> String {
    match &case.expect {
        Expect::Reject { status, error } => {
            format!("reject {status} {}", error.as_deref().unwrap_or(""))
                .trim_end()
                .to_owned()
        }
        // Forwarded, but the worker's answer breaks off: no complete answer may reach the client.
        Expect::Forward if case.client.truncated => "forward, never complete".into(),
        Expect::Forward => {
            let statuses: Vec<String> = wanted_statuses(case).iter().map(u16::to_string).collect();
            format!("forward {}", statuses.join(","))
        }
    }
}

/// What happened, in the same words as [`expected`].
fn got(seen: &Observed) -> String {
    let w = seen.worker.messages.len();
    let answer = match (&seen.h1, &seen.h2, &seen.goaway) {
        (Some(o), _, _) => h1_summary(o),
        (_, Some(Ok(a)), _) => match balancer_error(&format!("\r\n{}", a.head), &a.body) {
            Some(code) => format!("reject {} {code}", a.status),
            None => format!("forward {}", a.status),
        },
        (_, Some(Err(e)), _) => format!("error: {e}"),
        (_, _, Some(r)) => r.clone().unwrap_or_else(|e| e),
        _ => "nothing".into(),
    };
    format!("{answer} (w={w})")
}

fn h1_summary(o: &H1Outcome) -> String {
    let Some(first) = o.responses.first() else {
        return match &o.error {
            Some(e) => format!("error: {e}"),
            None => "closed, no answer".into(),
        };
    };
    let statuses: Vec<String> = o
        .responses
        .iter()
        .map(|r| format!("{}{}", r.status, if r.complete { "" } else { " cut short" }))
        .collect();
    match balancer_error(&first.head, &first.body) {
        Some(code) => format!("reject {} {code}", statuses.join(",")),
        None => format!("forward {}", statuses.join(",")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Fail,
    /// Fails, as a marked bug says it does.
    Known,
    /// Marked as a bug, but passes: the mark is stale.
    Fixed,
}

struct Row {
    case: String,
    source: String,
    expected: String,
    got: String,
    verdict: Verdict,
    why: Vec<String>,
}

fn clip(s: &str, width: usize) -> String {
    match s.char_indices().nth(width) {
        Some((i, _)) => format!(
            "{}…",
            &s[..s.char_indices().nth(width - 1).map_or(i, |c| c.0)]
        ),
        None => s.to_owned(),
    }
}

fn print_table(rows: &[Row]) {
    let line = |c: &str, s: &str, e: &str, g: &str, v: &str| {
        println!(
            "{:<50} {:<34} {:<28} {:<40} {v}",
            clip(c, 50),
            clip(s, 34),
            clip(e, 28),
            clip(g, 40)
        );
    };
    line("case", "source", "expected", "got", "result");
    for r in rows {
        let verdict = match r.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Known => "known_failure",
            Verdict::Fixed => "FAIL (known_failure passes: remove the mark)",
        };
        line(&r.case, &r.source, &r.expected, &r.got, verdict);
    }
    for r in rows.iter().filter(|r| r.verdict != Verdict::Pass) {
        println!("\n{:?} {}:", r.verdict, r.case);
        for w in &r.why {
            println!("    - {w}");
        }
    }
    let count = |v: Verdict| rows.iter().filter(|r| r.verdict == v).count();
    println!(
        "\n{} cases: {} PASS, {} FAIL, {} known_failure, {} stale known_failure",
        rows.len(),
        count(Verdict::Pass),
        count(Verdict::Fail),
        count(Verdict::Known),
        count(Verdict::Fixed)
    );
}

// ───────────────────────────── the runner ─────────────────────────────

fn balancer_config(worker: SocketAddr, client_idle: &str) -> String {
    format!(
        r#"
[[listener]]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[timeouts]
client_idle = "{client_idle}"
[[route]]
prefix = "/"
target_group = "g"
[[target_group]]
name = "g"
workers = ["{worker}"]
response_timeout = "3s"
worker_body_idle = "3s"
# Cases make the worker fail on purpose; that must not take it out of service.
outlier = {{ consecutive_failures = 100000 }}
"#
    )
}

fn run_case(case: &Case, b: &Balancer, worker: &RawWorker) -> Row {
    let _ = worker.take();
    worker.set_reply(case.reply.clone().unwrap_or(RawReply::EchoTarget));
    let mut seen = observe(case, b.proc.addr, worker);
    let served = still_serves(b.proc.addr, worker);
    if let Ok(conn) = served {
        seen.after.push(conn);
    }
    let mut why = all_checks(case, &seen);
    if let Err(e) = served {
        why.push(format!("after the case: {e}"));
    }
    let verdict = match (why.is_empty(), &case.known_failure) {
        (true, None) => Verdict::Pass,
        (false, None) => Verdict::Fail,
        (false, Some(_)) => Verdict::Known,
        (true, Some(_)) => Verdict::Fixed,
    };
    if let Some(k) = &case.known_failure {
        why.insert(0, format!("known failure: {k}"));
    }
    Row {
        case: format!("{}: {}", case.file.trim_end_matches(".toml"), case.name),
        source: case.source.clone(),
        expected: expected(case),
        got: got(&seen),
        verdict,
        why,
    }
}

#[test]
fn conformance_corpus() {
    let cases = load_corpus();
    let worker = RawWorker::start();
    // One balancer per `client_idle` the cases ask for, all in front of the same worker.
    let mut balancers: BTreeMap<String, Balancer> = BTreeMap::new();
    let mut rows = Vec::new();
    for case in &cases {
        let b = balancers
            .entry(case.client_idle.clone())
            .or_insert_with(|| Balancer::start(&balancer_config(worker.addr, &case.client_idle)));
        rows.push(run_case(case, b, &worker));
    }
    print_table(&rows);
    let failing: Vec<&str> = rows
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Fail | Verdict::Fixed))
        .map(|r| r.case.as_str())
        .collect();
    assert!(
        failing.is_empty(),
        "{} failing cases: {failing:#?}",
        failing.len()
    );
}
