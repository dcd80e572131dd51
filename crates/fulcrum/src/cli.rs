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
    /// Policy of every route's target group.
    #[arg(long, value_parser = ["round-robin", "least-outstanding", "p2c-ewma", "lowest-cpu", "cpu-aware"])]
    pub policy: Option<String>,
    /// Telemetry source of every target group.
    #[arg(long, value_parser = ["inband", "poll", "cloudwatch"])]
    pub telemetry: Option<String>,
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
            sample_every: Duration::from_millis(100),
            load_window: a.load_window,
            drain_delay: a.drain_delay,
            drain_timeout: a.drain_timeout,
        }),
        Command::Balance(a) => balance(a),
    }
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

/// Providers plugged into the balancer: none in this build; the AWS ones with `--features aws`.
fn extensions() -> fulcrum_balancer::Extensions {
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
