//! The background prober: runs every check of the current spec at its own interval and keeps
//! the latest result of each.
//!
//! ```text
//!  spec watch ──▶ supervisor task ── reconcile: stop jobs whose check left the spec,
//!                                   start jobs for new ones (staggered first run)
//!                     │ owns
//!                     ▼
//!                 job tasks (one per check, one per lag probe run here)
//!                     │ tick ─▶ Semaphore permit ─▶ run_check / run_lag ─▶ discount_late ─▶ slot
//!                     ▼                                  (StallMonitor: runtime lag)
//!  latest() ◀── slots (Mutex<Shared>), folded per (service, site) in spec order
//! ```
//!
//! A check is identified by its whole definition: editing its interval or URL stops the old job
//! and starts a new one. Services whose checks are identical (same site, probe, interval and
//! timeout, e.g. many services of one application) share one job: an observer probes the
//! application once per interval, not once per service. Job tasks are aborted when their check leaves the spec, when the spec
//! channel closes, and when the [`Prober`] is dropped (aborting a run kills its child process).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{watch, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;

use std::sync::atomic::{AtomicUsize, Ordering};

use super::late::{discount_late, Lateness, StallMonitor};
use super::{run_check, run_fingerprint, run_lag, ProbeResult, DETAIL_MAX};
use crate::decide::Verdict;
use crate::edge;
use crate::spec::{Check, CheckProbe, ClusterSpec, ConsistencyCheck, LagProbe, RunOn};

/// Limits of one [`Prober`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeLimits {
    /// Most check runs in flight at once, across all checks (at least 1).
    pub max_in_flight: usize,
    /// The `n`-th check of the spec first runs `n * stagger_step` after it is started...
    pub stagger_step: Duration,
    /// ...but never later than this (nor later than its own interval).
    pub max_stagger: Duration,
    /// A run that started later than this after its tick, or during which this process's
    /// runtime stalled (or its timer fired late) by more than this, was run by a late
    /// observer: its timeout is reported `Unknown` ([`super::late`]).
    pub late_tolerance: Duration,
    /// How often the runtime's wake-up lag is sampled.
    pub stall_sample: Duration,
}

impl Default for ProbeLimits {
    fn default() -> Self {
        ProbeLimits {
            max_in_flight: 16,
            stagger_step: Duration::from_millis(20),
            max_stagger: Duration::from_secs(1),
            late_tolerance: Duration::from_millis(250),
            stall_sample: Duration::from_millis(100),
        }
    }
}

/// What this node currently sees of one site of one service.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteReport {
    /// The service.
    pub service: String,
    /// The site whose checks these are.
    pub site: String,
    /// `Unhealthy` if any of the site's checks is, `Healthy` if all are, else `Unknown` (some
    /// check could not run, or has not run yet).
    pub verdict: Verdict,
    /// One line: the failing checks' details (or every check's, when healthy), each prefixed
    /// with the check when the site has several; then `lag probe: <error>` if the lag probe
    /// attached here failed.
    pub detail: String,
    /// When the *oldest* of the results folded in here was taken (for a check that has not run
    /// yet: when it was started), so a report is never fresher than its stalest part.
    pub observed_at: Instant,
    /// The service's replication lag, as last measured by this node. Attached to the report of
    /// the lag probe's `run_on` site (the probe only runs on nodes of that site); a lag probe
    /// with `run_on = "any"` runs on every node and its value is attached to every site report
    /// of the service. `None` when there is no lag probe here, it has not run yet, or its last
    /// run failed (the error is in `detail`).
    pub lag: Option<f64>,
    /// The verdict of the site's readiness checks (can it take over?), `None` when the
    /// service has none for this site.
    pub ready: Option<Verdict>,
    /// The fingerprints of the service's consistency checks, in spec order; only in the
    /// report of this node's own site (a site fingerprints itself), and only once a check ran.
    pub fingerprints: Vec<FingerprintReading>,
    /// The latest result of each of the service's passive checks of this site, in spec order
    /// (`Healthy` = the check passes: the site serves).
    pub passive: Vec<PassiveReading>,
}

/// The latest run of one consistency check on this node.
#[derive(Debug, Clone, PartialEq)]
pub struct FingerprintReading {
    /// The check's name.
    pub check: String,
    /// The fingerprint, or why there is none.
    pub value: Result<String, String>,
    /// When the run ended.
    pub observed_at: Instant,
}

/// The latest run of one passive check from this node.
#[derive(Debug, Clone, PartialEq)]
pub struct PassiveReading {
    /// The check's name.
    pub check: String,
    /// `Healthy`: the check passes (the site serves); `Unhealthy`: it fails, as it should on
    /// a standby; `Unknown`: it could not run or has not run yet.
    pub verdict: Verdict,
    /// One short line from the run.
    pub detail: String,
    /// When the run ended (or, before the first run, when the check was started).
    pub observed_at: Instant,
}

/// Handle of the background prober; dropping it stops every probe task.
#[derive(Debug)]
pub struct Prober {
    shared: Arc<Mutex<Shared>>,
    _supervisor: AbortOnDrop,
}

impl Prober {
    /// Starts probing on the current tokio runtime. `own_site` is this node's site: lag probes
    /// with `run_on` naming another site are not run here. The spec channel holds `None` until
    /// a spec is committed; when its sender is dropped every probe stops.
    pub fn spawn(
        own_site: String,
        spec: watch::Receiver<Option<Arc<ClusterSpec>>>,
        limits: ProbeLimits,
    ) -> Prober {
        let shared =
            Arc::new(Mutex::new(Shared { own_site: own_site.clone(), ..Shared::default() }));
        let semaphore = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
        let pace = Pace {
            semaphore,
            waiting: Arc::new(AtomicUsize::new(0)),
            stalls: StallMonitor::spawn(limits.stall_sample.max(Duration::from_millis(1))),
            tolerance: limits.late_tolerance,
        };
        let supervisor = Supervisor {
            own_site,
            limits,
            shared: shared.clone(),
            pace,
            jobs: Vec::new(),
            next_id: 0,
        };
        let task = tokio::spawn(supervisor.run(spec));
        Prober { shared, _supervisor: AbortOnDrop(task.abort_handle()) }
    }

    /// The latest report of every (service, site) that has health checks, in spec order
    /// (services, then sites); empty before the first spec.
    pub fn latest(&self) -> Vec<SiteReport> {
        let shared = lock(&self.shared);
        let Some(spec) = shared.spec.clone() else { return Vec::new() };
        let mut reports = Vec::new();
        for service in &spec.services {
            for site in &spec.sites {
                let has_readiness = service.readiness.iter().any(|c| c.site == site.name);
                let has_passive = service.passive.iter().any(|p| p.check.site == site.name);
                let fingerprints = site.name == shared.own_site
                    && !site.witness
                    && !service.consistency.is_empty();
                if service.checks_for(&site.name).next().is_none()
                    && !has_readiness
                    && !has_passive
                    && !fingerprints
                {
                    continue;
                }
                reports.push(shared.fold(&service.name, &site.name));
            }
        }
        reports
    }
}

/// What the prober runs: a health check (of every service that has it), or a lag probe of
/// one service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum JobKey {
    Check {
        check: Check,
    },
    /// A readiness check: whether the site could take over (DESIGN.md 3).
    Readiness {
        check: Check,
    },
    Lag {
        service: String,
        probe: LagProbe,
    },
    /// A passive check: must fail while its site is a standby.
    Passive {
        check: Check,
    },
    /// A consistency check of one service, fingerprinting this node's own site.
    Fingerprint {
        service: String,
        check: ConsistencyCheck,
    },
}

impl JobKey {
    fn interval(&self) -> Duration {
        match self {
            JobKey::Check { check, .. }
            | JobKey::Readiness { check, .. }
            | JobKey::Passive { check } => check.interval,
            JobKey::Lag { probe, .. } => probe.interval,
            JobKey::Fingerprint { check, .. } => check.interval,
        }
    }
}

/// The latest outcome of one job.
#[derive(Debug)]
enum Outcome {
    Check(ProbeResult),
    Lag(Result<f64, String>),
    Fingerprint(Result<String, String>),
}

/// What a check is run for; the same check may be run for several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Purpose {
    Health,
    Readiness,
    Passive,
}

#[derive(Debug)]
struct Slot {
    key: JobKey,
    started: Instant,
    last: Option<(Outcome, Instant)>,
}

#[derive(Debug, Default)]
struct Shared {
    /// This node's site: consistency checks fingerprint it.
    own_site: String,
    spec: Option<Arc<ClusterSpec>>,
    slots: HashMap<u64, Slot>,
    /// The job of each health, readiness and passive check.
    checks: HashMap<(Purpose, Check), u64>,
}

impl Shared {
    fn fold(&self, service: &str, site: &str) -> SiteReport {
        let mut report = self.fold_checks(service, site, Purpose::Health);
        let ready = self.fold_checks(service, site, Purpose::Readiness);
        report.ready = (!ready.detail.ends_with("no checks running")).then_some(ready.verdict);
        let Some(svc) = self.spec.as_ref().and_then(|spec| spec.service(service)) else {
            return report;
        };
        for p in svc.passive.iter().filter(|p| p.check.site == site) {
            let slot = self
                .checks
                .get(&(Purpose::Passive, p.check.clone()))
                .and_then(|id| self.slots.get(id));
            let Some(slot) = slot else { continue };
            let (verdict, detail, observed_at) = match &slot.last {
                Some((Outcome::Check(r), at)) => (r.verdict, r.detail.clone(), *at),
                _ => (Verdict::Unknown, "not probed yet".to_string(), slot.started),
            };
            report.passive.push(PassiveReading {
                check: p.name.clone(),
                verdict,
                detail,
                observed_at,
            });
        }
        if site == self.own_site {
            for c in &svc.consistency {
                let done = self.slots.values().find_map(|slot| match (&slot.key, &slot.last) {
                    (
                        JobKey::Fingerprint { service: s, check },
                        Some((Outcome::Fingerprint(value), at)),
                    ) if s == service && check == c => Some((value.clone(), *at)),
                    _ => None,
                });
                if let Some((value, observed_at)) = done {
                    report.fingerprints.push(FingerprintReading {
                        check: c.name.clone(),
                        value,
                        observed_at,
                    });
                }
            }
        }
        report
    }

    fn fold_checks(&self, service: &str, site: &str, purpose: Purpose) -> SiteReport {
        let defined =
            self.spec.as_ref().and_then(|spec| spec.service(service)).map(|svc| match purpose {
                Purpose::Readiness => &svc.readiness,
                Purpose::Health | Purpose::Passive => &svc.checks,
            });
        // In spec order; a check listed twice is folded once.
        let mut checks: Vec<(u64, &Slot, &Check)> = Vec::new();
        for check in defined.into_iter().flatten().filter(|c| c.site == site) {
            let Some(id) = self.checks.get(&(purpose, check.clone())) else { continue };
            let Some(slot) = self.slots.get(id) else { continue };
            if !checks.iter().any(|(other, ..)| other == id) {
                checks.push((*id, slot, check));
            }
        }
        let several = checks.len() > 1;
        let mut observed_at: Option<Instant> = None;
        let mut parts: Vec<(Verdict, String)> = Vec::new();
        for (_, slot, check) in &checks {
            let (verdict, detail, at) = match &slot.last {
                Some((Outcome::Check(r), at)) => (r.verdict, r.detail.clone(), *at),
                _ => (Verdict::Unknown, "not probed yet".to_string(), slot.started),
            };
            observed_at = Some(observed_at.map_or(at, |o| o.min(at)));
            let detail = if several { format!("{}: {detail}", label(check)) } else { detail };
            parts.push((verdict, detail));
        }
        let verdict = if parts.iter().any(|(v, _)| *v == Verdict::Unhealthy) {
            Verdict::Unhealthy
        } else if !parts.is_empty() && parts.iter().all(|(v, _)| *v == Verdict::Healthy) {
            Verdict::Healthy
        } else {
            Verdict::Unknown
        };
        let mut details: Vec<String> = parts
            .into_iter()
            .filter(|(v, _)| verdict == Verdict::Healthy || *v == verdict)
            .map(|(_, d)| d)
            .collect();
        if checks.is_empty() {
            details.push("no checks running".to_string());
        }

        let mut lag = None;
        let lag_slot = self.slots.values().find(|slot| match &slot.key {
            JobKey::Lag { service: s, probe } => {
                s == service
                    && match &probe.run_on {
                        RunOn::Any => true,
                        RunOn::Site(run_on) => run_on == site,
                    }
            }
            JobKey::Check { .. }
            | JobKey::Readiness { .. }
            | JobKey::Passive { .. }
            | JobKey::Fingerprint { .. } => false,
        });
        if let Some(Slot { last: Some((Outcome::Lag(value), _)), .. }) = lag_slot {
            match value {
                Ok(v) => lag = Some(*v),
                Err(e) => details.push(format!("lag probe: {e}")),
            }
        }

        SiteReport {
            service: service.to_string(),
            site: site.to_string(),
            verdict,
            detail: edge::shorten(&details.join("; "), 2 * DETAIL_MAX),
            observed_at: observed_at.unwrap_or_else(Instant::now),
            lag,
            ready: None,
            fingerprints: Vec::new(),
            passive: Vec::new(),
        }
    }
}

/// A short name for a check in a multi-check detail: `tcp db:5432`.
fn label(check: &Check) -> String {
    match &check.probe {
        CheckProbe::Http { url, .. } => format!("http {url}"),
        CheckProbe::Tcp { address } => format!("tcp {address}"),
        CheckProbe::Exec { command } => {
            format!("exec {}", command.first().map_or("", String::as_str))
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Aborts a task when dropped.
#[derive(Debug)]
pub(super) struct AbortOnDrop(pub(super) AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Job {
    id: u64,
    key: JobKey,
    _task: AbortOnDrop,
}

struct Supervisor {
    own_site: String,
    limits: ProbeLimits,
    shared: Arc<Mutex<Shared>>,
    pace: Pace,
    /// Dropped with the supervisor's future, which aborts every job.
    jobs: Vec<Job>,
    next_id: u64,
}

impl Supervisor {
    async fn run(mut self, mut spec_rx: watch::Receiver<Option<Arc<ClusterSpec>>>) {
        loop {
            let spec = spec_rx.borrow_and_update().clone();
            self.reconcile(spec);
            if spec_rx.changed().await.is_err() {
                break;
            }
        }
        tracing::debug!("spec channel closed; stopping every probe");
        self.reconcile(None);
    }

    /// The jobs `spec` asks of this node, in spec order, without duplicates.
    fn desired(&self, spec: Option<&ClusterSpec>) -> Vec<JobKey> {
        let mut keys = Vec::new();
        for service in spec.map_or(&[][..], |s| &s.services) {
            for check in &service.checks {
                keys.push(JobKey::Check { check: check.clone() });
            }
            for check in &service.readiness {
                keys.push(JobKey::Readiness { check: check.clone() });
            }
            for p in &service.passive {
                keys.push(JobKey::Passive { check: p.check.clone() });
            }
            // A site fingerprints itself; a witness has nothing to fingerprint.
            let own_capable =
                spec.and_then(|s| s.site(&self.own_site)).is_some_and(|site| !site.witness);
            if own_capable {
                for check in &service.consistency {
                    keys.push(JobKey::Fingerprint {
                        service: service.name.clone(),
                        check: check.clone(),
                    });
                }
            }
            if let Some(probe) = &service.lag {
                let here = match &probe.run_on {
                    RunOn::Any => true,
                    RunOn::Site(site) => *site == self.own_site,
                };
                if here {
                    keys.push(JobKey::Lag { service: service.name.clone(), probe: probe.clone() });
                }
            }
        }
        let mut seen: HashSet<JobKey> = HashSet::new();
        keys.retain(|key| seen.insert(key.clone()));
        keys
    }

    fn reconcile(&mut self, spec: Option<Arc<ClusterSpec>>) {
        let desired = self.desired(spec.as_deref());
        let mut shared = lock(&self.shared);
        shared.spec = spec;
        let before = self.jobs.len();
        let wanted: HashSet<&JobKey> = desired.iter().collect();
        self.jobs.retain(|job| wanted.contains(&job.key));
        let kept: HashSet<u64> = self.jobs.iter().map(|j| j.id).collect();
        shared.slots.retain(|id, _| kept.contains(id));
        shared.checks.retain(|_, id| kept.contains(id));
        let running: HashSet<JobKey> = self.jobs.iter().map(|j| j.key.clone()).collect();
        let stopped = before - self.jobs.len();
        let mut started = 0;
        for (index, key) in desired.into_iter().enumerate() {
            if running.contains(&key) {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let delay = (self.limits.stagger_step * u32::try_from(index).unwrap_or(u32::MAX))
                .min(self.limits.max_stagger)
                .min(key.interval());
            shared.slots.insert(id, Slot { key: key.clone(), started: Instant::now(), last: None });
            match &key {
                JobKey::Check { check } => {
                    shared.checks.insert((Purpose::Health, check.clone()), id);
                }
                JobKey::Readiness { check } => {
                    shared.checks.insert((Purpose::Readiness, check.clone()), id);
                }
                JobKey::Passive { check } => {
                    shared.checks.insert((Purpose::Passive, check.clone()), id);
                }
                JobKey::Lag { .. } | JobKey::Fingerprint { .. } => {}
            }
            let task = tokio::spawn(run_job(
                id,
                self.own_site.clone(),
                key.clone(),
                delay,
                self.shared.clone(),
                self.pace.clone(),
            ));
            self.jobs.push(Job { id, key, _task: AbortOnDrop(task.abort_handle()) });
            started += 1;
        }
        if started > 0 || stopped > 0 {
            tracing::info!(started, stopped, running = self.jobs.len(), "probe set changed");
        }
    }
}

/// What every job shares to pace itself and to tell whether it ran on time.
#[derive(Debug, Clone)]
struct Pace {
    /// Bounds the runs in flight.
    semaphore: Arc<Semaphore>,
    /// Jobs waiting for a permit right now.
    waiting: Arc<AtomicUsize>,
    stalls: StallMonitor,
    tolerance: Duration,
}

async fn run_job(
    id: u64,
    own_site: String,
    key: JobKey,
    first_delay: Duration,
    shared: Arc<Mutex<Shared>>,
    pace: Pace,
) {
    let start = Instant::now() + first_delay;
    let mut ticker = tokio::time::interval_at(start, key.interval().max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let scheduled = ticker.tick().await;
        // The semaphore is never closed; a wait for a permit does not eat into the timeout,
        // but it makes the run late (see `discount_late`).
        let queued = pace.waiting.fetch_add(1, Ordering::Relaxed);
        let permit = pace.semaphore.acquire().await;
        pace.waiting.fetch_sub(1, Ordering::Relaxed);
        let Ok(_permit) = permit else { return };
        let began = Instant::now();
        let outcome = match &key {
            JobKey::Check { check, .. }
            | JobKey::Readiness { check, .. }
            | JobKey::Passive { check } => {
                let result = run_check(check).await;
                let late = Lateness {
                    start_delay: began.saturating_duration_since(scheduled),
                    overrun: result.latency.saturating_sub(check.timeout),
                    stall: pace.stalls.worst_since(began),
                    queued,
                };
                Outcome::Check(discount_late(result, &late, pace.tolerance))
            }
            JobKey::Lag { probe, .. } => Outcome::Lag(run_lag(probe).await),
            JobKey::Fingerprint { service, check } => {
                Outcome::Fingerprint(run_fingerprint(check, service, &own_site).await)
            }
        };
        let mut shared = lock(&shared);
        // A slot that is gone belongs to a job being stopped; never recreate it.
        let Some(slot) = shared.slots.get_mut(&id) else { return };
        log_change(&slot.key, slot.last.as_ref().map(|(o, _)| o), &outcome);
        slot.last = Some((outcome, Instant::now()));
    }
}

/// Logs verdict changes of checks and success/failure changes of lag probes.
fn log_change(key: &JobKey, previous: Option<&Outcome>, now: &Outcome) {
    match (key, previous, now) {
        (JobKey::Check { check }, prev, Outcome::Check(r)) => {
            let prev = match prev {
                Some(Outcome::Check(p)) => Some(p.verdict),
                _ => None,
            };
            if prev == Some(r.verdict) {
                return;
            }
            let check = label(check);
            match r.verdict {
                Verdict::Healthy => {
                    tracing::info!(site = %key_site(key), %check, detail = %r.detail, "check healthy")
                }
                Verdict::Unhealthy => {
                    tracing::warn!(site = %key_site(key), %check, detail = %r.detail, "check unhealthy")
                }
                Verdict::Unknown => {
                    tracing::warn!(site = %key_site(key), %check, detail = %r.detail, "check could not run")
                }
            }
        }
        (JobKey::Lag { service, .. }, prev, Outcome::Lag(r)) => {
            let was_ok = matches!(prev, Some(Outcome::Lag(Ok(_))));
            match r {
                Err(e) if was_ok || prev.is_none() => {
                    tracing::warn!(%service, cause = %e, "lag probe failed")
                }
                Ok(v) if !was_ok => tracing::info!(%service, lag = v, "lag probe reporting"),
                _ => {}
            }
        }
        (JobKey::Fingerprint { service, check }, prev, Outcome::Fingerprint(r)) => {
            let prev = match prev {
                Some(Outcome::Fingerprint(p)) => Some(p),
                _ => None,
            };
            if prev == Some(r) {
                return;
            }
            match r {
                Ok(v) => {
                    tracing::info!(%service, check = %check.name, fingerprint = %v, "fingerprint")
                }
                Err(e) => {
                    tracing::warn!(%service, check = %check.name, cause = %e, "consistency check failed")
                }
            }
        }
        _ => {}
    }
}

fn key_site(key: &JobKey) -> &str {
    match key {
        JobKey::Check { check, .. }
        | JobKey::Readiness { check, .. }
        | JobKey::Passive { check } => &check.site,
        JobKey::Lag { .. } | JobKey::Fingerprint { .. } => "",
    }
}
