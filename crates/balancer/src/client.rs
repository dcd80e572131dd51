//! Client connections as byte streams: plain or TLS, who is on the other end, and an HTTP/1.1
//! connection's reading and writing — a buffer only while a message is under way, a timeout
//! only when a write cannot complete at once.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;

use crate::buffers::Buffer;
use crate::rewrite::Hop;
use crate::spread::Placed;
use crate::state::Shared;

/// One open client connection, as the drain, `max_connections` and its thread count it.
pub struct ConnectionGuard(Arc<Shared>, Placed);

impl ConnectionGuard {
    pub fn new(shared: &Arc<Shared>, placed: Placed) -> ConnectionGuard {
        shared.drain.enter();
        ConnectionGuard(shared.clone(), placed)
    }

    /// The proxy thread counting this connection.
    pub fn thread(&self) -> usize {
        self.1.thread
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let s = &self.0;
        s.connections.fetch_sub(1, Ordering::Relaxed);
        s.metrics.connections_open.dec();
        s.drain.leave();
    }
}

/// Who is on the other end of a client connection, and which listener it came in on.
pub struct ConnInfo {
    pub hop: Hop,
    pub peer: SocketAddr,
    pub listener: Option<SocketAddr>,
    /// The TLS version, on a TLS listener.
    pub tls: Option<&'static str>,
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        listener: Option<SocketAddr>,
        tls: Option<&'static str>,
    ) -> ConnInfo {
        ConnInfo {
            hop: Hop::new(peer, listener.map(|l| l.port()), tls.is_some()),
            peer,
            listener,
            tls,
        }
    }
}

/// The TLS version a handshake settled on, as logs name it.
pub fn tls_version(conn: &rustls::ServerConnection) -> &'static str {
    match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    }
}

/// A client's byte stream, plain or TLS.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl ClientStream {
    /// Waits until reading would not block, without holding a buffer (plain TCP); a TLS
    /// stream has its own buffering, so it reads straight away.
    pub async fn ready_to_read(&self) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.readable().await,
            ClientStream::Tls(_) => Ok(()),
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One HTTP/1.1 client connection. Between requests it holds no buffer.
pub struct H1Client {
    pub stream: ClientStream,
    /// Bytes read and not yet used (a head being read, a body's start, pipelined requests).
    buf: Option<Buffer>,
    pub info: ConnInfo,
    /// Requests served on this connection so far.
    pub served: u64,
    /// Bytes taken from the client (consumed) and written to it, for the access log.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl H1Client {
    pub fn new(stream: ClientStream, info: ConnInfo) -> H1Client {
        H1Client {
            stream,
            buf: None,
            info,
            served: 0,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    pub fn pending(&self) -> &[u8] {
        self.buf.as_deref().map_or(&[], |b| &b[..])
    }

    pub fn consume(&mut self, n: usize) {
        if let Some(b) = self.buf.as_mut() {
            b.consume(n);
            self.bytes_in += n as u64;
        }
    }

    /// Reads more bytes; `Ok(0)` at the end of the stream.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        self.stream.ready_to_read().await?;
        let buf = self.buf.get_or_insert_with(Buffer::take);
        if buf.spare() < 1024 {
            buf.reserve(crate::buffers::SIZE);
        }
        self.stream.read_buf(&mut **buf).await
    }

    /// Gives the buffer back while idle, unless a pipelined request waits in it.
    pub fn release_buffer(&mut self) {
        if self.buf.as_ref().is_some_and(|b| b.is_empty()) {
            self.buf = None;
        }
    }

    pub async fn write(&mut self, bytes: &[u8], idle: Duration) -> Result<(), ClientFault> {
        self.bytes_out += bytes.len() as u64;
        // Most writes fit the socket's buffer at once: a timer only for one that does not.
        let written = match &self.stream {
            ClientStream::Plain(s) => {
                crate::upstream::write_now(s, bytes).map_err(|_| ClientFault::Gone)?
            }
            ClientStream::Tls(_) => 0,
        };
        let rest = &bytes[written..];
        if rest.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(idle, self.stream.write_all(rest)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ClientFault::Gone),
            Err(_) => Err(ClientFault::WriteIdle),
        }
    }
}

/// Why a client connection cannot go on; never the worker's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// The client closed or reset the connection.
    Gone,
    /// It stopped taking the response for `client_write_idle`.
    WriteIdle,
    /// It stopped sending its request body for `client_body_idle`.
    BodyIdle,
}

impl ClientFault {
    pub fn code(self) -> &'static str {
        match self {
            ClientFault::Gone => "client_gone",
            ClientFault::WriteIdle => "client_write_idle",
            ClientFault::BodyIdle => "client_body_idle",
        }
    }
}
