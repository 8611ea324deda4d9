//! Bounded child processes: run a program without a shell, keep the tails of its output, kill it
//! (and everything it started) when it runs out of time or its caller gives up.
//!
//! The child gets its own process group, so a timeout or a dropped future kills the whole group
//! (`sh -c 'sleep 10'` included), not only the direct child. Output is read while the child
//! runs, keeping the *last* `output_cap` bytes of each stream (the end of a failing script says
//! why it failed). When the child exits but something it left in the background still holds
//! its stdout or stderr open (`nohup app &`), reading stops after [`DRAIN_GRACE`] instead of
//! waiting for that process to end; the background process is left alone.
//!
//! The child also dies with the node (`PR_SET_PDEATHSIG`): a step whose controller was killed
//! mid-step would otherwise go on unsupervised, past its timeout, while the leader reroutes the
//! step to another member of the site. What the child left in the background survives (the
//! death signal is not inherited across fork).
//!
//! [`run_with_stdin`] also feeds the child a few bytes on stdin (a fence agent's `key=value`
//! lines), written while it runs and then closed, all within the same timeout.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// How long output is still read after the child exited (see the module doc).
pub(crate) const DRAIN_GRACE: Duration = Duration::from_millis(250);

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct ExecSpec<'a> {
    /// Program and arguments; the program is looked up in `PATH` unless it has a `/`.
    pub command: &'a [String],
    /// Variables added to the node's own environment.
    pub env: Vec<(String, String)>,
    /// The child is killed after this long.
    pub timeout: Duration,
    /// Bytes kept from the end of stdout and of stderr, each.
    pub output_cap: usize,
}

/// A run that finished within its timeout (whatever its exit status).
#[derive(Debug)]
pub(crate) struct ExecOutcome {
    /// How the child ended.
    pub status: ExitStatus,
    /// The last `output_cap` bytes of stdout.
    pub stdout: Vec<u8>,
    /// The last `output_cap` bytes of stderr.
    pub stderr: Vec<u8>,
    /// From spawn to exit.
    pub elapsed: Duration,
}

/// A run that did not finish.
#[derive(Debug)]
pub(crate) enum ExecError {
    /// The command list is empty (validation prevents it; kept so this is total).
    Empty,
    /// The program could not be started: not found, not executable...
    Spawn { program: String, err: io::Error },
    /// Waiting for the child failed (an OS error, not the child's).
    Wait(io::Error),
    /// The child was killed after `after`; its output up to then.
    TimedOut { after: Duration, stdout: Vec<u8>, stderr: Vec<u8> },
}

impl ExecError {
    /// One line saying what went wrong, naming the program where it helps.
    pub(crate) fn describe(&self) -> String {
        match self {
            ExecError::Empty => "empty command".to_string(),
            ExecError::Spawn { program, err } => match err.kind() {
                io::ErrorKind::NotFound => format!("command not found: {program}"),
                io::ErrorKind::PermissionDenied => {
                    format!("cannot run {program}: permission denied (is it executable?)")
                }
                _ => format!("cannot run {program}: {err}"),
            },
            ExecError::Wait(err) => format!("waiting for the command failed: {err}"),
            ExecError::TimedOut { after, .. } => {
                format!("timed out after {}", super::fmt_ms(*after))
            }
        }
    }
}

/// Describes how a child ended: `exit 3`, `killed by signal 9`.
pub(crate) fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "ended without a status".to_string(),
    }
}

/// Runs `spec` to completion or timeout. stdin is `/dev/null`.
pub(crate) async fn run(spec: ExecSpec<'_>) -> Result<ExecOutcome, ExecError> {
    run_inner(spec, None).await
}

/// Runs `spec` like [`run`], writing `input` to the child's stdin and then closing it. A child
/// that exits without reading it all is not an error (its exit status says how it went).
pub(crate) async fn run_with_stdin(
    spec: ExecSpec<'_>,
    input: &[u8],
) -> Result<ExecOutcome, ExecError> {
    run_inner(spec, Some(input)).await
}

async fn run_inner(spec: ExecSpec<'_>, input: Option<&[u8]>) -> Result<ExecOutcome, ExecError> {
    let (program, args) = spec.command.split_first().ok_or(ExecError::Empty)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and nothing else runs between fork and exec. The
    // signal follows the thread that forked: a runtime worker thread, alive as long as the node.
    #[cfg(target_os = "linux")]
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child =
        cmd.spawn().map_err(|err| ExecError::Spawn { program: program.clone(), err })?;
    // Armed until the child is reaped: a timeout or a dropped future kills the whole group.
    let mut group = GroupKiller { pgid: child.id() };
    let mut stdout_pipe = child.stdout.take();
    let mut stderr_pipe = child.stderr.take();
    let stdin_pipe = child.stdin.take();

    let mut stdout = Tail::new(spec.output_cap);
    let mut stderr = Tail::new(spec.output_cap);
    let mut status = None;
    let work = async {
        let reads = async {
            tokio::join!(
                feed(stdin_pipe, input.unwrap_or_default()),
                stdout.fill(stdout_pipe.as_mut()),
                stderr.fill(stderr_pipe.as_mut())
            )
        };
        tokio::pin!(reads);
        let mut reads_done = false;
        let exited = loop {
            tokio::select! {
                s = child.wait() => break s,
                _ = &mut reads, if !reads_done => reads_done = true,
            }
        };
        if let Ok(s) = &exited {
            status = Some(*s);
        }
        if !reads_done {
            let _ = tokio::time::timeout(DRAIN_GRACE, &mut reads).await;
        }
        exited
    };
    let finished = tokio::time::timeout(spec.timeout, work).await;
    let elapsed = started.elapsed();
    match (finished, status) {
        (Ok(Ok(status)), _) | (Err(_), Some(status)) => {
            group.disarm();
            Ok(ExecOutcome {
                status,
                stdout: stdout.into_vec(),
                stderr: stderr.into_vec(),
                elapsed,
            })
        }
        (Ok(Err(err)), _) => Err(ExecError::Wait(err)),
        (Err(_), None) => {
            group.kill();
            let _ = child.start_kill();
            // Reap it so no zombie is left; SIGKILL makes this quick.
            if tokio::time::timeout(Duration::from_secs(1), child.wait()).await.is_ok() {
                group.disarm();
            }
            Err(ExecError::TimedOut {
                after: spec.timeout,
                stdout: stdout.into_vec(),
                stderr: stderr.into_vec(),
            })
        }
    }
}

/// Writes `input` to the child's stdin, then closes it so the child sees the end of it.
async fn feed(pipe: Option<tokio::process::ChildStdin>, input: &[u8]) {
    let Some(mut pipe) = pipe else { return };
    // A child that exits (or closes stdin) early makes this fail with EPIPE: nothing to do.
    let _ = pipe.write_all(input).await;
    let _ = pipe.shutdown().await;
}

/// Kills a child's process group when dropped while armed.
struct GroupKiller {
    pgid: Option<u32>,
}

impl GroupKiller {
    fn kill(&self) {
        if let Some(pgid) = self.pgid.and_then(|p| i32::try_from(p).ok()).filter(|&p| p > 0) {
            // SAFETY: kill(2) has no memory effects; a negative pid addresses the process group
            // the child leads (it was spawned with process_group(0), so its pgid is its pid).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `cap` bytes of a stream.
struct Tail {
    buf: Vec<u8>,
    cap: usize,
}

impl Tail {
    fn new(cap: usize) -> Tail {
        Tail { buf: Vec::new(), cap }
    }

    async fn fill<R: AsyncRead + Unpin>(&mut self, pipe: Option<&mut R>) {
        let Some(pipe) = pipe else { return };
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    if self.buf.len() > self.cap {
                        let excess = self.buf.len() - self.cap;
                        self.buf.drain(..excess);
                    }
                }
            }
        }
    }

    fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    fn spec(command: &[String], timeout_ms: u64) -> ExecSpec<'_> {
        ExecSpec {
            command,
            env: vec![("X_TEST".into(), "42".into())],
            timeout: Duration::from_millis(timeout_ms),
            output_cap: 16,
        }
    }

    #[tokio::test]
    async fn keeps_the_tail_of_each_stream_and_passes_env() {
        let cmd =
            sh("printf 'aaaaaaaaaaaaaaaaaaaaXend-of-out'; printf \"err $X_TEST\" >&2; exit 3");
        let out = run(spec(&cmd, 5000)).await.unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"aaaaaXend-of-out");
        assert_eq!(out.stderr, b"err 42");
    }

    #[tokio::test]
    async fn background_process_holding_stdout_does_not_block() {
        let cmd = sh("sleep 5 & echo started");
        let t = Instant::now();
        let out = run(spec(&cmd, 4000)).await.unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, b"started\n");
        assert!(t.elapsed() < Duration::from_secs(3), "waited {:?}", t.elapsed());
    }

    #[tokio::test]
    async fn stdin_is_fed_and_closed() {
        let cmd = sh("while read -r line; do echo \"got $line\"; done; echo eof");
        let spec = ExecSpec { output_cap: 64, ..spec(&cmd, 5000) };
        let out = run_with_stdin(spec, b"a=1\nb=2\n").await.unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "got a=1\ngot b=2\neof\n");
    }

    #[tokio::test]
    async fn a_child_that_never_reads_stdin_still_times_out() {
        // More than a pipe holds, so the write blocks until the child is killed.
        let cmd = sh("sleep 10");
        let t = Instant::now();
        let err = run_with_stdin(spec(&cmd, 300), &[b'x'; 200_000]).await.unwrap_err();
        assert!(matches!(err, ExecError::TimedOut { .. }), "{err:?}");
        assert!(t.elapsed() < Duration::from_secs(3), "waited {:?}", t.elapsed());
    }

    #[tokio::test]
    async fn missing_program_is_named() {
        let cmd = vec!["/nonexistent/drover-no-such-binary".to_string()];
        let err = run(spec(&cmd, 1000)).await.unwrap_err();
        assert_eq!(err.describe(), "command not found: /nonexistent/drover-no-such-binary");
    }
}
