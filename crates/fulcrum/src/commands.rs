//! The commands that do more than hand flags to one crate: they call into the crates and print
//! what happened for a person (or as JSON).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use fulcrum_deploy::local;
use fulcrum_deploy::topology::Topology;

/// Set by SIGINT/SIGTERM while a long command runs, so it can clean up before exiting.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to [`INTERRUPTED`] instead of killing the process.
pub fn catch_interrupts() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
}

pub fn local_up(t: &Topology, opts: &local::UpOptions, json: bool) -> anyhow::Result<()> {
    catch_interrupts();
    let mut say = |line: &str| {
        if !json {
            println!("{line}");
        }
    };
    let outcome = local::up(t, opts, &INTERRUPTED, &mut say)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
        return Ok(());
    }
    if outcome.changed {
        println!("deployment `{}` is up ({:.1} s)", t.name, outcome.elapsed_s);
    } else {
        println!(
            "deployment `{}` is already up as described; nothing changed",
            t.name
        );
    }
    let routes: Vec<&str> = t
        .clusters
        .iter()
        .map(|c| c.route.as_str())
        .chain(t.balancer.routes.iter().map(|r| r.prefix.as_str()))
        .collect();
    println!(
        "  balancer  {}  (routes {})",
        outcome.balancer_url,
        routes.join(", ")
    );
    println!(
        "  admin     {}/  (status page; /status, /metrics)",
        outcome.admin_url
    );
    for w in &outcome.workers {
        println!(
            "  {:<6} cluster {}  {:<9} {}  {}  {:.3} cores",
            w.name, w.cluster, w.instance_type, w.instance_id, w.url, w.cores
        );
    }
    println!("  `fulcrum status` shows them live; `fulcrum down` removes everything");
    Ok(())
}

pub fn local_status(state_dir: &Path, name: &str, json: bool) -> anyhow::Result<()> {
    let Some(report) = local::status(state_dir, name)? else {
        anyhow::bail!(
            "no local deployment `{name}` in {} (bring one up with `fulcrum up`)",
            state_dir.display()
        );
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "deployment `{}` (local): balancer {} {}, admin {}",
        report.name,
        report.balancer_url.as_deref().unwrap_or("-"),
        if report.balancer_healthy {
            "healthy"
        } else if report.balancer_alive {
            "not answering"
        } else {
            "not running"
        },
        report.admin_url.as_deref().unwrap_or("-"),
    );
    if let Some(e) = &report.emulation {
        println!(
            "emulation: 1 vCPU = {:.3} core, CFS period {} ms, cgroup {}, credits {}",
            e.scale,
            e.period_us / 1000,
            e.cgroup,
            if e.credits { "emulated" } else { "off" }
        );
    }
    println!(
        "{:<7} {:>7} {:<10} {:<20} {:>7} {:>8} {:<9} {:>6} {:>9}  ADDRESS",
        "NAME", "CLUSTER", "TYPE", "INSTANCE", "CORES", "PID", "HEALTH", "CPU", "REQUESTS"
    );
    for i in &report.instances {
        println!(
            "{:<7} {:>7} {:<10} {:<20} {:>7.3} {:>8} {:<9} {:>6} {:>9}  {}",
            i.name,
            i.cluster,
            i.instance_type,
            i.instance_id,
            i.cores,
            i.pid.map_or("-".into(), |p| p.to_string()),
            if i.healthy {
                "healthy"
            } else if i.alive {
                "unhealthy"
            } else {
                "down"
            },
            i.cpu_utilization
                .map_or("-".into(), |u| format!("{:.0}%", u * 100.0)),
            i.requests_served.map_or("-".into(), |r| r.to_string()),
            i.address.as_deref().unwrap_or("-"),
        );
        if let Some(c) = i.credits {
            println!("{:>7} CPU credits banked: {c:.2}", "");
        }
    }
    Ok(())
}

pub fn local_down(state_dir: &Path, name: &str) -> anyhow::Result<()> {
    let report = local::down(state_dir, name, &mut |line| println!("{line}"))?;
    if !report.existed {
        println!(
            "no local deployment `{name}` in {}; nothing to do",
            state_dir.display()
        );
    }
    Ok(())
}

/// Runs one benchmark, writes `out` (results.json) if asked, prints the summary, and exits 3
/// unless every threshold holds.
pub fn bench(
    mut config: fulcrum_loadgen::BenchConfig,
    thresholds: &[fulcrum_loadgen::threshold::Threshold],
    out: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    use fulcrum_loadgen::results;
    let started_at = fulcrum_loadgen::now_rfc3339();
    config.clock_origin = Some(std::time::Instant::now());
    let run = fulcrum_loadgen::run(config)?;
    if let Some(out) = out {
        let file = results::Results {
            schema: results::SCHEMA_VERSION,
            fulcrum_version: env!("CARGO_PKG_VERSION").into(),
            command: std::env::args().collect(),
            started_at,
            machine: fulcrum_loadgen::machine(),
            deployment: None,
            runs: vec![run.clone()],
            experiment: None,
        };
        std::fs::write(out, serde_json::to_vec_pretty(&file)?)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        print_run(&run);
        if let Some(out) = out {
            println!("  results     {}", out.display());
        }
    }
    let failed: Vec<String> = thresholds
        .iter()
        .filter(|t| !t.holds(&run))
        .map(|t| format!("{t} (measured {:.3})", t.measured(&run)))
        .collect();
    if !failed.is_empty() {
        eprintln!("thresholds failed: {}", failed.join("; "));
        std::process::exit(3);
    }
    if !thresholds.is_empty() && !json {
        println!("  thresholds  all {} hold", thresholds.len());
    }
    Ok(())
}

/// A run's summary for a person.
pub fn print_run(run: &fulcrum_loadgen::Run) {
    use fulcrum_loadgen::Model;
    let l = &run.latency;
    let loaded = match run.targets.len() {
        0 | 1 => run.url.clone(),
        n => format!("{n} targets"),
    };
    // `h2, 10 streams per connection` when the run spoke HTTP/2.
    let speaking = match &run.request {
        Some(r) if r.protocol != "http/1.1" => {
            format!(" ({}, {} streams per connection)", r.protocol, r.streams)
        }
        _ => String::new(),
    };
    match &run.model {
        Model::Closed { requests, .. } => println!(
            "{loaded}: closed model, {requests} requests, {} connections{speaking}, {} thread(s)",
            run.connections, run.threads
        ),
        Model::Open { rate, duration_s } => println!(
            "{loaded}: open model, {rate}/s for {duration_s} s, {} connections{speaking}, {} thread(s)",
            run.connections, run.threads
        ),
    }
    println!(
        "  responses   {} in {:.2} s = {:.1}/s; errors {} (connect {}, timeout {}, i/o {}, 4xx {}, 5xx {})",
        run.responses,
        run.duration_s,
        run.achieved_rate,
        run.errors.total(),
        run.errors.connect,
        run.errors.timeout,
        run.errors.io,
        run.errors.status_4xx,
        run.errors.status_5xx
    );
    println!(
        "  latency     p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms{}",
        l.p50_ms,
        l.p90_ms,
        l.p99_ms,
        l.p999_ms,
        l.max_ms,
        if run.service_time.is_some() {
            "  (from intended send times)"
        } else {
            ""
        }
    );
    if let (Some(target), Some(s)) = (run.target_rate, &run.service_time) {
        println!(
            "  schedule    target {target:.1}/s, achieved {:.1}/s, late {}, unsent {}; service time p99 {:.2} ms (uncorrected)",
            run.achieved_rate, run.late_requests, run.unsent_requests, s.p99_ms
        );
    }
    print_targets_and_mix(run);
    for (c, g) in &run.by_cluster {
        println!(
            "  cluster {c:<4} {} responses, p50 {:.2} ms, p99 {:.2} ms, errors {}",
            g.responses, g.latency.p50_ms, g.latency.p99_ms, g.errors
        );
    }
    if !run.by_instance.is_empty() {
        let per: Vec<String> = run
            .by_instance
            .iter()
            .map(|(i, g)| format!("{i} {}", g.responses))
            .collect();
        println!("  instances   {}", per.join(", "));
    }
    println!(
        "  generator   {:.0}% of its cores{}",
        run.generator.cpu_utilization * 100.0,
        if run.generator.saturated {
            " — SATURATED: the generator may have set the pace; treat latency as suspect"
        } else {
            ""
        }
    );
}

/// Where the load went when it was spread over several targets, and what a request mix sent.
fn print_targets_and_mix(run: &fulcrum_loadgen::Run) {
    if run.targets.len() > 1 {
        let per: Vec<String> = run
            .targets
            .iter()
            .map(|t| {
                let g = run.by_target.get(t);
                format!(
                    "{t} {} responses, {} errors",
                    g.map_or(0, |g| g.responses),
                    g.map_or(0, |g| g.errors)
                )
            })
            .collect();
        println!("  targets     {}", per.join("; "));
    }
    if let Some(mix) = &run.mix {
        let per: Vec<String> = mix
            .entries
            .iter()
            .map(|e| format!("{} (weight {}) {} sent", e.path, e.weight, e.sent))
            .collect();
        let file = if mix.file.is_empty() {
            String::new()
        } else {
            format!("{}: ", mix.file)
        };
        println!("  mix         {file}{}", per.join(", "));
    }
}

pub fn report(results: &Path, out: &Path) -> anyhow::Result<()> {
    let results = fulcrum_report::load(results)?;
    let written = fulcrum_report::write(&results, out)?;
    println!("wrote {}", written.markdown.display());
    println!("wrote {}", written.html.display());
    Ok(())
}

/// Runs the experiment on the provider `run` drives (given `opts`, the interrupt flag and a
/// progress sink), and says where its files went.
pub fn experiment(
    opts: &fulcrum_experiment::Options,
    run: impl FnOnce(
        &fulcrum_experiment::Options,
        &AtomicBool,
        &mut dyn FnMut(&str),
    ) -> anyhow::Result<fulcrum_experiment::Outcome>,
) -> anyhow::Result<()> {
    catch_interrupts();
    let mut say = |line: &str| println!("{line}");
    let outcome = match run(opts, &INTERRUPTED, &mut say) {
        Err(e) if INTERRUPTED.load(Ordering::Relaxed) => {
            anyhow::bail!("interrupted ({e}); the deployment this run started was removed")
        }
        other => other?,
    };
    println!(
        "done in {:.0} s: {}, {}, {}",
        outcome.elapsed.as_secs_f64(),
        outcome.results.display(),
        outcome.report.display(),
        outcome.html.display()
    );
    Ok(())
}
