//! A tiny HTTP client for the balancer's own probes (`/health` checks, `/load` polls), on
//! hyper: off the request path, a connection per worker kept for reuse, over the worker's
//! group's transport (TLS or not, HTTP/1.1 or HTTP/2).

use std::net::SocketAddr;
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::transport::{Transport, WorkerProtocol};

type ProbeBody = http_body_util::Empty<bytes::Bytes>;

/// A probe connection's sending half.
enum Sender {
    H1(http1::SendRequest<ProbeBody>),
    H2(http2::SendRequest<ProbeBody>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(t) => t.is_closed(),
            Sender::H2(t) => t.is_closed(),
        }
    }

    async fn send(
        &mut self,
        req: http::Request<ProbeBody>,
    ) -> hyper::Result<http::Response<hyper::body::Incoming>> {
        match self {
            Sender::H1(t) => {
                t.ready().await?;
                t.send_request(req).await
            }
            Sender::H2(t) => {
                t.ready().await?;
                t.send_request(req).await
            }
        }
    }
}

/// Why a probe got no answer.
#[derive(Debug)]
pub struct ProbeError {
    pub message: String,
    /// The worker's address refused the connection: nothing listens there.
    pub refused: bool,
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for ProbeError {
    fn from(message: String) -> ProbeError {
        ProbeError {
            message,
            refused: false,
        }
    }
}

/// A small client for the balancer's own requests to a worker (health checks, `/load` polls):
/// one keep-alive connection, reopened after any failure, every call bounded by a timeout.
pub struct Probe {
    addr: SocketAddr,
    transport: Transport,
    tx: Option<Sender>,
}

impl Probe {
    pub fn new(addr: SocketAddr, transport: Transport) -> Probe {
        Probe {
            addr,
            transport,
            tx: None,
        }
    }

    /// `GET path`: the status and up to 64 KiB of body.
    pub async fn get(
        &mut self,
        path: &str,
        timeout: Duration,
    ) -> Result<(http::StatusCode, bytes::Bytes), ProbeError> {
        let result = tokio::time::timeout(timeout, self.get_inner(path)).await;
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.tx = None;
                Err(e)
            }
            Err(_) => {
                self.tx = None;
                Err(format!("no answer within {timeout:?}").into())
            }
        }
    }

    async fn get_inner(
        &mut self,
        path: &str,
    ) -> Result<(http::StatusCode, bytes::Bytes), ProbeError> {
        use http_body_util::BodyExt as _;
        if self.tx.as_ref().is_none_or(|t| t.is_closed()) {
            self.tx = Some(self.connect().await?);
        }
        let tx = self.tx.as_mut().expect("connected above");
        let mut req = http::Request::get(path);
        req = match tx {
            // HTTP/2 carries the authority in the URI; hyper sends it as `:authority`.
            Sender::H2(_) => req.uri(format!("{}://{}{path}", self.transport.scheme(), self.addr)),
            Sender::H1(_) => req.header(http::header::HOST, self.addr.to_string()),
        };
        let req = req
            .header(http::header::USER_AGENT, "fulcrum-balancer")
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = tx.send(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    async fn connect(&self) -> Result<Sender, ProbeError> {
        let stream = self
            .transport
            .connect(self.addr, Duration::from_secs(10))
            .await
            .map_err(|e| ProbeError {
                message: format!("connect: {e}"),
                refused: e.refused(),
            })?;
        let io = TokioIo::new(stream);
        let handshake = |e: hyper::Error| ProbeError::from(format!("handshake: {e}"));
        Ok(match self.transport.protocol {
            WorkerProtocol::Http1 => {
                let (tx, conn) = http1::handshake(io).await.map_err(handshake)?;
                tokio::spawn(conn);
                Sender::H1(tx)
            }
            WorkerProtocol::H2 => {
                let (tx, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(handshake)?;
                tokio::spawn(conn);
                Sender::H2(tx)
            }
        })
    }
}
