//! The shape of `cluster.toml` exactly as users write it: every key optional where a default or
//! a per-kind rule applies, durations and enum-like values as strings, so that validation can
//! report every bad value with its key path instead of stopping at the first one. Unknown keys
//! are refused here (`deny_unknown_fields`); keys that exist but do not belong to a step's or
//! check's `kind` are refused by validation.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    #[serde(default)]
    pub site: Vec<Site>,
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub service: Vec<Service>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Site {
    pub name: String,
    #[serde(default)]
    pub witness: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Policy {
    pub down_after: Option<String>,
    pub up_after: Option<String>,
    pub lease_ttl: Option<String>,
    pub max_clock_drift: Option<f64>,
    pub self_fence_grace: Option<String>,
    pub cooldown: Option<String>,
    pub auto_failover: Option<bool>,
    pub commit: Option<String>,
    pub catch_up_timeout: Option<String>,
    pub reconcile_every: Option<String>,
    pub repair: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Service {
    pub name: String,
    pub initial_active: String,
    pub policy: Option<Policy>,
    pub max_lag_on_failover: Option<f64>,
    #[serde(default)]
    pub check: Vec<Check>,
    pub lag: Option<Lag>,
    #[serde(default)]
    pub readiness: Vec<Check>,
    /// site -> phase -> steps
    #[serde(default)]
    pub runbook: BTreeMap<String, BTreeMap<String, Vec<Step>>>,
    #[serde(default)]
    pub veto: Vec<Veto>,
    #[serde(default)]
    pub consistency: Vec<Consistency>,
    #[serde(default)]
    pub passive: Vec<Passive>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Consistency {
    pub name: Option<String>,
    pub kind: String,
    pub command: Option<Vec<String>>,
    pub url: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub gate: Option<bool>,
}

/// A passive check: a [`Check`] with a name and a gate switch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Passive {
    pub name: Option<String>,
    pub gate: Option<bool>,
    pub site: String,
    pub kind: String,
    pub url: Option<String>,
    pub expect_status: Option<i64>,
    pub body_contains: Option<String>,
    pub address: Option<String>,
    pub command: Option<Vec<String>>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
}

impl Passive {
    /// The check part, validated like any health check.
    pub fn check(&self) -> Check {
        Check {
            site: self.site.clone(),
            kind: self.kind.clone(),
            url: self.url.clone(),
            expect_status: self.expect_status,
            body_contains: self.body_contains.clone(),
            address: self.address.clone(),
            command: self.command.clone(),
            interval: self.interval.clone(),
            timeout: self.timeout.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Veto {
    pub command: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Check {
    pub site: String,
    pub kind: String,
    pub url: Option<String>,
    pub expect_status: Option<i64>,
    pub body_contains: Option<String>,
    pub address: Option<String>,
    pub command: Option<Vec<String>>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
}

impl Check {
    /// Kind-specific keys that are present.
    pub fn present(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        push_if(&mut v, "url", self.url.is_some());
        push_if(&mut v, "expect_status", self.expect_status.is_some());
        push_if(&mut v, "body_contains", self.body_contains.is_some());
        push_if(&mut v, "address", self.address.is_some());
        push_if(&mut v, "command", self.command.is_some());
        v
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Lag {
    pub kind: String,
    pub run_on: Option<String>,
    pub command: Option<Vec<String>>,
    pub url: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Step {
    pub kind: String,
    pub run_on: Option<String>,
    pub timeout: Option<String>,
    pub retries: Option<i64>,
    pub backoff: Option<String>,
    pub on_failure: Option<String>,
    // exec
    pub command: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    // http
    pub url: Option<String>,
    pub method: Option<String>,
    pub expect_status: Option<i64>,
    pub body: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    // wait
    pub duration: Option<String>,
    // probe
    pub checks: Option<String>,
    // fence_agent
    pub agent: Option<String>,
    pub action: Option<String>,
    pub params: Option<BTreeMap<String, String>>,
    // dns
    pub server: Option<String>,
    pub zone: Option<String>,
    pub tsig: Option<Tsig>,
    pub records: Option<Vec<Record>>,
    pub protocol: Option<String>,
    pub verify_servers: Option<Vec<String>>,
    // haproxy
    pub socket: Option<String>,
    pub set: Option<Vec<HaproxySet>>,
}

impl Step {
    /// Kind-specific keys that are present.
    pub fn present(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        push_if(&mut v, "command", self.command.is_some());
        push_if(&mut v, "env", self.env.is_some());
        push_if(&mut v, "url", self.url.is_some());
        push_if(&mut v, "method", self.method.is_some());
        push_if(&mut v, "expect_status", self.expect_status.is_some());
        push_if(&mut v, "body", self.body.is_some());
        push_if(&mut v, "headers", self.headers.is_some());
        push_if(&mut v, "duration", self.duration.is_some());
        push_if(&mut v, "checks", self.checks.is_some());
        push_if(&mut v, "agent", self.agent.is_some());
        push_if(&mut v, "action", self.action.is_some());
        push_if(&mut v, "params", self.params.is_some());
        push_if(&mut v, "server", self.server.is_some());
        push_if(&mut v, "zone", self.zone.is_some());
        push_if(&mut v, "tsig", self.tsig.is_some());
        push_if(&mut v, "records", self.records.is_some());
        push_if(&mut v, "protocol", self.protocol.is_some());
        push_if(&mut v, "verify_servers", self.verify_servers.is_some());
        push_if(&mut v, "socket", self.socket.is_some());
        push_if(&mut v, "set", self.set.is_some());
        v
    }
}

fn push_if(v: &mut Vec<&'static str>, key: &'static str, present: bool) {
    if present {
        v.push(key);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Tsig {
    pub name: String,
    pub algorithm: String,
    pub secret_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Record {
    pub name: String,
    #[serde(rename = "type")]
    pub rtype: String,
    pub ttl: Option<i64>,
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HaproxySet {
    pub server: String,
    pub state: String,
    pub weight: Option<i64>,
}
