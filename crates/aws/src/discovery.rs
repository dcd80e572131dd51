//! The `ec2` discovery provider: a target group's workers are the running instances tagged
//! `fulcrum:deployment=<deployment>`, `fulcrum:role=worker` and `fulcrum:cluster` in the
//! group's clusters, found with `DescribeInstances` every `interval` (the balancer runs the
//! loop in the background; a failed call keeps the last good list).
//!
//! ```toml
//! [[target_group]]
//! name = "cluster1"
//! discovery = { provider = "ec2", interval = "10s", deployment = "seed", clusters = [1], port = 8000, region = "us-east-1" }
//! ```
//!
//! A worker is reached at its `fulcrum:endpoint` tag when it has one, else at its private
//! address and `port` (the balancer runs in the same VPC). Addresses outside
//! `FULCRUM_AWS_PROBE_CIDRS` (when set) are left out.

use std::sync::Arc;

use fulcrum_balancer::extension::BoxFuture;
use fulcrum_balancer::{DiscoveredWorker, Discovery, DiscoveryProvider};
use tokio::sync::OnceCell;

use crate::instances::{describe, filter, tag_filter};
use crate::probe::ProbeScope;
use crate::tags;

pub const PROVIDER_NAME: &str = "ec2";

/// Builds [`Ec2Discovery`] from a target group's `discovery` table.
#[derive(Debug, Default)]
pub struct Ec2DiscoveryProvider;

/// A target group's view of the deployment's workers.
pub struct Ec2Discovery {
    settings: Settings,
    scope: ProbeScope,
    client: OnceCell<aws_sdk_ec2::Client>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub deployment: String,
    pub clusters: Vec<u32>,
    pub port: u16,
    pub region: Option<String>,
}

impl Settings {
    pub fn parse(t: &toml::Table) -> Result<Settings, String> {
        for key in t.keys() {
            if !["deployment", "clusters", "port", "region"].contains(&key.as_str()) {
                return Err(format!(
                    "unknown key `{key}` (the ec2 provider takes deployment, clusters, port, region)"
                ));
            }
        }
        let deployment = t
            .get("deployment")
            .and_then(|d| d.as_str())
            .filter(|d| !d.is_empty())
            .ok_or("needs `deployment = \"NAME\"` (the fulcrum:deployment tag)")?
            .to_owned();
        let clusters = match t.get("clusters") {
            None => return Err("needs `clusters = [N, ...]` (fulcrum:cluster tags)".into()),
            Some(v) => v
                .as_array()
                .ok_or("`clusters` must be a list of cluster ids")?
                .iter()
                .map(|c| {
                    c.as_integer()
                        .and_then(|c| u32::try_from(c).ok())
                        .ok_or("`clusters` must be a list of cluster ids")
                })
                .collect::<Result<Vec<u32>, _>>()?,
        };
        if clusters.is_empty() {
            return Err("`clusters` must name at least one cluster".into());
        }
        let port = match t.get("port") {
            None => 8000,
            Some(p) => p
                .as_integer()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or("`port` must be a TCP port")?,
        };
        let region = match t.get("region") {
            None => None,
            Some(r) => Some(r.as_str().ok_or("`region` must be a string")?.to_owned()),
        };
        Ok(Settings {
            deployment,
            clusters,
            port,
            region,
        })
    }
}

impl DiscoveryProvider for Ec2DiscoveryProvider {
    fn create(&self, settings: &toml::Table) -> Result<Arc<dyn Discovery>, String> {
        let settings = Settings::parse(settings)?;
        Ok(Arc::new(Ec2Discovery {
            settings,
            scope: ProbeScope::from_env(),
            client: OnceCell::new(),
        }))
    }
}

impl Ec2Discovery {
    async fn client(&self) -> Result<&aws_sdk_ec2::Client, String> {
        self.client
            .get_or_try_init(|| async {
                let config = crate::session::sdk_config(self.settings.region.as_deref(), None)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(aws_sdk_ec2::Client::new(&config))
            })
            .await
    }

    async fn find(&self) -> Result<Vec<DiscoveredWorker>, String> {
        let ec2 = self.client().await?;
        let s = &self.settings;
        let found = describe(
            ec2,
            vec![
                tag_filter(tags::DEPLOYMENT, [s.deployment.as_str()]),
                tag_filter(tags::ROLE, [tags::ROLE_WORKER]),
                tag_filter(tags::CLUSTER, s.clusters.iter().map(|c| c.to_string())),
                filter("instance-state-name", ["running"]),
            ],
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for i in found {
            match i.inside_address(s.port) {
                Some(addr) if self.scope.allows(addr.ip()) => out.push(DiscoveredWorker {
                    addr,
                    instance_id: Some(i.id.clone()),
                }),
                Some(addr) => {
                    tracing::debug!(instance = %i.id, %addr, "outside FULCRUM_AWS_PROBE_CIDRS; left out")
                }
                None => tracing::debug!(instance = %i.id, "no address yet"),
            }
        }
        out.sort_by_key(|w| w.addr);
        out.dedup_by_key(|w| w.addr);
        Ok(out)
    }
}

impl Discovery for Ec2Discovery {
    fn list(&self) -> BoxFuture<'_, Result<Vec<DiscoveredWorker>, String>> {
        Box::pin(self.find())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn settings_are_checked_at_load() {
        let s = Settings::parse(&table(
            "deployment = \"seed\"\nclusters = [1, 2]\nport = 8000\nregion = \"eu-west-1\"",
        ))
        .unwrap();
        assert_eq!(s.clusters, vec![1, 2]);
        assert_eq!(s.region.as_deref(), Some("eu-west-1"));
        assert!(Settings::parse(&table("clusters = [1]"))
            .unwrap_err()
            .contains("deployment"));
        assert!(Settings::parse(&table("deployment = \"x\""))
            .unwrap_err()
            .contains("clusters"));
        assert!(
            Settings::parse(&table("deployment = \"x\"\nclusters = [1]\ntag = 1"))
                .unwrap_err()
                .contains("unknown key `tag`")
        );
        assert!(
            Settings::parse(&table("deployment = \"x\"\nclusters = [1]\nport = 0"))
                .unwrap_err()
                .contains("port")
        );
    }
}
