//! `fence_agent` steps: run a Pacemaker fence agent (`fence_ipmilan`, `fence_dummy`...) the way
//! Pacemaker does, and confirm an `off` with a `status`.
//!
//! ```text
//!  FenceAgentStep{agent, action, params}
//!    ├─ agent looked up in the extra dirs, PATH, /usr/sbin, /sbin
//!    ├─ params: `x_file = /path` read and passed as `x=<content>`       (secrets stay out of
//!    │                                                                    the replicated spec)
//!    └─ agent run with no arguments, stdin = "key=value" lines + "action=<action>"
//!         off ──exit 0──▶ agent run again with action=status ──exit 2 (off)──▶ success
//!                                                              └─exit 0 (on) / other──▶ failure
//! ```
//!
//! Agents answer `status` with exit 0 for on and 2 for off (the fence-agents convention);
//! anything else is the agent failing. Both runs share the step's timeout.
//!
//! Secrets never leave this module: the values of parameters whose name looks secret
//! (`password`, `passwd`, `community`, `..._key`...) and everything read from a `*_file`
//! parameter are replaced by `***` in the agent's output before any of it is kept, so they
//! appear in no detail, error, output tail or log line (agents like to echo their input back,
//! e.g. "Ignoring unknown option 'password=...'").

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::{StepError, StepOutput, OUTPUT_TAIL_MAX};
use crate::edge::{self, exec};
use crate::spec::{FenceAction, FenceAgentStep};

/// Largest `*_file` parameter file read, in bytes.
const PARAM_FILE_MAX: u64 = 64 * 1024;
/// Parts of a parameter name that make its value a secret.
const SECRET_WORDS: [&str; 6] = ["pass", "secret", "key", "token", "community", "credential"];
/// What a secret is replaced with.
const REDACTED: &str = "***";
/// Exit code of `status` for a target that is powered on.
const STATUS_ON: i32 = 0;
/// Exit code of `status` for a target that is powered off.
const STATUS_OFF: i32 = 2;
/// Directories searched after `PATH`: where Debian's fence-agents package puts its agents.
const SYSTEM_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];

/// Whether the value of a fence agent parameter named `key` is a secret.
pub fn is_secret_key(key: &str) -> bool {
    SECRET_WORDS.iter().any(|w| key.contains(w))
}

/// What a successful `status` found, from its [`StepOutput::detail`]: `"on"` or `"off"`.
pub fn fence_status_power(detail: &str) -> Option<&'static str> {
    if detail.starts_with("target on ") {
        Some("on")
    } else if detail.starts_with("target off ") {
        Some("off")
    } else {
        None
    }
}

/// Runs `step`, looking for the agent in `extra_dirs` before `PATH`; bounded by `timeout`.
pub(super) async fn run(
    step: &FenceAgentStep,
    timeout: Duration,
    extra_dirs: &[PathBuf],
) -> Result<StepOutput, StepError> {
    let started = Instant::now();
    let agent = step.agent.as_str();
    let failed = |reason: String| StepError::Failed { reason, output_tail: String::new() };
    let program = find_agent(agent, extra_dirs).ok_or_else(|| {
        failed(format!(
            "fence agent {agent} not found in PATH, /usr/sbin or /sbin; install it on every \
             node that may run this step (Debian: apt-get install fence-agents)"
        ))
    })?;
    let input = match tokio::time::timeout(timeout, AgentInput::read(step)).await {
        Err(_) => return Err(StepError::Timeout { after: timeout, output_tail: String::new() }),
        Ok(input) => input.map_err(failed)?,
    };
    let mut run =
        Run { program: &program, agent, input: &input, started, timeout, output: String::new() };

    let first = run.invoke(step.action).await?;
    let name = action_name(step.action);
    if step.action == FenceAction::Status {
        return match first.status.code() {
            Some(code @ (STATUS_ON | STATUS_OFF)) => {
                let power = if code == STATUS_ON { "on" } else { "off" };
                Ok(run.output(format!(
                    "target {power} ({agent} status: exit {code} after {})",
                    edge::fmt_ms(started.elapsed())
                )))
            }
            _ => Err(run.failed(format!(
                "{agent} status: {}{} (status answers 0 for on, 2 for off; anything else is the \
                 agent failing)",
                exec::describe_status(first.status),
                first.why()
            ))),
        };
    }
    if !first.status.success() {
        return Err(run.failed(format!(
            "{agent} {name}: {}{}",
            exec::describe_status(first.status),
            first.why()
        )));
    }
    if step.action != FenceAction::Off {
        return Ok(
            run.output(format!("{agent} {name}: exit 0 after {}", edge::fmt_ms(started.elapsed())))
        );
    }
    // An agent's `off` exits 0 once it sent the command; the target is off when status says so.
    let confirm = run.invoke(FenceAction::Status).await?;
    match confirm.status.code() {
        Some(STATUS_OFF) => Ok(run.output(format!(
            "target off ({agent} off: exit 0, then status: exit 2, after {})",
            edge::fmt_ms(started.elapsed())
        ))),
        Some(STATUS_ON) => Err(run.failed(format!(
            "{agent} off: the agent reported the target still on after off (status exit 0); \
             check the agent's parameters (plug, ip) name the right machine and that its power \
             controller obeys"
        ))),
        _ => Err(run.failed(format!(
            "{agent} off: exit 0, but the status that confirms it failed: {}{}",
            exec::describe_status(confirm.status),
            confirm.why()
        ))),
    }
}

fn action_name(action: FenceAction) -> &'static str {
    match action {
        FenceAction::Off => "off",
        FenceAction::On => "on",
        FenceAction::Reboot => "reboot",
        FenceAction::Status => "status",
    }
}

/// The agent's path: the first `dir/agent` that is a file, in `extra_dirs`, `PATH`, then the
/// system dirs. `None` for a name that is not a bare file name.
fn find_agent(agent: &str, extra_dirs: &[PathBuf]) -> Option<PathBuf> {
    if agent.is_empty() || agent.contains('/') || agent.starts_with('.') {
        return None;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    extra_dirs
        .iter()
        .cloned()
        .chain(std::env::split_paths(&path))
        .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(agent))
        .find(|candidate| candidate.is_file())
}

/// The agent's parameters as sent, and the values to keep out of everything shown.
struct AgentInput {
    params: Vec<(String, String)>,
    /// Longest first, so a secret containing another is replaced whole.
    secrets: Vec<String>,
}

impl AgentInput {
    /// The step's parameters, `*_file` ones replaced by their file's content.
    async fn read(step: &FenceAgentStep) -> Result<AgentInput, String> {
        let agent = &step.agent;
        let mut params = Vec::with_capacity(step.params.len());
        let mut secrets = Vec::new();
        for (key, value) in &step.params {
            if key == "action" {
                return Err(format!(
                    "fence agent {agent}: params must not set action; use the step's action key"
                ));
            }
            match key.strip_suffix("_file").filter(|k| !k.is_empty()) {
                Some(name) => {
                    let content = read_param_file(Path::new(value))
                        .await
                        .map_err(|why| format!("fence agent {agent}: {key} {value}: {why}"))?;
                    secrets.push(content.clone());
                    params.push((name.to_string(), content));
                }
                None => {
                    if is_secret_key(key) {
                        secrets.push(value.clone());
                    }
                    params.push((key.clone(), value.clone()));
                }
            }
        }
        secrets.retain(|s| !s.is_empty());
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Ok(AgentInput { params, secrets })
    }

    /// The `key=value` lines an agent reads on stdin, `action` last.
    fn stdin(&self, action: FenceAction) -> Vec<u8> {
        let mut text = String::new();
        for (key, value) in &self.params {
            text.push_str(key);
            text.push('=');
            text.push_str(value);
            text.push('\n');
        }
        text.push_str("action=");
        text.push_str(action_name(action));
        text.push('\n');
        text.into_bytes()
    }

    /// `bytes` as text with every secret replaced.
    fn redact(&self, bytes: &[u8]) -> String {
        let mut text = String::from_utf8_lossy(bytes).into_owned();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED);
            }
        }
        text
    }

    fn longest_secret(&self) -> usize {
        self.secrets.first().map_or(0, String::len)
    }
}

/// A `*_file` parameter's content without its trailing line break; one line of UTF-8.
async fn read_param_file(path: &Path) -> Result<String, String> {
    let file = tokio::fs::File::open(path).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => {
            "permission denied; let drover's user read it".to_string()
        }
        _ => format!("cannot open it: {e}"),
    })?;
    let mut bytes = Vec::new();
    file.take(PARAM_FILE_MAX + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > PARAM_FILE_MAX {
        return Err(format!("larger than {PARAM_FILE_MAX} bytes; it should hold one value"));
    }
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.contains(['\n', '\r']) {
        return Err("holds more than one line; an agent reads one key=value per line".into());
    }
    Ok(value.to_string())
}

/// The runs of one step: the shared deadline and the output kept so far (redacted).
struct Run<'a> {
    program: &'a Path,
    agent: &'a str,
    input: &'a AgentInput,
    started: Instant,
    timeout: Duration,
    output: String,
}

/// How one agent run ended.
struct Ended {
    status: ExitStatus,
    /// The last line of stderr (else stdout), redacted.
    last_line: String,
}

impl Ended {
    /// `": <last line>"`, or nothing when the agent printed nothing.
    fn why(&self) -> String {
        if self.last_line.is_empty() {
            String::new()
        } else {
            format!(": {}", self.last_line)
        }
    }
}

impl Run<'_> {
    /// Runs the agent once with `action`, within what is left of the step's timeout.
    async fn invoke(&mut self, action: FenceAction) -> Result<Ended, StepError> {
        let left = self.timeout.saturating_sub(self.started.elapsed());
        if left.is_zero() {
            return Err(self.timed_out());
        }
        let command = [self.program.to_string_lossy().into_owned()];
        let spec = exec::ExecSpec {
            command: &command,
            env: Vec::new(),
            timeout: left,
            // Room to redact a secret cut by the start of the tail before it is cut again.
            output_cap: OUTPUT_TAIL_MAX + self.input.longest_secret(),
        };
        let stdin = self.input.stdin(action);
        let name = action_name(action);
        match exec::run_with_stdin(spec, &stdin).await {
            Ok(out) => {
                let (stdout, stderr) =
                    (self.input.redact(&out.stdout), self.input.redact(&out.stderr));
                let status = exec::describe_status(out.status);
                self.keep(&format!("# {} action={name}: {status}\n{stdout}{stderr}", self.agent));
                let mut last_line = edge::last_line(&stderr, 200);
                if last_line.is_empty() {
                    last_line = edge::last_line(&stdout, 200);
                }
                Ok(Ended { status: out.status, last_line })
            }
            Err(exec::ExecError::TimedOut { stdout, stderr, .. }) => {
                let (stdout, stderr) = (self.input.redact(&stdout), self.input.redact(&stderr));
                self.keep(&format!("# {} action={name}: stopped\n{stdout}{stderr}", self.agent));
                Err(self.timed_out())
            }
            Err(err) => Err(self.failed(format!("fence agent {}: {}", self.agent, err.describe()))),
        }
    }

    fn keep(&mut self, text: &str) {
        if !self.output.is_empty() && !self.output.ends_with('\n') {
            self.output.push('\n');
        }
        self.output.push_str(text);
    }

    fn tail(&self) -> String {
        edge::text_tail(self.output.as_bytes(), OUTPUT_TAIL_MAX)
    }

    fn timed_out(&self) -> StepError {
        StepError::Timeout { after: self.timeout, output_tail: self.tail() }
    }

    fn failed(&self, reason: String) -> StepError {
        StepError::Failed { reason, output_tail: self.tail() }
    }

    fn output(&self, detail: String) -> StepOutput {
        StepOutput { detail, output_tail: self.tail() }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn step(params: &[(&str, &str)]) -> FenceAgentStep {
        FenceAgentStep {
            agent: "fence_test".into(),
            action: FenceAction::Off,
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn secret_names() {
        for key in ["password", "passwd", "snmp_priv_passwd", "community", "api_key", "token"] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in ["ip", "username", "plug", "lanplus", "port"] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[tokio::test]
    async fn file_params_are_read_and_every_secret_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "s3cr3t-pw\n").unwrap();
        let pass = pass.display().to_string();
        let input = AgentInput::read(&step(&[
            ("ip", "10.0.0.9"),
            ("password_file", &pass),
            ("community", "pub"),
        ]))
        .await
        .unwrap();
        assert_eq!(
            String::from_utf8(input.stdin(FenceAction::Status)).unwrap(),
            "community=pub\nip=10.0.0.9\npassword=s3cr3t-pw\naction=status\n"
        );
        assert_eq!(
            input.redact(b"ignoring 'password=s3cr3t-pw' and community pub at 10.0.0.9"),
            "ignoring 'password=***' and community *** at 10.0.0.9"
        );

        std::fs::write(dir.path().join("two"), "a\nb\n").unwrap();
        let two = dir.path().join("two").display().to_string();
        let err = AgentInput::read(&step(&[("password_file", &two)])).await.err().unwrap();
        assert!(err.contains("more than one line"), "{err}");
        let err =
            AgentInput::read(&step(&[("password_file", "/nonexistent/p")])).await.err().unwrap();
        assert_eq!(err, "fence agent fence_test: password_file /nonexistent/p: no such file");
        let err = AgentInput::read(&step(&[("action", "on")])).await.err().unwrap();
        assert!(err.contains("must not set action"), "{err}");
    }

    #[test]
    fn power_is_read_from_the_status_detail() {
        assert_eq!(fence_status_power("target on (fence_x status: exit 0 after 5ms)"), Some("on"));
        assert_eq!(
            fence_status_power("target off (fence_x status: exit 2 after 5ms)"),
            Some("off")
        );
        assert_eq!(fence_status_power("fence_x on: exit 0 after 5ms"), None);
    }

    #[test]
    fn agents_are_bare_names() {
        assert_eq!(find_agent("../fence_x", &[]), None);
        assert_eq!(find_agent("", &[]), None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fence_here"), "").unwrap();
        assert_eq!(
            find_agent("fence_here", &[dir.path().to_path_buf()]),
            Some(dir.path().join("fence_here"))
        );
    }
}
