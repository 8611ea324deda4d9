//! drover-node: the controller daemon, plus `demo`, a self-contained local cluster.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use drover::runtime::cli;

#[derive(Parser)]
#[command(name = "drover-node", version, about = "drover controller node")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node described by a node.toml until SIGTERM.
    Run {
        /// Path to node.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Serve gRPC in plaintext without client certificates (development only).
        #[arg(long)]
        insecure_dev: bool,
    },
    /// Check a node.toml and its TLS files without starting anything; exit code 2 if invalid.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        insecure_dev: bool,
    },
    /// Start a local 5-node cluster (2 prod, 2 dr, 1 witness) on 127.0.0.x, kill its leader,
    /// and show the cluster electing a new one, catching the node up and losing nothing.
    Demo {
        /// Keep the demo's directory (certs, configs, data, logs) instead of deleting it.
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Run { config, insecure_dev } => cli::run_daemon(&config, insecure_dev, None, None),
        Cmd::CheckConfig { config, insecure_dev } => check_config(&config, insecure_dev),
        Cmd::Demo { keep } => demo::run(keep),
    }
}

fn check_config(path: &std::path::Path, insecure_dev: bool) -> ExitCode {
    let cfg = match drover::config::load(path, insecure_dev) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(cli::EXIT_BAD_INPUT);
        }
    };
    if let Some(files) = &cfg.tls {
        if let Err(e) = drover::tls::load(files) {
            eprintln!("error: {}: tls: {e}", cfg.path.display());
            return ExitCode::from(cli::EXIT_BAD_INPUT);
        }
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
