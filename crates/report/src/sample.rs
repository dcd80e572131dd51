//! A small but complete experiment's results for unit tests: the seed's two clusters
//! (5 × t2.micro at 0.1 core, 4 × t2.large at 0.2 core, 1 ms of CPU per request), the seed's
//! benchmark on each, a capacity ramp per cluster, and a shoot-out of six policies.

use std::collections::BTreeMap;

use fulcrum_loadgen::results::*;

/// Latencies spread evenly around `median_ms` (±50%), `n` of them.
pub fn hist(n: u64, median_ms: f64) -> Hist {
    let mut h = new_histogram();
    for i in 0..n {
        let f = 0.5 + i as f64 / n.max(1) as f64;
        record(&mut h, (median_ms * f * 1000.0) as u64);
    }
    Hist::from_histogram(&h)
}

fn instances() -> Vec<InstanceInfo> {
    let mut v = Vec::new();
    for i in 0..5 {
        v.push(InstanceInfo {
            cluster: 1,
            instance_id: format!("i-micro{i}"),
            address: format!("127.0.0.1:{}", 9000 + i),
            instance_type: "t2.micro".into(),
            cores: 0.1,
        });
    }
    for i in 0..4 {
        v.push(InstanceInfo {
            cluster: 2,
            instance_id: format!("i-large{i}"),
            address: format!("127.0.0.1:{}", 9100 + i),
            instance_type: "t2.large".into(),
            cores: 0.2,
        });
    }
    v
}

pub fn run(name: &str, kind: RunKind, route: &str, model: Model, responses: u64, p50: f64) -> Run {
    let duration_s = match &model {
        Model::Closed { .. } => 2.0,
        Model::Open { duration_s, .. } => *duration_s,
    };
    let target_rate = match &model {
        Model::Open { rate, .. } => Some(*rate),
        Model::Closed { .. } => None,
    };
    let cluster = route.trim_start_matches("/cluster").to_owned();
    let mut by_cluster = BTreeMap::new();
    let mut by_instance = BTreeMap::new();
    let mut cpu = Vec::new();
    let ids: Vec<InstanceInfo> = instances()
        .into_iter()
        .filter(|i| route == "/" || i.cluster.to_string() == cluster)
        .collect();
    if route != "/" {
        by_cluster.insert(
            cluster.clone(),
            Group {
                responses,
                errors: 0,
                latency: hist(responses, p50),
            },
        );
    }
    for i in &ids {
        let n = responses / ids.len() as u64;
        by_instance.insert(
            i.instance_id.clone(),
            InstanceGroup {
                cluster: i.cluster.to_string(),
                responses: n,
                errors: 0,
                latency: hist(n, p50),
            },
        );
        for k in 0..=(duration_s * 4.0) as u32 {
            cpu.push(CpuSample {
                t: k as f64 / 4.0,
                instance_id: i.instance_id.clone(),
                cluster: i.cluster.to_string(),
                cpu_utilization: if i.cluster == 1 { 0.95 } else { 0.7 },
                in_flight: 3,
            });
        }
    }
    Run {
        name: name.into(),
        kind,
        url: format!("http://127.0.0.1:8080{route}"),
        policy: Some("cpu-aware".into()),
        telemetry: Some("inband".into()),
        model,
        connections: 100,
        threads: 1,
        warmup_s: 0.0,
        started_s: 0.0,
        duration_s,
        responses,
        errors: Errors::default(),
        target_rate,
        achieved_rate: responses as f64 / duration_s,
        late_requests: 0,
        unsent_requests: 0,
        latency: hist(responses, p50),
        service_time: None,
        by_cluster,
        by_instance,
        by_status_class: BTreeMap::new(),
        timeline: (0..duration_s as u32)
            .map(|t| Second {
                t: t as f64,
                responses: responses / duration_s as u64,
                errors: 0,
                p50_ms: p50,
                p99_ms: p50 * 1.5,
                max_ms: p50 * 1.6,
                responses_by_cluster: BTreeMap::new(),
            })
            .collect(),
        cpu,
        balancer: vec![],
        generator: Generator {
            cpu_seconds: 0.2,
            cpu_utilization: 0.1,
            saturated: false,
        },
    }
}

pub fn policy(label: &str, telemetry: &str, p99: f64) -> PolicyResult {
    let shares = instances()
        .iter()
        .map(|i| Share {
            instance_id: i.instance_id.clone(),
            cluster: i.cluster.to_string(),
            share_of_requests: 1.0 / 9.0,
            share_of_capacity: i.cores / 1.3,
        })
        .collect();
    PolicyResult {
        label: label.into(),
        policy: label.split(' ').next().unwrap_or(label).into(),
        telemetry: telemetry.into(),
        latency: hist(1000, p99 / 1.5),
        responses: 1000,
        errors: 0,
        achieved_rate: 1000.0,
        p99_by_round_ms: vec![p99 * 0.95, p99 * 1.05],
        shares,
    }
}

pub fn experiment() -> Results {
    let closed = || Model::Closed {
        requests: 1000,
        concurrency: 100,
    };
    let mut runs = vec![
        run(
            "seed-cluster1",
            RunKind::Seed,
            "/cluster1",
            closed(),
            1000,
            200.0,
        ),
        run(
            "seed-cluster2",
            RunKind::Seed,
            "/cluster2",
            closed(),
            1000,
            125.0,
        ),
    ];
    let mut capacity = Vec::new();
    for (c, rates, sustained, failed) in [
        ("1", vec![300.0, 450.0, 500.0], 450.0, 500.0),
        ("2", vec![450.0, 750.0, 800.0], 750.0, 800.0),
    ] {
        let mut names = Vec::new();
        for rate in rates {
            let name = format!("capacity-cluster{c}-{rate}");
            let route = format!("/cluster{c}");
            let mut r = run(
                &name,
                RunKind::Capacity,
                &route,
                Model::Open {
                    rate,
                    duration_s: 2.0,
                },
                (rate * 2.0) as u64,
                5.0,
            );
            if rate == failed {
                r.achieved_rate = rate * 0.9;
                r.latency = hist(100, 400.0);
            }
            names.push(name);
            runs.push(r);
        }
        capacity.push(Capacity {
            cluster: c.into(),
            route: format!("/cluster{c}"),
            sustained_rate: sustained,
            failed_rate: Some(failed),
            sustained_fraction: 0.97,
            p99_bound_ms: 200.0,
            runs: names,
        });
    }
    let mut policies = vec![
        policy("round-robin", "inband", 900.0),
        policy("least-outstanding", "inband", 28.0),
        policy("lowest-cpu (cloudwatch, emulated)", "cloudwatch", 1500.0),
        policy("lowest-cpu (poll)", "poll", 60.0),
        policy("p2c-ewma", "inband", 22.0),
        policy("cpu-aware", "inband", 20.0),
    ];
    // The seed's design herds: one worker gets 40% of the requests.
    let herded = &mut policies[2].shares;
    herded[0].share_of_requests = 0.4;
    for s in herded.iter_mut().skip(1) {
        s.share_of_requests = 0.6 / 8.0;
    }
    Results {
        schema: SCHEMA_VERSION,
        fulcrum_version: "0.1.0".into(),
        command: vec!["fulcrum".into(), "experiment".into(), "--quick".into()],
        started_at: "2026-01-01T00:00:00Z".into(),
        machine: Machine {
            hostname: "host".into(),
            cores: 2,
            cpu_model: "Test CPU".into(),
            kernel: "6.1.0".into(),
        },
        deployment: Some(Deployment {
            name: "seed".into(),
            provider: "local".into(),
            balancer_url: "http://127.0.0.1:8080".into(),
            admin_url: None,
            emulation: Some(Emulation {
                scale: 0.1,
                period_us: 100_000,
                credits: false,
                memory_limits: true,
                cgroup: "v2".into(),
            }),
            clusters: vec![
                ClusterInfo {
                    id: 1,
                    route: "/cluster1".into(),
                    instance_type: "t2.micro".into(),
                    count: 5,
                    vcpus_per_instance: 1,
                    cores_per_instance: 0.1,
                    work_us: 1000,
                },
                ClusterInfo {
                    id: 2,
                    route: "/cluster2".into(),
                    instance_type: "t2.large".into(),
                    count: 4,
                    vcpus_per_instance: 2,
                    cores_per_instance: 0.2,
                    work_us: 1000,
                },
            ],
            instances: instances(),
        }),
        runs,
        experiment: Some(Experiment {
            quick: true,
            capacity,
            shootout_rate: 1020.0,
            shootout_fraction: 0.85,
            shootout_rounds: 2,
            policies,
        }),
    }
}
