//! The commands that do more than hand flags to one crate: they call into the crates and print
//! what happened for a person (or as JSON).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cli::{BenchArgs, ExperimentArgs, ReportArgs, UpArgs};
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

pub fn local_up(t: &Topology, a: &UpArgs) -> anyhow::Result<()> {
    catch_interrupts();
    let opts = local::UpOptions {
        binary: std::env::current_exe()?,
        state_dir: a.deployment.state_dir.clone(),
        no_emulation: a.no_emulation,
    };
    let json = a.json;
    let mut say = |line: &str| {
        if !json {
            println!("{line}");
        }
    };
    let outcome = local::up(t, &opts, &INTERRUPTED, &mut say)?;
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

pub fn bench(_a: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench: being built")
}

pub fn report(a: ReportArgs) -> anyhow::Result<()> {
    let results = fulcrum_report::load(&a.results)?;
    let written = fulcrum_report::write(&results, &a.out)?;
    println!("wrote {}", written.markdown.display());
    println!("wrote {}", written.html.display());
    Ok(())
}

pub fn experiment(_a: ExperimentArgs) -> anyhow::Result<()> {
    anyhow::bail!("experiment: being built")
}
