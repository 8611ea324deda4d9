//! Actuator tests: real processes and a local webhook receiver (127.0.0.1 only).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::any;
use axum::Router;

use super::*;
use crate::spec::{ExecStep, HttpStep, OnFailure, ProbeStep, RunOn, StepAction, WaitStep};

fn ctx() -> StepContext {
    StepContext {
        service: "file-transfer".into(),
        epoch: 7,
        from_site: "prod".into(),
        to_site: "dr".into(),
        recovery_point: Some("snap-2024\"01".into()),
        test: false,
    }
}

fn step(action: StepAction, timeout_ms: u64) -> Step {
    Step {
        run_on: RunOn::Any,
        timeout: Duration::from_millis(timeout_ms),
        retries: 0,
        backoff: Duration::from_secs(1),
        on_failure: OnFailure::Abort,
        action,
    }
}

fn sh(script: &str, env: &[(&str, &str)]) -> StepAction {
    StepAction::Exec(ExecStep {
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    })
}

#[test]
fn placeholders_expand_and_json_escape() {
    let c = ctx();
    assert_eq!(
        c.expand("{service}@{to_site} from {from_site} e{epoch} rp={recovery_point}", false),
        "file-transfer@dr from prod e7 rp=snap-2024\"01"
    );
    assert_eq!(c.expand("{unknown} {epoch", false), "{unknown} {epoch");
    assert_eq!(c.expand("{{epoch}}", false), "{7}");
    let body = r#"{"epoch": {epoch}, "rp": "{recovery_point}"}"#;
    assert!(looks_like_json(body));
    let v: serde_json::Value = serde_json::from_str(&c.expand(body, true)).unwrap();
    assert_eq!(v, serde_json::json!({"epoch": 7, "rp": "snap-2024\"01"}));
    assert!(!looks_like_json("service={service}"));
    let none = StepContext { recovery_point: None, ..ctx() };
    assert_eq!(none.expand("[{recovery_point}]", false), "[]");
}

#[tokio::test]
async fn exec_step_gets_drover_env_and_expanded_env() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let ledger_s = ledger.display().to_string();
    let script = "echo \"$DROVER_EPOCH $DROVER_SERVICE $DROVER_FROM_SITE>$DROVER_TO_SITE \
                  rp=$DROVER_RECOVERY_POINT test=$DROVER_TEST $EXTRA\" >> \"$LEDGER\"; echo done";
    let action = sh(script, &[("LEDGER", &ledger_s), ("EXTRA", "{service}/{epoch}")]);
    let out = RealActuator::new().run(&step(action, 5000), &ctx()).await.unwrap();
    assert!(out.detail.starts_with("exit 0 after "), "{}", out.detail);
    assert_eq!(out.output_tail, "done\n");
    assert_eq!(
        std::fs::read_to_string(&ledger).unwrap(),
        "7 file-transfer prod>dr rp=snap-2024\"01 test=0 file-transfer/7\n"
    );

    let test_ctx = StepContext { test: true, epoch: 8, ..ctx() };
    let action = sh("echo \"$DROVER_EPOCH $DROVER_TEST\" >> \"$LEDGER\"", &[("LEDGER", &ledger_s)]);
    RealActuator::new().run(&step(action, 5000), &test_ctx).await.unwrap();
    let text = std::fs::read_to_string(&ledger).unwrap();
    assert_eq!(text.lines().last(), Some("8 1"));
}

#[tokio::test]
async fn exec_step_failure_carries_exit_code_and_stderr() {
    let action = sh("echo starting; echo 'start_all: disk full' >&2; exit 1", &[]);
    let err = RealActuator::new().run(&step(action, 5000), &ctx()).await.unwrap_err();
    let StepError::Failed { reason, output_tail } = &err else { panic!("{err:?}") };
    assert_eq!(reason, "exec sh: exit 1: start_all: disk full");
    assert_eq!(output_tail, "starting\nstart_all: disk full\n");
    assert_eq!(
        err.to_string(),
        "step failed: exec sh: exit 1: start_all: disk full; fix the cause, then retry the step"
    );

    let missing = StepAction::Exec(ExecStep {
        command: vec!["/opt/drover-test/no-such-start_all".into()],
        env: BTreeMap::new(),
    });
    let err = RealActuator::new().run(&step(missing, 5000), &ctx()).await.unwrap_err();
    assert!(
        err.to_string().contains("command not found: /opt/drover-test/no-such-start_all"),
        "{err}"
    );
}

/// Whether `pid` is gone (or a zombie waiting for whoever inherited it).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        }
    }
}

#[tokio::test]
async fn exec_step_timeout_kills_the_process_tree() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // The shell and a background sleep both record their pids; both must die.
    let script =
        format!("sleep 10 & echo $! > {0}; echo $$ >> {0}; echo waiting; wait", pids.display());
    let t = Instant::now();
    let err = RealActuator::new().run(&step(sh(&script, &[]), 200), &ctx()).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    let StepError::Timeout { after, output_tail } = &err else { panic!("{err:?}") };
    assert_eq!(*after, Duration::from_millis(200));
    assert_eq!(output_tail, "waiting\n");
    assert!(err.to_string().starts_with("step timed out after 200ms"), "{err}");

    let text = std::fs::read_to_string(&pids).unwrap();
    let pids: Vec<i32> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(pids.len(), 2);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !pids.iter().all(|&p| process_gone(p)) {
        assert!(Instant::now() < deadline, "processes {pids:?} still alive after the timeout");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Debug, Clone)]
struct Received {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: String,
}

/// A webhook receiver recording every request; `/fail` answers 500 with a body, `/slow`
/// answers after 5 s, anything else 204.
async fn receiver() -> (SocketAddr, Arc<Mutex<Vec<Received>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = Router::new().fallback(any(
        move |method: Method, uri: axum::http::Uri, headers: HeaderMap, body: String| {
            let s = s.clone();
            async move {
                let path = uri.path().to_string();
                s.lock().unwrap().push(Received { method, path: path.clone(), headers, body });
                match path.as_str() {
                    "/fail" => (StatusCode::INTERNAL_SERVER_ERROR, "dns provider said no"),
                    "/slow" => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        (StatusCode::NO_CONTENT, "")
                    }
                    _ => (StatusCode::NO_CONTENT, ""),
                }
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen, task)
}

fn webhook(url: String, method: &str, expect_status: u16, body: Option<&str>) -> StepAction {
    StepAction::Http(HttpStep {
        url,
        method: method.into(),
        expect_status,
        body: body.map(str::to_string),
        headers: [("X-Drover-Service".to_string(), "{service}".to_string())].into(),
    })
}

#[tokio::test]
async fn http_step_sends_method_headers_and_expanded_body() {
    let (addr, seen, task) = receiver().await;
    let body = r#"{"service": "{service}", "epoch": {epoch}, "rp": "{recovery_point}"}"#;
    let action = webhook(format!("http://{addr}/hook/{{epoch}}"), "POST", 204, Some(body));
    let out = RealActuator::new().run(&step(action, 5000), &ctx()).await.unwrap();
    assert!(out.detail.starts_with(&format!("HTTP 204 from POST http://{addr}/hook/7")), "{out:?}");

    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.path, "/hook/7");
    assert_eq!(r.headers["x-drover-service"], "file-transfer");
    assert_eq!(r.headers["content-type"], "application/json");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"service": "file-transfer", "epoch": 7, "rp": "snap-2024\"01"})
    );
    task.abort();
}

#[tokio::test]
async fn http_step_wrong_status_and_timeout() {
    let (addr, seen, task) = receiver().await;
    let action = webhook(format!("http://{addr}/fail"), "PUT", 200, Some("epoch={epoch}"));
    let err = RealActuator::new().run(&step(action, 5000), &ctx()).await.unwrap_err();
    let StepError::Failed { reason, output_tail } = &err else { panic!("{err:?}") };
    assert_eq!(reason, &format!("http PUT http://{addr}/fail: answered HTTP 500 (expected 200)"));
    assert_eq!(output_tail, "dns provider said no");
    {
        let got = seen.lock().unwrap();
        assert_eq!(got[0].method, Method::PUT);
        assert_eq!(got[0].body, "epoch=7");
        assert!(!got[0].headers.contains_key("content-type"));
    }

    let t = Instant::now();
    let action = webhook(format!("http://{addr}/slow"), "POST", 204, None);
    let err = RealActuator::new().run(&step(action, 200), &ctx()).await.unwrap_err();
    assert!(matches!(err, StepError::Timeout { after, .. } if after == Duration::from_millis(200)));
    assert!(t.elapsed() < Duration::from_secs(3));
    task.abort();

    // Nothing listens any more: a transport failure, not a timeout.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let action = webhook(format!("http://{addr}/hook"), "POST", 204, None);
    let err = RealActuator::new().run(&step(action, 2000), &ctx()).await.unwrap_err();
    assert!(err.to_string().contains("connection refused"), "{err}");
}

#[tokio::test]
async fn wait_step_sleeps() {
    let t = Instant::now();
    let action = StepAction::Wait(WaitStep { duration: Duration::from_millis(150) });
    let out = RealActuator::new().run(&step(action, 1000), &ctx()).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert_eq!(out.detail, "waited 150ms");
}

#[tokio::test]
async fn other_kinds_are_unsupported_for_now() {
    // Through the trait object, as the workflow driver holds it.
    let actuator: Box<dyn Actuator> = Box::new(RealActuator::default());
    let probe = StepAction::Probe(ProbeStep { checks: "dr".into() });
    let err = actuator.run(&step(probe, 1000), &ctx()).await.unwrap_err();
    assert_eq!(err, StepError::Unsupported { kind: "probe" });
    assert_eq!(err.to_string(), "step kind probe is not available in this build yet");
}
