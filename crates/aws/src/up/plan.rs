//! The plan `up` shows before it asks: a line per resource (`+` to create, `=` there already,
//! `-` to terminate) and the hourly cost of the instances.

use fulcrum_deploy::catalog::InstanceType;
use fulcrum_deploy::topology::Topology;

use super::inventory::Inventory;
use crate::state::State;
use crate::{delivery, tags, AwsOptions};

pub struct Plan {
    pub text: String,
    pub creates: usize,
    /// Instances beyond a cluster's count (the topology lowered it).
    pub terminates: Vec<String>,
}

pub fn plan(
    t: &Topology,
    opts: &AwsOptions,
    st: &State,
    inv: &Inventory,
    ami: &str,
    balancer_type: &InstanceType,
) -> Plan {
    let mut draft = Draft {
        text: format!(
            "Plan for deployment `{}` in {} (AMI {ami}):\n",
            t.name, st.region
        ),
        creates: 0,
        cost: 0.0,
        terminates: Vec::new(),
    };
    draft.access(t, opts, inv);
    draft.provisioning(t, opts, st, inv);
    draft.instances(t, inv, balancer_type);
    let cost = draft.cost;
    draft.text.push_str(&format!(
        "Hourly on-demand cost: ${cost:.4}/h (Linux, us-east-1 list prices; EBS volumes, data \
         transfer and detailed monitoring are billed on top; `fulcrum down --provider aws` stops \
         it all)\n"
    ));
    Plan {
        text: draft.text,
        creates: draft.creates,
        terminates: draft.terminates,
    }
}

/// The plan as it is written, counting what it creates and what the instances cost.
struct Draft {
    text: String,
    creates: usize,
    cost: f64,
    terminates: Vec<String>,
}

impl Draft {
    /// Who may reach the instances: the key pair and the security groups.
    fn access(&mut self, t: &Topology, opts: &AwsOptions, inv: &Inventory) {
        self.line(
            !inv.key_pair,
            format!(
                "key pair {} (private key saved 0600 in {})",
                tags::key_pair(&t.name),
                opts.state_dir.join(&t.name).display()
            ),
        );
        let ssh = opts
            .ssh_cidr
            .as_deref()
            .map_or("SSH closed".to_owned(), |c| format!("SSH from {c}"));
        self.line(
            inv.balancer_group.is_none(),
            format!(
                "security group {}: tcp {} and 443 from {}; {ssh}",
                tags::balancer_group(&t.name),
                t.aws.balancer_port,
                opts.allow_cidr
            ),
        );
        self.line(
            inv.worker_group.is_none(),
            format!(
                "security group {}: tcp {} from the balancer's group only; {ssh}",
                tags::worker_group(&t.name),
                t.aws.worker_port
            ),
        );
    }

    /// What the instances are given: the balancer's instance profile, the binary's delivery.
    fn provisioning(&mut self, t: &Topology, opts: &AwsOptions, st: &State, inv: &Inventory) {
        match &opts.instance_profile {
            Some(p) => self.line(false, format!("instance profile {p} (existing, left alone)")),
            None => self.line(
                !inv.profile_ready,
                format!(
                    "IAM role and instance profile {} (ec2:DescribeInstances, cloudwatch:GetMetricData only)",
                    tags::balancer_role(&t.name)
                ),
            ),
        }
        match &opts.binary_url {
            Some(u) => self.line(
                false,
                format!("binary from {}", u.split('?').next().unwrap_or(u)),
            ),
            None => {
                let size = std::fs::metadata(&opts.binary)
                    .map(|m| m.len())
                    .unwrap_or(0);
                self.line(
                    !inv.bucket_exists,
                    format!(
                        "private S3 bucket {} with the fulcrum binary ({:.1} MB), fetched through a \
                         presigned URL valid {}",
                        st.bucket.as_deref().unwrap_or("fulcrum-<name>-<random>"),
                        size as f64 / 1e6,
                        humantime::format_duration(delivery::URL_LIFETIME)
                    ),
                );
            }
        }
    }

    /// Each cluster's workers and the balancer, with their cost; instances beyond the counts
    /// are to be terminated.
    fn instances(&mut self, t: &Topology, inv: &Inventory, balancer_type: &InstanceType) {
        for c in &t.clusters {
            let live = inv.live(tags::ROLE_WORKER, Some(c.id));
            self.instance_line(
                c.count as usize,
                c.instance_type,
                format!("cluster {} ({})", c.id, c.route),
                live.len(),
            );
            for extra in live.iter().skip(c.count as usize) {
                self.terminates.push(extra.id.clone());
                self.text.push_str(&format!(
                    "  - terminate {} (cluster {} has more than {} instances)\n",
                    extra.id, c.id, c.count
                ));
            }
        }
        let balancers = inv.live(tags::ROLE_BALANCER, None);
        self.instance_line(
            1,
            balancer_type,
            format!("balancer (port {})", t.aws.balancer_port),
            balancers.len(),
        );
        for extra in balancers.iter().skip(1) {
            self.terminates.push(extra.id.clone());
            self.text
                .push_str(&format!("  - terminate {} (a second balancer)\n", extra.id));
        }
    }

    /// One resource: `+` when it is to be created, `=` when it is there (or not ours to make).
    fn line(&mut self, create: bool, what: String) {
        if create {
            self.creates += 1;
        }
        self.text
            .push_str(&format!("  {} {what}\n", if create { "+" } else { "=" }));
    }

    /// `n` instances of `ty`, `exist` of them there already.
    fn instance_line(&mut self, n: usize, ty: &InstanceType, what: String, exist: usize) {
        let missing = n.saturating_sub(exist);
        self.cost += n as f64 * ty.price_per_hour;
        self.text.push_str(&format!(
            "  {} {n} × {:<9} {what:<24} ${:.4}/h each, ${:.4}/h{}\n",
            if missing > 0 { "+" } else { "=" },
            ty.name,
            ty.price_per_hour,
            n as f64 * ty.price_per_hour,
            if missing > 0 && exist > 0 {
                format!(" ({missing} to create)")
            } else {
                String::new()
            }
        ));
        self.creates += missing;
    }
}
