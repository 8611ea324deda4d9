//! A cluster plus its sites' applications: what the failover tests drive.
//!
//! `Rig` owns both so they go away in the right order: the applications (whose pids are listed
//! in the cluster's temp dir) are killed before the cluster removes that dir. A failure report
//! has the node log tails, the ledger and the application logs.

use std::fmt::Display;
use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::app::{failover_spec, AppSite, Apps};
use crate::cluster::{Cluster, NodeId};
use crate::netns::Sites;
use crate::LEADER_TIMEOUT;

/// The service every failover test protects.
pub const SERVICE: &str = "webshop";
/// Pause between two polls of the service's status.
const POLL: Duration = Duration::from_millis(100);
/// An application started by the harness must answer within this.
const APP_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the protecting state must hold before a test acts: longer than down_after (2s).
pub const STEADY: Duration = Duration::from_secs(3);

/// A cluster and its applications. Fields drop in order: `apps` first.
pub struct Rig {
    pub apps: Apps,
    pub c: Cluster,
    /// Nodes droverctl talks to (`None`: every running node).
    via: Option<Vec<NodeId>>,
}

/// Port of each site's application in the network-namespace layout (each site has its own
/// address).
const NETNS_APP_PORT: u16 = 8080;

impl Rig {
    pub fn new(c: Cluster, apps: Apps) -> Rig {
        Rig { apps, c, via: None }
    }

    /// A started 2+2+1 cluster on loopback with a leader and an application per site (none
    /// running yet).
    pub fn loopback(test: &str) -> Rig {
        Rig::start_loopback(Cluster::builder(test).two_sites_and_witness().build())
    }

    /// [`Rig::loopback`] of a built, not yet started cluster (prepared by the test first, e.g.
    /// its data dirs mounted): adds an application per site, starts it and waits for a leader.
    pub fn start_loopback(mut c: Cluster) -> Rig {
        let sites = vec![
            AppSite { site: "prod".into(), addr: c.loopback_addr(100), netns: None },
            AppSite { site: "dr".into(), addr: c.loopback_addr(101), netns: None },
        ];
        let apps = Apps::new(&c.root().join("apps"), &c.bins().node, sites, None);
        c.start();
        c.wait_for_leader(LEADER_TIMEOUT);
        Rig::new(c, apps)
    }

    /// A started 2+2+1 cluster with each site in its own network namespace of `sites` (the
    /// operator and the harness in `ops`), a leader, and an application per site (none
    /// running yet). Keep `sites` alive longer than the rig.
    pub fn in_netns(test: &str, sites: &Sites) -> Rig {
        let mut c = Cluster::builder(test)
            .two_sites_and_witness()
            .in_netns("prod-1", sites.ns("prod"), sites.ip("prod", 0))
            .in_netns("prod-2", sites.ns("prod"), sites.ip("prod", 1))
            .in_netns("dr-1", sites.ns("dr"), sites.ip("dr", 0))
            .in_netns("dr-2", sites.ns("dr"), sites.ip("dr", 1))
            .in_netns("witness", sites.ns("witness"), sites.ip("witness", 0))
            .client_netns(sites.ns("ops"))
            .build();
        let app_sites = ["prod", "dr"]
            .into_iter()
            .map(|site| AppSite {
                site: site.into(),
                addr: (sites.ip(site, 10), NETNS_APP_PORT).into(),
                netns: Some(sites.ns(site).into()),
            })
            .collect();
        let apps =
            Apps::new(&c.root().join("apps"), &c.bins().node, app_sites, Some(sites.ns("ops")));
        c.start();
        c.wait_for_leader(LEADER_TIMEOUT);
        Rig::new(c, apps)
    }

    /// The members of `site`, by id.
    pub fn site_ids(&self, site: &str) -> Vec<NodeId> {
        self.c.ids().into_iter().filter(|&id| self.c.site(id) == site).collect()
    }

    /// From now on, status and history go to these nodes only (`None`: every running node).
    pub fn talk_to(&mut self, ids: Option<Vec<NodeId>>) {
        self.via = ids;
    }

    /// `droverctl --json ARGS` against the nodes chosen with [`Rig::talk_to`].
    pub fn ctl_json(&mut self, args: &[&str]) -> Result<Value, String> {
        match &self.via {
            Some(ids) => self.c.ctl_json_via(ids, args),
            None => self.c.ctl_json(args),
        }
    }

    /// Panics with `msg`, node states and log tails, the ledger and application logs.
    pub fn fail(&mut self, msg: impl Display) -> ! {
        let apps = self.apps.report();
        self.c.fail(format!("{msg}\n{apps}"))
    }

    /// Writes `text` as `<root>/<file>` and returns its path.
    pub fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.c.root().join(file);
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// `droverctl config apply -f cluster.toml` of [`failover_spec`]; returns the version.
    pub fn apply_failover_spec(&mut self) -> u64 {
        let text = failover_spec(&self.apps);
        self.apply_spec(&text, "the failover spec")
    }

    /// `droverctl config apply -f cluster.toml` of `text` (described as `what` in a
    /// failure); returns the version.
    pub fn apply_spec(&mut self, text: &str, what: &str) -> u64 {
        let path = self.write("cluster.toml", text);
        let path = path.to_string_lossy().into_owned();
        // As an operator would: "knows no leader right now ... retry in a few seconds" (a
        // leader of the first election can step down to a same-term candidate with a higher
        // id just after `status` named it) means nothing was written; retry that, nothing else.
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            match self.ctl_json(&["config", "apply", "-f", &path]) {
                Ok(v) => {
                    return v["version"].as_u64().unwrap_or_else(|| {
                        self.fail(format!("`config apply` printed {v}, no version"))
                    })
                }
                Err(e) if e.contains("knows no leader") && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(500));
                }
                Err(e) => self.fail(format!("applying {what} failed: {e}")),
            }
        }
    }

    /// Fails if drover ran any runbook step (a ledger line not written by the harness) before
    /// `ms`: a failover must be caused by the outage, not by anything earlier.
    pub fn no_step_before(&mut self, ms: u64, what: &str) {
        let early: Vec<String> = self
            .apps
            .ledger()
            .into_iter()
            .filter(|l| l.by != "harness" && l.unix_ms < ms)
            .map(|l| l.raw)
            .collect();
        if !early.is_empty() {
            self.fail(format!("drover ran runbook steps before {what} (at {ms} ms): {early:?}"));
        }
    }

    /// The `services[]` entry of the service in `droverctl status --json`.
    pub fn service(&mut self) -> Result<Value, String> {
        let s = self.ctl_json(&["status"])?;
        s["services"]
            .as_array()
            .and_then(|a| a.iter().find(|v| v["name"] == SERVICE))
            .cloned()
            .ok_or_else(|| format!("status has no service {SERVICE:?}: {s}"))
    }

    /// Polls `probe` every 100 ms until it returns `Ok` or `timeout` passes; then fails with
    /// `what` and the last error.
    pub fn wait<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        probe: impl FnMut(&mut Rig) -> Result<T, String>,
    ) -> T {
        match crate::cluster::poll(self, timeout, POLL, probe) {
            Ok(v) => v,
            Err(last) => self.fail(format!(
                "timed out after {timeout:?} waiting for {what}\nlast observed: {last}"
            )),
        }
    }

    /// `app.sh start SITE`, then waits until the application answers GET /healthz with 200
    /// from the harness's vantage point (a debug build on a busy machine can take seconds).
    pub fn start_app(&mut self, site: &str, why: &str) {
        self.apps.start(site, why);
        self.wait(
            &format!("the {site} application to answer GET /healthz"),
            APP_START_TIMEOUT,
            |r| match r.apps.healthz(site)? {
                (200, _) => Ok(()),
                (code, body) => Err(format!("{code} {}", body.trim())),
            },
        );
    }

    /// Waits until the service is protecting in prod at epoch 1 with prod `up`, then checks
    /// that it stays so for [`STEADY`] (longer than down_after): the starting point of every
    /// failover test, free of start-up transients.
    pub fn wait_protecting_with_prod_up(&mut self, timeout: Duration) -> Value {
        // `unknown_ok`: a leader elected a moment ago has no health reports yet and shows no
        // site state (`"sites": {}`); that is not a fault, but prod seen as anything but up is.
        let steady = |r: &mut Rig, unknown_ok: bool| -> Result<Value, String> {
            let v = r.service()?;
            let prod = &v["sites"]["prod"];
            let ok = v["phase"] == "protecting"
                && v["active_site"] == "prod"
                && v["epoch"] == 1
                && (prod == "up" || (unknown_ok && prod.is_null()));
            if ok {
                Ok(v)
            } else {
                Err(format!("service {v}"))
            }
        };
        self.wait("webshop protecting, active prod, epoch 1, prod up", timeout, |r| {
            steady(r, false)
        });
        let since = Instant::now();
        loop {
            match steady(self, true) {
                Ok(v) if since.elapsed() >= STEADY => return v,
                Ok(_) => thread::sleep(POLL),
                Err(e) => self.fail(format!(
                    "with prod's application answering, the service must stay protecting in prod;                      {:.1}s after it was, it is not: {e}",
                    since.elapsed().as_secs_f64()
                )),
            }
        }
    }

    /// Waits until the service failed over to dr at epoch 2; returns its status entry.
    pub fn wait_failed_over_to_dr(&mut self, timeout: Duration) -> Value {
        self.wait("webshop failed_over, active dr, epoch 2", timeout, |r| {
            let v = r.service()?;
            if v["phase"] == "failover_failed" {
                // Terminal without an operator: no point waiting.
                return Ok(Err(v));
            }
            let ok = v["phase"] == "failed_over" && v["active_site"] == "dr" && v["epoch"] == 2;
            if ok {
                Ok(Ok(v))
            } else {
                Err(format!("service {v}"))
            }
        })
        .unwrap_or_else(|v| self.fail(format!("the failover failed instead of completing: {v}")))
    }
}

/// Milliseconds since the Unix epoch now (the clock of the ledger).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The steps of a status entry's workflow (empty when there is none).
pub fn steps(service: &Value) -> Vec<Value> {
    service["workflow"]["steps"].as_array().cloned().unwrap_or_default()
}

/// The first step of `stage` (`fence`, `lease_wait`, `activate`, `verify`).
pub fn step<'a>(steps: &'a [Value], stage: &str) -> Option<&'a Value> {
    steps.iter().find(|s| s["stage"] == stage)
}

/// A history record's `<service> epoch <E>: step <N> (...) succeeded` as (E, N).
pub fn succeeded_step(text: &str) -> Option<(u64, u64)> {
    let rest = text.strip_prefix(SERVICE)?.strip_prefix(" epoch ")?;
    let (epoch, rest) = rest.split_once(':')?;
    let rest = rest.trim_start().strip_prefix("step ")?;
    let (n, rest) = rest.split_once(' ')?;
    let close = rest.find(')')?;
    rest[close + 1..].trim_start().starts_with("succeeded").then_some(())?;
    Some((epoch.parse().ok()?, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_succeeded_steps_in_history_text() {
        assert_eq!(
            succeeded_step(
                "webshop epoch 2: step 3 (activate exec on dr) succeeded: exit 0 on dr-1"
            ),
            Some((2, 3))
        );
        assert_eq!(
            succeeded_step(
                "webshop epoch 2: step 3 (activate exec on dr) attempt 1 failed, will retry: x"
            ),
            None
        );
        assert_eq!(succeeded_step("automatic failover of webshop from prod to dr started"), None);
    }
}
