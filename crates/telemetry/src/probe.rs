//! A tiny blocking HTTP/1.1 client for tools that talk to workers and balancers from outside:
//! the deployer's `/health` and `/load` checks, the load generator's samplers, the experiment's
//! policy switches. One connection per call, `Connection: close`, bounded by a timeout: a few
//! calls per second at most, from code that runs no async runtime.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `GET path` on `addr`: the status code and the body.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    request(addr, "GET", path, None, timeout)
}

/// A worker's `GET /load`, typed.
pub fn load(addr: SocketAddr, timeout: Duration) -> io::Result<crate::LoadSnapshot> {
    let (status, body) = get(addr, "/load", timeout)?;
    if status != 200 {
        return Err(io::Error::other(format!("/load answered {status}")));
    }
    serde_json::from_str(&body).map_err(io::Error::other)
}

/// `METHOD path` on `addr`, with an optional JSON body: the status code and the body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<&str>,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = json.unwrap_or_default();
    let content = match json {
        Some(b) => format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ),
        None => String::new(),
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: fulcrum\r\n{content}Connection: close\r\n\r\n{body}"
    )?;
    let mut buf = Vec::with_capacity(4096);
    s.take(1 << 20).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status"))?;
    Ok((status, body.to_owned()))
}

/// Whether `GET /health` answers 200.
pub fn healthy(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(get(addr, "/health", timeout), Ok((200, _)))
}
