//! Whether the places a validated config points at are usable right now: the data_dir and the
//! listen addresses. `check-config` runs these (after the certificate checks) so that what
//! `run` would trip over is reported first, one line per problem, without changing anything.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use super::NodeConfig;

/// Every problem found with `cfg`'s data_dir and listen addresses, one line each; empty when
/// `run` could use them.
pub fn check_usable(cfg: &NodeConfig) -> Vec<String> {
    let mut problems = Vec::new();
    problems.extend(check_data_dir(&cfg.data_dir));
    for (key, addr) in [("listen.grpc", cfg.listen_grpc), ("listen.http", cfg.listen_http)] {
        problems.extend(check_listen(key, addr));
    }
    problems
}

/// The data_dir must be a writable directory, or creatable under its nearest existing
/// ancestor. Writability is probed by creating and removing a file, since permission bits do
/// not tell (read-only mounts, root).
fn check_data_dir(dir: &Path) -> Option<String> {
    let shown = dir.display();
    let existing = dir.ancestors().find(|p| p.exists())?;
    if !existing.is_dir() {
        return Some(if existing == dir {
            format!("data_dir: {shown} is a file, not a directory; point data_dir at a directory")
        } else {
            format!(
                "data_dir: {} is a file, so {shown} cannot be created; point data_dir elsewhere",
                existing.display()
            )
        });
    }
    let probe = existing.join(format!(".drover-check-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) => Some(format!(
            "data_dir: cannot write in {} ({}); make it writable by the drover user, or point \
             data_dir at a writable directory",
            existing.display(),
            e.kind()
        )),
    }
}

/// The address must be free to bind (checked by binding and releasing it).
fn check_listen(key: &str, addr: SocketAddr) -> Option<String> {
    match TcpListener::bind(addr) {
        Ok(_) => None,
        Err(e) if e.kind() == ErrorKind::AddrInUse => Some(format!(
            "{key}: {addr} is already in use by another process (a running drover?); stop it \
             or change {key}"
        )),
        Err(e) if e.kind() == ErrorKind::AddrNotAvailable => Some(format!(
            "{key}: {addr} is not an address of this host; change {key} to one of its addresses"
        )),
        Err(e) => Some(format!("{key}: cannot listen on {addr}: {e}; change {key}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_as_data_dir_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("data");
        std::fs::write(&file, b"x").expect("write");
        let msg = check_data_dir(&file).expect("a problem");
        assert!(msg.starts_with("data_dir:") && msg.contains("is a file"), "{msg}");
        let below = check_data_dir(&file.join("sub")).expect("a problem");
        assert!(below.contains("cannot be created"), "{below}");
    }

    #[test]
    fn an_existing_or_creatable_dir_is_fine_and_left_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(check_data_dir(dir.path()), None);
        assert_eq!(check_data_dir(&dir.path().join("a/b")), None);
        assert!(!dir.path().join("a").exists(), "the check must not create anything");
        assert_eq!(std::fs::read_dir(dir.path()).expect("read").count(), 0);
    }

    #[test]
    fn a_port_in_use_is_named_with_its_key() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let msg = check_listen("listen.grpc", addr).expect("a problem");
        assert!(msg.starts_with("listen.grpc:") && msg.contains("in use"), "{msg}");
        drop(taken);
        assert_eq!(check_listen("listen.grpc", addr), None);
    }
}
