//! One FUSE mount per dataset per node, shared by every volume that uses it.
//!
//! The CSI plugin records each published volume here; the dataset is mounted
//! under `<mount-root>/<namespace>/<name>` when its first volume arrives and
//! unmounted when its last volume is released.

use crate::dataset::DatasetView;
use crate::fuse::{MountHandle, MountOptions};
use crate::metrics::Metrics;
use crate::{Error, Result};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use strata_wire::api::types::VolumeInfo;

type DatasetKey = (String, String);

/// Gauge: datasets mounted with FUSE on this node for volumes.
pub const MOUNTED_DATASETS: &str = "strata_mounted_datasets";
/// Gauge: volumes (pod publishes) recorded on this node.
pub const PUBLISHED_VOLUMES: &str = "strata_published_volumes";
/// Counter: dataset mounts this agent took over from the holder (a previous agent served
/// them), rather than mounting anew.
pub const MOUNTS_TAKEN_OVER: &str = "strata_mounts_taken_over";

struct DatasetMount {
    handle: MountHandle,
    volumes: BTreeSet<String>,
}

struct VolumeRecord {
    dataset: DatasetKey,
    /// Who published it (the CSI volume id), when the caller said.
    owner: Option<String>,
}

/// A volume record as kept for the next agent (mounts with a holder).
#[derive(Debug, Serialize, Deserialize)]
struct SavedVolume {
    volume_id: String,
    namespace: String,
    name: String,
    owner: Option<String>,
}

#[derive(Default)]
struct State {
    mounts: BTreeMap<DatasetKey, DatasetMount>,
    volumes: BTreeMap<String, VolumeRecord>,
}

/// What [`MountRegistry::acquire`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    pub mount_path: PathBuf,
    /// Volumes using the mount now, this one included.
    pub volumes: usize,
    /// False when the volume was already recorded (a repeated publish).
    pub new_volume: bool,
}

/// What [`MountRegistry::release`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub released: bool,
    pub unmounted: bool,
}

pub struct MountRegistry {
    root: PathBuf,
    options: MountOptions,
    /// With a holder: where the volume records are kept for the next agent (tmpfs).
    volumes_file: Option<PathBuf>,
    state: tokio::sync::Mutex<State>,
    mounted: Gauge,
    published: Gauge,
    taken_over: Counter,
}

impl std::fmt::Debug for MountRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountRegistry")
            .field("root", &self.root)
            .finish()
    }
}

impl MountRegistry {
    /// Creates `root` if needed. Mount paths are reported canonical, as the
    /// kernel's mount table shows them.
    pub fn new(root: &Path, options: MountOptions) -> Result<Self> {
        std::fs::create_dir_all(root)
            .map_err(|e| Error::io(format!("creating mount root {}", root.display()), e))?;
        let root = root
            .canonicalize()
            .map_err(|e| Error::io(format!("resolving mount root {}", root.display()), e))?;
        Ok(MountRegistry {
            root,
            volumes_file: options
                .holder
                .as_ref()
                .map(|h| h.state_dir.join("volumes.json")),
            options,
            state: tokio::sync::Mutex::new(State::default()),
            mounted: Gauge::default(),
            published: Gauge::default(),
            taken_over: Counter::default(),
        })
    }

    /// Registers the registry's gauges ([`MOUNTED_DATASETS`], [`PUBLISHED_VOLUMES`]).
    pub fn register_metrics(&self, metrics: &Metrics) {
        let (mounted, published) = (self.mounted.clone(), self.published.clone());
        let taken_over = self.taken_over.clone();
        metrics.register_with(|registry| {
            registry.register(
                MOUNTS_TAKEN_OVER,
                "Dataset mounts taken over from the mount holder after an agent restart",
                taken_over,
            );
            registry.register(
                MOUNTED_DATASETS,
                "Datasets mounted with FUSE for volumes",
                mounted,
            );
            registry.register(
                PUBLISHED_VOLUMES,
                "Volumes (pod publishes) using dataset mounts",
                published,
            );
        });
    }

    fn update_gauges(&self, state: &State) {
        self.mounted.set(state.mounts.len() as i64);
        self.published.set(state.volumes.len() as i64);
        self.save_volumes(state);
    }

    /// Keeps the volume records for the next agent (with a holder only). Written whole
    /// and renamed into place, so a kill never leaves half a file.
    fn save_volumes(&self, state: &State) {
        let Some(path) = &self.volumes_file else {
            return;
        };
        let saved: Vec<SavedVolume> = state
            .volumes
            .iter()
            .map(|(id, r)| SavedVolume {
                volume_id: id.clone(),
                namespace: r.dataset.0.clone(),
                name: r.dataset.1.clone(),
                owner: r.owner.clone(),
            })
            .collect();
        let tmp = path.with_extension("json.tmp");
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&tmp, serde_json::to_vec(&saved).expect("serializes")))
            .and_then(|_| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e,
                "cannot keep the volume records for the next agent");
        }
    }

    /// Takes over the mounts a previous agent left to the holder, with their volume
    /// records: each volume is acquired again, and its dataset's mount taken over from
    /// the holder. `view` finds a dataset; one no longer configured is left to the holder
    /// (its readers get EIO once the holder's wait ends).
    pub async fn take_over(&self, view: impl Fn(&str, &str) -> Option<Arc<DatasetView>>) {
        let Some(path) = &self.volumes_file else {
            return;
        };
        let saved: Vec<SavedVolume> = match std::fs::read(path) {
            Ok(data) => serde_json::from_slice(&data).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "unreadable volume records; not taking mounts over");
                Vec::new()
            }),
            Err(_) => return,
        };
        for v in saved {
            let Some(dataset) = view(&v.namespace, &v.name) else {
                tracing::warn!(dataset = %format!("{}/{}", v.namespace, v.name), volume_id = %v.volume_id,
                    "a volume of a dataset no longer configured here: its mount is left to the holder");
                continue;
            };
            match self
                .acquire(dataset, &v.volume_id, v.owner.as_deref())
                .await
            {
                Ok(a) => {
                    tracing::info!(volume_id = %v.volume_id, mountpoint = %a.mount_path.display(), "volume taken over")
                }
                Err(e) => {
                    tracing::warn!(volume_id = %v.volume_id, error = %e, "taking a volume over failed")
                }
            }
        }
    }

    /// Leaves every mount to the holder for the next agent (shutdown with a holder): the
    /// volume records stay for it too.
    pub async fn leave_all_to_holder(&self) {
        let mut state = self.state.lock().await;
        for (_, mount) in std::mem::take(&mut state.mounts) {
            mount.handle.leave_to_holder();
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the dataset is (or would be) mounted.
    pub fn mount_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.root.join(namespace).join(name)
    }

    /// Makes sure the dataset is mounted and records `volume_id` (published by `owner`)
    /// as a user of it. Idempotent.
    pub async fn acquire(
        &self,
        view: Arc<DatasetView>,
        volume_id: &str,
        owner: Option<&str>,
    ) -> Result<Acquired> {
        let key = (view.namespace().to_string(), view.name().to_string());
        let mut state = self.state.lock().await;
        if let Some(other) = state.volumes.get(volume_id).map(|r| &r.dataset)
            && other != &key
        {
            return Err(Error::Conflict {
                message: format!(
                    "volume {volume_id} is already recorded for dataset {}/{}, not {}/{}",
                    other.0, other.1, key.0, key.1
                ),
            });
        }
        if !state.mounts.contains_key(&key) {
            let path = self.mount_path(&key.0, &key.1);
            let handle = self.mount(view, &path).await?;
            if handle.taken_over() {
                self.taken_over.inc();
            }
            state.mounts.insert(
                key.clone(),
                DatasetMount {
                    handle,
                    volumes: BTreeSet::new(),
                },
            );
        }
        let mount = state.mounts.get_mut(&key).expect("inserted above");
        let new_volume = mount.volumes.insert(volume_id.to_string());
        let acquired = Acquired {
            mount_path: mount.handle.mountpoint().to_path_buf(),
            volumes: mount.volumes.len(),
            new_volume,
        };
        state.volumes.insert(
            volume_id.to_string(),
            VolumeRecord {
                dataset: key.clone(),
                owner: owner.map(str::to_string),
            },
        );
        self.update_gauges(&state);
        tracing::info!(dataset = %format!("{}/{}", key.0, key.1), volume_id, volumes = acquired.volumes, "volume acquired");
        Ok(acquired)
    }

    async fn mount(&self, view: Arc<DatasetView>, path: &Path) -> Result<MountHandle> {
        // Anything mounted here that this registry does not know was left by an agent
        // that died (its FUSE session is gone, the path answers ENOTCONN, though cached
        // attributes may hide that from stat): detach it first, before anything else
        // touches the path. Unless the holder holds it: then it is live, and taken over.
        let held = match &self.options.holder {
            Some(holder) => {
                let client = holder.client.clone();
                let path = path.to_path_buf();
                tokio::task::spawn_blocking(move || client.list())
                    .await
                    .map_err(|e| Error::Task(e.to_string()))?
                    .map_err(|e| Error::Unavailable(format!("mount holder: {e}")))?
                    .iter()
                    .any(|m| m.mountpoint == path)
            }
            None => false,
        };
        for _ in 0..8 {
            if held || !is_mount_point(path) {
                break;
            }
            tracing::warn!(mountpoint = %path.display(), "detaching a stale mount left by a previous agent");
            if let Err(e) = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(mountpoint = %path.display(), error = %e, "could not detach the stale mount");
                break;
            }
        }
        std::fs::create_dir_all(path)
            .map_err(|e| Error::io(format!("creating mount point {}", path.display()), e))?;
        let options = self.options.clone();
        let path = path.to_path_buf();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let _guard = handle.enter();
            crate::fuse::mount(view, &path, options)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }

    /// Forgets `volume_id`; unmounts its dataset when no volume uses it any more. Idempotent.
    /// With `dataset`, only releases the volume if it belongs to that dataset.
    pub async fn release(
        &self,
        volume_id: &str,
        dataset: Option<(&str, &str)>,
    ) -> Result<Released> {
        let mut state = self.state.lock().await;
        let Some(key) = state.volumes.get(volume_id).map(|r| r.dataset.clone()) else {
            return Ok(Released {
                released: false,
                unmounted: false,
            });
        };
        if let Some((ns, name)) = dataset
            && (key.0 != ns || key.1 != name)
        {
            return Err(Error::Conflict {
                message: format!(
                    "volume {volume_id} belongs to dataset {}/{}, not {ns}/{name}",
                    key.0, key.1
                ),
            });
        }
        state.volumes.remove(volume_id);
        let mut unmounted = false;
        if let Some(mount) = state.mounts.get_mut(&key) {
            mount.volumes.remove(volume_id);
            if mount.volumes.is_empty() {
                let mount = state.mounts.remove(&key).expect("present");
                unmount(mount.handle).await?;
                unmounted = true;
            }
        }
        self.update_gauges(&state);
        tracing::info!(dataset = %format!("{}/{}", key.0, key.1), volume_id, unmounted, "volume released");
        Ok(Released {
            released: true,
            unmounted,
        })
    }

    /// Serves the dataset's mount (if any) from `view`, the dataset as configured now.
    pub async fn use_view(&self, view: &Arc<DatasetView>) {
        let state = self.state.lock().await;
        let key = (view.namespace().to_string(), view.name().to_string());
        if let Some(m) = state.mounts.get(&key) {
            m.handle.use_view(view.clone());
        }
    }

    /// Volumes using the dataset's mount.
    pub async fn dataset_volumes(&self, namespace: &str, name: &str) -> Vec<String> {
        let state = self.state.lock().await;
        state
            .mounts
            .get(&(namespace.to_string(), name.to_string()))
            .map(|m| m.volumes.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The dataset's mount point, if it is mounted.
    pub async fn mounted_at(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        let state = self.state.lock().await;
        state
            .mounts
            .get(&(namespace.to_string(), name.to_string()))
            .map(|m| m.handle.mountpoint().to_path_buf())
    }

    /// Every recorded volume.
    pub async fn volumes(&self) -> Vec<VolumeInfo> {
        let state = self.state.lock().await;
        state
            .volumes
            .iter()
            .map(|(id, record)| VolumeInfo {
                volume_id: id.clone(),
                namespace: record.dataset.0.clone(),
                name: record.dataset.1.clone(),
                mount_path: state
                    .mounts
                    .get(&record.dataset)
                    .map(|m| m.handle.mountpoint().to_path_buf())
                    .unwrap_or_default(),
                owner: record.owner.clone(),
            })
            .collect()
    }

    /// Unmounts everything (agent shutdown). Pods using the volumes lose them, as they
    /// would when the agent process ends.
    pub async fn unmount_all(&self) {
        let mut state = self.state.lock().await;
        state.volumes.clear();
        let mounts = std::mem::take(&mut state.mounts);
        self.update_gauges(&state);
        for ((ns, name), mount) in mounts {
            if let Err(e) = unmount(mount.handle).await {
                tracing::warn!(dataset = %format!("{ns}/{name}"), error = %e, "unmount at shutdown failed");
            }
        }
    }
}

/// Whether something is mounted at `path` (per this process's mount table).
fn is_mount_point(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    // mountinfo escapes these as octal.
    let wanted = path
        .to_string_lossy()
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012");
    table
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
}

/// How long an unmount may wait for the FUSE session to end.
const UNMOUNT_WAIT: Duration = Duration::from_secs(10);

async fn unmount(handle: MountHandle) -> Result<()> {
    let path = handle.mountpoint().to_path_buf();
    // The session ends only when no mount of the file system is left. If some bind
    // outlived its volume (a leaked pod mount), waiting would block forever: wait on a
    // plain thread (not the runtime's blocking pool, which must not outlive shutdown)
    // and give up after a while.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("strata-unmount".into())
        .spawn(move || {
            let _ = tx.send(handle.unmount());
        })
        .map_err(|e| Error::io("starting the unmount thread", e))?;
    match tokio::time::timeout(UNMOUNT_WAIT, rx).await {
        Ok(Ok(result)) => result?,
        Ok(Err(_)) => {
            return Err(Error::Task("unmount thread died".into()));
        }
        Err(_) => tracing::warn!(
            mountpoint = %path.display(),
            "unmounted, but the FUSE session is still in use elsewhere (a bind mount left behind?); it ends when its last user unmounts"
        ),
    }
    // The directory is ours; a leftover would only confuse the next mount.
    let _ = std::fs::remove_dir(&path);
    Ok(())
}
