//! drover-witness: the third-site voter. It holds the Raft log and votes like any member, so
//! neither site alone is a majority, but it never runs workflow steps and never becomes the
//! active site. It is the same node library as drover-node, on a single-threaded runtime to
//! stay small.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use drover::consensus::types::Role;
use drover::runtime::cli;

#[derive(Parser)]
#[command(name = "drover-witness", version, about = "drover witness: a voter that never acts")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the witness described by a node.toml (role = "witness") until SIGTERM.
    Run(cli::RunArgs),
    /// Check a node.toml and its TLS files without starting anything; exit code 2 if invalid.
    CheckConfig(cli::DaemonArgs),
    /// Print what the stopped witness's data store holds (last log id, vote, membership).
    Inspect(cli::DaemonArgs),
    /// DANGER: on a stopped surviving witness of a cluster that lost its quorum for good,
    /// start a new generation with only the survivors as voters (see drover-node recover).
    Recover(cli::RecoverArgs),
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Run(a) => cli::run_daemon(
            &a.daemon.config,
            a.daemon.insecure_dev,
            drover::runtime::StartOptions { rejoin: a.rejoin },
            Some(Role::Witness),
            Some(1),
        ),
        Cmd::CheckConfig(a) => cli::check_config(&a.config, a.insecure_dev, Some(Role::Witness)),
        Cmd::Inspect(a) => drover::runtime::recover::inspect(&a, Some(Role::Witness)),
        Cmd::Recover(a) => drover::runtime::recover::recover(&a, Some(Role::Witness)),
    }
}
