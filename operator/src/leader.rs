//! Leader election with a coordination.k8s.io Lease, so two replicas can run
//! and only one acts. Expiry is judged by the local clock from when this
//! replica last saw the Lease change (as client-go does), not by comparing
//! clocks across machines.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

use crate::{Error, Result};

/// One replica's view of the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    namespace: String,
    identity: String,
    duration: Duration,
    /// (holder, renewTime) last seen and when it was first seen.
    observed: Mutex<Option<(String, Option<Timestamp>, Instant)>>,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("lease", &format!("{}/{}", self.namespace, self.name))
            .field("identity", &self.identity)
            .finish()
    }
}

impl LeaderElector {
    /// An elector for Lease `namespace/name`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            duration,
            observed: Mutex::new(None),
        }
    }

    /// How often a standby retries and a leader renews.
    pub fn retry_period(&self) -> Duration {
        (self.duration / 4).max(Duration::from_millis(500))
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// Takes or renews the Lease. `Ok(true)` when this replica holds it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = Timestamp::now();
        let action = || format!("acquiring Lease {}/{}", self.namespace, self.name);
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| Error::kube(action(), e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.duration_secs()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(Error::kube(action(), e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let renew = spec.renew_time.as_ref().map(|t| t.0);
        let held_by_me = holder == self.identity;
        if !held_by_me && !holder.is_empty() {
            // Someone else holds it: expired only if it has not changed for a whole lease duration.
            let their_duration = spec
                .lease_duration_seconds
                .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
                .unwrap_or(self.duration);
            let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            let changed = observed
                .as_ref()
                .is_none_or(|(h, r, _)| *h != holder || *r != renew);
            if changed {
                *observed = Some((holder.clone(), renew, Instant::now()));
                return Ok(false);
            }
            let seen_at = observed
                .as_ref()
                .map(|(_, _, at)| *at)
                .unwrap_or_else(Instant::now);
            if seen_at.elapsed() < their_duration {
                return Ok(false);
            }
            info!(previous = %holder, "lease expired; taking over");
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!held_by_me);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration_secs()),
            acquire_time: if held_by_me {
                spec.acquire_time
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..spec
        });
        // replace carries the resourceVersion: a concurrent writer makes this a 409, not a split brain.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(Error::kube(action(), e)),
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(identity = %self.identity, lease = %self.name, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    /// Renews the Lease until that fails for longer than the renew deadline
    /// (2/3 of the duration, so it stops before a standby may take over) or
    /// another replica holds it; then returns the error to stop on.
    pub async fn hold(&self) -> Error {
        let deadline = self.duration * 2 / 3;
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(self.retry_period()).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => break,
                Err(e) => {
                    warn!(error = %e, "renewing the leader lease");
                    if last_renewal.elapsed() >= deadline {
                        break;
                    }
                }
            }
        }
        Error::LostLease {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            duration: self.duration,
        }
    }

    /// Gives the Lease up (on shutdown), so a standby takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!("released the leader lease"),
            Err(e) => warn!(error = %e, "could not release the leader lease"),
        }
    }

    /// The current holder, if any.
    pub async fn holder(&self) -> Result<Option<String>> {
        Ok(self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| Error::kube(format!("reading Lease {}/{}", self.namespace, self.name), e))?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    }
}
