//! `fulcrum experiment --quick`, end to end: a real deployment in real cgroups, real load, the
//! report; then the numbers in results.json, REPORT.md and index.html must agree.

mod fixture;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fixture::Scratch;

#[test]
fn quick_experiment_end_to_end() {
    let Some(_) = fixture::cgroups_or_skip("quick_experiment_end_to_end") else {
        return;
    };
    let scratch = Scratch::new("experiment");
    let name = format!("texp-{}", std::process::id());
    let topo = scratch.path("topology.toml");
    std::fs::write(
        &topo,
        fulcrum_deploy::topology::DEFAULT_TOPOLOGY
            .replace("name = \"seed\"", &format!("name = \"{name}\"")),
    )
    .unwrap();
    let out = scratch.path("results");
    let mut child = Command::new(fixture::BIN)
        .args([
            "experiment",
            "--quick",
            "--rounds",
            "2",
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
    let deadline = Instant::now() + Duration::from_secs(240);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = Command::new(fixture::BIN)
                .args(["down", "-t", topo.to_str().unwrap()])
                .current_dir(&scratch.0)
                .status();
            panic!("the quick experiment did not finish in 4 minutes");
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
    assert_eq!(results["schema"], 1);
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
    let policies = e["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 6);
    assert_eq!(e["shootout_rounds"], 2, "--rounds 2 was not applied");
    for p in policies {
        let label = p["label"].as_str().unwrap();
        assert_eq!(
            p["p99_by_round_ms"].as_array().unwrap().len(),
            2,
            "{label}: one p99 per round"
        );
        assert!(p["responses"].as_u64().unwrap() > 0, "{label}");
        let shares: f64 = p["shares"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["share_of_requests"].as_f64().unwrap())
            .sum();
        assert!(
            (shares - 1.0).abs() < 1e-6,
            "{label}: shares add to {shares}"
        );
        assert!(report.contains(label), "REPORT.md has no row for {label}");
    }
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
