//! Telemetry sources that run in the background (the `inband` source needs no task: the
//! request path parses every response's load header).
//!
//! - `poll`: `GET /load` on each worker every `poll_interval`, off the request path.
//! - `cloudwatch`, emulated: what AWS CloudWatch would show for the worker's `CPUUtilization`
//!   with detailed monitoring — the average over fixed windows of `period` (60 s by default),
//!   aligned to wall-clock multiples of the period as CloudWatch's are, each published only
//!   when its window has ended. At any moment the reading is therefore the *previous* window's
//!   average: one window late. This is the data the seed's balancer steered by. It is labelled
//!   an emulation wherever it appears (status, metrics, reports).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fulcrum_telemetry::LoadReport;

use crate::config::TelemetrySource;
use crate::fleet::{now_us, Worker};
use crate::probe::Probe;
use crate::transport::Transport;

/// The part of a worker's `/load` answer the balancer reads.
#[derive(serde::Deserialize)]
struct Load {
    cpu_utilization: f64,
    cpu_cores: f64,
    /// Absent from workers that predate it.
    #[serde(default)]
    cpu_available: Option<f64>,
    cpu_seconds_total: f64,
    requests_per_second: f64,
    errors_per_second: f64,
}

async fn read_load(probe: &mut Probe, timeout: Duration) -> Option<Load> {
    match probe.get("/load", timeout).await {
        Ok((status, body)) if status.is_success() => serde_json::from_slice(&body).ok(),
        _ => None,
    }
}

pub fn spawn_poll(
    worker: Arc<Worker>,
    interval: Duration,
    transport: Transport,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut probe = Probe::new(worker.addr, transport);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(l) = read_load(&mut probe, interval.max(Duration::from_millis(200))).await {
                worker.store_report(
                    TelemetrySource::Poll,
                    &LoadReport {
                        cpu_utilization: Some(l.cpu_utilization),
                        rps_fractional: Some(l.requests_per_second),
                        eps: Some(l.errors_per_second),
                        inflight: None,
                        cpu_cores: Some(l.cpu_cores),
                        cpu_available: l.cpu_available,
                        service_p90_ms: None,
                    },
                    now_us(),
                );
            }
        }
    })
}

/// Cumulative CPU seconds at a wall-clock instant.
#[derive(Clone, Copy)]
struct Sample {
    wall: f64,
    cpu: f64,
}

/// Turns cumulative CPU samples into per-window averages, CloudWatch style.
pub struct WindowAverager {
    period: f64,
    /// The sample that opened the current window (or the first one seen in it).
    window_start: Option<Sample>,
    last: Option<Sample>,
}

impl WindowAverager {
    pub fn new(period: Duration) -> WindowAverager {
        WindowAverager {
            period: period.as_secs_f64(),
            window_start: None,
            last: None,
        }
    }

    /// Feeds a sample; returns `(window_end, average utilization)` for each window that closed.
    fn feed(&mut self, s: Sample, cores: f64) -> Option<(f64, f64)> {
        let mut published = None;
        if let (Some(last), Some(start)) = (self.last, self.window_start) {
            let boundary = ((last.wall / self.period).floor() + 1.0) * self.period;
            if s.wall >= boundary && s.wall > last.wall {
                // Interpolate the counter at the boundary, close the window there.
                let frac = (boundary - last.wall) / (s.wall - last.wall);
                let at_boundary = Sample {
                    wall: boundary,
                    cpu: last.cpu + (s.cpu - last.cpu) * frac,
                };
                let span = at_boundary.wall - start.wall;
                if span > 0.0 && cores > 0.0 {
                    let avg = (at_boundary.cpu - start.cpu).max(0.0) / (span * cores);
                    published = Some((boundary, avg));
                }
                // Windows with no samples at all (a long gap) publish nothing, as CloudWatch
                // shows no datapoint for a period without data.
                self.window_start = Some(if s.wall - boundary >= self.period {
                    s
                } else {
                    at_boundary
                });
            }
        } else {
            self.window_start = Some(s);
        }
        self.last = Some(s);
        published
    }
}

fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub fn spawn_cloudwatch_emulation(
    worker: Arc<Worker>,
    period: Duration,
    transport: Transport,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut probe = Probe::new(worker.addr, transport);
        let mut averager = WindowAverager::new(period);
        // Sample often enough to place window boundaries well, rarely enough to cost nothing.
        let every = (period / 12).clamp(Duration::from_millis(250), Duration::from_secs(5));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(l) = read_load(&mut probe, every.max(Duration::from_millis(500))).await else {
                continue;
            };
            let wall = wall_now();
            let sample = Sample {
                wall,
                cpu: l.cpu_seconds_total,
            };
            if let Some((window_end, avg)) = averager.feed(sample, l.cpu_cores) {
                // The reading is as old as its window's end.
                let age_us = ((wall - window_end).max(0.0) * 1e6) as u64;
                worker.store_report(
                    TelemetrySource::Cloudwatch,
                    &LoadReport {
                        cpu_utilization: Some(avg),
                        rps_fractional: None,
                        eps: None,
                        inflight: None,
                        cpu_cores: Some(l.cpu_cores),
                        cpu_available: None,
                        service_p90_ms: None,
                    },
                    now_us().saturating_sub(age_us).max(1),
                );
            }
        }
    })
}

/// Reads AWS CloudWatch for every worker whose instance id is known (from its own
/// `x-fulcrum-instance` header or from discovery), in the background: CloudWatch's EC2 metrics
/// have a 1-minute period at best, so asking more often than every 20 s gains nothing and only
/// risks throttling.
pub fn spawn_cloudwatch_aws(
    router: Arc<arc_swap::ArcSwap<crate::route::Router>>,
    source: Arc<dyn crate::extension::CloudwatchCpu>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let workers = router.load().workers();
            let ids: Vec<(Arc<Worker>, String)> = workers
                .into_iter()
                .filter_map(|w| w.identity().map(|i| (w, i.instance_id)))
                .collect();
            if !ids.is_empty() {
                match source
                    .latest(ids.iter().map(|(_, id)| id.clone()).collect())
                    .await
                {
                    Ok(points) => {
                        let wall = SystemTime::now();
                        for (w, id) in &ids {
                            if let Some((cpu, at)) = points.get(id) {
                                let age_us =
                                    wall.duration_since(*at).unwrap_or_default().as_micros() as u64;
                                w.slot(TelemetrySource::Cloudwatch).store(
                                    *cpu,
                                    0.0,
                                    0.0,
                                    now_us().saturating_sub(age_us).max(1),
                                );
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "CloudWatch read failed"),
                }
            }
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_close_on_wall_clock_boundaries_one_window_late() {
        let mut a = WindowAverager::new(Duration::from_secs(60));
        // Starts mid-window at t=30 s, using half of its one core.
        assert_eq!(
            a.feed(
                Sample {
                    wall: 30.0,
                    cpu: 0.0
                },
                1.0
            ),
            None
        );
        assert_eq!(
            a.feed(
                Sample {
                    wall: 50.0,
                    cpu: 10.0
                },
                1.0
            ),
            None
        );
        // Crossing t=60 closes [30, 60): 15 CPU-seconds (interpolated) over 30 s = 0.5.
        let (end, avg) = a
            .feed(
                Sample {
                    wall: 70.0,
                    cpu: 20.0,
                },
                1.0,
            )
            .unwrap();
        assert_eq!(end, 60.0);
        assert!((avg - 0.5).abs() < 1e-9, "{avg}");
        // Then a full core: the counter reaches 70 at t=120, so [60, 120) averages 55/60.
        assert_eq!(
            a.feed(
                Sample {
                    wall: 110.0,
                    cpu: 60.0
                },
                1.0
            ),
            None
        );
        let (end, avg) = a
            .feed(
                Sample {
                    wall: 130.0,
                    cpu: 80.0,
                },
                1.0,
            )
            .unwrap();
        assert_eq!(end, 120.0);
        assert!((avg - 55.0 / 60.0).abs() < 1e-9, "{avg}");
    }
}
