//! Site health detection: an observer quorum with hysteresis, per (service, site).
//!
//! Every voter (the witness included) probes every site of every service and reports a
//! [`Verdict`]; the leader feeds those reports into a [`Detector`] and asks it, with the current
//! time, for [`DetectEvent`]s:
//!
//! ```text
//!  report(observer, service, site, verdict, at) ──▶ latest report per observer
//!  set_voters(voters, at)                       ──▶ who counts as an observer
//!  evaluate(now)                                ──▶ [SiteDown | SiteUp], once per transition
//! ```
//!
//! # The rule
//!
//! At an instant `t`, the fresh reports are the latest report of each current voter whose age
//! `t - at` is at most `stale_after`; a missing, stale or `Unknown` report has not *answered*.
//! With `U` fresh `Unhealthy` and `H` fresh `Healthy` reports (`A = U + H` answered), a quorum
//! needs `need` observers, where
//!
//! - [`QuorumRule::MajorityOfAnswered`] (the default): `need = max(min_observers, A / 2 + 1)`,
//!   a strict majority of the observers that answered and never fewer than `min_observers`
//!   (default 2);
//! - [`QuorumRule::MajorityOfVoters`]: `need = N / 2 + 1` for `N` voters;
//!
//! and in every case `need >= 2` ([`MIN_OBSERVERS`]): one vantage point never decides. The site
//! is *quorum-unhealthy* at `t` when `U >= need`, *quorum-healthy* when `H >= need` (both at once
//! is impossible since each is a strict majority of `A`).
//!
//! A site is declared [`SiteHealth::Down`] only after it was quorum-unhealthy at every instant of
//! `[since, since + down_after]`; any instant without an unhealthy quorum (a report turning
//! healthy or unknown, a report going stale, a voter set change) sends it back to `Up` and the
//! timer starts over. A down site is declared up again only after it was quorum-healthy at every
//! instant of `[since, since + up_after]`; any instant without a healthy quorum sends it back to
//! `Down`. Every site starts `Up`: the detector never concludes anything from silence.
//!
//! Continuity is exact, not sampled: reports change only through [`Detector::report`], and
//! between two inputs the quorum can change only when a report goes stale, at an instant the
//! detector computes. [`Detector::evaluate`] replays those instants in order, so how often it is
//! called changes when events are *returned*, never whether or at which instant (`at`) they
//! happened.

use std::cmp::max;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::time::{MonoTime, TICK};
use crate::consensus::types::NodeId;

/// No quorum rule may let fewer observers than this decide anything.
pub const MIN_OBSERVERS: usize = 2;

/// What one observer saw of one site's health checks for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The checks passed.
    Healthy,
    /// The checks failed.
    Unhealthy,
    /// The observer could not tell (probe error, not yet probed); counts as not answered.
    Unknown,
}

/// How many observers must agree before a site is suspected down or recovering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumRule {
    /// A strict majority of the voters that answered (fresh, non-`Unknown` reports), and at least
    /// `min_observers` of them (at least [`MIN_OBSERVERS`]).
    MajorityOfAnswered {
        /// Fewest agreeing observers, whatever the number that answered.
        min_observers: usize,
    },
    /// A strict majority of all current voters, answered or not (and at least
    /// [`MIN_OBSERVERS`]).
    MajorityOfVoters,
}

impl Default for QuorumRule {
    fn default() -> QuorumRule {
        QuorumRule::MajorityOfAnswered { min_observers: MIN_OBSERVERS }
    }
}

impl QuorumRule {
    /// How many agreeing observers make a quorum, given `answered` answering observers among
    /// `voters` voters.
    pub fn needed(self, answered: usize, voters: usize) -> usize {
        let need = match self {
            QuorumRule::MajorityOfAnswered { min_observers } => {
                max(min_observers, answered / 2 + 1)
            }
            QuorumRule::MajorityOfVoters => voters / 2 + 1,
        };
        max(need, MIN_OBSERVERS)
    }
}

/// Detection thresholds; see the module doc for the rule they parameterize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectPolicy {
    /// How long a site must stay quorum-unhealthy, without interruption, to be declared down.
    pub down_after: Duration,
    /// How long a down site must stay quorum-healthy, without interruption, to be declared up.
    pub up_after: Duration,
    /// Age after which a report no longer counts (it is then the same as `Unknown`).
    pub stale_after: Duration,
    /// Who must agree.
    pub quorum: QuorumRule,
}

impl Default for DetectPolicy {
    fn default() -> DetectPolicy {
        DetectPolicy {
            down_after: Duration::from_secs(30),
            up_after: Duration::from_secs(60),
            stale_after: Duration::from_secs(15),
            quorum: QuorumRule::default(),
        }
    }
}

/// Longest accepted `down_after`, `up_after` or `stale_after`.
pub const MAX_DETECT_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a [`DetectPolicy`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetectPolicyError {
    /// `stale_after` is zero: every report would be stale as soon as time moves.
    #[error("stale_after is 0; set it to a few probe intervals (e.g. 15s)")]
    ZeroStaleAfter,
    /// A duration is beyond [`MAX_DETECT_DURATION`].
    #[error("{field} is {value:?}, more than the limit of 7 days; use a shorter duration")]
    TooLong {
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: Duration,
    },
    /// The quorum rule would let fewer than [`MIN_OBSERVERS`] observers decide.
    #[error("quorum min_observers is {0}; it must be at least 2 so that one vantage point never decides")]
    TooFewObservers(usize),
}

impl DetectPolicy {
    /// Checks the policy once, before a [`Detector`] uses it.
    pub fn validate(&self) -> Result<(), DetectPolicyError> {
        if self.stale_after.is_zero() {
            return Err(DetectPolicyError::ZeroStaleAfter);
        }
        for (field, value) in [
            ("down_after", self.down_after),
            ("up_after", self.up_after),
            ("stale_after", self.stale_after),
        ] {
            if value > MAX_DETECT_DURATION {
                return Err(DetectPolicyError::TooLong { field, value });
            }
        }
        if let QuorumRule::MajorityOfAnswered { min_observers } = self.quorum {
            if min_observers < MIN_OBSERVERS {
                return Err(DetectPolicyError::TooFewObservers(min_observers));
            }
        }
        Ok(())
    }
}

/// The detector's view of one site for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteHealth {
    /// Not suspected.
    Up,
    /// Quorum-unhealthy without interruption since `since`, not yet for `down_after`.
    Suspect {
        /// When the current unhealthy quorum formed.
        since: MonoTime,
    },
    /// Declared down; `since` is the instant the rule was met (`down_after` after the unhealthy
    /// quorum formed).
    Down {
        /// When the site became down.
        since: MonoTime,
    },
    /// Declared down, and quorum-healthy without interruption since `since`, not yet for
    /// `up_after`.
    Recovering {
        /// When the current healthy quorum formed.
        since: MonoTime,
    },
}

/// A transition the rest of the engine acts on. Each is emitted once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetectEvent {
    /// `site` was declared down for `service`.
    SiteDown {
        /// The service (protection group).
        service: String,
        /// The site.
        site: String,
        /// The instant the rule was met.
        at: MonoTime,
    },
    /// `site` was declared up again for `service` after being down.
    SiteUp {
        /// The service (protection group).
        service: String,
        /// The site.
        site: String,
        /// The instant the rule was met.
        at: MonoTime,
    },
}

/// Observer-quorum health detection for every (service, site); see the module doc.
#[derive(Debug, Clone)]
pub struct Detector {
    policy: DetectPolicy,
    voters: BTreeSet<NodeId>,
    targets: BTreeMap<(String, String), Target>,
    /// Events produced while processing reports, returned by the next `evaluate`.
    pending: Vec<DetectEvent>,
}

impl Detector {
    /// A detector with no reports yet, counting the reports of `voters` (the witness included).
    pub fn new(
        policy: DetectPolicy,
        voters: impl IntoIterator<Item = NodeId>,
    ) -> Result<Detector, DetectPolicyError> {
        policy.validate()?;
        Ok(Detector {
            policy,
            voters: voters.into_iter().collect(),
            targets: BTreeMap::new(),
            pending: Vec::new(),
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> &DetectPolicy {
        &self.policy
    }

    /// The current voters, who are the observers.
    pub fn voters(&self) -> &BTreeSet<NodeId> {
        &self.voters
    }

    /// Replaces the voter set at `at`. Reports of removed voters are dropped; a quorum that
    /// depended on them ends at `at`.
    pub fn set_voters(&mut self, voters: impl IntoIterator<Item = NodeId>, at: MonoTime) {
        let voters: BTreeSet<NodeId> = voters.into_iter().collect();
        let ctx = Ctx { policy: &self.policy, voters: &self.voters };
        for ((service, site), target) in &mut self.targets {
            target.advance(at, ctx, service, site, &mut self.pending);
        }
        self.voters = voters;
        let ctx = Ctx { policy: &self.policy, voters: &self.voters };
        for ((service, site), target) in &mut self.targets {
            target.reports.retain(|id, _| ctx.voters.contains(id));
            target.advance(at, ctx, service, site, &mut self.pending);
        }
    }

    /// Records what `observer` saw of `site` for `service` at `at` (on this engine's clock).
    ///
    /// The latest report per observer wins: one older than the observer's stored report is
    /// ignored. Reports from non-voters are ignored. A report whose `at` is earlier than the time
    /// the detector already reached for this site takes effect from that time on (history is not
    /// rewritten), and ages from its own `at`.
    pub fn report(
        &mut self,
        observer: NodeId,
        service: &str,
        site: &str,
        verdict: Verdict,
        at: MonoTime,
    ) {
        if !self.voters.contains(&observer) {
            return;
        }
        let ctx = Ctx { policy: &self.policy, voters: &self.voters };
        let target = self
            .targets
            .entry((service.to_owned(), site.to_owned()))
            .or_insert_with(|| Target::new(at));
        if target.reports.get(&observer).is_some_and(|old| old.at > at) {
            return;
        }
        let effective = max(at, target.processed_until);
        target.advance(effective, ctx, service, site, &mut self.pending);
        target.reports.insert(observer, Report { verdict, at });
        target.advance(effective, ctx, service, site, &mut self.pending);
    }

    /// Advances every site to `now` and returns the transitions since the last call, each once:
    /// first those found while processing reports, then the rest in (service, site) order.
    pub fn evaluate(&mut self, now: MonoTime) -> Vec<DetectEvent> {
        let ctx = Ctx { policy: &self.policy, voters: &self.voters };
        let mut events = std::mem::take(&mut self.pending);
        for ((service, site), target) in &mut self.targets {
            target.advance(now, ctx, service, site, &mut events);
        }
        events
    }

    /// The current view of `site` for `service`, as of the last input; `Up` if it was never
    /// reported on.
    pub fn health(&self, service: &str, site: &str) -> SiteHealth {
        self.targets
            .get(&(service.to_owned(), site.to_owned()))
            .map_or(SiteHealth::Up, |t| t.health)
    }

    /// Counts the fresh reports on `site` for `service` at `now` (an instantaneous view, no
    /// hysteresis): see [`Tally`].
    pub fn tally(&self, service: &str, site: &str, now: MonoTime) -> Tally {
        let ctx = Ctx { policy: &self.policy, voters: &self.voters };
        let (healthy, unhealthy) = self
            .targets
            .get(&(service.to_owned(), site.to_owned()))
            .map_or((0, 0), |t| t.counts_at(now, ctx));
        let voters = self.voters.len();
        let needed = self.policy.quorum.needed(healthy + unhealthy, voters);
        Tally { healthy, unhealthy, voters, needed }
    }

    /// Whether, at `now`, a quorum of fresh reports (by the same [`QuorumRule`] as detection)
    /// says `site` is healthy for `service`. Instantaneous: no `up_after` hysteresis. This is
    /// what failover gates and `probe` steps ask.
    pub fn quorum_healthy(&self, service: &str, site: &str, now: MonoTime) -> bool {
        self.tally(service, site, now).quorum_healthy()
    }

    /// Forgets everything about `service` (it was removed from the cluster spec).
    pub fn remove_service(&mut self, service: &str) {
        self.targets.retain(|(s, _), _| s != service);
        self.pending.retain(|e| match e {
            DetectEvent::SiteDown { service: s, .. } | DetectEvent::SiteUp { service: s, .. } => {
                s != service
            }
        });
    }
}

/// The fresh reports on one site at one instant, as counted by [`Detector::tally`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Fresh `Healthy` reports of current voters.
    pub healthy: usize,
    /// Fresh `Unhealthy` reports of current voters.
    pub unhealthy: usize,
    /// Current voters (observers), answered or not.
    pub voters: usize,
    /// Agreeing observers that make a quorum, given how many answered.
    pub needed: usize,
}

impl Tally {
    /// A quorum says healthy.
    pub fn quorum_healthy(&self) -> bool {
        self.healthy >= self.needed
    }

    /// A quorum says unhealthy.
    pub fn quorum_unhealthy(&self) -> bool {
        self.unhealthy >= self.needed
    }
}

/// What a target's step needs from the detector.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    policy: &'a DetectPolicy,
    voters: &'a BTreeSet<NodeId>,
}

#[derive(Debug, Clone, Copy)]
struct Report {
    verdict: Verdict,
    at: MonoTime,
}

impl Report {
    /// The last instant at which the report counts.
    fn fresh_until(&self, policy: &DetectPolicy) -> MonoTime {
        self.at + policy.stale_after
    }
}

/// Which quorum, if any, holds at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quorum {
    Unhealthy,
    Healthy,
    Neither,
}

#[derive(Debug, Clone)]
struct Target {
    reports: BTreeMap<NodeId, Report>,
    health: SiteHealth,
    /// When the site became down; kept while `Recovering` to go back to `Down { since }`.
    down_since: MonoTime,
    /// Everything up to this instant is processed: `health` is the state at this instant.
    processed_until: MonoTime,
}

impl Target {
    fn new(at: MonoTime) -> Target {
        Target {
            reports: BTreeMap::new(),
            health: SiteHealth::Up,
            down_since: MonoTime::ZERO,
            processed_until: at,
        }
    }

    /// (healthy, unhealthy) fresh reports of current voters at `t`.
    fn counts_at(&self, t: MonoTime, ctx: Ctx<'_>) -> (usize, usize) {
        let (mut healthy, mut unhealthy) = (0, 0);
        for report in ctx.voters.iter().filter_map(|id| self.reports.get(id)) {
            if t > report.fresh_until(ctx.policy) {
                continue;
            }
            match report.verdict {
                Verdict::Unhealthy => unhealthy += 1,
                Verdict::Healthy => healthy += 1,
                Verdict::Unknown => {}
            }
        }
        (healthy, unhealthy)
    }

    fn quorum_at(&self, t: MonoTime, ctx: Ctx<'_>) -> Quorum {
        let (healthy, unhealthy) = self.counts_at(t, ctx);
        let need = ctx.policy.quorum.needed(unhealthy + healthy, ctx.voters.len());
        if unhealthy >= need {
            Quorum::Unhealthy
        } else if healthy >= need {
            Quorum::Healthy
        } else {
            Quorum::Neither
        }
    }

    /// Brings the state to `now` (never backwards), replaying every instant in between at which
    /// a report went stale, and pushes the transitions it meets.
    fn advance(
        &mut self,
        now: MonoTime,
        ctx: Ctx<'_>,
        service: &str,
        site: &str,
        out: &mut Vec<DetectEvent>,
    ) {
        let now = max(now, self.processed_until);
        let mut changes: Vec<MonoTime> = self
            .reports
            .values()
            .map(|r| r.fresh_until(ctx.policy) + TICK)
            .filter(|&t| t > self.processed_until && t < now)
            .collect();
        changes.sort_unstable();
        changes.dedup();
        for t in changes {
            // The quorum seen at `processed_until` held at every instant before `t`.
            self.complete_timer(t.saturating_sub(TICK), ctx.policy, service, site, out);
            self.enter(t, self.quorum_at(t, ctx));
            self.processed_until = t;
        }
        self.complete_timer(now.saturating_sub(TICK), ctx.policy, service, site, out);
        self.enter(now, self.quorum_at(now, ctx));
        self.processed_until = now;
        self.complete_timer(now, ctx.policy, service, site, out);
    }

    /// Applies the quorum holding at `t`: starts or resets the hysteresis timers.
    fn enter(&mut self, t: MonoTime, quorum: Quorum) {
        self.health = match (self.health, quorum) {
            (SiteHealth::Up, Quorum::Unhealthy) => SiteHealth::Suspect { since: t },
            (SiteHealth::Suspect { .. }, Quorum::Healthy | Quorum::Neither) => SiteHealth::Up,
            (SiteHealth::Down { .. }, Quorum::Healthy) => SiteHealth::Recovering { since: t },
            (SiteHealth::Recovering { .. }, Quorum::Unhealthy | Quorum::Neither) => {
                SiteHealth::Down { since: self.down_since }
            }
            (health, _) => health,
        };
    }

    /// Completes a running timer whose deadline is at or before `through`, given that the quorum
    /// that started it held through `through`.
    fn complete_timer(
        &mut self,
        through: MonoTime,
        policy: &DetectPolicy,
        service: &str,
        site: &str,
        out: &mut Vec<DetectEvent>,
    ) {
        match self.health {
            SiteHealth::Suspect { since } => {
                let at = since + policy.down_after;
                if at <= through {
                    self.health = SiteHealth::Down { since: at };
                    self.down_since = at;
                    out.push(DetectEvent::SiteDown {
                        service: service.into(),
                        site: site.into(),
                        at,
                    });
                }
            }
            SiteHealth::Recovering { since } => {
                let at = since + policy.up_after;
                if at <= through {
                    self.health = SiteHealth::Up;
                    out.push(DetectEvent::SiteUp {
                        service: service.into(),
                        site: site.into(),
                        at,
                    });
                }
            }
            SiteHealth::Up | SiteHealth::Down { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "erp";
    // 2 + 2 + 1: prod 1,2; dr 3,4; witness 5.
    const PROD: [NodeId; 2] = [1, 2];
    const DR: [NodeId; 2] = [3, 4];
    const WITNESS: NodeId = 5;
    const ALL: [NodeId; 5] = [1, 2, 3, 4, 5];

    fn ms(v: u64) -> MonoTime {
        MonoTime::from_ms(v)
    }

    fn policy() -> DetectPolicy {
        DetectPolicy {
            down_after: Duration::from_secs(10),
            up_after: Duration::from_secs(20),
            stale_after: Duration::from_secs(5),
            quorum: QuorumRule::default(),
        }
    }

    fn detector() -> Detector {
        Detector::new(policy(), ALL).unwrap()
    }

    fn down(at: u64) -> DetectEvent {
        DetectEvent::SiteDown { service: SVC.into(), site: "prod".into(), at: ms(at) }
    }

    fn up(at: u64) -> DetectEvent {
        DetectEvent::SiteUp { service: SVC.into(), site: "prod".into(), at: ms(at) }
    }

    /// Every observer in `observers` reports `verdict` about prod every second in `[from, to]`,
    /// with `evaluate` after each round; returns all events.
    fn rounds(
        d: &mut Detector,
        observers: &[NodeId],
        verdict: Verdict,
        from: u64,
        to: u64,
    ) -> Vec<DetectEvent> {
        let mut events = Vec::new();
        let mut t = from;
        while t <= to {
            for &o in observers {
                d.report(o, SVC, "prod", verdict, ms(t));
            }
            events.extend(d.evaluate(ms(t)));
            t += 1000;
        }
        events
    }

    #[test]
    fn down_needs_a_quorum_for_down_after_then_up_needs_up_after() {
        let mut d = detector();
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Up);
        let bad = [3, 4, WITNESS];
        assert_eq!(rounds(&mut d, &bad, Verdict::Unhealthy, 0, 9_000), vec![]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Suspect { since: ms(0) });
        assert_eq!(rounds(&mut d, &bad, Verdict::Unhealthy, 10_000, 30_000), vec![down(10_000)]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Down { since: ms(10_000) });

        assert_eq!(rounds(&mut d, &bad, Verdict::Healthy, 31_000, 50_000), vec![]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Recovering { since: ms(31_000) });
        assert_eq!(rounds(&mut d, &bad, Verdict::Healthy, 51_000, 60_000), vec![up(51_000)]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Up);
        assert_eq!(d.evaluate(ms(70_000)), vec![]);
    }

    #[test]
    fn events_do_not_depend_on_how_often_evaluate_is_called() {
        let mut d = detector();
        for o in [3, 4, WITNESS] {
            d.report(o, SVC, "prod", Verdict::Unhealthy, ms(1_000));
        }
        // Reports stay fresh until 6_000, so the quorum ends at 6_001: never 10s long.
        assert_eq!(d.evaluate(ms(60_000)), vec![]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Up);

        let mut d =
            Detector::new(DetectPolicy { down_after: Duration::from_secs(3), ..policy() }, ALL)
                .unwrap();
        for o in [3, 4, WITNESS] {
            d.report(o, SVC, "prod", Verdict::Unhealthy, ms(1_000));
        }
        // Down at 4_000 (1_000 + 3s), found long afterwards, reported at its own instant; and
        // the quorum's end at 6_001 does not undo it.
        assert_eq!(d.evaluate(ms(60_000)), vec![down(4_000)]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Down { since: ms(4_000) });
        assert_eq!(d.evaluate(ms(61_000)), vec![]);
    }

    #[test]
    fn suspect_without_quorum_returns_to_up_silently_and_restarts_the_timer() {
        let mut d = detector();
        let bad = [3, 4, WITNESS];
        assert_eq!(rounds(&mut d, &bad, Verdict::Unhealthy, 0, 9_000), vec![]);
        // One observer turns healthy: 2 unhealthy of 5 answered is no majority.
        for o in PROD {
            d.report(o, SVC, "prod", Verdict::Healthy, ms(9_500));
        }
        d.report(3, SVC, "prod", Verdict::Healthy, ms(9_500));
        assert_eq!(d.evaluate(ms(9_500)), vec![]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Up);
        // The timer starts over when the quorum forms again.
        let events = rounds(&mut d, &bad, Verdict::Unhealthy, 10_000, 25_000);
        assert_eq!(events, vec![down(20_000)]);
    }

    #[test]
    fn recovering_without_quorum_goes_back_to_down_keeping_its_since() {
        let mut d = detector();
        let bad = [3, 4, WITNESS];
        assert_eq!(rounds(&mut d, &bad, Verdict::Unhealthy, 0, 10_000), vec![down(10_000)]);
        assert_eq!(rounds(&mut d, &bad, Verdict::Healthy, 11_000, 25_000), vec![]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Recovering { since: ms(11_000) });
        d.report(3, SVC, "prod", Verdict::Unknown, ms(25_500));
        d.report(4, SVC, "prod", Verdict::Unhealthy, ms(25_500));
        assert_eq!(d.evaluate(ms(25_500)), vec![]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Down { since: ms(10_000) });
        // Healthy again: up_after counts from the new healthy quorum.
        let events = rounds(&mut d, &bad, Verdict::Healthy, 26_000, 50_000);
        assert_eq!(events, vec![up(46_000)]);
    }

    #[test]
    fn a_single_observer_never_decides_even_after_a_long_time() {
        let mut d = detector();
        assert_eq!(rounds(&mut d, &[3], Verdict::Unhealthy, 0, 600_000), vec![]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Up);

        // Even when it is the only one that answered, and even with a rule asking for a
        // majority of one voter.
        let single = DetectPolicy { quorum: QuorumRule::MajorityOfVoters, ..policy() };
        let mut d = Detector::new(single, [WITNESS]).unwrap();
        assert_eq!(rounds(&mut d, &[WITNESS], Verdict::Unhealthy, 0, 600_000), vec![]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Up);
    }

    #[test]
    fn the_witness_alone_losing_prod_is_not_prod_down() {
        let mut d = detector();
        let mut events = Vec::new();
        for t in (0..=120_000).step_by(1000) {
            d.report(WITNESS, SVC, "prod", Verdict::Unhealthy, ms(t));
            for o in PROD.into_iter().chain(DR) {
                d.report(o, SVC, "prod", Verdict::Healthy, ms(t));
            }
            events.extend(d.evaluate(ms(t)));
        }
        assert_eq!(events, vec![]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Up);
    }

    #[test]
    fn flapping_faster_than_down_after_never_goes_down() {
        let mut d = detector();
        let bad = [3, 4, WITNESS];
        let mut events = Vec::new();
        // 8s unhealthy, 2s healthy, for ten minutes: never 10s in a row.
        for period in 0..60u64 {
            let start = period * 10_000;
            events.extend(rounds(&mut d, &bad, Verdict::Unhealthy, start, start + 7_000));
            events.extend(rounds(&mut d, &bad, Verdict::Healthy, start + 8_000, start + 9_000));
        }
        assert_eq!(events, vec![]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Up);
    }

    #[test]
    fn stale_reports_do_not_count() {
        let mut d = detector();
        // Two observers keep reporting; the witness reported once and then went quiet.
        d.report(WITNESS, SVC, "prod", Verdict::Unhealthy, ms(0));
        let events = rounds(&mut d, &[3, 4], Verdict::Unhealthy, 0, 60_000);
        // 3 of 3 answered until the witness's report is stale at 5_001; after that 2 of 2
        // answered is still a majority with the 2-observer floor, so: down 10s after 0.
        assert_eq!(events, vec![down(10_000)]);

        // With one live observer and two stale ones, there is no quorum.
        let mut d = detector();
        d.report(WITNESS, SVC, "prod", Verdict::Unhealthy, ms(0));
        d.report(4, SVC, "prod", Verdict::Unhealthy, ms(0));
        assert_eq!(rounds(&mut d, &[3], Verdict::Unhealthy, 0, 60_000), vec![]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Up);
    }

    #[test]
    fn a_report_older_than_the_stored_one_is_ignored() {
        let mut d = detector();
        for o in [3, 4, WITNESS] {
            d.report(o, SVC, "prod", Verdict::Unhealthy, ms(1_000));
        }
        d.report(3, SVC, "prod", Verdict::Healthy, ms(500));
        assert_eq!(d.evaluate(ms(1_000)), vec![]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Suspect { since: ms(1_000) });
    }

    #[test]
    fn three_of_five_unhealthy_for_down_after_gives_exactly_one_site_down() {
        let mut d = detector();
        let mut events = Vec::new();
        for t in (0..=120_000).step_by(500) {
            for o in [3, 4, WITNESS] {
                d.report(o, SVC, "prod", Verdict::Unhealthy, ms(t));
            }
            for o in PROD {
                d.report(o, SVC, "prod", Verdict::Healthy, ms(t));
            }
            events.extend(d.evaluate(ms(t)));
            events.extend(d.evaluate(ms(t + 100)));
        }
        assert_eq!(events, vec![down(10_000)]);
        // dr is unaffected, and another service has its own state.
        assert_eq!(d.health(SVC, "dr"), SiteHealth::Up);
        assert_eq!(d.health("crm", "prod"), SiteHealth::Up);
    }

    #[test]
    fn non_voters_do_not_count_and_removed_voters_end_the_quorum() {
        let mut d = detector();
        // 9 is not a voter.
        let events = rounds(&mut d, &[3, 9], Verdict::Unhealthy, 0, 30_000);
        assert_eq!(events, vec![]);

        let mut d = detector();
        let bad = [3, 4, WITNESS];
        assert_eq!(rounds(&mut d, &bad, Verdict::Unhealthy, 0, 5_000), vec![]);
        // The witness is removed; 3 and 4 alone against healthy 1 and 2 are 2 of 4: no majority.
        for o in PROD {
            d.report(o, SVC, "prod", Verdict::Healthy, ms(5_000));
        }
        d.set_voters([1, 2, 3, 4], ms(5_500));
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Up);
        d.report(WITNESS, SVC, "prod", Verdict::Unhealthy, ms(6_000));
        assert_eq!(d.evaluate(ms(6_000)), vec![]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Up);
    }

    #[test]
    fn majority_of_voters_rule_counts_silent_voters_against_the_quorum() {
        let strict = DetectPolicy { quorum: QuorumRule::MajorityOfVoters, ..policy() };
        let mut d = Detector::new(strict.clone(), ALL).unwrap();
        // 2 of 2 answered, but 2 of 5 voters: no quorum under this rule.
        assert_eq!(rounds(&mut d, &[3, 4], Verdict::Unhealthy, 0, 60_000), vec![]);
        let mut d = Detector::new(strict, ALL).unwrap();
        assert_eq!(
            rounds(&mut d, &[3, 4, WITNESS], Verdict::Unhealthy, 0, 60_000),
            vec![down(10_000)]
        );
    }

    #[test]
    fn a_quorum_that_lapses_between_inputs_by_staleness_restarts_the_timer() {
        let mut d =
            Detector::new(DetectPolicy { down_after: Duration::from_secs(4), ..policy() }, ALL)
                .unwrap();
        // Reports age out at different instants (fresh for 5s):
        d.report(3, SVC, "prod", Verdict::Unhealthy, ms(0)); //    until 5_000
        d.report(1, SVC, "prod", Verdict::Healthy, ms(1_000)); //  until 6_000
        d.report(2, SVC, "prod", Verdict::Healthy, ms(1_000)); //  until 6_000
        d.report(4, SVC, "prod", Verdict::Unhealthy, ms(2_000)); // until 7_000
        d.report(WITNESS, SVC, "prod", Verdict::Unhealthy, ms(2_000));
        // 2_000: 3 unhealthy of 5 -> suspect. 5_001: 2 of 4 -> no quorum. 6_001: 2 of 2 ->
        // suspect again. At 6_500 a quorum holds and 6_500 - 2_000 >= 4s, but it was not
        // continuous, so no SiteDown.
        assert_eq!(d.evaluate(ms(6_500)), vec![]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Suspect { since: ms(6_001) });
        // 7_001: everything is stale.
        assert_eq!(d.evaluate(ms(20_000)), vec![]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Up);
    }

    #[test]
    fn remove_service_forgets_its_state_and_pending_events() {
        let mut d = detector();
        for o in [3, 4, WITNESS] {
            d.report(o, SVC, "prod", Verdict::Unhealthy, ms(0));
            d.report(o, SVC, "prod", Verdict::Unhealthy, ms(10_000));
        }
        d.remove_service(SVC);
        assert_eq!(d.evaluate(ms(20_000)), vec![]);
        assert_eq!(d.health(SVC, "prod"), SiteHealth::Up);
    }

    #[test]
    fn quorum_healthy_is_instantaneous_and_needs_fresh_reports_of_voters() {
        let mut d = detector();
        assert!(!d.quorum_healthy(SVC, "dr", ms(0)), "silence is not health");
        d.report(3, SVC, "dr", Verdict::Healthy, ms(0));
        d.report(9, SVC, "dr", Verdict::Healthy, ms(0)); // not a voter
        assert!(!d.quorum_healthy(SVC, "dr", ms(0)), "one observer never decides");
        d.report(4, SVC, "dr", Verdict::Healthy, ms(1_000));
        d.report(WITNESS, SVC, "dr", Verdict::Unhealthy, ms(1_000));
        assert_eq!(
            d.tally(SVC, "dr", ms(1_000)),
            Tally { healthy: 2, unhealthy: 1, voters: 5, needed: 2 }
        );
        assert!(d.quorum_healthy(SVC, "dr", ms(1_000)));
        // 3's report is stale after 5_000: 1 healthy of 2 answered.
        assert!(d.quorum_healthy(SVC, "dr", ms(5_000)));
        assert!(!d.quorum_healthy(SVC, "dr", ms(5_001)));
        assert!(!d.tally(SVC, "dr", ms(5_001)).quorum_unhealthy());
    }

    #[test]
    fn policy_validation() {
        assert_eq!(DetectPolicy::default().validate(), Ok(()));
        let p = DetectPolicy { stale_after: Duration::ZERO, ..policy() };
        assert_eq!(p.validate(), Err(DetectPolicyError::ZeroStaleAfter));
        let p = DetectPolicy {
            quorum: QuorumRule::MajorityOfAnswered { min_observers: 1 },
            ..policy()
        };
        assert_eq!(p.validate(), Err(DetectPolicyError::TooFewObservers(1)));
        assert!(Detector::new(p, ALL).is_err());
        let p = DetectPolicy { down_after: Duration::from_secs(8 * 24 * 3600), ..policy() };
        assert!(matches!(
            p.validate(),
            Err(DetectPolicyError::TooLong { field: "down_after", .. })
        ));
    }

    #[test]
    fn quorum_sizes() {
        let rule = QuorumRule::default();
        assert_eq!(rule.needed(0, 5), 2);
        assert_eq!(rule.needed(2, 5), 2);
        assert_eq!(rule.needed(3, 5), 2);
        assert_eq!(rule.needed(4, 5), 3);
        assert_eq!(rule.needed(5, 5), 3);
        assert_eq!(QuorumRule::MajorityOfAnswered { min_observers: 3 }.needed(2, 5), 3);
        assert_eq!(QuorumRule::MajorityOfVoters.needed(2, 5), 3);
        assert_eq!(QuorumRule::MajorityOfVoters.needed(1, 1), 2);
    }
}
