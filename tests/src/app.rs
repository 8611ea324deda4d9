//! A stand-in application per site, the runbook script that starts and stops it, the ledger the
//! script keeps, and the cluster spec that wires them into a service.
//!
//! ```text
//! <dir>/app.sh start|stop SITE [WHY]     the runbook (idempotent, as steps must be)
//! <dir>/app.sh note SITE WHY             a runbook step that only leaves a ledger line
//! <dir>/ledger.txt                       one line per call:
//!     <unix ms> <site> <start|stop>[ (<why>)] epoch=<DROVER_EPOCH|none> by=<node name|harness>
//! <dir>/app-<site>.pid, app-<site>.log   the running application of a site
//! <dir>/app-pids                         every application pid ever started (for cleanup)
//! <dir>/slow-start-<site>                if present: `start` first sleeps this many seconds
//! <dir>/fail-start-<site>                if present: `start` fails (exit 1, no ledger line)
//! ```
//!
//! The application is `drover-node demo-app --listen ADDR --site SITE` (answers GET /healthz
//! with 200). Timestamps come from `date +%s%3N`, i.e. the one clock of this machine, which all
//! network namespaces share, so ledger lines written by different sites can be ordered.
//! `by=` is the `DROVER_TEST_NODE` the harness gives each node (inherited by the steps it
//! runs); the harness's own calls say `by=harness`.
//!
//! The applications run detached from the nodes (as a real application would); `Drop` kills
//! every one of them still alive.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::http::http_get;
use crate::netns::{command_in, in_netns};
use crate::process::{run_with_deadline, CmdOutput};

/// Bound for one `app.sh` call by the harness (a stop waits up to 5 s for the app to exit).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(20);
/// Timeout of one GET /healthz of an application.
const HEALTHZ_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a site's application listens, and the network namespace it runs in.
#[derive(Debug, Clone)]
pub struct AppSite {
    pub site: String,
    pub addr: SocketAddr,
    pub netns: Option<String>,
}

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerLine {
    pub unix_ms: u64,
    pub site: String,
    pub action: String,
    /// The third argument of the call (`fence`, `lease lost`, ...), if any.
    pub why: Option<String>,
    /// `$DROVER_EPOCH` (None when not run by drover).
    pub epoch: Option<u64>,
    /// Node that ran the step, or `harness`.
    pub by: String,
    pub raw: String,
}

impl LedgerLine {
    /// `site action (why)` matches, epoch as given (None = any).
    pub fn is(&self, site: &str, action: &str, why: Option<&str>, epoch: Option<u64>) -> bool {
        self.site == site
            && self.action == action
            && why.is_none_or(|w| self.why.as_deref() == Some(w))
            && epoch.is_none_or(|e| self.epoch == Some(e))
    }
}

/// The applications of a test's sites and their runbook script.
pub struct Apps {
    dir: PathBuf,
    sites: Vec<AppSite>,
    /// Namespace the test's own health requests run from (`None`: the test's namespace).
    client_netns: Option<String>,
}

impl Apps {
    /// Writes `app.sh` into `dir` (created if missing) for `sites`, starting `node_bin
    /// demo-app`. Starts nothing.
    pub fn new(
        dir: &Path,
        node_bin: &Path,
        sites: Vec<AppSite>,
        client_netns: Option<&str>,
    ) -> Apps {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let apps =
            Apps { dir: dir.to_path_buf(), sites, client_netns: client_netns.map(Into::into) };
        let mut cases = String::new();
        for s in &apps.sites {
            cases += &format!("  {}) addr={} ;;\n", s.site, s.addr);
        }
        let script = format!(
            r#"#!/bin/sh
# Test runbook: start or stop a site's stand-in application; every call is logged in ledger.txt
# with a millisecond timestamp, the epoch drover passed and the node that ran it.
set -u
action=$1; site=$2; why=${{3:-}}
dir='{dir}'
case $site in
{cases}  *) echo "unknown site $site" >&2; exit 2 ;;
esac
pidfile="$dir/app-$site.pid"
# Running: the process exists and is not a zombie (an exited app waits, as a zombie, until
# whatever adopted it reaps it, which can take seconds).
running() {{
  [ -f "$pidfile" ] || return 1
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$(cat "$pidfile")/status" 2>/dev/null)
  [ -n "$state" ] && [ "$state" != Z ]
}}
case $action in
start)
  if [ -f "$dir/slow-start-$site" ]; then sleep "$(cat "$dir/slow-start-$site")"; fi
  if [ -f "$dir/fail-start-$site" ]; then echo "start of $site refused by fail-start-$site" >&2; exit 1; fi
  if ! running; then
    nohup '{exe}' demo-app --listen "$addr" --site "$site" >>"$dir/app-$site.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    echo $! >>"$dir/app-pids"
  fi ;;
stop)
  if running; then
    kill "$(cat "$pidfile")"
    i=0; while running && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
    if running; then kill -9 "$(cat "$pidfile")"; fi
  fi
  rm -f "$pidfile" ;;
note) ;;
*) echo "usage: app.sh start|stop|note SITE [WHY]" >&2; exit 2 ;;
esac
echo "$(date +%s%3N) $site $action${{why:+ ($why)}} epoch=${{DROVER_EPOCH:-none}} by=${{DROVER_TEST_NODE:-harness}}" >>"$dir/ledger.txt"
"#,
            dir = apps.dir.display(),
            exe = node_bin.display(),
        );
        let path = apps.script();
        fs::write(&path, script).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        apps
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn script(&self) -> PathBuf {
        self.dir.join("app.sh")
    }
    pub fn ledger_path(&self) -> PathBuf {
        self.dir.join("ledger.txt")
    }
    pub fn sites(&self) -> &[AppSite] {
        &self.sites
    }

    fn site(&self, site: &str) -> &AppSite {
        self.sites
            .iter()
            .find(|s| s.site == site)
            .unwrap_or_else(|| panic!("no application for site {site:?}"))
    }

    /// Where `site`'s application listens.
    pub fn addr(&self, site: &str) -> SocketAddr {
        self.site(site).addr
    }

    /// `app.sh ACTION SITE [WHY]`, run by the harness inside the site's namespace.
    pub fn run(&self, action: &str, site: &str, why: Option<&str>) -> CmdOutput {
        let mut cmd = command_in(self.site(site).netns.as_deref(), self.script());
        cmd.args([action, site]);
        if let Some(why) = why {
            cmd.arg(why);
        }
        run_with_deadline(&mut cmd, SCRIPT_DEADLINE)
    }

    /// `app.sh start SITE WHY`; panics on failure.
    pub fn start(&self, site: &str, why: &str) {
        let out = self.run("start", site, Some(why));
        assert!(out.success(), "app.sh start {site} failed: {}", out.describe());
    }

    /// `app.sh stop SITE WHY`; panics on failure.
    pub fn stop(&self, site: &str, why: &str) {
        let out = self.run("stop", site, Some(why));
        assert!(out.success(), "app.sh stop {site} failed: {}", out.describe());
    }

    /// The pid of `site`'s application if it is running.
    pub fn pid(&self, site: &str) -> Option<libc::pid_t> {
        let pid: libc::pid_t = fs::read_to_string(self.dir.join(format!("app-{site}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // SAFETY: signal 0 only checks that the pid exists.
        (unsafe { libc::kill(pid, 0) } == 0 && is_app(pid)).then_some(pid)
    }

    /// The outage: SIGKILL to `site`'s application (its pid file stays, as after a crash).
    pub fn kill_9(&self, site: &str) -> libc::pid_t {
        let pid = self.pid(site).unwrap_or_else(|| panic!("the {site} application is not running"));
        // SAFETY: kill(2) on the application's pid, which we checked is our demo-app.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        for _ in 0..100 {
            if !is_app(pid) {
                return pid;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the {site} application (pid {pid}) survived SIGKILL");
    }

    /// From now on `app.sh start SITE` sleeps `secs` before starting (a slow step).
    pub fn slow_start(&self, site: &str, secs: u32) {
        let path = self.dir.join(format!("slow-start-{site}"));
        fs::write(&path, secs.to_string())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// GET /healthz of `site`'s application from the harness's client namespace.
    pub fn healthz(&self, site: &str) -> Result<(u16, String), String> {
        self.healthz_from(self.client_netns.as_deref(), site)
    }

    /// GET /healthz of `site`'s application from namespace `netns` (`None`: the test's own).
    pub fn healthz_from(&self, netns: Option<&str>, site: &str) -> Result<(u16, String), String> {
        let addr = self.addr(site);
        match netns {
            None => http_get(addr, "/healthz", HEALTHZ_TIMEOUT),
            Some(ns) => in_netns(ns, move || http_get(addr, "/healthz", HEALTHZ_TIMEOUT))?,
        }
    }

    /// The ledger as written so far (empty before the first call).
    pub fn ledger_text(&self) -> String {
        fs::read_to_string(self.ledger_path()).unwrap_or_default()
    }

    /// The ledger, parsed; panics on a line the script cannot have written.
    pub fn ledger(&self) -> Vec<LedgerLine> {
        self.ledger_text().lines().filter(|l| !l.trim().is_empty()).map(parse_ledger_line).collect()
    }

    /// The first ledger line matching.
    pub fn find(
        &self,
        site: &str,
        action: &str,
        why: Option<&str>,
        epoch: Option<u64>,
    ) -> Option<LedgerLine> {
        self.ledger().into_iter().find(|l| l.is(site, action, why, epoch))
    }

    /// The ledger and the tail of each application's log, for failure messages.
    pub fn report(&self) -> String {
        let mut out = format!("ledger {}:\n{}", self.ledger_path().display(), self.ledger_text());
        for s in &self.sites {
            let log = self.dir.join(format!("app-{}.log", s.site));
            let text = fs::read_to_string(&log).unwrap_or_else(|_| "(none)\n".into());
            let lines: Vec<&str> = text.lines().collect();
            out += &format!(
                "--- {} application ({}) log, last lines ---\n{}\n",
                s.site,
                s.addr,
                lines[lines.len().saturating_sub(10)..].join("\n")
            );
        }
        out
    }
}

impl Drop for Apps {
    fn drop(&mut self) {
        let pids = fs::read_to_string(self.dir.join("app-pids")).unwrap_or_default();
        for pid in pids.lines().filter_map(|p| p.trim().parse::<libc::pid_t>().ok()) {
            if is_app(pid) {
                // SAFETY: kill(2) on a pid our script started and that still runs demo-app.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// True when `pid` is alive and runs `demo-app` (so a recycled pid is never signalled).
fn is_app(pid: libc::pid_t) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let alive = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false);
    alive && cmdline.split(|b| *b == 0).any(|arg| arg == b"demo-app")
}

fn parse_ledger_line(line: &str) -> LedgerLine {
    let bad = || -> ! {
        panic!("ledger line {line:?} is not `<ms> <site> <action>[ (<why>)] epoch=<e> by=<who>`")
    };
    let (head, by) = line.rsplit_once(" by=").unwrap_or_else(|| bad());
    let (head, epoch) = head.rsplit_once(" epoch=").unwrap_or_else(|| bad());
    let mut parts = head.splitn(4, ' ');
    let unix_ms = parts.next().and_then(|t| t.parse().ok()).unwrap_or_else(|| bad());
    let site = parts.next().unwrap_or_else(|| bad()).to_owned();
    let action = parts.next().unwrap_or_else(|| bad()).to_owned();
    let why = parts.next().map(|w| w.trim_start_matches('(').trim_end_matches(')').to_owned());
    LedgerLine {
        unix_ms,
        site,
        action,
        why,
        epoch: epoch.parse().ok(),
        by: by.trim().to_owned(),
        raw: line.to_owned(),
    }
}

/// The part of the failover tests' cluster spec before the runbooks: sites prod, dr and
/// witness; one service `webshop` active in prod with an http check per site (interval 500ms,
/// timeout 400ms) and fast policies (down_after 2s, up_after 5s, lease_ttl 8s,
/// self_fence_grace 2s, auto commit). Append `[[service.runbook...]]` tables to it.
pub fn failover_spec_head(apps: &Apps) -> String {
    let mut checks = String::new();
    for s in apps.sites() {
        checks += &format!(
            "  [[service.check]]\n  site = \"{}\"\n  kind = \"http\"\n  url = \"http://{}/healthz\"\n  \
             interval = \"500ms\"\n  timeout = \"400ms\"\n",
            s.site, s.addr
        );
    }
    format!(
        r#"[[site]]
name = "prod"
[[site]]
name = "dr"
[[site]]
name = "witness"
witness = true

[policy]
down_after = "2s"
up_after = "5s"
lease_ttl = "8s"
max_clock_drift = 0.01
self_fence_grace = "2s"
cooldown = "30m"
auto_failover = true
commit = "auto"

[[service]]
name = "webshop"
initial_active = "prod"
{checks}"#
    )
}

/// The spec of the operator workflow tests: [`failover_spec`] plus, on both sites, the
/// runbooks a pair needs to move both ways: prod activate and verify, a deactivate runbook
/// per site (`stop SITE switchover`), dr fence and on_lease_lost, and a reprotect runbook per
/// site (`note SITE reprotect`).
pub fn lifecycle_spec(apps: &Apps) -> String {
    let script = apps.script();
    let script = script.display();
    let mut text = failover_spec(apps);
    for site in ["prod", "dr"] {
        text += &format!(
            r#"
  [[service.runbook.{site}.deactivate]]
  kind = "exec"
  run_on = "{site}"
  command = ["{script}", "stop", "{site}", "switchover"]
  timeout = "10s"

  [[service.runbook.{site}.reprotect]]
  kind = "exec"
  run_on = "{site}"
  command = ["{script}", "note", "{site}", "reprotect"]
  timeout = "5s"
"#
        );
    }
    text += &format!(
        r#"
  [[service.runbook.prod.activate]]
  kind = "exec"
  run_on = "prod"
  command = ["{script}", "start", "prod"]
  timeout = "10s"
  retries = 1

  [[service.runbook.prod.verify]]
  kind = "probe"
  checks = "prod"
  timeout = "20s"

  [[service.runbook.dr.fence]]
  kind = "exec"
  run_on = "dr"
  command = ["{script}", "stop", "dr", "fence"]
  timeout = "3s"
  on_failure = "continue"

  [[service.runbook.dr.on_lease_lost]]
  kind = "exec"
  run_on = "dr"
  command = ["{script}", "stop", "dr", "lease lost"]
  timeout = "2s"
"#
    );
    text
}

/// The cluster spec of the failover tests: [`failover_spec_head`] and runbooks, all through
/// `app.sh`: prod fence (`stop prod fence`, on prod, on_failure continue: an unreachable prod
/// falls back to the lease wait), prod on_lease_lost (`stop prod "lease lost"`), dr activate
/// (`start dr`, on dr, timeout 10s, 1 retry), dr verify (probe of dr's checks).
pub fn failover_spec(apps: &Apps) -> String {
    let script = apps.script();
    let script = script.display();
    let head = failover_spec_head(apps);
    format!(
        r#"{head}
  [[service.runbook.prod.fence]]
  kind = "exec"
  run_on = "prod"
  command = ["{script}", "stop", "prod", "fence"]
  timeout = "3s"
  on_failure = "continue"

  [[service.runbook.prod.on_lease_lost]]
  kind = "exec"
  run_on = "prod"
  command = ["{script}", "stop", "prod", "lease lost"]
  timeout = "2s"

  [[service.runbook.dr.activate]]
  kind = "exec"
  run_on = "dr"
  command = ["{script}", "start", "dr"]
  timeout = "10s"
  retries = 1

  [[service.runbook.dr.verify]]
  kind = "probe"
  checks = "dr"
  timeout = "20s"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ledger_lines() {
        let l = parse_ledger_line("1700000000123 prod stop (lease lost) epoch=2 by=prod-1");
        assert_eq!(l.unix_ms, 1_700_000_000_123);
        assert!(l.is("prod", "stop", Some("lease lost"), Some(2)));
        assert_eq!(l.by, "prod-1");
        let l = parse_ledger_line("1700000000124 dr start epoch=none by=harness");
        assert!(l.is("dr", "start", None, None));
        assert_eq!((l.why, l.epoch), (None, None));
    }
}
