//! Workers discovered while serving: a JSON file watched for changes (written by an operator,
//! a script, or fulcrum's own deployment), and a hook for providers such as the AWS one.
//!
//! The file holds `{"workers": ["127.0.0.1:9001", ...]}` or just the array. A file that cannot
//! be read or parsed is logged and ignored: the last good list stays in force.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::WorkerAddr;

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum WorkerFile {
    Object { workers: Vec<String> },
    List(Vec<String>),
}

/// Reads a discovery file into addresses.
pub fn read_file(path: &Path) -> Result<Vec<WorkerAddr>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let list = match serde_json::from_str::<WorkerFile>(&text)
        .map_err(|e| format!("{}: not a worker list ({e})", path.display()))?
    {
        WorkerFile::Object { workers } | WorkerFile::List(workers) => workers,
    };
    let mut out = Vec::with_capacity(list.len());
    for w in list {
        let a = WorkerAddr::parse(&w).map_err(|e| format!("{}: {e}", path.display()))?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    Ok(out)
}

/// Watches `path` (by modification time and length, every `every`) and calls `apply` with each
/// new good list, starting with the current one.
pub fn watch_file(
    path: PathBuf,
    every: Duration,
    apply: impl Fn(Vec<WorkerAddr>) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen: Option<(SystemTime, u64)> = None;
        loop {
            let stamp = std::fs::metadata(&path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            if stamp.is_some() && stamp != seen {
                match read_file(&path) {
                    Ok(list) => {
                        tracing::info!(file = %path.display(), workers = list.len(), "discovered workers");
                        apply(list);
                        seen = stamp;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "discovery file ignored; keeping the last good list");
                        seen = stamp;
                    }
                }
            } else if stamp.is_none() && seen.is_some() {
                tracing::warn!(file = %path.display(), "discovery file vanished; keeping the last good list");
                seen = None;
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// Asks a discovery provider for the group's workers every `every`; failures keep the last
/// good list.
pub fn poll_provider(
    provider: std::sync::Arc<dyn crate::extension::Discovery>,
    every: Duration,
    group: String,
    apply: impl Fn(Vec<crate::extension::DiscoveredWorker>) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<Vec<crate::extension::DiscoveredWorker>> = None;
        loop {
            match provider.list().await {
                Ok(mut found) => {
                    found.sort_by_key(|w| w.addr);
                    if last.as_ref() != Some(&found) {
                        tracing::info!(target_group = %group, workers = found.len(), "discovered workers");
                        apply(found.clone());
                        last = Some(found);
                    }
                }
                Err(e) => {
                    tracing::warn!(target_group = %group, error = %e, "discovery failed; keeping the last good list")
                }
            }
            tokio::time::sleep(every).await;
        }
    })
}
