//! Peer balancers for the shoot-out: nginx (`least_conn`) and HAProxy (`leastconn`) in front of
//! the same workers as fulcrum's balancer, with the same thread count.
//!
//! Their configs are generated from the deployment and do the per-request work fulcrum's
//! balancer does (X-Forwarded-For appended, X-Forwarded-Proto, an X-Request-Id set when absent
//! and echoed on the response; keep-alive connections to workers; longest-prefix routes on
//! segment boundaries; no access log). Each instance is a companion of the deployment: recorded
//! in its state before it starts, so Ctrl-C and `fulcrum down` remove it too.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use fulcrum_deploy::companion::{self, CompanionSpec, Placement, Role};
use fulcrum_deploy::process::log_tail;
use fulcrum_deploy::state::CompanionState;
use serde::{Deserialize, Serialize};

/// How long a started peer has to answer with a worker's response.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// One readiness probe's bound.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Every worker response carries it; a response without it came from the peer itself.
const WORKER_HEADER: &str = "x-fulcrum-instance";
/// Client connections each peer accepts at most, as fulcrum's `limits.max_connections`.
const MAX_CONNECTIONS: usize = 10_000;
/// Idle keep-alive connections to workers nginx keeps per worker process.
const NGINX_UPSTREAM_IDLE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerKind {
    Nginx,
    Haproxy,
}

impl PeerKind {
    pub const ALL: [PeerKind; 2] = [PeerKind::Nginx, PeerKind::Haproxy];

    /// The program's name, as its binary is called.
    pub fn name(self) -> &'static str {
        match self {
            PeerKind::Nginx => "nginx",
            PeerKind::Haproxy => "haproxy",
        }
    }

    /// The balancing rule, as the peer's config spells it.
    pub fn policy(self) -> &'static str {
        match self {
            PeerKind::Nginx => "least_conn",
            PeerKind::Haproxy => "leastconn",
        }
    }

    /// The Debian package that installs it.
    pub fn package(self) -> &'static str {
        match self {
            PeerKind::Nginx => "nginx-light",
            PeerKind::Haproxy => "haproxy",
        }
    }

    /// The binary: on PATH, else in the sbin directories a non-root PATH often lacks.
    pub fn find(self) -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        dirs.extend(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from));
        find_in(&dirs, self.name())
    }

    /// The version `binary -v` reports, e.g. `1.22.1` or `2.6.12-1+deb12u4`.
    pub fn version(self, binary: &Path) -> Option<String> {
        let out = Command::new(binary).arg("-v").output().ok()?;
        // nginx prints it on stderr, HAProxy on stdout.
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        parse_version(&text)
    }

    /// Checks a config with the peer's own parser: `Err` holds its message.
    fn check(self, binary: &Path, config: &Path, run_dir: &Path) -> Result<(), String> {
        let mut cmd = Command::new(binary);
        match self {
            PeerKind::Nginx => cmd
                .args(["-t", "-q", "-c"])
                .arg(config)
                .arg("-e")
                .arg(error_log(run_dir)),
            PeerKind::Haproxy => cmd.arg("-c").arg("-f").arg(config),
        };
        let out = cmd
            .output()
            .map_err(|e| format!("could not run {}: {e}", binary.display()))?;
        if out.status.success() {
            return Ok(());
        }
        Err(peer_message(&out))
    }

    /// The command that runs it in the foreground, as the process to signal (nginx's master;
    /// HAProxy in single-process mode).
    fn command(self, binary: &Path, config: &Path, run_dir: &Path) -> Command {
        let mut cmd = Command::new(binary);
        match self {
            // `-e`: errors from before the config is read go under the run directory too.
            PeerKind::Nginx => cmd.arg("-c").arg(config).arg("-e").arg(error_log(run_dir)),
            PeerKind::Haproxy => cmd.arg("-db").arg("-f").arg(config),
        };
        cmd
    }
}

/// What a peer balances: where it listens, its threads, its routes, where its files go.
#[derive(Debug, Clone)]
pub struct PeerSetup {
    pub listen: SocketAddr,
    pub threads: usize,
    pub routes: Vec<PeerRoute>,
    /// Where its files go: [`render`] puts the pid file, error log and temporary files (nginx)
    /// here; [`start`] writes `<dir>/<name>.conf` and gives each instance `<dir>/<name>/`.
    pub dir: PathBuf,
}

/// A path prefix (matched as fulcrum matches it) and the workers that serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoute {
    pub prefix: String,
    pub workers: Vec<SocketAddr>,
}

/// A started peer.
#[derive(Debug, Clone)]
pub struct RunningPeer {
    /// Its companion name in the deployment.
    pub name: String,
    pub kind: PeerKind,
    /// `http://listen`.
    pub url: String,
    pub version: Option<String>,
}

/// The peer's complete config for `setup`.
pub fn render(kind: PeerKind, setup: &PeerSetup) -> String {
    match kind {
        PeerKind::Nginx => nginx_config(setup, running_as_root()),
        PeerKind::Haproxy => haproxy_config(setup),
    }
}

/// Starts the installed `kind` as companion `name` of `deployment` and waits until a worker
/// answers through it.
pub fn start(
    state_dir: &Path,
    deployment: &str,
    name: &str,
    kind: PeerKind,
    setup: &PeerSetup,
) -> anyhow::Result<RunningPeer> {
    let binary = kind.find().ok_or_else(|| {
        anyhow!(
            "`{}` is not installed (not on PATH, in /usr/sbin or /usr/local/sbin); on Debian: \
             apt-get install {}",
            kind.name(),
            kind.package()
        )
    })?;
    start_with(state_dir, deployment, name, kind, &binary, setup)
}

/// [`start`] with a given binary (a build of one's own, or one not on PATH).
pub fn start_with(
    state_dir: &Path,
    deployment: &str,
    name: &str,
    kind: PeerKind,
    binary: &Path,
    setup: &PeerSetup,
) -> anyhow::Result<RunningPeer> {
    if setup.routes.iter().all(|r| r.workers.is_empty()) {
        bail!("{} `{name}`: no route has a worker to balance", kind.name());
    }
    let (config, run_dir) = write_config(name, kind, setup)?;
    kind.check(binary, &config, &run_dir)
        .map_err(|why| anyhow!("{} rejected {}: {why}", kind.name(), config.display()))?;
    let spec = CompanionSpec {
        name: name.to_owned(),
        role: Role::Peer,
        command: kind.command(binary, &config, &run_dir),
        placement: Placement::OwnGroup,
    };
    let started = companion::start(state_dir, deployment, spec);
    let ready = started
        .map_err(anyhow::Error::from)
        .and_then(|c| wait_ready(&c, setup, &run_dir));
    if let Err(e) = ready {
        // A half-started peer must not outlive the error, nor stay in the state.
        let _ = companion::stop(state_dir, deployment, name);
        bail!("{} `{name}` did not start: {e:#}", kind.name());
    }
    Ok(RunningPeer {
        name: name.to_owned(),
        kind,
        url: format!("http://{}", setup.listen),
        version: kind.version(binary),
    })
}

/// Stops companion `name` and removes it from the deployment's state (nothing if absent).
pub fn stop(state_dir: &Path, deployment: &str, name: &str) -> anyhow::Result<()> {
    companion::stop(state_dir, deployment, name)
        .with_context(|| format!("stopping `{name}` of `{deployment}`"))?;
    Ok(())
}

/// A loopback port free right now (the OS picks; a peer cannot announce the one it got).
pub fn free_loopback_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// Writes `<dir>/<name>.conf`; the instance's runtime files go to `<dir>/<name>/`, so
/// instances sharing `dir` (replicas) never share a pid file or temporary directory.
fn write_config(
    name: &str,
    kind: PeerKind,
    setup: &PeerSetup,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = std::path::absolute(&setup.dir)
        .with_context(|| format!("resolving {}", setup.dir.display()))?;
    let run_dir = dir.join(name);
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let config = dir.join(format!("{name}.conf"));
    let instance = PeerSetup {
        dir: run_dir.clone(),
        ..setup.clone()
    };
    std::fs::write(&config, render(kind, &instance))
        .with_context(|| format!("writing {}", config.display()))?;
    Ok((config, run_dir))
}

/// What a failed check said: only its errors when the peer marks them (HAProxy surrounds its
/// alerts with notices), on one line.
fn peer_message(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("[emerg]") || l.contains("[ALERT]"))
        .collect();
    if errors.is_empty() { lines } else { errors }.join(" | ")
}

fn error_log(run_dir: &Path) -> PathBuf {
    run_dir.join("error.log")
}

// ───────────── nginx ─────────────

fn nginx_config(setup: &PeerSetup, as_root: bool) -> String {
    let dir = setup.dir.display();
    let mut out =
        String::from("# nginx in front of fulcrum's workers, generated by `fulcrum experiment`.\n");
    if as_root {
        // Workers otherwise run as `nobody`, who may not reach temp files under a private
        // directory (a state dir under /root): large bodies would then fail with 500.
        out.push_str("user root;\n");
    }
    let _ = write!(
        out,
        "worker_processes {threads};
# In the foreground with its master, so the recorded PID is the master's.
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    # Each proxied request holds a client and a worker connection.
    worker_connections {connections};
}}

http {{
    access_log off;
    keepalive_timeout 60s;
    keepalive_requests 1000000;
    client_header_timeout 60s;
    client_body_timeout 60s;
    send_timeout 60s;
    client_max_body_size 10m;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    # A client's X-Request-Id is kept; one is made up when absent.
    map $http_x_request_id $fulcrum_request_id {{
        \"\" $request_id;
        default $http_x_request_id;
    }}

    proxy_http_version 1.1;
    proxy_set_header Connection \"\";
    proxy_set_header Host $http_host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Request-Id $fulcrum_request_id;
    add_header X-Request-Id $fulcrum_request_id always;
    proxy_connect_timeout 1s;
    proxy_send_timeout 60s;
    proxy_read_timeout 60s;
",
        threads = setup.threads.max(1),
        connections = 2 * MAX_CONNECTIONS,
    );
    for (i, r) in setup.routes.iter().enumerate() {
        out.push_str(&nginx_upstream(i, r));
    }
    let _ = write!(
        out,
        "
    server {{
        listen {} backlog={MAX_CONNECTIONS};
{}    }}
}}
",
        setup.listen,
        nginx_locations(&setup.routes)
    );
    out
}

fn nginx_upstream(i: usize, r: &PeerRoute) -> String {
    if r.workers.is_empty() {
        return String::new();
    }
    let servers: String = r
        .workers
        .iter()
        .map(|w| format!("        server {w};\n"))
        .collect();
    format!(
        "
    # {prefix}
    upstream route{i} {{
        least_conn;
        # Shared by the worker processes, so least_conn sees every in-flight request.
        zone route{i} 64k;
{servers}        keepalive {NGINX_UPSTREAM_IDLE};
        keepalive_requests 1000000;
    }}
",
        prefix = r.prefix
    )
}

/// One location per prefix that ends in `/`, else an exact one plus one for what lies below.
fn nginx_locations(routes: &[PeerRoute]) -> String {
    let mut out = String::new();
    for (i, r) in routes.iter().enumerate() {
        let action = nginx_action(routes, Some(i));
        let p = &r.prefix;
        if p.ends_with('/') {
            let _ = writeln!(out, "        location {p} {{ {action} }}");
            if let Some(bare) = p.strip_suffix('/').filter(|b| !b.is_empty()) {
                // nginx would redirect `/api` to `/api/`; fulcrum routes it like any path.
                if !routes.iter().any(|o| o.prefix == bare) {
                    let action = nginx_action(routes, route_for(routes, bare));
                    let _ = writeln!(out, "        location = {bare} {{ {action} }}");
                }
            }
        } else {
            let _ = writeln!(out, "        location = {p} {{ {action} }}");
            let _ = writeln!(out, "        location {p}/ {{ {action} }}");
        }
    }
    if !routes.iter().any(|r| r.prefix == "/") {
        let _ = writeln!(out, "        location / {{ return 404; }}");
    }
    out
}

/// What a location does for route `i`: 404 without a route, 503 without workers.
fn nginx_action(routes: &[PeerRoute], i: Option<usize>) -> String {
    match i {
        None => "return 404;".into(),
        Some(i) if routes[i].workers.is_empty() => "return 503;".into(),
        Some(i) => format!("proxy_pass http://route{i};"),
    }
}

/// The route fulcrum would pick for `path`: the longest prefix covering it.
fn route_for(routes: &[PeerRoute], path: &str) -> Option<usize> {
    (0..routes.len())
        .filter(|&i| prefix_covers(&routes[i].prefix, path))
        .max_by_key(|&i| routes[i].prefix.len())
}

/// The balancer's rule (private to it): `/cluster1` covers `/cluster1` and `/cluster1/x`, not
/// `/cluster10`; a prefix ending in `/` covers everything below it.
fn prefix_covers(prefix: &str, path: &str) -> bool {
    if prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

/// nginx as root must be told to keep its workers root (see [`nginx_config`]).
fn running_as_root() -> bool {
    // /proc/self is owned by the effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

// ───────────── HAProxy ─────────────

fn haproxy_config(setup: &PeerSetup) -> String {
    let mut out = format!(
        "# HAProxy in front of fulcrum's workers, generated by `fulcrum experiment`.
# No `log` lines: no access log, as fulcrum's balancer has none; alerts go to stderr (-db).
global
    nbthread {threads}
    # No global maxconn: HAProxy derives it from the file descriptor limit, the ceiling
    # fulcrum's and nginx's connection limits meet too.

defaults
    mode http
    maxconn {MAX_CONNECTIONS}
    option http-keep-alive
    http-reuse always
    option forwardfor
    # A retried connection goes to another worker, as fulcrum's retries do.
    option redispatch 1
    # Active checks like fulcrum's defaults: every second, two to change state.
    option httpchk GET /health
    default-server inter 1s fall 2 rise 2
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout check 500ms

frontend peer
    bind {listen}
    unique-id-format %{{+X}}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Request-Id %[unique-id] unless {{ req.hdr(x-request-id) -m found }}
    http-request set-var(txn.request_id) req.hdr(x-request-id)
    http-response set-header X-Request-Id %[var(txn.request_id)]
",
        threads = setup.threads.max(1),
        listen = setup.listen,
    );
    out.push_str(&haproxy_routing(&setup.routes));
    out.push_str(&haproxy_backends(&setup.routes));
    out
}

/// ACLs and `use_backend` rules, longest prefix first (the first matching rule wins).
fn haproxy_routing(routes: &[PeerRoute]) -> String {
    let mut order: Vec<usize> = (0..routes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(routes[i].prefix.len()));
    let mut acls = String::new();
    let mut rules = String::new();
    let mut default = "no-route".to_owned();
    for i in order {
        let p = &routes[i].prefix;
        if p == "/" {
            default = format!("route{i}");
            continue;
        }
        if p.ends_with('/') {
            let _ = writeln!(acls, "    acl route{i} path_beg {p}");
        } else {
            let _ = writeln!(acls, "    acl route{i} path {p}");
            let _ = writeln!(acls, "    acl route{i} path_beg {p}/");
        }
        let _ = writeln!(rules, "    use_backend route{i} if route{i}");
    }
    format!("{acls}{rules}    default_backend {default}\n")
}

/// One backend per route; a worker named by several routes is checked once and tracked by
/// the others, as fulcrum checks each worker once whatever groups name it.
fn haproxy_backends(routes: &[PeerRoute]) -> String {
    let mut checked: Vec<(SocketAddr, String)> = Vec::new();
    let mut out = String::new();
    for (i, r) in routes.iter().enumerate() {
        let _ = write!(
            out,
            "\n# {}\nbackend route{i}\n    balance leastconn\n",
            r.prefix
        );
        for (j, w) in r.workers.iter().enumerate() {
            let check = match checked.iter().find(|(a, _)| a == w) {
                Some((_, first)) => format!("track {first}"),
                None => {
                    checked.push((*w, format!("route{i}/w{j}")));
                    "check".into()
                }
            };
            let _ = writeln!(out, "    server w{j} {w} {check}");
        }
    }
    if !routes.iter().any(|r| r.prefix == "/") {
        out.push_str("\nbackend no-route\n    http-request deny deny_status 404\n");
    }
    out
}

// ───────────── Starting ─────────────

/// Polls every route through the peer until each is answered by a worker.
fn wait_ready(c: &CompanionState, setup: &PeerSetup, run_dir: &Path) -> anyhow::Result<()> {
    let paths: Vec<&str> = setup
        .routes
        .iter()
        .filter(|r| !r.workers.is_empty())
        .map(|r| r.prefix.as_str())
        .collect();
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut backoff = Duration::from_millis(5);
    loop {
        let answered = paths
            .iter()
            .map(|p| worker_answers(setup.listen, p))
            .find(Result::is_err)
            .unwrap_or(Ok(()));
        let alive = c.process.as_ref().is_some_and(|p| p.is_alive());
        match answered {
            Ok(()) if alive => return Ok(()),
            _ if !alive => bail!("it exited: {}", logs_tail(c, run_dir)),
            Err(why) if Instant::now() > deadline => bail!(
                "no worker answered through it within {READY_TIMEOUT:?} (last: {why}); {}",
                logs_tail(c, run_dir)
            ),
            _ => {}
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}

/// The last lines of its standard error, else of its error log (nginx writes what stops it at
/// startup to both, and later errors to the log only).
fn logs_tail(c: &CompanionState, run_dir: &Path) -> String {
    let files = companion::log_of(c).into_iter().chain([error_log(run_dir)]);
    files
        .map(|f| (log_tail(&f), f))
        .find(|(tail, _)| !tail.is_empty())
        .map_or("it logged nothing".into(), |(tail, f)| {
            format!("{}: {tail}", f.display())
        })
}

/// `GET path` through the peer: `Ok` when the answer came from a worker.
fn worker_answers(addr: SocketAddr, path: &str) -> Result<(), String> {
    let head = get_head(addr, path).map_err(|e| format!("GET {path}: {e}"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
    let from_worker = head.lines().any(|l| {
        l.split_once(':')
            .is_some_and(|(name, _)| name.trim().eq_ignore_ascii_case(WORKER_HEADER))
    });
    if from_worker {
        Ok(())
    } else {
        Err(format!("GET {path}: {status} from the peer itself"))
    }
}

/// A response head (probe's client returns no headers, and worker identity is a header).
fn get_head(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    s.set_read_timeout(Some(PROBE_TIMEOUT))?;
    s.set_write_timeout(Some(PROBE_TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: fulcrum\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        match s.read(&mut chunk)? {
            0 => break,
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn find_in(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// The word after `version` on the first line that has one, without a `name/` in front:
/// `nginx version: nginx/1.22.1`, `HAProxy version 2.6.12-1+deb12u4 2023/…`.
fn parse_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.contains("version"))?;
    let mut words = line.split_whitespace();
    words.find(|w| w.starts_with("version"))?;
    let word = words.next()?;
    Some(word.rsplit('/').next().unwrap_or(word).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn seed_setup() -> PeerSetup {
        PeerSetup {
            listen: addr(8080),
            threads: 3,
            routes: vec![
                PeerRoute {
                    prefix: "/cluster1".into(),
                    workers: vec![addr(9001)],
                },
                PeerRoute {
                    prefix: "/cluster2".into(),
                    workers: vec![addr(9002)],
                },
                PeerRoute {
                    prefix: "/".into(),
                    workers: vec![addr(9001), addr(9002)],
                },
            ],
            dir: PathBuf::from("/run/peers/nginx"),
        }
    }

    fn lines(config: &str) -> Vec<&str> {
        config.lines().map(str::trim).collect()
    }

    #[test]
    fn nginx_balances_least_conn_over_keep_alive_per_route() {
        let c = nginx_config(&seed_setup(), false);
        let l = lines(&c);
        for want in [
            "worker_processes 3;",
            "daemon off;",
            "master_process on;",
            "access_log off;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "proxy_set_header X-Request-Id $fulcrum_request_id;",
            "\"\" $request_id;",
            "proxy_connect_timeout 1s;",
            "proxy_read_timeout 60s;",
            "keepalive_timeout 60s;",
            "client_header_timeout 60s;",
            "worker_connections 20000;",
            "listen 127.0.0.1:8080 backlog=10000;",
        ] {
            assert!(l.contains(&want), "missing `{want}` in\n{c}");
        }
        assert_eq!(l.iter().filter(|x| **x == "least_conn;").count(), 3);
        assert_eq!(l.iter().filter(|x| **x == "keepalive 1024;").count(), 3);
        let route2 = c.split("upstream route2 {").nth(1).unwrap();
        let route2 = lines(&route2[..route2.find('}').unwrap()]);
        assert_eq!(
            route2[1..],
            [
                "least_conn;",
                "# Shared by the worker processes, so least_conn sees every in-flight request.",
                "zone route2 64k;",
                "server 127.0.0.1:9001;",
                "server 127.0.0.1:9002;",
                "keepalive 1024;",
                "keepalive_requests 1000000;",
                "",
            ]
        );
        assert!(!c.contains("user "), "{c}");
        assert!(nginx_config(&seed_setup(), true).starts_with("# nginx in front of fulcrum's workers, generated by `fulcrum experiment`.\nuser root;\n"));
    }

    #[test]
    fn nginx_routes_on_segment_boundaries() {
        let c = nginx_config(&seed_setup(), false);
        let l = lines(&c);
        for want in [
            "location = /cluster1 { proxy_pass http://route0; }",
            "location /cluster1/ { proxy_pass http://route0; }",
            "location = /cluster2 { proxy_pass http://route1; }",
            "location /cluster2/ { proxy_pass http://route1; }",
            "location / { proxy_pass http://route2; }",
        ] {
            assert!(l.contains(&want), "missing `{want}` in\n{c}");
        }
        // Without `/`, unrouted paths are the peer's own 404; a route without workers is 503.
        let mut s = seed_setup();
        s.routes.pop();
        s.routes[1].workers.clear();
        let c = nginx_config(&s, false);
        let l = lines(&c);
        assert!(l.contains(&"location / { return 404; }"), "{c}");
        assert!(l.contains(&"location = /cluster2 { return 503; }"), "{c}");
        assert!(!c.contains("upstream route1"), "{c}");
    }

    #[test]
    fn nginx_keeps_a_bare_directory_prefix_from_redirecting() {
        let mut s = seed_setup();
        s.routes[0].prefix = "/api/".into();
        let l = nginx_config(&s, false);
        let l = lines(&l);
        assert!(l.contains(&"location /api/ { proxy_pass http://route0; }"));
        // `/api` is not under `/api/`: it goes where fulcrum sends it, the `/` route.
        assert!(l.contains(&"location = /api { proxy_pass http://route2; }"));
    }

    #[test]
    fn nginx_files_all_live_under_the_setup_directory() {
        let c = nginx_config(&seed_setup(), true);
        let paths: Vec<&str> = c
            .split_whitespace()
            .filter(|w| w.starts_with('/') && w.len() > 1 && !w.starts_with("/cluster"))
            .collect();
        assert_eq!(paths.len(), 7, "{paths:?}");
        for p in paths {
            assert!(p.starts_with("/run/peers/nginx/"), "{p}");
        }
    }

    #[test]
    fn haproxy_balances_leastconn_with_reuse_and_request_ids() {
        let c = haproxy_config(&seed_setup());
        let l = lines(&c);
        for want in [
            "nbthread 3",
            "mode http",
            "maxconn 10000",
            "option http-keep-alive",
            "http-reuse always",
            "option forwardfor",
            "timeout connect 1s",
            "timeout client 60s",
            "timeout server 60s",
            "bind 127.0.0.1:8080",
            "unique-id-format %{+X}o\\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid",
            "http-request set-header X-Request-Id %[unique-id] unless { req.hdr(x-request-id) -m found }",
            "http-response set-header X-Request-Id %[var(txn.request_id)]",
        ] {
            assert!(l.contains(&want), "missing `{want}` in\n{c}");
        }
        assert_eq!(l.iter().filter(|x| **x == "balance leastconn").count(), 3);
        assert!(!l.iter().any(|x| x.starts_with("log ")), "{c}");
    }

    #[test]
    fn haproxy_routes_longest_prefix_first_and_checks_each_worker_once() {
        let mut s = seed_setup();
        s.routes[1].prefix = "/cluster1/deeper".into();
        let c = haproxy_config(&s);
        let rules: Vec<&str> = lines(&c)
            .into_iter()
            .filter(|x| x.starts_with("acl ") || x.contains("_backend "))
            .collect();
        assert_eq!(
            rules,
            [
                "acl route1 path /cluster1/deeper",
                "acl route1 path_beg /cluster1/deeper/",
                "acl route0 path /cluster1",
                "acl route0 path_beg /cluster1/",
                "use_backend route1 if route1",
                "use_backend route0 if route0",
                "default_backend route2",
            ]
        );
        let servers: Vec<&str> = lines(&c)
            .into_iter()
            .filter(|x| x.starts_with("server "))
            .collect();
        assert_eq!(
            servers,
            [
                "server w0 127.0.0.1:9001 check",
                "server w0 127.0.0.1:9002 check",
                "server w0 127.0.0.1:9001 track route0/w0",
                "server w1 127.0.0.1:9002 track route1/w0",
            ]
        );
    }

    #[test]
    fn haproxy_answers_404_itself_without_a_root_route() {
        let mut s = seed_setup();
        s.routes.pop();
        let c = haproxy_config(&s);
        assert!(c.contains("default_backend no-route\n"), "{c}");
        assert!(c.contains("backend no-route\n    http-request deny deny_status 404\n"));
    }

    #[test]
    fn routes_resolve_like_fulcrums() {
        let r = seed_setup().routes;
        assert_eq!(route_for(&r, "/cluster1"), Some(0));
        assert_eq!(route_for(&r, "/cluster1/x"), Some(0));
        assert_eq!(route_for(&r, "/cluster10"), Some(2));
        assert_eq!(route_for(&r[..2], "/cluster10"), None);
    }

    #[test]
    fn versions_parse_from_either_peer() {
        assert_eq!(
            parse_version("nginx version: nginx/1.22.1\n").as_deref(),
            Some("1.22.1")
        );
        assert_eq!(
            parse_version(
                "HAProxy version 2.6.12-1+deb12u4 2023/12/06 - https://haproxy.org/\nStatus: long-term"
            )
            .as_deref(),
            Some("2.6.12-1+deb12u4")
        );
        assert_eq!(parse_version("no such thing"), None);
    }

    #[test]
    fn only_executables_are_found() {
        let dir = std::env::temp_dir().join(format!("fulcrum-peers-find-{}", std::process::id()));
        let (plain, exe) = (dir.join("plain"), dir.join("exe"));
        std::fs::create_dir_all(&plain).unwrap();
        std::fs::create_dir_all(&exe).unwrap();
        std::fs::write(plain.join("nginx"), "").unwrap();
        std::fs::write(exe.join("nginx"), "").unwrap();
        std::fs::set_permissions(exe.join("nginx"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let found = find_in(&[plain.clone(), exe.clone()], "nginx");
        let missing = find_in(&[plain], "nginx");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, Some(exe.join("nginx")));
        assert_eq!(missing, None);
    }

    #[test]
    fn kinds_serialize_kebab_case() {
        assert_eq!(
            serde_json::to_string(&PeerKind::ALL).unwrap(),
            r#"["nginx","haproxy"]"#
        );
        assert_eq!(PeerKind::Nginx.policy(), "least_conn");
        assert_eq!(PeerKind::Haproxy.policy(), "leastconn");
    }

    #[test]
    fn a_free_port_can_be_bound() {
        let p = free_loopback_port().unwrap();
        assert!(p > 0);
        TcpListener::bind(("127.0.0.1", p)).unwrap();
    }
}
