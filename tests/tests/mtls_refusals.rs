//! Only holders of certificates from the cluster's CA get in: an admin certificate from another
//! CA is refused, a client that does not trust the cluster CA refuses the node, a client with
//! no certificate is refused, and a node with certificates from another CA never receives the
//! cluster's data even after it was added as a member.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use drover_tests::{run_with_deadline, Cluster, CmdOutput, Role, LEADER_TIMEOUT};

const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the foreign node is watched for (it must stay empty the whole time).
const FOREIGN_WATCH: Duration = Duration::from_secs(8);

/// Records a problem unless droverctl was refused with one "error:" line (mentioning the
/// certificate when asked to).
fn check_refused(
    problems: &mut Vec<String>,
    what: &str,
    out: &CmdOutput,
    must_mention_certificate: bool,
) {
    let lines = out.stderr_lines();
    let one_error_line = lines.len() == 1 && lines[0].starts_with("error:");
    let mentions = out.stderr.to_lowercase().contains("certificate");
    if out.success() || out.timed_out || !one_error_line || (must_mention_certificate && !mentions)
    {
        problems.push(format!(
            "{what}: expected droverctl to exit non-zero with one line \"error: ...\" on stderr{}, got {}",
            if must_mention_certificate { " mentioning the certificate" } else { "" },
            out.describe()
        ));
    }
}

#[test]
fn mtls_refusals() {
    let mut c = Cluster::builder("mtls_refusals")
        .node("prod-1", "prod", Role::Controller)
        .node("dr-1", "dr", Role::Controller)
        .node("witness", "witness", Role::Witness)
        .joiner("dr-2", "dr", Role::Controller)
        .build();
    let foreign = c.root().join("foreign-certs");
    let intruder = c.id_of("dr-2");
    let intruder_ip = match c.grpc_addr(intruder).ip() {
        std::net::IpAddr::V4(ip) => ip,
        other => panic!("unexpected address {other}"),
    };
    c.certs_init(&foreign, &[("dr-2".to_owned(), intruder_ip)], "admin");
    c.start();
    c.wait_for_leader(LEADER_TIMEOUT);

    let certs = c.certs_dir();
    let endpoints = c.endpoints();
    let ctl = |c: &Cluster, tls: &[&Path]| -> CmdOutput {
        let flags = ["--ca", "--cert", "--key"];
        let mut args: Vec<String> =
            vec!["--endpoint".into(), endpoints.clone(), "--timeout".into(), "5s".into()];
        for (flag, file) in flags.iter().zip(tls) {
            args.push(flag.to_string());
            args.push(file.to_string_lossy().into_owned());
        }
        args.push("status".into());
        c.ctl_raw(&args)
    };

    // Control: the same invocation with the cluster's own admin certificate works, so every
    // refusal below is about the certificate.
    let ok =
        ctl(&c, &[&certs.join("ca.pem"), &certs.join("admin.pem"), &certs.join("admin-key.pem")]);
    if !ok.success() {
        c.fail(format!(
            "droverctl status with the cluster's admin certificate failed: {}",
            ok.describe()
        ));
    }

    // Each refusal is checked and all problems are reported together, so one hole does not
    // hide the next.
    let mut problems = Vec::new();
    let out = ctl(
        &c,
        &[&certs.join("ca.pem"), &foreign.join("admin.pem"), &foreign.join("admin-key.pem")],
    );
    check_refused(&mut problems, "admin certificate issued by another CA", &out, true);

    let out = ctl(
        &c,
        &[&foreign.join("ca.pem"), &foreign.join("admin.pem"), &foreign.join("admin-key.pem")],
    );
    check_refused(
        &mut problems,
        "client trusting only another CA (the node's certificate is untrusted)",
        &out,
        true,
    );

    let out = ctl(&c, &[&certs.join("ca.pem")]);
    check_refused(&mut problems, "client with no certificate (only --ca): status", &out, false);
    // A write without a certificate must not commit either.
    let intrusion = "written by a client without a certificate";
    let mut args: Vec<String> = ["--endpoint", &endpoints, "--timeout", "5s", "--ca"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend([certs.join("ca.pem").to_string_lossy().into_owned(), "note".into()]);
    args.extend(["add".into(), intrusion.into()]);
    let out = c.ctl_raw(&args);
    check_refused(&mut problems, "client with no certificate (only --ca): note add", &out, false);
    match c.history_all(50) {
        Ok(records) if records.iter().any(|r| r["text"] == intrusion) => {
            problems.push(format!("the note {intrusion:?} was committed to the history"))
        }
        Ok(_) => {}
        Err(e) => problems.push(format!("reading the history as the admin failed: {e}")),
    }

    // The same without droverctl in the way: a raw TLS client without a certificate.
    if Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success()) {
        let leader_addr = c.grpc_addr(c.id_of("prod-1"));
        let mut cmd = Command::new("openssl");
        cmd.args([
            "s_client",
            "-connect",
            &leader_addr.to_string(),
            "-servername",
            "prod-1",
            "-ign_eof",
            "-CAfile",
        ])
        .arg(certs.join("ca.pem"));
        let out = run_with_deadline(&mut cmd, Duration::from_secs(10));
        // Refused: the node ends the handshake (a TLS alert, or at least a close without a
        // session). Accepted: the session stays open until our deadline kills the client.
        let text = format!("{}\n{}", out.stdout, out.stderr).to_lowercase();
        let ended_by_node =
            ["alert", "handshake failure", "unexpected eof"].iter().any(|s| text.contains(s));
        if out.timed_out || out.success() || !ended_by_node {
            problems.push(format!(
                "openssl s_client without a client certificate should be refused by the node, got {}",
                out.describe()
            ));
        }
    } else {
        eprintln!("openssl not found: skipping the raw no-client-certificate TLS check");
    }

    // A node whose certificates come from another CA, added as a learner, never gets data.
    c.set_tls(
        intruder,
        &foreign.join("ca.pem"),
        &foreign.join("dr-2.pem"),
        &foreign.join("dr-2-key.pem"),
    );
    c.start_node(intruder);
    let addr = c.grpc_addr(intruder).to_string();
    let id = intruder.to_string();
    let add = c.ctl(&[
        "member",
        "add",
        "--id",
        &id,
        "--name",
        "dr-2",
        "--site",
        "dr",
        "--role",
        "controller",
        "--address",
        &addr,
    ]);
    eprintln!("member add of the foreign-CA node: {}", add.describe());
    c.wait_for(
        "a note to commit with the foreign-CA node in the member list",
        WRITE_TIMEOUT,
        |c| c.note_add("written while a foreign-CA node is a learner"),
    );
    let started = Instant::now();
    while started.elapsed() < FOREIGN_WATCH {
        let applied = c
            .metrics(intruder)
            .ok()
            .and_then(|m| m.get_u64("drover_raft_applied_index"))
            .unwrap_or(0);
        let ready = c.http_get(intruder, "/readyz").map(|(code, _)| code);
        let matched = c
            .status_json()
            .ok()
            .and_then(|s| s["members"].as_array().cloned())
            .and_then(|ms| ms.into_iter().find(|m| m["id"].as_u64() == Some(intruder)))
            .and_then(|m| m["matched_index"].as_u64())
            .unwrap_or(0);
        if applied > 0 || matched > 0 || ready == Ok(200) {
            problems.push(format!(
                "the node with certificates from another CA received cluster data: applied_index {applied}, \
                 leader's matched_index {matched}, /readyz {ready:?}"
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if !c.is_running(intruder) {
        eprintln!("note: the foreign-CA node exited (acceptable: it never joined)");
    }
    if !problems.is_empty() {
        c.fail(format!("mutual TLS let through what it must refuse:\n- {}", problems.join("\n- ")));
    }
}
