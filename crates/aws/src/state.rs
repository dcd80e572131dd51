//! `.fulcrum/<deployment>/state.json`: every resource id, written as soon as the resource
//! exists (atomically: a temporary file renamed over the old one), so that a failure or an
//! interrupt at any point leaves a state from which `down` removes everything.
//!
//! The state holds ids and names only, never a secret. The private key lives beside it in its
//! own file, mode 0600.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{AwsError, Result};

pub const PROVIDER: &str = "aws";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// Always `aws`: the local provider keeps its state at the same path.
    pub provider: String,
    pub name: String,
    pub region: String,
    pub key_pair: Option<KeyPair>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub balancer_group: Option<String>,
    pub worker_group: Option<String>,
    pub instance_profile: Option<InstanceProfile>,
    pub bucket: Option<String>,
    pub ami: Option<String>,
    /// The topology's clusters, for `status` and `deployment` without the topology file.
    #[serde(default)]
    pub clusters: Vec<ClusterSpec>,
    pub worker_port: u16,
    pub balancer_port: u16,
    #[serde(default)]
    pub instances: Vec<Instance>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyPair {
    pub name: String,
    pub id: Option<String>,
    /// Where the private key was saved (mode 0600).
    pub private_key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceProfile {
    pub name: String,
    /// Created by fulcrum (and so removed by `down`), or an existing one named with
    /// `--instance-profile` (left alone).
    pub created: bool,
    /// The role behind a created profile.
    pub role: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterSpec {
    pub id: u32,
    pub route: String,
    pub instance_type: String,
    pub count: u32,
    pub work_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Instance {
    pub id: String,
    /// `worker` or `balancer`.
    pub role: String,
    pub cluster: Option<u32>,
    pub instance_type: String,
}

/// Where a deployment's files live.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub dir: PathBuf,
}

impl StateDir {
    pub fn new(state_dir: &Path, name: &str) -> StateDir {
        StateDir {
            dir: state_dir.join(name),
        }
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn key_file(&self, key_name: &str) -> PathBuf {
        self.dir.join(format!("{key_name}.pem"))
    }

    /// The state, if one exists; an error if it belongs to another provider.
    pub fn load(&self) -> Result<Option<State>> {
        let path = self.state_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(AwsError::State {
                    path,
                    message: format!("cannot read: {e}"),
                })
            }
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| AwsError::State {
                path: path.clone(),
                message: format!("not valid JSON ({e}); fix or move it, then `down --by-tag`"),
            })?;
        let provider = value.get("provider").and_then(|p| p.as_str()).unwrap_or("");
        if provider != PROVIDER {
            return Err(AwsError::State {
                path,
                message: format!(
                    "belongs to the `{provider}` provider, not aws: use that provider's `down` \
                     first, or another deployment name"
                ),
            });
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| AwsError::State {
                path,
                message: format!(
                    "unreadable aws state ({e}); move it away and use `down --by-tag`"
                ),
            })
    }

    /// Writes the state atomically.
    pub fn save(&self, state: &State) -> Result<()> {
        let path = self.state_file();
        let fail = |message: String| AwsError::State {
            path: path.clone(),
            message,
        };
        self.ensure_dir()?;
        let text = serde_json::to_string_pretty(state).expect("state serializes");
        let tmp = self.dir.join(".state.json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| fail(format!("cannot write {}: {e}", tmp.display())))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| fail(format!("cannot write {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(|e| fail(format!("cannot replace: {e}")))
    }

    /// Removes the state file, and the directory when nothing else is left in it.
    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_file(self.state_file()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(AwsError::State {
                    path: self.state_file(),
                    message: format!("cannot remove: {e}"),
                })
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
        Ok(())
    }

    fn ensure_dir(&self) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| AwsError::File {
            path: self.dir.clone(),
            message: format!("cannot create the state directory: {e}"),
        })?;
        // The directory holds a private key: owner only.
        let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
        Ok(())
    }

    /// Saves a private key with mode 0600 from the start (never readable by others, not even
    /// for an instant), refusing to overwrite one.
    pub fn save_private_key(&self, path: &Path, pem: &str) -> Result<()> {
        self.ensure_dir()?;
        let fail = |message: String| AwsError::File {
            path: path.to_owned(),
            message,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| fail(format!("cannot create the private key file: {e}")))?;
        f.write_all(pem.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| fail(format!("cannot write the private key: {e}")))
    }
}

impl State {
    pub fn new(name: &str, region: &str) -> State {
        State {
            provider: PROVIDER.into(),
            name: name.into(),
            region: region.into(),
            ..State::default()
        }
    }

    /// Whether the state names anything that would have to be removed.
    pub fn is_empty(&self) -> bool {
        self.key_pair.is_none()
            && self.balancer_group.is_none()
            && self.worker_group.is_none()
            && self.instance_profile.as_ref().is_none_or(|p| !p.created)
            && self.bucket.is_none()
            && self.instances.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("fulcrum-aws-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn state_round_trips_and_refuses_other_providers() {
        let root = scratch("rt");
        let sd = StateDir::new(&root, "seed");
        assert_eq!(sd.load().unwrap(), None);
        let mut s = State::new("seed", "us-east-1");
        s.worker_group = Some("sg-1".into());
        sd.save(&s).unwrap();
        assert_eq!(sd.load().unwrap(), Some(s));
        let mode = std::fs::metadata(sd.state_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(sd.state_file(), r#"{"provider": "local"}"#).unwrap();
        assert!(sd
            .load()
            .unwrap_err()
            .to_string()
            .contains("`local` provider"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn private_keys_are_owner_only_and_never_overwritten() {
        let root = scratch("key");
        let sd = StateDir::new(&root, "seed");
        let path = sd.key_file("fulcrum-seed");
        sd.save_private_key(&path, "-----BEGIN KEY-----\n").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(sd.save_private_key(&path, "other").is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
