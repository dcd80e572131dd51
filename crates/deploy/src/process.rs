//! Processes a deployment starts: spawned detached (own session, own cgroup, output to files),
//! announced addresses read back, health awaited, and stopped by recorded PID only.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fulcrum_telemetry::probe;

use crate::cgroup::Cgroup;
use crate::state::{InstanceState, ProcessState};

/// SIGTERM first; SIGKILL whatever is still running after this.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Children this process started, so their exit can be collected (no zombies while an
/// experiment runs in the same process).
pub(crate) static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

pub fn reap() {
    CHILDREN
        .lock()
        .expect("never poisoned")
        .retain_mut(|c| c.try_wait().ok().flatten().is_none());
}

/// Starts `cmd` in its own session (so a Ctrl-C in the terminal that ran `up` does not reach
/// it once `up` is done), inside `group` if given, with stdout and stderr to files.
pub fn spawn_detached(
    mut cmd: Command,
    group: Option<&Cgroup>,
    out: &Path,
    log: &Path,
) -> std::io::Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(out)?)
        .stderr(fs::OpenOptions::new().create(true).append(true).open(log)?);
    if let Some(g) = group {
        g.join_on_exec(&mut cmd);
    }
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Starts `cmd` detached, inside `group` if given, and keeps its handle so it is reaped.
pub fn spawn_recorded(
    cmd: Command,
    group: Option<&Cgroup>,
    out: &Path,
    log: &Path,
) -> std::io::Result<ProcessState> {
    let child = spawn_detached(cmd, group, out, log)?;
    let p = ProcessState::of(child.id(), log.to_owned());
    CHILDREN.lock().expect("never poisoned").push(child);
    Ok(p)
}

/// Reads `listening on http://ADDR` from a process's stdout file.
pub fn wait_for_address(
    out: &Path,
    p: &ProcessState,
    deadline: Instant,
    interrupted: &AtomicBool,
) -> Result<SocketAddr, String> {
    loop {
        if let Ok(text) = fs::read_to_string(out) {
            if let Some(addr) = text
                .lines()
                .find_map(|l| l.split("listening on http://").nth(1))
            {
                return addr
                    .trim()
                    .parse()
                    .map_err(|e| format!("bad address `{addr}`: {e}"));
            }
        }
        if !p.is_alive() {
            return Err(format!("exited before listening: {}", log_tail(&p.log)));
        }
        if Instant::now() > deadline || interrupted.load(Ordering::Relaxed) {
            return Err("did not announce its address in time".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn wait_healthy(
    addr: SocketAddr,
    deadline: Instant,
    interrupted: &AtomicBool,
) -> Result<(), String> {
    let mut backoff = Duration::from_millis(5);
    loop {
        if probe::healthy(addr, Duration::from_millis(500)) {
            return Ok(());
        }
        if Instant::now() > deadline || interrupted.load(Ordering::Relaxed) {
            return Err(format!("http://{addr}/health did not answer 200 in time"));
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
}

pub fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

pub fn signal(p: &ProcessState, sig: i32) {
    if p.is_alive() {
        // SAFETY: kill(2) on a PID whose start time proves it is the process we started.
        unsafe { libc::kill(p.pid as i32, sig) };
    }
}

pub(crate) fn stop_instance(inst: &InstanceState) {
    if let Some(p) = &inst.process {
        stop_processes(std::slice::from_ref(p));
    }
    if let Some(g) = &inst.cgroup {
        kill_group(g);
        let _ = g.remove();
    }
}

/// SIGTERM, a grace period, SIGKILL.
pub fn stop_processes(ps: &[ProcessState]) {
    for p in ps {
        signal(p, libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while ps.iter().any(|p| p.is_alive()) && Instant::now() < deadline {
        reap();
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in ps {
        signal(p, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while ps.iter().any(|p| p.is_alive()) && Instant::now() < deadline {
        reap();
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills whatever is left inside one of our groups: processes started but never recorded
/// (an `up` killed between fork and writing the state) are found here.
pub fn kill_group(g: &Cgroup) {
    for _ in 0..50 {
        let procs = g.procs();
        if procs.is_empty() {
            return;
        }
        for pid in procs {
            // SAFETY: plain kill(2) of a process inside a group only fulcrum creates.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        reap();
        std::thread::sleep(Duration::from_millis(20));
    }
}
