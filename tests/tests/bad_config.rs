//! A node refuses a broken node.toml before touching anything: exit code 2, one line on stderr
//! starting with "error:" that names the file and the key, and the data dir not created (when
//! absent) or byte-identical (when present).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_tests::{Cluster, NodeId, Role};

/// A node given a bad config must have exited well within this.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);
const STARTUP: Duration = Duration::from_secs(20);

/// Relative path -> (size, contents) of every file and dir (dirs as size 0, no contents).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            let rel = path.strip_prefix(dir).expect("under dir").to_path_buf();
            if path.is_dir() {
                out.insert(rel, (0, Vec::new()));
                stack.push(path);
            } else {
                let bytes =
                    fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                out.insert(rel, (bytes.len() as u64, bytes));
            }
        }
    }
    out
}

/// A cluster of one controller that has run once (so its data dir exists and has content) and
/// was stopped with SIGTERM.
fn node_with_data(test: &str) -> (Cluster, NodeId) {
    let mut c = Cluster::builder(test).node("prod-1", "prod", Role::Controller).build();
    let id = c.id_of("prod-1");
    c.start();
    c.wait_for("GET /healthz on prod-1 to answer 200", STARTUP, |c| {
        match c.http_get(id, "/healthz")? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("{code} {}", body.trim())),
        }
    });
    let status = c.terminate(id);
    if status.code() != Some(0) {
        c.fail(format!("prod-1 should exit 0 on SIGTERM, got {status}"));
    }
    if !c.data_dir(id).is_dir() {
        let d = c.data_dir(id).display().to_string();
        c.fail(format!("prod-1 ran but its data_dir {d} does not exist"));
    }
    (c, id)
}

/// True when `line` (with paths already scrubbed) names `table.key`: dotted, or the table and
/// the key as separate words.
fn names_key(line: &str, table: &str, key: &str) -> bool {
    let has_word = |w: &str| {
        line.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '-'))
            .any(|t| t == w)
    };
    line.contains(&format!("{table}.{key}")) || (has_word(table) && has_word(key))
}

/// Writes `config` next to the good one, runs the node on it with the data dir present and
/// (with `data_dir` pointed elsewhere) absent, and checks the refusal both times.
/// `must_name` checks the error line with the test dir replaced by `<dir>` (so key names are
/// not found inside paths); `names_config` requires the config file to be named.
fn check_refused(
    c: &mut Cluster,
    id: NodeId,
    variant: &str,
    config: &str,
    names_config: bool,
    must_name: &dyn Fn(&str) -> Result<(), String>,
) {
    let data_dir = c.data_dir(id).to_path_buf();
    let absent = c.root().join(format!("absent-data-{variant}"));
    let data_line =
        |p: &Path| format!("data_dir = {}", serde_json::to_string(&p.to_string_lossy()).unwrap());
    let runs = [
        ("present", data_dir.clone(), config.to_owned()),
        ("absent", absent.clone(), config.replace(&data_line(&data_dir), &data_line(&absent))),
    ];
    for (case, dir, text) in runs {
        let path = c.root().join(format!("bad-{variant}-{case}.toml"));
        fs::write(&path, &text).expect("write bad config");
        let before = dir.exists().then(|| snapshot(&dir));
        let out = c.run_node_once(id, &path, EXIT_DEADLINE);
        let lines = out.stderr_lines();
        let mut problems = Vec::new();
        if out.code != Some(2) {
            problems.push("exit code is not 2".to_owned());
        }
        if lines.len() != 1 || !lines[0].starts_with("error:") {
            problems.push(format!(
                "stderr is not exactly one line starting with \"error:\" ({} lines)",
                lines.len()
            ));
        }
        let first = lines.first().copied().unwrap_or("");
        if names_config && !first.contains(path.to_string_lossy().as_ref()) {
            problems.push(format!("the error does not name the config file {}", path.display()));
        }
        let scrubbed = first.replace(c.root().to_string_lossy().as_ref(), "<dir>");
        if let Err(e) = must_name(&scrubbed) {
            problems.push(e);
        }
        match (&before, dir.exists()) {
            (None, true) => {
                problems.push(format!("the absent data dir {} was created", dir.display()))
            }
            (Some(before), true) if *before != snapshot(&dir) => problems.push(format!(
                "the data dir {} changed (file listing, sizes or bytes)",
                dir.display()
            )),
            (Some(_), false) => {
                problems.push(format!("the data dir {} was removed", dir.display()))
            }
            _ => {}
        }
        if !problems.is_empty() {
            c.fail(format!(
                "{variant} config with the data dir {case} ({}):\n  {}\ndrover-node: {}\nconfig:\n{text}",
                path.display(),
                problems.join("\n  "),
                out.describe()
            ));
        }
    }
}

#[test]
fn truncated_config_at_a_line_boundary_names_the_missing_key() {
    let (mut c, id) = node_with_data("bad_config_truncated");
    let good = c.config_text(id);
    // Cut right after `ca = ...` in [tls]: valid TOML that lacks tls.cert, tls.key and the rest.
    // A missing key has no line of its own, so only its path (tls.cert) tells the operator
    // which table lacks it (`cert` alone would be ambiguous with repeated tables).
    let ca_line = good.find("\nca = ").expect("ca line");
    let cut = ca_line + 1 + good[ca_line + 1..].find('\n').expect("end of ca line") + 1;
    check_refused(&mut c, id, "truncated-line", &good[..cut], true, &|line| {
        if names_key(line, "tls", "cert") {
            Ok(())
        } else {
            Err("the error does not name the missing key tls.cert".into())
        }
    });
}

#[test]
fn truncated_config_mid_value_is_located() {
    let (mut c, id) = node_with_data("bad_config_midvalue");
    let good = c.config_text(id);
    // Cut inside the quoted data_dir value: a TOML syntax error on the data_dir line.
    let at = good.find("data_dir = \"").expect("data_dir line") + "data_dir = \"".len() + 4;
    let text = good[..at].to_owned();
    // (Both runs cut at the same place; the data_dir value never parses, so "absent" and
    // "present" differ only in name here: the node must create nothing either way.)
    // A syntax error has no parsed key yet: the key or the line number locates it.
    let line_no = text.lines().count();
    check_refused(&mut c, id, "truncated-mid-value", &text, true, &|line| {
        if line.contains("data_dir") || line.contains(&format!("line {line_no}")) {
            Ok(())
        } else {
            Err(format!(
                "the error names neither the key data_dir nor line {line_no} where the file ends"
            ))
        }
    });
}

#[test]
fn unknown_key_is_named() {
    let (mut c, id) = node_with_data("bad_config_unknown_key");
    let good = c.config_text(id);
    let text = good.replacen("[raft]\n", "[raft]\nfrobnicate = 3\n", 1);
    // The key path, or the key plus the line it is on, lets the operator find it.
    let line_no = text.lines().position(|l| l.starts_with("frobnicate")).expect("inserted") + 1;
    check_refused(&mut c, id, "unknown-key", &text, true, &|line| {
        let at_line = line.contains("frobnicate") && line.contains(&format!("line {line_no}"));
        if names_key(line, "raft", "frobnicate") || at_line {
            Ok(())
        } else {
            Err(format!(
                "the error names neither the key path raft.frobnicate nor frobnicate at line {line_no}"
            ))
        }
    });
}

#[test]
fn missing_tls_file_is_named() {
    let (mut c, id) = node_with_data("bad_config_missing_tls");
    let good = c.config_text(id);
    let real = c.certs_dir().join("prod-1.pem");
    let missing = c.certs_dir().join("no-such-cert.pem");
    let q = |p: &Path| serde_json::to_string(&p.to_string_lossy()).unwrap();
    let text = good.replace(&format!("cert = {}", q(&real)), &format!("cert = {}", q(&missing)));
    assert_ne!(text, good, "the harness config has no `cert = {}` line", q(&real));
    // The file to name here is the missing one; naming node.toml as well is not required.
    let missing_str =
        missing.to_string_lossy().replace(c.root().to_string_lossy().as_ref(), "<dir>");
    check_refused(&mut c, id, "missing-tls-file", &text, false, &move |line| {
        let mut errs = Vec::new();
        if !line.contains(&missing_str) {
            errs.push(format!("the error does not name the missing file {missing_str}"));
        }
        if !names_key(line, "tls", "cert") {
            errs.push("the error does not name the key tls.cert".into());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    });
}
