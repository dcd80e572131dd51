//! The co-tenant: CPU load inside a worker's cgroup that comes and goes — the local analog of
//! noisy neighbours, steal time and spent t2 credits.
//!
//! An antagonist takes a `share` of its cgroup's quota (`cores`) while it is on, and nothing
//! while it is off. It switches on a wall-clock schedule (`on`, `off`, `phase` from a common
//! `epoch`), so antagonists started one by one in different workers keep one timetable and the
//! active set can move between workers. While on, it meters its CPU in 10 ms slots aligned to
//! the monotonic clock: it burns until its thread CPU clock shows the slot's budget or the slot
//! ends, then sleeps to the next slot. Spreading the load over every slot, rather than burning
//! `share` of each second in one go, is what a co-tenant looks like to CFS bandwidth control,
//! whose periods are about as long as a slot.

use std::fmt;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fulcrum_telemetry::cpu::{process_cpu_time, thread_cpu_time};

/// The antagonist meters its CPU per slot of this length.
pub const SLOT: Duration = Duration::from_millis(10);

/// Starts the line an antagonist prints on stdout when it ends (see [`AntagonistRun`]).
pub const DONE_MARKER: &str = "antagonist done:";

/// The longest sleep between looks at the stop flag: a signal landing just before a sleep
/// starts is noticed within this, whatever the schedule.
const MAX_NAP: Duration = Duration::from_secs(1);

/// CPU time between two looks at the thread CPU clock while burning.
const BATCH_US: f64 = 20.0;

/// What an antagonist does and when.
#[derive(Debug, Clone, PartialEq)]
pub struct AntagonistPlan {
    /// Fraction of the cgroup's quota taken while on, 0..=1.
    pub share: f64,
    /// The cgroup's quota, in cores.
    pub cores: f64,
    pub on: Duration,
    pub off: Duration,
    /// Delay after `epoch_unix_ms` before the first on window; off until then.
    pub phase: Duration,
    /// The schedule's origin, in Unix milliseconds.
    pub epoch_unix_ms: u64,
    /// Stop after this long (else only on SIGTERM/SIGINT).
    pub duration: Option<Duration>,
}

impl AntagonistPlan {
    /// Checks the values a schedule can run with; the error is one line.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.share) {
            return Err(format!("share must be within 0..=1, not {}", self.share));
        }
        if !(self.cores.is_finite() && self.cores > 0.0) {
            return Err(format!("cores must be above 0, not {}", self.cores));
        }
        if self.on < Duration::from_millis(1) {
            return Err(format!(
                "on must be at least 1ms, not {}",
                humantime::format_duration(self.on)
            ));
        }
        Ok(())
    }

    /// CPU to burn per second while on.
    fn rate(&self) -> f64 {
        self.share * self.cores
    }

    fn cycle_ms(&self) -> u64 {
        millis(self.on) + millis(self.off)
    }

    fn start_unix_ms(&self) -> u64 {
        self.epoch_unix_ms.saturating_add(millis(self.phase))
    }

    /// Milliseconds into the current cycle (0 = an on window begins); `None` before the phase.
    fn cycle_position(&self, unix_ms: u64) -> Option<u64> {
        let t = unix_ms.checked_sub(self.start_unix_ms())?;
        Some(t % self.cycle_ms().max(1))
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// Whether the antagonist of `plan` burns CPU at `unix_ms`.
pub fn is_on(plan: &AntagonistPlan, unix_ms: u64) -> bool {
    plan.cycle_position(unix_ms)
        .is_some_and(|pos| pos < millis(plan.on))
}

/// Milliseconds from `unix_ms` until the antagonist of `plan` next switches (at least 1).
pub fn until_switch(plan: &AntagonistPlan, unix_ms: u64) -> u64 {
    let on = millis(plan.on);
    match plan.cycle_position(unix_ms) {
        None => plan.start_unix_ms() - unix_ms,
        Some(pos) if pos < on => on - pos,
        Some(pos) => plan.cycle_ms() - pos,
    }
}

/// The wall clock in Unix milliseconds (the schedule's clock).
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

/// What an antagonist did, as it prints it when it ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AntagonistRun {
    /// CPU the whole process used.
    pub cpu: Duration,
    /// Wall time it spent on.
    pub on: Duration,
}

impl fmt::Display for AntagonistRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{DONE_MARKER} cpu_s={:.3} on_s={:.3}",
            self.cpu.as_secs_f64(),
            self.on.as_secs_f64()
        )
    }
}

impl AntagonistRun {
    /// Reads the figures back from the line it printed, with or without [`DONE_MARKER`].
    pub fn parse(line: &str) -> Option<AntagonistRun> {
        let rest = line.split(DONE_MARKER).last()?;
        let field = |key: &str| {
            rest.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| Duration::try_from_secs_f64(v.parse().ok()?).ok())
        };
        Some(AntagonistRun {
            cpu: field("cpu_s")?,
            on: field("on_s")?,
        })
    }
}

/// Runs `plan` on the calling thread until `stop` is set or its duration has passed.
pub fn run(plan: &AntagonistPlan, stop: &AtomicBool) -> AntagonistRun {
    let mut burner = Burner::new();
    let end = plan.duration.map(|d| monotonic() + d);
    let mut on = OnClock::default();
    let mut last_slot_end = None;
    loop {
        let now = monotonic();
        let unix = unix_now_ms();
        let stopping = stop.load(Ordering::Relaxed) || end.is_some_and(|e| now >= e);
        let active = !stopping && is_on(plan, unix);
        on.mark(now, active);
        if stopping {
            break;
        }
        let switch = now + Duration::from_millis(until_switch(plan, unix));
        let until = end.map_or(switch, |e| e.min(switch));
        if active {
            let slot_end = burn_slot(plan, &mut burner, now, until, last_slot_end);
            sleep_until(slot_end, stop);
            last_slot_end = Some(slot_end);
        } else {
            sleep_until(until.min(now + MAX_NAP), stop);
        }
    }
    AntagonistRun {
        cpu: process_cpu_time().unwrap_or_default(),
        on: on.total,
    }
}

/// Burns the share of the slot `now` falls in (cut short at `until`); returns the slot's end.
fn burn_slot(
    plan: &AntagonistPlan,
    burner: &mut Burner,
    now: Duration,
    until: Duration,
    last_slot_end: Option<Duration>,
) -> Duration {
    let slot_start = now - Duration::from_nanos((now.as_nanos() % SLOT.as_nanos()) as u64);
    let slot_end = (slot_start + SLOT).min(until);
    // Straight after the previous slot the whole slot is budgeted; just switched on (or woken
    // late), only what is left of it, so a slot never takes more than its share.
    let from = if last_slot_end == Some(slot_start) {
        slot_start
    } else {
        now
    };
    burner.burn(slot_end.saturating_sub(from).mul_f64(plan.rate()), slot_end);
    slot_end
}

/// Wall time spent on: each on window from the first look that found it on to the first that
/// found it off (slots lost to a late wake-up still count: the schedule was on).
#[derive(Default)]
struct OnClock {
    since: Option<Duration>,
    total: Duration,
}

impl OnClock {
    fn mark(&mut self, now: Duration, on: bool) {
        match (self.since, on) {
            (None, true) => self.since = Some(now),
            (Some(since), false) => {
                self.total += now.saturating_sub(since);
                self.since = None;
            }
            _ => {}
        }
    }
}

/// Burns CPU on the calling thread: a dependent multiply-xorshift chain in batches of about
/// `BATCH_US`, re-sized from what each batch cost, so a slot overshoots its budget by at most
/// a batch whatever the build or the machine.
struct Burner {
    rounds_per_us: f64,
    digest: u64,
    /// The thread CPU clock when the last burn ended.
    last_cpu: Duration,
}

impl Burner {
    fn new() -> Burner {
        Burner {
            rounds_per_us: 100.0,
            digest: 0x5eed,
            last_cpu: thread_cpu_time(),
        }
    }

    /// Burns until the thread has used `budget` of CPU or the monotonic clock reaches `until`.
    fn burn(&mut self, budget: Duration, until: Duration) {
        let start = thread_cpu_time();
        // What the thread spent since the last burn (waking up, sleeping, the schedule) is
        // part of the CPU it takes from its co-tenant: it counts against this budget.
        let budget = budget.saturating_sub(start.saturating_sub(self.last_cpu));
        let mut spent = Duration::ZERO;
        while spent < budget && monotonic() < until {
            let left_us = (budget - spent).as_secs_f64() * 1e6;
            let rounds = (self.rounds_per_us * left_us.min(BATCH_US)).max(1.0) as u64;
            self.digest = std::hint::black_box(mix(rounds, self.digest));
            let now = thread_cpu_time().saturating_sub(start);
            let cost_us = now.saturating_sub(spent).as_secs_f64() * 1e6;
            if cost_us > 0.0 {
                self.rounds_per_us = rounds as f64 / cost_us;
            }
            spent = now;
        }
        self.last_cpu = start + spent;
    }
}

fn mix(rounds: u64, seed: u64) -> u64 {
    let mut h = seed;
    for _ in 0..rounds {
        h = (h ^ (h >> 31))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(17);
    }
    h
}

/// `CLOCK_MONOTONIC`, the clock slots are aligned to and sleeps are measured on.
fn monotonic() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Sleeps until `CLOCK_MONOTONIC` reads `at`; a signal that sets `stop` ends it early (the
/// kernel never restarts `clock_nanosleep` after a handler).
fn sleep_until(at: Duration, stop: &AtomicBool) {
    let ts = libc::timespec {
        tv_sec: at.as_secs() as libc::time_t,
        tv_nsec: at.subsec_nanos() as libc::c_long,
    };
    loop {
        // SAFETY: `ts` is a valid timespec; the remaining-time pointer may be null with
        // TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if rc != libc::EINTR || stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// CPU time process `pid` has used so far: its main thread's from `/proc/<pid>/schedstat`
/// (nanoseconds; all of it for a single-threaded process such as an antagonist), else the
/// whole process's `utime + stime` from `/proc/<pid>/stat` (whole clock ticks). A companion
/// with many threads is better read from its cgroup.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|t| schedstat_cpu(&t))
        .or_else(|| stat_cpu(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?))
}

/// The first field of a `schedstat` line: nanoseconds on CPU.
fn schedstat_cpu(text: &str) -> Option<Duration> {
    text.split_whitespace()
        .next()?
        .parse()
        .ok()
        .map(Duration::from_nanos)
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line.
fn stat_cpu(text: &str) -> Option<Duration> {
    // The command name (field 2) may contain spaces: fields are counted after its `)`.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = if per_second > 0 {
        per_second as f64
    } else {
        100.0
    };
    Some(Duration::from_secs_f64(ticks as f64 / per_second))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(on_ms: u64, off_ms: u64, phase_ms: u64) -> AntagonistPlan {
        AntagonistPlan {
            share: 0.5,
            cores: 0.2,
            on: Duration::from_millis(on_ms),
            off: Duration::from_millis(off_ms),
            phase: Duration::from_millis(phase_ms),
            epoch_unix_ms: 1_000_000,
            duration: None,
        }
    }

    #[test]
    fn is_off_before_the_epoch_and_its_phase() {
        let p = plan(400, 600, 250);
        assert!(!is_on(&p, 0));
        assert!(!is_on(&p, 999_999));
        assert!(!is_on(&p, 1_000_000));
        assert!(!is_on(&p, 1_000_249));
        assert!(is_on(&p, 1_000_250));
        assert_eq!(until_switch(&p, 1_000_000), 250);
    }

    #[test]
    fn is_on_for_exactly_its_on_window() {
        let p = plan(400, 600, 0);
        assert!(is_on(&p, 1_000_000));
        assert!(is_on(&p, 1_000_399));
        assert!(!is_on(&p, 1_000_400));
        assert!(!is_on(&p, 1_000_999));
        assert!(is_on(&p, 1_001_000));
        assert_eq!(until_switch(&p, 1_000_000), 400);
        assert_eq!(until_switch(&p, 1_000_399), 1);
        assert_eq!(until_switch(&p, 1_000_400), 600);
        assert_eq!(until_switch(&p, 1_000_999), 1);
    }

    #[test]
    fn keeps_the_timetable_after_many_cycles() {
        let p = plan(400, 600, 250);
        let cycle_start = 1_000_250 + 37 * 1_000;
        assert!(!is_on(&p, cycle_start - 1));
        assert!(is_on(&p, cycle_start));
        assert!(is_on(&p, cycle_start + 399));
        assert!(!is_on(&p, cycle_start + 400));
        assert_eq!(until_switch(&p, cycle_start + 500), 500);
    }

    #[test]
    fn without_off_time_it_stays_on() {
        let p = plan(400, 0, 0);
        assert!((0..5_000).all(|t| is_on(&p, 1_000_000 + t)));
    }

    #[test]
    fn validate_rejects_what_cannot_run() {
        assert!(plan(400, 600, 0).validate().is_ok());
        for bad in [
            AntagonistPlan {
                share: 1.5,
                ..plan(400, 600, 0)
            },
            AntagonistPlan {
                share: f64::NAN,
                ..plan(400, 600, 0)
            },
            AntagonistPlan {
                cores: 0.0,
                ..plan(400, 600, 0)
            },
            plan(0, 600, 0),
        ] {
            let e = bad.validate().unwrap_err();
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn the_done_line_reads_back() {
        let r = AntagonistRun {
            cpu: Duration::from_millis(1234),
            on: Duration::from_millis(5000),
        };
        let line = r.to_string();
        assert_eq!(line, "antagonist done: cpu_s=1.234 on_s=5.000");
        assert_eq!(AntagonistRun::parse(&line), Some(r));
        assert_eq!(AntagonistRun::parse("cpu_s=1.234 on_s=5.000"), Some(r));
        assert_eq!(AntagonistRun::parse("antagonist done: cpu_s=x"), None);
    }

    #[test]
    fn proc_files_parse() {
        assert_eq!(
            schedstat_cpu("123456789 2000 17\n"),
            Some(Duration::from_nanos(123_456_789))
        );
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 99 0 0";
        // SAFETY: sysconf only reads a configuration value.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert_eq!(
            stat_cpu(stat),
            Some(Duration::from_secs_f64(300.0 / per_second))
        );
        assert_eq!(stat_cpu("garbage"), None);
    }

    #[test]
    fn process_cpu_of_this_process_grows() {
        // A test runs off the main thread, and `/proc/<tid>/` names the thread itself.
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() } as u32;
        let before = process_cpu(me).unwrap();
        std::hint::black_box(mix(5_000_000, 1));
        assert!(process_cpu(me).unwrap() > before);
    }

    #[test]
    fn burner_spends_its_budget() {
        let mut b = Burner::new();
        let start = thread_cpu_time();
        b.burn(
            Duration::from_millis(20),
            monotonic() + Duration::from_secs(5),
        );
        let spent = thread_cpu_time() - start;
        assert!(
            spent >= Duration::from_micros(19_500) && spent < Duration::from_millis(25),
            "{spent:?}"
        );
    }
}
