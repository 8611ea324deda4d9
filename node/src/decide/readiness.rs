//! Whether a standby could take a service over right now, and why not: the leader's verdict
//! per (service, standby site), pure and synchronous.
//!
//! ```text
//!  readiness reports (per observer) ─┐
//!  lag (freshest)                    │
//!  fingerprints (per node, own site) ├─▶ standby(…) ─▶ StandbyReadiness {ready, reasons,
//!  passive results (per observer)    │                   consistency[], passive[]}
//!  ServiceState (active site, acks) ─┘        │ first gating reason
//!                                             ▼
//!                          gates of a failover (automatic and operator's)
//! ```
//!
//! What each part needs, and how an unknown counts (it follows the readiness checks, which a
//! majority of voters must see pass: no evidence is not readiness):
//!
//! - readiness checks: pass from a majority of voters (fresh reports);
//! - `max_lag_on_failover`: a fresh lag report at most that; none is "unknown", which blocks;
//! - consistency checks: the freshest fingerprint reported by a node *of* the active site and
//!   the freshest by a node of the standby must be equal; a missing, stale or failed one is
//!   unknown and blocks like a difference (with `gate = true`);
//! - passive checks of the standby: must fail from a majority of voters. One fresh voter
//!   seeing one pass is evidence the standby serves (a possible split brain): alerted always,
//!   and with `gate = true` it blocks until an operator acknowledges it for the current epoch.
//!   Neither failing from a majority nor passing anywhere is unknown and blocks (with `gate`).
//!
//! A check with `gate = false` is shown with its reason but never blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::detect::Verdict;
use super::time::MonoTime;
use crate::consensus::state::control::ServiceState;
use crate::consensus::types::{Member, NodeId};
use crate::spec::Service;

/// Latest report per observer, per (service, site).
pub(crate) type Reports = BTreeMap<(String, String), BTreeMap<NodeId, (Verdict, MonoTime)>>;

/// Latest fingerprint per reporting node, per (service, consistency check name).
pub(crate) type Fingerprints = BTreeMap<(String, String), BTreeMap<NodeId, FingerprintSeen>>;

/// Latest passive result per observer, per (service, passive check name).
pub(crate) type PassiveResults = BTreeMap<(String, String), BTreeMap<NodeId, PassiveSeen>>;

/// One fingerprint as a node reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FingerprintSeen {
    /// The site the node said it fingerprinted (its own).
    pub site: String,
    /// The fingerprint, or why there is none.
    pub value: Result<String, String>,
    /// When it was taken (the leader's clock).
    pub at: MonoTime,
}

/// One passive check result as an observer reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PassiveSeen {
    /// `Healthy` = the check passes (the site serves).
    pub verdict: Verdict,
    /// One line from the run.
    pub detail: String,
    /// When it was taken (the leader's clock).
    pub at: MonoTime,
}

/// Everything the verdict is computed from, besides the service itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inputs<'a> {
    pub readiness: &'a Reports,
    pub lag: &'a BTreeMap<String, (f64, MonoTime)>,
    pub fingerprints: &'a Fingerprints,
    pub passive: &'a PassiveResults,
    pub voters: &'a BTreeSet<NodeId>,
    pub members: &'a BTreeMap<NodeId, Member>,
    pub now: MonoTime,
    /// A report older than this (or than 3 intervals of its check, if longer) is stale.
    pub stale_after: Duration,
}

/// The verdict on one standby site of one service.
#[derive(Debug, Clone, PartialEq)]
pub struct StandbyReadiness {
    /// The standby site.
    pub site: String,
    /// No gating reason: an unforced failover to it passes every readiness gate.
    pub ready: bool,
    /// Every problem, in order: readiness checks, lag, consistency checks, passive checks.
    pub reasons: Vec<Reason>,
    /// Each consistency check of the service, in spec order.
    pub consistency: Vec<ConsistencyView>,
    /// Each passive check of this site, in spec order.
    pub passive: Vec<PassiveView>,
}

impl StandbyReadiness {
    /// The first gating reason: what blocks an unforced failover to the site.
    pub fn blocker(&self) -> Option<&Reason> {
        self.reasons.iter().find(|r| r.gating)
    }

    /// The gating split-brain reason, if a passive check that gates passes unacknowledged:
    /// what blocks a switchover to the site.
    pub fn split_brain_block(&self) -> Option<&Reason> {
        self.reasons.iter().find(|r| r.gating && r.key == "split_brain")
    }

    /// The alert text while any passive check of the site passes (gating or not,
    /// acknowledged or not): a possible split brain.
    pub fn split_brain_alert(&self) -> Option<&str> {
        self.reasons.iter().find(|r| r.key == "split_brain").map(|r| r.text.as_str())
    }
}

/// One problem of a standby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// Which gate: `gate_ready`, `gate_lag`, `gate_consistency`, `gate_passive`, `split_brain`
    /// (also the engine's alert key).
    pub key: &'static str,
    /// Whether it blocks an unforced failover (`gate = false`, or an acknowledged split
    /// brain, only show it).
    pub gating: bool,
    /// One line, naming the check, the sites and the values.
    pub text: String,
}

/// A fingerprint of one site as the leader knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fingerprint {
    /// Freshly reported by a node of the site.
    Known(String),
    /// Not known: why (no report yet, stale, the check failed).
    Unknown(String),
}

impl Fingerprint {
    /// The value when known.
    pub fn value(&self) -> Option<&str> {
        match self {
            Fingerprint::Known(v) => Some(v),
            Fingerprint::Unknown(_) => None,
        }
    }
}

/// The comparison of one consistency check between the active site and a standby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyView {
    /// The check's name.
    pub check: String,
    /// Whether it gates.
    pub gate: bool,
    /// The active site.
    pub active_site: String,
    /// The active site's fingerprint.
    pub active: Fingerprint,
    /// The standby's fingerprint.
    pub standby: Fingerprint,
}

impl ConsistencyView {
    /// `match`, `mismatch` or `unknown`.
    pub fn state(&self) -> &'static str {
        match (&self.active, &self.standby) {
            (Fingerprint::Known(a), Fingerprint::Known(b)) if a == b => "match",
            (Fingerprint::Known(_), Fingerprint::Known(_)) => "mismatch",
            _ => "unknown",
        }
    }
}

/// What one passive check of a standby shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveView {
    /// The check's name.
    pub check: String,
    /// Whether it gates.
    pub gate: bool,
    /// `not_serving`, `serving` or `unknown`.
    pub state: &'static str,
    /// A serving standby acknowledged by an operator for the current epoch.
    pub acknowledged: bool,
    /// One line: who sees what.
    pub detail: String,
}

/// The verdict on `target`, a standby of service `name` (`svc`, replicated `state`).
pub(crate) fn standby(
    inputs: &Inputs,
    svc: &Service,
    name: &str,
    state: &ServiceState,
    target: &str,
) -> StandbyReadiness {
    let mut reasons = Vec::new();
    let voters = inputs.voters.len();
    let needed = voters / 2 + 1;
    let fresh = |at: MonoTime, interval: Duration| {
        inputs.now.saturating_duration_since(at) <= inputs.stale_after.max(interval * 3)
    };

    if svc.readiness.iter().any(|c| c.site == target) {
        let ready = inputs.readiness.get(&(name.to_string(), target.to_string())).map_or(0, |by| {
            by.iter()
                .filter(|(id, (v, at))| {
                    inputs.voters.contains(id)
                        && *v == Verdict::Healthy
                        && inputs.now.saturating_duration_since(*at) <= inputs.stale_after
                })
                .count()
        });
        if ready < needed {
            reasons.push(Reason {
                key: "gate_ready",
                gating: true,
                text: format!(
                    "{target} is not ready (its readiness checks pass from {ready} of {voters} \
                     observers, {needed} needed)"
                ),
            });
        }
    }

    if let Some(max) = svc.max_lag_on_failover {
        let blocked = match inputs.lag.get(name) {
            None => Some("replication lag unknown (no lag report yet)".to_string()),
            Some(&(_, at)) if inputs.now.saturating_duration_since(at) > inputs.stale_after => {
                Some(format!(
                    "replication lag unknown (the newest lag report is {} old; stale after {})",
                    secs(inputs.now.saturating_duration_since(at)),
                    secs(inputs.stale_after)
                ))
            }
            Some(&(value, _)) if value > max => {
                Some(format!("replication lag {value} > max_lag_on_failover {max}"))
            }
            Some(_) => None,
        };
        if let Some(text) = blocked {
            reasons.push(Reason { key: "gate_lag", gating: true, text });
        }
    }

    let active = state.active_site.as_str();
    let mut consistency = Vec::new();
    for c in &svc.consistency {
        let by = inputs.fingerprints.get(&(name.to_string(), c.name.clone()));
        let of = |site: &str| -> Fingerprint {
            // The freshest report of a node that belongs to the site (by membership, not by
            // what the report says alone).
            let newest = by.into_iter().flatten().filter(|(id, seen)| {
                seen.site == site && inputs.members.get(id).is_some_and(|m| m.site == site)
            });
            let Some((_, seen)) = newest.max_by_key(|(id, seen)| (seen.at, **id)) else {
                return Fingerprint::Unknown(format!("no report from a node of {site} yet"));
            };
            if !fresh(seen.at, c.interval) {
                return Fingerprint::Unknown(format!(
                    "the newest report from {site} is {} old",
                    secs(inputs.now.saturating_duration_since(seen.at))
                ));
            }
            match &seen.value {
                Ok(v) => Fingerprint::Known(v.clone()),
                Err(why) => Fingerprint::Unknown(why.clone()),
            }
        };
        let view = ConsistencyView {
            check: c.name.clone(),
            gate: c.gate,
            active_site: active.to_string(),
            active: of(active),
            standby: of(target),
        };
        let text = match (&view.active, &view.standby) {
            (Fingerprint::Known(a), Fingerprint::Known(b)) if a == b => None,
            (Fingerprint::Known(a), Fingerprint::Known(b)) => Some(format!(
                "consistency check {} differs: {active} (active) has {a:?}, {target} has {b:?}",
                c.name
            )),
            (Fingerprint::Unknown(why), _) => Some(format!(
                "consistency check {}: the fingerprint of {active} (active) is unknown: {why}",
                c.name
            )),
            (_, Fingerprint::Unknown(why)) => Some(format!(
                "consistency check {}: the fingerprint of {target} is unknown: {why}",
                c.name
            )),
        };
        if let Some(text) = text {
            reasons.push(gated("gate_consistency", c.gate, text));
        }
        consistency.push(view);
    }

    let mut passive = Vec::new();
    let acknowledged = state.split_brain_acknowledged(target);
    for p in svc.passive.iter().filter(|p| p.check.site == target) {
        let by = inputs.passive.get(&(name.to_string(), p.name.clone()));
        let seen: Vec<&PassiveSeen> = by
            .into_iter()
            .flatten()
            .filter(|(id, s)| inputs.voters.contains(id) && fresh(s.at, p.check.interval))
            .map(|(_, s)| s)
            .collect();
        let passing: Vec<&&PassiveSeen> =
            seen.iter().filter(|s| s.verdict == Verdict::Healthy).collect();
        let failing = seen.iter().filter(|s| s.verdict == Verdict::Unhealthy).count();
        let (state_name, detail) = if let Some(first) = passing.first() {
            let detail =
                format!("passes from {} of {voters} observers ({})", passing.len(), first.detail);
            let mut text = format!(
                "{name}: standby {target} is serving: possible split brain (passive check {} \
                 {detail})",
                p.name
            );
            let gating = p.gate && !acknowledged;
            if acknowledged {
                text.push_str(&format!(
                    "; acknowledged by an operator at epoch {}, failover to {target} allowed",
                    state.epoch
                ));
            } else if p.gate {
                text.push_str(&format!(
                    "; failover and switchover to {target} are blocked until it stops serving \
                     or an operator runs 'droverctl ack {name} --split-brain {target}'"
                ));
            }
            reasons.push(if gating {
                Reason { key: "split_brain", gating: true, text }
            } else {
                gated("split_brain", false, text)
            });
            ("serving", detail)
        } else if failing >= needed {
            ("not_serving", format!("fails from {failing} of {voters} observers"))
        } else {
            let detail = format!(
                "fails from {failing} of {voters} observers ({needed} needed), passes from none"
            );
            reasons.push(gated(
                "gate_passive",
                p.gate,
                format!("passive check {} of {target} unknown: {detail}", p.name),
            ));
            ("unknown", detail)
        };
        passive.push(PassiveView {
            check: p.name.clone(),
            gate: p.gate,
            state: state_name,
            acknowledged: acknowledged && state_name == "serving",
            detail,
        });
    }

    StandbyReadiness {
        site: target.to_string(),
        ready: !reasons.iter().any(|r| r.gating),
        reasons,
        consistency,
        passive,
    }
}

/// A reason that gates when `gate` is set, and otherwise says it does not.
fn gated(key: &'static str, gate: bool, text: String) -> Reason {
    if gate {
        Reason { key, gating: true, text }
    } else {
        Reason { key, gating: false, text: format!("{text} (not gating)") }
    }
}

/// `3s`, `2.5s`: whole seconds when exact, else one decimal.
fn secs(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::state::control::{ControlRequest, ControlState};
    use crate::consensus::types::Role;

    const SPEC: &str = include_str!("../spec/testdata/cluster.toml");
    const SVC: &str = "file-transfer";

    /// The test spec with two consistency checks (`config` gates, `schema` does not) and two
    /// passive checks of dr (`port` gates, `page` does not), applied to a fresh state.
    fn fixture() -> (Service, ServiceState) {
        let extra = r#"
  [[service.consistency]]
  name = "config"
  kind = "exec"
  command = ["true"]
  interval = "10s"
  timeout = "5s"

  [[service.consistency]]
  name = "schema"
  kind = "exec"
  command = ["true"]
  gate = false

  [[service.passive]]
  name = "port"
  site = "dr"
  kind = "tcp"
  address = "st.dr.example:22"

  [[service.passive]]
  name = "page"
  site = "dr"
  kind = "tcp"
  address = "st.dr.example:80"
  gate = false

  # Replication lag"#;
        let text = SPEC.replacen("  # Replication lag", extra, 1);
        let spec = crate::spec::parse(&text, "test").unwrap_or_else(|e| panic!("{e}"));
        let mut control = ControlState::default();
        let applied = control.apply(
            1,
            &ControlRequest::ApplySpec {
                expected_version: None,
                spec: Box::new(spec.clone()),
                text,
                author: "op".into(),
                at_unix_ms: 0,
            },
        );
        assert_eq!(applied.rejected, None);
        let mut svc = spec.service(SVC).unwrap().clone();
        svc.max_lag_on_failover = None;
        (svc, control.services[SVC].clone())
    }

    struct World {
        fingerprints: Fingerprints,
        passive: PassiveResults,
        voters: BTreeSet<NodeId>,
        members: BTreeMap<NodeId, Member>,
        now: MonoTime,
    }

    impl World {
        fn new() -> World {
            let m = |site: &str| Member {
                name: format!("{site}-x"),
                site: site.into(),
                role: Role::Controller,
                address: "x:1".into(),
            };
            World {
                fingerprints: BTreeMap::new(),
                passive: BTreeMap::new(),
                voters: [1, 2, 3].into(),
                members: BTreeMap::from([
                    (1, m("prod")),
                    (2, m("dr")),
                    (3, m("witness")),
                    (4, m("prod")),
                ]),
                now: MonoTime::from_ms(100_000),
            }
        }

        fn fp(
            &mut self,
            node: NodeId,
            site: &str,
            check: &str,
            value: Result<&str, &str>,
            ago_ms: u64,
        ) {
            let seen = FingerprintSeen {
                site: site.into(),
                value: value.map(str::to_string).map_err(str::to_string),
                at: MonoTime::from_ms(100_000 - ago_ms),
            };
            self.fingerprints.entry((SVC.into(), check.into())).or_default().insert(node, seen);
        }

        fn passive(&mut self, observer: NodeId, check: &str, verdict: Verdict) {
            let seen = PassiveSeen { verdict, detail: "connected".into(), at: self.now };
            self.passive.entry((SVC.into(), check.into())).or_default().insert(observer, seen);
        }

        fn verdict(&self, svc: &Service, state: &ServiceState) -> StandbyReadiness {
            let (readiness, lag) = (BTreeMap::new(), BTreeMap::new());
            let inputs = Inputs {
                readiness: &readiness,
                lag: &lag,
                fingerprints: &self.fingerprints,
                passive: &self.passive,
                voters: &self.voters,
                members: &self.members,
                now: self.now,
                stale_after: Duration::from_secs(5),
            };
            standby(&inputs, svc, SVC, state, "dr")
        }
    }

    fn texts(v: &StandbyReadiness) -> Vec<(bool, String)> {
        v.reasons.iter().map(|r| (r.gating, r.text.clone())).collect()
    }

    #[test]
    fn fingerprints_are_compared_between_the_active_site_and_the_standby() {
        let (svc, state) = fixture();
        let mut w = World::new();
        for node in [1, 2, 3] {
            w.passive(node, "port", Verdict::Unhealthy);
            w.passive(node, "page", Verdict::Unhealthy);
        }
        // Nothing reported: unknown, which gates only where the check does.
        let v = w.verdict(&svc, &state);
        assert!(!v.ready);
        assert_eq!(
            texts(&v),
            [
                (
                    true,
                    "consistency check config: the fingerprint of prod (active) is unknown: no \
                     report from a node of prod yet"
                        .to_string()
                ),
                (
                    false,
                    "consistency check schema: the fingerprint of prod (active) is unknown: no \
                     report from a node of prod yet (not gating)"
                        .to_string()
                ),
            ]
        );

        w.fp(1, "prod", "config", Ok("abc"), 1_000);
        w.fp(2, "dr", "config", Ok("abc"), 1_000);
        w.fp(1, "prod", "schema", Ok("7"), 1_000);
        w.fp(2, "dr", "schema", Ok("6"), 1_000);
        let v = w.verdict(&svc, &state);
        assert!(v.ready, "{v:?}");
        assert_eq!(v.consistency[0].state(), "match");
        assert_eq!(
            texts(&v),
            [(
                false,
                "consistency check schema differs: prod (active) has \"7\", dr has \"6\" (not \
                 gating)"
                    .to_string()
            )]
        );

        // The standby's configuration drifts: it is not ready, and both values are named.
        w.fp(2, "dr", "config", Ok("abd"), 500);
        let v = w.verdict(&svc, &state);
        assert!(!v.ready);
        assert_eq!(v.blocker().unwrap().key, "gate_consistency");
        assert_eq!(
            v.blocker().unwrap().text,
            "consistency check config differs: prod (active) has \"abc\", dr has \"abd\""
        );
        assert_eq!(v.consistency[0].standby, Fingerprint::Known("abd".into()));

        // A node of prod claiming to speak for dr is not taken for dr; the witness neither.
        w.fp(4, "dr", "config", Ok("abc"), 0);
        w.fp(3, "dr", "config", Ok("abc"), 0);
        assert_eq!(w.verdict(&svc, &state).consistency[0].state(), "mismatch");

        // A stale or failed fingerprint is unknown, with why.
        w.fp(2, "dr", "config", Ok("abc"), 31_000);
        let stale = w.verdict(&svc, &state);
        assert!(stale.blocker().unwrap().text.ends_with("the newest report from dr is 31s old"));
        w.fp(2, "dr", "config", Err("consistency check config: exit 1"), 0);
        let failed = w.verdict(&svc, &state);
        assert_eq!(
            failed.consistency[0].standby,
            Fingerprint::Unknown("consistency check config: exit 1".into())
        );
        assert!(!failed.ready);
    }

    #[test]
    fn a_passing_passive_check_is_a_split_brain_until_acknowledged() {
        let (svc, mut state) = fixture();
        let mut w = World::new();
        w.fp(1, "prod", "config", Ok("a"), 0);
        w.fp(2, "dr", "config", Ok("a"), 0);
        w.fp(1, "prod", "schema", Ok("a"), 0);
        w.fp(2, "dr", "schema", Ok("a"), 0);
        // One observer's failing result is no majority: unknown.
        w.passive(1, "port", Verdict::Unhealthy);
        let v = w.verdict(&svc, &state);
        assert_eq!(v.passive[0].state, "unknown");
        assert_eq!(v.blocker().unwrap().key, "gate_passive");
        assert_eq!(v.passive[1].state, "unknown");
        // Failing from a majority: not serving, ready.
        w.passive(2, "port", Verdict::Unhealthy);
        w.passive(1, "page", Verdict::Unhealthy);
        w.passive(3, "page", Verdict::Unhealthy);
        let v = w.verdict(&svc, &state);
        assert!(v.ready && v.split_brain_alert().is_none(), "{v:?}");
        assert_eq!((v.passive[0].state, v.passive[1].state), ("not_serving", "not_serving"));

        // One observer sees the non-gating check pass: alerted, not blocking.
        w.passive(3, "page", Verdict::Healthy);
        let v = w.verdict(&svc, &state);
        assert!(v.ready && v.split_brain_block().is_none());
        let alert = v.split_brain_alert().unwrap();
        assert!(
            alert.contains(
                "standby dr is serving: possible split brain (passive check page \
                                passes from 1 of 3 observers (connected))"
            ),
            "{alert}"
        );
        assert!(alert.ends_with("(not gating)"), "{alert}");

        // The gating one passes: blocked, and the alert says how to acknowledge it.
        w.passive(3, "port", Verdict::Healthy);
        let v = w.verdict(&svc, &state);
        assert!(!v.ready);
        let block = v.split_brain_block().unwrap();
        assert!(block.text.ends_with("'droverctl ack file-transfer --split-brain dr'"));
        // An acknowledgement of an earlier epoch does not count.
        state.split_brain_acks.insert("dr".into(), state.epoch - 1);
        assert!(!w.verdict(&svc, &state).ready);
        state.split_brain_acks.insert("dr".into(), state.epoch);
        let v = w.verdict(&svc, &state);
        assert!(v.ready && v.passive[0].acknowledged, "{v:?}");
        assert!(v.split_brain_alert().unwrap().contains("acknowledged by an operator at epoch 1"));
        // A check of a non-voter does not count.
        w.voters = [1, 2].into();
        let v = w.verdict(&svc, &state);
        assert_eq!(v.passive[0].state, "not_serving");
    }
}
