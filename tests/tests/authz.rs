//! Every gRPC call is authorized by the identity in the caller's certificate (docs/security.md),
//! tried the way an attacker with ordinary credentials would: a rogue client built from the
//! generated stubs, holding the cluster's admin, operator or viewer certificate, a member's or
//! a non-member's node certificate, a certificate from another CA, or none.
//!
//! - `role_matrix`: every RPC x every kind of certificate, allowed or refused as the table says.
//! - `vote_with_huge_term_cannot_break_the_leader`: a Vote at term u64::MAX (once panicked the
//!   leader's Raft, persisted, and panicked it again after a restart).
//! - `forged_append_entries_change_no_history`: a fake leader's entry to a follower.
//! - `growing_vote_terms_do_not_unseat_the_leader`: votes with a growing term every 0.3 s.
//! - `droverctl_with_a_node_certificate_or_another_author_is_refused`: the history's author is
//!   the certificate's user; node certificates administer nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use drover_tests::rogue::{append_note_payload, pb, vote_payload, Creds, Rogue};
use drover_tests::{Cluster, CmdOutput, NodeId, Role, LEADER_TIMEOUT};
use serde_json::Value;
use tonic::{Code, Status};

const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// prod-1, dr-1 and a witness, started with a leader; dr-2 has certificates from the cluster CA
/// but is never added (its node certificate is a non-member's).
fn cluster(test: &str) -> Cluster {
    let mut c = Cluster::builder(test)
        .node("prod-1", "prod", Role::Controller)
        .node("dr-1", "dr", Role::Controller)
        .node("witness", "witness", Role::Witness)
        .joiner("dr-2", "dr", Role::Controller)
        .build();
    c.start();
    c.wait_for_leader(LEADER_TIMEOUT);
    c
}

fn rogue(c: &Cluster, target: NodeId, creds: &Creds) -> Rogue {
    Rogue::new(c.grpc_addr(target), c.name(target), creds)
}

fn status_at(c: &Cluster, id: NodeId) -> Value {
    c.status_local(id).unwrap_or_else(|e| panic!("status of node {id}: {e}"))
}

fn voting_members(c: &Cluster) -> Vec<NodeId> {
    ["prod-1", "dr-1", "witness"].iter().map(|n| c.id_of(n)).collect()
}

/// Every node's history texts, read from each node's own state.
fn histories(c: &Cluster) -> Vec<(String, Vec<String>)> {
    voting_members(c)
        .into_iter()
        .map(|id| {
            let h = c
                .ctl_json_at(id, &["history", "--limit", "1000"])
                .unwrap_or_else(|e| panic!("history of node {id}: {e}"));
            let texts = h["records"]
                .as_array()
                .map(|rs| rs.iter().map(|r| format!("{} by {}", r["text"], r["author"])).collect())
                .unwrap_or_default();
            (c.name(id).to_owned(), texts)
        })
        .collect()
}

// ---- the role matrix --------------------------------------------------------------------

/// Who calls, in the matrix's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Viewer,
    Operator,
    Admin,
    /// The leader's own node certificate (so that even RunStep passes).
    Member,
    /// dr-2, never added.
    NonMember,
    ForeignCa,
    NoCert,
}

const WHO: [Who; 7] = [
    Who::Viewer,
    Who::Operator,
    Who::Admin,
    Who::Member,
    Who::NonMember,
    Who::ForeignCa,
    Who::NoCert,
];

/// The expected table, written out independently of the node's own: method -> who may call it.
fn allowed(method: &str, who: Who) -> bool {
    let peer = method.starts_with("/drover.v1.Raft/") || method.starts_with("/drover.v1.Control/");
    let need = match method.rsplit('/').next().unwrap_or_default() {
        "Status" | "History" | "ConfigShow" | "ConfigDiff" | "Plan" => 1,
        "AddNote" | "ServiceAction" | "FenceTest" => 2,
        "ConfigApply" | "AddMember" | "PromoteMember" | "RemoveMember" => 3,
        _ => 0,
    };
    if method == "/drover.v1.Control/ClusterPresence" {
        // Asked by a former member before it rejoins: any node certificate of the cluster CA.
        return matches!(who, Who::Member | Who::NonMember);
    }
    match who {
        Who::Member => peer,
        Who::Viewer => !peer && need <= 1,
        Who::Operator => !peer && need <= 2,
        Who::Admin => !peer && need <= 3,
        Who::NonMember | Who::ForeignCa | Who::NoCert => false,
    }
}

/// Calls `method` with a harmless request (invalid or naming nothing, so that a call that
/// gets through changes nothing) that names `me` as the sender where the message has one.
fn call(r: &Rogue, method: &str, me: NodeId) -> Result<(), Status> {
    use pb::admin_client::AdminClient as A;
    use pb::control_client::ControlClient as C;
    use pb::raft_client::RaftClient as R;
    let empty = pb::RaftRequest { payload: Vec::new() };
    fn ok<T>(_: T) {}
    match method {
        "/drover.v1.Raft/AppendEntries" => {
            r.call(|ch| async move { R::new(ch).append_entries(empty).await }).map(ok)
        }
        "/drover.v1.Raft/Vote" => r.call(|ch| async move { R::new(ch).vote(empty).await }).map(ok),
        "/drover.v1.Raft/InstallSnapshot" => {
            r.call(|ch| async move { R::new(ch).install_snapshot(empty).await }).map(ok)
        }
        "/drover.v1.Control/ReportProbes" => {
            let req = pb::ProbeReports {
                observer: me,
                reports: Vec::new(),
                relayed: false,
                fenced: Vec::new(),
            };
            r.call(|ch| async move { C::new(ch).report_probes(req).await }).map(ok)
        }
        "/drover.v1.Control/RenewLeases" => {
            let req = pb::RenewLeasesRequest {
                node_id: me,
                site: "none".into(),
                leases: vec![pb::LeaseRenewal { service: "none".into(), epoch: 1 }],
                relayed: false,
            };
            r.call(|ch| async move { C::new(ch).renew_leases(req).await }).map(ok)
        }
        "/drover.v1.Control/RunStep" => {
            let req = pb::RunStepRequest {
                service: "none".into(),
                workflow_id: 1,
                step: 0,
                attempt: 1,
                epoch: 1,
                from_site: "prod".into(),
                to_site: "dr".into(),
            };
            r.call(|ch| async move { C::new(ch).run_step(req).await }).map(ok)
        }
        "/drover.v1.Control/ReconcileStep" => {
            let req = pb::ReconcileStepRequest {
                service: "none".into(),
                workflow_id: 1,
                step: 0,
                epoch: 1,
                repair: false,
            };
            r.call(|ch| async move { C::new(ch).reconcile_step(req).await }).map(ok)
        }
        "/drover.v1.Control/RunVeto" => {
            let req = pb::RunVetoRequest {
                service: "none".into(),
                from_site: "prod".into(),
                to_site: "dr".into(),
            };
            r.call(|ch| async move { C::new(ch).run_veto(req).await }).map(ok)
        }
        "/drover.v1.Raft/PreVote" => {
            let req = pb::PreVoteRequest {
                candidate: me,
                term: 1,
                last_log_term: 0,
                last_log_index: 0,
                stood_back: false,
            };
            r.call(|ch| async move { R::new(ch).pre_vote(req).await }).map(ok)
        }
        "/drover.v1.Control/ClusterPresence" => {
            let req = pb::PresenceRequest { node_id: me };
            r.call(|ch| async move { C::new(ch).cluster_presence(req).await }).map(ok)
        }
        "/drover.v1.Control/FenceStatus" => {
            let req = pb::FenceStatusRequest {
                spec_version: 999,
                service: "none".into(),
                site: "prod".into(),
                phase: "fence".into(),
                step: 0,
            };
            r.call(|ch| async move { C::new(ch).fence_status(req).await }).map(ok)
        }
        "/drover.v1.Admin/Status" => r
            .call(|ch| async move { A::new(ch).status(pb::StatusRequest { local: true }).await })
            .map(ok),
        "/drover.v1.Admin/History" => r
            .call(|ch| async move {
                A::new(ch)
                    .history(pb::HistoryRequest { after_seq: 0, limit: 1, ..Default::default() })
                    .await
            })
            .map(ok),
        "/drover.v1.Admin/ConfigShow" => r
            .call(|ch| async move { A::new(ch).config_show(pb::ConfigShowRequest {}).await })
            .map(ok),
        "/drover.v1.Admin/ConfigDiff" => {
            let req = pb::ConfigDiffRequest { text: "not toml [".into() };
            r.call(|ch| async move { A::new(ch).config_diff(req).await }).map(ok)
        }
        "/drover.v1.Admin/AddNote" => {
            // Empty text: refused by the handler, never committed.
            let req = pb::AddNoteRequest { author: String::new(), text: String::new() };
            r.call(|ch| async move { A::new(ch).add_note(req).await }).map(ok)
        }
        "/drover.v1.Admin/ServiceAction" => {
            let req = pb::ServiceActionRequest {
                service: "none".into(),
                action: "no-such-action".into(),
                author: String::new(),
                ..Default::default()
            };
            r.call(|ch| async move { A::new(ch).service_action(req).await }).map(ok)
        }
        "/drover.v1.Admin/Plan" => {
            let req =
                pb::PlanRequest { service: "none".into(), to: "dr".into(), switchover: false };
            r.call(|ch| async move { A::new(ch).plan(req).await }).map(ok)
        }
        "/drover.v1.Admin/FenceTest" => {
            let req = pb::FenceTestRequest { site: "Not A Site".into() };
            r.call(|ch| async move { A::new(ch).fence_test(req).await }).map(ok)
        }
        "/drover.v1.Admin/ConfigApply" => {
            let req = pb::ConfigApplyRequest {
                text: "not toml [".into(),
                expected_version: Some(999),
                author: String::new(),
            };
            r.call(|ch| async move { A::new(ch).config_apply(req).await }).map(ok)
        }
        "/drover.v1.Admin/AddMember" => {
            let req = pb::AddMemberRequest {
                id: 0,
                name: String::new(),
                site: String::new(),
                role: String::new(),
                address: String::new(),
            };
            r.call(|ch| async move { A::new(ch).add_member(req).await }).map(ok)
        }
        "/drover.v1.Admin/PromoteMember" => r
            .call(|ch| async move { A::new(ch).promote_member(pb::MemberRef { id: 999 }).await })
            .map(ok),
        "/drover.v1.Admin/RemoveMember" => r
            .call(|ch| async move { A::new(ch).remove_member(pb::MemberRef { id: 999 }).await })
            .map(ok),
        other => panic!("the matrix has no request for {other}; add one"),
    }
}

/// Refused by authorization: PERMISSION_DENIED from the node, or no connection at all (the TLS
/// handshake failed: no certificate, or one from another CA).
fn refused(result: &Result<(), Status>, who: Who) -> bool {
    match result {
        Err(s) if s.code() == Code::PermissionDenied => true,
        Err(s) if matches!(who, Who::ForeignCa | Who::NoCert) => {
            let text = format!("{s:?}").to_lowercase();
            matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal)
                && [
                    "transport",
                    "connect",
                    "tls",
                    "handshake",
                    "certificate",
                    "broken pipe",
                    "reset",
                    "h2",
                ]
                .iter()
                .any(|w| text.contains(w))
        }
        _ => false,
    }
}

#[test]
fn role_matrix() {
    let mut c = cluster("role_matrix");
    let leader = c.wait_for_leader(LEADER_TIMEOUT);
    // A controller that is not the leader: it runs steps and vetoes, and knows the leader.
    let target = ["prod-1", "dr-1"].iter().map(|n| c.id_of(n)).find(|&id| id != leader).unwrap();
    let certs = c.certs_dir();
    let foreign: PathBuf = c.root().join("foreign-certs");
    c.certs_init(&foreign, &[("admin2".to_owned(), std::net::Ipv4Addr::LOCALHOST)], "admin");
    let leader_name = c.name(leader).to_owned();
    let creds = |who: Who| match who {
        Who::Viewer => Creds::named(&certs, "viewer"),
        Who::Operator => Creds::named(&certs, "operator"),
        Who::Admin => Creds::named(&certs, "admin"),
        Who::Member => Creds::named(&certs, &leader_name),
        Who::NonMember => Creds::named(&certs, "dr-2"),
        Who::ForeignCa => Creds::named(&foreign, "admin").trusting(&certs.join("ca.pem")),
        Who::NoCert => Creds::none(&certs),
    };
    let methods: Vec<&str> = drover::api::authz::METHODS.iter().map(|(m, _)| *m).collect();
    let mut problems = Vec::new();
    let mut table = String::new();
    for who in WHO {
        let r = rogue(&c, target, &creds(who));
        let me = if who == Who::NonMember { c.id_of("dr-2") } else { leader };
        for method in &methods {
            let result = call(&r, method, me);
            let want = allowed(method, who);
            let got_refused = refused(&result, who);
            table += &format!(
                "{who:?} {method}: {}\n",
                match &result {
                    Ok(()) => "ok".to_string(),
                    Err(s) => format!("{:?} {}", s.code(), s.message()),
                }
            );
            if want == got_refused {
                problems.push(format!(
                    "{who:?} calling {method}: expected {}, got {result:?}",
                    if want { "to get past authorization" } else { "a refusal" }
                ));
            }
        }
    }
    eprintln!("role matrix against {}:\n{table}", c.name(target));
    // The cluster is unharmed: nothing the matrix sent committed or broke anything.
    c.wait_for("a note to commit after the matrix", WRITE_TIMEOUT, |c| c.note_add("after matrix"));
    if !problems.is_empty() {
        c.fail(format!("authorization matrix mismatches:\n- {}", problems.join("\n- ")));
    }
}

// ---- failing inputs -----------------------------------------------------------------------

#[test]
fn vote_with_huge_term_cannot_break_the_leader() {
    let mut c = cluster("vote_huge_term");
    let leader = c.wait_for_leader(LEADER_TIMEOUT);
    let term_before = status_at(&c, leader)["term"].as_u64().unwrap_or(0);
    let certs = c.certs_dir();
    let other = voting_members(&c).into_iter().find(|&id| id != leader).unwrap();
    let other_name = c.name(other).to_owned();
    let mut problems = Vec::new();
    // The admin certificate, naming another member as candidate; then that member's own
    // certificate, naming itself: the identity is right, the term is not.
    for (label, creds) in [
        ("admin certificate", Creds::named(&certs, "admin")),
        ("the candidate's own node certificate", Creds::named(&certs, &other_name)),
    ] {
        let r = rogue(&c, leader, &creds);
        for term in [u64::MAX, u64::MAX - 1, term_before + 1_000_000] {
            match r.vote(vote_payload(other, term)) {
                Err(s) if matches!(s.code(), Code::PermissionDenied | Code::InvalidArgument) => {}
                other => problems.push(format!("Vote at term {term} with the {label}: {other:?}")),
            }
        }
    }
    if !c.is_running(leader) {
        problems.push(format!("the leader {} exited after the votes", c.name(leader)));
    }
    // The cluster still commits, and the leader comes back from a restart.
    c.wait_for("a note to commit after the votes", WRITE_TIMEOUT, |c| c.note_add("after votes"));
    c.restart(leader);
    c.wait_for_leader(LEADER_TIMEOUT);
    c.wait_for("a note to commit after the restart", WRITE_TIMEOUT, |c| {
        c.note_add("after restart")
    });
    for id in voting_members(&c) {
        if !c.is_running(id) {
            problems.push(format!("{} is not running", c.name(id)));
            continue;
        }
        let term = c.status_local(id).map(|s| s["term"].as_u64().unwrap_or(u64::MAX));
        match term {
            Ok(t) if t < term_before + 100 => {}
            other => problems.push(format!("{} is at term {other:?}", c.name(id))),
        }
    }
    if !problems.is_empty() {
        c.fail(format!("a vote with a huge term got through:\n- {}", problems.join("\n- ")));
    }
}

#[test]
fn forged_append_entries_change_no_history() {
    let mut c = cluster("forged_append");
    let leader = c.wait_for_leader(LEADER_TIMEOUT);
    let (_, index) = c.wait_for("a note to commit", WRITE_TIMEOUT, |c| c.note_add("before"));
    let follower = voting_members(&c).into_iter().find(|&id| id != leader).unwrap();
    let witness = c.id_of("witness");
    // The follower's last entry is the note, written by the leader in its term: a fake leader
    // continuing from there is what a follower would accept.
    let status = c.wait_for("the follower to hold the note", WRITE_TIMEOUT, |c| {
        let s = c.status_local(follower)?;
        match s["last_log_index"].as_u64() {
            Some(i) if i >= index => Ok(s),
            _ => Err(format!("follower status {s}")),
        }
    });
    let term = status["term"].as_u64().unwrap_or(0);
    let last = status["last_log_index"].as_u64().unwrap_or(index);
    let certs = c.certs_dir();
    let fake_leader = voting_members(&c).into_iter().find(|&id| id != leader && id != follower);
    let fake_leader = fake_leader.unwrap_or(witness);
    let forged = "forged by a fake leader";
    let mut problems = Vec::new();
    for (label, creds, claimed) in [
        ("admin certificate", Creds::named(&certs, "admin"), fake_leader),
        // A member's certificate claiming to be the real leader.
        ("another member's certificate", Creds::named(&certs, c.name(fake_leader)), leader),
        ("a non-member's node certificate", Creds::named(&certs, "dr-2"), fake_leader),
    ] {
        let r = rogue(&c, follower, &creds);
        let payload =
            append_note_payload(claimed, term + 1, (term, leader, last), "mallory", forged);
        match r.append_entries(payload) {
            Err(s) if s.code() == Code::PermissionDenied => {}
            other => problems.push(format!("AppendEntries with the {label}: {other:?}")),
        }
    }
    // Whatever happened, after one more note every node must hold the same history, without
    // the forged note.
    c.wait_for_leader(LEADER_TIMEOUT);
    c.wait_for("a note to commit after the attempt", WRITE_TIMEOUT, |c| c.note_add("after"));
    let deadline = Instant::now() + WRITE_TIMEOUT;
    let mut hs = histories(&c);
    while hs.windows(2).any(|w| w[0].1 != w[1].1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        hs = histories(&c);
    }
    if hs.iter().any(|(_, h)| h.iter().any(|t| t.contains(forged))) {
        problems.push(format!("the forged note is in a history: {hs:?}"));
    }
    if hs.windows(2).any(|w| w[0].1 != w[1].1) {
        problems.push(format!("the nodes' histories differ: {hs:?}"));
    }
    if !problems.is_empty() {
        c.fail(format!("forged AppendEntries got through:\n- {}", problems.join("\n- ")));
    }
}

#[test]
fn growing_vote_terms_do_not_unseat_the_leader() {
    let mut c = cluster("growing_votes");
    let leader = c.wait_for_leader(LEADER_TIMEOUT);
    let term_before = status_at(&c, leader)["term"].as_u64().unwrap_or(0);
    let certs = c.certs_dir();
    let members = voting_members(&c);
    let other = members.iter().copied().find(|&id| id != leader).unwrap();
    let senders = [
        ("admin certificate", Creds::named(&certs, "admin")),
        ("a non-member's node certificate", Creds::named(&certs, "dr-2")),
        // A member naming another member as the candidate.
        ("a member's certificate", Creds::named(&certs, c.name(other))),
    ];
    let rogues: Vec<(&str, NodeId, Rogue)> = senders
        .iter()
        .flat_map(|(label, creds)| members.iter().map(|&to| (*label, to, rogue(&c, to, creds))))
        .collect();
    let mut problems = Vec::new();
    let started = Instant::now();
    let mut term = term_before;
    while started.elapsed() < Duration::from_secs(10) {
        term += 1;
        for (label, to, r) in &rogues {
            // Claim to be a member other than the one whose certificate it is (or any).
            let candidate = members.iter().copied().find(|&id| id != *to && id != other).unwrap();
            match r.vote(vote_payload(candidate, term)) {
                Err(s) if s.code() == Code::PermissionDenied => {}
                res => problems
                    .push(format!("Vote at term {term} to node {to} with the {label}: {res:?}")),
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let now_leader = c.wait_for_leader(LEADER_TIMEOUT);
    let term_after = status_at(&c, now_leader)["term"].as_u64().unwrap_or(u64::MAX);
    // Honest elections on a loaded machine may add a term or two; the forged ones added ~30.
    if term_after > term_before + 3 {
        problems.push(format!(
            "the term went from {term_before} to {term_after} (leader {} -> {})",
            c.name(leader),
            c.name(now_leader)
        ));
    }
    c.wait_for("a note to commit after the votes", WRITE_TIMEOUT, |c| c.note_add("after votes"));
    problems.truncate(20);
    if !problems.is_empty() {
        c.fail(format!("forged votes got through:\n- {}", problems.join("\n- ")));
    }
}

#[test]
fn droverctl_with_a_node_certificate_or_another_author_is_refused() {
    let mut c = cluster("ctl_identities");
    let certs = c.certs_dir();
    let endpoints = c.endpoints();
    let spec = c.root().join("cluster.toml");
    std::fs::write(&spec, "[[site]]\nname = \"prod\"\n").expect("write a spec");
    let spec = spec.to_string_lossy().into_owned();
    let as_cert = |c: &Cluster, name: &str, args: &[&str]| {
        let mut all: Vec<String> =
            vec!["--endpoint".into(), endpoints.clone(), "--timeout".into(), "5s".into()];
        for (flag, file) in [
            ("--ca", "ca".to_string()),
            ("--cert", name.to_string()),
            ("--key", format!("{name}-key")),
        ] {
            all.push(flag.into());
            all.push(certs.join(format!("{file}.pem")).to_string_lossy().into_owned());
        }
        all.extend(args.iter().map(|s| s.to_string()));
        c.ctl_raw(&all)
    };
    let mut problems = Vec::new();
    fn expect_refused(problems: &mut Vec<String>, what: &str, out: &CmdOutput, needle: &str) {
        if out.success() || !out.stderr.to_lowercase().contains(needle) {
            problems.push(format!(
                "{what}: expected a refusal mentioning {needle:?}, got {}",
                out.describe()
            ));
        }
    }
    // A node certificate administers nothing; each refusal names the role the command needs
    // (config apply reads the current version first, and still names admin).
    for (args, needs) in [
        (&["status"][..], "role viewer"),
        (&["history"][..], "role viewer"),
        (&["note", "add", "from a node certificate"][..], "role operator"),
        (&["config", "apply", "-f", &spec][..], "role admin"),
        (&["ack", "webshop"][..], "admin certificate"),
    ] {
        let out = as_cert(&c, "prod-1", args);
        expect_refused(
            &mut problems,
            &format!("droverctl {} with prod-1's node certificate", args.join(" ")),
            &out,
            needs,
        );
    }
    // Roles: a viewer reads but does not write; an operator writes notes but does not apply.
    let out = as_cert(&c, "viewer", &["status"]);
    if !out.success() {
        problems.push(format!("status as viewer: {}", out.describe()));
    }
    let out = as_cert(&c, "viewer", &["note", "add", "from a viewer"]);
    expect_refused(&mut problems, "note add as viewer", &out, "role operator");
    // Every workflow a viewer might try names the operator role it needs.
    for args in [
        &["switchover", "webshop", "--to", "dr"][..],
        &["failover", "webshop", "--to", "dr", "--reason", "viewer"][..],
        &["reprotect", "webshop"][..],
        &["pause", "webshop", "--reason", "viewer"][..],
        &["resume", "webshop"][..],
    ] {
        let out = as_cert(&c, "viewer", args);
        expect_refused(
            &mut problems,
            &format!("{} as viewer", args.join(" ")),
            &out,
            "role operator",
        );
    }
    let out = as_cert(&c, "operator", &["config", "apply", "-f", &spec]);
    expect_refused(&mut problems, "config apply as operator", &out, "role admin");
    // The author is the certificate's user: another name is refused, none is the user.
    let out = as_cert(&c, "admin", &["note", "add", "signed as alice", "--author", "alice"]);
    expect_refused(
        &mut problems,
        "note add --author alice with the admin certificate",
        &out,
        "drop --author",
    );
    let out = as_cert(&c, "operator", &["note", "add", "by the operator"]);
    if !out.success() {
        problems.push(format!("note add as operator: {}", out.describe()));
    }
    match c.history_all(50) {
        Ok(records) => {
            for r in &records {
                let text = r["text"].as_str().unwrap_or_default();
                let bad = ["from a node certificate", "from a viewer", "signed as alice"];
                if bad.contains(&text) {
                    problems.push(format!("refused note committed: {r}"));
                }
                if text == "by the operator" && r["author"] != "operator" {
                    problems.push(format!("the operator's note is not authored by operator: {r}"));
                }
            }
            if !records.iter().any(|r| r["text"] == "by the operator") {
                problems.push(format!("the operator's note is missing: {records:?}"));
            }
        }
        Err(e) => problems.push(format!("history: {e}")),
    }
    if !problems.is_empty() {
        c.fail(format!("droverctl identities:\n- {}", problems.join("\n- ")));
    }
}
