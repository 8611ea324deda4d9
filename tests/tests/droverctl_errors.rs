//! droverctl under bad conditions: every network wait is bounded by `--timeout` (TLS handshake
//! included) and the next endpoint is tried; a closed stdout does not panic it; local file
//! problems, name mismatches and expired certificates are diagnosed as what they are; usage
//! errors exit 2 before any connection.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_tests::{bins, require_program, run_with_deadline, Cluster, CmdOutput, Role};

const DEADLINE: Duration = Duration::from_secs(60);
const STARTUP: Duration = Duration::from_secs(30);

fn ctl(args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(&bins().ctl);
    cmd.args(args);
    run_with_deadline(&mut cmd, DEADLINE)
}

fn expect(out: &CmdOutput, code: i32, needles: &[&str], case: &str) {
    let ok = out.code == Some(code)
        && !out.stderr.contains("panicked")
        && out
            .stderr
            .lines()
            .any(|l| l.starts_with("error:") && needles.iter().all(|n| l.contains(n)));
    assert!(
        ok,
        "{case}: want exit {code} and an error line with {needles:?}, got {}",
        out.describe()
    );
}

/// A dev CA and certificates (node `n1`, admin `admin`) in `dir`; run under `faketime DATE`
/// when given (so they are expired today).
fn certs_in(dir: &Path, faketime: Option<(&Path, &str)>) {
    let mut cmd = match faketime {
        Some((faketime, date)) => {
            let mut c = Command::new(faketime);
            c.arg(date).arg(&bins().ctl);
            c
        }
        None => Command::new(&bins().ctl),
    };
    cmd.args(["certs", "init", "--out"]).arg(dir).args(["--node", "n1", "--admin", "admin"]);
    let out = run_with_deadline(&mut cmd, DEADLINE);
    assert!(out.success(), "certs init: {}", out.describe());
}

#[test]
fn usage_errors_exit_2_before_connecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    certs_in(dir.path(), None);
    let tls = dir.path().to_string_lossy().into_owned();
    for (endpoint, timeout, needle) in [
        ("127.0.0.1", "5s", "has no port"),
        ("127.0.0.1:70000", "5s", "out of range"),
        ("127.0.0.1:", "5s", "not a port number"),
        ("127.0.0.1:7400", "0", "--timeout 0"),
    ] {
        let out = ctl(&["--endpoint", endpoint, "--tls-dir", &tls, "--timeout", timeout, "status"]);
        expect(&out, 2, &[needle], &format!("--endpoint {endpoint} --timeout {timeout}"));
    }
}

#[test]
fn local_certificate_problems_are_named_as_local() {
    let dir = tempfile::tempdir().expect("tempdir");
    certs_in(dir.path(), None);
    let p = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let base = ["--endpoint", "127.0.0.1:9", "--ca"];

    // A key that belongs to another certificate: a local problem, named as such.
    let (ca, cert, other_key) = (p("ca.pem"), p("admin.pem"), p("n1-key.pem"));
    let out =
        ctl(&[&base[..], &[ca.as_str(), "--cert", &cert, "--key", &other_key, "status"]].concat());
    expect(
        &out,
        2,
        &["does not belong to the certificate", "admin.pem", "local file"],
        "key mismatch",
    );

    // A missing certificate file.
    let missing = p("nope.pem");
    let key = p("admin-key.pem");
    let out =
        ctl(&[&base[..], &[ca.as_str(), "--cert", &missing, "--key", &key, "status"]].concat());
    expect(&out, 2, &["nope.pem", "--cert"], "missing certificate");

    // An expired certificate (made a year ago with faketime).
    let Some(faketime) =
        require_program("local_certificate_problems_are_named_as_local", "faketime", "faketime")
    else {
        return;
    };
    let old = tempfile::tempdir().expect("tempdir");
    certs_in(old.path(), Some((&faketime, "2020-01-01 00:00:00")));
    let q = |f: &str| old.path().join(f).to_string_lossy().into_owned();
    let (cert, key) = (q("admin.pem"), q("admin-key.pem"));
    let out = ctl(&[&base[..], &[ca.as_str(), "--cert", &cert, "--key", &key, "status"]].concat());
    expect(&out, 2, &["expired on", "admin.pem"], "expired certificate");
}

#[test]
fn network_waits_are_bounded_and_errors_say_why() {
    let mut c =
        Cluster::builder("droverctl_errors").node("prod-1", "prod", Role::Controller).build();
    let id = c.id_of("prod-1");
    c.start();
    c.wait_for("prod-1 to answer status", STARTUP, |c| {
        let out = c.ctl_at(id, &["status", "--local"]);
        if out.success() {
            Ok(())
        } else {
            Err(out.describe())
        }
    });
    let good = c.grpc_addr(id).to_string();
    let certs = c.certs_dir().to_string_lossy().into_owned();

    // Accepts TCP and never says a word: the TLS handshake can never finish.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr").to_string();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().take(8) {
            match conn {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_secs(120));
        drop(held);
    });

    let both = format!("{silent_addr},{good}");
    let started = Instant::now();
    let out = c.ctl_raw(&[
        "--endpoint",
        &both,
        "--tls-dir",
        &certs,
        "--timeout",
        "2s",
        "status",
        "--local",
    ]);
    if !out.success() {
        c.fail(format!("the second endpoint should have answered: {}", out.describe()));
    }
    let out =
        c.ctl_raw(&["--endpoint", &silent_addr, "--tls-dir", &certs, "--timeout", "2s", "status"]);
    let elapsed = started.elapsed();
    let line_ok = out.stderr.contains("no connection within --timeout") && out.code == Some(1);
    if !line_ok || out.timed_out {
        c.fail(format!(
            "a silent endpoint must fail within --timeout, not hang: {}",
            out.describe()
        ));
    }
    // Generous: two bounded attempts on a loaded machine, far below "forever".
    if elapsed > Duration::from_secs(40) {
        c.fail(format!("two calls with --timeout 2s took {elapsed:?}"));
    }

    // The node is asked for another node's name: a name mismatch, with the hint.
    let out = c.ctl_raw(&[
        "--endpoint",
        &good,
        "--tls-dir",
        &certs,
        "--server-name",
        "dr-9",
        "status",
        "--local",
    ]);
    if out.success()
        || !out.stderr.contains("--server-name")
        || out.stderr.contains("not signed by the CA")
    {
        c.fail(format!("a name mismatch should hint at --server-name: {}", out.describe()));
    }

    // A closed stdout: no panic, droverctl ends quietly.
    for _ in 0..3 {
        let out = c.ctl(&["note", "add", "fill the history"]);
        if !out.success() {
            c.fail(format!("note add: {}", out.describe()));
        }
    }
    let mut child = Command::new(&bins().ctl)
        .args(["--endpoint", &good, "--tls-dir", &certs, "history"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn droverctl");
    drop(child.stdout.take());
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read stderr");
    let status = child.wait().expect("wait");
    if stderr.contains("panicked") || !status.success() {
        c.fail(format!("droverctl history with a closed stdout: {status}, stderr: {stderr}"));
    }
    drop(holder);
}
