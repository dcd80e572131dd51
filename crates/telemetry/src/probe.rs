//! A tiny blocking HTTP/1.1 GET for tools that read load reports and health from outside: the
//! deployer's `/health` and `/load` checks and the load generator's samplers. One connection per
//! call, `Connection: close`, bounded by a timeout: a few calls per second at most, from code
//! that runs no async runtime.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `GET path` on `addr`: the status code and the body.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: fulcrum\r\nConnection: close\r\n\r\n"
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
