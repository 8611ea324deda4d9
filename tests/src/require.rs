//! Skipping tests that need something this machine may not have (root, a Debian package),
//! with a clear message, unless `DROVER_TEST_STRICT=1` (set by `.ci/run`) forbids skipping.

use std::path::PathBuf;

use crate::netns::STRICT_ENV;

/// Prints `msg` (which starts with `skipped:`) and returns false; panics with it instead when
/// `DROVER_TEST_STRICT=1`, so CI never passes by skipping.
pub fn skip(msg: &str) -> bool {
    if std::env::var(STRICT_ENV).as_deref() == Ok("1") {
        panic!("{msg} ({STRICT_ENV}=1 forbids skipping)");
    }
    println!("{msg}");
    eprintln!("{msg}");
    false
}

/// The path of `program` (looked up in `PATH`, then in `/usr/sbin` and `/sbin`, where Debian
/// puts daemons), or `None` after a skip message naming the Debian `package` that provides it.
pub fn require_program(test_name: &str, program: &str, package: &str) -> Option<PathBuf> {
    if let Some(found) = find_program(program) {
        return Some(found);
    }
    skip(&format!(
        "skipped: {test_name} needs {program} from the Debian package {package}; \\
         install it with: apt-get install {package}"
    ));
    None
}

/// Where `program` is, if anywhere in `PATH`, `/usr/sbin` or `/sbin`.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
