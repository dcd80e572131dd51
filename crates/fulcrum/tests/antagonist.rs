//! `fulcrum antagonist`: a co-tenant taking a share of a cgroup's CPU quota on a schedule, read
//! back from the group's counters and the process's own.

mod fixture;

use std::io::Read as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fixture::{block_on, client, run, send, Proc, TestCgroup};
use fulcrum_deploy::antagonist::{process_cpu, unix_now_ms, AntagonistRun};
use fulcrum_deploy::cgroup::{Cgroup, CpuStat};

/// The emulated instance: 0.2 core in 10 ms periods.
const QUOTA_CORES: f64 = 0.2;
const PERIOD: Duration = Duration::from_millis(10);

fn limited_cgroup(test: &str) -> Option<TestCgroup> {
    let host = fixture::cgroups_or_skip(test)?;
    let cg = TestCgroup::new(host, test);
    cg.group
        .set_cpu_limit(PERIOD.mul_f64(QUOTA_CORES), PERIOD)
        .unwrap();
    Some(cg)
}

/// A `fulcrum antagonist` inside a cgroup, killed (by PID) when dropped if still running.
struct Antagonist(Child);

impl Antagonist {
    fn start(group: &Cgroup, args: &[&str]) -> Antagonist {
        let mut cmd = Command::new(fixture::BIN);
        cmd.arg("antagonist")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        group.join_on_exec(&mut cmd);
        let a = Antagonist(cmd.spawn().expect("spawn fulcrum antagonist"));
        assert!(group.procs().contains(&a.pid()), "not in the test cgroup");
        a
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn cpu(&self) -> Duration {
        process_cpu(self.pid()).expect("the antagonist's CPU is readable")
    }

    /// SIGTERM (if `terminate`), then waits (≤ `limit`) for it to exit 0 and print its line.
    fn finish(mut self, terminate: bool, limit: Duration) -> AntagonistRun {
        if terminate {
            // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
            unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        }
        assert!(
            fixture::eventually(limit, || self.0.try_wait().unwrap().is_some()),
            "the antagonist did not exit within {limit:?}"
        );
        let status = self.0.wait().unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        self.0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        self.0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(status.success(), "{status}: {err}");
        assert_eq!(out.lines().count(), 1, "{out}");
        AntagonistRun::parse(&out).unwrap_or_else(|| panic!("no done line: {out:?}"))
    }
}

impl Drop for Antagonist {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// CPU figures at one instant.
struct Sample {
    at: Instant,
    group: Duration,
    antagonist: Duration,
    stat: CpuStat,
}

impl Sample {
    fn take(group: &Cgroup, a: &Antagonist) -> Sample {
        Sample {
            at: Instant::now(),
            group: group.cpu_usage().unwrap(),
            antagonist: a.cpu(),
            stat: group.cpu_stat().unwrap(),
        }
    }
}

/// Cores used between two samples: (the group's, the antagonist's).
fn rates(a: &Sample, b: &Sample) -> (f64, f64) {
    let secs = (b.at - a.at).as_secs_f64();
    (
        (b.group - a.group).as_secs_f64() / secs,
        (b.antagonist - a.antagonist).as_secs_f64() / secs,
    )
}

#[test]
fn an_always_on_antagonist_takes_its_share_of_the_quota() {
    let test = "an_always_on_antagonist_takes_its_share_of_the_quota";
    let Some(cg) = limited_cgroup(test) else {
        return;
    };
    let a = Antagonist::start(
        &cg.group,
        &[
            "--cores", "0.2", "--share", "0.5", "--on", "1h", "--off", "0s",
        ],
    );
    std::thread::sleep(Duration::from_millis(300)); // past start-up
    let before = Sample::take(&cg.group, &a);
    std::thread::sleep(Duration::from_secs(2));
    let after = Sample::take(&cg.group, &a);
    let (group, own) = rates(&before, &after);
    let agreement = own / group;
    eprintln!("{test}: group {group:.4} cores, antagonist {own:.4} cores, ratio {agreement:.3}");
    let want = 0.5 * QUOTA_CORES;
    assert!(
        (group - want).abs() <= 0.25 * want,
        "group used {group:.4} cores, want {want} ± 25%"
    );
    assert!(
        (agreement - 1.0).abs() <= 0.15,
        "process_cpu says {own:.4} cores, the cgroup {group:.4}"
    );
    let done = a.finish(true, Duration::from_secs(5));
    eprintln!("{test}: {done}");
    // It prints whole milliseconds.
    let printed_floor = after.antagonist.saturating_sub(Duration::from_millis(1));
    assert!(done.cpu >= printed_floor, "{done} < {:?}", after.antagonist);
    assert!(done.on >= Duration::from_secs(2), "{done}");
}

/// Keeps `clients` requests of `work_us` in flight against a worker until dropped.
struct Saturation {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Saturation {
    fn start(url: String, clients: usize) -> Saturation {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || block_on(keep_in_flight(url, clients, flag)));
        Saturation {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the clients and returns how many answers were 200.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Saturation {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn keep_in_flight(url: String, clients: usize, stop: Arc<AtomicBool>) -> u64 {
    let c = client();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (c, url, stop) = (c.clone(), url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut ok = 0;
                while !stop.load(Ordering::Relaxed) {
                    // Each send is bounded (30 s); a failure just counts as not OK.
                    if send(&c, "GET", &url, b"")
                        .await
                        .is_ok_and(|r| r.status == 200)
                    {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap_or(0);
    }
    ok
}

#[test]
fn a_saturated_worker_and_an_antagonist_split_the_quota() {
    let test = "a_saturated_worker_and_an_antagonist_split_the_quota";
    let Some(cg) = limited_cgroup(test) else {
        return;
    };
    let mut cmd = Command::new(fixture::BIN);
    cmd.args([
        "worker",
        "--cluster",
        "1",
        "--port",
        "0",
        "--instance-id",
        "i-antagonized",
    ]);
    cg.group.join_on_exec(&mut cmd);
    let worker = Proc::start_cmd(cmd);
    let load = Saturation::start(worker.url("/cluster1?work_us=5000"), 4);
    std::thread::sleep(Duration::from_millis(700)); // the worker reaches its quota
    let alone = cg.group.cpu_usage().unwrap();
    let t_alone = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let worker_alone =
        (cg.group.cpu_usage().unwrap() - alone).as_secs_f64() / t_alone.elapsed().as_secs_f64();

    // CFS splits a group's time per runnable thread: against the worker's computing thread
    // (and, now and then, its I/O threads) a one-thread antagonist's fair share is between a
    // third and a half of the quota. Asking for a quarter checks that it gets what it asks for
    // when it asks for less than its fair share; asking for a half sat on that ceiling.
    let a = Antagonist::start(
        &cg.group,
        &[
            "--cores", "0.2", "--share", "0.25", "--on", "1h", "--off", "0s",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let before = Sample::take(&cg.group, &a);
    std::thread::sleep(Duration::from_secs(2));
    let after = Sample::take(&cg.group, &a);
    let served = load.stop();
    let (group, own) = rates(&before, &after);
    let throttled = after.stat.throttled_periods - before.stat.throttled_periods;
    let periods = after.stat.periods - before.stat.periods;
    eprintln!(
        "{test}: worker alone {worker_alone:.4} cores; with the antagonist: group {group:.4} \
         cores ({:.0}% of the quota), antagonist {own:.4} cores ({:.0}% of the quota), \
         throttled {throttled} of {periods} periods ({:?}); {served} requests served",
        100.0 * group / QUOTA_CORES,
        100.0 * own / QUOTA_CORES,
        after.stat.throttled - before.stat.throttled,
    );
    assert!(
        group >= 0.85 * QUOTA_CORES,
        "the group used {group:.4} cores of {QUOTA_CORES}"
    );
    assert!(
        (own - 0.25 * QUOTA_CORES).abs() <= 0.1 * QUOTA_CORES,
        "the antagonist used {own:.4} cores, want {} ± {}",
        0.25 * QUOTA_CORES,
        0.1 * QUOTA_CORES
    );
    assert!(throttled > 0, "no throttled periods: {:?}", after.stat);
    assert!(served > 0, "the worker served nothing");
    a.finish(true, Duration::from_secs(5));
}

#[test]
fn an_antagonist_follows_its_schedule() {
    let test = "an_antagonist_follows_its_schedule";
    let Some(cg) = limited_cgroup(test) else {
        return;
    };
    // Windows: off until the epoch, then on 600 ms / off 600 ms twice; it stops by itself
    // (after 3.1 s) about 500 ms into the last off window.
    let epoch = unix_now_ms() + 800;
    let epoch_s = epoch.to_string();
    let a = Antagonist::start(
        &cg.group,
        &[
            "--cores",
            "0.2",
            "--share",
            "0.5",
            "--on",
            "600ms",
            "--off",
            "600ms",
            "--epoch-ms",
            &epoch_s,
            "--duration",
            "3100ms",
        ],
    );
    // Each window is measured around its midpoint, clear of its edges (and of the exit).
    let windows = [
        ("before the epoch", -500, -100, false),
        ("on 1", 100, 500, true),
        ("off 1", 700, 1100, false),
        ("on 2", 1300, 1700, true),
        ("off 2", 1900, 2200, false),
    ];
    let want_on = 0.5 * QUOTA_CORES;
    let mut failures = Vec::new();
    for (name, from, to, on) in windows {
        let rate = cpu_rate_between(&a, epoch, from, to);
        eprintln!("{test}: {name}: {rate:.4} cores");
        let ok = if on {
            (rate - want_on).abs() <= 0.4 * want_on
        } else {
            rate <= 0.1 * want_on
        };
        if !ok {
            failures.push(format!("{name}: {rate:.4} cores"));
        }
    }
    let done = a.finish(false, Duration::from_secs(5));
    eprintln!("{test}: {done}");
    assert!(
        failures.is_empty(),
        "want on ≈ {want_on}, off ≈ 0: {failures:?}"
    );
    let on = done.on.as_secs_f64();
    assert!((on - 1.2).abs() <= 0.05, "on for {on} s, want 1.2");
}

/// The antagonist's CPU rate between `from_ms` and `to_ms` after `epoch` (Unix ms).
fn cpu_rate_between(a: &Antagonist, epoch: u64, from_ms: i64, to_ms: i64) -> f64 {
    wait_until_unix_ms(epoch.saturating_add_signed(from_ms));
    let (t0, c0) = (Instant::now(), a.cpu());
    wait_until_unix_ms(epoch.saturating_add_signed(to_ms));
    (a.cpu() - c0).as_secs_f64() / t0.elapsed().as_secs_f64()
}

fn wait_until_unix_ms(at: u64) {
    let now = unix_now_ms();
    assert!(at < now + 10_000, "waits are bounded");
    std::thread::sleep(Duration::from_millis(at.saturating_sub(now)));
}

#[test]
fn invalid_plans_are_one_line_errors() {
    for (args, needle) in [
        (
            ["--share", "1.5", "--cores", "0.2", "--on", "4s"],
            "share must",
        ),
        (
            ["--share", "0.5", "--cores", "0", "--on", "4s"],
            "cores must",
        ),
        (
            ["--share", "0.5", "--cores", "0.2", "--on", "0s"],
            "on must",
        ),
    ] {
        let mut all = vec!["antagonist", "--off", "4s", "--duration", "1s"];
        all.extend(args);
        let (code, out, err) = run(&all);
        assert_ne!(code, 0, "{all:?}: {out}");
        assert_eq!(err.trim().lines().count(), 1, "{all:?}: {err}");
        assert!(err.contains(needle), "{all:?}: {err}");
        eprintln!("{args:?}: exit {code}: {}", err.trim());
    }
}
