//! The quick form: `--listen`, `--route PREFIX=WORKERS|@all`, `--policy`, ... turned into the
//! same typed file a configuration file holds, so both go through one validator.

use std::collections::HashSet;
use std::path::PathBuf;

use super::file::{BalancerFile, TargetGroupSpec, TlsSpec};
use super::{AccessLogFormat, Config, ConfigError, Policy, TelemetrySource};

#[derive(Debug, Clone, Default)]
pub struct QuickConfig {
    pub listen: Vec<String>,
    pub routes: Vec<String>,
    pub policy: Option<Policy>,
    pub telemetry: Option<TelemetrySource>,
    pub admin: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub self_signed: bool,
    pub threads: Option<usize>,
    /// A file, `-` for stdout, or `off`.
    pub access_log: Option<String>,
    pub access_log_format: Option<AccessLogFormat>,
}

fn flag_error(message: String) -> ConfigError {
    ConfigError {
        file: "command line".into(),
        line: 0,
        column: 0,
        message,
    }
}

impl QuickConfig {
    /// The configuration file these flags stand for.
    pub fn to_file(&self) -> Result<BalancerFile, ConfigError> {
        let mut file = BalancerFile::new();
        file.threads = self.threads.map(super::file::unplaced);
        if self.listen.is_empty() {
            return Err(flag_error("--listen is required without --config".into()));
        }
        let tls = self.tls()?;
        for l in &self.listen {
            file.listen(l.clone(), tls.clone());
        }
        if let Some(a) = &self.admin {
            file.admin(a.clone());
        }
        let mut seen = HashSet::new();
        for r in &self.routes {
            let (prefix, workers) = r.split_once('=').ok_or_else(|| {
                flag_error(format!(
                    "--route `{r}` is not PREFIX=WORKER[,WORKER...] or PREFIX=@all"
                ))
            })?;
            let name = group_name(prefix);
            if !seen.insert(name.clone()) {
                return Err(flag_error(format!(
                    "--route `{r}`: prefix `{prefix}` is given twice"
                )));
            }
            let mut group = TargetGroupSpec::new(name.clone())
                .workers(workers.split(',').filter(|w| !w.is_empty()));
            group.policy = self.policy.unwrap_or(group.policy);
            group.telemetry = self.telemetry.unwrap_or(group.telemetry);
            file.route(prefix, name).group(group);
        }
        match self.access_log.as_deref() {
            Some("off") => file.access_log.enabled = false,
            Some(path) => file.access_log.path = Some(super::file::unplaced(path.to_owned())),
            None => {}
        }
        if let Some(f) = self.access_log_format {
            file.access_log.format = f;
        }
        Ok(file)
    }

    fn tls(&self) -> Result<Option<TlsSpec>, ConfigError> {
        match (&self.tls_cert, &self.tls_key, self.self_signed) {
            (Some(c), Some(k), false) => Ok(Some(TlsSpec {
                cert: Some(c.clone()),
                key: Some(k.clone()),
                self_signed: false,
            })),
            (None, None, true) => Ok(Some(TlsSpec {
                self_signed: true,
                ..TlsSpec::default()
            })),
            (None, None, false) => Ok(None),
            _ => Err(flag_error(
                "use --tls-cert with --tls-key, or --self-signed alone".into(),
            )),
        }
    }

    pub fn build(&self) -> Result<Config, ConfigError> {
        // Positions would point into no file: the errors name the flags' values instead.
        Config::from_file(
            self.to_file()?,
            &super::Locator::new("command line", ""),
            None,
        )
        .map_err(|e| ConfigError {
            line: 0,
            column: 0,
            ..e
        })
    }
}

/// A target-group name for a route prefix: `/cluster1` → `cluster1`, `/` → `root`.
fn group_name(prefix: &str) -> String {
    let name: String = prefix
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "root".into()
    } else {
        name
    }
}
