//! Carrying out the plan, one resource kind at a time and in dependency order: the topology and
//! adopted instances, the network, the key pair, the security groups, the instance profile, the
//! binary's delivery, each cluster's workers, the balancer, the surplus. Each resource is written
//! to the state the moment it exists; then the waiting the flags ask for.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_sdk_ec2::types::{KeyType, ResourceType};
use fulcrum_deploy::catalog::InstanceType;
use fulcrum_deploy::topology::{Cluster, Topology};

use super::inventory::{key_pair_exists, Inventory};
use super::launch::{Launch, LaunchSpec};
use crate::error::{AwsError, Result};
use crate::health::health_of;
use crate::instances::{self, filter, tag_filter};
use crate::security_groups::{self as sg, Rule};
use crate::session::Session;
use crate::state::{self, State, StateDir};
use crate::tags::{self, tag_spec};
use crate::{delivery, instance_profile, user_data, wait, AwsOptions, Wait};

/// The balancer's admin listener stays on the instance's loopback.
const ADMIN_ADDRESS: &str = "127.0.0.1:9900";
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);
const WAIT_ADVICE: &str = "`fulcrum status --provider aws` shows where each instance is; rerun \
                           `up` to keep waiting, or `down` to remove it";

/// Everything the phases of one `up` share.
pub struct AwsDeployer<'a> {
    pub topology: &'a Topology,
    pub options: &'a AwsOptions,
    pub session: &'a Session,
    pub dir: &'a StateDir,
    pub state: State,
    pub inventory: &'a Inventory,
    pub ami: &'a str,
    pub balancer_type: &'static InstanceType,
}

/// The deployment's two security groups, by id.
struct Groups {
    balancer: String,
    worker: String,
}

impl AwsDeployer<'_> {
    /// Creates what is missing, in dependency order; `surplus` instances go last.
    pub async fn apply(&mut self, surplus: &[String]) -> Result<()> {
        let (t, session, ami) = (self.topology, self.session, self.ami);
        self.record_topology()?;
        let (vpc, subnet) = self.network().await?;
        self.key_pair().await?;
        let groups = self.security_groups(&vpc).await?;
        let profile = self.instance_profile().await?;
        let binary_url = self.binary().await?;
        let key = tags::key_pair(&t.name);
        let launch = Launch {
            ec2: &session.ec2,
            name: &t.name,
            ami,
            key: &key,
            subnet: subnet.as_deref(),
        };
        for c in &t.clusters {
            self.cluster_workers(&launch, c, &groups.worker, &binary_url)
                .await?;
        }
        self.balancer(&launch, &groups.balancer, &profile, &binary_url)
            .await?;
        self.terminate_surplus(surplus).await
    }

    /// The topology's clusters and ports, the AMI, and instances that exist but the state lost
    /// (an interrupted `RunInstances`).
    fn record_topology(&mut self) -> Result<()> {
        let t = self.topology;
        let st = &mut self.state;
        st.clusters = t
            .clusters
            .iter()
            .map(|c| state::ClusterSpec {
                id: c.id,
                route: c.route.clone(),
                instance_type: c.instance_type.name.to_owned(),
                count: c.count,
                work_us: c.work_us,
            })
            .collect();
        st.worker_port = t.aws.worker_port;
        st.balancer_port = t.aws.balancer_port;
        st.ami = Some(self.ami.to_owned());
        for i in &self.inventory.instances {
            if i.is_live() && !st.instances.iter().any(|s| s.id == i.id) {
                st.instances.push(state::Instance {
                    id: i.id.clone(),
                    role: i.role.clone(),
                    cluster: i.cluster,
                    instance_type: i.instance_type.clone(),
                });
            }
        }
        self.save()
    }

    /// The default VPC unless a subnet is given; returns the VPC and the subnet.
    async fn network(&mut self) -> Result<(String, Option<String>)> {
        let (vpc, subnet) = network(&self.session.ec2, self.options.subnet.as_deref()).await?;
        self.state.vpc_id = Some(vpc.clone());
        self.state.subnet_id = subnet.clone();
        self.save()?;
        Ok((vpc, subnet))
    }

    async fn key_pair(&mut self) -> Result<()> {
        let ec2 = &self.session.ec2;
        let key_name = tags::key_pair(&self.topology.name);
        let path = self.dir.key_file(&key_name);
        if self.inventory.key_pair {
            if self.state.key_pair.is_none() {
                self.state.key_pair = Some(state::KeyPair {
                    name: key_name,
                    id: None,
                    private_key: path,
                });
                self.save()?;
            }
            return Ok(());
        }
        self.clear_stale_key_pair(&key_name, &path).await?;
        let created = ec2
            .create_key_pair()
            .key_name(&key_name)
            .key_type(KeyType::Ed25519)
            .tag_specifications(tag_spec(ResourceType::KeyPair, &self.topology.name, &[]))
            .send()
            .await
            .map_err(|e| AwsError::api(format!("CreateKeyPair {key_name}"), e))?;
        self.state.key_pair = Some(state::KeyPair {
            name: key_name.clone(),
            id: created.key_pair_id().map(str::to_owned),
            private_key: path.clone(),
        });
        self.save()?;
        let material = created.key_material().unwrap_or_default();
        self.dir.save_private_key(&path, material)?;
        println!(
            "  created key pair {key_name}; private key in {}",
            path.display()
        );
        Ok(())
    }

    /// A key pair whose private key is not here is useless: it is deleted if it is ours (and
    /// refused if not), and a key file without its key pair is moved aside.
    async fn clear_stale_key_pair(&self, key_name: &str, path: &std::path::Path) -> Result<()> {
        let ec2 = &self.session.ec2;
        if key_pair_exists(ec2, key_name).await? {
            let r = ec2
                .describe_key_pairs()
                .filters(filter("key-name", [key_name]))
                .filters(tag_filter(tags::DEPLOYMENT, [self.topology.name.as_str()]))
                .send()
                .await
                .map_err(|e| AwsError::api(format!("DescribeKeyPairs {key_name}"), e))?;
            if r.key_pairs().is_empty() {
                return Err(AwsError::Usage(format!(
                    "a key pair named {key_name} exists that fulcrum did not create: delete it or \
                     use another deployment name"
                )));
            }
            ec2.delete_key_pair()
                .key_name(key_name)
                .send()
                .await
                .map_err(|e| AwsError::api(format!("DeleteKeyPair {key_name}"), e))?;
        }
        if path.exists() {
            // A key file without its key pair: stale. Keep it aside rather than overwrite it.
            let aside = path.with_extension("pem.old");
            std::fs::rename(path, &aside).map_err(|e| AwsError::File {
                path: path.to_owned(),
                message: format!("cannot move a stale private key aside: {e}"),
            })?;
        }
        Ok(())
    }

    /// Both groups, each recorded as soon as it exists, then their rules made exactly these.
    async fn security_groups(&mut self, vpc: &str) -> Result<Groups> {
        let name = self.topology.name.clone();
        let balancer = self
            .security_group(
                &tags::balancer_group(&name),
                &format!("fulcrum {name}: the balancer, HTTP/HTTPS from the allowed CIDR"),
                vpc,
                |s| &mut s.balancer_group,
            )
            .await?;
        let worker = self
            .security_group(
                &tags::worker_group(&name),
                &format!("fulcrum {name}: the workers, reachable from the balancer only"),
                vpc,
                |s| &mut s.worker_group,
            )
            .await?;
        let (t, opts) = (self.topology, self.options);
        let ssh = opts.ssh_cidr.as_deref();
        let rules: Vec<(&str, Vec<Rule>)> = vec![
            (
                balancer.as_str(),
                sg::balancer_rules(t.aws.balancer_port, &opts.allow_cidr, ssh),
            ),
            (
                worker.as_str(),
                sg::worker_rules(t.aws.worker_port, &balancer, ssh),
            ),
        ];
        for (group, wanted) in &rules {
            let (added, revoked) = sg::reconcile(&self.session.ec2, group, wanted).await?;
            if added + revoked > 0 {
                println!("  rules of {group}: {added} added, {revoked} revoked");
            }
        }
        Ok(Groups { balancer, worker })
    }

    /// Finds or creates the group `group_name`, recorded in the state at `slot`.
    async fn security_group(
        &mut self,
        group_name: &str,
        description: &str,
        vpc: &str,
        slot: fn(&mut State) -> &mut Option<String>,
    ) -> Result<String> {
        let known = slot(&mut self.state).clone();
        let (id, created) = sg::ensure_group(
            &self.session.ec2,
            &self.topology.name,
            group_name,
            description,
            vpc,
            known.as_deref(),
        )
        .await?;
        *slot(&mut self.state) = Some(id.clone());
        self.save()?;
        report(created, "security group", &format!("{group_name} ({id})"));
        Ok(id)
    }

    /// The balancer's instance profile: the one named by the flag, or the deployment's own.
    async fn instance_profile(&mut self) -> Result<String> {
        if let Some(p) = &self.options.instance_profile {
            self.state.instance_profile = Some(state::InstanceProfile {
                name: p.clone(),
                created: false,
                role: None,
            });
            self.save()?;
            return Ok(p.clone());
        }
        let role = tags::balancer_role(&self.topology.name);
        // Recorded before creation: the name is fixed, and `down` tolerates absent parts.
        self.state.instance_profile = Some(state::InstanceProfile {
            name: role.clone(),
            created: true,
            role: Some(role.clone()),
        });
        self.save()?;
        if !self.inventory.profile_ready {
            instance_profile::ensure(&self.session.iam, &self.topology.name, &role).await?;
            report(true, "instance profile", &role);
        }
        Ok(role)
    }

    /// Where instances fetch the binary: the flag's URL, or a presigned one to the deployment's
    /// bucket, uploaded to when it changed.
    async fn binary(&mut self) -> Result<String> {
        if let Some(u) = &self.options.binary_url {
            return Ok(u.clone());
        }
        let session = self.session;
        let bucket = match &self.state.bucket {
            Some(b) => b.clone(),
            None => {
                let b = delivery::new_bucket_name(&self.topology.name);
                self.state.bucket = Some(b.clone());
                self.save()?;
                b
            }
        };
        if !self.inventory.bucket_exists {
            delivery::ensure_bucket(&session.s3, &session.region, &self.topology.name, &bucket)
                .await?;
            report(true, "S3 bucket", &bucket);
        }
        if delivery::upload(&session.s3, &bucket, &self.options.binary).await? {
            println!(
                "  uploaded {} to s3://{bucket}/{}",
                self.options.binary.display(),
                delivery::OBJECT_KEY
            );
        }
        delivery::presigned_url(&session.s3, &bucket).await
    }

    /// The workers cluster `c` lacks.
    async fn cluster_workers(
        &mut self,
        launch: &Launch<'_>,
        c: &Cluster,
        group: &str,
        binary_url: &str,
    ) -> Result<()> {
        let inventory = self.inventory;
        let live = inventory.live(tags::ROLE_WORKER, Some(c.id));
        let missing = (c.count as usize).saturating_sub(live.len());
        if missing == 0 {
            return Ok(());
        }
        let data = user_data::worker(binary_url, c.id, self.topology.aws.worker_port, c.work_us);
        let taken: Vec<&str> = live.iter().filter_map(|i| i.name.as_deref()).collect();
        let spec = LaunchSpec {
            role: tags::ROLE_WORKER,
            cluster: Some(c),
            instance_type: c.instance_type.name,
            count: missing,
            group,
            user_data: &data,
            profile: None,
            taken: &taken,
        };
        self.launch(launch, spec).await
    }

    /// The balancer, unless one is live.
    async fn balancer(
        &mut self,
        launch: &Launch<'_>,
        group: &str,
        profile: &str,
        binary_url: &str,
    ) -> Result<()> {
        if !self.inventory.live(tags::ROLE_BALANCER, None).is_empty() {
            return Ok(());
        }
        let (t, region) = (self.topology, &self.session.region);
        let config = user_data::balancer_config(
            t,
            region,
            &format!("0.0.0.0:{}", t.aws.balancer_port),
            ADMIN_ADDRESS,
            DISCOVERY_INTERVAL,
        );
        let data = user_data::balancer(binary_url, &config, region);
        let spec = LaunchSpec {
            role: tags::ROLE_BALANCER,
            cluster: None,
            instance_type: self.balancer_type.name,
            count: 1,
            group,
            user_data: &data,
            profile: Some(profile),
            taken: &[],
        };
        self.launch(launch, spec).await
    }

    /// Launches `spec`, records the instances at once, then names them.
    async fn launch(&mut self, launch: &Launch<'_>, spec: LaunchSpec<'_>) -> Result<()> {
        let launched = launch.run_instances(&spec).await?;
        for id in &launched {
            self.state.instances.push(state::Instance {
                id: id.clone(),
                role: spec.role.to_owned(),
                cluster: spec.cluster.map(|c| c.id),
                instance_type: spec.instance_type.to_owned(),
            });
        }
        self.save()?;
        println!("  launched {}: {}", spec.what(), launched.join(" "));
        if let Some(c) = spec.cluster {
            launch.name_workers(c.id, &launched, spec.taken).await?;
        }
        Ok(())
    }

    /// The topology lowered a count: the surplus goes, once the rest is in place.
    async fn terminate_surplus(&self, surplus: &[String]) -> Result<()> {
        if surplus.is_empty() {
            return Ok(());
        }
        self.session
            .ec2
            .terminate_instances()
            .set_instance_ids(Some(surplus.to_vec()))
            .send()
            .await
            .map_err(|e| AwsError::api("TerminateInstances (surplus)", e))?;
        println!("  terminating {} surplus instance(s)", surplus.len());
        Ok(())
    }

    /// Waits as `--wait` asks: for every instance to run, then for every one to answer.
    pub async fn wait(&self) -> anyhow::Result<()> {
        let opts = self.options;
        if opts.wait == Wait::None {
            return Ok(());
        }
        let expected = self
            .state
            .clusters
            .iter()
            .map(|c| c.count as usize)
            .sum::<usize>()
            + 1;
        let started = Instant::now();
        self.wait_running(expected, opts.wait_timeout)
            .await
            .context("waiting for the instances")?;
        println!("All {expected} instances are running.");
        if opts.wait != Wait::Healthy {
            return Ok(());
        }
        let left = opts.wait_timeout.saturating_sub(started.elapsed());
        self.wait_healthy(expected, left)
            .await
            .context("waiting for health")?;
        println!("All {expected} instances answer /health.");
        Ok(())
    }

    async fn wait_running(&self, expected: usize, timeout: Duration) -> Result<()> {
        let (ec2, st) = (&self.session.ec2, &self.state);
        wait::until("instances to run", timeout, WAIT_ADVICE, || async {
            let found = instances::current(ec2, st).await?;
            if let Some(bad) = found
                .iter()
                .find(|i| i.state == "stopped" || i.state == "stopping")
            {
                return Err(AwsError::Usage(format!(
                    "instance {} is {}: start it or terminate it and rerun `up`",
                    bad.id, bad.state
                )));
            }
            let running = found.iter().filter(|i| i.state == "running").count();
            if running >= expected && found.len() >= expected {
                Ok(Ok(()))
            } else {
                Ok(Err(format!("{running}/{expected} running")))
            }
        })
        .await
    }

    async fn wait_healthy(&self, expected: usize, timeout: Duration) -> Result<()> {
        let (ec2, st) = (&self.session.ec2, &self.state);
        let scope = crate::probe::ProbeScope::from_env();
        wait::until(
            "services to answer /health",
            timeout,
            WAIT_ADVICE,
            || async {
                let found = instances::current(ec2, st).await?;
                let health = health_of(&found, st, &scope).await;
                let healthy = health.values().filter(|h| h.is_healthy()).count();
                if healthy == found.len() && found.len() >= expected {
                    return Ok(Ok(()));
                }
                let waiting: Vec<String> = found
                    .iter()
                    .filter(|i| !health.get(&i.id).is_some_and(|h| h.is_healthy()))
                    .take(3)
                    .map(|i| {
                        format!(
                            "{} {}",
                            i.id,
                            health.get(&i.id).map_or("unknown", |h| h.label())
                        )
                    })
                    .collect();
                Ok(Err(format!(
                    "{healthy}/{} healthy; e.g. {}",
                    found.len(),
                    waiting.join(", ")
                )))
            },
        )
        .await
    }

    pub async fn print_endpoints(&self) -> Result<()> {
        let st = &self.state;
        let found = instances::current(&self.session.ec2, st).await?;
        if let Some(b) = found.iter().find(|i| i.role == tags::ROLE_BALANCER) {
            match b.outside_address(st.balancer_port) {
                Some(a) => println!("Balancer: http://{a}/  (routes: {})", routes(st)),
                None => println!("Balancer {} has no public address yet.", b.id),
            }
        }
        Ok(())
    }

    fn save(&self) -> Result<()> {
        self.dir.save(&self.state)
    }
}

fn report(created: bool, what: &str, id: &str) {
    if created {
        println!("  created {what} {id}");
    }
}

fn routes(st: &State) -> String {
    let mut r: Vec<String> = st.clusters.iter().map(|c| c.route.clone()).collect();
    r.push("/".into());
    r.join(", ")
}

async fn network(
    ec2: &aws_sdk_ec2::Client,
    subnet: Option<&str>,
) -> Result<(String, Option<String>)> {
    match subnet {
        Some(s) => {
            let r = ec2
                .describe_subnets()
                .subnet_ids(s)
                .send()
                .await
                .map_err(|e| AwsError::api(format!("DescribeSubnets {s}"), e))?;
            let vpc = r
                .subnets()
                .first()
                .and_then(|s| s.vpc_id())
                .ok_or_else(|| AwsError::Usage(format!("subnet {s} not found in this region")))?;
            Ok((vpc.to_owned(), Some(s.to_owned())))
        }
        None => {
            let r = ec2
                .describe_vpcs()
                .filters(filter("is-default", ["true"]))
                .send()
                .await
                .map_err(|e| AwsError::api("DescribeVpcs (default VPC)", e))?;
            let vpc = r.vpcs().first().and_then(|v| v.vpc_id()).ok_or_else(|| {
                AwsError::Usage(
                    "this region has no default VPC: pass --subnet SUBNET_ID (a subnet that \
                     assigns public addresses)"
                        .into(),
                )
            })?;
            Ok((vpc.to_owned(), None))
        }
    }
}
