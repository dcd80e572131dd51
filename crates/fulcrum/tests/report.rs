//! `fulcrum report`, as the real binary: a realistic results.json (built here with real HDR
//! histograms) in, REPORT.md and index.html out; the numbers in both agree with the file, and
//! the page renders in headless Chromium with every chart drawn and no console messages.

mod fixture;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use fixture::{browser, run, Scratch};
use fulcrum_loadgen::results::*;

/// xorshift64*: deterministic, so the fixture is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-12), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Log-normal latency in µs around `median_ms`.
    fn latency_us(&mut self, median_ms: f64, sigma: f64) -> u64 {
        (median_ms * 1000.0 * (sigma * self.normal()).exp()) as u64
    }
}

const MICRO_CORES: f64 = 0.1;
const LARGE_CORES: f64 = 0.2;

fn instance_id(cluster: u32, i: u32) -> String {
    format!("i-0{:08x}{:08x}", 0x5eed_0000 + cluster, 0xc0ff_ee00 + i)
}

fn instances() -> Vec<InstanceInfo> {
    let mut v = Vec::new();
    for (cluster, n, ty, cores) in [
        (1, 5, "t2.micro", MICRO_CORES),
        (2, 4, "t2.large", LARGE_CORES),
    ] {
        for i in 0..n {
            v.push(InstanceInfo {
                cluster,
                instance_id: instance_id(cluster, i),
                address: format!("127.0.0.1:{}", 40100 + cluster * 10 + i),
                instance_type: ty.into(),
                cores,
            });
        }
    }
    v
}

/// What one run should look like; `build` turns it into a `Run` with real histograms.
struct Spec {
    name: String,
    kind: RunKind,
    route: &'static str,
    policy: (&'static str, &'static str),
    model: Model,
    started_s: f64,
    achieved: f64,
    duration_s: f64,
    median_ms: f64,
    sigma: f64,
    /// Share of requests per instance (same order as `instances()`), for `/`.
    shares: Option<Vec<f64>>,
    /// CPU utilization per cluster ("1", "2").
    cpu: [f64; 2],
    errors_5xx: u64,
}

fn build(rng: &mut Rng, s: &Spec) -> Run {
    let responses = (s.achieved * s.duration_s).round() as u64;
    let all = instances();
    let targets: Vec<(InstanceInfo, f64)> = match (&s.shares, s.route) {
        (Some(sh), _) => all.into_iter().zip(sh.iter().copied()).collect(),
        (None, route) => {
            let c: u32 = route.trim_start_matches("/cluster").parse().unwrap();
            let mine: Vec<InstanceInfo> = all.into_iter().filter(|i| i.cluster == c).collect();
            let n = mine.len() as f64;
            mine.into_iter().map(|i| (i, 1.0 / n)).collect()
        }
    };
    // Cumulative shares to pick an instance per request.
    let mut cum = Vec::new();
    let mut acc = 0.0;
    for (_, w) in &targets {
        acc += w;
        cum.push(acc);
    }
    let mut all_h = new_histogram();
    let mut service_h = new_histogram();
    let mut per_inst: Vec<_> = targets.iter().map(|_| (new_histogram(), 0u64)).collect();
    let mut per_cluster = BTreeMap::new();
    let seconds = s.duration_s.ceil() as usize;
    let mut timeline: Vec<_> = (0..seconds)
        .map(|_| (0u64, new_histogram(), BTreeMap::<String, u64>::new()))
        .collect();
    for k in 0..responses {
        let x = rng.unit() * acc;
        let idx = cum.iter().position(|c| x < *c).unwrap_or(targets.len() - 1);
        let inst = &targets[idx].0;
        // Micro workers are slower at the same load.
        let slow = if inst.cluster == 1 { 1.15 } else { 1.0 };
        let us = rng.latency_us(s.median_ms * slow, s.sigma);
        record(&mut all_h, us);
        record(&mut service_h, (us as f64 * 0.8) as u64);
        record(&mut per_inst[idx].0, us);
        per_inst[idx].1 += 1;
        let c = per_cluster
            .entry(inst.cluster.to_string())
            .or_insert_with(|| (new_histogram(), 0u64));
        record(&mut c.0, us);
        c.1 += 1;
        let sec = ((k as f64 / s.achieved) as usize).min(seconds - 1);
        timeline[sec].0 += 1;
        record(&mut timeline[sec].1, us);
        *timeline[sec].2.entry(inst.cluster.to_string()).or_default() += 1;
    }
    let by_instance = targets
        .iter()
        .zip(&per_inst)
        .map(|((i, _), (h, n))| {
            (
                i.instance_id.clone(),
                InstanceGroup {
                    cluster: i.cluster.to_string(),
                    responses: *n,
                    errors: 0,
                    latency: Hist::from_histogram(h),
                },
            )
        })
        .collect();
    let by_cluster = per_cluster
        .iter()
        .map(|(k, (h, n))| {
            (
                k.clone(),
                Group {
                    responses: *n,
                    errors: if k == "1" { s.errors_5xx } else { 0 },
                    latency: Hist::from_histogram(h),
                },
            )
        })
        .collect();
    let mut cpu = Vec::new();
    for (i, _) in &targets {
        let base = s.cpu[(i.cluster - 1) as usize];
        for q in 0..=(s.duration_s * 4.0) as u32 {
            cpu.push(CpuSample {
                t: q as f64 / 4.0,
                instance_id: i.instance_id.clone(),
                cluster: i.cluster.to_string(),
                cpu_utilization: (base + 0.04 * rng.normal()).clamp(0.0, 1.0),
                in_flight: (base * 8.0) as u64,
            });
        }
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Run {
        name: s.name.clone(),
        kind: s.kind,
        url: format!("http://127.0.0.1:41234{}", s.route),
        targets: vec![format!("http://127.0.0.1:41234{}", s.route)],
        policy: Some(s.policy.0.into()),
        telemetry: (!s.policy.1.is_empty()).then(|| s.policy.1.into()),
        model: s.model.clone(),
        connections: 100,
        threads: 2,
        warmup_s: 0.5,
        started_s: s.started_s,
        duration_s: s.duration_s,
        responses,
        errors: Errors {
            status_5xx: s.errors_5xx,
            ..Errors::default()
        },
        target_rate: match s.model {
            Model::Open { rate, .. } => Some(rate),
            Model::Closed { .. } => None,
        },
        achieved_rate: s.achieved,
        late_requests: 0,
        unsent_requests: 0,
        latency: Hist::from_histogram(&all_h),
        service_time: matches!(s.model, Model::Open { .. })
            .then(|| Hist::from_histogram(&service_h)),
        by_cluster,
        by_instance,
        by_status_class: BTreeMap::new(),
        by_target: BTreeMap::new(),
        mix: None,
        request: None,
        timeline: timeline
            .iter()
            .enumerate()
            .map(|(t, (n, h, byc))| Second {
                t: t as f64,
                responses: *n,
                errors: 0,
                p50_ms: ms(h.value_at_quantile(0.5)),
                p99_ms: ms(h.value_at_quantile(0.99)),
                max_ms: ms(h.max()),
                responses_by_cluster: byc.clone(),
            })
            .collect(),
        cpu,
        balancer: vec![],
        generator: Generator {
            cpu_seconds: 0.3 * s.duration_s,
            cpu_utilization: 0.3,
            saturated: false,
        },
    }
}

fn deployment() -> Deployment {
    Deployment {
        // Not a realistic name: it proves names are escaped on the way into HTML.
        name: "seed & <lab>".into(),
        provider: "local".into(),
        balancer_url: "http://127.0.0.1:41234".into(),
        admin_url: Some("http://127.0.0.1:41235".into()),
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
                cores_per_instance: MICRO_CORES,
                work_us: 1000,
            },
            ClusterInfo {
                id: 2,
                route: "/cluster2".into(),
                instance_type: "t2.large".into(),
                count: 4,
                vcpus_per_instance: 2,
                cores_per_instance: LARGE_CORES,
                work_us: 1000,
            },
        ],
        instances: instances(),
    }
}

fn header(command: &[&str]) -> Results {
    Results {
        schema: SCHEMA_VERSION,
        fulcrum_version: "0.1.0".into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        started_at: "2026-11-28T14:00:00Z".into(),
        machine: Machine {
            hostname: "lab-2core".into(),
            cores: 2,
            cpu_model: "Intel(R) Xeon(R) CPU @ 2.20GHz".into(),
            kernel: "6.1.0-18-cloud-amd64".into(),
        },
        deployment: Some(deployment()),
        runs: vec![],
        experiment: None,
    }
}

/// The default experiment as it would come out on a 2-core machine: the micro cluster
/// saturates at 450–500 req/s, the large one at 750–800; then the shoot-out (`shootout`).
fn experiment_results() -> Results {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut r = header(&["fulcrum", "experiment", "--quick", "--out", "report dir"]);
    let mut t = 1.0;
    let closed = Model::Closed {
        requests: 1000,
        concurrency: 100,
    };
    for (c, achieved, median, cpu) in [
        ("1", 470.0, 205.0, [0.97, 0.0]),
        ("2", 760.0, 128.0, [0.0, 0.93]),
    ] {
        let spec = Spec {
            name: format!("seed-cluster{c}"),
            kind: RunKind::Seed,
            route: if c == "1" { "/cluster1" } else { "/cluster2" },
            policy: ("cpu-aware", "inband"),
            model: closed.clone(),
            started_s: t,
            achieved,
            duration_s: 1000.0 / achieved,
            median_ms: median,
            sigma: 0.25,
            shares: None,
            cpu,
            errors_5xx: 0,
        };
        r.runs.push(build(&mut rng, &spec));
        t += spec.duration_s + 1.0;
    }
    let capacity = capacity_ramps(&mut rng, &mut r, &mut t);
    let scenarios = shootout(&mut rng, &mut r, t);
    r.experiment = Some(Experiment {
        quick: true,
        capacity,
        rounds: 2,
        peers: vec![
            peer("nginx", "1.24.0", "least_conn"),
            peer("haproxy", "2.6.12", "leastconn"),
        ],
        scenarios,
    });
    r
}

fn peer(name: &str, version: &str, policy: &str) -> PeerInfo {
    PeerInfo {
        name: name.into(),
        policy: policy.into(),
        version: Some(version.into()),
        missing: None,
    }
}

/// A ramp per cluster: the micro cluster sustains 450 req/s and fails at 500, the large one
/// sustains 750 and fails at 800.
fn capacity_ramps(rng: &mut Rng, r: &mut Results, t: &mut f64) -> Vec<Capacity> {
    let mut capacity = Vec::new();
    #[allow(clippy::type_complexity)]
    let ramps: [(&str, &'static str, &[(f64, f64, f64, f64)], f64, f64); 2] = [
        // (offered, achieved, median ms, sigma)
        (
            "1",
            "/cluster1",
            &[
                (200.0, 200.0, 1.4, 0.3),
                (300.0, 299.0, 1.8, 0.35),
                (400.0, 398.0, 3.2, 0.5),
                (450.0, 447.0, 6.5, 0.6),
                (500.0, 468.0, 240.0, 0.7),
            ],
            450.0,
            500.0,
        ),
        (
            "2",
            "/cluster2",
            &[
                (300.0, 300.0, 1.2, 0.3),
                (450.0, 449.0, 1.5, 0.3),
                (600.0, 598.0, 2.4, 0.4),
                (700.0, 697.0, 4.1, 0.5),
                (750.0, 745.0, 7.0, 0.6),
                (800.0, 771.0, 210.0, 0.7),
            ],
            750.0,
            800.0,
        ),
    ];
    for (c, route, steps, sustained, failed) in ramps {
        let mut names = Vec::new();
        for &(offered, achieved, median, sigma) in steps {
            let ceiling = if c == "1" { 500.0 } else { 800.0 };
            let load = (offered / ceiling).min(1.0);
            let spec = Spec {
                name: format!("capacity-cluster{c}-{offered}"),
                kind: RunKind::Capacity,
                route,
                policy: ("cpu-aware", "inband"),
                model: Model::Open {
                    rate: offered,
                    duration_s: 3.0,
                },
                started_s: *t,
                achieved,
                duration_s: 3.0,
                median_ms: median,
                sigma,
                shares: None,
                cpu: if c == "1" { [load, 0.0] } else { [0.0, load] },
                errors_5xx: 0,
            };
            names.push(spec.name.clone());
            r.runs.push(build(rng, &spec));
            *t += 3.5;
        }
        capacity.push(Capacity {
            cluster: c.into(),
            route: route.into(),
            sustained_rate: sustained,
            failed_rate: Some(failed),
            sustained_fraction: 0.97,
            p99_bound_ms: 200.0,
            runs: names,
        });
    }
    capacity
}

/// The shoot-out's contenders: fulcrum's default (first), two more fulcrum policies, and the
/// two peers. Telemetry is empty for contenders that read none.
const CONTENDERS: [(&str, &str, &str, &str); 5] = [
    ("fulcrum adaptive", "fulcrum", "capacity-weighted", "inband"),
    ("fulcrum cpu-aware", "fulcrum", "cpu-aware", "inband"),
    ("fulcrum round-robin", "fulcrum", "round-robin", ""),
    ("nginx least_conn", "nginx", "least_conn", ""),
    ("haproxy leastconn", "haproxy", "leastconn", ""),
];

/// Shares of requests per instance (5 micro, then 4 large); capacity is 7.7% / 15.4%.
fn even(micro: f64) -> Vec<f64> {
    let l = (1.0 - 5.0 * micro) / 4.0;
    vec![micro, micro, micro, micro, micro, l, l, l, l]
}

/// Each scenario's settings and its contenders' median latency (ms, in `CONTENDERS` order),
/// chosen so that fulcrum's default ties the better peer when steady, clearly beats both under
/// an antagonist, clearly loses with replicas, and ties again on a heavy tail.
fn scenario_plans() -> [(&'static str, ScenarioParams, [f64; 5]); 4] {
    [
        ("steady", ScenarioParams::Steady, [6.0, 6.3, 12.0, 7.6, 6.1]),
        (
            "antagonist",
            ScenarioParams::Antagonist {
                instances: vec![instance_id(2, 0), instance_id(2, 1)],
                share: 0.5,
                on_s: 2.0,
                off_s: 3.0,
            },
            [7.0, 9.0, 60.0, 25.0, 18.0],
        ),
        (
            "replicas",
            ScenarioParams::Replicas {
                replicas: 3,
                threads_each: 1,
            },
            [11.0, 11.5, 14.0, 6.0, 7.0],
        ),
        (
            "heavy-tail",
            ScenarioParams::HeavyTail {
                distribution: "lognormal".into(),
                mean_us: 1000.0,
                sigma: 1.0,
                mix_file: "heavy-tail-mix.toml".into(),
            },
            [20.0, 22.0, 45.0, 20.5, 30.0],
        ),
    ]
}

/// Four scenarios at 85% of 1,200 req/s (`scenario_plans`), two interleaved rounds of 3 s per
/// contender.
fn shootout(rng: &mut Rng, r: &mut Results, mut t: f64) -> Vec<ScenarioResult> {
    let rate = 1020.0;
    let mut out = Vec::new();
    for (name, params, medians) in scenario_plans() {
        let size = match params {
            ScenarioParams::Replicas {
                replicas,
                threads_each,
            } => (threads_each, replicas),
            _ => (2, 1),
        };
        let mut contenders: Vec<ContenderResult> = Vec::new();
        for round in 1..=2 {
            // Rounds differ a little, as real rounds do.
            let jitter = if round == 1 { 0.96 } else { 1.04 };
            for (c, median) in CONTENDERS.iter().zip(medians) {
                let run = shootout_round(rng, (name, round), c, median * jitter, rate, t);
                t += 3.5;
                add_round(&mut contenders, c, size, &run);
                r.runs.push(run);
            }
        }
        out.push(ScenarioResult {
            name: name.into(),
            description: format!("The {name} scenario, as the fixture imagines it."),
            rate,
            fraction: 0.85,
            round_s: 3.0,
            antagonists: antagonists(&params),
            cost: matches!(params, ScenarioParams::HeavyTail { .. }).then_some(CostDistribution {
                mean_us: 1000.0,
                p50_us: 607.0,
                p99_us: 6228.0,
                sent_mean_us: 991.0,
                sent_p50_us: 604.0,
                sent_p99_us: 6102.0,
            }),
            params,
            contenders,
        });
    }
    out
}

fn shootout_round(
    rng: &mut Rng,
    (scenario, round): (&str, u32),
    &(label, _, policy, telemetry): &(&'static str, &str, &'static str, &'static str),
    median_ms: f64,
    rate: f64,
    started_s: f64,
) -> Run {
    let shares = match policy {
        "capacity-weighted" => even(0.077),
        "cpu-aware" => even(0.078),
        "leastconn" => even(0.1),
        _ => even(1.0 / 9.0),
    };
    build(
        rng,
        &Spec {
            name: format!("shootout-{scenario}-r{round}-{}", label.replace(' ', "-")),
            kind: RunKind::Shootout,
            route: "/",
            policy: (policy, telemetry),
            model: Model::Open {
                rate,
                duration_s: 3.0,
            },
            started_s,
            achieved: rate * 0.998,
            duration_s: 3.0,
            median_ms,
            sigma: 0.4,
            shares: Some(shares),
            cpu: [0.86, 0.84],
            errors_5xx: 0,
        },
    )
}

/// Adds one round's run to its contender, merging the histograms.
fn add_round(
    contenders: &mut Vec<ContenderResult>,
    &(label, balancer, policy, telemetry): &(&str, &str, &str, &str),
    (threads, instances): (usize, usize),
    run: &Run,
) {
    let round = RoundResult {
        run: run.name.clone(),
        p50_ms: run.latency.p50_ms,
        p99_ms: run.latency.p99_ms,
        max_ms: run.latency.max_ms,
        goodput: run.achieved_rate,
        errors: 0,
    };
    if let Some(c) = contenders.iter_mut().find(|c| c.label == label) {
        let mut merged = c.latency.histogram().unwrap();
        merged.add(run.latency.histogram().unwrap()).unwrap();
        c.latency = Hist::from_histogram(&merged);
        c.responses += run.responses;
        c.achieved_rate = (c.achieved_rate + run.achieved_rate) / 2.0;
        c.rounds.push(round);
        return;
    }
    let total: u64 = run.by_instance.values().map(|g| g.responses).sum();
    let capacity = 5.0 * MICRO_CORES + 4.0 * LARGE_CORES;
    contenders.push(ContenderResult {
        label: label.into(),
        balancer: balancer.into(),
        policy: policy.into(),
        telemetry: (!telemetry.is_empty()).then(|| telemetry.into()),
        threads,
        instances,
        latency: run.latency.clone(),
        responses: run.responses,
        errors: 0,
        achieved_rate: run.achieved_rate,
        rounds: vec![round],
        shares: shares_of(run, total, capacity),
    });
}

fn shares_of(run: &Run, total: u64, capacity: f64) -> Vec<Share> {
    instances()
        .iter()
        .map(|i| Share {
            instance_id: i.instance_id.clone(),
            cluster: i.cluster.to_string(),
            share_of_requests: run.by_instance[&i.instance_id].responses as f64 / total as f64,
            share_of_capacity: i.cores / capacity,
        })
        .collect()
}

fn antagonists(params: &ScenarioParams) -> Vec<AntagonistEffect> {
    let ScenarioParams::Antagonist { instances, .. } = params else {
        return Vec::new();
    };
    instances
        .iter()
        .enumerate()
        .map(|(k, id)| AntagonistEffect {
            instance: format!("large{k}"),
            instance_id: id.clone(),
            cpu_s: 0.55,
            on_s: 12.0,
            share_while_on: 0.46,
            group_cpu_s: 2.1,
            throttled_periods: 41 + k as u64,
            periods: 240,
        })
        .collect()
}

/// A plain `fulcrum bench` on `/` at a rate the generator could not keep up with.
fn saturated_bench_results() -> Results {
    let mut rng = Rng(42);
    let mut r = header(&[
        "fulcrum",
        "bench",
        "http://127.0.0.1:41234/",
        "--rate",
        "1500",
        "--duration",
        "5s",
    ]);
    let spec = Spec {
        name: "bench".into(),
        kind: RunKind::Bench,
        route: "/",
        policy: ("cpu-aware", "inband"),
        model: Model::Open {
            rate: 1500.0,
            duration_s: 5.0,
        },
        started_s: 0.5,
        achieved: 1180.0,
        duration_s: 5.0,
        median_ms: 40.0,
        sigma: 0.6,
        shares: Some(vec![0.08, 0.08, 0.08, 0.08, 0.08, 0.15, 0.15, 0.15, 0.15]),
        cpu: [0.99, 0.97],
        errors_5xx: 3,
    };
    let mut run = build(&mut rng, &spec);
    run.generator = Generator {
        cpu_seconds: 4.9,
        cpu_utilization: 0.98,
        saturated: true,
    };
    run.late_requests = 1400;
    run.unsent_requests = 1600;
    r.runs.push(run);
    r
}

fn write_results(dir: &Scratch, r: &Results) -> String {
    let p = dir.path("results.json");
    std::fs::write(&p, serde_json::to_string_pretty(r).unwrap()).unwrap();
    p.display().to_string()
}

fn report(dir: &Scratch, r: &Results) -> (String, String, std::path::PathBuf) {
    let json = write_results(dir, r);
    let out = dir.path("out");
    let (code, stdout, stderr) = run(&["report", &json, "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let md_path = out.join("REPORT.md");
    let html_path = out.join("index.html");
    assert!(stdout.contains(&md_path.display().to_string()), "{stdout}");
    assert!(
        stdout.contains(&html_path.display().to_string()),
        "{stdout}"
    );
    (
        std::fs::read_to_string(&md_path).unwrap(),
        std::fs::read_to_string(&html_path).unwrap(),
        html_path,
    )
}

/// The cells of the Markdown table row whose first cells are `first`.
fn md_row(md: &str, first: &[&str]) -> Vec<String> {
    let prefix = format!("| {} |", first.join(" | "));
    let line = md
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no row starting {prefix:?} in REPORT.md"));
    line.trim_matches('|')
        .split(" | ")
        .map(|c| c.trim().to_owned())
        .collect()
}

/// The body rows of the first Markdown table at or after `marker` (a caption or a header).
fn md_rows_after(md: &str, marker: &str) -> Vec<Vec<String>> {
    let start = md
        .find(marker)
        .unwrap_or_else(|| panic!("no table at {marker:?}"));
    md[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .skip(2) // header and rule
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

fn num(cell: &str) -> f64 {
    cell.replace(',', "")
        .trim_end_matches('%')
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {cell:?}"))
}

fn assert_close(cell: &str, want: f64, what: &str) {
    let got = num(cell);
    // The report prints about three significant digits.
    assert!(
        (got - want).abs() <= want.abs() * 0.005 + 0.0015,
        "{what}: report says {cell}, results.json says {want}"
    );
}

/// Every `<svg class="chart" ...>` in a page, with its `data-points` count.
fn charts(page: &str) -> Vec<usize> {
    page.match_indices("<svg")
        .map(|(i, _)| {
            let tag = &page[i..i + page[i..].find('>').unwrap()];
            assert!(tag.contains(r#"class="chart""#), "{tag}");
            let dp = tag.split(r#"data-points=""#).nth(1).expect("data-points");
            dp[..dp.find('"').unwrap()].parse().unwrap()
        })
        .collect()
}

fn render_in_chromium(test: &str, html: &Path, expect_charts: usize, shot: &str) {
    let Some(bin) = browser::chromium_or_skip(test) else {
        return;
    };
    // Keep a copy beside the screenshot to look at after the scratch dir is gone.
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join(shot.replace(".png", ".html"));
    std::fs::copy(html, &kept).unwrap();
    std::fs::copy(html.with_file_name("REPORT.md"), kept.with_extension("md")).unwrap();
    let url = format!("file://{}", html.display());
    let page = browser::run_page(bin, &url, Duration::from_secs(2));
    assert!(
        page.dom.contains("<main>"),
        "page did not render: {}",
        page.dom
    );
    assert!(
        page.console.is_empty(),
        "console messages: {:#?}",
        page.console
    );
    // The browser parsed every chart, each with marks in it.
    let drawn = charts(&page.dom);
    assert_eq!(drawn.len(), expect_charts, "charts in the rendered DOM");
    for svg in page.dom.split("<svg").skip(1) {
        let body = &svg[..svg.find("</svg>").expect("closed svg")];
        assert!(
            ["class=\"line\"", "class=\"bar\"", "class=\"dot\""]
                .iter()
                .any(|m| body.contains(m)),
            "a chart without plotted marks: {}",
            &body[..body.len().min(300)]
        );
    }
    // Escaped data stays text: no element was made of it.
    assert!(!page.dom.contains("<lab>"));
    assert!(page.dom.contains("seed &amp; &lt;lab&gt;"));
    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join(shot);
    browser::screenshot(bin, &url, &png, (1280, 2400), Duration::from_secs(2));
    let size = std::fs::metadata(&png).unwrap().len();
    assert!(size > 20_000, "screenshot suspiciously small: {size} bytes");
    eprintln!("screenshot: {}", png.display());
}

/// A label as REPORT.md writes it (Markdown punctuation escaped).
fn md_text(s: &str) -> String {
    s.replace('_', "\\_")
}

fn p99_range(c: &ContenderResult) -> (f64, f64) {
    let v = c.p99_by_round_ms();
    (
        v.iter().copied().fold(f64::MAX, f64::min),
        v.iter().copied().fold(0.0, f64::max),
    )
}

/// What the conclusion must say of fulcrum's default against the peers, judged here from
/// results.json on its own: ahead only when every round beats every peer's every round.
fn expected_verdict(s: &ScenarioResult, best: &ContenderResult) -> &'static str {
    let default = s
        .contenders
        .iter()
        .find(|c| c.balancer == "fulcrum")
        .unwrap();
    let f = p99_range(default);
    let peers = s.contenders.iter().filter(|c| c.balancer != "fulcrum");
    if peers.map(p99_range).all(|p| f.1 < p.0) {
        "fulcrum is ahead"
    } else if f.0 > p99_range(best).1 {
        "fulcrum loses here"
    } else {
        "within noise"
    }
}

/// The scenario's paragraph in the conclusion names its best peer (lowest median p99 among
/// the contenders that are not fulcrum) and the verdict the rounds support; returns the verdict.
fn conclusion_names_best_peer(md: &str, s: &ScenarioResult) -> &'static str {
    let best = s
        .contenders
        .iter()
        .filter(|c| c.balancer != "fulcrum")
        .min_by(|a, b| a.median_p99_ms().total_cmp(&b.median_p99_ms()))
        .unwrap();
    let para = md
        .lines()
        .find(|l| l.starts_with(&format!("- {}: ", s.name)))
        .unwrap_or_else(|| panic!("no conclusion for {}", s.name));
    assert!(
        para.contains(&format!("peer, {}, ", md_text(&best.label))),
        "{para}"
    );
    let verdict = expected_verdict(s, best);
    assert!(para.contains(verdict), "expected {verdict:?}: {para}");
    verdict
}

/// Every scenario's table agrees with results.json (each round's p99, the median of them,
/// best first) and the conclusion names the best peer with the verdict the rounds support.
fn shootout_agrees_with_results(md: &str, html: &str, r: &Results) {
    let exp = r.experiment.as_ref().unwrap();
    let mut verdicts = Vec::new();
    for s in &exp.scenarios {
        let rows = md_rows_after(md, &format!("#### Scenario: {}", s.name));
        assert_eq!(
            rows.len(),
            s.contenders.len(),
            "{}: one row per contender",
            s.name
        );
        for c in &s.contenders {
            let row = rows
                .iter()
                .find(|x| x[0] == md_text(&c.label))
                .unwrap_or_else(|| panic!("{}: no row for {}", s.name, c.label));
            let cells: Vec<&str> = row[3].split(" / ").collect();
            assert_eq!(
                cells.len(),
                c.rounds.len(),
                "{}: {} rounds",
                s.name,
                c.label
            );
            for (cell, round) in cells.iter().zip(&c.rounds) {
                assert_close(
                    cell,
                    round.p99_ms,
                    &format!("{} {} {}", s.name, c.label, round.run),
                );
            }
            let what = format!("{} {} median p99", s.name, c.label);
            assert_close(&row[4], median(c.p99_by_round_ms()), &what);
            assert!(
                html.contains(&format!(r#"<td class="num">{}</td>"#, row[4])),
                "{what}"
            );
        }
        let medians: Vec<f64> = rows.iter().map(|x| num(&x[4])).collect();
        assert!(
            medians.windows(2).all(|w| w[0] <= w[1]),
            "{}: {medians:?}",
            s.name
        );

        let verdict = conclusion_names_best_peer(md, s);
        verdicts.push(verdict);
    }
    // The fixture is built to show every verdict, ties included.
    assert_eq!(
        verdicts,
        [
            "within noise",
            "fulcrum is ahead",
            "fulcrum loses here",
            "within noise"
        ]
    );
}

#[test]
fn experiment_report_agrees_with_results_and_renders() {
    let dir = Scratch::new("report-exp");
    let r = experiment_results();
    let (md, html, html_path) = report(&dir, &r);

    for s in [
        "## Setup",
        "### Expectations",
        "### CPU Utilization",
        "### Latency and Response Times",
        "### Throughput",
        "### Shoot-out",
        "#### Scenario: steady",
        "#### Scenario: antagonist",
        "#### Scenario: replicas",
        "#### Scenario: heavy-tail",
        "## Conclusion",
    ] {
        assert!(md.contains(s), "REPORT.md lacks {s}");
    }
    // Setup: emulation, credits, version, the exact command (quoted where needed).
    assert!(
        md.contains("Emulation scale: one emulated vCPU gets 0.100 of a real core"),
        "{md}"
    );
    assert!(md.contains("CPU credits were not emulated: every instance could use its full quota"));
    assert!(md.contains("fulcrum experiment --quick --out 'report dir'"));
    assert!(md.contains("fulcrum 0.1.0"));
    assert!(!md.contains("Warning"), "no warning expected:\n{md}");

    // Latency per cluster: the table agrees with the histograms, percentiles are ordered,
    // and index.html shows the same cells.
    for (run_name, cluster, label) in [
        ("seed-cluster1", "1", "cluster 1 (5 × t2.micro)"),
        ("seed-cluster2", "2", "cluster 2 (4 × t2.large)"),
    ] {
        let run = r.runs.iter().find(|x| x.name == run_name).unwrap();
        let g = &run.by_cluster[cluster];
        let row = md_row(&md, &[run_name, label]);
        assert_eq!(num(&row[2]) as u64, g.responses);
        assert_eq!(g.responses, 1000, "the seed's 1000 requests");
        assert_eq!(num(&row[3]) as u64, 0);
        assert_close(&row[4], g.responses as f64 / run.duration_s, "throughput");
        let h = &g.latency;
        for (cell, want, what) in [
            (&row[5], h.p50_ms, "p50"),
            (&row[6], h.p90_ms, "p90"),
            (&row[7], h.p99_ms, "p99"),
            (&row[8], h.p999_ms, "p99.9"),
            (&row[9], h.max_ms, "max"),
        ] {
            assert_close(cell, want, what);
            assert!(
                html.contains(&format!(r#"<td class="num">{cell}</td>"#)),
                "{what} {cell} not in index.html"
            );
        }
        let pcts: Vec<f64> = row[5..10].iter().map(|c| num(c)).collect();
        assert!(
            pcts.windows(2).all(|w| w[0] <= w[1]),
            "percentiles out of order: {pcts:?}"
        );
        // The seed's "average" is total/1000, far below the real median.
        assert_close(&row[10], run.duration_s * 1000.0 / 1000.0, "seed's average");
        assert!(num(&row[10]) * 50.0 < num(&row[5]));

        // Requests per instance add up to what the cluster served.
        let rows = md_rows_after(&md, &format!("Requests per instance during {run_name}"));
        assert_eq!(rows.len(), if cluster == "1" { 5 } else { 4 });
        let sum: u64 = rows.iter().map(|x| num(&x[2]) as u64).sum();
        assert_eq!(sum, g.responses);
        // CPU per instance exists for every worker.
        let cpu = md_rows_after(&md, &format!("CPU per instance during {run_name}"));
        assert_eq!(cpu.len(), rows.len());
        assert!(cpu.iter().all(|x| num(&x[3]) > 80.0), "{cpu:?}");
    }

    // Conclusion: who saturated first, where, by how much; the seed's mistake named.
    assert!(
        md.contains("Cluster 1 (5 × t2.micro) saturated first: it sustained 450 req/s and failed at 500 req/s"),
        "{md}"
    );
    assert!(md.contains(
        "Cluster 2 (4 × t2.large) sustained 750 req/s (failed at 800 req/s): 1.67× as much"
    ));
    assert!(md.contains("The seed's expectation holds"));
    assert!(md.contains("1 / throughput, not latency"));

    shootout_agrees_with_results(&md, &html, &r);

    // index.html: self-contained, escaped, every chart with data.
    for bad in ["<script", "<link", "<img", "@import", "url("] {
        assert!(!html.contains(bad), "index.html contains {bad}");
    }
    assert!(html.contains("seed &amp; &lt;lab&gt;") && !html.contains("<lab>"));
    let counts = charts(&html);
    // Ramp ×2, CPU ×2 clusters, latency ×2, requests per worker, throughput, and per scenario
    // ×4 the contenders' p99 and the shares of fulcrum's default and the best peer.
    assert_eq!(counts.len(), 16, "{counts:?}");
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
    assert!(
        !html.contains(r#"class="note""#),
        "no chart should be missing"
    );

    render_in_chromium(
        "experiment_report_agrees_with_results_and_renders",
        &html_path,
        16,
        "report-experiment.png",
    );
}

#[test]
fn saturated_bench_report_warns_and_omits_charts_it_has_no_data_for() {
    let dir = Scratch::new("report-bench");
    let r = saturated_bench_results();
    let (md, html, html_path) = report(&dir, &r);

    assert!(md.contains("> **Warning:** The load generator was saturated in 1 of 1 runs (bench; its CPU peaked at 98%"), "{md}");
    assert!(
        md.contains("Requests failed outside the capacity ramp"),
        "{md}"
    );
    assert!(
        md.starts_with("# Benchmark report: seed \\& \\<lab\\>"),
        "{}",
        &md[..80]
    );
    assert!(html.contains(r#"<div class="warning" role="alert"><strong>Warning:</strong> The load generator was saturated"#));
    assert!(md.contains("fell behind their schedule"), "{md}");
    assert!(md.contains("This file has no capacity ramp"), "{md}");
    assert!(md.contains("No shoot-out in this file"));
    // One run measured two clusters: numbers, but no ranking from it.
    assert!(md.contains("Each figure comes from a single run"), "{md}");
    let run = &r.runs[0];
    let row = md_row(&md, &["bench", "cluster 1 (5 × t2.micro)"]);
    assert_eq!(num(&row[2]) as u64, run.by_cluster["1"].responses);
    assert_eq!(num(&row[3]) as u64, 3);
    assert_close(&row[7], run.by_cluster["1"].latency.p99_ms, "p99");
    // Open model: corrected and uncorrected latency side by side.
    let row = &md_rows_after(&md, "Open-model runs: latency from the intended send time")[0];
    assert_eq!(row[0], "bench");
    assert_close(&row[2], run.latency.p99_ms, "corrected p99");
    assert_close(
        &row[4],
        run.service_time.as_ref().unwrap().p99_ms,
        "uncorrected p99",
    );

    // Charts without data are replaced by notes, never drawn empty.
    for note in [
        "No capacity ramp in this file: no achieved-against-offered chart.",
        "No shoot-out in this file: no contender comparison chart.",
        "No shoot-out in this file: no share-of-requests chart.",
    ] {
        assert!(
            html.contains(&format!(r#"<p class="note">{note}</p>"#)),
            "{note}"
        );
    }
    let counts = charts(&html);
    // CPU ×2 clusters, latency ×2, requests per worker, throughput.
    assert_eq!(counts.len(), 6, "{counts:?}");
    assert!(counts.iter().all(|&n| n > 0));

    render_in_chromium(
        "saturated_bench_report_warns_and_omits_charts_it_has_no_data_for",
        &html_path,
        6,
        "report-bench.png",
    );
}

#[test]
fn report_refuses_another_schema_version_in_one_line() {
    let dir = Scratch::new("report-schema");
    let mut v = serde_json::to_value(saturated_bench_results()).unwrap();
    v["schema"] = 7.into();
    let p = dir.path("results.json");
    std::fs::write(&p, v.to_string()).unwrap();
    let out = dir.path("out");
    let (code, stdout, stderr) = run(&[
        "report",
        p.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "stdout: {stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("schema version 7"), "{stderr}");
    assert!(
        stderr.contains(&format!("reads version {SCHEMA_VERSION}")),
        "{stderr}"
    );
    assert!(
        !out.exists(),
        "nothing is written for a file it cannot read"
    );
}
