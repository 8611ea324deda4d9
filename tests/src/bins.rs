//! Locating (and building) the binaries under test.
//!
//! The test executable lives in `<target>/<profile>/deps/`; the binaries it drives live in
//! `<target>/<profile>/`. So that `cargo test` / `cargo nextest run` work on a clean checkout
//! with one command, the first call in each test process runs
//! `cargo build --bins -p drover-node -p drover-witness` for the same workspace, target dir and
//! profile (cargo's own lock serialises concurrent test processes).
//!
//! `DROVER_BIN_DIR=<dir>` skips the build and uses the binaries already in `<dir>`: for running
//! this suite against binaries built from another checkout that shares the target dir, where a
//! build from this checkout would overwrite them.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::run_with_deadline;

/// Paths of the three binaries under test.
#[derive(Debug, Clone)]
pub struct Bins {
    pub node: PathBuf,
    pub witness: PathBuf,
    pub ctl: PathBuf,
}

/// A full debug build of the workspace from scratch on 2 cores fits in this; a warm one is
/// seconds.
const BUILD_DEADLINE: Duration = Duration::from_secs(1200);

/// The binaries under test, built once per process (see the module docs).
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| locate(None))
}

/// The binaries of the release profile, built once per process into the same target dir: for
/// the tests whose load is only meaningful on the build operators deploy (megabyte log
/// entries on a loaded machine; a debug build spends most of its time encoding them).
/// `DROVER_BIN_DIR` overrides it as it does [`bins`].
pub fn release_bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| locate(Some("release")))
}

/// The binaries in `DROVER_BIN_DIR`, or built for `profile` (the test's own when `None`).
fn locate(profile: Option<&str>) -> Bins {
    if let Some(dir) = env::var_os("DROVER_BIN_DIR") {
        return in_dir(Path::new(&dir));
    }
    let (target_dir, own) = target_and_profile();
    let profile = profile.unwrap_or(&own);
    build(&target_dir, profile);
    in_dir(&target_dir.join(profile))
}

/// The target dir and profile of the running test executable.
fn target_and_profile() -> (PathBuf, String) {
    let exe = env::current_exe().expect("current_exe of the test binary");
    // <target>/<profile>/deps/<test-exe>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| {
            panic!("test binary {} is not in <target>/<profile>/deps", exe.display())
        })
        .to_path_buf();
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug").to_owned();
    let target_dir = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir), // join keeps an absolute dir as is
        None => profile_dir.parent().expect("target dir above the profile dir").to_path_buf(),
    };
    (target_dir, profile)
}

/// The checkout the tests run in (the workspace's root directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Prefixes of the variables cargo sets for a test process only.
const TEST_PROCESS_VARS: &[&str] = &[
    "CARGO_MANIFEST_",
    "CARGO_PKG_",
    "CARGO_CRATE_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_BIN_",
];

fn build(target_dir: &Path, profile: &str) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // The variables cargo sets for this test process (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...)
    // are not the ones of a build started from a shell; build scripts that watch them (ring's
    // watches CARGO_MANIFEST_DIR) would make this build redo ring and everything above it, and
    // the next shell build redo it again.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if TEST_PROCESS_VARS.iter().any(|p| key.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
    cmd.current_dir(workspace_root())
        .args(["build", "--bins", "-p", "drover-node", "-p", "drover-witness", "--target-dir"])
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = run_with_deadline(&mut cmd, BUILD_DEADLINE);
    if !out.success() {
        panic!(
            "building the binaries under test failed ({:?} in {}):\n{}",
            cmd,
            workspace_root().display(),
            out.describe()
        );
    }
}

fn in_dir(dir: &Path) -> Bins {
    let bins = Bins {
        node: dir.join("drover-node"),
        witness: dir.join("drover-witness"),
        ctl: dir.join("droverctl"),
    };
    for path in [&bins.node, &bins.witness, &bins.ctl] {
        assert!(path.is_file(), "binary under test {} does not exist", path.display());
    }
    bins
}
