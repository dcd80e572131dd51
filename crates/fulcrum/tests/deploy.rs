//! `fulcrum up / status / down` with the local provider: real processes in real cgroups.

mod fixture;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fixture::{eventually, get, run, seed_topology, Scratch};

/// A deployment name no other test (or run) uses.
fn unique(tag: &str) -> String {
    format!("t{tag}-{}", std::process::id())
}

/// A small topology: 2 × t2.micro on /cluster1, 1 × t2.large on /cluster2, / across both.
fn small_topology(name: &str) -> String {
    seed_topology(name, Some((2, 1)))
}

/// Runs `fulcrum ARGS` in `dir` to completion (≤ 60 s).
fn fulcrum_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(fixture::BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "fulcrum {args:?} did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Takes a deployment down when the test ends, however it ends.
struct Deployed<'a> {
    dir: &'a Path,
    topology: &'a str,
}

impl Drop for Deployed<'_> {
    fn drop(&mut self) {
        let _ = fulcrum_in(self.dir, &["down", "-t", self.topology]);
    }
}

fn processes_named(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn up_status_down_with_cgroup_quotas() {
    let Some(_) = fixture::cgroups_or_skip("up_status_down_with_cgroup_quotas") else {
        return;
    };
    let scratch = Scratch::new("deploy");
    let name = unique("deploy");
    let topo = scratch.path("topology.toml");
    std::fs::write(&topo, small_topology(&name)).unwrap();
    let topo_s = topo.to_str().unwrap();
    let _down = Deployed {
        dir: &scratch.0,
        topology: topo_s,
    };

    let (code, out, err) = fulcrum_in(&scratch.0, &["up", "-t", topo_s, "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let up: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(up["changed"], true);
    assert_eq!(up["workers"].as_array().unwrap().len(), 3);
    let scale = up["plan"]["emulation"]["scale"].as_f64().unwrap();
    let period_us = up["plan"]["emulation"]["period_us"].as_u64().unwrap();
    assert!(scale > 0.0 && scale <= 1.0);

    // Every worker sits in its own cgroup with the quota its instance type asks for.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(scratch.0.join(".fulcrum").join(&name).join("state.json"))
            .unwrap(),
    )
    .unwrap();
    let mut dirs = std::collections::HashSet::new();
    for inst in state["instances"].as_array().unwrap() {
        let cpu_dir = Path::new(inst["cgroup"]["cpu"].as_str().unwrap());
        assert!(dirs.insert(cpu_dir.to_owned()), "instances share a cgroup");
        let vcpus = inst["vcpus"].as_f64().unwrap();
        let want_quota = (vcpus * scale * period_us as f64).round() as i64;
        let (quota, period) = read_quota(cpu_dir);
        assert_eq!(period, period_us as i64, "{}", cpu_dir.display());
        assert_eq!(quota, want_quota, "{}", cpu_dir.display());
        let pid = inst["process"]["pid"].as_u64().unwrap();
        let procs = std::fs::read_to_string(cpu_dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l.trim() == pid.to_string()),
            "pid {pid} not in {}",
            cpu_dir.display()
        );
    }

    // The balancer routes each cluster's path to that cluster only, and / to both.
    let balancer = up["balancer_url"].as_str().unwrap().to_owned();
    let mut seen_root = std::collections::HashSet::new();
    for _ in 0..30 {
        assert_eq!(
            get(&format!("{balancer}/cluster1")).header("x-fulcrum-cluster"),
            "1"
        );
        assert_eq!(
            get(&format!("{balancer}/cluster2")).header("x-fulcrum-cluster"),
            "2"
        );
        seen_root.insert(
            get(&format!("{balancer}/"))
                .header("x-fulcrum-cluster")
                .to_owned(),
        );
    }
    assert_eq!(seen_root.len(), 2, "/ is served by both clusters");

    // status --json tells the same story.
    let (code, out, err) = fulcrum_in(&scratch.0, &["status", "-t", topo_s, "--json"]);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["balancer_healthy"], true);
    let instances = status["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 3);
    for i in instances {
        assert_eq!(i["alive"], true);
        assert_eq!(i["healthy"], true);
        assert!(i["cpu_utilization"].as_f64().is_some());
        assert!(i["requests_served"].as_u64().is_some());
    }
    let micro = instances
        .iter()
        .find(|i| i["instance_type"] == "t2.micro")
        .unwrap();
    let large = instances
        .iter()
        .find(|i| i["instance_type"] == "t2.large")
        .unwrap();
    assert!(
        (large["cores"].as_f64().unwrap() / micro["cores"].as_f64().unwrap() - 2.0).abs() < 1e-9
    );
    let (code, human, _) = fulcrum_in(&scratch.0, &["status", "-t", topo_s]);
    assert_eq!(code, 0);
    assert!(
        human.contains("healthy") && human.contains("t2.large"),
        "{human}"
    );

    // `up` again changes nothing, and says so.
    let (code, out, _) = fulcrum_in(&scratch.0, &["up", "-t", topo_s]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing changed"), "{out}");

    // `down` leaves no process and no cgroup; a second `down` is fine.
    let pids: Vec<u64> = state["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["process"]["pid"].as_u64().unwrap())
        .collect();
    let roots: Vec<String> = state["cgroup_roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let (code, out, err) = fulcrum_in(&scratch.0, &["down", "-t", topo_s]);
    assert_eq!(code, 0, "{out}{err}");
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid),
            "pid {pid} survived down"
        );
    }
    for r in &roots {
        assert!(!Path::new(r).exists(), "cgroup {r} survived down");
    }
    assert!(!scratch.0.join(".fulcrum").join(&name).exists());
    let (code, out, _) = fulcrum_in(&scratch.0, &["down", "-t", topo_s]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to do"), "{out}");
}

fn is_zombie(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

fn read_quota(dir: &Path) -> (i64, i64) {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    if let (Some(q), Some(p)) = (read("cpu.cfs_quota_us"), read("cpu.cfs_period_us")) {
        return (q.parse().unwrap(), p.parse().unwrap());
    }
    let max = read("cpu.max").expect("a cgroup v1 or v2 CPU controller");
    let (q, p) = max.split_once(' ').unwrap();
    (q.parse().unwrap(), p.parse().unwrap())
}

#[test]
fn down_cleans_up_after_up_is_killed_halfway() {
    let Some(_) = fixture::cgroups_or_skip("down_cleans_up_after_up_is_killed_halfway") else {
        return;
    };
    let scratch = Scratch::new("deploy-kill");
    let name = unique("kill");
    let topo = scratch.path("topology.toml");
    std::fs::write(&topo, small_topology(&name)).unwrap();
    let topo_s = topo.to_str().unwrap();
    let _down = Deployed {
        dir: &scratch.0,
        topology: topo_s,
    };
    let mut up = Command::new(fixture::BIN)
        .args(["up", "-t", topo_s])
        .current_dir(&scratch.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill `up` as soon as it has started a worker, before it can finish.
    let state_file = scratch.0.join(".fulcrum").join(&name).join("state.json");
    assert!(eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&state_file).is_ok_and(|s| s.contains("\"pid\""))
    }));
    up.kill().unwrap();
    up.wait().unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file).unwrap()).unwrap();
    // This deployment's workers, found by their instance ids (derived from its name).
    let ours = |state: &serde_json::Value| -> Vec<u32> {
        state["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["instance_id"].as_str())
            .flat_map(processes_named)
            .collect()
    };
    assert!(
        !ours(&state).is_empty(),
        "the killed up left nothing running, so the test would prove nothing"
    );
    let roots: Vec<String> = state["cgroup_roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let (code, out, err) = fulcrum_in(&scratch.0, &["down", "-t", topo_s]);
    assert_eq!(code, 0, "{out}{err}");
    for r in &roots {
        assert!(!Path::new(r).exists(), "cgroup {r} survived down");
        let procs_gone = eventually(Duration::from_secs(5), || !Path::new(r).exists());
        assert!(procs_gone);
    }
    // No worker of this deployment is left.
    let left = ours(&state);
    assert!(left.is_empty(), "workers left running: {left:?}");
}

#[test]
fn init_writes_the_seed_topology_and_refuses_to_overwrite() {
    let scratch = Scratch::new("init");
    let path = scratch.path("fulcrum.toml");
    let p = path.to_str().unwrap();
    let (code, out, err) = run(&["init", p]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("5 × t2.micro"), "{out}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, fulcrum_deploy::topology::DEFAULT_TOPOLOGY);
    let (code, _, err) = run(&["init", p]);
    assert_eq!(code, 1);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(run(&["init", p, "--force"]).0, 0);
}

#[test]
fn bad_topologies_are_located_errors() {
    let scratch = Scratch::new("badtopo");
    let path = scratch.path("t.toml");
    std::fs::write(
        &path,
        fulcrum_deploy::topology::DEFAULT_TOPOLOGY.replace("t2.large", "t2.lrage"),
    )
    .unwrap();
    let (code, _, err) = run(&["up", "-t", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("t.toml:19:17"), "{err}");
    assert!(err.contains("did you mean t2.large"), "{err}");
}

/// The emulated instance types hold their ratio under saturation: a t2.large-like worker
/// (2 vCPUs) serves about twice what a t2.micro-like one (1 vCPU) does.
#[test]
fn emulation_fidelity_large_serves_twice_micro() {
    let Some(_) = fixture::cgroups_or_skip("emulation_fidelity_large_serves_twice_micro") else {
        return;
    };
    let scratch = Scratch::new("fidelity");
    let name = unique("fidelity");
    let topo = scratch.path("topology.toml");
    // One micro, one large, a fixed scale so the quotas do not depend on the machine.
    let text = small_topology(&name)
        .replace("count = 2", "count = 1")
        .replace("memory_limits = true", "memory_limits = true\nscale = 0.1");
    std::fs::write(&topo, text).unwrap();
    let topo_s = topo.to_str().unwrap();
    let _down = Deployed {
        dir: &scratch.0,
        topology: topo_s,
    };
    let (code, out, err) = fulcrum_in(&scratch.0, &["up", "-t", topo_s, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let up: serde_json::Value = serde_json::from_str(&out).unwrap();
    let url = |t: &str| {
        up["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["instance_type"] == t)
            .unwrap()["url"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Saturate each worker alone (2 ms of CPU per request, 16 always waiting), one after the
    // other so they do not compete for the machine: the closed model's throughput is then the
    // worker's capacity. Other tests share the machine, and contention only ever lowers what a
    // worker serves, so each worker's capacity is its best of three interleaved rounds.
    let served = |base: String, requests: u64| -> f64 {
        let (code, out, err) = run(&[
            "bench",
            &format!("{base}/?work_us=2000"),
            "-n",
            &requests.to_string(),
            "-c",
            "16",
            "--json",
            "-q",
        ]);
        assert_eq!(code, 0, "{err}");
        let r: serde_json::Value = serde_json::from_str(&out).unwrap();
        r["achieved_rate"].as_f64().unwrap()
    };
    let (mut micro, mut large) = (0.0f64, 0.0f64);
    for _ in 0..3 {
        micro = micro.max(served(url("t2.micro"), 80));
        large = large.max(served(url("t2.large"), 160));
    }
    let ratio = large / micro;
    assert!(
        (2.0 * 0.85..=2.0 * 1.15).contains(&ratio),
        "t2.large served {large:.0}/s, t2.micro {micro:.0}/s: ratio {ratio:.2}, catalog says 2"
    );
}

/// Burstable credits, emulated: with an empty bank, a t2.micro's quota drops to its baseline
/// (10% of its vCPU) and a t2.large's to 30%, read back from the kernel.
#[test]
fn credit_emulation_holds_empty_instances_at_their_baseline() {
    let Some(_) =
        fixture::cgroups_or_skip("credit_emulation_holds_empty_instances_at_their_baseline")
    else {
        return;
    };
    let scratch = Scratch::new("credits");
    let name = unique("credits");
    let topo = scratch.path("topology.toml");
    let text = small_topology(&name)
        .replace("count = 2", "count = 1")
        .replace(
            "credits = false",
            "credits = true\ninitial_credits = 0\nscale = 0.2",
        );
    std::fs::write(&topo, text).unwrap();
    let topo_s = topo.to_str().unwrap();
    let _down = Deployed {
        dir: &scratch.0,
        topology: topo_s,
    };
    let (code, out, err) = fulcrum_in(&scratch.0, &["up", "-t", topo_s]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("CPU credits emulated"), "{out}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(scratch.0.join(".fulcrum").join(&name).join("state.json"))
            .unwrap(),
    )
    .unwrap();
    let cpu_dir = |t: &str| -> std::path::PathBuf {
        let i = state["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["instance_type"] == t)
            .unwrap();
        std::path::PathBuf::from(i["cgroup"]["cpu"].as_str().unwrap())
    };
    let cores = |t: &str| {
        let (q, p) = read_quota(&cpu_dir(t));
        q as f64 / p as f64
    };
    // Full quotas: 0.2 and 0.4 cores; baselines: 0.1 × 0.2 = 0.02 and 0.3 × 2 × 0.2 = 0.12.
    assert!(
        eventually(Duration::from_secs(10), || {
            (cores("t2.micro") - 0.02).abs() < 1e-3 && (cores("t2.large") - 0.12).abs() < 1e-3
        }),
        "quotas: micro {} large {}",
        cores("t2.micro"),
        cores("t2.large")
    );
    let (code, out, _) = fulcrum_in(&scratch.0, &["status", "-t", topo_s, "--json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["credits"].as_f64().is_some()));
    let (code, _, _) = fulcrum_in(&scratch.0, &["down", "-t", topo_s]);
    assert_eq!(code, 0);
    assert!(
        processes_named("credit-keeper").iter().all(|pid| {
            !std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .contains(&name)
        }),
        "the credit keeper survived down"
    );
}
