//! Per-client rate limits: a token bucket per client — its source address, or the value of a
//! header such as an API key — refilled at `requests_per_second` up to `burst`. A request that
//! finds its bucket empty is answered 429 with `Retry-After`, before any rule, route or worker.
//!
//! Memory is bounded however many clients come: at most `max_clients` buckets (about 48 bytes
//! each) in 16 shards; a full shard evicts the least recently seen of a few sampled buckets, as
//! Redis evicts, so a flood of one-off addresses cannot push out every busy client nor grow the
//! table. An evicted client starts again with a full bucket.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::config::{RateLimitKey, RateLimitSettings};
use crate::rules::HeaderSource;

const SHARDS: usize = 16;
/// Buckets looked at to pick one to evict.
const EVICTION_SAMPLE: usize = 8;

/// A client's bucket.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_us: u64,
}

/// The limiter of one configuration generation.
pub struct RateLimiter {
    settings: RateLimitSettings,
    shards: Vec<Mutex<HashMap<u128, Bucket>>>,
    hasher: std::collections::hash_map::RandomState,
}

/// A request refused: how long until its bucket holds a token again, in whole seconds.
pub struct Limited {
    pub retry_after_s: u32,
}

impl RateLimiter {
    pub fn new(settings: RateLimitSettings) -> RateLimiter {
        RateLimiter {
            settings,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    /// Takes a token for the client of this request, or says when to come back.
    pub fn check(
        &self,
        source: IpAddr,
        headers: &dyn HeaderSource,
        now_us: u64,
    ) -> Result<(), Limited> {
        let key = self.key(source, headers);
        let per_shard = (self.settings.max_clients / SHARDS).max(1);
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut buckets = shard.lock().expect("never poisoned");
        if !buckets.contains_key(&key) && buckets.len() >= per_shard {
            evict_one(&mut buckets);
        }
        let burst = self.settings.burst as f64;
        let rate = self.settings.requests_per_second;
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            last_us: now_us,
        });
        let elapsed = now_us.saturating_sub(b.last_us) as f64 / 1e6;
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last_us = now_us;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - b.tokens) / rate;
        Err(Limited {
            retry_after_s: wait.ceil().max(1.0) as u32,
        })
    }

    /// Clients with a bucket now.
    pub fn clients(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("never poisoned").len())
            .sum()
    }

    pub fn settings(&self) -> &RateLimitSettings {
        &self.settings
    }

    /// The client's key: its address, or a hash of the header's value (its address when the
    /// request has none); the two kinds never collide.
    fn key(&self, source: IpAddr, headers: &dyn HeaderSource) -> u128 {
        // An IPv4 client on a dual-stack socket (::ffff:a.b.c.d) is its IPv4 address.
        let address = || match source {
            IpAddr::V4(v4) => u32::from(v4) as u128,
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(u128::from(v6), |v4| u32::from(v4) as u128),
        };
        match &self.settings.key {
            RateLimitKey::Source => address(),
            RateLimitKey::Header(name) => {
                let mut hashed = None;
                headers.any_value(name, &mut |v| {
                    hashed = Some(self.hasher.hash_one(v));
                    true
                });
                // Tagged above every IPv6 address's range of keys we produce for sources.
                hashed.map_or_else(address, |h| (1u128 << 127) | (1u128 << 64) | h as u128)
            }
        }
    }
}

/// Drops the least recently seen of a few buckets.
fn evict_one(buckets: &mut HashMap<u128, Bucket>) {
    let oldest = buckets
        .iter()
        .take(EVICTION_SAMPLE)
        .min_by_key(|(_, b)| b.last_us)
        .map(|(k, _)| *k);
    if let Some(k) = oldest {
        buckets.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoHeaders;
    impl HeaderSource for NoHeaders {
        fn any_value(&self, _: &str, _: &mut dyn FnMut(&[u8]) -> bool) -> bool {
            false
        }
    }

    fn limiter(rate: f64, burst: u32, max_clients: usize) -> RateLimiter {
        RateLimiter::new(RateLimitSettings {
            requests_per_second: rate,
            burst,
            key: RateLimitKey::Source,
            max_clients,
        })
    }

    #[test]
    fn a_bucket_holds_burst_and_refills_at_the_rate() {
        let l = limiter(2.0, 3, 100);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(ip, &NoHeaders, 0).is_ok());
        }
        let refused = l.check(ip, &NoHeaders, 0).unwrap_err();
        assert_eq!(refused.retry_after_s, 1);
        // Half a second gives one token back at 2/s.
        assert!(l.check(ip, &NoHeaders, 500_000).is_ok());
        assert!(l.check(ip, &NoHeaders, 500_000).is_err());
        // Another client has its own bucket.
        assert!(l.check("10.0.0.2".parse().unwrap(), &NoHeaders, 0).is_ok());
        // A slow rate asks for a longer wait.
        let slow = limiter(0.1, 1, 100);
        assert!(slow.check(ip, &NoHeaders, 0).is_ok());
        assert_eq!(slow.check(ip, &NoHeaders, 0).unwrap_err().retry_after_s, 10);
    }

    #[test]
    fn memory_stays_bounded_however_many_clients_come() {
        let l = limiter(1.0, 1, 1000);
        for i in 0..100_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(i));
            let _ = l.check(ip, &NoHeaders, i as u64);
        }
        assert!(l.clients() <= 1000, "{} buckets", l.clients());
        assert!(l.clients() >= 900, "{} buckets", l.clients());
    }

    #[test]
    fn ipv4_mapped_addresses_share_the_ipv4_bucket() {
        let l = limiter(1.0, 1, 100);
        assert!(l.check("10.0.0.1".parse().unwrap(), &NoHeaders, 0).is_ok());
        assert!(l
            .check("::ffff:10.0.0.1".parse().unwrap(), &NoHeaders, 0)
            .is_err());
    }
}
