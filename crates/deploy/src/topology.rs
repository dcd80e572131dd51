//! The topology file: a deployment's clusters (route, instance type, count, worker settings),
//! its balancer (listeners, policy per route, telemetry) and its provider settings.
//!
//! [`DEFAULT_TOPOLOGY`] is the seed's: cluster 1 = 5 × t2.micro on `/cluster1`, cluster 2 =
//! 4 × t2.large on `/cluster2`, `/` across both, one balancer. `fulcrum init` writes exactly
//! that text, and `fulcrum up` without a file parses it, so the two cannot drift apart.

use std::path::Path;
use std::time::Duration;

use fulcrum_balancer::config::file::{unplaced, BalancerFile, TargetGroupSpec};
use fulcrum_balancer::config::{ConfigError, Locator};
use fulcrum_balancer::{Policy, TelemetrySource};
use serde::Deserialize;
use toml::Spanned;

use crate::catalog::{self, InstanceType};

pub const DEFAULT_TOPOLOGY: &str = r#"# fulcrum topology: the seed's two clusters behind one balancer.
# `fulcrum up` deploys it (locally by default), `fulcrum status` shows it, `fulcrum down` removes it.

# The deployment's name: state lives in .fulcrum/<name>/, and on AWS every resource is tagged
# fulcrum:deployment=<name>.
name = "seed"

[[cluster]]
id = 1
route = "/cluster1"
instance_type = "t2.micro"
count = 5
# CPU time each request burns on a worker, in microseconds.
work_us = 1000

[[cluster]]
id = 2
route = "/cluster2"
instance_type = "t2.large"
count = 4
work_us = 1000

[balancer]
# capacity-weighted | round-robin | least-outstanding | p2c-ewma | lowest-cpu | cpu-aware
policy = "capacity-weighted"
# inband | poll | cloudwatch
telemetry = "inband"
# Also collect these for every worker (status page, runtime policy switches).
collect = ["poll", "cloudwatch"]
# Locally, port 0 picks a free loopback port; on AWS the balancer listens on 80.
listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
# One line per request: locally logs/access.log in the state directory, on AWS the journal.
access_log = true

# `/` is served by every worker of both clusters.
[[balancer.route]]
prefix = "/"
clusters = [1, 2]

[local]
# One emulated vCPU gets `scale` of a real core, chosen so every worker's quota fits in this
# machine's cores minus what the balancer and the load generator keep for themselves.
balancer_reserve_cores = 0.35
loadgen_reserve_cores = 0.35
# Emulate burstable CPU credits (t2/t3): earn at baseline, spend to burst. Off by default.
credits = false
# Apply the instance type's memory, scaled like its CPU.
memory_limits = true

[aws]
region = "us-east-1"
worker_port = 8000
balancer_port = 80
balancer_instance_type = "t2.micro"
"#;

/// A validated topology.
#[derive(Debug, Clone)]
pub struct Topology {
    pub name: String,
    pub clusters: Vec<Cluster>,
    pub balancer: BalancerSpec,
    pub local: LocalSpec,
    pub aws: AwsSpec,
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub id: u32,
    pub route: String,
    pub instance_type: &'static InstanceType,
    pub count: u32,
    pub work_us: u64,
}

#[derive(Debug, Clone)]
pub struct BalancerSpec {
    pub policy: Policy,
    pub telemetry: TelemetrySource,
    pub collect: Vec<TelemetrySource>,
    pub listen: String,
    pub admin: String,
    pub routes: Vec<ExtraRoute>,
    pub cloudwatch_period: Duration,
    pub threads: Option<usize>,
    /// The balancer writes an access log (locally, `logs/access.log` in the state directory).
    pub access_log: bool,
}

/// A route served by several clusters at once (the seed's `/`).
#[derive(Debug, Clone)]
pub struct ExtraRoute {
    pub prefix: String,
    pub clusters: Vec<u32>,
    pub policy: Option<Policy>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalSpec {
    pub balancer_reserve_cores: f64,
    pub loadgen_reserve_cores: f64,
    pub credits: bool,
    pub memory_limits: bool,
    /// Cores per emulated vCPU; derived from the machine when absent.
    pub scale: Option<f64>,
    /// Credits each burstable instance starts with (default: AWS's launch credits, 30 per vCPU
    /// for t2, none for t3 in standard mode).
    pub initial_credits: Option<f64>,
}

impl Default for LocalSpec {
    fn default() -> Self {
        LocalSpec {
            balancer_reserve_cores: 0.35,
            loadgen_reserve_cores: 0.35,
            credits: false,
            memory_limits: true,
            scale: None,
            initial_credits: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsSpec {
    pub region: Option<String>,
    pub worker_port: u16,
    pub balancer_port: u16,
    pub balancer_instance_type: String,
}

impl Default for AwsSpec {
    fn default() -> Self {
        AwsSpec {
            region: None,
            worker_port: 8000,
            balancer_port: 80,
            balancer_instance_type: "t2.micro".into(),
        }
    }
}

// ----- file schema -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTopology {
    name: Spanned<String>,
    #[serde(rename = "cluster", default)]
    clusters: Vec<Spanned<FileCluster>>,
    #[serde(default)]
    balancer: FileBalancer,
    #[serde(default)]
    local: LocalSpec,
    #[serde(default)]
    aws: AwsSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    id: Spanned<u32>,
    route: Spanned<String>,
    instance_type: Spanned<String>,
    count: Spanned<u32>,
    #[serde(default = "default_work_us")]
    work_us: u64,
}

fn default_work_us() -> u64 {
    1000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileBalancer {
    policy: Policy,
    telemetry: TelemetrySource,
    collect: Vec<TelemetrySource>,
    listen: String,
    admin: String,
    #[serde(rename = "route")]
    routes: Vec<Spanned<FileRoute>>,
    #[serde(with = "humantime_serde")]
    cloudwatch_period: Duration,
    threads: Option<usize>,
    access_log: bool,
}

impl Default for FileBalancer {
    fn default() -> Self {
        FileBalancer {
            policy: Policy::CapacityWeighted,
            telemetry: TelemetrySource::Inband,
            collect: Vec::new(),
            listen: "127.0.0.1:0".into(),
            admin: "127.0.0.1:0".into(),
            routes: Vec::new(),
            cloudwatch_period: Duration::from_secs(60),
            threads: None,
            access_log: true,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    prefix: String,
    clusters: Spanned<Vec<u32>>,
    policy: Option<Policy>,
}

fn deployment_name(name: &Spanned<String>, loc: &Locator) -> Result<String, ConfigError> {
    let n = name.get_ref();
    if n.is_empty()
        || n.len() > 40
        || !n
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(loc.at(
            name.span(),
            "name must be 1-40 lowercase letters, digits or `-` (it names files and AWS tags)",
        ));
    }
    Ok(n.clone())
}

/// The `[[cluster]]` sections, each checked against the ones before it.
fn clusters(raw: &[Spanned<FileCluster>], loc: &Locator) -> Result<Vec<Cluster>, ConfigError> {
    if raw.is_empty() {
        return Err(loc.at(0..0, "no [[cluster]]: a topology needs at least one"));
    }
    let mut clusters = Vec::new();
    for c in raw {
        let cluster = c.get_ref().checked(c.span(), &clusters, loc)?;
        clusters.push(cluster);
    }
    Ok(clusters)
}

impl FileCluster {
    fn checked(
        &self,
        span: std::ops::Range<usize>,
        before: &[Cluster],
        loc: &Locator,
    ) -> Result<Cluster, ConfigError> {
        let id = *self.id.get_ref();
        if before.iter().any(|x| x.id == id) {
            return Err(loc.at(self.id.span(), format!("cluster {id} is defined twice")));
        }
        let route = self.route.get_ref().clone();
        if !route.starts_with('/') || route.len() < 2 {
            return Err(loc.at(
                self.route.span(),
                format!("route `{route}` must be a path like `/cluster{id}`"),
            ));
        }
        if before.iter().any(|x| x.route == route) {
            return Err(loc.at(self.route.span(), format!("route `{route}` is used twice")));
        }
        let instance_type = catalog::lookup(self.instance_type.get_ref())
            .map_err(|e| loc.at(self.instance_type.span(), e.to_string()))?;
        let count = *self.count.get_ref();
        if !(1..=64).contains(&count) {
            return Err(loc.at(self.count.span(), "count must be between 1 and 64"));
        }
        if self.work_us > 100_000 {
            return Err(loc.at(span, "work_us must be at most 100000"));
        }
        Ok(Cluster {
            id,
            route,
            instance_type,
            count,
            work_us: self.work_us,
        })
    }
}

impl FileBalancer {
    /// The `[balancer]` section, its extra routes checked against the clusters.
    fn into_spec(self, clusters: &[Cluster], loc: &Locator) -> Result<BalancerSpec, ConfigError> {
        let mut routes = Vec::new();
        for r in &self.routes {
            let route = r.get_ref().checked(r.span(), clusters, &routes, loc)?;
            routes.push(route);
        }
        Ok(BalancerSpec {
            policy: self.policy,
            telemetry: self.telemetry,
            collect: self.collect,
            listen: self.listen,
            admin: self.admin,
            routes,
            cloudwatch_period: self.cloudwatch_period,
            threads: self.threads,
            access_log: self.access_log,
        })
    }
}

impl FileRoute {
    fn checked(
        &self,
        span: std::ops::Range<usize>,
        clusters: &[Cluster],
        before: &[ExtraRoute],
        loc: &Locator,
    ) -> Result<ExtraRoute, ConfigError> {
        if !self.prefix.starts_with('/') {
            return Err(loc.at(
                span,
                format!("route prefix `{}` must start with `/`", self.prefix),
            ));
        }
        if clusters.iter().any(|c| c.route == self.prefix)
            || before.iter().any(|x| x.prefix == self.prefix)
        {
            return Err(loc.at(span, format!("route `{}` is defined twice", self.prefix)));
        }
        for id in self.clusters.get_ref() {
            if !clusters.iter().any(|c| c.id == *id) {
                return Err(loc.at(self.clusters.span(), format!("no cluster {id}")));
            }
        }
        if self.clusters.get_ref().is_empty() {
            return Err(loc.at(self.clusters.span(), "a route needs at least one cluster"));
        }
        Ok(ExtraRoute {
            prefix: self.prefix.clone(),
            clusters: self.clusters.get_ref().clone(),
            policy: self.policy,
        })
    }
}

impl LocalSpec {
    /// The `[local]` section (serde already read it; the ranges are checked here).
    fn checked(self, loc: &Locator) -> Result<LocalSpec, ConfigError> {
        if !(0.0..=64.0).contains(&self.balancer_reserve_cores)
            || !(0.0..=64.0).contains(&self.loadgen_reserve_cores)
        {
            return Err(loc.at(0..0, "local reserves must be between 0 and 64 cores"));
        }
        if self.scale.is_some_and(|s| !(0.001..=1.0).contains(&s)) {
            return Err(loc.at(
                0..0,
                "local.scale must be between 0.001 and 1 core per vCPU",
            ));
        }
        Ok(self)
    }
}

impl AwsSpec {
    /// The `[aws]` section: its balancer's instance type must be one the catalog knows.
    fn checked(self, loc: &Locator) -> Result<AwsSpec, ConfigError> {
        catalog::lookup(&self.balancer_instance_type)
            .map_err(|e| loc.at(0..0, format!("aws.balancer_instance_type: {e}")))?;
        Ok(self)
    }
}

impl Topology {
    /// The seed's topology.
    pub fn default_seed() -> Topology {
        Topology::parse(DEFAULT_TOPOLOGY, "default topology")
            .expect("the default topology is valid")
    }

    pub fn load(path: &Path) -> Result<Topology, ConfigError> {
        let text = ConfigError::read(path)?;
        Topology::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<Topology, ConfigError> {
        let loc = Locator::new(file, text);
        let raw: FileTopology = toml::from_str(text).map_err(|e| loc.toml_error(e))?;
        let name = deployment_name(&raw.name, &loc)?;
        let clusters = clusters(&raw.clusters, &loc)?;
        let balancer = raw.balancer.into_spec(&clusters, &loc)?;
        let local = raw.local.checked(&loc)?;
        let aws = raw.aws.checked(&loc)?;
        Ok(Topology {
            name,
            clusters,
            balancer,
            local,
            aws,
        })
    }

    /// Total emulated vCPUs of every worker.
    pub fn total_vcpus(&self) -> u32 {
        self.clusters
            .iter()
            .map(|c| c.count * c.instance_type.vcpus)
            .sum()
    }

    pub fn cluster(&self, id: u32) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.id == id)
    }

    /// Instances of every cluster, in a stable order: `(cluster, index within it)`.
    pub fn instances(&self) -> impl Iterator<Item = (&Cluster, u32)> {
        self.clusters
            .iter()
            .flat_map(|c| (0..c.count).map(move |i| (c, i)))
    }

    /// Every target group of the balancer and its members, given where each worker listens
    /// (`(cluster id, "ip:port")`): one group per cluster, one per extra route.
    pub fn target_groups(&self, workers: &[(u32, String)]) -> Vec<(String, Vec<String>)> {
        let members = |ids: &[u32]| -> Vec<String> {
            workers
                .iter()
                .filter(|(c, _)| ids.contains(c))
                .map(|(_, a)| a.clone())
                .collect()
        };
        let mut out: Vec<(String, Vec<String>)> = self
            .clusters
            .iter()
            .map(|c| (format!("cluster{}", c.id), members(&[c.id])))
            .collect();
        for (i, r) in self.balancer.routes.iter().enumerate() {
            out.push((route_group_name(i, r), members(&r.clusters)));
        }
        out
    }

    /// The balancer configuration (TOML) for this topology.
    /// The balancer's configuration file for this topology, as a value: `listen` and `admin`
    /// addresses, a route and target group per cluster and per extra route, workers from
    /// `workers`.
    pub fn balancer_file(&self, listen: &str, admin: &str, workers: WorkerSource) -> BalancerFile {
        let b = &self.balancer;
        let mut file = BalancerFile::new();
        file.threads = b.threads.map(unplaced);
        file.listen(listen, None).admin(admin);
        file.telemetry.collect = b.collect.clone();
        file.telemetry.cloudwatch_period = b.cloudwatch_period;
        file.access_log.enabled = b.access_log;
        for c in &self.clusters {
            file.route(c.route.clone(), format!("cluster{}", c.id));
        }
        for (i, r) in b.routes.iter().enumerate() {
            file.route(r.prefix.clone(), route_group_name(i, r));
        }
        let policies = self
            .clusters
            .iter()
            .map(|_| b.policy)
            .chain(b.routes.iter().map(|r| r.policy.unwrap_or(b.policy)));
        let members = match workers {
            WorkerSource::Static(w) => self.target_groups(w),
            WorkerSource::Files(_) => self.target_groups(&[]),
        };
        for ((name, members), policy) in members.into_iter().zip(policies) {
            let mut group = TargetGroupSpec::new(name.clone());
            group.policy = policy;
            group.telemetry = b.telemetry;
            match workers {
                WorkerSource::Static(_) => group = group.workers(members),
                WorkerSource::Files(dir) => {
                    group.discovery_file = Some(dir.join(format!("{name}.json")))
                }
            }
            file.group(group);
        }
        file
    }

    /// [`Topology::balancer_file`] as the text the balancer process reads.
    pub fn balancer_config(&self, listen: &str, admin: &str, workers: WorkerSource) -> String {
        generated_config(&self.balancer_file(listen, admin, workers))
    }
}

/// The text of a balancer configuration generated from a topology, marked as such.
pub fn generated_config(file: &BalancerFile) -> String {
    format!(
        "# Generated by fulcrum from the deployment's topology.\n{}",
        file.to_toml()
    )
}

/// Where the balancer learns a target group's workers from.
#[derive(Debug, Clone, Copy)]
pub enum WorkerSource<'a> {
    /// Fixed lists: `(cluster id, "ip:port")`.
    Static(&'a [(u32, String)]),
    /// Watched files `<dir>/<group>.json`, rewritten when workers change.
    Files(&'a Path),
}

/// Target group names for extra routes: `all` for `/`, else `route-N`.
pub fn route_group_name(i: usize, r: &ExtraRoute) -> String {
    if r.prefix == "/" {
        "all".into()
    } else {
        format!("route-{i}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_seed() {
        let t = Topology::default_seed();
        assert_eq!(t.name, "seed");
        assert_eq!(t.clusters.len(), 2);
        assert_eq!(
            (t.clusters[0].instance_type.name, t.clusters[0].count),
            ("t2.micro", 5)
        );
        assert_eq!(
            (t.clusters[1].instance_type.name, t.clusters[1].count),
            ("t2.large", 4)
        );
        assert_eq!(t.clusters[0].route, "/cluster1");
        assert_eq!(t.total_vcpus(), 13);
        assert_eq!(t.balancer.routes[0].clusters, vec![1, 2]);
        assert_eq!(t.instances().count(), 9);
    }

    #[test]
    fn generated_balancer_config_is_valid_and_routes_by_cluster() {
        let t = Topology::default_seed();
        let workers: Vec<(u32, String)> = t
            .instances()
            .enumerate()
            .map(|(i, (c, _))| (c.id, format!("127.0.0.1:{}", 9000 + i)))
            .collect();
        let text = t.balancer_config(
            "127.0.0.1:8080",
            "127.0.0.1:9900",
            WorkerSource::Static(&workers),
        );
        let c = fulcrum_balancer::Config::parse(&text, "generated", None).unwrap();
        assert_eq!(c.target_groups.len(), 3);
        assert_eq!(c.target_groups[0].workers.len(), 5);
        assert_eq!(c.target_groups[1].workers.len(), 4);
        assert_eq!(c.target_groups[2].workers.len(), 9);
        assert_eq!(c.telemetry.collect.len(), 2);
    }

    #[test]
    fn mistakes_are_located() {
        let bad = DEFAULT_TOPOLOGY.replace(
            "instance_type = \"t2.micro\"\ncount",
            "instance_type = \"t2.mirco\"\ncount",
        );
        let e = Topology::parse(&bad, "t.toml").unwrap_err();
        assert!(e.message.contains("did you mean t2.micro"), "{e}");
        assert_eq!(e.line, 11, "{e}");
        let bad = DEFAULT_TOPOLOGY.replace("clusters = [1, 2]", "clusters = [1, 3]");
        let e = Topology::parse(&bad, "t.toml").unwrap_err();
        assert!(e.message.contains("no cluster 3"), "{e}");
        let bad = DEFAULT_TOPOLOGY.replace("name = \"seed\"", "name = \"My Seed\"");
        assert!(Topology::parse(&bad, "t.toml")
            .unwrap_err()
            .message
            .contains("lowercase"));
    }
}
