//! Waiting for AWS to converge: jittered exponential backoff under a total deadline, with
//! progress on stderr. Never a fixed sleep (the seed slept 500 s and hoped).

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::{AwsError, Result};

/// Backoff from `first` doubling up to `max`, each delay jittered by ±20 %.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { next: first, max }
    }

    /// The standard one for polling AWS: 1 s, 2 s, 4 s ... up to 15 s.
    pub fn polling() -> Backoff {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(15))
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(0.8 + 0.4 * fastrand::f64())
    }
}

/// Polls `check` until it returns `Some`, backing off between tries, for at most `timeout`.
/// `check` returns `Ok(None)` for "not yet" plus a progress line, shown when it changes (and
/// at least every 30 s, so a long wait never looks hung).
pub async fn until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    advice: &str,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Result<T, String>>>,
{
    let start = Instant::now();
    let mut backoff = Backoff::polling();
    let mut last_progress = String::new();
    let mut last_shown = Instant::now();
    loop {
        match check().await? {
            Ok(done) => return Ok(done),
            Err(progress) => {
                if progress != last_progress || last_shown.elapsed() > Duration::from_secs(30) {
                    eprintln!(
                        "  waiting for {what}: {progress} ({}s)",
                        start.elapsed().as_secs()
                    );
                    last_progress = progress;
                    last_shown = Instant::now();
                }
            }
        }
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(AwsError::Timeout {
                what: format!("{what} ({last_progress})"),
                waited: timeout,
                advice: advice.to_owned(),
            });
        }
        tokio::time::sleep(backoff.next_delay().min(left)).await;
    }
}

/// Retries `op` while its error satisfies `transient` (AWS's eventual consistency, e.g. a new
/// instance profile not yet visible to EC2), with backoff, for at most `timeout`.
pub async fn retry_while<T, P, F, Fut>(transient: P, timeout: Duration, mut op: F) -> Result<T>
where
    P: Fn(&AwsError) -> bool,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let start = Instant::now();
    let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(10));
    loop {
        match op().await {
            Err(e) if transient(&e) && start.elapsed() < timeout => {
                tracing::debug!(error = %e, "retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let d: Vec<f64> = (0..6).map(|_| b.next_delay().as_secs_f64()).collect();
        assert!((0.8..=1.2).contains(&d[0]), "{d:?}");
        assert!((1.6..=2.4).contains(&d[1]), "{d:?}");
        assert!((6.4..=9.6).contains(&d[5]), "{d:?}");
    }

    #[test]
    fn until_times_out_with_the_last_progress() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(until::<(), _, _>(
                "nothing",
                Duration::from_millis(300),
                "look",
                || async { Ok(Err("0/1 ready".to_owned())) },
            ))
            .unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("timed out") && m.contains("0/1 ready") && m.contains("look"),
            "{m}"
        );
    }
}
