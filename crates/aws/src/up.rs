//! `fulcrum up --provider aws`: look at what exists, print the plan and its hourly cost, ask
//! (or take `--yes`), create what is missing in dependency order — recording each resource in
//! the state the moment it exists — then wait as asked.
//!
//! `up` converges: run twice, the second run finds everything and creates nothing; after a
//! failure it resumes where the first stopped (or `down` removes what was made).
//!
//! `inventory` finds what exists, `plan` writes what will change, `deployer` makes it one
//! resource kind at a time (instances through `launch`) and waits.

mod deployer;
mod inventory;
mod launch;
mod plan;

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use fulcrum_deploy::catalog::{self, InstanceType};
use fulcrum_deploy::topology::Topology;

use crate::error::{AwsError, Result};
use crate::security_groups as sg;
use crate::session::Session;
use crate::state::{State, StateDir};
use crate::{AwsOptions, Wait};
use deployer::AwsDeployer;
use inventory::inventory;
use plan::plan;

/// Amazon Linux 2023 (x86_64), from AWS's public SSM parameter: its glibc (2.34) runs the
/// fulcrum binary built on Debian 12, and the t2/t3 types are x86_64.
pub const DEFAULT_AMI_PARAMETER: &str =
    "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";

/// Returns whether anything was created.
pub async fn up(t: &Topology, opts: &AwsOptions) -> anyhow::Result<bool> {
    let balancer_type = check_flags(t, opts)?;
    let dir = StateDir::new(&opts.state_dir, &t.name);
    let prior = dir.load()?;
    let session = connect(t, opts, prior.as_ref()).await?;
    let st = prior.unwrap_or_else(|| State::new(&t.name, &session.region));
    let ami = resolve_ami(&session, opts.ami.as_deref()).await?;
    let inv = inventory(&session, &dir, &st, t, opts).await?;
    let plan = plan(t, opts, &st, &inv, &ami, balancer_type);
    print!("{}", plan.text);
    let mut deployer = AwsDeployer {
        topology: t,
        options: opts,
        session: &session,
        dir: &dir,
        state: st,
        inventory: &inv,
        ami: &ami,
        balancer_type,
    };
    if plan.creates == 0 && plan.terminates.is_empty() {
        println!("Nothing to create: deployment `{}` is complete.", t.name);
    } else {
        confirm(opts)?;
        if let Err(e) = deployer.apply(&plan.terminates).await {
            let e = anyhow::Error::from(e);
            return Err(e.context(format!(
                "`up` stopped halfway; everything created so far is recorded in {} — rerun `up` \
                 to finish, or `fulcrum down --provider aws --name {}` to remove it",
                dir.state_file().display(),
                t.name
            )));
        }
        println!("Created; state in {}.", dir.state_file().display());
    }
    deployer.wait().await?;
    if opts.wait != Wait::None {
        deployer.print_endpoints().await?;
    }
    Ok(plan.creates > 0)
}

/// What the flags and the topology ask that AWS would refuse, refused before anything is
/// looked up; returns the balancer's instance type.
fn check_flags(t: &Topology, opts: &AwsOptions) -> Result<&'static InstanceType> {
    sg::check_cidr("--allow-cidr", &opts.allow_cidr)?;
    if let Some(c) = &opts.ssh_cidr {
        sg::check_cidr("--ssh-cidr", c)?;
    }
    for c in &t.clusters {
        check_x86(c.instance_type.name)?;
    }
    let balancer_type = catalog::lookup(&t.aws.balancer_instance_type)
        .map_err(|e| AwsError::Usage(format!("aws.balancer_instance_type: {e}")))?;
    check_x86(balancer_type.name)?;
    Ok(balancer_type)
}

/// A session in the deployment's region: the flag's, else the one it was made in, else the
/// SDK's chain and the topology's. A deployment is never continued in another region.
async fn connect(t: &Topology, opts: &AwsOptions, prior: Option<&State>) -> Result<Session> {
    let explicit = opts
        .region
        .clone()
        .or_else(|| prior.map(|s| s.region.clone()));
    let session = Session::connect(explicit.as_deref(), t.aws.region.as_deref()).await?;
    if let Some(p) = prior {
        if p.region != session.region {
            return Err(AwsError::Usage(format!(
                "deployment `{}` lives in {}, not {}: pass --region {} (or `down` it first)",
                t.name, p.region, session.region, p.region
            )));
        }
    }
    Ok(session)
}

/// The binary is x86_64 Linux; ARM (Graviton) types would not run it: `a1`, and families whose
/// attribute letters after the generation include `g` (t4g, m6g, c7gn, r8gd). `g4dn` is x86.
fn check_x86(name: &str) -> Result<()> {
    let family = name.split('.').next().unwrap_or_default();
    let attributes = family.trim_start_matches(|c: char| c.is_ascii_lowercase());
    let attributes = attributes.trim_start_matches(|c: char| c.is_ascii_digit());
    if family == "a1" || attributes.contains('g') {
        return Err(AwsError::Usage(format!(
            "{name} is an ARM (Graviton) type and the fulcrum binary is x86_64: pick an x86 type"
        )));
    }
    Ok(())
}

async fn resolve_ami(session: &Session, ami: Option<&str>) -> Result<String> {
    let parameter = match ami {
        Some(a) => match a.strip_prefix("resolve:ssm:") {
            Some(p) => p.to_owned(),
            None => return Ok(a.to_owned()),
        },
        None => DEFAULT_AMI_PARAMETER.to_owned(),
    };
    let got = session
        .ssm
        .get_parameter()
        .name(&parameter)
        .send()
        .await
        .map_err(|e| AwsError::api(format!("SSM GetParameter {parameter} (the AMI)"), e))?;
    got.parameter()
        .and_then(|p| p.value())
        .map(str::to_owned)
        .ok_or_else(|| {
            AwsError::Usage(format!(
                "SSM parameter {parameter} has no value; pass --ami"
            ))
        })
}

fn confirm(opts: &AwsOptions) -> Result<()> {
    if opts.yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(AwsError::Usage(
            "not applied: pass --yes to apply the plan without a terminal to confirm on".into(),
        ));
    }
    print!("Apply this plan? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(AwsError::Usage("not applied (answer `y` to apply)".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_types_are_refused() {
        assert!(check_x86("t2.micro").is_ok());
        assert!(check_x86("c5.large").is_ok());
        assert!(check_x86("t4g.micro").is_err());
        assert!(check_x86("a1.large").is_err());
        assert!(check_x86("c7gn.large").is_err());
        assert!(check_x86("g4dn.xlarge").is_ok());
        assert!(check_x86("m5.large").is_ok());
    }
}
