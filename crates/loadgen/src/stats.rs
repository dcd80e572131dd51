//! Recording: each generator thread records into its own histograms (no sharing on the hot
//! path); they are merged once at the end. The per-second timeline is shipped second by second
//! to the coordinator, which merges and summarises each second once every thread has moved past
//! it, so memory stays bounded however long the run.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use hdrhistogram::Histogram;

use crate::results::{self, Errors, Group, Hist, InstanceGroup, Second};

/// How a request ended, for error accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status.
    Status(u16),
    Connect,
    Timeout,
    Io,
}

/// One finished request, as recorded.
#[derive(Debug, Clone, Copy)]
pub struct Completion<'a> {
    pub outcome: Outcome,
    /// What the client saw: from the intended send time in the open model when the request was
    /// due while its connection was busy, else from the actual send.
    pub latency_us: u64,
    /// From the actual send.
    pub service_us: u64,
    /// The completion time's second since measurement started.
    pub second: u64,
    pub cluster: Option<&'a str>,
    pub instance: Option<&'a str>,
    /// Index of the target and of the mix entry the request was.
    pub target: usize,
    pub entry: usize,
}

/// Counters the coordinator reads live (progress display).
#[derive(Default)]
pub struct Live {
    pub responses: AtomicU64,
    pub errors: AtomicU64,
}

/// One second of one thread.
pub struct Bucket {
    pub second: u64,
    pub responses: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
    pub by_cluster: HashMap<String, u64>,
}

/// Messages from threads to the coordinator.
pub enum Report {
    Bucket(Bucket),
    /// The thread will send nothing earlier than this second any more.
    Reached {
        thread: usize,
        second: u64,
    },
}

fn timeline_histogram() -> Histogram<u64> {
    // Two significant digits: enough for a per-second p99, a tenth of the memory.
    Histogram::new_with_bounds(1, results::HIST_MAX_US, 2).expect("valid bounds")
}

/// What one thread measured.
pub struct ThreadStats {
    thread: usize,
    pub responses: u64,
    pub errors: Errors,
    pub latency: Histogram<u64>,
    pub service: Histogram<u64>,
    by_cluster: HashMap<String, (u64, u64, Histogram<u64>)>,
    by_instance: HashMap<String, (String, u64, u64, Histogram<u64>)>,
    by_status: BTreeMap<&'static str, (u64, u64, Histogram<u64>)>,
    /// Indexed by target: a run's targets are known up front, so no lookup by name.
    by_target: Vec<(u64, u64, Histogram<u64>)>,
    /// Indexed by mix entry (one entry without a mix).
    sent_by_entry: Vec<u64>,
    pub late: u64,
    /// Responses that arrived inside the measurement window, whenever they were scheduled.
    pub window_completions: u64,
    bucket: Option<Bucket>,
    /// Dropped by `finish`, which is how the coordinator learns the thread is done.
    to_coordinator: Option<mpsc::Sender<Report>>,
    live: std::sync::Arc<Live>,
}

impl ThreadStats {
    /// Stats of thread `thread`, for a run with `targets` targets and `entries` mix entries.
    pub fn new(
        thread: usize,
        targets: usize,
        entries: usize,
        to_coordinator: mpsc::Sender<Report>,
        live: std::sync::Arc<Live>,
    ) -> ThreadStats {
        ThreadStats {
            thread,
            responses: 0,
            errors: Errors::default(),
            latency: results::new_histogram(),
            service: results::new_histogram(),
            by_cluster: HashMap::new(),
            by_instance: HashMap::new(),
            by_status: BTreeMap::new(),
            by_target: (0..targets)
                .map(|_| (0, 0, results::new_histogram()))
                .collect(),
            sent_by_entry: vec![0; entries],
            late: 0,
            window_completions: 0,
            bucket: None,
            to_coordinator: Some(to_coordinator),
            live,
        }
    }

    /// Records one finished request.
    pub fn record(&mut self, done: &Completion) {
        let error = self.count_error(done.outcome);
        let responded = matches!(done.outcome, Outcome::Status(_));
        if responded {
            self.responses += 1;
            self.live.responses.fetch_add(1, Ordering::Relaxed);
        }
        results::record(&mut self.latency, done.latency_us);
        results::record(&mut self.service, done.service_us);
        // A request whose connection could not be opened never went out.
        if done.outcome != Outcome::Connect {
            self.sent_by_entry[done.entry] += 1;
        }
        self.record_groups(done, responded, error);
        self.record_second(done, responded, error);
    }

    /// Counts an error by kind; whether the outcome was one.
    fn count_error(&mut self, outcome: Outcome) -> bool {
        let counter = match outcome {
            Outcome::Status(s) if s >= 500 => &mut self.errors.status_5xx,
            Outcome::Status(s) if s >= 400 => &mut self.errors.status_4xx,
            Outcome::Status(_) => return false,
            Outcome::Connect => &mut self.errors.connect,
            Outcome::Timeout => &mut self.errors.timeout,
            Outcome::Io => &mut self.errors.io,
        };
        *counter += 1;
        self.live.errors.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The per-status-class, per-target, per-cluster and per-instance groups.
    fn record_groups(&mut self, done: &Completion, responded: bool, error: bool) {
        let latency_us = done.latency_us;
        let s = self
            .by_status
            .entry(status_class(done.outcome))
            .or_insert_with(|| (0, 0, results::new_histogram()));
        s.0 += responded as u64;
        s.1 += error as u64;
        results::record(&mut s.2, latency_us);
        let t = &mut self.by_target[done.target];
        t.0 += responded as u64;
        t.1 += error as u64;
        results::record(&mut t.2, latency_us);
        if let Some(c) = done.cluster {
            let g = match self.by_cluster.get_mut(c) {
                Some(g) => g,
                None => self
                    .by_cluster
                    .entry(c.to_owned())
                    .or_insert_with(|| (0, 0, results::new_histogram())),
            };
            g.0 += 1;
            g.1 += error as u64;
            results::record(&mut g.2, latency_us);
        }
        if let Some(i) = done.instance {
            let g = match self.by_instance.get_mut(i) {
                Some(g) => g,
                None => self.by_instance.entry(i.to_owned()).or_insert_with(|| {
                    let cluster = done.cluster.unwrap_or("?").to_owned();
                    (cluster, 0, 0, results::new_histogram())
                }),
            };
            g.1 += 1;
            g.2 += error as u64;
            results::record(&mut g.3, latency_us);
        }
    }

    /// The request's second of the timeline.
    fn record_second(&mut self, done: &Completion, responded: bool, error: bool) {
        self.tick(done.second);
        let b = self.bucket.as_mut().expect("tick opened a bucket");
        b.responses += responded as u64;
        b.errors += error as u64;
        results::record(&mut b.latency, done.latency_us);
        if let Some(c) = done.cluster {
            match b.by_cluster.get_mut(c) {
                Some(n) => *n += 1,
                None => {
                    b.by_cluster.insert(c.to_owned(), 1);
                }
            }
        }
    }

    /// Moves the thread's clock to `second`, shipping finished buckets.
    pub fn tick(&mut self, second: u64) {
        match &self.bucket {
            Some(b) if b.second >= second => return,
            Some(_) => {
                let done = self.bucket.take().expect("checked");
                self.send(Report::Bucket(done));
            }
            None => {}
        }
        self.send(Report::Reached {
            thread: self.thread,
            second,
        });
        self.bucket = Some(Bucket {
            second,
            responses: 0,
            errors: 0,
            latency: timeline_histogram(),
            by_cluster: HashMap::new(),
        });
    }

    fn send(&self, r: Report) {
        if let Some(tx) = &self.to_coordinator {
            let _ = tx.send(r);
        }
    }

    /// Ships the last bucket and hangs up: the thread is done.
    pub fn finish(&mut self) {
        if let Some(b) = self.bucket.take() {
            self.send(Report::Bucket(b));
        }
        self.send(Report::Reached {
            thread: self.thread,
            second: u64::MAX,
        });
        self.to_coordinator = None;
    }
}

/// Every thread's results, merged.
pub struct Merged {
    pub responses: u64,
    pub errors: Errors,
    pub latency: Histogram<u64>,
    pub service: Histogram<u64>,
    pub late: u64,
    pub window_completions: u64,
    pub by_cluster: BTreeMap<String, Group>,
    pub by_instance: BTreeMap<String, InstanceGroup>,
    pub by_status_class: BTreeMap<String, Group>,
    pub by_target: BTreeMap<String, Group>,
    /// Requests sent per mix entry (see `ThreadStats::record`).
    pub sent_by_entry: Vec<u64>,
}

/// The status class results.json groups an outcome under.
fn status_class(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Status(100..=199) => "1xx",
        Outcome::Status(200..=299) => "2xx",
        Outcome::Status(300..=399) => "3xx",
        Outcome::Status(400..=499) => "4xx",
        Outcome::Status(_) => "5xx",
        Outcome::Connect => "connect error",
        Outcome::Timeout => "timeout",
        Outcome::Io => "i/o error",
    }
}

/// Merges every thread's stats; `targets` names the targets by index.
pub fn merge(threads: Vec<ThreadStats>, targets: &[String]) -> Merged {
    let mut latency = results::new_histogram();
    let mut service = results::new_histogram();
    let mut errors = Errors::default();
    let mut responses = 0;
    let mut late = 0;
    let mut window_completions = 0;
    let mut clusters: BTreeMap<String, (u64, u64, Histogram<u64>)> = BTreeMap::new();
    let mut instances: BTreeMap<String, (String, u64, u64, Histogram<u64>)> = BTreeMap::new();
    let mut statuses: BTreeMap<String, (u64, u64, Histogram<u64>)> = BTreeMap::new();
    let mut by_target: Vec<(u64, u64, Histogram<u64>)> = targets
        .iter()
        .map(|_| (0, 0, results::new_histogram()))
        .collect();
    let mut sent_by_entry: Vec<u64> = Vec::new();
    for t in threads {
        latency.add(&t.latency).expect("same bounds");
        service.add(&t.service).expect("same bounds");
        responses += t.responses;
        late += t.late;
        window_completions += t.window_completions;
        errors.connect += t.errors.connect;
        errors.timeout += t.errors.timeout;
        errors.io += t.errors.io;
        errors.status_4xx += t.errors.status_4xx;
        errors.status_5xx += t.errors.status_5xx;
        for (k, (n, e, h)) in t.by_cluster {
            let g = clusters
                .entry(k)
                .or_insert_with(|| (0, 0, results::new_histogram()));
            g.0 += n;
            g.1 += e;
            g.2.add(&h).expect("same bounds");
        }
        for (k, (c, n, e, h)) in t.by_instance {
            let g = instances
                .entry(k)
                .or_insert_with(|| (c, 0, 0, results::new_histogram()));
            g.1 += n;
            g.2 += e;
            g.3.add(&h).expect("same bounds");
        }
        for (g, (n, e, h)) in by_target.iter_mut().zip(t.by_target) {
            g.0 += n;
            g.1 += e;
            g.2.add(&h).expect("same bounds");
        }
        sent_by_entry.resize(sent_by_entry.len().max(t.sent_by_entry.len()), 0);
        for (sum, n) in sent_by_entry.iter_mut().zip(t.sent_by_entry) {
            *sum += n;
        }
        for (k, (n, e, h)) in t.by_status {
            let g = statuses
                .entry(k.to_owned())
                .or_insert_with(|| (0, 0, results::new_histogram()));
            g.0 += n;
            g.1 += e;
            g.2.add(&h).expect("same bounds");
        }
    }
    let group = |(n, e, h): (u64, u64, Histogram<u64>)| Group {
        responses: n,
        errors: e,
        latency: Hist::from_histogram(&h),
    };
    Merged {
        responses,
        errors,
        latency,
        service,
        late,
        window_completions,
        by_cluster: clusters.into_iter().map(|(k, v)| (k, group(v))).collect(),
        by_instance: instances
            .into_iter()
            .map(|(k, (c, n, e, h))| {
                (
                    k,
                    InstanceGroup {
                        cluster: c,
                        responses: n,
                        errors: e,
                        latency: Hist::from_histogram(&h),
                    },
                )
            })
            .collect(),
        by_status_class: statuses.into_iter().map(|(k, v)| (k, group(v))).collect(),
        by_target: targets
            .iter()
            .cloned()
            .zip(by_target.into_iter().map(group))
            .collect(),
        sent_by_entry,
    }
}

/// Merges per-second buckets as they arrive and summarises each second once every thread is
/// past it.
pub struct Timeline {
    threads: usize,
    reached: Vec<u64>,
    open: BTreeMap<u64, Bucket>,
    pub done: Vec<Second>,
}

impl Timeline {
    pub fn new(threads: usize) -> Timeline {
        Timeline {
            threads,
            reached: vec![0; threads],
            open: BTreeMap::new(),
            done: Vec::new(),
        }
    }

    pub fn absorb(&mut self, r: Report) {
        match r {
            Report::Bucket(b) => match self.open.get_mut(&b.second) {
                Some(m) => {
                    m.responses += b.responses;
                    m.errors += b.errors;
                    m.latency.add(&b.latency).expect("same bounds");
                    for (k, v) in b.by_cluster {
                        *m.by_cluster.entry(k).or_default() += v;
                    }
                }
                None => {
                    self.open.insert(b.second, b);
                }
            },
            Report::Reached { thread, second } => {
                if thread < self.threads {
                    self.reached[thread] = self.reached[thread].max(second);
                }
            }
        }
        // Every second below the slowest thread's clock is final.
        let floor = self.reached.iter().copied().min().unwrap_or(0);
        while let Some((&s, _)) = self.open.first_key_value() {
            if s >= floor {
                break;
            }
            let b = self.open.remove(&s).expect("present");
            self.done.push(summarise(b));
        }
    }

    /// The most recent finished second, for the progress display.
    pub fn last(&self) -> Option<&Second> {
        self.done.last()
    }

    pub fn finish(mut self) -> Vec<Second> {
        let rest: Vec<Bucket> = std::mem::take(&mut self.open).into_values().collect();
        self.done.extend(rest.into_iter().map(summarise));
        self.done
    }
}

fn summarise(b: Bucket) -> Second {
    let ms = |us: u64| us as f64 / 1000.0;
    Second {
        t: b.second as f64,
        responses: b.responses,
        errors: b.errors,
        p50_ms: ms(b.latency.value_at_quantile(0.5)),
        p99_ms: ms(b.latency.value_at_quantile(0.99)),
        max_ms: if b.latency.is_empty() {
            0.0
        } else {
            ms(b.latency.max())
        },
        responses_by_cluster: b.by_cluster.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn threads_merge_and_the_timeline_closes_seconds_in_order() {
        let (tx, rx) = mpsc::channel();
        let live = Arc::new(Live::default());
        let mut a = ThreadStats::new(0, 2, 2, tx.clone(), live.clone());
        let mut b = ThreadStats::new(1, 2, 2, tx, live.clone());
        let done = |outcome, latency_us, second, cluster, instance, target, entry| Completion {
            outcome,
            latency_us,
            service_us: latency_us * 9 / 10,
            second,
            cluster,
            instance,
            target,
            entry,
        };
        a.record(&done(
            Outcome::Status(200),
            1_000,
            0,
            Some("1"),
            Some("i-a"),
            0,
            0,
        ));
        b.record(&done(
            Outcome::Status(200),
            3_000,
            0,
            Some("2"),
            Some("i-b"),
            1,
            1,
        ));
        a.record(&done(
            Outcome::Status(503),
            5_000,
            1,
            Some("1"),
            Some("i-a"),
            0,
            1,
        ));
        b.record(&done(Outcome::Connect, 100, 2, None, None, 1, 1));
        a.finish();
        b.finish();
        let mut tl = Timeline::new(2);
        for r in rx.try_iter() {
            tl.absorb(r);
        }
        let seconds = tl.finish();
        assert_eq!(
            seconds.iter().map(|s| s.t).collect::<Vec<_>>(),
            vec![0.0, 1.0, 2.0]
        );
        assert_eq!(seconds[0].responses, 2);
        assert_eq!(seconds[0].responses_by_cluster.get("1"), Some(&1));
        assert_eq!(seconds[1].errors, 1);
        let m = merge(vec![a, b], &["http://a/".into(), "http://b/".into()]);
        assert_eq!(m.responses, 3);
        assert_eq!(m.errors.status_5xx, 1);
        assert_eq!(m.errors.connect, 1);
        assert_eq!(m.errors.total(), 2);
        assert_eq!(m.by_cluster["1"].responses, 2);
        assert_eq!(m.by_instance["i-a"].cluster, "1");
        assert_eq!(m.by_status_class["5xx"].errors, 1);
        assert_eq!(live.responses.load(Ordering::Relaxed), 3);
        assert_eq!(m.latency.len(), 4);
        // Per target: every outcome; per mix entry: what went out (not the refused connect).
        assert_eq!(m.by_target["http://a/"].responses, 2);
        assert_eq!(m.by_target["http://a/"].errors, 1);
        assert_eq!(m.by_target["http://b/"].responses, 1);
        assert_eq!(m.by_target["http://b/"].errors, 1);
        assert_eq!(m.by_target["http://b/"].latency.count, 2);
        assert_eq!(m.sent_by_entry, vec![1, 2]);
    }
}
