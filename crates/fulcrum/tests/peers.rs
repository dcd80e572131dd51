//! nginx and HAProxy as peers of a real local deployment (`fulcrum up`): configs each peer's
//! own parser accepts, routing like fulcrum's balancer, the per-request headers, recorded as
//! companions, removed by `peers::stop` and by `fulcrum down`.

mod fixture;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fixture::{get, run, seed_topology, Reply, Scratch, Stub, StubRequest};
use fulcrum_deploy::companion::Role;
use fulcrum_deploy::state::{CompanionState, State, StateDir};
use fulcrum_experiment::peers::{self, PeerKind, PeerRoute, PeerSetup};
use http_body_util::Full;

/// Both peers' binaries; `None` (after saying why) when one is missing outside CI.
fn peers_or_skip(test: &str) -> Option<()> {
    let missing: Vec<&str> = PeerKind::ALL
        .into_iter()
        .filter(|k| k.find().is_none())
        .map(|k| k.name())
        .collect();
    if missing.is_empty() {
        return Some(());
    }
    let why = format!(
        "{} not installed (scripts/install-test-deps installs them)",
        missing.join(" and ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test} needs nginx and HAProxy and CI must run it: {why}");
    }
    eprintln!("SKIPPED {test}: {why} (this would fail under CI=true)");
    None
}

/// A `fulcrum up` of two clusters with one worker each, taken down when dropped.
struct Deployment {
    scratch: Scratch,
    name: String,
    topology: String,
    state_dir: PathBuf,
    /// `(cluster, address)` of each worker.
    workers: Vec<(u32, SocketAddr)>,
    cgroups: bool,
}

impl Deployment {
    fn up(test: &str) -> Deployment {
        // In CI cgroups are required; elsewhere their absence only skips the cgroup checks.
        let cgroups = fixture::cgroups_or_skip(&format!("{test}'s cgroup checks")).is_some();
        let scratch = Scratch::new("peers");
        let name = format!("tpeers-{}", std::process::id());
        let topology = scratch.path("topology.toml");
        std::fs::write(&topology, seed_topology(&name, Some((1, 1)))).unwrap();
        let mut d = Deployment {
            state_dir: scratch.path("state"),
            topology: topology.to_str().unwrap().to_owned(),
            scratch,
            name,
            workers: Vec::new(),
            cgroups,
        };
        let mut args = vec!["up", "--json"];
        if !cgroups {
            args.push("--no-emulation");
        }
        let (code, out, err) = d.fulcrum(&args);
        assert_eq!(code, 0, "fulcrum up: {out}\n{err}");
        let up: serde_json::Value = serde_json::from_str(&out).unwrap();
        d.workers = up["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                let url = w["url"].as_str().unwrap();
                let addr = url.trim_start_matches("http://").trim_end_matches('/');
                (w["cluster"].as_u64().unwrap() as u32, addr.parse().unwrap())
            })
            .collect();
        assert_eq!(d.workers.len(), 2, "{out}");
        d
    }

    /// `fulcrum ARGS -t <topology> --state-dir <dir>`.
    fn fulcrum(&self, args: &[&str]) -> (i32, String, String) {
        let state_dir = self.state_dir.to_str().unwrap();
        let mut all = args.to_vec();
        all.extend(["-t", &self.topology, "--state-dir", state_dir]);
        run(&all)
    }

    fn worker(&self, cluster: u32) -> SocketAddr {
        self.workers.iter().find(|w| w.0 == cluster).unwrap().1
    }

    /// The seed's routes, as the experiment hands them to a peer.
    fn routes(&self) -> Vec<PeerRoute> {
        let route = |prefix: &str, workers: Vec<SocketAddr>| PeerRoute {
            prefix: prefix.into(),
            workers,
        };
        vec![
            route("/cluster1", vec![self.worker(1)]),
            route("/cluster2", vec![self.worker(2)]),
            route("/", vec![self.worker(1), self.worker(2)]),
        ]
    }

    fn setup(&self, routes: Vec<PeerRoute>) -> PeerSetup {
        let port = peers::free_loopback_port().unwrap();
        PeerSetup {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            threads: 2,
            routes,
            dir: self.scratch.path("peers"),
        }
    }

    fn state(&self) -> Option<State> {
        StateDir::new(&self.state_dir, &self.name).load().unwrap()
    }

    fn companion(&self, name: &str) -> Option<CompanionState> {
        self.state()?
            .companions
            .into_iter()
            .find(|c| c.name == name)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = self.fulcrum(&["down"]);
    }
}

/// Every process of a peer: its cgroup's, else the recorded one and its children.
fn peer_pids(c: &CompanionState) -> Vec<u32> {
    if let Some(g) = &c.own_cgroup {
        return g.procs();
    }
    let pid = c.process.as_ref().unwrap().pid;
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid)
        .chain(children.split_whitespace().filter_map(|p| p.parse().ok()))
        .collect()
}

/// Gone, or a zombie nobody of ours can signal any more.
fn gone(pid: u32) -> bool {
    fulcrum_deploy::process::reap();
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

fn cgroup_dirs(c: &CompanionState) -> Vec<PathBuf> {
    c.own_cgroup
        .iter()
        .flat_map(|g| {
            [g.cpu.clone(), g.cpuacct.clone()]
                .into_iter()
                .chain(g.memory.clone())
        })
        .collect()
}

/// A stand-in worker answering `/echo` with what it was sent, so the peers' headers show.
fn echo_worker() -> (Stub, Arc<Mutex<Vec<StubRequest>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let stub = Stub::start(move |req| {
        if req.target.starts_with("/echo") {
            log.lock().unwrap().push(req.clone());
        }
        let mut r = http::Response::new(Full::new(Bytes::from_static(b"echo")));
        // Marks it as a worker's answer, as `fulcrum worker` does.
        r.headers_mut()
            .insert("x-fulcrum-instance", http::HeaderValue::from_static("echo"));
        r
    });
    (stub, seen)
}

fn cluster_of(r: &Reply) -> Option<&str> {
    r.headers.get("x-fulcrum-cluster")?.to_str().ok()
}

/// `/cluster1` only by cluster 1, `/cluster2` only by cluster 2, `/` by both, and `/cluster10`
/// not taken for `/cluster1`: the `/` route sends it to both clusters, whose workers answer 404.
fn assert_routes_like_fulcrum(kind: PeerKind, url: &str) {
    for _ in 0..10 {
        for (path, cluster) in [("/cluster1", "1"), ("/cluster1/x", "1"), ("/cluster2", "2")] {
            let r = get(&format!("{url}{path}"));
            assert_eq!(cluster_of(&r), Some(cluster), "{kind:?} {path}");
        }
    }
    let both = BTreeSet::from(["1", "2"]);
    // Each path on its own run of requests: interleaved with another path of the same route,
    // a strict alternation (HAProxy's tie-break) would send each path to one worker only.
    for (path, status) in [("/", 200), ("/cluster10", 404)] {
        let replies: Vec<Reply> = (0..20).map(|_| get(&format!("{url}{path}"))).collect();
        assert!(
            replies.iter().all(|r| r.status == status),
            "{kind:?} {path}"
        );
        let clusters: BTreeSet<&str> = replies
            .iter()
            .map(|r| cluster_of(r).expect("a worker answered"))
            .collect();
        assert_eq!(clusters, both, "{kind:?}: {path} reaches both clusters");
    }
}

/// X-Forwarded-For appended, X-Request-Id made up when absent and kept when sent (and echoed
/// back), HTTP/1.1 to the worker without `Connection: close`.
fn assert_forwarded_headers(kind: PeerKind, url: &str, seen: &Mutex<Vec<StubRequest>>) {
    seen.lock().unwrap().clear();
    let plain = get(&format!("{url}/echo"));
    let generated = plain.header("x-request-id").to_owned();
    let req = http::Request::builder()
        .uri(format!("{url}/echo"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-request-id", "client-id-1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let sent = fixture::block_on(async { fixture::client().request(req).await.unwrap() });
    assert_eq!(sent.headers()["x-request-id"], "client-id-1", "{kind:?}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{kind:?}: {seen:?}");
    let values = |r: &StubRequest, name: &str| -> String {
        let all: Vec<&str> = r
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        all.join(", ")
    };
    assert_eq!(values(&seen[0], "x-forwarded-for"), "127.0.0.1", "{kind:?}");
    assert_eq!(values(&seen[0], "x-request-id"), generated, "{kind:?}");
    assert!(generated.len() >= 16, "{kind:?}: {generated}");
    assert_eq!(
        values(&seen[1], "x-forwarded-for"),
        "203.0.113.9, 127.0.0.1",
        "{kind:?}"
    );
    assert_eq!(values(&seen[1], "x-request-id"), "client-id-1", "{kind:?}");
    for r in seen.iter() {
        assert_eq!(r.version, http::Version::HTTP_11, "{kind:?}");
        assert_ne!(
            values(r, "connection").to_ascii_lowercase(),
            "close",
            "{kind:?}"
        );
    }
}

#[test]
fn peers_balance_the_deployments_workers_and_leave_with_it() {
    let test = "peers_balance_the_deployments_workers_and_leave_with_it";
    let Some(()) = peers_or_skip(test) else {
        return;
    };
    let d = Deployment::up(test);
    let (echo, seen) = echo_worker();
    let mut routes = d.routes();
    routes.push(PeerRoute {
        prefix: "/echo".into(),
        workers: vec![echo.addr],
    });

    // (a) Both peers route like fulcrum, forward the same headers, and are recorded.
    let mut running = Vec::new();
    for kind in PeerKind::ALL {
        let p = peers::start(
            &d.state_dir,
            &d.name,
            kind.name(),
            kind,
            &d.setup(routes.clone()),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(p.kind, kind);
        assert!(p
            .version
            .as_deref()
            .is_some_and(|v| v.starts_with(char::is_numeric)));
        assert_routes_like_fulcrum(kind, &p.url);
        assert_forwarded_headers(kind, &p.url, &seen);
        running.push(p);
    }
    let state = d.state().unwrap();
    let names: Vec<&str> = state.companions.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["nginx", "haproxy"]);
    for c in &state.companions {
        assert_eq!(c.role, Role::Peer);
        assert!(c.process.as_ref().unwrap().is_alive(), "{}", c.name);
        assert_eq!(c.own_cgroup.is_some(), d.cgroups, "{}", c.name);
    }

    // (c) A peer that exits after starting (its port is taken) is one error carrying its log,
    // and leaves nothing behind in the state.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    for kind in PeerKind::ALL {
        let mut setup = d.setup(d.routes());
        setup.listen = taken.local_addr().unwrap();
        let name = format!("{}-unbound", kind.name());
        let e = peers::start(&d.state_dir, &d.name, &name, kind, &setup).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("exited") && e.contains("Address already in use"),
            "{e}"
        );
        assert!(d.companion(&name).is_none(), "{name} left in the state");
        println!("{kind:?}: {e}");
    }

    // `peers::stop` removes each: every process gone, its cgroup gone, out of the state.
    for p in &running {
        let c = d.companion(&p.name).unwrap();
        let pids = peer_pids(&c);
        assert!(!pids.is_empty());
        peers::stop(&d.state_dir, &d.name, &p.name).unwrap();
        for pid in pids {
            assert!(gone(pid), "{} pid {pid} survived peers::stop", p.name);
        }
        for dir in cgroup_dirs(&c) {
            assert!(!dir.exists(), "{} survived peers::stop", dir.display());
        }
        assert!(
            d.companion(&p.name).is_none(),
            "{} still in the state",
            p.name
        );
    }

    // (b) Peers left running (replica-style names; no `/` route, so unrouted paths are the
    // peer's own 404) are removed by `fulcrum down`.
    let mut left = Vec::new();
    for kind in PeerKind::ALL {
        let name = format!("{}-2", kind.name());
        let setup = d.setup(vec![d.routes().remove(0)]);
        let p = peers::start(&d.state_dir, &d.name, &name, kind, &setup)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(cluster_of(&get(&format!("{}/cluster1", p.url))), Some("1"));
        for path in ["/cluster10", "/"] {
            let r = get(&format!("{}{path}", p.url));
            assert_eq!((r.status, cluster_of(&r)), (404, None), "{kind:?} {path}");
        }
        left.push(d.companion(&name).unwrap());
    }
    let pids: Vec<u32> = left.iter().flat_map(peer_pids).collect();
    let (code, out, err) = d.fulcrum(&["down"]);
    assert_eq!(code, 0, "{out}{err}");
    for pid in pids {
        assert!(gone(pid), "peer pid {pid} survived fulcrum down");
    }
    for dir in left.iter().flat_map(cgroup_dirs) {
        assert!(!dir.exists(), "{} survived fulcrum down", dir.display());
    }
    assert!(d.state().is_none());
}

#[test]
fn a_missing_binary_or_a_rejected_config_is_one_clear_error() {
    let test = "a_missing_binary_or_a_rejected_config_is_one_clear_error";
    let Some(()) = peers_or_skip(test) else {
        return;
    };
    // Nothing starts either way, so no deployment is needed: the state is never touched.
    let scratch = Scratch::new("peers-errors");
    let state_dir = scratch.path("state");
    let worker = SocketAddr::from(([127, 0, 0, 1], 9));
    let setup = |prefix: &str| PeerSetup {
        listen: SocketAddr::from(([127, 0, 0, 1], peers::free_loopback_port().unwrap())),
        threads: 1,
        routes: vec![PeerRoute {
            prefix: prefix.into(),
            workers: vec![worker],
        }],
        dir: scratch.path("peers"),
    };

    let missing = Path::new("/nonexistent/nginx");
    let e = peers::start_with(
        &state_dir,
        "none",
        "nginx",
        PeerKind::Nginx,
        missing,
        &setup("/"),
    )
    .unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("/nonexistent/nginx") && e.contains("No such file"),
        "{e}"
    );

    // A prefix no topology would have, which both parsers reject.
    for (kind, says) in [(PeerKind::Nginx, "[emerg]"), (PeerKind::Haproxy, "[ALERT]")] {
        let e =
            peers::start(&state_dir, "none", kind.name(), kind, &setup("/a b;\"c")).unwrap_err();
        let e = format!("{e:#}");
        let config = scratch.path("peers").join(format!("{}.conf", kind.name()));
        assert!(
            e.contains(&format!("{} rejected {}", kind.name(), config.display())),
            "{e}"
        );
        assert!(e.contains(says), "{kind:?} gives its own message: {e}");
        println!("{kind:?}: {e}");
    }
    assert!(
        !state_dir.exists(),
        "a failed check must not create a deployment"
    );

    // A route set without workers is refused before anything is written.
    let mut empty = setup("/");
    empty.routes[0].workers.clear();
    let e = peers::start(&state_dir, "none", "nginx", PeerKind::Nginx, &empty).unwrap_err();
    assert!(e.to_string().contains("no route has a worker"), "{e}");
}
