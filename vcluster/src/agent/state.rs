//! The host agent's small state file (`<state-dir>/agent.json`): the secret the controller
//! presents to this agent, the host id it registered as, and per overlay network the store
//! revision last applied and the nodes it made. Intent is written before acting, so a crash
//! halfway leaves a record of what may exist. Everything else is found on the host by
//! naming convention; this file only adds what the host cannot say (node names, revisions).
//! Written atomically (temp file + rename).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// Store revision of the last statement applied about this network.
    pub applied_revision: i64,
    /// False once removed (kept as a tombstone so an older push cannot bring it back).
    pub present: bool,
    /// Node index -> node name.
    #[serde(default)]
    pub nodes: BTreeMap<u32, String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentStateFile {
    pub agent_secret: String,
    #[serde(default)]
    pub host_id: Option<i64>,
    /// Revision of the last full desired state applied: anything older is stale.
    #[serde(default)]
    pub snapshot_revision: i64,
    #[serde(default)]
    pub networks: BTreeMap<u32, NetworkRecord>,
}

pub struct StateStore {
    path: PathBuf,
    pub state: AgentStateFile,
}

impl StateStore {
    /// Loads the state file, or starts a new one with a fresh secret.
    pub fn open(dir: &Path) -> std::io::Result<StateStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("agent.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                rand::rng().fill_bytes(&mut secret);
                AgentStateFile {
                    agent_secret: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
                    ..Default::default()
                }
            }
            Err(e) => return Err(e),
        };
        let store = StateStore { path, state };
        store.save()?;
        Ok(store)
    }

    pub fn save(&self) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&self.state).expect("serialisable"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
