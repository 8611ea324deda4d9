//! A failover must not end with nobody serving because of a fault of drover's own members
//! (issue cases 5 and 6): the member running a step dies mid-step, or the leader's disk is full.
//!
//! In both, prod is fenced first; an aborted workflow would leave prod stopped and dr never
//! started. What a user relies on: another member of dr runs the step, a member that cannot
//! persist stops being leader and executor, and the failover completes.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use drover_tests::{skip, step, steps, unix_ms, Cluster, NodeId, Rig, LEADER_TIMEOUT};

const PROTECTING_TIMEOUT: Duration = Duration::from_secs(30);
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// The name of the member whose runbook command `app.sh start <site>` runs now (found by the
/// `DROVER_TEST_NODE` its node gave it), if any.
fn running_start_step(site: &str) -> Option<String> {
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let dir = entry.path();
        let Ok(cmdline) = fs::read(dir.join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_step = args.iter().any(|a| a.ends_with(b"app.sh"))
            && args.iter().any(|a| *a == b"start")
            && args.contains(&site.as_bytes());
        if !is_step {
            continue;
        }
        let Ok(env) = fs::read(dir.join("environ")) else { continue };
        let node = env
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(b"DROVER_TEST_NODE=".as_slice()))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        if node.is_some() {
            return node;
        }
    }
    None
}

#[test]
fn an_executor_killed_mid_step_costs_no_attempt_and_the_failover_completes() {
    let mut r = Rig::loopback("an_executor_killed_mid_step_costs_no_attempt");
    r.start_app("prod", "initial deployment");
    // dr's activate step takes 6 s: long enough to kill its executor in the middle.
    r.apps.slow_start("dr", 6);
    r.apply_failover_spec();
    r.wait_protecting_with_prod_up(PROTECTING_TIMEOUT);

    let outage_ms = unix_ms();
    r.apps.kill_9("prod");
    let executor = r.wait("dr's activate step to run on a dr member", FAILOVER_TIMEOUT, |_| {
        running_start_step("dr").ok_or_else(|| "no `app.sh start dr` process yet".to_owned())
    });
    let id = r.c.id_of(&executor);
    // Where the leader sits is the first election's choice. When it is the executor itself,
    // this is a leader crash mid-step: the next leader finds the step started and not
    // finished, cannot know whether it ran, and runs it again as the next attempt.
    let leader = r.c.wait_for_leader(LEADER_TIMEOUT);
    eprintln!(
        "killing {executor} (id {id}; the leader is {leader}) while it runs dr's activate step"
    );
    // SIGKILL to the member's process group: the node and the step it runs.
    r.c.kill_9(id);

    let svc = r.wait_failed_over_to_dr(FAILOVER_TIMEOUT);
    r.no_step_before(outage_ms, "the prod application was killed");
    let started_by: Vec<String> = r
        .apps
        .ledger()
        .into_iter()
        .filter(|l| l.is("dr", "start", None, Some(2)))
        .map(|l| l.by)
        .collect();
    // The killed member's step died with it (it would otherwise finish unsupervised).
    if started_by.is_empty() || started_by.contains(&executor) {
        r.fail(format!(
            "dr must have been started by a member other than the killed {executor}, and the \
             killed member's step must have died with it: ledger `start dr` lines by \
             {started_by:?}"
        ));
    }
    let all = steps(&svc);
    let attempt = step(&all, "activate").and_then(|s| s["attempt"].as_u64());
    if leader == id {
        eprintln!("the killed executor led: the activate step ended at attempt {attempt:?}");
    } else if attempt != Some(1) {
        r.fail(format!(
            "a step whose executor died costs no attempt: the activate step shows attempt \
             {attempt:?}, expected 1: {svc}"
        ));
    }
    eprintln!("failed over; dr started by {started_by:?}");
    match r.apps.healthz("dr") {
        Ok((200, _)) => {}
        other => r.fail(format!("GET /healthz of the dr application: {other:?}")),
    }
}

/// tmpfs mounts, unmounted when dropped (also on a failing test, after the cluster stopped).
struct Tmpfs(Vec<std::path::PathBuf>);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = Command::new("umount").arg("-l").arg(dir).status();
            // The cluster removed its temp dir around the mount points (or kept it, with the
            // logs, after a failure): remove what is empty now.
            for empty in dir.ancestors().take(3) {
                let _ = fs::remove_dir(empty);
            }
        }
    }
}

/// Fills the file system of `dir` until a write fails with "no space left"; returns the bytes
/// written.
fn fill(dir: &Path) -> u64 {
    let path = dir.join("filler");
    let mut f =
        fs::File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let block = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) => return written,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return written,
            Err(e) => panic!("fill {}: {e}", path.display()),
        }
    }
}

#[test]
fn a_leader_whose_disk_is_full_gives_way_and_the_failover_completes() {
    let test = "a_leader_whose_disk_is_full_gives_way";
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip(&format!("skipped: {test} needs root to mount a small tmpfs as a data dir"));
        return;
    }
    let c = Cluster::builder(test).two_sites_and_witness().build();
    // Every member's data dir is a 64 MiB tmpfs, so whichever member leads can be filled.
    let mut mounts = Tmpfs(Vec::new());
    for id in c.ids() {
        let dir = c.data_dir(id).to_path_buf();
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount a tmpfs on {}", dir.display());
        mounts.0.push(dir);
    }
    let mut r = Rig::start_loopback(c);
    r.start_app("prod", "initial deployment");
    r.apply_failover_spec();
    r.wait_protecting_with_prod_up(PROTECTING_TIMEOUT);

    let leader: NodeId = r.wait("a leader", LEADER_TIMEOUT, |r| {
        r.ctl_json(&["status"])?["leader_id"].as_u64().ok_or_else(|| "no leader".to_owned())
    });
    let name = r.c.name(leader).to_owned();
    let bytes = fill(r.c.data_dir(leader));
    eprintln!("filled {name}'s data dir ({bytes} bytes); killing prod's application");
    let outage_ms = unix_ms();
    r.apps.kill_9("prod");

    r.wait_failed_over_to_dr(FAILOVER_TIMEOUT);
    r.no_step_before(outage_ms, "the prod application was killed");
    match r.apps.healthz("dr") {
        Ok((200, _)) => {}
        other => r.fail(format!("GET /healthz of the dr application: {other:?}")),
    }
    // The full member must not stay on as a leader that cannot commit: it exits (for its
    // supervisor to restart it) or reports not ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if !r.c.is_running(leader) {
            eprintln!("{name} exited, as a member that cannot persist must");
            break;
        }
        if let Ok((503, body)) = r.c.http_get(leader, "/readyz") {
            eprintln!("{name} reports not ready: {}", body.trim());
            break;
        }
        if Instant::now() > deadline {
            r.fail(format!("{name} cannot write its data dir, yet it runs and reports ready"));
        }
        thread::sleep(Duration::from_millis(200));
    }
}
