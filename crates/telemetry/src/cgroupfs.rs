//! Where the cgroup hierarchies are: `/proc/self/mountinfo` and `/proc/self/cgroup`, parsed.
//!
//! Shared by CPU accounting here and by the local provider that creates groups for workers.

use std::path::{Path, PathBuf};

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// The cgroup path that appears at `point` (not always `/` inside containers).
    pub root: String,
    pub point: PathBuf,
    pub v2: bool,
    /// v1: the controllers of this hierarchy (from the super options); v2: empty.
    pub controllers: Vec<String>,
}

/// A process's membership in one hierarchy: a `/proc/<pid>/cgroup` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// Controllers of the hierarchy; empty for the v2 unified hierarchy.
    pub controllers: Vec<String>,
    pub path: String,
}

impl Membership {
    pub fn is_v2(&self) -> bool {
        self.controllers.is_empty()
    }

    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

impl CgroupMount {
    /// The directory of `cgroup_path` under this mount, prefixed by `sysroot` (normally `/`);
    /// `None` when the group is outside what this mount shows.
    pub fn dir_of(&self, sysroot: &Path, cgroup_path: &str) -> Option<PathBuf> {
        let rel = if self.root == "/" {
            cgroup_path
        } else {
            cgroup_path.strip_prefix(self.root.as_str())?
        };
        Some(self.point_under(sysroot).join(rel.trim_start_matches('/')))
    }

    /// The mount point, prefixed by `sysroot`.
    pub fn point_under(&self, sysroot: &Path) -> PathBuf {
        sysroot.join(self.point.strip_prefix("/").unwrap_or(&self.point))
    }

    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// Parses the cgroup mounts out of a mountinfo file.
pub fn parse_mountinfo(mountinfo: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        // `id parent maj:min root point opts [optional...] - fstype source superopts`
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        let v2 = match post[0] {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        mounts.push(CgroupMount {
            root: unescape(pre[3]),
            point: PathBuf::from(unescape(pre[4])),
            v2,
            controllers: if v2 {
                Vec::new()
            } else {
                post[2].split(',').map(str::to_owned).collect()
            },
        });
    }
    mounts
}

/// Parses a `/proc/<pid>/cgroup` file.
pub fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.splitn(3, ':');
            let (_id, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            Some(Membership {
                controllers: ctrls
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
                path: path.to_owned(),
            })
        })
        .collect()
}

/// The mounts and memberships of the calling process.
pub fn current() -> (Vec<CgroupMount>, Vec<Membership>) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    (parse_mountinfo(&mountinfo), parse_proc_cgroup(&cgroups))
}

/// The calling process's v1 directory for `controller`, if that hierarchy is mounted.
pub fn v1_dir(
    mounts: &[CgroupMount],
    own: &[Membership],
    controller: &str,
    sysroot: &Path,
) -> Option<PathBuf> {
    let member = own.iter().find(|m| m.has(controller))?;
    let mount = mounts.iter().find(|m| !m.v2 && m.has(controller))?;
    mount.dir_of(sysroot, &member.path)
}

/// The calling process's v2 directory, if the unified hierarchy is mounted.
pub fn v2_dir(
    mounts: &[CgroupMount],
    own: &[Membership],
    sysroot: &Path,
) -> Option<(PathBuf, PathBuf)> {
    let member = own.iter().find(|m| m.is_v2())?;
    let mount = mounts.iter().find(|m| m.v2)?;
    Some((
        mount.dir_of(sysroot, &member.path)?,
        mount.point_under(sysroot),
    ))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_split_v1_and_unified_mounts() {
        let m = parse_mountinfo(
            "30 25 0:27 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu\n\
             31 25 0:28 / /sys/fs/cgroup/cpu\\040acct rw - cgroup cgroup rw,cpuacct\n\
             40 25 0:35 / /sys/fs/cgroup/unified rw,relatime shared:11 - cgroup2 cgroup2 rw\n\
             41 25 0:36 / /proc rw - proc proc rw\n",
        );
        assert_eq!(m.len(), 3);
        assert!(m[0].has("cpu") && !m[0].v2);
        assert_eq!(m[1].point, PathBuf::from("/sys/fs/cgroup/cpu acct"));
        assert!(m[2].v2 && m[2].controllers.is_empty());
    }

    #[test]
    fn finds_own_directories() {
        let mounts = parse_mountinfo(
            "30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
             50 40 0:30 /pod /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        );
        let own = parse_proc_cgroup("3:cpu,cpuacct:/a/b\n0::/pod/app\n");
        let root = Path::new("/");
        assert_eq!(
            v1_dir(&mounts, &own, "cpuacct", root),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/a/b"))
        );
        assert_eq!(v1_dir(&mounts, &own, "memory", root), None);
        assert_eq!(
            v2_dir(&mounts, &own, root).unwrap().0,
            PathBuf::from("/sys/fs/cgroup/unified/app")
        );
        assert_eq!(unescape(r"/end\04"), r"/end\04");
    }
}
