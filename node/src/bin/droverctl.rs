//! droverctl: the operator's admin client (gRPC over mutual TLS).
//!
//! Human tables by default, `--json` for scripts. Exit code 0 on success, 1 when the cluster
//! refused or could not be reached, 2 on bad usage or local files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use drover::client::{render, Client, ClientConfig, ClientError};
use drover::tls::{certs, AdminRole};
use drover_proto::v1 as pb;
use serde_json::json;

/// Longest `fence test` waits for the node's answer: the longest step timeout a spec allows,
/// plus the node's margins for reaching other nodes.
const FENCE_TEST_DEADLINE: Duration = Duration::from_secs(3600 + 60);

/// `println!` that ends droverctl quietly (exit 0) when stdout is closed, as in
/// `droverctl history | head -1`, instead of panicking. (SIGPIPE stays ignored: a node closing
/// its socket must be an error to report, not a signal that kills the process.)
macro_rules! out {
    ($($arg:tt)*) => {
        write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` with [`out!`]'s handling of a closed stdout.
macro_rules! out_raw {
    ($($arg:tt)*) => {
        write_out(format_args!($($arg)*))
    };
}

fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

#[derive(Parser)]
#[command(name = "droverctl", version, about = "Operate a drover cluster")]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args)]
struct Conn {
    /// Member gRPC address(es), HOST:PORT, comma-separated; tried in order.
    #[arg(long, global = true, env = "DROVER_ENDPOINT", value_delimiter = ',')]
    endpoint: Vec<String>,
    /// Directory holding ca.pem, admin.pem and admin-key.pem (as written by `certs init`).
    #[arg(long, global = true, env = "DROVER_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Cluster CA certificate (overrides --tls-dir).
    #[arg(long, global = true, env = "DROVER_CA")]
    ca: Option<PathBuf>,
    /// Client certificate (overrides --tls-dir).
    #[arg(long, global = true, env = "DROVER_CERT")]
    cert: Option<PathBuf>,
    /// Client key (overrides --tls-dir).
    #[arg(long, global = true, env = "DROVER_KEY")]
    key: Option<PathBuf>,
    /// Name expected in the node's certificate, when the endpoint host is not in it.
    #[arg(long, global = true)]
    server_name: Option<String>,
    /// Deadline of each call, e.g. 5s or 500ms.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Talk plaintext to a cluster started with --insecure-dev.
    #[arg(long, global = true)]
    insecure_dev: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Members with site and role, leader, term, commit/applied index, replication lag.
    Status {
        /// This node's own view instead of the leader's.
        #[arg(long)]
        local: bool,
    },
    /// Change the cluster's membership.
    #[command(subcommand)]
    Member(MemberCmd),
    /// Operator notes in the replicated history.
    #[command(subcommand)]
    Note(NoteCmd),
    /// The replicated history (oldest first).
    History {
        /// Only the records of this service.
        service: Option<String>,
        /// Only records of the last DURATION (e.g. 1h, 30m, 2d).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// Only records of these kinds (repeat or comma-separate: failover, switchover,
        /// reprotect, step, commit, resume, pause, ack, reactivate, spec, note, recovery).
        #[arg(long, value_delimiter = ',')]
        kind: Vec<String>,
        /// Only records after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// The replicated cluster spec (sites, services, checks, runbooks, policy).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// End a service's cooldown after an automatic failover, re-arming automatic failover;
    /// with --split-brain SITE, acknowledge instead that standby SITE serves (its passive
    /// checks pass), so that they no longer block a failover or switchover to it at the
    /// current epoch.
    Ack {
        service: String,
        /// The standby whose split-brain alert is acknowledged.
        #[arg(long = "split-brain", value_name = "SITE")]
        split_brain: Option<String>,
    },
    /// Commit a verified failover waiting in pending_commit (manual commit mode).
    Commit { service: String },
    /// End a pause of automatic action, and retry the step a stopped workflow (failover,
    /// switchover, reprotect) stopped at.
    Resume {
        /// The service (or --all).
        service: Option<String>,
        /// Every service.
        #[arg(long, conflicts_with = "service")]
        all: bool,
        /// Follow the resumed workflow until it ends (exit 1 if it fails).
        #[arg(long)]
        wait: bool,
    },
    /// An operator's unplanned failover: fence the active site (or wait out its lease),
    /// activate SITE, verify. Needs the operator role.
    Failover {
        service: String,
        /// The site to activate.
        #[arg(long)]
        to: String,
        /// Why (recorded in the history).
        #[arg(long)]
        reason: String,
        /// Skip the readiness and lag gates (never fencing or the lease wait); recorded.
        #[arg(long)]
        force: bool,
        /// Follow the workflow until it ends (exit 1 if it fails).
        #[arg(long)]
        wait: bool,
    },
    /// A planned, graceful move: deactivate the active site, wait for replication to catch
    /// up, release its lease, activate SITE, verify. Before the release, a failure returns the
    /// service to the old site. Failback is a switchover back.
    Switchover {
        service: String,
        /// The site to activate.
        #[arg(long)]
        to: String,
        /// Why (recorded in the history).
        #[arg(long, default_value = "planned switchover")]
        reason: String,
        /// Switch over even while a passive check of SITE passes (a possible split brain).
        #[arg(long)]
        force: bool,
        /// Follow the workflow until it ends (exit 1 if it fails).
        #[arg(long)]
        wait: bool,
    },
    /// After a failover or switchover: run the reprotect runbooks and protect the standby from
    /// the active site again (automatic failover then moves away from it).
    Reprotect {
        service: String,
        /// Why (recorded in the history).
        #[arg(long, default_value = "reprotect")]
        reason: String,
        /// Follow the workflow until it ends (exit 1 if it fails).
        #[arg(long)]
        wait: bool,
    },
    /// No automatic failover or reactivation (detection and alerts go on). A workflow
    /// already running is not stopped.
    Pause {
        /// The service (or --all).
        service: Option<String>,
        /// Every service.
        #[arg(long, conflicts_with = "service")]
        all: bool,
        /// Why (recorded in the history).
        #[arg(long)]
        reason: String,
        /// End the pause by itself after this long (e.g. 30m, 2h); default: until resumed.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
    },
    /// A dry run: the gates of a failover (or switchover) to SITE with their verdicts now,
    /// every step, where it runs, its timeout and retries, and the worst-case time. Changes
    /// nothing.
    Plan {
        service: String,
        /// The site to activate.
        #[arg(long)]
        to: String,
        /// Plan a planned switchover instead of a failover.
        #[arg(long)]
        switchover: bool,
    },
    /// Follow a service's workflow live until it ends; exit 0 on success, 1 on failure.
    Watch {
        /// The service; default: the first with a workflow in progress.
        service: Option<String>,
    },
    /// Check fencing without fencing anything.
    #[command(subcommand)]
    Fence(FenceCmd),
    /// TLS material for the cluster.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Measure commit latency: commit small notes through Raft and report percentiles.
    /// Each commit adds a history record authored by the certificate's user.
    Bench {
        /// Number of commits.
        #[arg(long, default_value_t = 500)]
        count: u32,
        /// Commits in flight at once.
        #[arg(long, default_value_t = 1)]
        concurrency: u32,
    },
}

#[derive(Subcommand)]
enum MemberCmd {
    /// Add a node as a learner (it replicates but does not vote until promoted).
    Add {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        name: String,
        #[arg(long)]
        site: String,
        /// controller or witness.
        #[arg(long, default_value = "controller")]
        role: String,
        /// The node's gRPC HOST:PORT as the other members reach it.
        #[arg(long)]
        address: String,
    },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a voter or learner from the cluster.
    Remove { id: u64 },
}

#[derive(Subcommand)]
enum NoteCmd {
    /// Append a note to the history, committed through Raft.
    Add {
        text: String,
        /// Only for a cluster without TLS (--insecure-dev); with certificates the author is
        /// always the certificate's user, and a different --author is refused.
        #[arg(long, default_value = "")]
        author: String,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a cluster.toml and commit it through Raft; every problem is listed, nothing
    /// is committed unless the file is valid.
    Apply {
        #[arg(long, short)]
        file: PathBuf,
        /// Apply only if the cluster's spec is still at this version (default: the version
        /// this command read just before, so a concurrent apply makes it fail).
        #[arg(long)]
        expected_version: Option<u64>,
        /// Skip the compare-and-set (overwrite whatever is there).
        #[arg(long)]
        force: bool,
        /// Only for a cluster without TLS (--insecure-dev); with certificates the author is
        /// always the certificate's user, and a different --author is refused.
        #[arg(long, default_value = "")]
        author: String,
    },
    /// Print the spec in force, as it was applied.
    Show,
    /// What applying a file would change.
    Diff {
        #[arg(long, short)]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum FenceCmd {
    /// Run `status` of every fence agent that would fence SITE (its fence and on_lease_lost
    /// runbooks), each on a node where its step would run, and show what each saw. Changes
    /// nothing. Exits 1 when any agent failed.
    Test {
        /// The site whose fencing is tested.
        #[arg(long)]
        site: String,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Create a development CA plus node and admin certificates (no openssl needed).
    Init {
        /// Directory to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// A node certificate: NAME or NAME=HOST[,HOST...] (hosts become SANs). Repeatable.
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
        /// An admin (client-only) certificate: NAME (with --role) or NAME=ROLE, ROLE being
        /// viewer, operator or admin. The name is the user recorded in the history. Repeatable.
        #[arg(long = "admin", default_value = "admin")]
        admins: Vec<String>,
        /// Role of the admin certificates given without one: viewer (reads), operator (also
        /// ack, commit, resume, notes, fence test) or admin (also config apply, membership).
        #[arg(long, default_value = "admin")]
        role: String,
        /// Replace an existing CA in --out.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Certs(CertsCmd::Init { out, nodes, admins, role, force }) = &cli.cmd {
        return certs_init(out, nodes, (admins, role), *force, cli.json);
    }
    let client = match Client::new(client_config(&cli.conn)) {
        // Agents run with their steps' timeouts (up to an hour); the node bounds the call.
        Ok(c) if matches!(cli.cmd, Cmd::Fence(_)) => c.with_call_timeout(FENCE_TEST_DEADLINE),
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&client, &cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &ClientError) -> ExitCode {
    eprintln!("error: {e}");
    match e {
        ClientError::Setup(_) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

fn client_config(c: &Conn) -> ClientConfig {
    let in_dir = |f: &str| c.tls_dir.as_ref().map(|d| d.join(f));
    ClientConfig {
        endpoints: c
            .endpoint
            .iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect(),
        ca: c.ca.clone().or_else(|| in_dir("ca.pem")),
        cert: c.cert.clone().or_else(|| in_dir("admin.pem")),
        key: c.key.clone().or_else(|| in_dir("admin-key.pem")),
        server_name: c.server_name.clone(),
        timeout: c.timeout,
        insecure: c.insecure_dev,
    }
}

/// The kinds of history records (`history --kind`).
const HISTORY_KINDS: &[&str] = &[
    "note",
    "spec",
    "failover",
    "switchover",
    "reprotect",
    "reactivate",
    "step",
    "commit",
    "resume",
    "pause",
    "ack",
    "recovery",
];

async fn run(client: &Client, cli: &Cli) -> Result<(), ClientError> {
    match &cli.cmd {
        Cmd::Status { local } => {
            let local = *local;
            let s = client
                .call(|mut c| async move { c.status(pb::StatusRequest { local }).await })
                .await?;
            if cli.json {
                out!("{}", render::status_json(&s));
            } else {
                out_raw!("{}", render::status_table(&s));
            }
        }
        Cmd::Member(MemberCmd::Add { id, name, site, role, address }) => {
            let req = pb::AddMemberRequest {
                id: *id,
                name: name.clone(),
                site: site.clone(),
                role: role.clone(),
                address: address.clone(),
            };
            let r = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.add_member(req).await }
                })
                .await?;
            print_membership(&format!("added node {id} ({name}) as a learner"), &r, cli.json);
        }
        Cmd::Member(MemberCmd::Promote { id }) => {
            let id = *id;
            let r = client
                .call(|mut c| async move { c.promote_member(pb::MemberRef { id }).await })
                .await?;
            print_membership(&format!("node {id} is now a voter"), &r, cli.json);
        }
        Cmd::Member(MemberCmd::Remove { id }) => {
            let id = *id;
            let r = client
                .call(|mut c| async move { c.remove_member(pb::MemberRef { id }).await })
                .await?;
            print_membership(&format!("node {id} removed"), &r, cli.json);
        }
        Cmd::Note(NoteCmd::Add { text, author }) => {
            let req = pb::AddNoteRequest { author: author.clone(), text: text.clone() };
            let r = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.add_note(req).await }
                })
                .await?;
            if cli.json {
                out!("{}", json!({"seq": r.seq, "log_index": r.log_index}));
            } else {
                out!("note #{} committed at log index {}", r.seq, r.log_index);
            }
        }
        Cmd::History { service, since, kind, after, limit } => {
            if let Some(bad) = kind.iter().find(|k| !HISTORY_KINDS.contains(&k.as_str())) {
                return Err(ClientError::Setup(format!(
                    "--kind {bad:?} is not a history kind; use one or more of {}",
                    HISTORY_KINDS.join(", ")
                )));
            }
            let since_unix_ms = since.map_or(0, |d| {
                drover::pb::unix_now_ms().saturating_sub(d.as_millis().min(i64::MAX as u128) as i64)
            });
            let req = pb::HistoryRequest {
                after_seq: *after,
                limit: *limit,
                service: service.clone().unwrap_or_default(),
                since_unix_ms,
                kinds: kind.clone(),
            };
            let r = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.history(req).await }
                })
                .await?;
            if cli.json {
                out!("{}", render::history_json(&r));
            } else {
                out_raw!("{}", render::history_table(&r));
            }
        }
        Cmd::Bench { count, concurrency } => bench(client, *count, *concurrency, cli.json).await?,
        Cmd::Config(ConfigCmd::Apply { file, expected_version, force, author }) => {
            let text = read_spec(file)?;
            let expected = if *force {
                None
            } else if expected_version.is_some() {
                *expected_version
            } else {
                let shown = client
                    .call(|mut c| async move { c.config_show(pb::ConfigShowRequest {}).await })
                    .await;
                match shown {
                    Ok(s) => Some(s.version),
                    Err(ClientError::Refused(m)) if m.contains("no cluster spec") => Some(0),
                    // The version read is refused to a certificate that is no admin at all;
                    // say what the apply itself needs, not what the read needed.
                    Err(ClientError::Refused(m))
                        if m.contains("/drover.v1.Admin/ConfigShow needs") =>
                    {
                        return Err(ClientError::Refused(format!(
                            "config apply needs an admin certificate with role admin \
                             (drover://role/admin); this certificate may not even read the \
                             current spec: {m}"
                        )))
                    }
                    Err(e) => return Err(e),
                }
            };
            let req =
                pb::ConfigApplyRequest { text, expected_version: expected, author: author.clone() };
            let r = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.config_apply(req).await }
                })
                .await?;
            if cli.json {
                out!("{}", json!({"version": r.version, "changes": r.changes}));
            } else {
                out!("cluster spec version {} committed", r.version);
                for c in &r.changes {
                    out!("  {c}");
                }
            }
        }
        Cmd::Config(ConfigCmd::Show) => {
            let r = client
                .call(|mut c| async move { c.config_show(pb::ConfigShowRequest {}).await })
                .await?;
            if cli.json {
                out!(
                    "{}",
                    json!({"version": r.version, "text": r.text, "applied_by": r.applied_by, "applied_at_unix_ms": r.applied_at_unix_ms})
                );
            } else {
                out!("# cluster spec version {}, applied by {}", r.version, r.applied_by);
                out_raw!("{}", r.text);
            }
        }
        Cmd::Config(ConfigCmd::Diff { file }) => {
            let text = read_spec(file)?;
            let r = client
                .call(|mut c| {
                    let text = text.clone();
                    async move { c.config_diff(pb::ConfigDiffRequest { text }).await }
                })
                .await?;
            if cli.json {
                out!("{}", json!({"current_version": r.current_version, "changes": r.changes}));
            } else if r.changes.is_empty() {
                out!("no changes against version {}", r.current_version);
            } else {
                out!("against version {}:", r.current_version);
                for c in &r.changes {
                    out!("  {c}");
                }
            }
        }
        Cmd::Ack { service, split_brain } => {
            let req = pb::ServiceActionRequest {
                to: split_brain.clone().unwrap_or_default(),
                ..action_req(Some(service), "ack", false)?
            };
            service_action_req(client, req, cli.json).await?;
        }
        Cmd::Commit { service } => service_action(client, service, "commit", cli.json).await?,
        Cmd::Resume { service, all, wait } => {
            let req = action_req(service.as_deref(), "resume", *all)?;
            let r = service_action_req(client, req, cli.json).await?;
            if *wait {
                if r.done.iter().any(|d| d.contains("resumed at step")) {
                    // The resumed workflow (the newest of the service, id >= 0).
                    follow(client, service.clone(), Some(0), cli.json).await?;
                } else {
                    out!("--wait: no workflow was resumed, nothing to follow");
                }
            }
        }
        Cmd::Failover { service, to, reason, force, wait } => {
            let req = pb::ServiceActionRequest {
                to: to.clone(),
                reason: reason.clone(),
                force: *force,
                ..action_req(Some(service), "failover", false)?
            };
            let r = service_action_req(client, req, cli.json).await?;
            if *wait {
                follow(client, Some(service.clone()), Some(r.workflow_id), cli.json).await?;
            }
        }
        Cmd::Switchover { service, to, reason, force, wait } => {
            let req = pb::ServiceActionRequest {
                to: to.clone(),
                reason: reason.clone(),
                force: *force,
                ..action_req(Some(service), "switchover", false)?
            };
            let r = service_action_req(client, req, cli.json).await?;
            if *wait {
                follow(client, Some(service.clone()), Some(r.workflow_id), cli.json).await?;
            }
        }
        Cmd::Reprotect { service, reason, wait } => {
            let req = pb::ServiceActionRequest {
                reason: reason.clone(),
                ..action_req(Some(service), "reprotect", false)?
            };
            let r = service_action_req(client, req, cli.json).await?;
            if *wait {
                follow(client, Some(service.clone()), Some(r.workflow_id), cli.json).await?;
            }
        }
        Cmd::Pause { service, all, reason, duration } => {
            if duration.is_some_and(|d| d.is_zero()) {
                return Err(ClientError::Setup(
                    "--for 0s would end the pause at once; give a duration, or leave --for out \
                     to pause until 'droverctl resume'"
                        .into(),
                ));
            }
            let req = pb::ServiceActionRequest {
                reason: reason.clone(),
                for_ms: duration.map_or(0, |d| d.as_millis() as u64),
                ..action_req(service.as_deref(), "pause", *all)?
            };
            service_action_req(client, req, cli.json).await?;
        }
        Cmd::Watch { service } => follow(client, service.clone(), None, cli.json).await?,
        Cmd::Plan { service, to, switchover } => {
            let req = pb::PlanRequest {
                service: service.clone(),
                to: to.clone(),
                switchover: *switchover,
            };
            let r = client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.plan(req).await }
                })
                .await?;
            if cli.json {
                out!("{}", render::plan_json(&r));
            } else {
                out_raw!("{}", render::plan_table(service, &r));
            }
        }
        Cmd::Fence(FenceCmd::Test { site }) => fence_test(client, site, cli.json).await?,
        Cmd::Certs(_) => unreachable!("handled before connecting"),
    }
    Ok(())
}

fn certs_init(
    out: &Path,
    nodes: &[String],
    (admins, role): (&[String], &str),
    force: bool,
    as_json: bool,
) -> ExitCode {
    let Some(role) = AdminRole::parse(role) else {
        eprintln!("error: --role {role:?} is not one of viewer, operator, admin");
        return ExitCode::from(2);
    };
    let subjects: Result<Vec<_>, _> = nodes.iter().map(|n| certs::parse_subject(n)).collect();
    let admins: Result<Vec<_>, _> = admins.iter().map(|a| certs::parse_admin(a, role)).collect();
    let result = subjects.and_then(|s| certs::init(out, &s, &admins?, force));
    match result {
        Ok(files) => {
            if as_json {
                let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
                out!("{}", json!({ "files": files }));
            } else {
                out!("wrote {} files to {}:", files.len(), out.display());
                for f in files {
                    out!("  {}", f.display());
                }
                out!(
                    "keep ca-key.pem offline in production: whoever holds it can join the cluster"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn print_membership(what: &str, r: &pb::MembershipReply, as_json: bool) {
    if as_json {
        out!("{}", json!({"log_index": r.log_index, "voters": r.voters, "learners": r.learners}));
    } else {
        out!(
            "{what} (log index {}); voters {:?}, learners {:?}",
            r.log_index,
            r.voters,
            r.learners
        );
    }
}

async fn bench(
    client: &Client,
    count: u32,
    concurrency: u32,
    as_json: bool,
) -> Result<(), ClientError> {
    if count == 0 || concurrency == 0 || concurrency > 256 {
        return Err(ClientError::Setup(
            "--count must be > 0 and --concurrency between 1 and 256".into(),
        ));
    }
    // Warm up the connection (and find the leader) outside the measurement.
    client.call(|mut c| async move { c.status(pb::StatusRequest { local: false }).await }).await?;
    let started = std::time::Instant::now();
    let per_worker = count.div_ceil(concurrency);
    let workers = (0..concurrency).map(|w| async move {
        let mut samples = Vec::with_capacity(per_worker as usize);
        for i in 0..per_worker {
            let n = w * per_worker + i;
            if n >= count {
                break;
            }
            let req =
                pb::AddNoteRequest { author: String::new(), text: format!("bench commit {n}") };
            let t = std::time::Instant::now();
            client
                .call(|mut c| {
                    let req = req.clone();
                    async move { c.add_note(req).await }
                })
                .await?;
            samples.push(t.elapsed());
        }
        Ok::<_, ClientError>(samples)
    });
    let mut samples = Vec::new();
    for r in futures::future::join_all(workers).await {
        samples.extend(r?);
    }
    let wall = started.elapsed();
    samples.sort();
    let pct = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[i.min(samples.len() - 1)].as_secs_f64() * 1000.0
    };
    let rate = samples.len() as f64 / wall.as_secs_f64();
    if as_json {
        out!(
            "{}",
            json!({"commits": samples.len(), "concurrency": concurrency, "p50_ms": pct(0.5),
                   "p90_ms": pct(0.9), "p99_ms": pct(0.99), "max_ms": pct(1.0), "commits_per_s": rate})
        );
    } else {
        out!(
            "{} commits, concurrency {concurrency}: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {rate:.0} commits/s",
            samples.len(), pct(0.5), pct(0.9), pct(0.99), pct(1.0)
        );
    }
    Ok(())
}

async fn fence_test(client: &Client, site: &str, as_json: bool) -> Result<(), ClientError> {
    let req = pb::FenceTestRequest { site: site.to_string() };
    let r = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.fence_test(req).await }
        })
        .await?;
    if as_json {
        out!("{}", render::fence_test_json(site, &r));
    } else {
        out_raw!("{}", render::fence_test_table(site, &r));
    }
    let failed = r.results.iter().filter(|x| !x.ok).count();
    if failed > 0 {
        return Err(ClientError::Refused(format!(
            "{failed} of {} fence agent(s) for site {site} failed their status check",
            r.results.len()
        )));
    }
    Ok(())
}

fn read_spec(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path).map_err(|e| {
        ClientError::Setup(format!(
            "cannot read {}: {e}; pass the cluster spec with -f",
            path.display()
        ))
    })
}

async fn service_action(
    client: &Client,
    service: &str,
    action: &str,
    as_json: bool,
) -> Result<(), ClientError> {
    service_action_req(client, action_req(Some(service), action, false)?, as_json).await?;
    Ok(())
}

/// A `ServiceAction` for `service` (or every service with `all`); the node records the
/// certificate's user as the author.
fn action_req(
    service: Option<&str>,
    action: &str,
    all: bool,
) -> Result<pb::ServiceActionRequest, ClientError> {
    if service.is_none() && !all {
        return Err(ClientError::Setup(format!(
            "{action}: name a service, or --all for every service"
        )));
    }
    Ok(pb::ServiceActionRequest {
        service: service.unwrap_or_default().to_string(),
        action: action.to_string(),
        all,
        ..Default::default()
    })
}

async fn service_action_req(
    client: &Client,
    req: pb::ServiceActionRequest,
    as_json: bool,
) -> Result<pb::ServiceActionReply, ClientError> {
    let r = client
        .call(|mut c| {
            let req = req.clone();
            async move { c.service_action(req).await }
        })
        .await?;
    let (service, action) = (&req.service, &req.action);
    if as_json {
        out!(
            "{}",
            json!({"service": service, "all": req.all, "action": action, "log_index": r.log_index,
                   "workflow_id": r.workflow_id, "done": r.done})
        );
    } else if r.done.is_empty() {
        out!("{action}: nothing to do");
    } else {
        for line in &r.done {
            out!("{line}");
        }
    }
    Ok(r)
}

/// `watch` and `--wait`: follows the workflow; a failed one is exit code 1. With `--json`,
/// nothing is printed as it goes and the outcome is one JSON object.
async fn follow(
    client: &Client,
    service: Option<String>,
    workflow_id: Option<u64>,
    json: bool,
) -> Result<(), ClientError> {
    use drover::client::watch::{watch, Outcome, Target};
    let target = Target { service, workflow_id, quiet: json };
    let (ok, text) = match watch(client, &target).await? {
        Outcome::Succeeded(text) => (true, text),
        Outcome::Failed(text) => (false, text),
    };
    if json {
        out!("{}", json!({"outcome": if ok { "succeeded" } else { "failed" }, "text": text}));
    } else if ok {
        out!("{text}");
    }
    if ok {
        Ok(())
    } else {
        Err(ClientError::Refused(text))
    }
}
