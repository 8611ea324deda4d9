//! Every rule of `cluster.toml`, checked on the raw shape. Problems are collected, not
//! returned at the first one, so an operator fixes a spec in one round; a value that is wrong
//! is replaced by its default internally so the remaining rules can still be checked (the
//! result is discarded when anything was wrong).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::raw;
use super::{
    Check, CheckProbe, ClusterSpec, CommitMode, ConsistencyCheck, DnsProtocol, DnsRecord,
    DnsRecordType, DnsStep, ExecStep, FenceAction, FenceAgentStep, FingerprintSource, HaproxySet,
    HaproxyState, HaproxyStep, HttpStep, LagProbe, LagSource, OnFailure, PassiveCheck, Phase,
    Policy, PolicyOverride, ProbeStep, RunOn, Service, Site, SpecError, Step, StepAction, Tsig,
    VetoHook, WaitStep, DEFAULT_VETO_TIMEOUT, MAX_CLOCK_DRIFT_LIMIT, MAX_DNS_TTL_SECS, MAX_RETRIES,
    MAX_SERVICES, MAX_TIMEOUT, MAX_VETO_TIMEOUT, RUN_ON_ANY,
};
use crate::config::check_name;

const MIN_INTERVAL: Duration = Duration::from_millis(100);
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_LAG_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_LAG_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CONSISTENCY_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_CONSISTENCY_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
const DEFAULT_DNS_TTL_SECS: u32 = 60;
const HTTP_METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
const STEP_KINDS: [&str; 7] = ["exec", "http", "wait", "probe", "fence_agent", "dns", "haproxy"];

/// Checks `file` against every rule; the validated spec, or every problem found.
pub(super) fn validate(file: &raw::File) -> Result<ClusterSpec, Vec<SpecError>> {
    let mut v = Validator { errors: Vec::new(), sites: Vec::new() };
    let sites = v.sites(&file.site);
    v.sites = sites.clone();
    let policy = v.policy("policy", &file.policy, &Policy::default());
    let services = v.services(&file.service, &policy);
    if v.errors.is_empty() {
        Ok(ClusterSpec { sites, policy, services })
    } else {
        Err(v.errors)
    }
}

struct Validator {
    errors: Vec<SpecError>,
    /// Sites as validated (known for site-name checks in services).
    sites: Vec<Site>,
}

/// How a site reference may be written at a given key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SiteRef {
    /// Only a non-witness site name.
    Site,
    /// A non-witness site name or `any`.
    SiteOrAny,
}

impl Validator {
    fn err(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(SpecError { key: key.into(), line_col: None, reason: reason.into() });
    }

    fn site_list(&self) -> String {
        let names: Vec<&str> =
            self.sites.iter().filter(|s| !s.witness).map(|s| s.name.as_str()).collect();
        if names.is_empty() {
            "none are declared; add [[site]] tables".to_string()
        } else {
            format!("sites are {}", names.join(", "))
        }
    }

    /// Checks that `name` is a known non-witness site (or `any` if allowed); `what` says what
    /// the witness would be asked to do, for the error message.
    fn site_ref(&mut self, key: &str, name: &str, allow: SiteRef, what: &str) -> bool {
        if allow == SiteRef::SiteOrAny && name == RUN_ON_ANY {
            return true;
        }
        match self.sites.iter().find(|s| s.name == name) {
            Some(s) if s.witness => {
                self.err(key, format!("site {name:?} is the witness; a witness {what}"));
                false
            }
            Some(_) => true,
            None => {
                let any = if allow == SiteRef::SiteOrAny { " (or \"any\")" } else { "" };
                let list = self.site_list();
                self.err(key, format!("unknown site {name:?}; {list}{any}"));
                false
            }
        }
    }

    fn sites(&mut self, raw: &[raw::Site]) -> Vec<Site> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            let key = format!("site[{i}].name");
            if let Err(r) = check_name(&s.name) {
                self.err(&key, r);
            } else if s.name == RUN_ON_ANY {
                self.err(&key, "\"any\" is reserved (run_on = \"any\" means any node)");
            }
            if let Some(j) = seen.insert(&s.name, i) {
                self.err(
                    &key,
                    format!("{:?} is also site[{j}]; site names must be unique", s.name),
                );
                continue;
            }
            out.push(Site { name: s.name.clone(), witness: s.witness });
        }
        let capable = out.iter().filter(|s| !s.witness).count();
        if capable < 2 {
            self.err(
                "site",
                format!(
                    "{capable} site(s) can be active; declare at least two non-witness sites \
                     (there is nothing to fail over to otherwise)"
                ),
            );
        }
        let witnesses: Vec<&str> =
            out.iter().filter(|s| s.witness).map(|s| s.name.as_str()).collect();
        if witnesses.len() > 1 {
            self.err(
                "site",
                format!(
                    "{} are all witnesses; at most one site may be the witness",
                    witnesses.join(", ")
                ),
            );
        }
        out
    }

    fn duration(
        &mut self,
        key: &str,
        value: &Option<String>,
        default: Duration,
    ) -> Option<Duration> {
        match value {
            None => Some(default),
            Some(s) => self.parse_duration(key, s),
        }
    }

    fn parse_duration(&mut self, key: &str, s: &str) -> Option<Duration> {
        match humantime::parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(
                    key,
                    format!("{s:?} is not a duration ({e}); write e.g. \"800ms\" or \"5s\""),
                );
                None
            }
        }
    }

    fn commit_mode(&mut self, key: &str, s: &str) -> Option<CommitMode> {
        match s {
            "auto" => Some(CommitMode::Auto),
            "manual" => Some(CommitMode::Manual),
            _ => {
                self.err(key, format!("{s:?} is not a commit mode; use \"auto\" or \"manual\""));
                None
            }
        }
    }

    /// Parses a policy table; values not set (or invalid) come from `base`.
    fn policy_override(&mut self, prefix: &str, p: &raw::Policy) -> PolicyOverride {
        let k = |f: &str| format!("{prefix}.{f}");
        let dur = |v: &mut Self, f: &str, s: &Option<String>| {
            s.as_deref().and_then(|s| v.parse_duration(&k(f), s))
        };
        PolicyOverride {
            down_after: dur(self, "down_after", &p.down_after),
            up_after: dur(self, "up_after", &p.up_after),
            lease_ttl: dur(self, "lease_ttl", &p.lease_ttl),
            max_clock_drift: p.max_clock_drift,
            self_fence_grace: dur(self, "self_fence_grace", &p.self_fence_grace),
            cooldown: dur(self, "cooldown", &p.cooldown),
            auto_failover: p.auto_failover,
            commit: p.commit.as_deref().and_then(|s| self.commit_mode(&k("commit"), s)),
            catch_up_timeout: dur(self, "catch_up_timeout", &p.catch_up_timeout),
            reconcile_every: dur(self, "reconcile_every", &p.reconcile_every),
            repair: p.repair,
        }
    }

    /// The cluster `[policy]`: parsed over the defaults and checked.
    fn policy(&mut self, prefix: &str, p: &raw::Policy, defaults: &Policy) -> Policy {
        let policy = self.policy_override(prefix, p).apply(defaults);
        for (key, reason, _) in policy_rule_violations(&policy) {
            self.err(format!("{prefix}.{key}"), reason);
        }
        policy
    }

    fn services(&mut self, raw: &[raw::Service], cluster: &Policy) -> Vec<Service> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut out = Vec::new();
        if raw.len() > MAX_SERVICES {
            self.err(
                "service",
                format!(
                    "{} services; a cluster protects at most {MAX_SERVICES} (the tested \
                     maximum): split them over several clusters",
                    raw.len()
                ),
            );
        }
        for (i, s) in raw.iter().enumerate() {
            let prefix = format!("service[{i}]");
            if let Err(r) = check_name(&s.name) {
                self.err(format!("{prefix}.name"), r);
            }
            if let Some(j) = seen.insert(&s.name, i) {
                self.err(
                    format!("{prefix}.name"),
                    format!("{:?} is also service[{j}]; service names must be unique", s.name),
                );
            }
            out.push(self.service(&prefix, s, cluster));
        }
        out
    }

    fn service(&mut self, prefix: &str, s: &raw::Service, cluster: &Policy) -> Service {
        self.site_ref(
            &format!("{prefix}.initial_active"),
            &s.initial_active,
            SiteRef::Site,
            "is never active",
        );

        let policy = match &s.policy {
            Some(p) => {
                let pre = format!("{prefix}.policy");
                let over = self.policy_override(&pre, p);
                // Report rules broken by the merged policy only when this service set one of
                // the keys involved; otherwise [policy] already reported them.
                let merged = over.apply(cluster);
                for (key, reason, involved) in policy_rule_violations(&merged) {
                    if involved.iter().any(|k| override_sets(p, k)) {
                        self.err(
                            format!("{pre}.{key}"),
                            format!("{reason} (merged with [policy])"),
                        );
                    }
                }
                over
            }
            None => PolicyOverride::default(),
        };
        let merged = policy.apply(cluster);
        let merged_down_after = merged.down_after;

        if let Some(lag) = s.max_lag_on_failover {
            let key = format!("{prefix}.max_lag_on_failover");
            if !lag.is_finite() || lag < 0.0 {
                self.err(&key, format!("{lag} must be a number >= 0"));
            } else if s.lag.is_none() {
                self.err(&key, "is set but the service has no [service.lag] probe to measure lag; add one or remove this key");
            }
        }

        let checks: Vec<Check> = s
            .check
            .iter()
            .enumerate()
            .filter_map(|(j, c)| self.check(&format!("{prefix}.check[{j}]"), c))
            .collect();
        // A site is down only after at least two failed runs of each of its checks: one
        // slow or lost run (a stalled application, a late observer) is never an outage.
        for (j, c) in checks.iter().enumerate() {
            let least = c.interval * 2;
            if merged_down_after < least {
                self.err(
                    format!("{prefix}.check[{j}].interval"),
                    format!(
                        "{} with down_after {}: a site would be declared down after a single \
                         failed run; down_after must be at least 2 intervals ({}): raise \
                         down_after to {} or shorten the interval",
                        fmt_d(c.interval),
                        fmt_d(merged_down_after),
                        fmt_d(least),
                        fmt_d(least)
                    ),
                );
            }
        }
        let capable: Vec<String> =
            self.sites.iter().filter(|s| !s.witness).map(|s| s.name.clone()).collect();
        for site in &capable {
            if !s.check.iter().any(|c| &c.site == site) {
                self.err(
                    format!("{prefix}.check"),
                    format!(
                        "site {site:?} has no health check; add a [[service.check]] with site = \
                         {site:?} (without one its health is never known)"
                    ),
                );
            }
        }
        let readiness: Vec<Check> = s
            .readiness
            .iter()
            .enumerate()
            .filter_map(|(j, c)| self.check(&format!("{prefix}.readiness[{j}]"), c))
            .collect();
        let lag = s.lag.as_ref().and_then(|l| self.lag(&format!("{prefix}.lag"), l));

        let mut runbooks: BTreeMap<String, BTreeMap<Phase, Vec<Step>>> = BTreeMap::new();
        for (site, phases) in &s.runbook {
            let site_key = format!("{prefix}.runbook.{site}");
            let site_ok = self.site_ref(&site_key, site, SiteRef::Site, "never runs steps");
            for (phase_name, steps) in phases {
                let phase_key = format!("{site_key}.{phase_name}");
                let Some(phase) = Phase::parse(phase_name) else {
                    let all: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
                    self.err(
                        &phase_key,
                        format!("unknown phase {phase_name:?}; phases are {}", all.join(", ")),
                    );
                    continue;
                };
                let steps: Vec<Step> = steps
                    .iter()
                    .enumerate()
                    .filter_map(|(k, st)| self.step(&format!("{phase_key}[{k}]"), st, site, phase))
                    .collect();
                if phase == Phase::OnLeaseLost && site_ok {
                    self.self_fence_budget(&phase_key, &steps, merged.self_fence_grace);
                }
                if site_ok && !steps.is_empty() {
                    runbooks.entry(site.clone()).or_default().insert(phase, steps);
                }
            }
        }

        if merged.auto_failover && capable.contains(&s.initial_active) {
            self.auto_failover_rules(prefix, s, &capable);
        }
        let veto: Vec<VetoHook> = s
            .veto
            .iter()
            .enumerate()
            .filter_map(|(j, h)| self.veto(&format!("{prefix}.veto[{j}]"), h))
            .collect();

        let consistency = self.consistency_checks(prefix, &s.consistency);
        let passive = self.passive_checks(prefix, &s.passive);

        Service {
            name: s.name.clone(),
            initial_active: s.initial_active.clone(),
            policy,
            max_lag_on_failover: s.max_lag_on_failover,
            checks,
            lag,
            readiness,
            runbooks,
            veto,
            consistency,
            passive,
        }
    }

    /// The `name` of a named check: present, a valid name, and not used by an earlier check
    /// of the same list (`seen`).
    fn check_name_of<'a>(
        &mut self,
        prefix: &str,
        table: &str,
        name: Option<&'a String>,
        seen: &mut HashMap<&'a str, usize>,
        index: usize,
    ) -> Option<String> {
        let key = format!("{prefix}.name");
        let Some(name) = name else {
            self.err(
                key,
                format!(
                    "is required; name the check (e.g. name = \"config\") so status, alerts \
                     and metrics can say which [[service.{table}]] it is"
                ),
            );
            return None;
        };
        if let Err(r) = check_name(name) {
            self.err(key, r);
            return None;
        }
        if let Some(j) = seen.insert(name, index) {
            self.err(
                key,
                format!(
                    "{name:?} is also {table}[{j}]; names of a service's {table} checks must be \
                     unique"
                ),
            );
            return None;
        }
        Some(name.clone())
    }

    fn consistency_checks(
        &mut self,
        prefix: &str,
        raw: &[raw::Consistency],
    ) -> Vec<ConsistencyCheck> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for (j, c) in raw.iter().enumerate() {
            let pre = format!("{prefix}.consistency[{j}]");
            let name = self.check_name_of(&pre, "consistency", c.name.as_ref(), &mut seen, j);
            let (interval, timeout) = self.interval_timeout(
                &pre,
                &c.interval,
                &c.timeout,
                DEFAULT_CONSISTENCY_INTERVAL,
                DEFAULT_CONSISTENCY_TIMEOUT,
            );
            let source = match c.kind.as_str() {
                "exec" => {
                    if c.url.is_some() {
                        self.err(
                            format!("{pre}.url"),
                            "is not a key of an \"exec\" consistency check; it takes command",
                        );
                    }
                    let cmd = self.required(&pre, "command", "exec", &c.command);
                    if let Some(cmd) = cmd {
                        self.command(&format!("{pre}.command"), cmd);
                    }
                    cmd.map(|c| FingerprintSource::Exec { command: c.clone() })
                }
                "http" => {
                    if c.command.is_some() {
                        self.err(
                            format!("{pre}.command"),
                            "is not a key of an \"http\" consistency check; it takes url",
                        );
                    }
                    let url = self.required(&pre, "url", "http", &c.url);
                    if let Some(url) = url {
                        self.url(&format!("{pre}.url"), url);
                    }
                    url.map(|u| FingerprintSource::Http { url: u.clone() })
                }
                other => {
                    self.err(
                        format!("{pre}.kind"),
                        format!(
                            "unknown consistency check kind {other:?}; use exec (stdout is the \
                             fingerprint) or http (the body is)"
                        ),
                    );
                    None
                }
            };
            if let (Some(name), Some(source)) = (name, source) {
                out.push(ConsistencyCheck {
                    name,
                    source,
                    interval,
                    timeout,
                    gate: c.gate.unwrap_or(true),
                });
            }
        }
        out
    }

    fn passive_checks(&mut self, prefix: &str, raw: &[raw::Passive]) -> Vec<PassiveCheck> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for (j, p) in raw.iter().enumerate() {
            let pre = format!("{prefix}.passive[{j}]");
            let name = self.check_name_of(&pre, "passive", p.name.as_ref(), &mut seen, j);
            let check = self.check(&pre, &p.check());
            if let (Some(name), Some(check)) = (name, check) {
                out.push(PassiveCheck { name, check, gate: p.gate.unwrap_or(true) });
            }
        }
        out
    }

    fn veto(&mut self, prefix: &str, h: &raw::Veto) -> Option<VetoHook> {
        let timeout_key = format!("{prefix}.timeout");
        let timeout = self.duration(&timeout_key, &h.timeout, DEFAULT_VETO_TIMEOUT);
        if let Some(t) = timeout.filter(|t| t.is_zero() || *t > MAX_VETO_TIMEOUT) {
            self.err(
                &timeout_key,
                format!(
                    "{} is outside (0, {}]; the failover waits for the hook, and a hook that runs \
                     out of time vetoes it",
                    fmt_d(t),
                    fmt_d(MAX_VETO_TIMEOUT)
                ),
            );
        }
        let env = self.env(prefix, &h.env);
        let Some(command) = &h.command else {
            self.err(
                format!("{prefix}.command"),
                "is required; write [\"program\", \"arg\", ...] (exit 0 lets the failover go \
                 ahead, anything else vetoes it)",
            );
            return None;
        };
        self.command(&format!("{prefix}.command"), command);
        Some(VetoHook {
            command: command.clone(),
            timeout: timeout.unwrap_or(DEFAULT_VETO_TIMEOUT),
            env,
        })
    }

    /// With automatic failover, the initially active site must be fenceable and every other
    /// site must be able to take over.
    fn auto_failover_rules(&mut self, prefix: &str, s: &raw::Service, capable: &[String]) {
        let has = |site: &str, phase: &str| {
            s.runbook.get(site).and_then(|p| p.get(phase)).is_some_and(|steps| !steps.is_empty())
        };
        let active = &s.initial_active;
        if !has(active, "fence") && !has(active, "on_lease_lost") {
            self.err(
                format!("{prefix}.runbook.{active}"),
                format!(
                    "auto_failover is on but site {active:?} has neither a fence nor an \
                     on_lease_lost runbook; without fencing no automatic failover away from it \
                     is safe (both sites could serve): add one, or set auto_failover = false in \
                     the service's [service.policy]"
                ),
            );
        }
        for site in capable.iter().filter(|c| *c != active) {
            if !has(site, "activate") {
                self.err(
                    format!("{prefix}.runbook.{site}.activate"),
                    format!(
                        "auto_failover is on but site {site:?} has no activate runbook, so \
                         nothing would start the service there; add one, or set \
                         auto_failover = false in the service's [service.policy]"
                    ),
                );
            }
        }
    }

    /// `on_lease_lost` must finish within `self_fence_grace`: the safe period before another
    /// site is activated assumes it has.
    fn self_fence_budget(&mut self, key: &str, steps: &[Step], grace: Duration) {
        let total: Duration = steps.iter().map(Step::worst_case).sum();
        if total > grace {
            self.err(
                key,
                format!(
                    "may take up to {} (timeouts × attempts + backoff) but self_fence_grace is \
                     {}; another site may be activated once the grace is over, so shorten the \
                     steps or raise self_fence_grace",
                    humantime::format_duration(total),
                    humantime::format_duration(grace)
                ),
            );
        }
    }

    fn foreign_keys(&mut self, prefix: &str, kind: &str, present: &[&str], allowed: &[&str]) {
        for key in present.iter().filter(|k| !allowed.contains(k)) {
            let takes = if allowed.is_empty() {
                "no kind-specific keys".to_string()
            } else {
                allowed.join(", ")
            };
            self.err(
                format!("{prefix}.{key}"),
                format!("is not a key of a {kind:?} {}; it takes {takes}", noun(prefix)),
            );
        }
    }

    fn required<'a, T>(
        &mut self,
        prefix: &str,
        key: &str,
        kind: &str,
        v: &'a Option<T>,
    ) -> Option<&'a T> {
        if v.is_none() {
            self.err(format!("{prefix}.{key}"), format!("is required for kind {kind:?}"));
        }
        v.as_ref()
    }

    /// Checks `interval` (default `di`) and `timeout` (default: `dt`, at most 80% of the
    /// interval) of a periodic probe.
    fn interval_timeout(
        &mut self,
        prefix: &str,
        interval: &Option<String>,
        timeout: &Option<String>,
        di: Duration,
        dt: Duration,
    ) -> (Duration, Duration) {
        let ik = format!("{prefix}.interval");
        let tk = format!("{prefix}.timeout");
        let iv = self.duration(&ik, interval, di);
        if let Some(i) = iv {
            if !(MIN_INTERVAL..=MAX_TIMEOUT).contains(&i) {
                self.err(&ik, format!("{} is outside 100ms..=1h", fmt_d(i)));
            }
        }
        let i = iv.unwrap_or(di);
        let to = match timeout {
            None => Some(dt.min(i * 4 / 5)),
            Some(s) => self.parse_duration(&tk, s),
        };
        if let Some(t) = to {
            if t.is_zero() {
                self.err(&tk, "must be greater than 0");
            } else if iv.is_some() && t >= i {
                self.err(
                    &tk,
                    format!(
                        "{} is not shorter than the interval {}; a run must end before the next \
                         starts",
                        fmt_d(t),
                        fmt_d(i)
                    ),
                );
            }
        }
        (i, to.unwrap_or(dt))
    }

    fn check(&mut self, prefix: &str, c: &raw::Check) -> Option<Check> {
        self.site_ref(&format!("{prefix}.site"), &c.site, SiteRef::Site, "has no health checks");
        let (interval, timeout) = self.interval_timeout(
            prefix,
            &c.interval,
            &c.timeout,
            DEFAULT_CHECK_INTERVAL,
            DEFAULT_CHECK_TIMEOUT,
        );
        let present = c.present();
        let probe = match c.kind.as_str() {
            "http" => {
                self.foreign_keys(
                    prefix,
                    "http",
                    &present,
                    &["url", "expect_status", "body_contains"],
                );
                let url = self.required(prefix, "url", "http", &c.url);
                if let Some(url) = url {
                    self.url(&format!("{prefix}.url"), url);
                }
                let status = self.status(&format!("{prefix}.expect_status"), c.expect_status);
                url.map(|url| CheckProbe::Http {
                    url: url.clone(),
                    expect_status: status,
                    body_contains: c.body_contains.clone(),
                })
            }
            "tcp" => {
                self.foreign_keys(prefix, "tcp", &present, &["address"]);
                let addr = self.required(prefix, "address", "tcp", &c.address);
                if let Some(a) = addr {
                    if let Err(r) = check_host_port(a) {
                        self.err(format!("{prefix}.address"), r);
                    }
                }
                addr.map(|a| CheckProbe::Tcp { address: a.clone() })
            }
            "exec" => {
                self.foreign_keys(prefix, "exec", &present, &["command"]);
                let cmd = self.required(prefix, "command", "exec", &c.command);
                if let Some(cmd) = cmd {
                    self.command(&format!("{prefix}.command"), cmd);
                }
                cmd.map(|cmd| CheckProbe::Exec { command: cmd.clone() })
            }
            other => {
                self.err(
                    format!("{prefix}.kind"),
                    format!("unknown check kind {other:?}; use http, tcp or exec"),
                );
                None
            }
        }?;
        Some(Check { site: c.site.clone(), probe, interval, timeout })
    }

    fn lag(&mut self, prefix: &str, l: &raw::Lag) -> Option<LagProbe> {
        let run_on = match &l.run_on {
            Some(r) => {
                self.site_ref(
                    &format!("{prefix}.run_on"),
                    r,
                    SiteRef::SiteOrAny,
                    "never runs probes",
                );
                RunOn::from(r.clone())
            }
            None if l.kind == "exec" => {
                self.err(
                    format!("{prefix}.run_on"),
                    "is required for kind \"exec\"; name the site whose node runs the command \
                     (usually the standby)",
                );
                RunOn::Any
            }
            None => RunOn::Any,
        };
        let (interval, timeout) = self.interval_timeout(
            prefix,
            &l.interval,
            &l.timeout,
            DEFAULT_LAG_INTERVAL,
            DEFAULT_LAG_TIMEOUT,
        );
        let source = match l.kind.as_str() {
            "exec" => {
                if l.url.is_some() {
                    self.err(
                        format!("{prefix}.url"),
                        "is not a key of an \"exec\" lag probe; it takes command",
                    );
                }
                let cmd = self.required(prefix, "command", "exec", &l.command);
                if let Some(cmd) = cmd {
                    self.command(&format!("{prefix}.command"), cmd);
                }
                cmd.map(|c| LagSource::Exec { command: c.clone() })
            }
            "http" => {
                if l.command.is_some() {
                    self.err(
                        format!("{prefix}.command"),
                        "is not a key of an \"http\" lag probe; it takes url",
                    );
                }
                let url = self.required(prefix, "url", "http", &l.url);
                if let Some(url) = url {
                    self.url(&format!("{prefix}.url"), url);
                }
                url.map(|u| LagSource::Http { url: u.clone() })
            }
            other => {
                self.err(
                    format!("{prefix}.kind"),
                    format!("unknown lag probe kind {other:?}; use exec or http"),
                );
                None
            }
        }?;
        Some(LagProbe { run_on, source, interval, timeout })
    }

    fn url(&mut self, key: &str, url: &str) {
        let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
        match rest {
            Some(r)
                if !r.is_empty() && !r.starts_with('/') && !url.contains(char::is_whitespace) => {}
            _ => self.err(key, format!("{url:?} is not an http:// or https:// URL")),
        }
    }

    fn status(&mut self, key: &str, v: Option<i64>) -> u16 {
        match v {
            None => 200,
            Some(s) if (100..=599).contains(&s) => s as u16,
            Some(s) => {
                self.err(key, format!("{s} is not an HTTP status (100..=599)"));
                200
            }
        }
    }

    fn command(&mut self, key: &str, cmd: &[String]) {
        match cmd.first() {
            None => self.err(key, "must not be empty; write [\"program\", \"arg\", ...]"),
            Some(p) if p.trim().is_empty() => {
                self.err(format!("{key}[0]"), "the program must not be empty")
            }
            Some(_) => {}
        }
    }

    fn step(&mut self, prefix: &str, st: &raw::Step, site: &str, phase: Phase) -> Option<Step> {
        let kind = st.kind.as_str();
        let default_timeout = match kind {
            "exec" | "fence_agent" | "probe" => Duration::from_secs(60),
            "http" => Duration::from_secs(30),
            "dns" | "haproxy" => Duration::from_secs(10),
            _ => Duration::from_secs(60),
        };

        let run_on_key = format!("{prefix}.run_on");
        let run_on = match &st.run_on {
            Some(r) => {
                self.site_ref(&run_on_key, r, SiteRef::SiteOrAny, "never runs steps");
                RunOn::from(r.clone())
            }
            None if kind == "exec" => {
                self.err(
                    &run_on_key,
                    "is required for kind \"exec\"; name the site whose node runs the command, \
                     or \"any\"",
                );
                RunOn::Any
            }
            None => RunOn::Any,
        };
        if phase == Phase::OnLeaseLost {
            if matches!(&run_on, RunOn::Site(s) if s != site) {
                self.err(
                    &run_on_key,
                    format!(
                        "on_lease_lost runs on the nodes of site {site:?} themselves (they may \
                         be cut off from everyone else); run_on must be {site:?} or omitted"
                    ),
                );
            }
            if kind == "probe" {
                self.err(
                    format!("{prefix}.kind"),
                    "a probe needs a quorum of observers, which a node that lost its lease \
                     cannot reach; use exec, http, haproxy or fence_agent steps",
                );
            }
        }

        let timeout_key = format!("{prefix}.timeout");
        let timeout = match &st.timeout {
            Some(s) => self.parse_duration(&timeout_key, s).inspect(|&t| {
                if t.is_zero() || t > MAX_TIMEOUT {
                    self.err(&timeout_key, format!("{} is outside (0, 1h]", fmt_d(t)));
                }
            }),
            None => None,
        };
        let retries = match st.retries {
            None => 0,
            Some(r) if (0..=i64::from(MAX_RETRIES)).contains(&r) => r as u32,
            Some(r) => {
                self.err(format!("{prefix}.retries"), format!("{r} is outside 0..={MAX_RETRIES}"));
                0
            }
        };
        let backoff_key = format!("{prefix}.backoff");
        let backoff =
            self.duration(&backoff_key, &st.backoff, DEFAULT_BACKOFF).unwrap_or(DEFAULT_BACKOFF);
        if backoff > MAX_TIMEOUT {
            self.err(&backoff_key, format!("{} is longer than 1h", fmt_d(backoff)));
        }
        let on_failure = match st.on_failure.as_deref() {
            None | Some("abort") => OnFailure::Abort,
            Some("continue") => OnFailure::Continue,
            Some("pause") => OnFailure::Pause,
            Some(other) => {
                self.err(
                    format!("{prefix}.on_failure"),
                    format!("{other:?} is not one of abort, continue, pause"),
                );
                OnFailure::Abort
            }
        };

        let present = st.present();
        let action = match kind {
            "exec" => self.exec_step(prefix, st, &present),
            "http" => self.http_step(prefix, st, &present),
            "wait" => self.wait_step(prefix, st, &present),
            "probe" => self.probe_step(prefix, st, &present),
            "fence_agent" => self.fence_step(prefix, st, &present),
            "dns" => self.dns_step(prefix, st, &present),
            "haproxy" => self.haproxy_step(prefix, st, &present),
            other => {
                self.err(
                    format!("{prefix}.kind"),
                    format!("unknown step kind {other:?}; use one of {}", STEP_KINDS.join(", ")),
                );
                None
            }
        }?;
        let timeout = match (&action, timeout) {
            (StepAction::Wait(w), Some(t)) if t < w.duration => {
                self.err(
                    &timeout_key,
                    format!("{} is shorter than the wait duration {}", fmt_d(t), fmt_d(w.duration)),
                );
                t
            }
            (StepAction::Wait(w), None) => w.duration + Duration::from_secs(5),
            (_, t) => t.unwrap_or(default_timeout),
        };
        Some(Step { run_on, timeout, retries, backoff, on_failure, action })
    }

    fn exec_step(&mut self, prefix: &str, st: &raw::Step, present: &[&str]) -> Option<StepAction> {
        self.foreign_keys(prefix, "exec", present, &["command", "env"]);
        let cmd = self.required(prefix, "command", "exec", &st.command)?;
        self.command(&format!("{prefix}.command"), cmd);
        let env = self.env(prefix, &st.env);
        Some(StepAction::Exec(ExecStep { command: cmd.clone(), env }))
    }

    /// The `env` table of an exec step or veto hook, its variable names checked.
    fn env(
        &mut self,
        prefix: &str,
        env: &Option<BTreeMap<String, String>>,
    ) -> BTreeMap<String, String> {
        let env = env.clone().unwrap_or_default();
        for name in env.keys() {
            let key = format!("{prefix}.env.{name}");
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.err(
                    &key,
                    format!(
                        "{name:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
                    ),
                );
            } else if name.starts_with("DROVER_") {
                self.err(&key, "DROVER_* variables are set by drover itself; pick another name");
            }
        }
        env
    }

    fn http_step(&mut self, prefix: &str, st: &raw::Step, present: &[&str]) -> Option<StepAction> {
        self.foreign_keys(
            prefix,
            "http",
            present,
            &["url", "method", "expect_status", "body", "headers"],
        );
        let url = self.required(prefix, "url", "http", &st.url)?;
        self.url(&format!("{prefix}.url"), url);
        let method = st.method.clone().unwrap_or_else(|| "POST".to_string());
        if !HTTP_METHODS.contains(&method.as_str()) {
            self.err(
                format!("{prefix}.method"),
                format!("{method:?} is not one of {}", HTTP_METHODS.join(", ")),
            );
        }
        let expect_status = self.status(&format!("{prefix}.expect_status"), st.expect_status);
        let headers = st.headers.clone().unwrap_or_default();
        for (name, value) in &headers {
            let token = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
            if !token {
                self.err(
                    format!("{prefix}.headers.{name}"),
                    format!("{name:?} is not an HTTP header name"),
                );
            } else if value.contains(['\r', '\n']) {
                self.err(
                    format!("{prefix}.headers.{name}"),
                    "the value must not contain line breaks",
                );
            }
        }
        Some(StepAction::Http(HttpStep {
            url: url.clone(),
            method,
            expect_status,
            body: st.body.clone(),
            headers,
        }))
    }

    fn wait_step(&mut self, prefix: &str, st: &raw::Step, present: &[&str]) -> Option<StepAction> {
        self.foreign_keys(prefix, "wait", present, &["duration"]);
        let s = self.required(prefix, "duration", "wait", &st.duration)?;
        let key = format!("{prefix}.duration");
        let d = self.parse_duration(&key, s)?;
        if d.is_zero() || d > MAX_TIMEOUT {
            self.err(&key, format!("{} is outside (0, 1h]", fmt_d(d)));
        }
        Some(StepAction::Wait(WaitStep { duration: d }))
    }

    fn probe_step(&mut self, prefix: &str, st: &raw::Step, present: &[&str]) -> Option<StepAction> {
        self.foreign_keys(prefix, "probe", present, &["checks"]);
        let site = self.required(prefix, "checks", "probe", &st.checks)?;
        self.site_ref(&format!("{prefix}.checks"), site, SiteRef::Site, "has no health checks");
        Some(StepAction::Probe(ProbeStep { checks: site.clone() }))
    }

    fn fence_step(&mut self, prefix: &str, st: &raw::Step, present: &[&str]) -> Option<StepAction> {
        self.foreign_keys(prefix, "fence_agent", present, &["agent", "action", "params"]);
        let agent = self.required(prefix, "agent", "fence_agent", &st.agent)?;
        let valid = agent.strip_prefix("fence_").is_some_and(|rest| {
            !rest.is_empty()
                && rest.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        });
        if !valid {
            self.err(
                format!("{prefix}.agent"),
                format!("{agent:?} is not a fence agent name (fence_[a-z0-9_]+, e.g. \"fence_ipmilan\")"),
            );
        }
        let action = match st.action.as_deref() {
            None | Some("off") => FenceAction::Off,
            Some("on") => FenceAction::On,
            Some("reboot") => FenceAction::Reboot,
            Some("status") => FenceAction::Status,
            Some(other) => {
                self.err(
                    format!("{prefix}.action"),
                    format!("{other:?} is not one of off, on, reboot, status"),
                );
                FenceAction::Off
            }
        };
        let params = st.params.clone().unwrap_or_default();
        for (name, value) in &params {
            let key = format!("{prefix}.params.{name}");
            if name.is_empty()
                || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                self.err(
                    &key,
                    format!("{name:?} is not a fence agent parameter name ([a-z0-9_]+)"),
                );
            }
            if name == "action" {
                self.err(&key, "set the agent's action with the step's action key");
            }
            if value.contains(['\r', '\n']) {
                self.err(
                    &key,
                    "the value must not contain line breaks (agents read key=value lines)",
                );
            }
            if name.ends_with("_file") && !value.starts_with('/') {
                self.err(&key, format!("{value:?} is not an absolute path; *_file parameters name the file holding the secret"));
            }
        }
        Some(StepAction::FenceAgent(FenceAgentStep { agent: agent.clone(), action, params }))
    }

    fn dns_step(&mut self, prefix: &str, st: &raw::Step, present: &[&str]) -> Option<StepAction> {
        self.foreign_keys(
            prefix,
            "dns",
            present,
            &["server", "zone", "tsig", "records", "protocol", "verify_servers"],
        );
        let server = self.required(prefix, "server", "dns", &st.server);
        if let Some(s) = server {
            if let Err(r) = check_host_port(s) {
                self.err(format!("{prefix}.server"), r);
            }
        }
        let zone = self.required(prefix, "zone", "dns", &st.zone);
        if let Some(z) = zone {
            if let Err(r) = check_dns_name(z) {
                self.err(format!("{prefix}.zone"), r);
            }
        }
        let tsig = st.tsig.as_ref().map(|t| {
            if t.name.trim().is_empty() {
                self.err(format!("{prefix}.tsig.name"), "must not be empty");
            }
            if !super::TSIG_ALGORITHMS.contains(&t.algorithm.as_str()) {
                self.err(
                    format!("{prefix}.tsig.algorithm"),
                    format!(
                        "{:?} is not one of {}",
                        t.algorithm,
                        super::TSIG_ALGORITHMS.join(", ")
                    ),
                );
            }
            if !t.secret_file.starts_with('/') {
                self.err(
                    format!("{prefix}.tsig.secret_file"),
                    format!("{:?} is not an absolute path", t.secret_file),
                );
            }
            Tsig {
                name: t.name.clone(),
                algorithm: t.algorithm.clone(),
                secret_file: t.secret_file.clone(),
            }
        });
        let protocol = match st.protocol.as_deref() {
            None | Some("tcp") => DnsProtocol::Tcp,
            Some("udp") => DnsProtocol::Udp,
            Some(other) => {
                self.err(format!("{prefix}.protocol"), format!("{other:?} is not tcp or udp"));
                DnsProtocol::Tcp
            }
        };
        let raw_records = self.required(prefix, "records", "dns", &st.records);
        if raw_records.is_some_and(|r| r.is_empty()) {
            self.err(format!("{prefix}.records"), "must list at least one record");
        }
        let mut records = Vec::new();
        for (i, r) in raw_records.into_iter().flatten().enumerate() {
            if let Some(rec) =
                self.dns_record(&format!("{prefix}.records[{i}]"), r, zone.map(String::as_str))
            {
                records.push(rec);
            }
        }
        let verify_servers = st.verify_servers.clone().unwrap_or_default();
        if verify_servers.len() > super::MAX_DNS_VERIFY_SERVERS {
            self.err(
                format!("{prefix}.verify_servers"),
                format!(
                    "lists {} servers; at most {} are checked",
                    verify_servers.len(),
                    super::MAX_DNS_VERIFY_SERVERS
                ),
            );
        }
        for (i, s) in verify_servers.iter().enumerate() {
            if let Err(r) = check_host_port(s) {
                self.err(format!("{prefix}.verify_servers[{i}]"), r);
            }
            if Some(s) == server {
                self.err(
                    format!("{prefix}.verify_servers[{i}]"),
                    format!("{s} is the step's server, which is always checked; list only the zone's other servers"),
                );
            }
        }
        Some(StepAction::Dns(DnsStep {
            server: server?.clone(),
            zone: zone?.clone(),
            tsig,
            records,
            protocol,
            verify_servers,
        }))
    }

    fn dns_record(
        &mut self,
        prefix: &str,
        r: &raw::Record,
        zone: Option<&str>,
    ) -> Option<DnsRecord> {
        let name_ok = match check_dns_name(&r.name) {
            Err(reason) => {
                self.err(format!("{prefix}.name"), reason);
                false
            }
            Ok(()) => true,
        };
        if let (true, Some(zone)) = (name_ok, zone.filter(|z| check_dns_name(z).is_ok())) {
            let inside = r.name.eq_ignore_ascii_case(zone)
                || (r.name.len() > zone.len()
                    && r.name[r.name.len() - zone.len() - 1..]
                        .eq_ignore_ascii_case(&format!(".{zone}")));
            if !inside {
                self.err(
                    format!("{prefix}.name"),
                    format!("{:?} is not inside zone {zone:?}", r.name),
                );
            }
        }
        let rtype = match r.rtype.as_str() {
            "A" => Some(DnsRecordType::A),
            "AAAA" => Some(DnsRecordType::AAAA),
            "CNAME" => Some(DnsRecordType::CNAME),
            other => {
                self.err(
                    format!("{prefix}.type"),
                    format!("{other:?} is not one of A, AAAA, CNAME"),
                );
                None
            }
        };
        let value_key = format!("{prefix}.value");
        match rtype {
            Some(DnsRecordType::A) if r.value.parse::<Ipv4Addr>().is_err() => {
                self.err(&value_key, format!("{:?} is not an IPv4 address", r.value));
            }
            Some(DnsRecordType::AAAA) if r.value.parse::<Ipv6Addr>().is_err() => {
                self.err(&value_key, format!("{:?} is not an IPv6 address", r.value));
            }
            Some(DnsRecordType::CNAME) => {
                if let Err(reason) = check_dns_name(&r.value) {
                    self.err(&value_key, reason);
                }
            }
            _ => {}
        }
        let ttl_secs = match r.ttl {
            None => DEFAULT_DNS_TTL_SECS,
            Some(t) if (0..=i64::from(MAX_DNS_TTL_SECS)).contains(&t) => t as u32,
            Some(t) => {
                self.err(
                    format!("{prefix}.ttl"),
                    format!("{t} is outside 0..={MAX_DNS_TTL_SECS} seconds"),
                );
                DEFAULT_DNS_TTL_SECS
            }
        };
        Some(DnsRecord { name: r.name.clone(), rtype: rtype?, ttl_secs, value: r.value.clone() })
    }

    fn haproxy_step(
        &mut self,
        prefix: &str,
        st: &raw::Step,
        present: &[&str],
    ) -> Option<StepAction> {
        self.foreign_keys(prefix, "haproxy", present, &["socket", "set"]);
        let socket = self.required(prefix, "socket", "haproxy", &st.socket);
        if let Some(s) = socket {
            if !s.starts_with('/') && check_host_port(s).is_err() {
                self.err(
                    format!("{prefix}.socket"),
                    format!("{s:?} is neither an absolute socket path nor host:port"),
                );
            }
        }
        let raw_set = self.required(prefix, "set", "haproxy", &st.set);
        if raw_set.is_some_and(|s| s.is_empty()) {
            self.err(format!("{prefix}.set"), "must list at least one server change");
        }
        let mut set = Vec::new();
        for (i, h) in raw_set.into_iter().flatten().enumerate() {
            let key = format!("{prefix}.set[{i}]");
            let ok = h.server.split_once('/').is_some_and(|(b, s)| {
                !b.is_empty()
                    && !s.is_empty()
                    && !s.contains('/')
                    && !h.server.contains(char::is_whitespace)
            });
            if !ok {
                self.err(
                    format!("{key}.server"),
                    format!("{:?} is not \"backend/server\"", h.server),
                );
            }
            let state = match h.state.as_str() {
                "ready" => Some(HaproxyState::Ready),
                "drain" => Some(HaproxyState::Drain),
                "maint" => Some(HaproxyState::Maint),
                other => {
                    self.err(
                        format!("{key}.state"),
                        format!("{other:?} is not one of ready, drain, maint"),
                    );
                    None
                }
            };
            let weight = match h.weight {
                None => None,
                Some(w) if (0..=256).contains(&w) => Some(w as u16),
                Some(w) => {
                    self.err(format!("{key}.weight"), format!("{w} is outside 0..=256"));
                    None
                }
            };
            if let Some(state) = state {
                set.push(HaproxySet { server: h.server.clone(), state, weight });
            }
        }
        Some(StepAction::Haproxy(HaproxyStep { socket: socket?.clone(), set }))
    }
}

/// "check" or "step", for messages, from a key path.
fn noun(prefix: &str) -> &'static str {
    if prefix.contains(".runbook.") {
        "step"
    } else {
        "check"
    }
}

/// Whether a raw policy table sets `key`.
fn override_sets(p: &raw::Policy, key: &str) -> bool {
    match key {
        "down_after" => p.down_after.is_some(),
        "up_after" => p.up_after.is_some(),
        "lease_ttl" => p.lease_ttl.is_some(),
        "max_clock_drift" => p.max_clock_drift.is_some(),
        "self_fence_grace" => p.self_fence_grace.is_some(),
        "cooldown" => p.cooldown.is_some(),
        "catch_up_timeout" => p.catch_up_timeout.is_some(),
        "reconcile_every" => p.reconcile_every.is_some(),
        _ => false,
    }
}

/// The policy rules `p` breaks: (key, reason, keys involved).
fn policy_rule_violations(p: &Policy) -> Vec<(&'static str, String, &'static [&'static str])> {
    let mut v = Vec::new();
    if p.lease_ttl < Duration::from_millis(100) {
        v.push((
            "lease_ttl",
            format!("{} is shorter than 100ms; renewals could not keep up", fmt_d(p.lease_ttl)),
            &["lease_ttl"][..],
        ));
    }
    if !(p.max_clock_drift.is_finite() && (0.0..MAX_CLOCK_DRIFT_LIMIT).contains(&p.max_clock_drift))
    {
        v.push((
            "max_clock_drift",
            format!(
                "{} is outside [0, {MAX_CLOCK_DRIFT_LIMIT}); it is a rate (0.01 = 1%)",
                p.max_clock_drift
            ),
            &["max_clock_drift"][..],
        ));
    }
    if p.down_after.is_zero() {
        v.push(("down_after", "must be greater than 0".to_string(), &["down_after"][..]));
    }
    if p.up_after < p.down_after {
        v.push((
            "up_after",
            format!(
                "{} is shorter than down_after {}; a site must look healthy at least as long as \
                 it took to declare it down (hysteresis)",
                fmt_d(p.up_after),
                fmt_d(p.down_after)
            ),
            &["up_after", "down_after"][..],
        ));
    }
    if p.catch_up_timeout.is_zero() || p.catch_up_timeout > crate::spec::MAX_CATCH_UP_TIMEOUT {
        v.push((
            "catch_up_timeout",
            format!("{} is outside (0s, 24h]", fmt_d(p.catch_up_timeout)),
            &["catch_up_timeout"][..],
        ));
    }
    if p.reconcile_every < crate::spec::MIN_RECONCILE_EVERY
        || p.reconcile_every > crate::spec::MAX_RECONCILE_EVERY
    {
        v.push((
            "reconcile_every",
            format!(
                "{} is outside [1s, 24h]; it is how often the traffic steps of a committed \
                 failover are read back for drift",
                fmt_d(p.reconcile_every)
            ),
            &["reconcile_every"][..],
        ));
    }
    if p.self_fence_grace.is_zero() {
        v.push((
            "self_fence_grace",
            "must be greater than 0".to_string(),
            &["self_fence_grace"][..],
        ));
    }
    let lease = crate::decide::LeaseParams {
        lease_ttl: p.lease_ttl,
        max_clock_drift: p.max_clock_drift,
        self_fence_grace: p.self_fence_grace,
    };
    if v.is_empty() {
        if let Err(e) = lease.validate() {
            v.push((
                "lease_ttl",
                format!("the lease timing cannot be used: {e}"),
                &["lease_ttl", "self_fence_grace", "max_clock_drift"][..],
            ));
        }
    }
    for (key, d, involved) in [
        ("down_after", p.down_after, &["down_after"][..]),
        ("up_after", p.up_after, &["up_after"][..]),
        ("lease_ttl", p.lease_ttl, &["lease_ttl"][..]),
        ("self_fence_grace", p.self_fence_grace, &["self_fence_grace"][..]),
    ] {
        if d > MAX_TIMEOUT {
            v.push((key, format!("{} is longer than 1h", fmt_d(d)), involved));
        }
    }
    v
}

/// The rules that relate a spec's lease to the Raft timings of the cluster's members
/// (node.toml `[raft]`), which the spec alone does not know: checked by the leader at
/// `config apply` against its own timings (members are expected to share them).
///
/// `lease_ttl` must be at least [`ElectionTimings::min_lease_ttl`]: a holder's last confirmed
/// renewal may have been sent just before the leader died, and its lease must outlast the
/// election of the next leader and one renewal through it (DESIGN.md 6, "the lease must
/// outlast anything the control plane does to itself"). Returns one error per policy that
/// breaks it, with the key path and the smallest safe value.
pub fn check_against_raft_timings(
    spec: &ClusterSpec,
    timings: &crate::decide::ElectionTimings,
) -> Vec<SpecError> {
    let floor = timings.min_lease_ttl();
    let why = |ttl: Duration| {
        format!(
            "{} is shorter than the {} a leader change can take with this cluster's Raft \
             timings (heartbeat {}, election timeout {}..{}) plus one lease renewal; the active \
             site would stop serving whenever the leader restarts. Use at least {} (or shorten \
             [raft] election_timeout in every node.toml)",
            fmt_d(ttl),
            fmt_d(timings.max_leader_change()),
            fmt_d(timings.heartbeat),
            fmt_d(timings.election_min),
            fmt_d(timings.election_max),
            fmt_d(floor),
        )
    };
    let mut errors = Vec::new();
    if spec.policy.lease_ttl < floor {
        errors.push(SpecError {
            key: "policy.lease_ttl".into(),
            line_col: None,
            reason: why(spec.policy.lease_ttl),
        });
    }
    for (i, svc) in spec.services.iter().enumerate() {
        if let Some(ttl) = svc.policy.lease_ttl.filter(|t| *t < floor) {
            errors.push(SpecError {
                key: format!("service[{i}].policy.lease_ttl"),
                line_col: None,
                reason: format!("(service {}) {}", svc.name, why(ttl)),
            });
        }
    }
    errors
}

/// Checks a `host:port` address (`[v6]:port` for IPv6 literals).
fn check_host_port(s: &str) -> Result<(), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} is not host:port"));
    };
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return Err(format!("{s:?} has port {port:?}; the port must be a number from 1 to 65535"));
    }
    if host.is_empty() {
        return Err(format!("{s:?} has no host before the port"));
    }
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
            Some(Ok(_)) => Ok(()),
            _ => Err(format!("{s:?} has an invalid bracketed IPv6 host {host:?}")),
        };
    }
    if host.contains(':') {
        return Err(format!(
            "{s:?} looks like an IPv6 address without brackets; write [addr]:port"
        ));
    }
    if let Some(c) =
        host.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(format!("{s:?} has {c:?} in its host name"));
    }
    Ok(())
}

/// Checks an absolute DNS name (`st.example.`).
fn check_dns_name(s: &str) -> Result<(), String> {
    let Some(body) = s.strip_suffix('.') else {
        return Err(format!("{s:?} is not an absolute name; end it with '.' (e.g. \"example.\")"));
    };
    if body.is_empty() || s.len() > 254 {
        return Err(format!("{s:?} is not a valid DNS name"));
    }
    for label in body.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Err(format!("{s:?} has an invalid label {label:?}"));
        }
    }
    Ok(())
}

fn fmt_d(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}
