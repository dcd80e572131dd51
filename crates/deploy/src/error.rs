//! What can go wrong with a local deployment: one error for the provider, its processes and its
//! companions.

use std::fmt::Display;
use std::path::Path;

use crate::cgroup::CgroupError;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(
        "the topology needs {vcpus} emulated vCPUs but this machine has {cores} cores and \
         {reserve} are reserved for the balancer and the load generator; lower the reserves or \
         the counts in [local] / [[cluster]]"
    )]
    NoRoom {
        vcpus: u32,
        cores: usize,
        reserve: f64,
    },
    #[error("{what} did not start: {why}; see {log}")]
    Start {
        what: String,
        why: String,
        log: String,
    },
    /// The message names what was being done; the cause follows in the error's chain.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted; everything this `up` started was stopped and removed")]
    Interrupted,
    #[error(
        "deployment `{name}` is managed by the {provider} provider; use `--provider {provider}`"
    )]
    OtherProvider { name: String, provider: String },
    #[error("no local deployment `{name}`")]
    NoDeployment { name: String },
    #[error("no instance `{instance}` in `{deployment}`")]
    NoInstance {
        instance: String,
        deployment: String,
    },
    #[error("companion `{name}` of deployment `{deployment}` is already running")]
    CompanionRunning { name: String, deployment: String },
}

impl DeployError {
    /// For `map_err`: an I/O error while doing `context`.
    pub(crate) fn io(context: impl Display) -> impl FnOnce(std::io::Error) -> DeployError {
        move |source| DeployError::Io {
            context: context.to_string(),
            source,
        }
    }

    /// A process that did not start, and the log that tells why (none when it never ran).
    pub(crate) fn start(what: &str, why: String, log: Option<&Path>) -> DeployError {
        DeployError::Start {
            what: what.to_owned(),
            why,
            log: log.map(|l| l.display().to_string()).unwrap_or_default(),
        }
    }
}
