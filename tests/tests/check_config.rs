//! `drover-node check-config` finds what `run` (or the peers) would trip over, each as one
//! `error:` line naming the key, the file and what to do, exit code 2: a certificate that is
//! expired, issued to another node, or a leaf given as the CA; a data_dir that is a file or
//! read-only; a listen address in use. A sound config says ok and exits 0.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use drover_tests::{
    bins, require_program, run_with_deadline, skip, Cluster, CmdOutput, NodeId, Role,
};

const DEADLINE: Duration = Duration::from_secs(30);

fn cluster(test: &str) -> (Cluster, NodeId) {
    let c = Cluster::builder(test)
        .node("prod-1", "prod", Role::Controller)
        .node("dr-1", "dr", Role::Controller)
        .build();
    let id = c.id_of("prod-1");
    (c, id)
}

fn check(config: &Path) -> CmdOutput {
    let mut cmd = Command::new(&bins().node);
    cmd.arg("check-config").arg("--config").arg(config);
    run_with_deadline(&mut cmd, DEADLINE)
}

fn q(p: &Path) -> String {
    serde_json::to_string(&p.to_string_lossy()).expect("quote")
}

/// Writes `text` as `<name>.toml` in the cluster dir and returns its path.
fn write(c: &Cluster, name: &str, text: &str) -> PathBuf {
    let path = c.root().join(format!("{name}.toml"));
    fs::write(&path, text).expect("write config");
    path
}

fn expect_refused(out: &CmdOutput, case: &str, needles: &[&str]) {
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("error:") && needles.iter().all(|n| l.contains(n)));
    assert!(
        out.code == Some(2) && line.is_some() && !out.stderr.contains("panicked"),
        "{case}: want exit 2 and an error line containing {needles:?}; got {}",
        out.describe()
    );
}

#[test]
fn a_sound_config_is_ok() {
    let (c, id) = cluster("check_config_ok");
    let out = check(c.config_path(id));
    assert!(out.success() && out.stdout.contains(": ok"), "{}", out.describe());
}

#[test]
fn certificate_problems_are_named() {
    let (c, id) = cluster("check_config_certs");
    let good = c.config_text(id);
    let certs = c.certs_dir();
    let (own_cert, own_key) = (certs.join("prod-1.pem"), certs.join("prod-1-key.pem"));

    // Another node's certificate (and its key): it loads, but peers would refuse the name.
    let text = good
        .replace(&q(&own_cert), &q(&certs.join("dr-1.pem")))
        .replace(&q(&own_key), &q(&certs.join("dr-1-key.pem")));
    assert_ne!(text, good);
    let out = check(&write(&c, "other-node-cert", &text));
    expect_refused(
        &out,
        "another node's certificate",
        &["tls.cert", "dr-1.pem", "issued to dr-1", "\"prod-1\""],
    );

    // A leaf certificate as the CA.
    let text = good.replace(&q(&certs.join("ca.pem")), &q(&certs.join("dr-1.pem")));
    let out = check(&write(&c, "leaf-as-ca", &text));
    expect_refused(&out, "leaf as CA", &["tls.ca", "dr-1.pem", "not a CA"]);

    // An expired certificate: issued (with its own CA) while the clock said 2020.
    let Some(faketime) = require_program("certificate_problems_are_named", "faketime", "faketime")
    else {
        return;
    };
    let old = c.root().join("old-certs");
    let mut cmd = Command::new(faketime);
    cmd.arg("2020-01-01 00:00:00").arg(&bins().ctl).args(["certs", "init", "--out"]).arg(&old);
    cmd.args(["--node", "prod-1"]);
    let made = run_with_deadline(&mut cmd, DEADLINE);
    assert!(made.success(), "certs init under faketime: {}", made.describe());
    let text = good
        .replace(&q(&own_cert), &q(&old.join("prod-1.pem")))
        .replace(&q(&own_key), &q(&old.join("prod-1-key.pem")));
    let out = check(&write(&c, "expired", &text));
    expect_refused(&out, "expired certificate", &["tls.cert", "expired on", "prod-1.pem"]);
}

#[test]
fn unusable_data_dir_and_busy_ports_are_named() {
    let (c, id) = cluster("check_config_places");
    let good = c.config_text(id);
    let data_dir = c.data_dir(id).to_path_buf();

    // data_dir is a file.
    let file = c.root().join("not-a-dir");
    fs::write(&file, b"x").expect("write");
    let text =
        good.replace(&format!("data_dir = {}", q(&data_dir)), &format!("data_dir = {}", q(&file)));
    assert_ne!(text, good);
    let out = check(&write(&c, "data-dir-file", &text));
    expect_refused(&out, "data_dir is a file", &["data_dir", "not-a-dir", "is a file"]);

    // The gRPC port is taken.
    let grpc = c.grpc_addr(id);
    match TcpListener::bind(grpc) {
        Ok(_held) => {
            let out = check(c.config_path(id));
            expect_refused(&out, "port in use", &["listen.grpc", &grpc.to_string(), "in use"]);
        }
        Err(e) => panic!("cannot take {grpc} for the test: {e}"),
    }

    // A read-only data_dir: a read-only tmpfs mounted over it in a private mount namespace
    // (permission bits do not stop root, a read-only mount does).
    if unsafe { libc::geteuid() } != 0 {
        skip("skipped: the read-only data_dir case needs root (mount namespace)");
        return;
    }
    let Some(unshare) =
        require_program("unusable_data_dir_and_busy_ports_are_named", "unshare", "util-linux")
    else {
        return;
    };
    fs::create_dir_all(&data_dir).expect("create data dir");
    let script = format!(
        "mount -t tmpfs -o ro tmpfs {} && exec {} check-config --config {}",
        shell_quote(&data_dir),
        shell_quote(&bins().node),
        shell_quote(c.config_path(id))
    );
    let mut cmd = Command::new(unshare);
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let out = run_with_deadline(&mut cmd, DEADLINE);
    expect_refused(&out, "read-only data_dir", &["data_dir", "cannot write"]);
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.to_string_lossy().replace('\'', "'\\''"))
}
