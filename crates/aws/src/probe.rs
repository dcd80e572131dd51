//! Where fulcrum may send traffic of its own (health probes from `up`/`status`, requests from
//! the balancer to discovered workers), and a tiny `/health` probe.
//!
//! `FULCRUM_AWS_PROBE_CIDRS` (comma-separated CIDRs, e.g. `127.0.0.0/8`) limits those targets;
//! unset means anywhere. The tests set it to loopback so that an emulator's made-up instance
//! addresses are never contacted; an operator can set it to keep probes inside a VPC.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub const PROBE_CIDRS_ENV: &str = "FULCRUM_AWS_PROBE_CIDRS";

/// The networks fulcrum may send its own traffic to.
#[derive(Debug, Clone, Default)]
pub struct ProbeScope {
    /// `None`: anywhere.
    allowed: Option<Vec<(IpAddr, u8)>>,
}

impl ProbeScope {
    /// Reads `FULCRUM_AWS_PROBE_CIDRS`; a malformed value allows nothing (never more than asked).
    pub fn from_env() -> ProbeScope {
        match std::env::var(PROBE_CIDRS_ENV) {
            Ok(v) if !v.trim().is_empty() => {
                let parsed: Vec<(IpAddr, u8)> =
                    v.split(',').filter_map(|c| parse_cidr(c.trim())).collect();
                ProbeScope {
                    allowed: Some(parsed),
                }
            }
            _ => ProbeScope::default(),
        }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        match &self.allowed {
            None => true,
            Some(nets) => nets.iter().any(|(net, bits)| contains(*net, *bits, ip)),
        }
    }
}

/// Parses `A.B.C.D/N` (or an IPv6 CIDR); `None` when malformed.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((ip, bits))
}

fn contains(net: IpAddr, bits: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// `GET path` on `addr` with HTTP/1.1 and a total `timeout`; true on a 2xx answer.
pub async fn get_ok(addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut head = [0u8; 32];
        let mut n = 0;
        // The status line is all that matters: "HTTP/1.1 200 ...".
        while n < 12 {
            let r = s.read(&mut head[n..]).await.ok()?;
            if r == 0 {
                break;
            }
            n += r;
        }
        let line = std::str::from_utf8(&head[..n]).ok()?;
        let code = line.split_whitespace().nth(1)?;
        Some(code.starts_with('2'))
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_contain_what_they_should() {
        let (n, b) = parse_cidr("127.0.0.0/8").unwrap();
        assert!(contains(n, b, "127.3.4.5".parse().unwrap()));
        assert!(!contains(n, b, "10.0.0.1".parse().unwrap()));
        let (n, b) = parse_cidr("0.0.0.0/0").unwrap();
        assert!(contains(n, b, "54.1.2.3".parse().unwrap()));
        assert!(parse_cidr("1.2.3.4/33").is_none());
        assert!(parse_cidr("nonsense").is_none());
        let (n, b) = parse_cidr("::1/128").unwrap();
        assert!(contains(n, b, "::1".parse().unwrap()));
        assert!(!contains(n, b, "127.0.0.1".parse().unwrap()));
    }
}
