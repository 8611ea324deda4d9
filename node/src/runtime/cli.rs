//! What `drover-node run` and `drover-witness run` share: logging, loading the config and TLS
//! files (exit code 2 on any problem, before anything touches the data dir), the tokio runtime
//! and SIGTERM/SIGINT handling.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::consensus::types::Role;

/// The arguments `run` and `check-config` take, in both daemons.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Path to node.toml.
    #[arg(long, short)]
    pub config: std::path::PathBuf,
    /// Serve gRPC in plaintext without client certificates (development only).
    #[arg(long)]
    pub insecure_dev: bool,
}

/// The arguments `run` takes: the config, and how to start with an empty data dir.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// With an empty data dir, join the existing cluster as a fresh member (after 'droverctl
    /// member remove' of this node's old entry) instead of refusing to start; then add it
    /// with 'droverctl member add' and 'droverctl member promote'. Also the first start of a
    /// new member (a node.toml without initial_member). Ignored when the data dir holds state.
    #[arg(long, visible_alias = "join")]
    pub rejoin: bool,
}

/// The arguments `recover` takes (see `runtime::recover` and docs/operations.md,
/// "Recovering without quorum").
#[derive(Debug, clap::Args)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// The members that survive, by name, comma-separated (e.g. dr-1,dr-2): the only voters
    /// of the new generation. Must include this node.
    #[arg(long, value_delimiter = ',', required = true)]
    pub survivors: Vec<String>,
    /// Every other voter of the current membership, by name, comma-separated. Naming them
    /// confirms that each is fenced or gone for good: powered off or cut off, and its data dir
    /// wiped before it ever starts again.
    #[arg(long, value_delimiter = ',', required = true)]
    pub confirm_lost: Vec<String>,
    /// On every other survivor: the survivor 'recover' ran on without --follow. This node's
    /// store is put aside and it starts empty (keeping its vote), to receive that survivor's
    /// log.
    #[arg(long)]
    pub follow: Option<String>,
    /// Check everything and print what would be done, but write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Exit code for bad input: config, TLS files, flags.
pub const EXIT_BAD_INPUT: u8 = 2;

/// Exit code for a data dir that cannot be used as it is: damaged, or empty on a node whose
/// cluster already formed. Retrying does not help; re-sync the node (docs/operations.md).
pub const EXIT_DATA: u8 = 3;

/// Installs the human-readable log subscriber on stderr (`RUST_LOG` overrides the filter).
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,h2=warn,tower=warn,hyper=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a daemon from `config_path` until SIGTERM or SIGINT. `required_role` makes a binary
/// refuse configs meant for the other role.
pub fn run_daemon(
    config_path: &Path,
    insecure_dev: bool,
    options: crate::runtime::StartOptions,
    required_role: Option<Role>,
    worker_threads: Option<usize>,
) -> ExitCode {
    let cfg = match crate::config::load(config_path, insecure_dev) {
        Ok(cfg) => cfg,
        Err(e) => return bad_input(&e.to_string()),
    };
    if let Some(role) = required_role {
        if cfg.role != role {
            return bad_input(&format!(
                "{}: role: this binary runs a {role} but the file says {}; use the matching binary (drover-node for controllers, drover-witness for witnesses)",
                cfg.path.display(),
                cfg.role
            ));
        }
    }
    let tls = match &cfg.tls {
        Some(files) => match crate::tls::load(files) {
            Ok(t) => Some(t),
            Err(e) => return bad_input(&format!("{}: tls: {e}", cfg.path.display())),
        },
        None => None,
    };
    // A certificate peers would refuse (expired, another node's, not from the CA) is refused
    // here too, before the node can win an election it cannot serve.
    if let Some(tls) = &tls {
        let now_s = crate::pb::unix_now_ms() / 1000;
        let problems = crate::tls::inspect::check_node_certificates(tls, &cfg.name, now_s);
        if let Some(first) = problems.first() {
            return bad_input(&format!("{}: {first}", cfg.path.display()));
        }
    }
    init_logging();
    if tls.is_none() {
        warn!("--insecure-dev: gRPC is PLAINTEXT and unauthenticated; anyone who reaches {} controls this cluster. Never use this outside a laptop.", cfg.listen_grpc);
    }
    let mut builder = match worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!(cause = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(crate::runtime::run(cfg, tls, options, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("error: {e}");
            if e.is_data_problem() {
                ExitCode::from(EXIT_DATA)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Validates a node.toml and its TLS files without starting anything (`check-config`).
pub fn check_config(path: &Path, insecure_dev: bool, required_role: Option<Role>) -> ExitCode {
    let cfg = match crate::config::load(path, insecure_dev) {
        Ok(c) => c,
        Err(e) => return bad_input(&e.to_string()),
    };
    if let Some(role) = required_role.filter(|r| *r != cfg.role) {
        return bad_input(&format!(
            "{}: role: this binary runs a {role} but the file says {}",
            cfg.path.display(),
            cfg.role
        ));
    }
    let config = cfg.path.display().to_string();
    let mut problems = Vec::new();
    if let Some(files) = &cfg.tls {
        match crate::tls::load(files) {
            Ok(tls) => problems.extend(crate::tls::inspect::check_node_certificates(
                &tls,
                &cfg.name,
                crate::pb::unix_now_ms() / 1000,
            )),
            Err(e) => problems.push(format!("tls: {e}")),
        }
    }
    problems.extend(crate::config::check_usable(&cfg));
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {config}: {p}");
        }
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    println!(
        "{}: ok (node {} \"{}\", site {}, role {}, {} initial members)",
        cfg.path.display(),
        cfg.id,
        cfg.name,
        cfg.site,
        cfg.role,
        cfg.initial_members.len()
    );
    ExitCode::SUCCESS
}

pub(crate) fn bad_input(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(EXIT_BAD_INPUT)
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) =
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(t), Ok(i)) => (t, i),
            _ => {
                // Without signal handlers the process still stops on the default action.
                std::future::pending::<()>().await;
                return;
            }
        };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}
