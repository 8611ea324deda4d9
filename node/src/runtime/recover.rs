//! Recovering the controller without quorum: `drover-node inspect` and `drover-node recover`,
//! run on stopped survivors (like etcd's `--force-new-cluster`).
//!
//! When a site and the witness are lost together, the survivors (dr-1 and dr-2 of a 2 + 2 + 1
//! cluster) are a minority and refuse every write, forever. `recover` starts a new
//! *generation* of the cluster from one survivor's state, with only the survivors as voters:
//!
//! ```text
//!  inspect on each survivor ──▶ pick C: the highest last log id (term, then index)
//!  recover on C            ──▶ C's log + [membership: survivors only] + [Recovery record],
//!                              both under term T' = C's term + RECOVERY_TERM_JUMP, and the
//!                              vote "C leads T'" (committed)
//!  recover --follow C on   ──▶ their store put aside; a fresh one holding only their vote
//!    every other survivor
//!  run C, then the others  ──▶ C restarts as the leader of T' (as any leader restarting does),
//!                              replicates its whole log to the others, commits once a
//!                              majority of the survivors has it; applying the record puts the
//!                              recovery in the history
//!  lost members            ──▶ wiped, `run --rejoin`, `droverctl member add` / `promote`
//! ```
//!
//! Why this is safe:
//! - **One history.** Every member of the new generation holds a copy of C's log and nothing
//!   else: the other survivors start from an empty log and the lost members from an empty data
//!   dir. No member can hold entries conflicting with the new generation's log, so nothing
//!   committed or applied anywhere in it is ever truncated. (Keeping another survivor's log
//!   would not be safe: Raft can leave a survivor holding an applied entry that C, though its
//!   last log id is higher, holds a different entry for at the same index.)
//! - **One leader of T'.** The membership entry takes effect as soon as it is in the log
//!   (openraft 0.9 uses the newest membership entry in the log, committed or not:
//!   `StorageHelper::get_membership`), so C starts as the leader of T' over the survivors. No
//!   one else can lead T': it is far above every term the survivors voted in, and the other
//!   survivors keep their vote in their fresh store, so none votes twice in a term. (A
//!   survivor that voted in a term above T' refuses C; `inspect` shows its vote.)
//! - **The lost members cannot disrupt it.** They are no longer in the membership, and over
//!   mutual TLS a node refuses every Raft call from a node it does not list (`api::authz`). A
//!   lost member restarted on its old data still holds the old membership and a term about
//!   [`RECOVERY_TERM_JUMP`] below T', more than `api::raft::MAX_TERM_AHEAD`: it refuses the
//!   new generation's messages too, so it is never silently caught up (which would truncate
//!   entries it applied). What only the operator can rule out, and `--confirm-lost` states:
//!   the lost members must not run again on their old data, since together (prod-1, prod-2
//!   and the witness are 3 of 5) they are a majority of the *old* membership and would carry
//!   on the old generation beside the new one.
//! - **Leases.** A lease confirmed by the old generation was confirmed before its members were
//!   lost, so before the recovery, so before T' began: the lease wait, measured from the
//!   leader's term start at the earliest, covers it.
//!
//! What is lost: entries the lost members committed that C never received, and whatever only
//! another survivor held (kept aside in its data dir for analysis).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use openraft::{CommittedLeaderId, Entry as RaftEntry, EntryPayload, Membership, Vote};

use super::cli::{bad_input, DaemonArgs, RecoverArgs, EXIT_DATA};
use crate::api::raft::{MAX_TERM, MAX_TERM_AHEAD};
use crate::config::NodeConfig;
use crate::consensus::state::Recovery;
use crate::consensus::store::{self, offline, StoreError, StoreOptions};
use crate::consensus::types::{Entry, LogId, Member, NodeId, Request, Role};

/// How far above the chosen survivor's own term the new generation starts. More than
/// `MAX_TERM_AHEAD`, so that a lost member restarted on its old data refuses the new
/// generation's messages; twice that, so it still does after a thousand elections the chosen
/// survivor did not see.
pub const RECOVERY_TERM_JUMP: u64 = 2 * MAX_TERM_AHEAD;

/// Who does what in a recovery, checked against this node's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// This node.
    pub me: NodeId,
    /// The voters of the new generation.
    pub survivors: BTreeMap<NodeId, Member>,
    /// The voters confirmed lost, removed from the membership.
    pub lost: BTreeMap<NodeId, Member>,
    /// Learners of the current membership: not carried over (they rejoin like lost members).
    pub learners: BTreeMap<NodeId, Member>,
    /// With `--follow`: the survivor whose log this node will receive.
    pub follow: Option<(NodeId, Member)>,
}

/// Checks the operator's `--survivors`, `--confirm-lost` and `--follow` against `membership`,
/// the membership in force in this node's store. Pure; the error says what is wrong and what
/// to do.
pub fn plan(
    me: NodeId,
    membership: &Membership<NodeId, Member>,
    survivors: &[String],
    confirm_lost: &[String],
    follow: Option<&str>,
) -> Result<Plan, String> {
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let by_name: BTreeMap<&str, NodeId> =
        membership.nodes().map(|(id, m)| (m.name.as_str(), *id)).collect();
    let names = |ids: &mut dyn Iterator<Item = NodeId>| -> String {
        ids.filter_map(|id| membership.get_node(&id).map(|m| m.name.clone()))
            .collect::<Vec<_>>()
            .join(",")
    };
    let voter_names = names(&mut voters.iter().copied());
    if voters.is_empty() {
        return Err("this node's store holds no membership: there is nothing to recover".into());
    }
    if !voters.contains(&me) {
        return Err(format!(
            "this node (id {me}) is not a voter of the membership in its store (voters: \
             {voter_names}); run recover on a surviving voter"
        ));
    }
    let resolve = |flag: &str, list: &[String]| -> Result<BTreeSet<NodeId>, String> {
        let mut ids = BTreeSet::new();
        for name in list.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            let Some(&id) = by_name.get(name) else {
                return Err(format!(
                    "{flag}: '{name}' is not a member of this node's membership (voters: \
                     {voter_names}); use the member names 'inspect' prints"
                ));
            };
            if !voters.contains(&id) {
                return Err(format!(
                    "{flag}: '{name}' is a learner, not a voter; only voters are survivors or \
                     lost (a learner is dropped by the recovery and rejoins with 'droverctl \
                     member add')"
                ));
            }
            if !ids.insert(id) {
                return Err(format!("{flag}: '{name}' is named twice"));
            }
        }
        Ok(ids)
    };
    let survivor_ids = resolve("--survivors", survivors)?;
    let lost_ids = resolve("--confirm-lost", confirm_lost)?;
    if let Some(both) = survivor_ids.intersection(&lost_ids).next() {
        return Err(format!(
            "'{}' is named both in --survivors and in --confirm-lost; a member is one or the other",
            names(&mut std::iter::once(*both))
        ));
    }
    if !survivor_ids.contains(&me) {
        return Err(format!(
            "--survivors does not name this node ({}); recover runs on a survivor, with \
             --survivors naming it too",
            names(&mut std::iter::once(me))
        ));
    }
    let others: BTreeSet<NodeId> = voters.difference(&survivor_ids).copied().collect();
    if lost_ids != others {
        let missing: Vec<NodeId> = others.difference(&lost_ids).copied().collect();
        return Err(format!(
            "--confirm-lost must name every voter that is not a survivor, to confirm each is \
             fenced or gone: missing {}",
            names(&mut missing.into_iter())
        ));
    }
    if membership.get_joint_config().iter().all(|config| {
        let alive = config.iter().filter(|id| survivor_ids.contains(id)).count();
        alive > config.len() / 2
    }) {
        return Err(format!(
            "the survivors ({}) are a majority of the voters ({voter_names}): they can elect a \
             leader and commit without a recovery. If they do not, find out why ('droverctl \
             status' on each, their logs, the network between them) instead",
            names(&mut survivor_ids.iter().copied())
        ));
    }
    let follow = match follow {
        None => None,
        Some(name) => {
            let name = name.trim();
            match by_name.get(name) {
                Some(&id) if id == me => {
                    return Err(format!(
                        "--follow names this node ({name}); run recover without --follow on \
                         the survivor the others follow"
                    ))
                }
                Some(&id) if survivor_ids.contains(&id) => {
                    Some((id, membership.get_node(&id).cloned().unwrap_or_default()))
                }
                _ => {
                    return Err(format!(
                        "--follow: '{name}' is not one of the survivors; name the survivor \
                         recover ran on without --follow"
                    ))
                }
            }
        }
    };
    let members = |ids: &BTreeSet<NodeId>| -> BTreeMap<NodeId, Member> {
        ids.iter().filter_map(|id| membership.get_node(id).map(|m| (*id, m.clone()))).collect()
    };
    let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
    Ok(Plan {
        me,
        survivors: members(&survivor_ids),
        lost: members(&lost_ids),
        learners: members(&learners),
        follow,
    })
}

/// The two entries and the vote that start a new generation on the chosen survivor.
#[derive(Debug, Clone)]
pub struct NewGeneration {
    /// The membership entry (survivors only), then the history record.
    pub entries: Vec<Entry>,
    /// The vote: this node leads the new generation's term.
    pub vote: Vote<NodeId>,
    /// The record, as written.
    pub record: Recovery,
}

/// Builds the new generation after the log described by `summary`. Pure.
pub fn new_generation(
    plan: &Plan,
    summary: &offline::Summary,
    by: &str,
    at_unix_ms: i64,
) -> Result<NewGeneration, String> {
    let own_term = summary
        .vote
        .map_or(0, |v| v.leader_id.term)
        .max(summary.last_log_id.map_or(0, |l| l.leader_id.term));
    let term = own_term + RECOVERY_TERM_JUMP;
    if term > MAX_TERM {
        return Err(format!(
            "this node's term {own_term} leaves no room for a new generation (terms stop at \
             {MAX_TERM})"
        ));
    }
    let next = summary.last_log_id.map_or(0, |l| l.index + 1);
    let leader = CommittedLeaderId::new(term, plan.me);
    let voters: BTreeSet<NodeId> = plan.survivors.keys().copied().collect();
    let membership = Membership::new(vec![voters], plan.survivors.clone());
    let record = Recovery {
        generation: summary.generation + 1,
        term,
        by: by.to_string(),
        node: plan.survivors.get(&plan.me).map(|m| m.name.clone()).unwrap_or_default(),
        from_log: log_id_text(summary.last_log_id),
        survivors: plan.survivors.values().map(|m| m.name.clone()).collect(),
        lost: plan.lost.values().map(|m| m.name.clone()).collect(),
        at_unix_ms,
    };
    let entries = vec![
        RaftEntry {
            log_id: LogId::new(leader, next),
            payload: EntryPayload::Membership(membership),
        },
        RaftEntry {
            log_id: LogId::new(leader, next + 1),
            payload: EntryPayload::Normal(Request::Recovery(record.clone())),
        },
    ];
    Ok(NewGeneration { entries, vote: Vote::new_committed(term, plan.me), record })
}

/// `term-index`, or `none`.
pub fn log_id_text(id: Option<LogId>) -> String {
    id.map_or_else(|| "none".to_string(), |l| format!("{}-{}", l.leader_id.term, l.index))
}

fn vote_text(vote: Option<Vote<NodeId>>) -> String {
    match vote {
        None => "none".to_string(),
        Some(v) => format!(
            "term {}, for node {}{}",
            v.leader_id.term,
            v.leader_id.node_id,
            if v.is_committed() { " (a leader it followed or was)" } else { "" }
        ),
    }
}

fn member_list(members: &BTreeMap<NodeId, Member>) -> String {
    if members.is_empty() {
        return "none".to_string();
    }
    members
        .iter()
        .map(|(id, m)| format!("{} (id {id}, {})", m.name, m.site))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Who runs the command, for the history: the user behind sudo, else the login user.
fn operator() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "an unknown user".to_string())
}

/// A node's store opened for an offline command, with its summary.
struct Opened {
    cfg: NodeConfig,
    path: PathBuf,
    log: store::LogStore,
    state_machine: store::StateMachine,
    summary: offline::Summary,
}

/// Loads the config and opens the store exclusively; the error is the exit code to use.
fn open(daemon: &DaemonArgs, what: &str, required_role: Option<Role>) -> Result<Opened, ExitCode> {
    let cfg = crate::config::load(&daemon.config, daemon.insecure_dev)
        .map_err(|e| bad_input(&e.to_string()))?;
    let config = cfg.path.display().to_string();
    if let Some(role) = required_role.filter(|r| *r != cfg.role) {
        return Err(bad_input(&format!(
            "{config}: role: this binary runs a {role} but the file says {}; use the matching binary",
            cfg.role
        )));
    }
    let path = cfg.data_dir.join(store::DB_FILE_NAME);
    if !path.is_file() {
        return Err(bad_input(&format!(
            "{config}: {what}: there is no data store at {}: this node holds no cluster state \
             (check data_dir in {config})",
            path.display()
        )));
    }
    let (log, state_machine) = match store::open(&cfg.data_dir, StoreOptions::default()) {
        Ok(s) => s,
        Err(StoreError::AlreadyOpen { path }) => {
            return Err(bad_input(&format!(
                "{config}: {what} refused: the data store {} is in use: the node is running. \
                 Stop it first (e.g. 'systemctl stop drover-node'), then run {what} again",
                path.display()
            )))
        }
        Err(e) => {
            eprintln!("error: {config}: {what}: {e}");
            let code = if matches!(e, StoreError::Corrupt { .. } | StoreError::Read { .. }) {
                EXIT_DATA
            } else {
                1
            };
            return Err(ExitCode::from(code));
        }
    };
    let summary = offline::summarize(&log).map_err(|e| {
        eprintln!("error: {config}: {what}: {e}");
        ExitCode::from(EXIT_DATA)
    })?;
    Ok(Opened { cfg, path, log, state_machine, summary })
}

/// `inspect`: prints what the stopped node's store holds, to choose where to recover.
pub fn inspect(daemon: &DaemonArgs, required_role: Option<Role>) -> ExitCode {
    let opened = match open(daemon, "inspect", required_role) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let Opened { cfg, path, summary: s, .. } = &opened;
    let membership = s.membership.membership();
    let list = |ids: Vec<NodeId>| -> String {
        let names: Vec<String> = ids
            .iter()
            .map(|id| match membership.get_node(id) {
                Some(m) => format!("{} (id {id}, {})", m.name, m.site),
                None => format!("id {id}"),
            })
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    println!(
        "node {} (id {}, site {}, {}), data store {}",
        cfg.name,
        cfg.id,
        cfg.site,
        cfg.role,
        path.display()
    );
    println!("  last log id:  {}", log_id_text(s.last_log_id));
    println!("  committed:    {} (as far as this node knows)", log_id_text(s.committed));
    println!("  last applied: {}", log_id_text(s.last_applied));
    println!("  last purged:  {}", log_id_text(s.last_purged));
    println!("  vote:         {}", vote_text(s.vote));
    println!(
        "  membership:   voters {}; learners {} (entry {})",
        list(membership.voter_ids().collect()),
        list(membership.learner_ids().collect()),
        log_id_text(s.membership.log_id().to_owned())
    );
    println!("  generation:   {} (recoveries without quorum so far)", s.generation);
    println!(
        "To recover without quorum, run 'recover' on the survivor whose last log id is the \
         highest (compare the term first, then the index); see docs/operations.md, \
         \"Recovering without quorum\"."
    );
    ExitCode::SUCCESS
}

/// `recover`: checks the operator's flags against the stopped node's store, prints what it
/// does, and (unless `--dry-run`) does it.
pub fn recover(args: &RecoverArgs, required_role: Option<Role>) -> ExitCode {
    let opened = match open(&args.daemon, "recover", required_role) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let config = opened.cfg.path.display().to_string();
    if opened.summary.is_empty() {
        return bad_input(&format!(
            "{config}: recover refused: the data store {} holds no cluster state; there is \
             nothing to recover from here",
            opened.path.display()
        ));
    }
    let plan = match plan(
        opened.cfg.id,
        opened.summary.membership.membership(),
        &args.survivors,
        &args.confirm_lost,
        args.follow.as_deref(),
    ) {
        Ok(p) => p,
        Err(why) => return bad_input(&format!("{config}: recover refused: {why}")),
    };
    match &plan.follow {
        None => lead(opened, &plan, args),
        Some(leader) => follow(opened, &plan, leader.clone(), args),
    }
}

fn banner(opened: &Opened, plan: &Plan, what: &str) {
    let s = &opened.summary;
    println!("==================================================================================");
    println!(" RECOVERY WITHOUT QUORUM: {what}");
    println!("==================================================================================");
    println!(
        " node:              {} (id {}), data store {}",
        opened.cfg.name,
        opened.cfg.id,
        opened.path.display()
    );
    println!(
        " its log ends at:   {} (applied {}, committed as far as it knows {})",
        log_id_text(s.last_log_id),
        log_id_text(s.last_applied),
        log_id_text(s.committed)
    );
    println!(" its vote:          {}", vote_text(s.vote));
    println!(
        " survivors:         {}  <- the only voters from now on",
        member_list(&plan.survivors)
    );
    println!(" confirmed lost:    {}  <- removed from the membership", member_list(&plan.lost));
    if !plan.learners.is_empty() {
        println!(
            " learners dropped:  {}  <- they rejoin with 'droverctl member add'",
            member_list(&plan.learners)
        );
    }
    println!();
    println!(" You confirm that every lost member is fenced or gone for good: powered off or cut");
    println!(" off, and that none will start again on its old data dir. Together the lost members");
    println!(
        " may be a majority of the OLD membership and would run the old cluster beside the new"
    );
    println!(" one. Before one comes back: wipe its data dir, start it with 'run --rejoin', then");
    println!(" 'droverctl member add' and 'droverctl member promote' it.");
}

fn lead(opened: Opened, plan: &Plan, args: &RecoverArgs) -> ExitCode {
    let config = opened.cfg.path.display().to_string();
    let generation =
        match new_generation(plan, &opened.summary, &operator(), crate::pb::unix_now_ms()) {
            Ok(g) => g,
            Err(why) => return bad_input(&format!("{config}: recover refused: {why}")),
        };
    let record = &generation.record;
    banner(&opened, plan, "a new generation starts from this node's log");
    println!();
    println!(
        " new generation:    {} in term {} (this node leads it when it starts)",
        record.generation, record.term
    );
    println!(
        " written to its log: entry {} (membership: the survivors only) and entry {} (the",
        log_id_text(Some(generation.entries[0].log_id)),
        log_id_text(Some(generation.entries[1].log_id))
    );
    println!("                    recovery record for the history, author {})", record.by);
    println!(
        " lost for good:     whatever the lost members committed that this node never received;"
    );
    println!(
        "                    run this on the survivor with the highest last log id ('inspect')."
    );
    let others: Vec<&Member> =
        plan.survivors.iter().filter(|(id, _)| **id != plan.me).map(|(_, m)| m).collect();
    let flags = format!(
        "--survivors {} --confirm-lost {}",
        plan.survivors.values().map(|m| m.name.as_str()).collect::<Vec<_>>().join(","),
        plan.lost.values().map(|m| m.name.as_str()).collect::<Vec<_>>().join(",")
    );
    println!();
    println!(" next:");
    let mut step = 1;
    for m in &others {
        println!("  {step}. on {} (stopped): drover-node recover --config <its node.toml> {flags} --follow {}", m.name, opened.cfg.name);
        step += 1;
    }
    println!("  {step}. start this node: drover-node run --config {config}");
    println!(
        "  {}. start the other survivors; 'droverctl status' lists the survivors as voters",
        step + 1
    );
    println!("==================================================================================");
    if args.dry_run {
        println!("--dry-run: nothing written");
        return ExitCode::SUCCESS;
    }
    let backup = match backup_copy(&opened.path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {config}: recover: {e}; nothing written");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = offline::write_recovery(&opened.log, &generation.entries, &generation.vote) {
        eprintln!(
            "error: {config}: recover: {e}; the store before the attempt is in {}",
            backup.display()
        );
        return ExitCode::FAILURE;
    }
    println!(
        "done: generation {} written; the store as it was is kept in {} (delete it once the new \
         generation runs)",
        record.generation,
        backup.display()
    );
    ExitCode::SUCCESS
}

fn follow(
    opened: Opened,
    plan: &Plan,
    (leader_id, leader): (NodeId, Member),
    args: &RecoverArgs,
) -> ExitCode {
    let config = opened.cfg.path.display().to_string();
    banner(&opened, plan, &format!("this node follows {}", leader.name));
    let vote = opened.summary.vote.unwrap_or_else(|| Vote::new(0, opened.cfg.id));
    println!();
    println!(
        " this node:         its store is put aside and it starts with an empty one that keeps"
    );
    println!(
        "                    only its vote ({}), so it never votes twice in a term;",
        vote_text(Some(vote))
    );
    println!(
        "                    it receives the whole log of {} (id {leader_id}) when both run.",
        leader.name
    );
    println!(" lost for good:     whatever only this node held (kept aside for analysis).");
    println!();
    println!(" next: start {} first (after its own 'recover'), then this node:", leader.name);
    println!("       drover-node run --config {config}");
    println!("==================================================================================");
    if args.dry_run {
        println!("--dry-run: nothing written");
        return ExitCode::SUCCESS;
    }
    let marks = match opened.log.fence_marks().load() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {config}: recover: cannot read this node's self-fence marks: {e}; nothing changed");
            return ExitCode::FAILURE;
        }
    };
    let Opened { cfg, path, log, state_machine, .. } = opened;
    // Close the store before moving its file.
    drop((log, state_machine));
    let aside = aside_name(&path);
    if let Err(e) = std::fs::rename(&path, &aside) {
        eprintln!(
            "error: {config}: recover: cannot move {} to {}: {e}; nothing changed",
            path.display(),
            aside.display()
        );
        return ExitCode::FAILURE;
    }
    let fresh = store::open(&cfg.data_dir, StoreOptions::default()).and_then(|(log, _sm)| {
        offline::write_recovery(&log, &[], &vote)?;
        Ok(log)
    });
    let written = fresh.map_err(|e| e.to_string()).and_then(|log| {
        marks
            .iter()
            .try_for_each(|(service, epoch)| log.fence_marks().record(service, *epoch))
            .map_err(|e| e.to_string())
    });
    if let Err(e) = written {
        eprintln!(
            "error: {config}: recover: cannot write the fresh store {}: {e}; the old one is in {}: \
             move it back before running the node again",
            path.display(),
            aside.display()
        );
        return ExitCode::FAILURE;
    }
    println!(
        "done: this node's old store is in {} (delete it once the new generation runs); start \
         {} first, then this node",
        aside.display(),
        leader.name
    );
    ExitCode::SUCCESS
}

/// `drover.redb.before-recovery-<unix ms>` beside `path`.
fn aside_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".before-recovery-{}", crate::pb::unix_now_ms()));
    path.with_file_name(name)
}

/// Copies the store file aside before the recovery writes to it.
fn backup_copy(path: &Path) -> Result<PathBuf, String> {
    let copy = aside_name(path);
    std::fs::copy(path, &copy)
        .map(|_| copy.clone())
        .map_err(|e| format!("cannot copy {} to {}: {e}", path.display(), copy.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, site: &str) -> Member {
        Member {
            name: name.into(),
            site: site.into(),
            role: Role::Controller,
            address: String::new(),
        }
    }

    /// prod-1 (1), prod-2 (2), dr-1 (3), dr-2 (4), witness (5); a learner dr-3 (6).
    fn five() -> Membership<NodeId, Member> {
        let nodes: BTreeMap<NodeId, Member> = [
            (1, member("prod-1", "prod")),
            (2, member("prod-2", "prod")),
            (3, member("dr-1", "dr")),
            (4, member("dr-2", "dr")),
            (5, member("witness", "witness")),
            (6, member("dr-3", "dr")),
        ]
        .into_iter()
        .collect();
        Membership::new(vec![(1..=5).collect()], nodes)
    }

    fn list(names: &str) -> Vec<String> {
        names.split(',').map(str::to_string).collect()
    }

    fn try_plan(
        me: NodeId,
        survivors: &str,
        lost: &str,
        follow: Option<&str>,
    ) -> Result<Plan, String> {
        plan(me, &five(), &list(survivors), &list(lost), follow)
    }

    #[test]
    fn the_survivors_become_the_voters_and_the_lost_are_dropped() {
        let p = try_plan(3, "dr-1,dr-2", "prod-1,prod-2,witness", None).unwrap();
        assert_eq!(p.survivors.keys().copied().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(p.lost.keys().copied().collect::<Vec<_>>(), vec![1, 2, 5]);
        assert_eq!(p.learners.keys().copied().collect::<Vec<_>>(), vec![6]);
        assert_eq!(p.follow, None);
        let f = try_plan(4, "dr-1,dr-2", "witness,prod-2,prod-1", Some("dr-1")).unwrap();
        assert_eq!(f.follow.map(|(id, _)| id), Some(3));
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let cases = [
            (3, "dr-2", "prod-1,prod-2,witness,dr-1", None, "does not name this node"),
            (3, "dr-1,dr-2,dr-9", "prod-1,prod-2,witness", None, "'dr-9' is not a member"),
            (3, "dr-1,dr-2,dr-3", "prod-1,prod-2,witness", None, "'dr-3' is a learner"),
            (3, "dr-1,dr-1,dr-2", "prod-1,prod-2,witness", None, "'dr-1' is named twice"),
            (3, "dr-1,dr-2", "prod-1,witness", None, "missing prod-2"),
            (
                3,
                "dr-1,dr-2",
                "prod-1,prod-2,witness,dr-2",
                None,
                "both in --survivors and in --confirm-lost",
            ),
            (3, "dr-1,dr-2,witness", "prod-1,prod-2", None, "are a majority of the voters"),
            (3, "dr-1,dr-2", "prod-1,prod-2,witness", Some("dr-1"), "--follow names this node"),
            (4, "dr-1,dr-2", "prod-1,prod-2,witness", Some("prod-1"), "not one of the survivors"),
            (6, "dr-1,dr-3", "prod-1,prod-2,witness", None, "not a voter of the membership"),
        ];
        for (me, survivors, lost, follow, want) in cases {
            let err = try_plan(me, survivors, lost, follow).unwrap_err();
            assert!(err.contains(want), "{survivors} / {lost}: {err:?} should contain {want:?}");
        }
    }

    #[test]
    fn a_majority_in_any_half_of_a_joint_membership_is_not_enough_to_refuse() {
        // Joint {1,2,3} -> {3,4,5}: 3 and 4 are a majority of the new half only, so no quorum.
        let nodes: BTreeMap<NodeId, Member> =
            (1..=5).map(|i| (i, member(&format!("n{i}"), "s"))).collect();
        let joint = Membership::new(vec![[1, 2, 3].into(), [3, 4, 5].into()], nodes);
        assert!(plan(3, &joint, &list("n3,n4"), &list("n1,n2,n5"), None).is_ok());
        let err = plan(3, &joint, &list("n2,n3,n4"), &list("n1,n5"), None).unwrap_err();
        assert!(err.contains("majority"), "{err}");
    }

    fn summary(vote_term: u64, last: Option<(u64, u64)>, generation: u64) -> offline::Summary {
        let log_id = |(t, i): (u64, u64)| LogId::new(CommittedLeaderId::new(t, 1), i);
        offline::Summary {
            vote: Some(Vote::new_committed(vote_term, 1)),
            committed: last.map(log_id),
            last_purged: None,
            last_log_id: last.map(log_id),
            last_applied: last.map(log_id),
            membership: Default::default(),
            generation,
        }
    }

    #[test]
    fn the_new_generation_follows_the_log_in_a_term_far_above() {
        let p = try_plan(3, "dr-1,dr-2", "prod-1,prod-2,witness", None).unwrap();
        let g = new_generation(&p, &summary(7, Some((6, 57)), 0), "alice", 5).unwrap();
        let term = 7 + RECOVERY_TERM_JUMP;
        assert!(term > 7 + MAX_TERM_AHEAD);
        assert_eq!(g.vote, Vote::new_committed(term, 3));
        let ids: Vec<_> = g
            .entries
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.leader_id.node_id, e.log_id.index))
            .collect();
        assert_eq!(ids, vec![(term, 3, 58), (term, 3, 59)]);
        match &g.entries[0].payload {
            EntryPayload::Membership(m) => {
                assert_eq!(m.voter_ids().collect::<Vec<_>>(), vec![3, 4]);
                assert_eq!(m.nodes().count(), 2, "only the survivors stay members");
            }
            other => panic!("first entry must be the membership: {other:?}"),
        }
        match &g.entries[1].payload {
            EntryPayload::Normal(Request::Recovery(r)) => {
                assert_eq!(
                    (r.generation, r.term, r.by.as_str(), r.node.as_str()),
                    (1, term, "alice", "dr-1")
                );
                assert_eq!(r.from_log, "6-57");
                assert_eq!(r.lost, vec!["prod-1", "prod-2", "witness"]);
            }
            other => panic!("second entry must be the record: {other:?}"),
        }
        // The higher of the vote's and the log's term counts; generations count up.
        let g = new_generation(&p, &summary(4, Some((9, 3)), 2), "bob", 5).unwrap();
        assert_eq!(g.vote.leader_id.term, 9 + RECOVERY_TERM_JUMP);
        assert_eq!(g.record.generation, 3);
        assert!(new_generation(&p, &summary(MAX_TERM, Some((1, 1)), 0), "c", 5).is_err());
    }
}
