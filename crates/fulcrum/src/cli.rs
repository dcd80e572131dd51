//! Command-line shape and the mapping from flags to each crate's configuration.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "fulcrum",
    version,
    about = "Deploy, balance and benchmark heterogeneous clusters",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct Global {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `fulcrum_balancer=debug`);
    /// RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the demo service of one instance: real CPU work per request, load reports.
    Worker(WorkerArgs),
    /// Run the load balancer (from a TOML file, or quickly from flags).
    Balance(BalanceArgs),
    /// Write the default topology (the seed's two clusters) to a file to edit.
    Init(InitArgs),
    /// Deploy a topology: locally with emulated instance types (default), or on AWS.
    Up(UpArgs),
    /// Show every instance of a deployment.
    Status(StatusArgs),
    /// Remove a deployment: everything its state names.
    Down(DownArgs),
    /// Load-test one or more URLs: closed (-n/-c) or open (--rate/--duration) model.
    Bench(BenchArgs),
    /// Turn a results.json into REPORT.md and a self-contained index.html.
    Report(ReportArgs),
    /// The whole seed experiment and a policy shoot-out, end to end.
    Experiment(ExperimentArgs),
    /// Emulates burstable CPU credits for a local deployment (started by `up`).
    #[command(hide = true)]
    CreditKeeper(CreditKeeperArgs),
    /// Burns a share of its cgroup's CPU quota on a schedule (started by `experiment`).
    #[command(hide = true)]
    Antagonist(AntagonistArgs),
    /// Print a shell completion script (e.g. `fulcrum completions bash > /etc/bash_completion.d/fulcrum`).
    Completions(CompletionsArgs),
    /// Print the man page (roff): `fulcrum man > fulcrum.1`, or `--out DIR` for one page per
    /// command.
    Man(ManArgs),
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write `fulcrum.1` and a `fulcrum-COMMAND.1` per command into this directory instead of
    /// printing the main page.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct AntagonistArgs {
    /// The cgroup's CPU quota, in cores.
    #[arg(long)]
    pub cores: f64,
    /// Share of the quota taken while on (0..=1).
    #[arg(long)]
    pub share: f64,
    /// Length of each on window.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub on: Duration,
    /// Length of each off window (0s: always on).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub off: Duration,
    /// Delay after the epoch before the first on window.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub phase: Duration,
    /// The schedule's origin in Unix milliseconds (default: now), shared by antagonists
    /// started one by one.
    #[arg(long)]
    pub epoch_ms: Option<u64>,
    /// Stop after this long (default: on SIGTERM or SIGINT).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

#[derive(Args, Debug)]
pub struct CreditKeeperArgs {
    #[arg(long)]
    pub state_dir: PathBuf,
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub initial_credits: Option<f64>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Local,
    Aws,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Where to write the topology.
    #[arg(default_value = "fulcrum.toml")]
    pub path: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

/// Where deployments keep their state, and which one.
#[derive(Args, Debug, Clone)]
pub struct DeploymentArgs {
    /// Topology file (default: the seed's topology).
    #[arg(long, short = 't')]
    pub topology: Option<PathBuf>,
    /// Directory holding each deployment's state (`<dir>/<name>/state.json`).
    #[arg(long, default_value = ".fulcrum", env = "FULCRUM_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Where to deploy.
    #[arg(long, value_enum, default_value_t = Provider::Local)]
    pub provider: Provider,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// AWS provider settings (used with `--provider aws`).
#[derive(Args, Debug, Clone, Default)]
pub struct AwsArgs {
    /// AWS region (default: the SDK's region chain, then the topology's `aws.region`).
    #[arg(long)]
    pub region: Option<String>,
    /// Apply the plan without asking.
    #[arg(long)]
    pub yes: bool,
    /// What `up` waits for: every /health answering, instances running, or nothing.
    #[arg(long, default_value = "healthy", value_parser = ["healthy", "running", "none"])]
    pub wait: String,
    /// Longest wait, in total.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub wait_timeout: Duration,
    /// Who may reach the balancer's HTTP/HTTPS ports.
    #[arg(long, default_value = "0.0.0.0/0")]
    pub allow_cidr: String,
    /// Open SSH (22) to this CIDR; closed when not given.
    #[arg(long)]
    pub ssh_cidr: Option<String>,
    /// AMI to use instead of the current Ubuntu LTS from the public SSM parameter.
    #[arg(long)]
    pub ami: Option<String>,
    /// Subnet to launch into instead of the default VPC's.
    #[arg(long)]
    pub subnet: Option<String>,
    /// Existing instance profile for the balancer (AWS Academy accounts cannot create roles).
    #[arg(long)]
    pub instance_profile: Option<String>,
    /// Where instances download the fulcrum binary (default: an S3 bucket of the deployment,
    /// through a short-lived presigned URL).
    #[arg(long)]
    pub binary_url: Option<String>,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    /// Run workers unthrottled when cgroups cannot be created (no instance-type emulation).
    #[arg(long)]
    pub no_emulation: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    /// Deployment name (default: the topology's).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DownArgs {
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    /// Deployment name (default: the topology's).
    #[arg(long)]
    pub name: Option<String>,
    /// AWS: find the deployment's resources by tag (when its state file is lost).
    #[arg(long)]
    pub by_tag: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Target URLs. The load is spread evenly over them: connection k goes to target k mod N,
    /// and in the open model each target gets rate / N, the schedules interleaved.
    #[arg(required = true, value_name = "URL")]
    pub urls: Vec<String>,
    /// Request mix (TOML): each request picks a `[[request]]` entry's `path` by its `weight`,
    /// sent to every target; the URLs' own paths are then ignored.
    #[arg(long, value_name = "FILE")]
    pub mix: Option<PathBuf>,
    /// Method of every request (a mix entry may name its own).
    #[arg(short = 'm', long, default_value = "GET")]
    pub method: String,
    /// Extra header on every request, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Body of every request: text, or `@FILE` for a file's bytes (sent with Content-Length).
    #[arg(long, value_name = "TEXT|@FILE")]
    pub body: Option<String>,
    /// https:// targets: trust this PEM file's certificates instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// https:// targets: accept any certificate (self-signed test listeners).
    #[arg(long, short = 'k', conflicts_with = "cacert")]
    pub insecure: bool,
    /// Speak HTTP/2: h2c with prior knowledge on http:// URLs, ALPN h2 on https:// URLs (a
    /// server that does not speak it is an error before the run).
    #[arg(long)]
    pub h2: bool,
    /// With --h2: requests in flight on each connection at once (h2load's -m; long form only,
    /// -m is --method). Closed model: connections × streams requests in flight.
    #[arg(long, requires = "h2", default_value_t = 1, value_name = "N")]
    pub streams: usize,
    /// Closed model: total requests.
    #[arg(short = 'n', long, conflicts_with_all = ["rate", "duration"])]
    pub requests: Option<u64>,
    /// Connections (closed model: requests in flight at once).
    #[arg(short = 'c', long, default_value_t = 100)]
    pub connections: usize,
    /// Open model: requests per second on a constant schedule.
    #[arg(long, requires = "duration")]
    pub rate: Option<f64>,
    /// Open model: how long to send (after the warm-up).
    #[arg(long, short = 'd', value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Excluded from results: sent first, not measured.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Generator threads.
    #[arg(long, short = 't', default_value_t = 1)]
    pub threads: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Sample worker CPU from this balancer admin address's `/status` and the workers' `/load`.
    #[arg(long)]
    pub admin: Option<String>,
    /// Fail (exit 3) unless every threshold holds, e.g. `p99<50ms,errors=0,rps>100`.
    #[arg(long)]
    pub threshold: Option<String>,
    /// Write results.json here.
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress display.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A results.json written by `fulcrum bench` or `fulcrum experiment`.
    pub results: PathBuf,
    /// Directory for REPORT.md and index.html.
    #[arg(long, default_value = "report")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct ExperimentArgs {
    #[command(flatten)]
    pub deployment: DeploymentArgs,
    /// Use the deployment that is already up instead of bringing one up.
    #[arg(long)]
    pub reuse: bool,
    /// Leave the deployment running afterwards.
    #[arg(long)]
    pub keep: bool,
    /// A short version for smoke tests (under a minute).
    #[arg(long)]
    pub quick: bool,
    /// Shoot-out rounds per contender in each scenario (default 2, or 1 with --quick). More
    /// rounds tell close contenders apart with more confidence.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: Option<u32>,
    /// Shoot-out scenario (repeatable): steady, antagonist, replicas, heavy-tail, or all
    /// [default: steady, antagonist, replicas].
    #[arg(long = "scenario", value_name = "NAME", value_parser = ["steady", "antagonist", "replicas", "heavy-tail", "all"])]
    pub scenarios: Vec<String>,
    /// `replicas` scenario: balancer instances per contender.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..=16))]
    pub replicas: u64,
    /// fulcrum policies to run beside the default in every scenario, comma-separated
    /// (`lowest-cpu` reads emulated CloudWatch, as the seed did; `lowest-cpu/poll` fresh
    /// polls) [default: least-outstanding, plus the seed's lowest-cpu in steady].
    #[arg(long, value_delimiter = ',')]
    pub policies: Option<Vec<String>>,
    /// Where results.json, REPORT.md and index.html go.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Run workers unthrottled when cgroups cannot be created (no instance-type emulation).
    #[arg(long)]
    pub no_emulation: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["config", "listen"])))]
pub struct BalanceArgs {
    /// Configuration file (TOML). SIGHUP re-reads it.
    #[arg(long, short, conflicts_with_all = ["listen", "route", "policy", "telemetry", "admin", "tls_cert", "tls_key", "self_signed"])]
    pub config: Option<PathBuf>,
    /// Listen address (quick form; repeatable).
    #[arg(long)]
    pub listen: Vec<String>,
    /// PREFIX=WORKER[,WORKER...] or PREFIX=@all (every worker of every other route); repeatable.
    #[arg(long)]
    pub route: Vec<String>,
    /// Policy of every route's target group [default: capacity-weighted].
    #[arg(long, value_parser = policy_name)]
    pub policy: Option<fulcrum_balancer::Policy>,
    /// Telemetry source of every target group (inband, poll or cloudwatch).
    #[arg(long, value_parser = telemetry_name)]
    pub telemetry: Option<fulcrum_balancer::TelemetrySource>,
    /// Admin listener (metrics, status page); keep it on loopback.
    #[arg(long)]
    pub admin: Option<String>,
    /// TLS certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve TLS with a certificate generated at start-up (local use only).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub self_signed: bool,
    /// Runtime threads (default: the config's `threads`, else every core).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub threads: Option<u64>,
    /// Access log: a file, `-` for stdout (the default), or `off` (quick form)
    #[arg(long, value_name = "PATH|-|off", conflicts_with = "config")]
    pub access_log: Option<String>,
    /// Access log line format (quick form)
    #[arg(long, value_parser = ["json", "text"], conflicts_with = "config")]
    pub access_log_format: Option<String>,
    /// Validate the configuration and exit.
    #[arg(long)]
    pub check: bool,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The cluster this instance belongs to (answers `/clusterN` for this N only).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=999))]
    pub cluster: u32,
    /// TCP port to listen on (0 = any free port; the address is printed on stdout).
    #[arg(long)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Instance id (default: EC2 instance metadata on EC2, else a stable generated id).
    #[arg(long)]
    pub instance_id: Option<String>,
    /// CPU time each request to `/` or `/clusterN` burns, in microseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub work_us: u64,
    /// Upper bound for a request's `?work_us=`.
    #[arg(long, default_value_t = 100_000)]
    pub max_work_us: u64,
    /// Runtime threads (default: the cores this process may use).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub threads: Option<u64>,
    /// Window over which `/load` and the in-band report average CPU and rates.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub load_window: Duration,
    /// After SIGTERM, keep serving this long with `/health` at 503 before closing the listener.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,
    /// Longest wait for in-flight requests after the listener closes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Worker(a) => fulcrum_worker::run(fulcrum_worker::WorkerConfig {
            cluster: a.cluster,
            bind: a.bind,
            port: a.port,
            instance_id: a.instance_id,
            work_us: a.work_us,
            max_work_us: a.max_work_us,
            threads: a.threads.map(|t| t as usize),
            sample_every: Duration::from_millis(50),
            load_window: a.load_window,
            drain_delay: a.drain_delay,
            drain_timeout: a.drain_timeout,
        }),
        Command::Balance(a) => balance(a),
        Command::Init(a) => init(a),
        Command::Up(a) => up(a),
        Command::Status(a) => status(a),
        Command::Down(a) => down(a),
        Command::Bench(a) => bench(a),
        Command::Report(a) => crate::commands::report(&a.results, &a.out),
        Command::Experiment(a) => experiment(a),
        Command::CreditKeeper(a) => {
            fulcrum_deploy::credits::keep(&a.state_dir, &a.name, a.initial_credits)
        }
        Command::Antagonist(a) => antagonist(a),
        Command::Completions(a) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(a.shell, &mut cmd, "fulcrum", &mut std::io::stdout());
            Ok(())
        }
        Command::Man(a) => man(a),
    }
}

/// The man page(s), from the same clap definitions the binary parses with.
fn man(a: ManArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let cmd = <Cli as clap::CommandFactory>::command();
    match a.out {
        None => clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .context("cannot write the man page"),
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
            Ok(())
        }
    }
}

/// A policy by its name, the names listed from the balancer's own list.
fn policy_name(s: &str) -> Result<fulcrum_balancer::Policy, String> {
    use fulcrum_balancer::Policy;
    Policy::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = Policy::ALL.iter().map(|p| p.name()).collect();
        format!("one of {}", names.join(", "))
    })
}

fn telemetry_name(s: &str) -> Result<fulcrum_balancer::TelemetrySource, String> {
    use fulcrum_balancer::TelemetrySource;
    TelemetrySource::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = TelemetrySource::ALL.iter().map(|t| t.name()).collect();
        format!("one of {}", names.join(", "))
    })
}

fn antagonist(a: AntagonistArgs) -> anyhow::Result<()> {
    use fulcrum_deploy::antagonist::{self as co_tenant, AntagonistPlan};
    let plan = AntagonistPlan {
        share: a.share,
        cores: a.cores,
        on: a.on,
        off: a.off,
        phase: a.phase,
        epoch_unix_ms: a.epoch_ms.unwrap_or_else(co_tenant::unix_now_ms),
        duration: a.duration,
    };
    plan.validate().map_err(anyhow::Error::msg)?;
    crate::commands::catch_interrupts();
    println!("{}", co_tenant::run(&plan, &crate::commands::INTERRUPTED));
    Ok(())
}

fn init(a: InitArgs) -> anyhow::Result<()> {
    if a.path.exists() && !a.force {
        anyhow::bail!("{} exists; use --force to overwrite it", a.path.display());
    }
    std::fs::write(&a.path, fulcrum_deploy::topology::DEFAULT_TOPOLOGY)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", a.path.display()))?;
    println!(
        "wrote {} (the seed's topology: 5 × t2.micro on /cluster1, 4 × t2.large on /cluster2, / across both); \
         edit it, then `fulcrum up -t {}`",
        a.path.display(),
        a.path.display()
    );
    Ok(())
}

/// The topology a deployment command works on.
pub fn topology(d: &DeploymentArgs) -> anyhow::Result<fulcrum_deploy::topology::Topology> {
    Ok(match &d.topology {
        Some(p) => fulcrum_deploy::topology::Topology::load(p)?,
        None => fulcrum_deploy::topology::Topology::default_seed(),
    })
}

fn deployment_name(d: &DeploymentArgs, name: &Option<String>) -> anyhow::Result<String> {
    Ok(match name {
        Some(n) => n.clone(),
        None => topology(d)?.name,
    })
}

fn up(a: UpArgs) -> anyhow::Result<()> {
    let t = topology(&a.deployment)?;
    match a.deployment.provider {
        Provider::Local => {
            let opts = fulcrum_deploy::local::UpOptions {
                binary: std::env::current_exe()?,
                state_dir: a.deployment.state_dir.clone(),
                no_emulation: a.no_emulation,
            };
            crate::commands::local_up(&t, &opts, a.json)
        }
        Provider::Aws => aws_up(&t, &a.deployment),
    }
}

fn status(a: StatusArgs) -> anyhow::Result<()> {
    let name = deployment_name(&a.deployment, &a.name)?;
    match a.deployment.provider {
        Provider::Local => crate::commands::local_status(&a.deployment.state_dir, &name, a.json),
        Provider::Aws => aws_status(&name, &a.deployment, a.json),
    }
}

fn down(a: DownArgs) -> anyhow::Result<()> {
    let name = deployment_name(&a.deployment, &a.name)?;
    match a.deployment.provider {
        Provider::Local => crate::commands::local_down(&a.deployment.state_dir, &name),
        Provider::Aws => aws_down(&name, &a.deployment, a.by_tag),
    }
}

fn bench(a: BenchArgs) -> anyhow::Result<()> {
    use fulcrum_loadgen::{BenchConfig, Model, RequestMix, RunKind, Sampling};
    let thresholds = match &a.threshold {
        Some(t) => fulcrum_loadgen::threshold::parse(t)?,
        None => Vec::new(),
    };
    let protocol = match a.h2 {
        true => fulcrum_loadgen::Protocol::H2 { streams: a.streams },
        false => fulcrum_loadgen::Protocol::Http1,
    };
    let concurrency = a.connections * protocol.streams();
    let model = match (a.requests, a.rate, a.duration) {
        (Some(n), None, None) => Model::Closed {
            requests: n,
            concurrency,
        },
        (None, Some(rate), Some(d)) => Model::Open {
            rate,
            duration_s: d.as_secs_f64(),
        },
        (None, None, None) => Model::Closed {
            requests: 1000,
            concurrency,
        },
        _ => anyhow::bail!("use either -n N (closed model) or --rate R --duration D (open model)"),
    };
    let sampling = match &a.admin {
        Some(admin) => Sampling::from_balancer(
            admin
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .parse()
                .map_err(|_| anyhow::anyhow!("--admin `{admin}` is not ip:port"))?,
        ),
        None => Sampling::default(),
    };
    let config = BenchConfig {
        name: "bench".into(),
        kind: RunKind::Bench,
        targets: a.urls.clone(),
        mix: a.mix.as_deref().map(RequestMix::load).transpose()?,
        shape: request_shape(&a)?,
        tls: fulcrum_loadgen::TlsOptions {
            insecure: a.insecure,
            ca_file: a.cacert.clone(),
        },
        protocol,
        model,
        connections: a.connections,
        threads: a.threads,
        warmup: a.warmup,
        timeout: a.timeout,
        sampling,
        progress: !a.quiet && !a.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        policy: None,
        telemetry: None,
        // Set by `commands::bench` as the run starts.
        clock_origin: None,
    };
    crate::commands::bench(config, &thresholds, a.out.as_deref(), a.json)
}

/// `-m`, `-H` and `--body` as what every request carries.
fn request_shape(a: &BenchArgs) -> anyhow::Result<fulcrum_loadgen::RequestShape> {
    use anyhow::Context as _;
    fulcrum_loadgen::mix::check_method(&a.method).map_err(|e| anyhow::anyhow!("-m: {e}"))?;
    let headers = a
        .headers
        .iter()
        .map(|h| fulcrum_loadgen::RequestShape::parse_header(h).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let body_file = a.body.as_deref().and_then(|b| b.strip_prefix('@'));
    let body = match (a.body.as_deref(), body_file) {
        (_, Some(file)) => {
            std::fs::read(file).with_context(|| format!("--body: cannot read {file}"))?
        }
        (Some(text), None) => text.as_bytes().to_vec(),
        (None, None) => Vec::new(),
    };
    Ok(fulcrum_loadgen::RequestShape {
        method: a.method.clone(),
        headers,
        body: body.into(),
        body_file: body_file.map(PathBuf::from),
    })
}

fn experiment(a: ExperimentArgs) -> anyhow::Result<()> {
    let opts = fulcrum_experiment::Options {
        topology: topology(&a.deployment)?,
        binary: std::env::current_exe()?,
        state_dir: a.deployment.state_dir.clone(),
        reuse: a.reuse,
        keep: a.keep,
        quick: a.quick,
        rounds: a.rounds,
        out: a.out.clone(),
        no_emulation: a.no_emulation,
        command: std::env::args().collect(),
        scenarios: fulcrum_experiment::scenario::Scenario::parse_list(&a.scenarios),
        replicas: a.replicas as usize,
        policies: a
            .policies
            .as_deref()
            .map(fulcrum_experiment::shootout::Contender::parse_list)
            .transpose()?,
    };
    crate::commands::experiment(&opts, |opts, interrupted, say| {
        match a.deployment.provider {
            Provider::Local => fulcrum_experiment::run_local(opts, interrupted, say),
            Provider::Aws => aws_experiment(opts, &a.deployment, interrupted, say),
        }
    })
}

#[cfg(feature = "aws")]
pub fn aws_options(d: &DeploymentArgs) -> anyhow::Result<fulcrum_aws::AwsOptions> {
    Ok(fulcrum_aws::AwsOptions {
        region: d.aws.region.clone(),
        yes: d.aws.yes,
        wait: d.aws.wait.parse()?,
        wait_timeout: d.aws.wait_timeout,
        allow_cidr: d.aws.allow_cidr.clone(),
        ssh_cidr: d.aws.ssh_cidr.clone(),
        ami: d.aws.ami.clone(),
        subnet: d.aws.subnet.clone(),
        instance_profile: d.aws.instance_profile.clone(),
        binary_url: d.aws.binary_url.clone(),
        state_dir: d.state_dir.clone(),
        binary: std::env::current_exe()?,
    })
}

#[cfg(feature = "aws")]
fn aws_up(t: &fulcrum_deploy::topology::Topology, d: &DeploymentArgs) -> anyhow::Result<()> {
    fulcrum_aws::up(t, &aws_options(d)?)
}

#[cfg(feature = "aws")]
fn aws_status(name: &str, d: &DeploymentArgs, json: bool) -> anyhow::Result<()> {
    fulcrum_aws::status(name, &aws_options(d)?, json)
}

#[cfg(feature = "aws")]
fn aws_down(name: &str, d: &DeploymentArgs, by_tag: bool) -> anyhow::Result<()> {
    fulcrum_aws::down(name, &aws_options(d)?, by_tag)
}

#[cfg(feature = "aws")]
pub fn aws_experiment(
    opts: &fulcrum_experiment::Options,
    d: &DeploymentArgs,
    interrupted: &std::sync::atomic::AtomicBool,
    say: &mut dyn FnMut(&str),
) -> anyhow::Result<fulcrum_experiment::Outcome> {
    fulcrum_aws::experiment(opts, &aws_options(d)?, interrupted, say)
}

#[cfg(not(feature = "aws"))]
pub fn aws_experiment(
    _: &fulcrum_experiment::Options,
    _: &DeploymentArgs,
    _: &std::sync::atomic::AtomicBool,
    _: &mut dyn FnMut(&str),
) -> anyhow::Result<fulcrum_experiment::Outcome> {
    anyhow::bail!(NO_AWS)
}

#[cfg(not(feature = "aws"))]
const NO_AWS: &str = "this fulcrum was built without the AWS provider; rebuild with \
                      `cargo build --release --features aws`";

#[cfg(not(feature = "aws"))]
fn aws_up(_: &fulcrum_deploy::topology::Topology, _: &DeploymentArgs) -> anyhow::Result<()> {
    anyhow::bail!(NO_AWS)
}

#[cfg(not(feature = "aws"))]
fn aws_status(_: &str, _: &DeploymentArgs, _: bool) -> anyhow::Result<()> {
    anyhow::bail!(NO_AWS)
}

#[cfg(not(feature = "aws"))]
fn aws_down(_: &str, _: &DeploymentArgs, _: bool) -> anyhow::Result<()> {
    anyhow::bail!(NO_AWS)
}

fn balance(a: BalanceArgs) -> anyhow::Result<()> {
    use fulcrum_balancer::{ConfigSource, QuickConfig};
    let source = match a.config {
        Some(path) => ConfigSource::File(path),
        None => ConfigSource::Flags(QuickConfig {
            listen: a.listen,
            routes: a.route,
            policy: a.policy,
            telemetry: a.telemetry,
            admin: a.admin,
            tls_cert: a.tls_cert,
            tls_key: a.tls_key,
            self_signed: a.self_signed,
            threads: None,
            access_log: a.access_log,
            access_log_format: a.access_log_format.map(|f| match f.as_str() {
                "text" => fulcrum_balancer::AccessLogFormat::Text,
                _ => fulcrum_balancer::AccessLogFormat::Json,
            }),
        }),
    };
    if a.check {
        let c = source.load()?;
        println!(
            "configuration OK: {} listener(s), {} route(s), {} target group(s)",
            c.listeners.len(),
            c.routes.len(),
            c.target_groups.len()
        );
        return Ok(());
    }
    fulcrum_balancer::run(source, a.threads.map(|t| t as usize), extensions())
}

/// Providers plugged into the balancer: the AWS ones (EC2 discovery, CloudWatch) with
/// `--features aws`, none otherwise.
fn extensions() -> fulcrum_balancer::Extensions {
    #[cfg(feature = "aws")]
    return fulcrum_aws::extensions();
    #[cfg(not(feature = "aws"))]
    fulcrum_balancer::Extensions::default()
}

/// Usage errors are one line naming the problem (clap's own rendering is several).
pub fn exit_on_usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let rendered = e.render().to_string();
    // Keep the message, drop the usage and hint paragraphs, fold the rest onto one line.
    let message = rendered
        .split("\n\n")
        .next()
        .unwrap_or("error: invalid arguments")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("{message} (see `fulcrum --help`)");
    std::process::exit(2);
}

pub fn init_logging(global: &Global) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&global.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match global.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
