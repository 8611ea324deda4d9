//! The method table against the proto, the decision for every kind of certificate, the
//! refusal log's rate limit and the history author.

use super::*;

const PROTO: &str = include_str!("../../../../proto/drover/v1/drover.proto");

/// `/drover.v1.Service/Method` of every rpc in the proto file.
fn proto_methods() -> Vec<String> {
    let mut service = None;
    let mut out = Vec::new();
    for line in PROTO.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.split_whitespace().next().map(str::to_string);
        } else if let (Some(rest), Some(svc)) = (line.strip_prefix("rpc "), &service) {
            let method = rest.split('(').next().unwrap_or_default().trim();
            out.push(format!("/drover.v1.{svc}/{method}"));
        }
    }
    out
}

#[test]
fn every_rpc_of_the_proto_is_in_the_table_and_nothing_else() {
    let proto = proto_methods();
    assert!(proto.len() >= 19, "parsed {proto:?}");
    for m in &proto {
        assert!(need_of(m).is_some(), "{m} is served but missing from authz::METHODS");
    }
    for (m, _) in METHODS {
        assert!(proto.iter().any(|p| p == m), "{m} is in authz::METHODS but not in the proto");
    }
}

fn node(name: &str) -> PeerIdentity {
    PeerIdentity::Node { name: name.into() }
}

fn admin(role: AdminRole) -> PeerIdentity {
    PeerIdentity::Admin { user: "alice".into(), role }
}

fn members() -> Members {
    vec![(1, "prod-1".into()), (2, "dr-1".into()), (3, "witness".into())]
}

#[test]
fn members_call_raft_and_control_as_themselves_only() {
    for (method, need) in METHODS {
        let got = decide(method, Some(&node("dr-1")), &members());
        match need {
            Need::Peer | Need::Member | Need::Node => {
                assert_eq!(got, Ok(Caller::Member { id: Some(2), name: "dr-1".into() }))
            }
            Need::Role(_) => {
                let d = got.unwrap_err();
                assert!(d.had.contains("node certificate of dr-1"), "{d:?}");
                assert!(d.needed.contains("admin certificate"), "{d:?}");
            }
        }
        // A node certificate of someone who is not a member gets nothing but ClusterPresence.
        let other = decide(method, Some(&node("dr-9")), &members());
        if *need == Need::Node {
            assert_eq!(other, Ok(Caller::Member { id: None, name: "dr-9".into() }));
            continue;
        }
        let d = other.unwrap_err();
        assert!(d.status().message().contains(method), "{d:?}");
    }
}

#[test]
fn a_node_without_membership_hears_raft_from_any_node_but_nothing_else() {
    let vote = decide("/drover.v1.Raft/Vote", Some(&node("dr-9")), &[]);
    assert_eq!(vote, Ok(Caller::Member { id: None, name: "dr-9".into() }));
    let report = decide("/drover.v1.Control/ReportProbes", Some(&node("dr-9")), &[]);
    assert!(report.unwrap_err().had.contains("no membership yet"));
    assert!(decide("/drover.v1.Raft/Vote", Some(&admin(AdminRole::Admin)), &[]).is_err());
}

#[test]
fn admin_roles_are_ordered_and_never_reach_peer_services() {
    for (method, need) in METHODS {
        for role in AdminRole::ALL {
            let got = decide(method, Some(&admin(role)), &members());
            let allowed = matches!(need, Need::Role(r) if role >= *r);
            assert_eq!(got.is_ok(), allowed, "{method} as {role}: {got:?}");
            if let Err(d) = got {
                let msg = d.status().message().to_string();
                assert!(msg.contains("role") || msg.contains("node certificate"), "{msg}");
                assert!(msg.contains(&format!("role {role}")), "{msg}");
            }
        }
    }
    let d = decide("/drover.v1.Admin/ConfigApply", Some(&admin(AdminRole::Operator)), &members())
        .unwrap_err();
    assert_eq!(
        d.status().message(),
        "/drover.v1.Admin/ConfigApply needs an admin certificate with role admin or above \
         (drover://role/admin); the caller presented admin certificate of alice with role operator"
    );
    assert_eq!(d.status().code(), tonic::Code::PermissionDenied);
}

#[test]
fn no_certificate_an_unrecognized_one_or_an_unknown_method_gets_nothing() {
    let odd = PeerIdentity::Unrecognized { name: "old".into(), reason: "no URI".into() };
    for (method, _) in METHODS {
        assert!(decide(method, None, &members()).unwrap_err().had.contains("no client"));
        assert!(decide(method, Some(&odd), &members()).is_err());
    }
    let d = decide("/drover.v1.Admin/Shutdown", Some(&admin(AdminRole::Admin)), &members());
    assert!(d.unwrap_err().had.contains("unknown method"));
}

#[test]
fn refusals_are_logged_once_per_caller_and_method_per_minute() {
    let mut log = RefusalLog::default();
    let t0 = Instant::now();
    assert_eq!(log.record("eve", "/m", t0), Some(0));
    for i in 1..=50 {
        assert_eq!(log.record("eve", "/m", t0 + Duration::from_millis(i * 100)), None);
    }
    // Another method or caller is a separate line.
    assert_eq!(log.record("eve", "/other", t0), Some(0));
    assert_eq!(log.record("mallory", "/m", t0), Some(0));
    assert_eq!(log.record("eve", "/m", t0 + REFUSAL_LOG_EVERY), Some(50));
    assert_eq!(log.record("eve", "/m", t0 + REFUSAL_LOG_EVERY + Duration::from_secs(1)), None);
}

#[test]
fn the_refusal_log_stays_bounded() {
    let mut log = RefusalLog::default();
    let t0 = Instant::now();
    for i in 0..REFUSAL_LOG_KEYS {
        assert_eq!(log.record(&format!("c{i}"), "/m", t0), Some(0));
    }
    assert_eq!(log.record("one-too-many", "/m", t0), None);
    assert_eq!(log.seen.len(), REFUSAL_LOG_KEYS);
    // Once the old pairs have aged out, new ones are logged again.
    assert_eq!(log.record("later", "/m", t0 + REFUSAL_LOG_EVERY), Some(0));
    assert_eq!(log.seen.len(), 1);
}

#[test]
fn the_author_is_the_certificate_user() {
    let alice = Caller::Admin { user: "alice".into(), role: AdminRole::Operator };
    assert_eq!(author(&alice, "").unwrap(), "alice");
    assert_eq!(author(&alice, "alice").unwrap(), "alice");
    let err = author(&alice, "bob").unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().contains("drop --author"), "{}", err.message());
    assert_eq!(author(&Caller::Unchecked, "").unwrap(), "operator");
    assert_eq!(author(&Caller::Unchecked, "bob").unwrap(), "bob");
    assert!(author(&Caller::Member { id: Some(1), name: "prod-1".into() }, "").is_err());
}
