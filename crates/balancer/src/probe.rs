//! A tiny HTTP/1.1 client for the balancer's own probes (`/health` checks, `/load` polls),
//! on hyper: off the request path, a connection per worker kept for reuse.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

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
    tx: Option<SendRequest<http_body_util::Empty<bytes::Bytes>>>,
}

impl Probe {
    pub fn new(addr: SocketAddr) -> Probe {
        Probe { addr, tx: None }
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
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| ProbeError {
                    message: format!("connect: {e}"),
                    refused: e.kind() == std::io::ErrorKind::ConnectionRefused,
                })?;
            let _ = stream.set_nodelay(true);
            let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.tx = Some(tx);
        }
        let tx = self.tx.as_mut().expect("connected above");
        tx.ready().await.map_err(|e| e.to_string())?;
        let req = http::Request::get(path)
            .header(http::header::HOST, self.addr.to_string())
            .header(http::header::USER_AGENT, "fulcrum-balancer")
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}
