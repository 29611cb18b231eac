//! Leader election with a coordination.k8s.io Lease, so two replicas can run
//! and only one acts.
//!
//! Why two replicas never act at once (D = the lease duration; the full
//! argument is in docs/operator.md, "Leader election"):
//! - the holder stamps `renewTime` and starts its own deadline at the same
//!   instant, and stops acting 2D/3 after its last successful stamp, even if
//!   a renewal request hangs ([`LeaderElector::hold`]);
//! - a standby takes over when its own clock passes `renewTime + D`, but only
//!   if that renewal looked less than D/6 old when it first saw it. A renewal
//!   cannot be seen before it is stamped, so that age bounds how far the
//!   standby's clock runs ahead of the holder's: it takes over at least
//!   D - D/6 = 5D/6 after the stamp, D/6 after the holder stopped;
//! - otherwise it falls back to client-go's rule, D after it first saw the
//!   renewal on its own monotonic clock, which needs no clock agreement.
//!
//! Writes carry the resourceVersion, so two standbys cannot both take over.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{debug, info, warn};

use crate::{Error, Result};

/// How long a standby must wait before it may take over a Lease held by
/// another replica (zero: now). Pure, so the clock cases can be tested.
///
/// - `renew_time`: the Lease's `renewTime`, on the holder's clock;
/// - `first_seen`: this replica's wall clock when it first saw that renewal
///   (read after the response arrived, so never before the renewal was written);
/// - `unchanged_for`: how long ago that was, on this replica's monotonic clock;
/// - `now`: this replica's wall clock;
/// - `duration`: the Lease's `leaseDurationSeconds`.
pub fn takeover_wait(
    renew_time: Option<Timestamp>,
    first_seen: Timestamp,
    unchanged_for: Duration,
    now: Timestamp,
    duration: Duration,
) -> Duration {
    // client-go's rule: no change seen for a whole duration. Safe whatever the clocks say.
    let by_sighting = duration.saturating_sub(unchanged_for);
    let Some(renewed) = renew_time else {
        return by_sighting;
    };
    // The renewal's age when first seen is at least how far this clock runs
    // ahead of the holder's; from D/6 on the renewTime rule is not provably safe.
    let age_at_sight = first_seen.duration_since(renewed);
    if age_at_sight >= signed(max_trusted_age(duration)) {
        return by_sighting;
    }
    let left = renewed.duration_since(now).saturating_add(signed(duration));
    // Negative: renewTime + duration has passed.
    let by_renew_time = Duration::try_from(left).unwrap_or(Duration::ZERO);
    by_sighting.min(by_renew_time)
}

/// A renewal older than this when first seen does not bound the clock lead
/// enough; a standby polls every D/16, so a live leader's renewals are seen
/// well before.
fn max_trusted_age(duration: Duration) -> Duration {
    duration / 6
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// A renewal as this replica first saw it.
#[derive(Debug, Clone, PartialEq)]
struct Sighting {
    holder: String,
    renew_time: Option<Timestamp>,
    /// Wall clock and monotonic clock right after the response that showed it.
    wall: Timestamp,
    at: Instant,
}

/// What one attempt at the Lease found.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Attempt {
    /// This replica holds the Lease; it may act until `stamped` + the renew deadline.
    Leading { stamped: Instant },
    /// Another replica holds it; try again at `recheck` (exactly when it may
    /// take over, if that comes before the next poll).
    Standby { recheck: Instant },
}

/// One replica's view of the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    namespace: String,
    identity: String,
    duration: Duration,
    /// The current holder's latest renewal and when it was first seen.
    sighting: Mutex<Option<Sighting>>,
    /// When this replica stamped its latest successful acquire or renewal.
    stamped: Mutex<Option<Instant>>,
    /// The clock warning is logged once; a skewed clock would repeat it every renewal.
    clock_warned: AtomicBool,
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
    /// An elector for Lease `namespace/name`. `duration` is cut to whole
    /// seconds (`leaseDurationSeconds` is an integer), so the deadline this
    /// replica keeps is the one the standbys read.
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
            duration: Duration::from_secs(duration.as_secs().clamp(1, i32::MAX as u64)),
            sighting: Mutex::new(None),
            stamped: Mutex::new(None),
            clock_warned: AtomicBool::new(false),
        }
    }

    /// How often the leader renews.
    pub fn renew_period(&self) -> Duration {
        self.duration / 4
    }

    /// How often a standby looks at the Lease (and a leader retries a failed
    /// renewal); a standby also looks exactly when the Lease expires.
    pub fn poll_period(&self) -> Duration {
        self.duration / 16
    }

    /// The leader stops acting this long after its last successful renewal
    /// stamp; standbys take over no earlier than 5/6 of the duration after it.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)
    }

    fn lease_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Takes or renews the Lease if this replica may.
    async fn attempt(&self) -> Result<Attempt> {
        // renewTime and the leader's deadline start at the same instant, before any request.
        let (now, stamped) = (Timestamp::now(), Instant::now());
        let action = || format!("acquiring Lease {}", self.lease_ref());
        let lease = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| Error::kube(action(), e))?;
        let (seen_wall, seen_at) = (Timestamp::now(), Instant::now());
        let Some(mut lease) = lease else {
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
                Ok(_) => Ok(Attempt::Leading { stamped }),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Standby {
                    recheck: Instant::now() + self.poll_period(),
                }),
                Err(e) => Err(Error::kube(action(), e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let renew_time = spec.renew_time.as_ref().map(|t| t.0);
        let held_by_me = holder == self.identity;
        if !held_by_me && !holder.is_empty() {
            let their_duration = spec
                .lease_duration_seconds
                .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
                .unwrap_or(self.duration);
            let sighting = self.see(&holder, renew_time, seen_wall, seen_at, their_duration);
            let wait = takeover_wait(
                renew_time,
                sighting.wall,
                stamped.saturating_duration_since(sighting.at),
                now,
                their_duration,
            );
            if !wait.is_zero() {
                // Counted from before the GET, like `now`, so the next look is not late.
                return Ok(Attempt::Standby {
                    recheck: stamped + wait.min(self.poll_period()),
                });
            }
            info!(previous = %holder, renew_time = ?renew_time, "lease expired; taking over");
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
            Ok(_) => Ok(Attempt::Leading { stamped }),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Standby {
                recheck: Instant::now() + self.poll_period(),
            }),
            Err(e) => Err(Error::kube(action(), e)),
        }
    }

    /// Records a renewal by another holder; returns when it was first seen.
    fn see(
        &self,
        holder: &str,
        renew_time: Option<Timestamp>,
        wall: Timestamp,
        at: Instant,
        duration: Duration,
    ) -> Sighting {
        let mut sighting = self.sighting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = sighting.as_ref()
            && s.holder == holder
            && s.renew_time == renew_time
        {
            return s.clone();
        }
        if let (Some(renewed), Some(previous)) = (renew_time, sighting.as_ref()) {
            let age = wall.duration_since(renewed);
            // A fresh renewal that already looks old: clocks disagree (or the API is slow).
            let looks_old = previous.holder == holder && age >= signed(max_trusted_age(duration));
            if looks_old && !self.clock_warned.swap(true, Ordering::Relaxed) {
                warn!(
                    %holder,
                    age = ?age,
                    "a Lease renewal looked old when first seen: this replica's clock may run \
                     ahead of the holder's; waiting a whole lease duration from the sighting \
                     instead of trusting renewTime (keep node clocks in sync)"
                );
            } else {
                debug!(%holder, age = ?age, "lease renewal seen");
            }
        }
        let new = Sighting {
            holder: holder.to_string(),
            renew_time,
            wall,
            at,
        };
        *sighting = Some(new.clone());
        new
    }

    fn set_stamped(&self, at: Instant) {
        *self.stamped.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        loop {
            let next = match self.attempt().await {
                Ok(Attempt::Leading { stamped }) => {
                    self.set_stamped(stamped);
                    info!(identity = %self.identity, lease = %self.name, "became leader");
                    return;
                }
                Ok(Attempt::Standby { recheck }) => recheck,
                Err(e) => {
                    warn!(error = %e, "leader election");
                    Instant::now() + self.poll_period()
                }
            };
            tokio::time::sleep_until(next.into()).await;
        }
    }

    /// Renews the Lease until another replica holds it or no renewal has
    /// succeeded for the renew deadline (2/3 of the duration, counted from
    /// the renewal's stamp, cutting off a request that hangs); then returns
    /// the error to stop on. Acting must end when this returns.
    pub async fn hold(&self) -> Error {
        let deadline = self.renew_deadline();
        let stamped = *self.stamped.lock().unwrap_or_else(|p| p.into_inner());
        // Without an acquire there is nothing to hold: stop at once.
        let mut valid_until = stamped.map_or_else(Instant::now, |at| at + deadline);
        let mut pause = self.renew_period();
        loop {
            let renewal = async {
                tokio::time::sleep(pause).await;
                self.attempt().await
            };
            tokio::select! {
                // Checked first: once the deadline has passed, a late success does not count.
                biased;
                () = tokio::time::sleep_until(valid_until.into()) => {
                    warn!(deadline = ?deadline, "leader lease not renewed in time; stopping");
                    break;
                }
                attempt = renewal => match attempt {
                    Ok(Attempt::Leading { stamped }) => {
                        self.set_stamped(stamped);
                        valid_until = stamped + deadline;
                        pause = self.renew_period();
                    }
                    Ok(Attempt::Standby { .. }) => {
                        warn!("another replica holds the leader lease; stopping");
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "renewing the leader lease");
                        pause = self.poll_period();
                    }
                },
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
            .map_err(|e| Error::kube(format!("reading Lease {}", self.lease_ref()), e))?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(12);

    fn ms(n: i64) -> SignedDuration {
        SignedDuration::from_millis(n)
    }

    /// A point on the holder's clock; tests add offsets to it.
    fn t0() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn at(offset: SignedDuration) -> Timestamp {
        t0().checked_add(offset).unwrap()
    }

    /// The standby's wait when the holder stamped `renewTime` at true time 0,
    /// the standby's clock leads the holder's by `lead`, it first saw the
    /// renewal at true time `seen` and asks at true time `true_now`.
    fn wait_at(lead: SignedDuration, seen: SignedDuration, true_now: SignedDuration) -> Duration {
        takeover_wait(
            Some(t0()),
            at(seen + lead),
            Duration::try_from(true_now - seen).unwrap_or(Duration::ZERO),
            at(true_now + lead),
            D,
        )
    }

    #[test]
    fn same_clocks_take_over_at_renew_time_plus_duration() {
        // Seen 0.5 s after the renewal; the sighting rule alone would wait until 12.5 s.
        assert_eq!(wait_at(ms(0), ms(500), ms(5_000)), Duration::from_secs(7));
        assert_eq!(
            wait_at(ms(0), ms(500), ms(11_999)),
            Duration::from_millis(1)
        );
        assert_eq!(wait_at(ms(0), ms(500), ms(12_000)), Duration::ZERO);
        assert_eq!(wait_at(ms(0), ms(500), ms(20_000)), Duration::ZERO);
    }

    #[test]
    fn standby_clock_ahead_within_a_sixth_is_trusted() {
        // 1.5 s ahead, seen 0.4 s after the stamp: it looked 1.9 s old (< D/6 = 2 s).
        // Takeover at the standby's renewTime + 12 s, true time 10.5 s: after the
        // holder stopped at 8 s.
        assert_eq!(
            wait_at(ms(1_500), ms(400), ms(10_499)),
            Duration::from_millis(1)
        );
        assert_eq!(wait_at(ms(1_500), ms(400), ms(10_500)), Duration::ZERO);
    }

    #[test]
    fn standby_clock_far_ahead_falls_back_to_the_sighting() {
        // 5 s ahead: renewTime + 12 s passes at true time 7 s, while the holder may
        // act until 8 s. The renewal looked 5.4 s old when first seen, so the
        // standby waits 12 s from the sighting instead.
        assert_eq!(
            wait_at(ms(5_000), ms(400), ms(7_000)),
            Duration::from_millis(5_400)
        );
        assert_eq!(
            wait_at(ms(5_000), ms(400), ms(12_399)),
            Duration::from_millis(1)
        );
        assert_eq!(wait_at(ms(5_000), ms(400), ms(12_400)), Duration::ZERO);
        // Exactly D/6 is not trusted either: 12 s from the sighting at 0.4 s.
        assert_eq!(
            wait_at(ms(1_600), ms(400), ms(10_400)),
            Duration::from_millis(2_000)
        );
    }

    #[test]
    fn standby_clock_behind_never_waits_longer_than_a_duration_from_the_sighting() {
        // 2 s behind: renewTime lies in the future; renewTime + 12 s is true time 14 s,
        // the sighting rule (seen at 0.5 s) gives 12.5 s.
        assert_eq!(wait_at(ms(-2_000), ms(500), ms(500)), D);
        assert_eq!(wait_at(ms(-2_000), ms(500), ms(12_500)), Duration::ZERO);
        // An hour behind: still 12 s from the sighting.
        assert_eq!(
            wait_at(ms(-3_600_000), ms(500), ms(6_500)),
            Duration::from_secs(6)
        );
        // 0.2 s behind: renewTime + 12 s comes first.
        assert_eq!(
            wait_at(ms(-200), ms(500), ms(12_199)),
            Duration::from_millis(1)
        );
        assert_eq!(wait_at(ms(-200), ms(500), ms(12_200)), Duration::ZERO);
    }

    #[test]
    fn a_stale_lease_found_at_startup_waits_a_whole_duration() {
        // The holder died an hour ago; a standby starting now cannot tell that from a
        // clock an hour ahead, so it waits the duration from its first look.
        let now = at(SignedDuration::from_hours(1));
        assert_eq!(takeover_wait(Some(t0()), now, Duration::ZERO, now, D), D);
        assert_eq!(
            takeover_wait(Some(t0()), now, D, now.checked_add(ms(12_000)).unwrap(), D),
            Duration::ZERO
        );
    }

    #[test]
    fn no_renew_time_uses_the_sighting() {
        let now = t0();
        assert_eq!(
            takeover_wait(None, now, Duration::from_secs(4), now, D),
            Duration::from_secs(8)
        );
    }

    /// Over clock leads from an hour behind to an hour ahead and sighting delays up
    /// to D/2, the first true time at which a standby would take over is never
    /// before 5D/6 (the holder stops at 2D/3), never later than a duration after
    /// the sighting, and exactly D when the clocks agree.
    #[test]
    fn takeover_is_never_early_and_never_slower_than_client_go() {
        let step = 50;
        let d_ms = i64::try_from(D.as_millis()).unwrap();
        let leads = [
            -3_600_000, -4_000, -1_000, -50, 0, 50, 1_000, 1_900, 1_999, 2_000, 4_000,
        ]
        .into_iter()
        .chain([6_000, 8_000, 12_000, 24_000, 3_600_000]);
        for lead in leads {
            for seen in (0..=d_ms / 2).step_by(250) {
                let takeover = (seen..=seen + d_ms)
                    .step_by(step)
                    .find(|&t| wait_at(ms(lead), ms(seen), ms(t)).is_zero())
                    .expect("takes over within a duration of the sighting");
                assert!(
                    takeover >= d_ms * 5 / 6,
                    "lead {lead} ms, seen at {seen} ms: took over at {takeover} ms"
                );
                if lead == 0 && seen < d_ms / 6 {
                    assert_eq!(takeover, d_ms, "seen at {seen} ms");
                }
            }
        }
    }
}
