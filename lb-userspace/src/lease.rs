//! coordination.k8s.io/v1 Leases as client-go's leader election uses them:
//! the holder renews `renewTime` every [`RENEW_EVERY`]; anyone may take
//! the lease over once `renewTime + leaseDurationSeconds` has passed. Every
//! write is a PUT conditioned on the resourceVersion read, so of two
//! agents racing for an expired lease exactly one wins (the other gets 409
//! Conflict). The decisions are pure functions of the lease and the time;
//! [`LeaseLock`] does the requests. As client-go, the holder renews over
//! the lease it last wrote without reading it first: if anyone wrote in
//! between, the PUT conflicts and the next attempt reads.
//!
//! Unlike client-go, expiry is judged on the holder's `renewTime` against
//! this node's clock rather than on when this agent last saw the lease
//! change: node clocks in a cluster are NTP-synchronised far below the
//! 15 s duration, and the node liveness leases need a judgement any agent
//! can make from the lease alone, including one that just started.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::Api;

/// How long a lease holds without renewal: client-go's default.
pub const DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews: a third of the duration, so two renewals
/// may fail before the lease lapses.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// When `spec`'s holder stops holding it; `None` when nobody holds it.
pub fn expiry(spec: &LeaseSpec) -> Option<Timestamp> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?;
    let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    renewed
        .0
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .ok()
}

/// The holder of `spec` if it still holds it at `now`.
pub fn holder(spec: &LeaseSpec, now: Timestamp) -> Option<&str> {
    let expiry = expiry(spec)?;
    (now < expiry).then_some(spec.holder_identity.as_deref()?)
}

/// What a candidate does with the lease it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// There is no lease yet.
    Create,
    /// It holds the lease, and keeps holding it.
    Renew,
    /// Nobody holds it (expired or released): take it over.
    TakeOver,
    /// Another holds it.
    Follow(String),
}

pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Step {
    let Some(spec) = spec else {
        return Step::Create;
    };
    if spec.holder_identity.as_deref() == Some(me) {
        return Step::Renew;
    }
    match holder(spec, now) {
        Some(other) => Step::Follow(other.to_string()),
        None => Step::TakeOver,
    }
}

/// The spec that carries out `step` for `me` at `now`; `None` for Follow.
pub fn next_spec(
    prev: Option<&LeaseSpec>,
    step: &Step,
    me: &str,
    now: Timestamp,
) -> Option<LeaseSpec> {
    let now = MicroTime(now);
    let held = |acquired: Option<MicroTime>, transitions| LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(DURATION.as_secs() as i32),
        acquire_time: acquired,
        renew_time: Some(now.clone()),
        lease_transitions: transitions,
        ..LeaseSpec::default()
    };
    let transitions = prev.and_then(|p| p.lease_transitions).unwrap_or(0);
    match step {
        Step::Create => Some(held(Some(now.clone()), Some(0))),
        Step::Renew => Some(held(
            prev.and_then(|p| p.acquire_time.clone()),
            Some(transitions),
        )),
        Step::TakeOver => Some(held(Some(now.clone()), Some(transitions + 1))),
        Step::Follow(_) => None,
    }
}

/// `spec` given up: no holder, so any candidate takes it over at once (as
/// client-go's ReleaseOnCancel leaves it).
pub fn released(spec: &LeaseSpec) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        ..spec.clone()
    }
}

/// One named lease in one namespace, contended for as `identity`.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    labels: Option<BTreeMap<String, String>>,
    /// The lease as this lock last wrote it, until a write fails.
    written: Arc<Mutex<Option<Lease>>>,
}

impl LeaseLock {
    /// `labels` go on the lease when this lock creates it.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        labels: Option<BTreeMap<String, String>>,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            labels,
            written: Arc::default(),
        }
    }

    /// Takes what this lock last wrote: kept only if the next write works.
    fn take_written(&self) -> Option<Lease> {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Creates, renews or takes over the lease as [`decide`] says; whether
    /// this lock holds it afterwards. Losing a race (409) is not an error.
    /// An attempt the API server leaves unanswered for a renewal period
    /// counts as not holding: the lease may lapse meanwhile, and a holder
    /// must not act on a term it cannot prove.
    pub async fn try_hold(&self, now: Timestamp) -> kube::Result<bool> {
        match tokio::time::timeout(RENEW_EVERY, self.hold_once(now)).await {
            Ok(held) => held,
            Err(_) => {
                tracing::warn!(lease = %self.name, "the API server did not answer in time");
                Ok(false)
            }
        }
    }

    async fn hold_once(&self, now: Timestamp) -> kube::Result<bool> {
        let current = match self.take_written() {
            Some(lease) => Some(lease),
            None => self.api.get_opt(&self.name).await?,
        };
        let prev = current.as_ref().and_then(|l| l.spec.as_ref());
        let step = decide(prev, &self.identity, now);
        let Some(spec) = next_spec(prev, &step, &self.identity, now) else {
            return Ok(false);
        };
        let pp = PostParams::default();
        let written = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        labels: self.labels.clone(),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&pp, &lease).await
            }
            // The resourceVersion read makes the PUT fail if anyone wrote
            // in between.
            Some(mut lease) => {
                lease.spec = Some(spec);
                self.api.replace(&self.name, &pp, &lease).await
            }
        };
        match written {
            Ok(lease) => {
                *self.written.lock().unwrap_or_else(PoisonError::into_inner) = Some(lease);
                if step == Step::TakeOver || step == Step::Create {
                    tracing::info!(lease = %self.name, "acquired the lease");
                }
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// [`LeaseLock::release`], bounded so a lost API server does not hold
    /// up the agent's exit; failures are logged.
    pub async fn release_on_exit(&self) {
        let failed = match tokio::time::timeout(Duration::from_secs(2), self.release()).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the API server did not answer".to_string(),
        };
        tracing::warn!(lease = %self.name, "cannot release the lease: {failed}");
    }

    /// Gives the lease up if this lock holds it, so another candidate takes
    /// over without waiting for it to expire.
    pub async fn release(&self) -> kube::Result<()> {
        self.take_written();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_ref() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return Ok(());
        }
        lease.spec = Some(released(spec));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        tracing::info!(lease = %self.name, "released the lease");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s as i64).unwrap()
    }

    fn held_by(who: &str, renewed: u64) -> LeaseSpec {
        next_spec(None, &Step::Create, who, at(renewed)).unwrap()
    }

    #[test]
    fn a_lease_is_created_renewed_followed_and_taken_over_once_expired() {
        assert_eq!(decide(None, "a", at(0)), Step::Create);
        let a = held_by("a", 0);
        assert_eq!(a.lease_duration_seconds, Some(15));
        assert_eq!(decide(Some(&a), "a", at(10)), Step::Renew);
        assert_eq!(decide(Some(&a), "b", at(14)), Step::Follow("a".into()));
        assert_eq!(decide(Some(&a), "b", at(15)), Step::TakeOver);
        let b = next_spec(Some(&a), &Step::TakeOver, "b", at(15)).unwrap();
        assert_eq!(b.holder_identity.as_deref(), Some("b"));
        assert_eq!(b.lease_transitions, Some(1));
        assert_eq!(b.acquire_time, Some(MicroTime(at(15))));
        let renewed = next_spec(Some(&b), &Step::Renew, "b", at(20)).unwrap();
        assert_eq!(renewed.acquire_time, b.acquire_time, "same term");
        assert_eq!(renewed.renew_time, Some(MicroTime(at(20))));
        assert_eq!(renewed.lease_transitions, Some(1));
        assert_eq!(
            next_spec(Some(&b), &Step::Follow("b".into()), "a", at(20)),
            None
        );
    }

    #[test]
    fn a_released_lease_is_free_at_once() {
        let a = held_by("a", 0);
        assert_eq!(holder(&a, at(1)), Some("a"));
        let free = released(&a);
        assert_eq!(holder(&free, at(1)), None);
        assert_eq!(decide(Some(&free), "b", at(1)), Step::TakeOver);
        assert_eq!(expiry(&free), None);
    }
}
