//! The real actuator: child processes, webhooks and sleeps on this machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use hyper::Method;

use super::{
    fence, haproxy, looks_like_json, Actuator, StepContext, StepError, StepFuture, StepOutput,
    OUTPUT_TAIL_MAX,
};
use crate::edge::{self, exec, http};
use crate::spec::{ExecStep, HttpStep, Step, StepAction};

/// Bytes of a webhook's response body that are read.
const WEBHOOK_BODY_CAP: usize = 64 * 1024;

/// Runs `exec`, `http`, `wait`, `dns`, `fence_agent` and `haproxy` steps for real. `probe`
/// steps are the leader's own (they need the observers' reports).
#[derive(Debug, Clone)]
pub struct RealActuator {
    http: http::HttpClient,
    /// Searched for fence agents before `PATH`, `/usr/sbin` and `/sbin`.
    fence_agent_dirs: Vec<PathBuf>,
}

impl RealActuator {
    /// An actuator sharing the process-wide HTTP client.
    pub fn new() -> RealActuator {
        RealActuator { http: http::client().clone(), fence_agent_dirs: Vec::new() }
    }

    /// This actuator, looking for fence agents in `dirs` (in order) before `PATH`,
    /// `/usr/sbin` and `/sbin`: for agents installed outside the system's directories.
    pub fn with_fence_agent_dirs(mut self, dirs: Vec<PathBuf>) -> RealActuator {
        self.fence_agent_dirs = dirs;
        self
    }
}

impl Default for RealActuator {
    fn default() -> Self {
        RealActuator::new()
    }
}

impl Actuator for RealActuator {
    fn run<'a>(&'a self, step: &'a Step, ctx: &'a StepContext) -> StepFuture<'a> {
        Box::pin(async move {
            let kind = step.action.kind();
            let result = match &step.action {
                StepAction::Exec(e) => run_exec(e, step.timeout, ctx).await,
                StepAction::Http(h) => self.run_http(h, step.timeout, ctx).await,
                StepAction::Wait(w) => run_wait(w.duration, step.timeout).await,
                StepAction::Dns(d) => super::dns::run(d, step.timeout, ctx).await,
                StepAction::FenceAgent(f) => {
                    fence::run(f, step.timeout, &self.fence_agent_dirs).await
                }
                StepAction::Haproxy(h) => haproxy::run(h, step.timeout).await,
                StepAction::Probe(_) => Err(StepError::Unsupported { kind }),
            };
            match &result {
                Ok(out) => tracing::info!(
                    service = %ctx.service, epoch = ctx.epoch, kind, detail = %out.detail,
                    "step succeeded"
                ),
                Err(err) => tracing::warn!(
                    service = %ctx.service, epoch = ctx.epoch, kind, cause = %err,
                    "step did not succeed"
                ),
            }
            result
        })
    }

    fn verify<'a>(&'a self, step: &'a Step, ctx: &'a StepContext) -> StepFuture<'a> {
        Box::pin(async move {
            let kind = step.action.kind();
            let result = match &step.action {
                StepAction::Haproxy(h) => haproxy::verify(h, step.timeout).await,
                StepAction::Dns(d) => super::dns::verify(d, step.timeout, ctx).await,
                _ => Err(StepError::Unsupported { kind }),
            };
            match &result {
                Ok(out) => tracing::debug!(
                    service = %ctx.service, epoch = ctx.epoch, kind, detail = %out.detail,
                    "step's effect holds"
                ),
                Err(err) => tracing::warn!(
                    service = %ctx.service, epoch = ctx.epoch, kind, cause = %err,
                    "step's effect does not hold (drift)"
                ),
            }
            result
        })
    }
}

async fn run_exec(
    step: &ExecStep,
    timeout: Duration,
    ctx: &StepContext,
) -> Result<StepOutput, StepError> {
    let program = step.command.first().map_or("", String::as_str);
    let mut env: Vec<(String, String)> =
        step.env.iter().map(|(k, v)| (k.clone(), ctx.expand(v, false))).collect();
    // Last, so a step cannot override the workflow's own values.
    env.extend(ctx.env());
    let spec = exec::ExecSpec { command: &step.command, env, timeout, output_cap: OUTPUT_TAIL_MAX };
    match exec::run(spec).await {
        Ok(out) => {
            let output_tail = combined_tail(&out.stdout, &out.stderr);
            let status = exec::describe_status(out.status);
            if out.status.success() {
                Ok(StepOutput {
                    detail: format!("{status} after {}", edge::fmt_ms(out.elapsed)),
                    output_tail,
                })
            } else {
                let why = edge::last_line(&String::from_utf8_lossy(&out.stderr), 200);
                let reason = if why.is_empty() {
                    format!("exec {program}: {status}")
                } else {
                    format!("exec {program}: {status}: {why}")
                };
                Err(StepError::Failed { reason, output_tail })
            }
        }
        Err(exec::ExecError::TimedOut { after, stdout, stderr }) => {
            Err(StepError::Timeout { after, output_tail: combined_tail(&stdout, &stderr) })
        }
        Err(err) => Err(StepError::Failed {
            reason: format!("exec: {}", err.describe()),
            output_tail: String::new(),
        }),
    }
}

impl RealActuator {
    async fn run_http(
        &self,
        step: &HttpStep,
        timeout: Duration,
        ctx: &StepContext,
    ) -> Result<StepOutput, StepError> {
        let started = Instant::now();
        let method = Method::from_bytes(step.method.as_bytes()).map_err(|_| StepError::Failed {
            reason: format!("http: {:?} is not an HTTP method", step.method),
            output_tail: String::new(),
        })?;
        let url = ctx.expand(&step.url, false);
        let mut headers: Vec<(String, String)> =
            step.headers.iter().map(|(k, v)| (k.clone(), ctx.expand(v, false))).collect();
        let body = step.body.as_deref().map(|template| {
            let json = looks_like_json(template);
            let has_type = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
            if json && !has_type {
                headers.push(("content-type".into(), "application/json".into()));
            }
            Bytes::from(ctx.expand(template, json))
        });
        let what = format!("{method} {url}");
        let request = http::Outgoing { method, url: url.clone(), headers, body };
        let answer =
            match tokio::time::timeout(timeout, self.http.send(request, WEBHOOK_BODY_CAP)).await {
                Err(_) => {
                    return Err(StepError::Timeout { after: timeout, output_tail: String::new() })
                }
                Ok(Err(err)) => {
                    return Err(StepError::Failed {
                        reason: format!("http {what}: {err}"),
                        output_tail: String::new(),
                    })
                }
                Ok(Ok(answer)) => answer,
            };
        let output_tail = edge::text_tail(&answer.body, OUTPUT_TAIL_MAX);
        if answer.status != step.expect_status {
            return Err(StepError::Failed {
                reason: format!(
                    "http {what}: answered HTTP {} (expected {})",
                    answer.status, step.expect_status
                ),
                output_tail,
            });
        }
        Ok(StepOutput {
            detail: format!(
                "HTTP {} from {what} after {}",
                answer.status,
                edge::fmt_ms(started.elapsed())
            ),
            output_tail,
        })
    }
}

async fn run_wait(duration: Duration, timeout: Duration) -> Result<StepOutput, StepError> {
    if duration > timeout {
        // Validation rejects this; do not sleep for nothing if it slips through.
        return Err(StepError::Failed {
            reason: format!(
                "wait: {} is longer than the step timeout {}",
                edge::fmt_ms(duration),
                edge::fmt_ms(timeout)
            ),
            output_tail: String::new(),
        });
    }
    tokio::time::sleep(duration).await;
    Ok(StepOutput {
        detail: format!("waited {}", edge::fmt_ms(duration)),
        output_tail: String::new(),
    })
}

/// The last [`OUTPUT_TAIL_MAX`] bytes of stdout followed by stderr.
fn combined_tail(stdout: &[u8], stderr: &[u8]) -> String {
    let mut all = Vec::with_capacity(stdout.len() + stderr.len());
    all.extend_from_slice(stdout);
    all.extend_from_slice(stderr);
    edge::text_tail(&all, OUTPUT_TAIL_MAX)
}
