//! The balancer's `cloudwatch` telemetry source on AWS: `AWS/EC2 CPUUtilization` per instance
//! through `GetMetricData` (one call for up to 500 instances), period 60 s — the finest EC2
//! publishes, with detailed monitoring — over the last 15 minutes.
//!
//! The service does not promise datapoints in time order (the seed's balancer read whatever
//! came first), so every instance's datapoints are sorted by timestamp here and the newest one
//! wins. The balancer calls this from a background task, never on the request path.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, ScanBy};
use fulcrum_balancer::extension::{BoxFuture, CpuDatapoints};
use fulcrum_balancer::CloudwatchCpu;
use tokio::sync::OnceCell;

/// EC2's finest period (detailed monitoring); CloudWatch rejects periods that are not a
/// multiple of 60 s for standard-resolution metrics.
pub const PERIOD_SECONDS: i32 = 60;
/// How far back to look: a few periods, so one late datapoint still shows.
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// GetMetricData's limit of queries per call.
const MAX_QUERIES: usize = 500;

/// Reads CPUUtilization from AWS CloudWatch; the client is made on first use.
pub struct CloudwatchCpuSource {
    region: Option<String>,
    client: OnceCell<aws_sdk_cloudwatch::Client>,
}

impl CloudwatchCpuSource {
    /// `region`: `None` for the SDK's chain (on an instance, its own region).
    pub fn new(region: Option<String>) -> CloudwatchCpuSource {
        CloudwatchCpuSource {
            region,
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<&aws_sdk_cloudwatch::Client, String> {
        self.client
            .get_or_try_init(|| async {
                let config = crate::session::sdk_config(self.region.as_deref(), None)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(aws_sdk_cloudwatch::Client::new(&config))
            })
            .await
    }

    /// The newest datapoint of each instance that has one.
    pub async fn read(&self, instance_ids: Vec<String>) -> Result<CpuDatapoints, String> {
        let cw = self.client().await?;
        let end = SystemTime::now();
        let start = end - WINDOW;
        let mut series: Vec<(String, Vec<DateTime>, Vec<f64>)> = Vec::new();
        for chunk in instance_ids.chunks(MAX_QUERIES) {
            // Query ids must start with a lowercase letter; `m<index>` maps back to the chunk.
            let queries: Vec<MetricDataQuery> = chunk
                .iter()
                .enumerate()
                .map(|(i, id)| query(i, id))
                .collect();
            let mut pages = cw
                .get_metric_data()
                .set_metric_data_queries(Some(queries))
                .start_time(DateTime::from(start))
                .end_time(DateTime::from(end))
                .scan_by(ScanBy::TimestampDescending)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| {
                    crate::error::AwsError::api("CloudWatch GetMetricData", e).to_string()
                })?;
                for r in page.metric_data_results() {
                    let Some(instance) = r
                        .id()
                        .and_then(|q| q.strip_prefix('m'))
                        .and_then(|i| i.parse::<usize>().ok())
                        .and_then(|i| chunk.get(i))
                    else {
                        continue;
                    };
                    series.push((
                        instance.clone(),
                        r.timestamps().to_vec(),
                        r.values().to_vec(),
                    ));
                }
            }
        }
        Ok(newest_per_instance(series))
    }
}

fn query(index: usize, instance_id: &str) -> MetricDataQuery {
    MetricDataQuery::builder()
        .id(format!("m{index}"))
        .metric_stat(
            MetricStat::builder()
                .metric(
                    Metric::builder()
                        .namespace("AWS/EC2")
                        .metric_name("CPUUtilization")
                        .dimensions(
                            Dimension::builder()
                                .name("InstanceId")
                                .value(instance_id)
                                .build(),
                        )
                        .build(),
                )
                .period(PERIOD_SECONDS)
                .stat("Average")
                .build(),
        )
        .return_data(true)
        .build()
}

/// From `(instance, timestamps, values)` series (several per instance when results were
/// paginated, in any order), each instance's newest datapoint as `(fraction, time)`.
/// CloudWatch reports percent; the balancer wants a fraction of the instance's CPU.
pub fn newest_per_instance(series: Vec<(String, Vec<DateTime>, Vec<f64>)>) -> CpuDatapoints {
    let mut points: HashMap<String, Vec<(SystemTime, f64)>> = HashMap::new();
    for (instance, times, values) in series {
        let entry = points.entry(instance).or_default();
        for (t, v) in times.iter().zip(values) {
            if let Ok(t) = SystemTime::try_from(*t) {
                if v.is_finite() {
                    entry.push((t, v));
                }
            }
        }
    }
    points
        .into_iter()
        .filter_map(|(instance, mut p)| {
            p.sort_by_key(|(t, _)| *t);
            let (t, v) = *p.last()?;
            Some((instance, ((v / 100.0).clamp(0.0, 1.0), t)))
        })
        .collect()
}

impl CloudwatchCpu for CloudwatchCpuSource {
    fn latest(&self, instance_ids: Vec<String>) -> BoxFuture<'_, Result<CpuDatapoints, String>> {
        Box::pin(self.read(instance_ids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_datapoint_wins_whatever_the_order() {
        let t = |s: i64| DateTime::from_secs(1_700_000_000 + s);
        let series = vec![
            (
                "i-a".to_owned(),
                vec![t(60), t(180), t(0), t(120)],
                vec![10.0, 42.0, 5.0, 90.0],
            ),
            ("i-b".to_owned(), vec![t(0)], vec![150.0]),
            ("i-c".to_owned(), vec![], vec![]),
            // A second page for i-a with an older point changes nothing.
            ("i-a".to_owned(), vec![t(30)], vec![99.0]),
        ];
        let got = newest_per_instance(series);
        let (cpu, at) = got["i-a"];
        assert!((cpu - 0.42).abs() < 1e-9, "{cpu}");
        assert_eq!(at, SystemTime::try_from(t(180)).unwrap());
        assert_eq!(got["i-b"].0, 1.0, "clamped to the whole CPU");
        assert!(!got.contains_key("i-c"));
    }
}
