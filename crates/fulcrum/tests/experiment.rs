//! `fulcrum experiment --quick`, end to end: a real deployment in real cgroups, real load, nginx
//! and HAProxy beside fulcrum, every scenario, the report; then the numbers in results.json,
//! REPORT.md and index.html must agree, and each scenario must have done what it claims.

mod fixture;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fixture::{seed_topology, Scratch};

#[test]
fn quick_experiment_end_to_end() {
    let Some(_) = fixture::cgroups_or_skip("quick_experiment_end_to_end") else {
        return;
    };
    let scratch = Scratch::new("experiment");
    let name = format!("texp-{}", std::process::id());
    let topo = scratch.path("topology.toml");
    std::fs::write(&topo, seed_topology(&name, None)).unwrap();
    let out = scratch.path("results");
    let mut child = Command::new(fixture::BIN)
        .args([
            "experiment",
            "--quick",
            "--rounds",
            "2",
            "--scenario",
            "all",
            "-t",
            topo.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .current_dir(&scratch.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(420);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = Command::new(fixture::BIN)
                .args(["down", "-t", topo.to_str().unwrap()])
                .current_dir(&scratch.0)
                .status();
            panic!("the quick experiment did not finish in 7 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // It cleaned up after itself.
    assert!(
        !scratch.0.join(".fulcrum").join(&name).exists(),
        "the deployment was left up"
    );

    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let report = std::fs::read_to_string(out.join("REPORT.md")).unwrap();
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert_eq!(results["schema"], 2);
    let instances: Vec<String> = results["deployment"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(instances.len(), 9);
    assert!(
        results["deployment"]["emulation"]["scale"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    let runs = results["runs"].as_array().unwrap();
    let seeds: Vec<&serde_json::Value> = runs.iter().filter(|r| r["kind"] == "seed").collect();
    assert_eq!(seeds.len(), 2);
    for (i, seed) in seeds.iter().enumerate() {
        let cluster = (i + 1).to_string();
        // Exactly what the seed's benchmark sends, every one answered by the right cluster.
        assert_eq!(seed["responses"], 1000, "{}", seed["name"]);
        assert_eq!(
            seed["by_cluster"][&cluster]["responses"], 1000,
            "{}",
            seed["name"]
        );
        assert_eq!(seed["by_cluster"].as_object().unwrap().len(), 1);
        let per_instance: u64 = seed["by_instance"]
            .as_object()
            .unwrap()
            .values()
            .map(|g| g["responses"].as_u64().unwrap())
            .sum();
        assert_eq!(per_instance, 1000);
        // The report quotes the same p99 as the data.
        let p99 = seed["latency"]["p99_ms"].as_f64().unwrap();
        assert!(
            report.contains(&format!("{p99:.1} ms")) || report.contains(&format!("{p99:.0} ms")),
            "REPORT.md does not quote {} p99 {p99}",
            seed["name"]
        );
    }
    for r in runs {
        let l = &r["latency"];
        let v = |k: &str| l[k].as_f64().unwrap();
        assert!(
            v("p50_ms") <= v("p90_ms")
                && v("p90_ms") <= v("p99_ms")
                && v("p99_ms") <= v("p999_ms")
                && v("p999_ms") <= v("max_ms"),
            "{}",
            r["name"]
        );
        let sum: u64 = r["by_instance"]
            .as_object()
            .unwrap()
            .values()
            .map(|g| g["responses"].as_u64().unwrap())
            .sum();
        assert_eq!(sum, r["responses"].as_u64().unwrap(), "{}", r["name"]);
        // CPU was sampled for every worker during every run.
        let cpu = r["cpu"].as_array().unwrap();
        for id in &instances {
            assert!(
                cpu.iter().any(|s| s["instance_id"] == id.as_str()),
                "{}: no CPU sample for {id}",
                r["name"]
            );
        }
    }

    let e = &results["experiment"];
    assert_eq!(e["capacity"].as_array().unwrap().len(), 2);
    assert_eq!(e["rounds"], 2, "--rounds 2 was not applied");
    let scenarios = e["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["steady", "antagonist", "replicas", "heavy-tail"]);
    for sc in scenarios {
        check_contenders(sc, &report);
    }
    check_antagonists(&scenarios[1]);
    check_replicas(runs);
    check_heavy_tail(&scenarios[3]);
    // Peers and replicas went with the deployment: nothing of theirs is still running.
    let leftovers = Command::new("pgrep")
        .args(["-f", &format!(".fulcrum/{name}/")])
        .output()
        .unwrap();
    assert!(
        leftovers.stdout.is_empty(),
        "processes of the deployment are still running: {}",
        String::from_utf8_lossy(&leftovers.stdout)
    );
    for section in [
        "Expectations",
        "CPU Utilization",
        "Latency and Response Times",
        "Throughput",
        "Conclusion",
    ] {
        assert!(report.contains(section), "REPORT.md lacks {section}");
    }
    assert!(
        html.contains("<svg") && !html.contains("<script src"),
        "index.html is not self-contained"
    );
    assert!(
        stdout.contains("results.json") && stdout.contains("REPORT.md"),
        "{stdout}"
    );
}

/// fulcrum's default first, then both peers (installed by scripts/install-test-deps); two
/// rounds each, every response attributed to a worker, shares adding up, a row in REPORT.md
/// quoting the median of the per-round p99s.
fn check_contenders(sc: &serde_json::Value, report: &str) {
    let scenario = sc["name"].as_str().unwrap();
    let contenders = sc["contenders"].as_array().unwrap();
    let labels: Vec<&str> = contenders
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "fulcrum capacity-weighted",
            "nginx least_conn",
            "haproxy leastconn"
        ],
        "{scenario}"
    );
    for c in contenders {
        let label = c["label"].as_str().unwrap();
        let rounds = c["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 2, "{scenario} {label}: one entry per round");
        assert!(c["responses"].as_u64().unwrap() > 0, "{scenario} {label}");
        let shares: f64 = c["shares"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["share_of_requests"].as_f64().unwrap())
            .sum();
        assert!(
            (shares - 1.0).abs() < 1e-6,
            "{scenario} {label}: shares add to {shares}"
        );
        let mut p99: Vec<f64> = rounds
            .iter()
            .map(|r| r["p99_ms"].as_f64().unwrap())
            .collect();
        p99.sort_by(f64::total_cmp);
        let median = (p99[0] + p99[1]) / 2.0;
        let quoted = [
            format!("{median:.1}"),
            format!("{median:.2}"),
            format!("{median:.0}"),
            // Above a second the report groups thousands (`1,010`).
            grouped(median),
        ];
        // Markdown escapes the underscore of `least_conn`.
        let row = label.replace('_', "\\_");
        assert!(
            report
                .lines()
                .any(|l| l.contains(&row) && quoted.iter().any(|q| l.contains(q.as_str()))),
            "REPORT.md has no {scenario} row for {label} quoting its median p99 {median}"
        );
    }
}

/// Each co-tenant took about the share of its host's quota it was asked for while on, as the
/// cgroup counters tell, and its host was throttled.
fn check_antagonists(sc: &serde_json::Value) {
    let share = sc["params"]["share"].as_f64().unwrap();
    let effects = sc["antagonists"].as_array().unwrap();
    assert_eq!(effects.len(), 4, "one co-tenant per t2.large: {effects:?}");
    for a in effects {
        let took = a["share_while_on"].as_f64().unwrap();
        assert!(
            (took - share).abs() <= 0.2,
            "{}: took {took} of its quota while on, asked {share}",
            a["instance"]
        );
        assert!(a["on_s"].as_f64().unwrap() > 0.0, "{a}");
        assert!(
            a["group_cpu_s"].as_f64().unwrap() >= a["cpu_s"].as_f64().unwrap() * 0.95,
            "the host's cgroup counts its co-tenant: {a}"
        );
        assert!(a["throttled_periods"].as_u64().unwrap() > 0, "{a}");
    }
}

/// Every replica round spread its requests evenly over the four replicas.
fn check_replicas(runs: &[serde_json::Value]) {
    let replica_runs: Vec<&serde_json::Value> = runs
        .iter()
        .filter(|r| r["name"].as_str().unwrap().starts_with("replicas"))
        .collect();
    assert_eq!(replica_runs.len(), 6, "3 contenders × 2 rounds");
    for r in replica_runs {
        let by_target = r["by_target"].as_object().unwrap();
        assert_eq!(by_target.len(), 4, "{}", r["name"]);
        let total = r["responses"].as_u64().unwrap() as f64;
        for (url, g) in by_target {
            let share = g["responses"].as_u64().unwrap() as f64 / total;
            assert!(
                (share - 0.25).abs() < 0.05,
                "{}: {url} got {share}",
                r["name"]
            );
        }
    }
}

/// The requests sent had the heavy-tailed cost asked for: the same mean, p99 ≥ 20 × p50.
fn check_heavy_tail(sc: &serde_json::Value) {
    let cost = &sc["cost"];
    let f = |k: &str| cost[k].as_f64().unwrap();
    assert!(f("sent_p99_us") / f("sent_p50_us") >= 20.0, "{cost}");
    assert!(
        (f("sent_mean_us") / f("mean_us") - 1.0).abs() < 0.1,
        "{cost}"
    );
    assert!(sc["params"]["mix_file"]
        .as_str()
        .unwrap()
        .ends_with(".toml"));
}

/// A value as the report writes one of a thousand or more: no decimals, thousands grouped.
fn grouped(v: f64) -> String {
    let digits = format!("{v:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
