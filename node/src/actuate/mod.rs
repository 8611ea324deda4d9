//! Actuators: carry out one runbook step (DESIGN.md 5) and say how it went.
//!
//! ```text
//!  workflow driver ── RunStep{step, StepContext} ──▶ dyn Actuator::run ──▶ Result<StepOutput, StepError>
//!                                                     ├─ RealActuator   (this module: processes,
//!                                                     │                  webhooks, sleeps, fence
//!                                                     │                  agents, HAProxy)
//!                                                     └─ simulated one  (drover-sim, later)
//! ```
//!
//! An actuator runs one *attempt*, bounded by the step's `timeout`; retries, backoff,
//! `on_failure`, and refusing steps of a stale epoch are the driver's (it knows the committed
//! epoch; [`StepError::Refused`] is how it says so). Steps must be idempotent: after a leader
//! change the same step may run again.
//!
//! # Placeholders
//!
//! An exec step's `env` values, and a webhook's URL, header values and body, may use
//! `{epoch}`, `{service}`, `{from_site}`, `{to_site}` and `{recovery_point}` (empty when there
//! is none); anything else in braces is left as written. In a webhook body that looks like JSON
//! (its first non-blank character is `{` or `[`), substituted values are JSON-string-escaped
//! (without quotes added: write `"service": "{service}"`, and `"epoch": {epoch}` for a number),
//! so a value with a quote or backslash cannot break the document; such a body is sent with
//! `content-type: application/json` unless the step sets a content type. Other bodies, URLs
//! and headers get the values as they are.

pub mod dns;
mod fence;
mod haproxy;
mod real;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::spec::{Step, StepAction};

pub use fence::{fence_status_power, is_secret_key};
pub use real::RealActuator;

/// Bytes of output (stdout then stderr, or a response body) kept in results and errors.
pub const OUTPUT_TAIL_MAX: usize = 4 * 1024;

/// What a step is run for: the workflow it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepContext {
    /// The service failing over.
    pub service: String,
    /// The epoch the step belongs to (the fencing token of the activation in progress).
    pub epoch: u64,
    /// The site the service moves away from.
    pub from_site: String,
    /// The site the service moves to.
    pub to_site: String,
    /// The recovery point chosen for the activation, if any.
    pub recovery_point: Option<String>,
    /// Whether this is a test failover (DESIGN.md 5).
    pub test: bool,
}

impl StepContext {
    /// The `DROVER_*` variables every exec step gets.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DROVER_SERVICE".into(), self.service.clone()),
            ("DROVER_EPOCH".into(), self.epoch.to_string()),
            ("DROVER_FROM_SITE".into(), self.from_site.clone()),
            ("DROVER_TO_SITE".into(), self.to_site.clone()),
            ("DROVER_RECOVERY_POINT".into(), self.recovery_point.clone().unwrap_or_default()),
            ("DROVER_TEST".into(), if self.test { "1" } else { "0" }.into()),
        ]
    }

    /// `template` with the placeholders replaced (see the module doc); with `json`, the
    /// substituted values are JSON-string-escaped.
    pub fn expand(&self, template: &str, json: bool) -> String {
        let epoch = self.epoch.to_string();
        let values: [(&str, &str); 5] = [
            ("epoch", &epoch),
            ("service", &self.service),
            ("from_site", &self.from_site),
            ("to_site", &self.to_site),
            ("recovery_point", self.recovery_point.as_deref().unwrap_or("")),
        ];
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let known = after.find('}').and_then(|close| {
                let name = &after[..close];
                values.iter().find(|(n, _)| *n == name).map(|(_, v)| (close, *v))
            });
            match known {
                Some((close, value)) => {
                    if json {
                        out.push_str(&json_escape(value));
                    } else {
                        out.push_str(value);
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// `value` escaped for the inside of a JSON string (no surrounding quotes).
fn json_escape(value: &str) -> String {
    let quoted = serde_json::Value::String(value.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// Whether a body template is treated as JSON (see the module doc).
pub fn looks_like_json(body: &str) -> bool {
    matches!(body.trim_start().chars().next(), Some('{' | '['))
}

/// What a successful step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutput {
    /// One line: `exit 0 after 1200ms`, `HTTP 204 from POST https://...`, `waited 5000ms`.
    pub detail: String,
    /// The last [`OUTPUT_TAIL_MAX`] bytes of stdout then stderr, or of the response body.
    pub output_tail: String,
}

/// Why a step attempt did not succeed. Display strings are one line and say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The attempt ran out of time and was stopped (a process is killed with its children).
    #[error(
        "step timed out after {}ms and was stopped; raise the step's timeout if it needs longer, \
         or find out why it hangs (see the output tail)",
        after.as_millis()
    )]
    Timeout {
        /// The step's timeout.
        after: Duration,
        /// Output up to the timeout.
        output_tail: String,
    },
    /// The attempt ran and failed.
    #[error("step failed: {reason}; fix the cause, then retry the step")]
    Failed {
        /// What failed: `exec /opt/st/bin/start_all: exit 1: <last stderr line>`.
        reason: String,
        /// stdout then stderr, or the response body.
        output_tail: String,
    },
    /// The step was not run, e.g. its epoch is no longer the current one.
    #[error("step refused: {reason}")]
    Refused {
        /// Why, and what to do about it.
        reason: String,
    },
    /// A read-back ([`Actuator::verify`]) could not reach what the step acts on (e.g. no
    /// HAProxy socket during a reload): nothing was read, so nothing is known about drift;
    /// the next check tries again.
    #[error("{reason}")]
    Unreachable {
        /// What could not be reached, and what to check.
        reason: String,
    },
    /// This actuator cannot run steps of this kind.
    #[error("step kind {kind} is not available in this build yet")]
    Unsupported {
        /// The step kind, as in `cluster.toml`.
        kind: &'static str,
    },
}

impl StepError {
    /// The output captured before the failure, if any.
    pub fn output_tail(&self) -> &str {
        match self {
            StepError::Timeout { output_tail, .. } | StepError::Failed { output_tail, .. } => {
                output_tail
            }
            StepError::Refused { .. }
            | StepError::Unreachable { .. }
            | StepError::Unsupported { .. } => "",
        }
    }
}

/// The future an [`Actuator`] returns.
pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<StepOutput, StepError>> + Send + 'a>>;

/// Carries out one attempt of a runbook step. Implemented by [`RealActuator`] and by the
/// simulator's fake; the workflow driver only sees this trait.
pub trait Actuator: Send + Sync {
    /// Runs one attempt of `step` for `ctx`, bounded by `step.timeout`. Dropping the future
    /// cancels the attempt (a child process is killed).
    fn run<'a>(&'a self, step: &'a Step, ctx: &'a StepContext) -> StepFuture<'a>;

    /// Reads back whether the effect of `step`, as run for `ctx`, still holds, changing
    /// nothing: `Ok` with one line of what was found when it does; [`StepError::Failed`]
    /// naming what differs (drift) when it does not; [`StepError::Unsupported`] for a step
    /// whose effect cannot be read back (see [`verifiable`]). Bounded by `step.timeout`.
    fn verify<'a>(&'a self, step: &'a Step, _ctx: &'a StepContext) -> StepFuture<'a> {
        let kind = step.action.kind();
        Box::pin(async move { Err(StepError::Unsupported { kind }) })
    }
}

/// Whether the effect of a step of this kind can be read back ([`Actuator::verify`]): the
/// traffic steps, `dns` (records and epoch) and `haproxy` (server states and weights).
pub fn verifiable(action: &StepAction) -> bool {
    matches!(action, StepAction::Dns(_) | StepAction::Haproxy(_))
}
