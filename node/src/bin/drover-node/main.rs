//! drover-node: the controller daemon, plus `demo`, a self-contained local cluster.

mod demo;

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
    Run(cli::RunArgs),
    /// Check a node.toml and its TLS files without starting anything; exit code 2 if invalid.
    CheckConfig(cli::DaemonArgs),
    /// Print what a stopped node's data store holds (last log id, vote, membership), to choose
    /// the survivor to recover from.
    Inspect(cli::DaemonArgs),
    /// DANGER: on a stopped survivor of a cluster that lost its quorum for good, start a new
    /// generation with only the survivors as voters (docs/operations.md, "Recovering without
    /// quorum").
    Recover(cli::RecoverArgs),
    /// Start a local 5-node cluster (2 prod, 2 dr, 1 witness) on 127.0.0.x with a small
    /// application per site, stop the prod application and watch drover fail it over to dr.
    Demo {
        /// Keep the demo's directory (certs, configs, data, logs, ledger) instead of deleting it.
        #[arg(long)]
        keep: bool,
        /// Repeat the failover this many times (each on a fresh cluster), quietly, and print
        /// the median and maximum time of each phase: the failover benchmark.
        #[arg(long, default_value_t = 1)]
        runs: u32,
        /// Use drover's default policy and check timings instead of the demo's faster ones.
        #[arg(long)]
        default_policy: bool,
    },
    /// The demo's stand-in application: answers GET /healthz with 200 until stopped.
    #[command(hide = true)]
    DemoApp {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        site: String,
    },
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Run(a) => cli::run_daemon(
            &a.daemon.config,
            a.daemon.insecure_dev,
            drover::runtime::StartOptions { rejoin: a.rejoin },
            None,
            None,
        ),
        Cmd::CheckConfig(a) => cli::check_config(&a.config, a.insecure_dev, None),
        Cmd::Inspect(a) => drover::runtime::recover::inspect(&a, None),
        Cmd::Recover(a) => drover::runtime::recover::recover(&a, None),
        Cmd::Demo { keep, runs, default_policy } => demo::run(keep, runs, default_policy),
        Cmd::DemoApp { listen, site } => demo::app(listen, site),
    }
}
