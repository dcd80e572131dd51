//! CPU accounting: how much CPU this process (or its cgroup) has used, and how much it may use.
//!
//! A worker's utilization is `used / allowed`. "Allowed" is the tightest CFS quota on the path
//! from its cgroup to the root (cgroup v1 `cpu.cfs_quota_us / cpu.cfs_period_us`, cgroup v2
//! `cpu.max`); "used" is then the cgroup's own counter (v1 `cpuacct.usage`, v2 `cpu.stat`
//! `usage_usec`) so every thread of the process is counted. Without a quota, the process's own
//! CPU clock (`CLOCK_PROCESS_CPUTIME_ID`, nanosecond resolution, unlike `/proc`'s 10 ms ticks)
//! is divided by the cores the process may run on.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cgroupfs;

/// Where the "used" counter is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageCounter {
    /// cgroup v1 `cpuacct.usage` (nanoseconds).
    CgroupV1(PathBuf),
    /// cgroup v2 `cpu.stat`, field `usage_usec`.
    CgroupV2(PathBuf),
    /// The process CPU clock.
    Process,
}

/// What bounds the CPU this process may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CapacityOrigin {
    CgroupV1Quota,
    CgroupV2Quota,
    MachineCores,
}

/// A CPU meter: the counter to read and the capacity to divide by.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    counter: UsageCounter,
    cores: f64,
    origin: CapacityOrigin,
}

impl CpuMeter {
    /// Detects the accounting that applies to the calling process.
    pub fn detect() -> CpuMeter {
        let cgroups = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        detect_from(&cgroups, &mountinfo, Path::new("/")).unwrap_or_else(CpuMeter::process)
    }

    /// The process clock over the cores this process may be scheduled on.
    pub fn process() -> CpuMeter {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        CpuMeter {
            counter: UsageCounter::Process,
            cores,
            origin: CapacityOrigin::MachineCores,
        }
    }

    /// CPU this process may use, in cores (e.g. 0.1 for a 10 ms / 100 ms quota).
    pub fn cores(&self) -> f64 {
        self.cores
    }

    pub fn origin(&self) -> CapacityOrigin {
        self.origin
    }

    pub fn counter(&self) -> &UsageCounter {
        &self.counter
    }

    /// Cumulative CPU time used, from the meter's counter.
    pub fn used(&self) -> io::Result<Duration> {
        match &self.counter {
            UsageCounter::CgroupV1(path) => {
                let ns = read_trimmed(path)?
                    .parse::<u64>()
                    .map_err(|e| invalid(path, e))?;
                Ok(Duration::from_nanos(ns))
            }
            UsageCounter::CgroupV2(path) => {
                let text = fs::read_to_string(path)?;
                let usec = text
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .ok_or_else(|| invalid(path, "no usage_usec field"))?
                    .trim()
                    .parse::<u64>()
                    .map_err(|e| invalid(path, e))?;
                Ok(Duration::from_micros(usec))
            }
            UsageCounter::Process => process_cpu_time(),
        }
    }
}

/// The process CPU clock (all threads, user + system).
pub fn process_cpu_time() -> io::Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// The CPU clock of the calling thread; used to calibrate CPU work independently of any quota.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as above; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn read_trimmed(path: &Path) -> io::Result<String> {
    Ok(fs::read_to_string(path)?.trim().to_owned())
}

fn invalid(path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {e}", path.display()),
    )
}

/// Walks from `dir` up to (and including) `top`, returning the smallest quota in cores.
fn tightest_quota(dir: &Path, top: &Path, read: impl Fn(&Path) -> Option<f64>) -> Option<f64> {
    let mut best: Option<f64> = None;
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if let Some(cores) = read(d) {
            best = Some(best.map_or(cores, |b: f64| b.min(cores)));
        }
        if d == top {
            break;
        }
        cur = d.parent().filter(|p| p.starts_with(top));
    }
    best
}

fn v1_quota(dir: &Path) -> Option<f64> {
    let quota: i64 = read_trimmed(&dir.join("cpu.cfs_quota_us"))
        .ok()?
        .parse()
        .ok()?;
    let period: i64 = read_trimmed(&dir.join("cpu.cfs_period_us"))
        .ok()?
        .parse()
        .ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

fn v2_quota(dir: &Path) -> Option<f64> {
    let text = read_trimmed(&dir.join("cpu.max")).ok()?;
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period: f64 = parts.next()?.parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then_some(quota / period)
}

/// Detection over explicit file contents, so it can be tested against any layout.
/// `sysroot` prefixes every path (normally `/`).
fn detect_from(cgroups: &str, mountinfo: &str, sysroot: &Path) -> Option<CpuMeter> {
    let mounts = cgroupfs::parse_mountinfo(mountinfo);
    let own = cgroupfs::parse_proc_cgroup(cgroups);

    // cgroup v1: the `cpu` controller holds the quota, `cpuacct` the usage; they may be
    // co-mounted (`cpu,cpuacct`) or mounted apart, as on our CI machines.
    if let Some(cpu_dir) = cgroupfs::v1_dir(&mounts, &own, "cpu", sysroot) {
        let top = mounts
            .iter()
            .find(|m| !m.v2 && m.has("cpu"))
            .map(|m| m.point_under(sysroot))?;
        if let Some(cores) = tightest_quota(&cpu_dir, &top, v1_quota) {
            let usage = cgroupfs::v1_dir(&mounts, &own, "cpuacct", sysroot)
                .map(|d| d.join("cpuacct.usage"))
                .filter(|p| p.exists());
            return Some(CpuMeter {
                // A quota without cpuacct: the process clock still measures this process.
                counter: usage.map_or(UsageCounter::Process, UsageCounter::CgroupV1),
                cores,
                origin: CapacityOrigin::CgroupV1Quota,
            });
        }
    }

    let (dir, top) = cgroupfs::v2_dir(&mounts, &own, sysroot)?;
    let cores = tightest_quota(&dir, &top, v2_quota)?;
    let stat = dir.join("cpu.stat");
    Some(CpuMeter {
        counter: if stat.exists() {
            UsageCounter::CgroupV2(stat)
        } else {
            UsageCounter::Process
        },
        cores,
        origin: CapacityOrigin::CgroupV2Quota,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fulcrum-cpu-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    const V1_SPLIT_MOUNTS: &str = "\
30 25 0:27 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
31 25 0:28 / /sys/fs/cgroup/cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpuacct
40 25 0:35 / /sys/fs/cgroup/unified rw,relatime shared:11 - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_with_cpu_and_cpuacct_mounted_apart() {
        let root = scratch("v1");
        write(
            &root,
            "sys/fs/cgroup/cpu/fulcrum/w1/cpu.cfs_quota_us",
            "10000\n",
        );
        write(
            &root,
            "sys/fs/cgroup/cpu/fulcrum/w1/cpu.cfs_period_us",
            "100000\n",
        );
        write(&root, "sys/fs/cgroup/cpu/fulcrum/cpu.cfs_quota_us", "-1\n");
        write(
            &root,
            "sys/fs/cgroup/cpu/fulcrum/cpu.cfs_period_us",
            "100000\n",
        );
        write(
            &root,
            "sys/fs/cgroup/cpuacct/fulcrum/w1/cpuacct.usage",
            "1500000000\n",
        );
        let cgroups = "2:cpuacct:/fulcrum/w1\n1:cpu:/fulcrum/w1\n0::/\n";
        let m = detect_from(cgroups, V1_SPLIT_MOUNTS, &root).unwrap();
        assert_eq!(m.origin(), CapacityOrigin::CgroupV1Quota);
        assert!((m.cores() - 0.1).abs() < 1e-9);
        assert_eq!(m.used().unwrap(), Duration::from_millis(1500));
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn v1_tightest_ancestor_quota_wins() {
        let root = scratch("v1anc");
        write(&root, "sys/fs/cgroup/cpu/a/cpu.cfs_quota_us", "50000");
        write(&root, "sys/fs/cgroup/cpu/a/cpu.cfs_period_us", "100000");
        write(&root, "sys/fs/cgroup/cpu/a/b/cpu.cfs_quota_us", "200000");
        write(&root, "sys/fs/cgroup/cpu/a/b/cpu.cfs_period_us", "100000");
        write(&root, "sys/fs/cgroup/cpuacct/a/b/cpuacct.usage", "7");
        let cgroups = "2:cpuacct:/a/b\n1:cpu:/a/b\n";
        let m = detect_from(cgroups, V1_SPLIT_MOUNTS, &root).unwrap();
        assert!((m.cores() - 0.5).abs() < 1e-9);
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn v2_quota_and_usage_inside_a_namespaced_mount() {
        let root = scratch("v2");
        // Inside a container the mount's root is the container's own cgroup.
        let mountinfo =
            "50 40 0:30 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        write(&root, "sys/fs/cgroup/app/cpu.max", "25000 100000\n");
        write(
            &root,
            "sys/fs/cgroup/app/cpu.stat",
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
        );
        write(&root, "sys/fs/cgroup/cpu.max", "max 100000\n");
        let m = detect_from("0::/kubepods/pod1/app\n", mountinfo, &root).unwrap();
        assert_eq!(m.origin(), CapacityOrigin::CgroupV2Quota);
        assert!((m.cores() - 0.25).abs() < 1e-9);
        assert_eq!(m.used().unwrap(), Duration::from_millis(2500));
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn no_quota_means_the_process_clock() {
        let root = scratch("none");
        write(&root, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1");
        write(&root, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000");
        write(&root, "sys/fs/cgroup/unified/cpu.max", "max 100000");
        assert!(detect_from("1:cpu:/\n2:cpuacct:/\n0::/\n", V1_SPLIT_MOUNTS, &root).is_none());
        let m = CpuMeter::process();
        assert_eq!(m.origin(), CapacityOrigin::MachineCores);
        assert!(m.cores() >= 1.0);
        let before = m.used().unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(m.used().unwrap() > before, "{x}");
        let _ = fs::remove_dir_all(root);
    }
}
