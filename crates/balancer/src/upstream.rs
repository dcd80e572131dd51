//! HTTP/1.1 connections to workers, on fulcrum's own codec.
//!
//! A request goes out as the bytes of its rewritten head followed by its body, streamed; the
//! response head is read into a pooled buffer and parsed with [`crate::http1`]; the response
//! body is read with [`BodyReader`], which knows where the message ends (Content-Length,
//! chunked, or the close of the connection) so the connection can be reused exactly when it
//! is safe.
//!
//! Connections are checked out for exactly one request and checked back in only once that
//! request's response has been read to its end, so a pooled connection is always idle; an idle
//! connection holds no buffer. The number of connections to a worker is bounded by its
//! in-flight cap: a connection is opened only for a request holding one of the worker's
//! in-flight slots, and only when no idle one is left. Idle lists are per runtime thread: a
//! connection is registered with the reactor of the thread that opened it.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::buffers::{Buffer, LARGE, SIZE};
use crate::clock::now_us;
use crate::errors::ProxyError;
use crate::http1::{self, ChunkStep, ChunkedDecoder, Field, ResponseBody, ResponseHead, Span};
pub use crate::transport::ConnectError;
use crate::transport::{Transport, WorkerStream};

/// One HTTP/1.1 connection to a worker, plain or TLS.
pub struct WorkerConn {
    pub stream: WorkerStream,
    /// What has been read and not yet used: a response head, body bytes after it.
    buf: Option<Buffer>,
    /// It served an earlier request (so a close before any answer may be the keep-alive race).
    pub reused: bool,
    /// The last read filled all the room there was: the body is long, read it in larger slices.
    filled: bool,
    open: Arc<AtomicUsize>,
}

impl Drop for WorkerConn {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How reading a response head failed.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The connection closed before the worker sent a byte of the response.
    #[error("the worker closed the connection before answering")]
    ClosedBeforeAnswer,
    #[error("the worker's connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the worker's response is malformed: {0}")]
    Malformed(&'static str),
    #[error("the worker sent no response head in time")]
    Timeout,
}

impl WorkerConn {
    /// Bytes read and not yet used.
    pub fn pending(&self) -> &[u8] {
        self.buf.as_deref().map_or(&[], |b| &b[..])
    }

    pub fn consume(&mut self, n: usize) {
        if let Some(b) = self.buf.as_mut() {
            b.consume(n);
        }
    }

    /// Gives the buffer back if nothing is waiting in it.
    pub fn release_buffer(&mut self) {
        if self.buf.as_ref().is_some_and(|b| b.is_empty()) {
            self.buf = None;
            self.filled = false;
        }
    }

    /// The buffer to read into, with room. After a read that filled it, an empty buffer grows
    /// to [`LARGE`]: a 100 KB body then moves in two or three reads and as many writes to the
    /// client instead of seven of each, which is what each write waking the client costs
    /// (nginx gathers the whole body and sends it in about two `writev`s).
    fn room(&mut self) -> &mut Buffer {
        let grow = self.filled;
        let buf = self.buf.get_or_insert_with(Buffer::take);
        if grow && buf.is_empty() && buf.capacity() < LARGE {
            buf.reserve(LARGE);
        } else if buf.spare() < 1024 {
            buf.reserve(SIZE);
        }
        buf
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.stream {
            WorkerStream::Plain(s) => {
                let written = write_now(s, bytes)?;
                if written < bytes.len() {
                    s.write_all(&bytes[written..]).await?;
                }
                Ok(())
            }
            // rustls holds records until flushed.
            WorkerStream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    /// Reads more bytes into the buffer, for callers that poll (a response body relayed to an
    /// HTTP/2 client); `Ok(0)` at the end of the stream.
    pub fn poll_read_more(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<usize>> {
        let room = self.room().spare();
        let buf = self.buf.as_mut().expect("room() leaves a buffer");
        let n = match &mut self.stream {
            WorkerStream::Plain(s) => loop {
                std::task::ready!(s.poll_read_ready(cx))?;
                match s.try_read_buf(&mut **buf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return std::task::Poll::Ready(Err(e)),
                }
            },
            WorkerStream::Tls(s) => std::task::ready!(poll_read_into(s, cx, buf))?,
        };
        self.filled = n == room;
        std::task::Poll::Ready(Ok(n))
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream. Through
    /// `AsyncRead`, which takes a short read as the socket drained (as nginx does): the next
    /// read waits for readiness instead of trying a `recv` bound to fail.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        use tokio::io::AsyncReadExt as _;
        let room = self.room().spare();
        let buf = self.buf.as_mut().expect("room() leaves a buffer");
        let n = self.stream.read_buf(&mut **buf).await?;
        self.filled = n == room;
        Ok(n)
    }

    /// Reads and parses the next response head to `request_method`, by `deadline`: an interim
    /// 1xx head comes back like a final one, for the caller to relay and then read on.
    pub async fn read_head(
        &mut self,
        request_method: &Method,
        fields: &mut Vec<Field>,
        deadline: Instant,
    ) -> Result<ResponseHead, HeadError> {
        loop {
            let parsed = http1::parse_response(self.pending(), request_method, fields)
                .map_err(|e| HeadError::Malformed(e.message))?;
            // The codec refuses a head beyond its own limit.
            if let Some(head) = parsed {
                return Ok(head);
            }
            let nothing_yet = self.pending().is_empty();
            match tokio::time::timeout_at(deadline, self.read_more()).await {
                Err(_) => return Err(HeadError::Timeout),
                Ok(Ok(0)) if nothing_yet => return Err(HeadError::ClosedBeforeAnswer),
                Ok(Ok(0)) => return Err(HeadError::Malformed("the worker closed mid-head")),
                Ok(Ok(_)) => {}
                Ok(Err(e)) if nothing_yet && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(HeadError::ClosedBeforeAnswer)
                }
                Ok(Err(e)) => return Err(HeadError::Io(e)),
            }
        }
    }
}

/// Why a request body did not reach the worker whole.
pub enum BodyFailure {
    /// The client's side: gone, too slow, too large, or malformed.
    Client(ProxyError),
    /// The worker stopped taking it.
    Worker(io::Error),
}

/// Where a response body ends, and how far it has been read.
pub enum BodyReader {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

/// What [`BodyReader::next`] found.
pub enum BodyPiece {
    /// `bytes` of the connection's buffer belong to the message; `data` is the part of them
    /// that is payload (for chunked bodies the rest is framing).
    Bytes { len: usize, data: Option<Span> },
    /// The message is complete; the connection may be reused if `reusable`.
    End { reusable: bool },
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyFault {
    #[error("the connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the connection closed before the body ended")]
    Truncated,
    #[error("the body's chunked framing is invalid: {0}")]
    Framing(&'static str),
    #[error("no body bytes for longer than the idle timeout")]
    Idle,
}

impl BodyReader {
    pub fn for_response(body: ResponseBody) -> BodyReader {
        match body {
            ResponseBody::None => BodyReader::Done,
            ResponseBody::Length(0) => BodyReader::Done,
            ResponseBody::Length(n) => BodyReader::Length(n),
            ResponseBody::Chunked => BodyReader::Chunked(ChunkedDecoder::new(u64::MAX)),
            ResponseBody::UntilClose => BodyReader::UntilClose,
        }
    }

    /// The next piece of the body from `conn`, reading when its buffer has nothing for us;
    /// each read must come within `idle`.
    pub async fn next(
        &mut self,
        conn: &mut WorkerConn,
        idle: Duration,
    ) -> Result<BodyPiece, BodyFault> {
        loop {
            if let Some(piece) = self.buffered(conn)? {
                return Ok(piece);
            }
            let n = tokio::time::timeout(idle, conn.read_more())
                .await
                .map_err(|_| BodyFault::Idle)??;
            if n == 0 {
                return self.at_eof();
            }
        }
    }

    /// The worker closed the connection: the end of a body that ends so, else a truncation.
    pub fn at_eof(&mut self) -> Result<BodyPiece, BodyFault> {
        match self {
            BodyReader::UntilClose => {
                *self = BodyReader::Done;
                Ok(BodyPiece::End { reusable: false })
            }
            _ => Err(BodyFault::Truncated),
        }
    }

    /// A piece from what is already buffered, if there is one.
    pub fn buffered(&mut self, conn: &WorkerConn) -> Result<Option<BodyPiece>, BodyFault> {
        let pending = conn.pending();
        match self {
            BodyReader::Done => Ok(Some(BodyPiece::End { reusable: true })),
            _ if pending.is_empty() => Ok(None),
            BodyReader::Length(left) => {
                let len = (*left).min(pending.len() as u64) as usize;
                *left -= len as u64;
                if *left == 0 {
                    *self = BodyReader::Done;
                }
                Ok(Some(BodyPiece::Bytes {
                    len,
                    data: Some(Span::new(0, len)),
                }))
            }
            BodyReader::UntilClose => Ok(Some(BodyPiece::Bytes {
                len: pending.len(),
                data: Some(Span::new(0, pending.len())),
            })),
            BodyReader::Chunked(decoder) => {
                let ChunkStep {
                    consumed,
                    data,
                    done,
                } = decoder
                    .feed(pending)
                    .map_err(|e| BodyFault::Framing(e.message()))?;
                if done {
                    *self = BodyReader::Done;
                }
                if consumed == 0 && !done {
                    return Ok(None);
                }
                Ok(Some(BodyPiece::Bytes {
                    len: consumed,
                    data,
                }))
            }
        }
    }
}

/// Reads what a TLS stream has into the spare room of `buf`.
fn poll_read_into(
    s: &mut tokio_rustls::client::TlsStream<TcpStream>,
    cx: &mut std::task::Context<'_>,
    buf: &mut Vec<u8>,
) -> std::task::Poll<io::Result<usize>> {
    use tokio::io::AsyncRead as _;
    let len = buf.len();
    // Zeroing the room costs little beside decryption, and keeps this free of `unsafe`.
    buf.resize(buf.capacity(), 0);
    let mut read = tokio::io::ReadBuf::new(&mut buf[len..]);
    let polled = std::pin::Pin::new(s).poll_read(cx, &mut read);
    let n = read.filled().len();
    buf.truncate(len + n);
    std::task::ready!(polled)?;
    std::task::Poll::Ready(Ok(n))
}

/// Writes what the socket takes without waiting; how much that was.
pub fn write_now(s: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match s.try_write(&bytes[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Runtime threads get their own idle lists up to this many; more threads share.
const SHARDS: usize = 16;

struct Idle {
    conn: WorkerConn,
    since_us: u64,
}

/// A worker's idle connections.
#[derive(Default)]
pub struct Pool {
    idle: [Mutex<Vec<Idle>>; SHARDS],
    open: Arc<AtomicUsize>,
}

impl Pool {
    fn shard(&self) -> &Mutex<Vec<Idle>> {
        &self.idle[crate::spread::this_thread() % SHARDS]
    }

    /// The most recently used idle connection that is still open and not older than
    /// `idle_timeout`. Most-recent-first keeps a few connections warm instead of many lukewarm.
    pub fn checkout(&self, idle_timeout: Duration) -> Option<WorkerConn> {
        let max_age = idle_timeout.as_micros() as u64;
        loop {
            let idle = self.shard().lock().expect("never poisoned").pop()?;
            if now_us().saturating_sub(idle.since_us) > max_age || !idle.conn.stream.still_open() {
                continue; // dropping it closes the connection
            }
            return Some(idle.conn);
        }
    }

    /// Returns a connection whose last response was read to the end.
    pub fn checkin(&self, mut conn: WorkerConn, cap: usize) {
        if !conn.pending().is_empty() {
            return; // bytes after the response: the worker is not speaking HTTP/1.1 as we are
        }
        conn.buf = None;
        conn.reused = true;
        let mut idle = self.shard().lock().expect("never poisoned");
        if idle.len() < cap {
            idle.push(Idle {
                conn,
                since_us: now_us(),
            });
        }
    }

    /// Opens a new connection to `addr` over `transport`, giving up at `timeout`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        transport: &Transport,
    ) -> Result<WorkerConn, ConnectError> {
        let stream = transport.connect(addr, timeout).await?;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(WorkerConn {
            stream,
            buf: None,
            reused: false,
            filled: false,
            open: self.open.clone(),
        })
    }

    /// Connections open now (idle or busy).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn idle(&self) -> usize {
        self.idle
            .iter()
            .map(|s| s.lock().expect("never poisoned").len())
            .sum::<usize>()
    }

    pub fn close_idle(&self) {
        for s in &self.idle {
            s.lock().expect("never poisoned").clear();
        }
    }
}
