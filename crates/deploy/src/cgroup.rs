//! Kernel control groups for emulated instances: create, limit, join, read back, remove.
//!
//! cgroup v1 (separate or co-mounted `cpu`, `cpuacct`, `memory` hierarchies) and cgroup v2 (one
//! unified hierarchy) are both handled. On v1, fulcrum's groups are made *under the caller's own
//! group* in each hierarchy, so whatever limits already apply to the caller (a container, a CI
//! sandbox) keep applying to the workers. On v2 they go under the caller's group's parent when
//! the caller sits in a leaf (the "no internal processes" rule forbids children of a group
//! that holds processes and delegates controllers), else under the caller's group.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fulcrum_telemetry::cgroupfs;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    V1,
    V2,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no CPU controller found: neither a cgroup v1 `cpu` hierarchy nor a cgroup v2 mount \
         with the `cpu` controller is mounted (see /proc/self/mountinfo); CPU quotas cannot be \
         emulated here — run with --no-emulation to run workers unthrottled"
    )]
    NoCpuController,
    #[error(
        "cannot create cgroup {path}: {source}; creating cgroups needs root (or a delegated \
         cgroup v2 subtree, e.g. `systemd-run --user --scope -p Delegate=yes fulcrum ...`) — \
         or run with --no-emulation to run workers unthrottled"
    )]
    NotPermitted { path: PathBuf, source: io::Error },
    #[error("cgroup file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A deployment's group (`fulcrum/<deployment>`), or one of its members' groups within it: one
/// tree per deployment, so `down` removes whatever is inside.
pub(crate) fn deployment_cgroup(deployment: &str, member: Option<&str>) -> PathBuf {
    let base = PathBuf::from("fulcrum").join(deployment);
    match member {
        Some(m) => base.join(m),
        None => base,
    }
}

/// Where this process may create cgroups.
#[derive(Debug, Clone)]
pub struct CgroupHost {
    version: Version,
    cpu: PathBuf,
    cpuacct: PathBuf,
    memory: Option<PathBuf>,
}

/// One created cgroup; serializable so a deployment's state can name it for `down`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    pub version: Version,
    pub cpu: PathBuf,
    pub cpuacct: PathBuf,
    pub memory: Option<PathBuf>,
}

/// CFS bandwidth counters of a group's `cpu.stat`, cumulative since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStat {
    /// Enforcement periods in which the group was runnable.
    pub periods: u64,
    /// Periods in which it ran out of quota.
    pub throttled_periods: u64,
    /// Time its runnable tasks spent throttled (summed over CPUs).
    pub throttled: Duration,
}

impl CpuStat {
    /// Parses `cpu.stat`: v1 says `throttled_time` in ns, v2 `throttled_usec`. Missing keys
    /// read as zero (a group that has never been limited may not count at all).
    pub fn parse(version: Version, text: &str) -> CpuStat {
        let field = |key: &str| {
            text.lines()
                .filter_map(|l| l.split_once(' '))
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let throttled = match version {
            Version::V1 => Duration::from_nanos(field("throttled_time")),
            Version::V2 => Duration::from_micros(field("throttled_usec")),
        };
        CpuStat {
            periods: field("nr_periods"),
            throttled_periods: field("nr_throttled"),
            throttled,
        }
    }
}

impl CgroupHost {
    /// Finds a CPU controller this process can create groups under.
    pub fn detect() -> Result<CgroupHost, CgroupError> {
        let (mounts, own) = cgroupfs::current();
        let root = Path::new("/");
        let v1 = |c: &str| cgroupfs::v1_dir(&mounts, &own, c, root);
        if let (Some(cpu), Some(cpuacct)) = (v1("cpu"), v1("cpuacct")) {
            return Ok(CgroupHost {
                version: Version::V1,
                cpu,
                cpuacct,
                memory: v1("memory"),
            });
        }
        let (mut base, top) =
            cgroupfs::v2_dir(&mounts, &own, root).ok_or(CgroupError::NoCpuController)?;
        let root_ctrls = fs::read_to_string(top.join("cgroup.controllers")).unwrap_or_default();
        if !root_ctrls.split_whitespace().any(|c| c == "cpu") {
            return Err(CgroupError::NoCpuController);
        }
        // A group holding processes cannot delegate controllers to children: step up.
        let has_procs = fs::read_to_string(base.join("cgroup.procs"))
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false);
        if has_procs && base != top {
            base.pop();
        }
        let memory = root_ctrls
            .split_whitespace()
            .any(|c| c == "memory")
            .then(|| base.clone());
        Ok(CgroupHost {
            version: Version::V2,
            cpu: base.clone(),
            cpuacct: base,
            memory,
        })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Whether memory limits can be applied.
    pub fn has_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// Creates (or reuses) the group `rel` (e.g. `fulcrum/demo/c1-0`) in every hierarchy.
    pub fn create(&self, rel: &Path) -> Result<Cgroup, CgroupError> {
        let mk = |base: &Path| -> Result<PathBuf, CgroupError> {
            let dir = base.join(rel);
            fs::create_dir_all(&dir).map_err(|source| CgroupError::NotPermitted {
                path: dir.clone(),
                source,
            })?;
            Ok(dir)
        };
        let cg = Cgroup {
            version: self.version,
            cpu: mk(&self.cpu)?,
            cpuacct: mk(&self.cpuacct)?,
            memory: self.memory.as_deref().map(mk).transpose()?,
        };
        if self.version == Version::V2 {
            // Each ancestor below our base must hand `cpu` (and `memory`) down to its children.
            let wanted = if self.memory.is_some() {
                "+cpu +memory"
            } else {
                "+cpu"
            };
            let mut dir = self.cpu.clone();
            for part in rel.parent().into_iter().flat_map(|p| p.components()) {
                enable_subtree(&dir, wanted)?;
                dir.push(part);
            }
            enable_subtree(&dir, wanted)?;
        }
        Ok(cg)
    }

    /// The absolute directories `rel` has (or would have) in every hierarchy.
    pub fn roots(&self, rel: &Path) -> Vec<PathBuf> {
        let mut bases = vec![self.cpu.join(rel), self.cpuacct.join(rel)];
        bases.extend(self.memory.as_ref().map(|m| m.join(rel)));
        bases.dedup();
        bases
    }

    /// Removes `rel` and everything under it, bottom-up; groups must hold no processes.
    /// Missing groups are fine (removal is idempotent).
    pub fn remove_tree(&self, rel: &Path) -> Result<(), CgroupError> {
        let mut bases = vec![self.cpu.clone(), self.cpuacct.clone()];
        bases.extend(self.memory.clone());
        bases.dedup();
        for base in bases {
            remove_dir_tree(&base.join(rel))?;
        }
        Ok(())
    }
}

fn enable_subtree(dir: &Path, wanted: &str) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let current = fs::read_to_string(&file).unwrap_or_default();
    let missing: Vec<&str> = wanted
        .split_whitespace()
        .filter(|w| !current.split_whitespace().any(|c| c == &w[1..]))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    fs::write(&file, missing.join(" "))
        .map_err(|source| CgroupError::NotPermitted { path: file, source })
}

/// Every process in the group at `dir` or any group below it.
pub fn procs_under(dir: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(procs_under(&e.path()));
            }
        }
    }
    out
}

/// Removes the group at `dir` and every group below it, bottom-up; they must hold no
/// processes. A missing group is fine (removal is idempotent).
pub fn remove_dir_tree(dir: &Path) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_dir_tree(&entry.path())?;
        }
    }
    rmdir_retrying(dir)
}

/// `rmdir` on a cgroup can fail with EBUSY for a moment after its last process exits.
fn rmdir_retrying(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(io_err(dir)(e)),
        }
    }
}

impl Cgroup {
    fn dirs(&self) -> Vec<&Path> {
        let mut d = vec![self.cpu.as_path(), self.cpuacct.as_path()];
        d.extend(self.memory.as_deref());
        d.dedup();
        d
    }

    /// Sets the CFS bandwidth: `quota` of CPU time per `period`.
    pub fn set_cpu_limit(&self, quota: Duration, period: Duration) -> Result<(), CgroupError> {
        let (q, p) = (quota.as_micros() as u64, period.as_micros() as u64);
        match self.version {
            Version::V1 => {
                // The kernel checks quota against the current period: set the period first when
                // lowering it would make an existing quota invalid, and vice versa.
                let period_file = self.cpu.join("cpu.cfs_period_us");
                let quota_file = self.cpu.join("cpu.cfs_quota_us");
                fs::write(&quota_file, "-1").map_err(io_err(&quota_file))?;
                fs::write(&period_file, p.to_string()).map_err(io_err(&period_file))?;
                fs::write(&quota_file, q.to_string()).map_err(io_err(&quota_file))
            }
            Version::V2 => {
                let f = self.cpu.join("cpu.max");
                fs::write(&f, format!("{q} {p}")).map_err(io_err(&f))
            }
        }
    }

    /// The CFS bandwidth as the kernel holds it: `(quota, period)`, or `None` if unlimited.
    pub fn cpu_limit(&self) -> Result<Option<(Duration, Duration)>, CgroupError> {
        let read = |f: PathBuf| -> Result<String, CgroupError> {
            fs::read_to_string(&f)
                .map(|s| s.trim().to_owned())
                .map_err(io_err(&f))
        };
        let (quota, period) = match self.version {
            Version::V1 => (
                read(self.cpu.join("cpu.cfs_quota_us"))?,
                read(self.cpu.join("cpu.cfs_period_us"))?,
            ),
            Version::V2 => {
                let max = read(self.cpu.join("cpu.max"))?;
                let (q, p) = max.split_once(' ').unwrap_or((&max, "100000"));
                (q.to_owned(), p.to_owned())
            }
        };
        let period: u64 = period.parse().unwrap_or(100_000);
        Ok(quota.parse::<i64>().ok().filter(|q| *q > 0).map(|q| {
            (
                Duration::from_micros(q as u64),
                Duration::from_micros(period),
            )
        }))
    }

    /// Sets a hard memory limit, if this host has a memory controller.
    pub fn set_memory_limit(&self, bytes: u64) -> Result<(), CgroupError> {
        let Some(dir) = &self.memory else {
            return Ok(());
        };
        let f = match self.version {
            Version::V1 => dir.join("memory.limit_in_bytes"),
            Version::V2 => dir.join("memory.max"),
        };
        fs::write(&f, bytes.to_string()).map_err(io_err(&f))
    }

    pub fn memory_limit(&self) -> Option<u64> {
        let dir = self.memory.as_ref()?;
        let f = match self.version {
            Version::V1 => dir.join("memory.limit_in_bytes"),
            Version::V2 => dir.join("memory.max"),
        };
        fs::read_to_string(f).ok()?.trim().parse().ok()
    }

    /// Cumulative CPU time used by the group's processes.
    pub fn cpu_usage(&self) -> Result<Duration, CgroupError> {
        match self.version {
            Version::V1 => {
                let f = self.cpuacct.join("cpuacct.usage");
                let ns: u64 = fs::read_to_string(&f)
                    .map_err(io_err(&f))?
                    .trim()
                    .parse()
                    .unwrap_or(0);
                Ok(Duration::from_nanos(ns))
            }
            Version::V2 => {
                let f = self.cpu.join("cpu.stat");
                let text = fs::read_to_string(&f).map_err(io_err(&f))?;
                let us = text
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                Ok(Duration::from_micros(us))
            }
        }
    }

    /// The CFS bandwidth counters: periods run, periods throttled, time throttled.
    pub fn cpu_stat(&self) -> Result<CpuStat, CgroupError> {
        let f = self.cpu.join("cpu.stat");
        let text = fs::read_to_string(&f).map_err(io_err(&f))?;
        Ok(CpuStat::parse(self.version, &text))
    }

    /// Processes in the group (from the CPU hierarchy).
    pub fn procs(&self) -> Vec<u32> {
        fs::read_to_string(self.cpu.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Whether the group still exists in any hierarchy.
    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.exists())
    }

    /// Makes `cmd`'s child join this group before it executes, so the program starts already
    /// limited (and sees its quota when it first looks).
    pub fn join_on_exec(&self, cmd: &mut std::process::Command) {
        use std::os::unix::ffi::OsStrExt as _;
        let files: Vec<std::ffi::CString> = self
            .dirs()
            .iter()
            .map(|d| {
                std::ffi::CString::new(d.join("cgroup.procs").as_os_str().as_bytes())
                    .expect("cgroup paths have no NUL")
            })
            .collect();
        // SAFETY: between fork and exec only async-signal-safe calls are made (open, write,
        // close), on memory allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for f in &files {
                    let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // "0" means the writing process itself.
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let err = io::Error::last_os_error();
                    libc::close(fd);
                    if n != 1 {
                        return Err(err);
                    }
                }
                Ok(())
            });
        }
    }

    /// Removes the group (it must hold no processes). Idempotent.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for d in self.dirs() {
            rmdir_retrying(d)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_stat_parses_v1_nanoseconds() {
        let text = "nr_periods 1200\nnr_throttled 340\nthrottled_time 2500000000\n\
                    nr_bursts 0\nburst_time 0\nwait_sum 17\n";
        let s = CpuStat::parse(Version::V1, text);
        assert_eq!(s.periods, 1200);
        assert_eq!(s.throttled_periods, 340);
        assert_eq!(s.throttled, Duration::from_millis(2500));
    }

    #[test]
    fn cpu_stat_parses_v2_microseconds() {
        let text = "usage_usec 9000000\nuser_usec 8000000\nsystem_usec 1000000\n\
                    nr_periods 77\nnr_throttled 5\nthrottled_usec 125000\n\
                    nr_bursts 0\nburst_usec 0\n";
        let s = CpuStat::parse(Version::V2, text);
        assert_eq!(s.periods, 77);
        assert_eq!(s.throttled_periods, 5);
        assert_eq!(s.throttled, Duration::from_millis(125));
    }

    #[test]
    fn cpu_stat_of_an_unlimited_group_is_zero() {
        // A v2 group without a quota has only the usage lines.
        let text = "usage_usec 10\nuser_usec 5\nsystem_usec 5\n";
        assert_eq!(CpuStat::parse(Version::V2, text), CpuStat::default());
    }
}
