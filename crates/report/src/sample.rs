//! A small but complete experiment's results for unit tests: the seed's two clusters
//! (5 × t2.micro at 0.1 core, 4 × t2.large at 0.2 core, 1 ms of CPU per request), the seed's
//! benchmark on each, a capacity ramp per cluster, and a shoot-out in four scenarios of three
//! fulcrum policies against nginx and HAProxy, two rounds each.

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

fn instances_info() -> Vec<InstanceInfo> {
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
    let ids: Vec<InstanceInfo> = instances_info()
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
        targets: vec![format!("http://127.0.0.1:8080{route}")],
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
        by_target: BTreeMap::new(),
        mix: None,
        request: None,
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

/// Fulcrum's policies, then the two peers; each scenario's per-round p99s in this order.
const CONTENDERS: [(&str, &str, &str); 5] = [
    ("fulcrum adaptive", "fulcrum", "capacity-weighted"),
    ("fulcrum p2c-ewma", "fulcrum", "p2c-ewma"),
    ("fulcrum round-robin", "fulcrum", "round-robin"),
    ("nginx least_conn", "nginx", "least_conn"),
    ("haproxy leastconn", "haproxy", "leastconn"),
];

/// Offered load in every scenario: 85% of the 1,200 req/s the ramp measured.
const RATE: f64 = 1020.0;

/// One contender with two rounds at `p99s` ms; shares follow capacity for `adaptive`, and
/// are even (so the micro workers are over-loaded) for everything else.
pub fn contender(
    scenario: &str,
    (label, balancer, policy): (&str, &str, &str),
    p99s: [f64; 2],
    (threads, instances): (usize, usize),
) -> ContenderResult {
    let shares = instances_info()
        .iter()
        .map(|i| Share {
            instance_id: i.instance_id.clone(),
            cluster: i.cluster.to_string(),
            share_of_requests: if policy == "capacity-weighted" {
                i.cores / 1.3
            } else {
                1.0 / 9.0
            },
            share_of_capacity: i.cores / 1.3,
        })
        .collect();
    let rounds: Vec<RoundResult> = p99s
        .iter()
        .enumerate()
        .map(|(k, &p99)| RoundResult {
            run: format!("shootout-{scenario}-r{}-{}", k + 1, label.replace(' ', "-")),
            p50_ms: p99 / 2.0,
            p99_ms: p99,
            max_ms: p99 * 1.5,
            goodput: RATE * 0.995,
            errors: 0,
        })
        .collect();
    ContenderResult {
        label: label.into(),
        balancer: balancer.into(),
        policy: policy.into(),
        telemetry: (balancer == "fulcrum").then(|| "inband".into()),
        threads,
        instances,
        latency: hist(2000, p99s[0] / 2.0),
        responses: 2 * (RATE * 4.0) as u64,
        errors: 0,
        achieved_rate: RATE * 0.995,
        rounds,
        shares,
    }
}

/// Name, description, settings and each contender's two per-round p99s (ms, in `CONTENDERS`
/// order) of every scenario.
#[allow(clippy::type_complexity)]
fn scenario_table() -> [(&'static str, &'static str, ScenarioParams, [[f64; 2]; 5]); 4] {
    [
        (
            "steady",
            "A constant load on a quiet fleet.",
            ScenarioParams::Steady,
            [
                [12.0, 13.0],
                [12.5, 14.0],
                [30.0, 34.0],
                [15.0, 16.0],
                [12.8, 14.2],
            ],
        ),
        (
            "antagonist",
            "Co-tenants take part of some workers' CPU, on and off.",
            ScenarioParams::Antagonist {
                instances: vec!["i-large0".into(), "i-large1".into()],
                share: 0.5,
                on_s: 2.0,
                off_s: 3.0,
            },
            [
                [14.0, 15.0],
                [18.0, 20.0],
                [60.0, 70.0],
                [40.0, 45.0],
                [25.0, 28.0],
            ],
        ),
        (
            "replicas",
            "Several balancer instances share the load, each with its own view.",
            ScenarioParams::Replicas {
                replicas: 3,
                threads_each: 1,
            },
            [
                [20.0, 22.0],
                [19.0, 23.0],
                [25.0, 27.0],
                [14.0, 15.0],
                [16.0, 17.0],
            ],
        ),
        (
            "heavy-tail",
            "Requests cost CPU from a heavy-tailed distribution.",
            ScenarioParams::HeavyTail {
                distribution: "lognormal".into(),
                mean_us: 1000.0,
                sigma: 1.0,
                mix_file: "heavy-tail-mix.toml".into(),
            },
            [
                [30.0, 40.0],
                [35.0, 38.0],
                [80.0, 90.0],
                [33.0, 45.0],
                [50.0, 55.0],
            ],
        ),
    ]
}

/// The four scenarios. Against the better peer, fulcrum's default ties in `steady`, wins
/// under `antagonist`, loses with `replicas` and ties on `heavy-tail`.
fn scenarios() -> Vec<ScenarioResult> {
    scenario_table()
        .into_iter()
        .map(|(name, description, params, p99s)| {
            let size = match params {
                ScenarioParams::Replicas {
                    replicas,
                    threads_each,
                } => (threads_each, replicas),
                _ => (2, 1),
            };
            let mut s = ScenarioResult {
                name: name.into(),
                description: description.into(),
                rate: RATE,
                fraction: 0.85,
                round_s: 4.0,
                params,
                contenders: CONTENDERS
                    .iter()
                    .zip(p99s)
                    .map(|(c, p)| contender(name, *c, p, size))
                    .collect(),
                antagonists: vec![],
                cost: None,
            };
            extras(&mut s);
            s
        })
        .collect()
}

/// What the antagonist and heavy-tail scenarios measure besides latency.
fn extras(s: &mut ScenarioResult) {
    match s.name.as_str() {
        "antagonist" => {
            s.antagonists = (0..2)
                .map(|i| AntagonistEffect {
                    instance: format!("large{i}"),
                    instance_id: format!("i-large{i}"),
                    cpu_s: 0.36,
                    on_s: 4.0,
                    share_while_on: 0.45,
                    group_cpu_s: 1.4,
                    throttled_periods: 30 + i,
                    periods: 80,
                })
                .collect()
        }
        "heavy-tail" => {
            s.cost = Some(CostDistribution {
                mean_us: 1000.0,
                p50_us: 607.0,
                p99_us: 6228.0,
                sent_mean_us: 987.0,
                sent_p50_us: 611.0,
                sent_p99_us: 6010.0,
            })
        }
        _ => {}
    }
}

fn peers() -> Vec<PeerInfo> {
    vec![
        PeerInfo {
            name: "nginx".into(),
            policy: "least_conn".into(),
            version: Some("1.24.0".into()),
            missing: None,
        },
        PeerInfo {
            name: "haproxy".into(),
            policy: "leastconn".into(),
            version: Some("2.6.12".into()),
            missing: None,
        },
    ]
}

/// The same experiment on a machine without HAProxy.
pub fn experiment_missing_peer() -> Results {
    let mut r = experiment();
    let exp = r.experiment.as_mut().expect("an experiment");
    exp.peers[1].version = None;
    exp.peers[1].missing = Some("not installed (no haproxy on PATH)".into());
    for s in &mut exp.scenarios {
        s.contenders.retain(|c| c.balancer != "haproxy");
    }
    r
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
            instances: instances_info(),
        }),
        runs,
        experiment: Some(Experiment {
            quick: true,
            capacity,
            rounds: 2,
            peers: peers(),
            scenarios: scenarios(),
        }),
    }
}
