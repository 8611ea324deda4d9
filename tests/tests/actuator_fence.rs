//! The `fence_agent` step against Debian's `fence_dummy` (fence-agents package) and against
//! small agent scripts written by the tests. What a user relies on: the agent gets its
//! parameters the way Pacemaker passes them (stdin `key=value` lines, secrets read from
//! `*_file` parameters), an `off` counts only once `status` says off, a hung or failing agent
//! fails the step with the agent's own words, and a secret shows up nowhere drover writes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover::actuate::{
    fence_status_power, Actuator, RealActuator, StepContext, StepError, StepOutput,
};
use drover::spec::{FenceAction, FenceAgentStep, OnFailure, RunOn, Step, StepAction};

const SECRET: &str = "Tr0ub4dor&3-very-secret";

fn step(agent: &str, action: FenceAction, params: &[(&str, &str)], timeout: Duration) -> Step {
    Step {
        run_on: RunOn::Any,
        timeout,
        retries: 0,
        backoff: Duration::from_secs(1),
        on_failure: OnFailure::Abort,
        action: StepAction::FenceAgent(FenceAgentStep {
            agent: agent.into(),
            action,
            params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }),
    }
}

fn ctx() -> StepContext {
    StepContext {
        service: "file-transfer".into(),
        epoch: 4,
        from_site: "prod".into(),
        to_site: "dr".into(),
        recovery_point: None,
        test: false,
    }
}

/// An agent script `name` in `dir`, executable.
fn agent_script(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write agent script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// An actuator that finds the test's agent scripts in `dir` first.
fn actuator(dir: &Path) -> RealActuator {
    RealActuator::new().with_fence_agent_dirs(vec![dir.to_path_buf()])
}

/// `fence_dummy` parameters keeping its power state in `dir`. Its `status_file` option is a
/// path, passed through a `*_file` parameter: the file holds the path, sent as `status_file=`.
fn dummy_params(dir: &Path) -> (PathBuf, String) {
    let state = dir.join("power");
    let pointer = dir.join("status-file-path");
    std::fs::write(&pointer, format!("{}\n", state.display())).expect("write pointer file");
    (state, pointer.display().to_string())
}

/// Everything logged while it lives (this thread's tracing subscriber).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

/// Everything a user can see of a step's result.
fn shown(result: &Result<StepOutput, StepError>) -> String {
    match result {
        Ok(out) => format!("{}\n{}", out.detail, out.output_tail),
        Err(e) => format!("{e}\n{e:?}\n{}", e.output_tail()),
    }
}

#[tokio::test]
async fn fence_dummy_on_off_status_through_stdin() {
    let test = "fence_dummy_on_off_status_through_stdin";
    if drover_tests::require_program(test, "fence_dummy", "fence-agents").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (state, pointer) = dummy_params(dir.path());
    let params = [("status_file_file", pointer.as_str())];
    let actuator = RealActuator::new();
    let timeout = Duration::from_secs(20);
    let run = |action| {
        let s = step("fence_dummy", action, &params, timeout);
        let a = actuator.clone();
        async move { a.run(&s, &ctx()).await }
    };

    let on = run(FenceAction::On).await.unwrap_or_else(|e| panic!("{e}: {}", e.output_tail()));
    assert_eq!(on.detail.split(':').next(), Some("fence_dummy on"), "{}", on.detail);
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "on");
    let status = run(FenceAction::Status).await.expect("status");
    assert_eq!(fence_status_power(&status.detail), Some("on"), "{}", status.detail);

    let off = run(FenceAction::Off).await.unwrap_or_else(|e| panic!("{e}: {}", e.output_tail()));
    assert!(
        off.detail.starts_with("target off (fence_dummy off: exit 0, then status: exit 2"),
        "{}",
        off.detail
    );
    assert!(off.output_tail.contains("Status: OFF"), "{}", off.output_tail);
    assert_eq!(std::fs::read_to_string(&state).unwrap(), "off");
    let status = run(FenceAction::Status).await.expect("status");
    assert_eq!(fence_status_power(&status.detail), Some("off"), "{}", status.detail);
}

#[tokio::test]
async fn a_password_file_reaches_the_agent_but_nothing_drover_shows() {
    let test = "a_password_file_reaches_the_agent_but_nothing_drover_shows";
    if drover_tests::require_program(test, "fence_dummy", "fence-agents").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let pass = dir.path().join("ipmi.pass");
    std::fs::write(&pass, format!("{SECRET}\n")).expect("write password file");
    let pass = pass.display().to_string();
    let logs = Logs::default();
    let _subscriber = {
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
            .set_default()
    };

    // fence_dummy takes no password and says so on stderr, echoing the line it ignored.
    let (_, pointer) = dummy_params(dir.path());
    let params = [("status_file_file", pointer.as_str()), ("password_file", pass.as_str())];
    let s = step("fence_dummy", FenceAction::Status, &params, Duration::from_secs(20));
    let result = RealActuator::new().run(&s, &ctx()).await;
    let out = result.as_ref().unwrap_or_else(|e| panic!("{e}: {}", e.output_tail()));
    assert!(
        out.output_tail.contains("Ignoring unknown option 'password=***'"),
        "{}",
        out.output_tail
    );
    assert!(!shown(&result).contains(SECRET), "{}", shown(&result));

    // An agent that records what it got and puts the password in its failure message.
    agent_script(
        dir.path(),
        "fence_leaky",
        "input=$(cat)\n\
         printf '%s\\n' \"$input\" > \"$(dirname \"$0\")/received\"\n\
         pw=$(printf '%s\\n' \"$input\" | sed -n 's/^password=//p')\n\
         echo \"Failed: BMC refused login admin/$pw\" >&2\n\
         exit 1\n",
    );
    let params = [("ip", "192.0.2.7"), ("username", "admin"), ("password_file", pass.as_str())];
    let s = step("fence_leaky", FenceAction::Off, &params, Duration::from_secs(10));
    let result = actuator(dir.path()).run(&s, &ctx()).await;
    let received = std::fs::read_to_string(dir.path().join("received")).expect("agent input");
    assert_eq!(
        received,
        format!("ip=192.0.2.7\npassword={SECRET}\nusername=admin\naction=off\n"),
        "the agent gets the file's content without its newline, and the action last"
    );
    let Err(StepError::Failed { reason, .. }) = &result else { panic!("{result:?}") };
    assert_eq!(reason, "fence_leaky off: exit 1: Failed: BMC refused login admin/***");
    assert!(!shown(&result).contains(SECRET), "{}", shown(&result));

    let logged = logs.text();
    assert!(logged.contains("BMC refused login admin/***"), "the failure is logged:\n{logged}");
    assert!(!logged.contains(SECRET), "a secret was logged:\n{logged}");
}

#[tokio::test]
async fn a_hung_agent_times_out_and_is_stopped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pid_file = dir.path().join("pid");
    agent_script(
        dir.path(),
        "fence_hung",
        &format!("cat >/dev/null\necho $$ > {}\necho connecting\nsleep 30\n", pid_file.display()),
    );
    let s =
        step("fence_hung", FenceAction::Off, &[("ip", "192.0.2.8")], Duration::from_millis(700));
    let started = Instant::now();
    let result = actuator(dir.path()).run(&s, &ctx()).await;
    let Err(StepError::Timeout { after, output_tail }) = &result else { panic!("{result:?}") };
    assert_eq!(*after, Duration::from_millis(700));
    assert!(output_tail.contains("connecting"), "{output_tail}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let pid: i32 = std::fs::read_to_string(&pid_file).expect("pid").trim().parse().expect("a pid");
    // SAFETY: signal 0 only checks whether the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "the agent {pid} is still running after the timeout");
}

#[tokio::test]
async fn a_failing_agent_fails_the_step_with_its_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    agent_script(
        dir.path(),
        "fence_broken",
        "cat >/dev/null\necho 'connecting to 192.0.2.9'\n\
         echo 'Failed: Unable to connect/login to fencing device' >&2\nexit 1\n",
    );
    for action in [FenceAction::Off, FenceAction::Status] {
        let s = step("fence_broken", action, &[], Duration::from_secs(10));
        let result = actuator(dir.path()).run(&s, &ctx()).await;
        let Err(StepError::Failed { reason, output_tail }) = &result else { panic!("{result:?}") };
        assert!(
            reason.contains("exit 1: Failed: Unable to connect/login to fencing device"),
            "{reason}"
        );
        assert!(output_tail.contains("connecting to 192.0.2.9"), "{output_tail}");
    }

    let s = step("fence_nonexistent_agent", FenceAction::Status, &[], Duration::from_secs(10));
    let result = actuator(dir.path()).run(&s, &ctx()).await;
    let Err(StepError::Failed { reason, .. }) = &result else { panic!("{result:?}") };
    assert!(
        reason.starts_with("fence agent fence_nonexistent_agent not found in PATH"),
        "{reason}"
    );
}

#[tokio::test]
async fn off_counts_only_when_status_says_off() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Accepts every command and never powers anything off.
    agent_script(dir.path(), "fence_stuck", "cat >/dev/null\necho 'Status: ON'\nexit 0\n");
    let s = step("fence_stuck", FenceAction::Off, &[("plug", "st1")], Duration::from_secs(10));
    let result = actuator(dir.path()).run(&s, &ctx()).await;
    let Err(StepError::Failed { reason, .. }) = &result else { panic!("{result:?}") };
    assert!(
        reason.starts_with("fence_stuck off: the agent reported the target still on after off"),
        "{reason}"
    );
    // `on` is not confirmed: exit 0 is success.
    let s = step("fence_stuck", FenceAction::On, &[("plug", "st1")], Duration::from_secs(10));
    let out = actuator(dir.path()).run(&s, &ctx()).await.expect("on succeeds");
    assert!(out.detail.starts_with("fence_stuck on: exit 0"), "{}", out.detail);
}
