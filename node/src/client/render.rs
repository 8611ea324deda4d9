//! How status and history look to people (tables) and to scripts (JSON). Shared by droverctl
//! and the demo so both show the same thing.

use std::fmt::Write;
use std::time::Duration;

use drover_proto::v1 as pb;
use serde_json::{json, Value};

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// `droverctl status --json`.
pub fn status_json(s: &pb::StatusReply) -> Value {
    let members: Vec<_> = s
        .members
        .iter()
        .map(|m| {
            json!({"id": m.id, "name": m.name, "site": m.site, "role": m.role, "address": m.address,
                   "membership": m.membership, "matched_index": m.matched_index, "lag": m.lag,
                   "last_contact_ms": m.last_contact_ms})
        })
        .collect();
    let services: Vec<_> = s.services.iter().map(service_json).collect();
    json!({"node_id": s.node_id, "node_name": s.node_name, "leader_id": s.leader_id, "term": s.term,
           "state": s.state, "last_log_index": s.last_log_index, "commit_index": s.commit_index,
           "applied_index": s.applied_index, "history_seq": s.history_seq, "members": members,
           "spec_version": s.spec_version, "services": services,
           "quorum": (!s.quorum.is_empty()).then_some(&s.quorum), "reachable": s.reachable})
}

fn service_json(s: &pb::ServiceStatus) -> Value {
    let sites: serde_json::Map<String, Value> =
        s.sites.iter().map(|h| (h.site.clone(), Value::String(h.health.clone()))).collect();
    let workflow = s.workflow.as_ref().map(|w| {
        let steps: Vec<_> = w
            .steps
            .iter()
            .map(|st| {
                json!({"stage": st.stage, "site": st.site, "kind": st.kind, "status": st.status,
                             "attempt": st.attempt, "detail": st.detail})
            })
            .collect();
        json!({"id": w.id, "kind": w.kind, "from": w.from_site, "to": w.to_site, "epoch": w.epoch,
               "automatic": w.automatic, "reason": w.reason, "state": w.state, "steps": steps})
    });
    let alert = (!s.alert.is_empty()).then_some(&s.alert);
    let own: serde_json::Map<String, Value> =
        s.own_sites.iter().map(|h| (h.site.clone(), Value::String(h.health.clone()))).collect();
    let standbys: Vec<_> = s.standbys.iter().map(standby_json).collect();
    json!({"name": s.name, "active_site": s.active_site, "epoch": s.epoch, "phase": s.phase, "mode": s.mode,
           "lease_site": s.lease_site, "sites": sites, "own_view": own, "workflow": workflow,
           "alert": alert, "primary": if s.primary.is_empty() { None } else { Some(&s.primary) },
           "standbys": standbys, "drift": s.drift})
}

/// One standby's readiness verdict; unknown fingerprints are `null`.
fn standby_json(v: &pb::StandbyStatus) -> Value {
    let some = |s: &String| (!s.is_empty()).then_some(s.clone());
    let consistency: Vec<_> = v
        .consistency
        .iter()
        .map(|c| {
            json!({"check": c.check, "gate": c.gate, "state": c.state,
                   "active_site": c.active_site, "active": some(&c.active_value),
                   "standby": some(&c.standby_value), "detail": some(&c.detail)})
        })
        .collect();
    let passive: Vec<_> = v
        .passive
        .iter()
        .map(|p| {
            json!({"check": p.check, "gate": p.gate, "state": p.state,
                   "acknowledged": p.acknowledged, "detail": p.detail})
        })
        .collect();
    json!({"site": v.site, "ready": v.ready, "reasons": v.reasons, "consistency": consistency,
           "passive": passive, "split_brain": some(&v.split_brain)})
}

/// The services part of `droverctl status`.
pub fn services_table(s: &pb::StatusReply) -> String {
    let mut out = alerts(s);
    out.push_str(&services_only(s));
    out
}

/// The `ALERT:` lines (nobody serving, drifted traffic steps; what to do), then a blank
/// line; empty without any.
fn alerts(s: &pb::StatusReply) -> String {
    let mut out = String::new();
    for svc in &s.services {
        if !svc.alert.is_empty() {
            let _ = writeln!(out, "ALERT: {}", svc.alert);
        }
        for standby in svc.standbys.iter().filter(|v| !v.split_brain.is_empty()) {
            let _ = writeln!(out, "ALERT: {}", standby.split_brain);
        }
        for drift in &svc.drift {
            let _ = writeln!(out, "ALERT: {drift}");
        }
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// The services table without the alerts.
fn services_only(s: &pb::StatusReply) -> String {
    let mut out = String::new();
    if s.services.is_empty() {
        if s.spec_version == 0 {
            out.push_str("no cluster spec yet: 'droverctl config apply -f cluster.toml'\n");
        }
        return out;
    }
    let _ = writeln!(out, "services (spec version {}):", s.spec_version);
    let mut rows = vec![vec![
        "SERVICE".to_string(),
        "ACTIVE".into(),
        "EPOCH".into(),
        "PHASE".into(),
        "LEASE".into(),
        "MODE".into(),
        "SITES".into(),
    ]];
    for svc in &s.services {
        // The leader's detector; a node answering alone shows what it sees itself.
        let sites: Vec<String> = if s.quorum.is_empty() || !svc.sites.is_empty() {
            svc.sites.iter().map(|h| format!("{}={}", h.site, h.health)).collect()
        } else {
            svc.own_sites.iter().map(|h| format!("{}={} (own view)", h.site, h.health)).collect()
        };
        rows.push(vec![
            svc.name.clone(),
            svc.active_site.clone(),
            svc.epoch.to_string(),
            svc.phase.clone(),
            if svc.lease_site.is_empty() { "(revoked)".into() } else { svc.lease_site.clone() },
            svc.mode.clone(),
            if sites.is_empty() { "-".into() } else { sites.join(" ") },
        ]);
    }
    out.push_str(&table(&rows));
    out.push_str(&standbys(s));
    for svc in &s.services {
        let Some(w) = &svc.workflow else { continue };
        let _ = writeln!(
            out,
            "\n{} {} {} ({}): {}, epoch {}, {}: {}",
            svc.name,
            if w.kind == "reactivate" { "reactivation" } else { "workflow" },
            w.id,
            if w.automatic { "automatic" } else { "manual" },
            if w.from_site == w.to_site {
                w.to_site.clone()
            } else {
                format!("{} -> {}", w.from_site, w.to_site)
            },
            w.epoch,
            w.state,
            w.reason
        );
        let mut rows = vec![vec![
            "#".to_string(),
            "STAGE".into(),
            "SITE".into(),
            "KIND".into(),
            "STATUS".into(),
            "TRY".into(),
            "DETAIL".into(),
        ]];
        for (i, st) in w.steps.iter().enumerate() {
            rows.push(vec![
                (i + 1).to_string(),
                st.stage.clone(),
                st.site.clone(),
                st.kind.clone(),
                st.status.clone(),
                if st.attempt == 0 { "-".into() } else { st.attempt.to_string() },
                st.detail.chars().take(80).collect(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

/// The readiness of every standby (leader only): `ready`, or `NOT READY` with the reasons,
/// one per line; then every consistency fingerprint side by side. Empty without standbys.
fn standbys(s: &pb::StatusReply) -> String {
    let mut out = String::new();
    for svc in &s.services {
        for v in &svc.standbys {
            let verdict = if v.ready { "ready" } else { "NOT READY" };
            let _ = writeln!(out, "  {} -> {}: {verdict}", svc.name, v.site);
            for r in &v.reasons {
                let _ = writeln!(out, "      {r}");
            }
            for c in &v.consistency {
                let shown = |value: &str| {
                    if value.is_empty() {
                        "unknown".to_string()
                    } else {
                        format!("{value:?}")
                    }
                };
                let _ = writeln!(
                    out,
                    "      consistency {}: {} ({}={} {}={})",
                    c.check,
                    c.state,
                    c.active_site,
                    shown(&c.active_value),
                    v.site,
                    shown(&c.standby_value)
                );
            }
        }
    }
    if out.is_empty() {
        return out;
    }
    format!("\nstandby readiness:\n{out}")
}

/// `droverctl status`.
pub fn status_table(s: &pb::StatusReply) -> String {
    // What an operator must act on comes first of all.
    let mut out = alerts(s);
    if !s.quorum.is_empty() {
        let reached: Vec<&str> = s
            .reachable
            .iter()
            .filter_map(|id| s.members.iter().find(|m| m.id == *id).map(|m| m.name.as_str()))
            .collect();
        let _ = writeln!(out, "{}: {}", s.node_name, s.quorum);
        let _ = writeln!(out, "reaches: {}\n", reached.join(", "));
    }
    let leader = match s.leader_id {
        Some(id) => {
            let name = s.members.iter().find(|m| m.id == id).map_or("?", |m| m.name.as_str());
            format!("{name} (node {id})")
        }
        None => "none (election in progress or no quorum)".to_string(),
    };
    let _ = writeln!(out, "leader:  {leader}");
    let _ = writeln!(out, "term:    {}", s.term);
    let _ = writeln!(
        out,
        "log:     last {}, committed {}, applied {}",
        opt(s.last_log_index),
        opt(s.commit_index),
        opt(s.applied_index)
    );
    let _ = writeln!(out, "answered by {} (node {}, {})\n", s.node_name, s.node_id, s.state);
    let mut rows = vec![vec![
        "ID".to_string(),
        "NAME".into(),
        "SITE".into(),
        "ROLE".into(),
        "MEMBERSHIP".into(),
        "ADDRESS".into(),
        "MATCHED".into(),
        "LAG".into(),
        "LAST CONTACT".into(),
    ]];
    for m in &s.members {
        let mark = if Some(m.id) == s.leader_id { " *" } else { "" };
        rows.push(vec![
            format!("{}{mark}", m.id),
            m.name.clone(),
            m.site.clone(),
            m.role.clone(),
            m.membership.clone(),
            m.address.clone(),
            opt(m.matched_index),
            opt(m.lag),
            m.last_contact_ms.map_or_else(|| "-".into(), |ms| format!("{ms}ms")),
        ]);
    }
    out.push_str(&table(&rows));
    let services = services_only(s);
    if !services.is_empty() {
        out.push('\n');
        out.push_str(&services);
    }
    if s.state != "leader" {
        let _ = writeln!(
            out,
            "\n(replication columns are known only to the leader; this is node {}'s view)",
            s.node_id
        );
    }
    out
}

/// `droverctl history --json`.
pub fn history_json(r: &pb::HistoryReply) -> Value {
    let records: Vec<_> = r
        .records
        .iter()
        .map(|h| {
            json!({"seq": h.seq, "log_index": h.log_index, "at_unix_ms": h.at_unix_ms,
                        "author": h.author, "kind": h.kind, "text": h.text, "service": h.service})
        })
        .collect();
    json!({"first_seq": r.first_seq, "records": records})
}

/// `droverctl history`.
pub fn history_table(r: &pb::HistoryReply) -> String {
    if r.records.is_empty() {
        return "(no records)\n".to_string();
    }
    let mut rows = vec![vec![
        "SEQ".to_string(),
        "AT (UTC)".into(),
        "AUTHOR".into(),
        "KIND".into(),
        "TEXT".into(),
    ]];
    for h in &r.records {
        let at = std::time::UNIX_EPOCH + Duration::from_millis(h.at_unix_ms.max(0) as u64);
        let at = humantime::format_rfc3339_seconds(at).to_string();
        rows.push(vec![h.seq.to_string(), at, h.author.clone(), h.kind.clone(), h.text.clone()]);
    }
    table(&rows)
}

/// `droverctl fence test --json`.
pub fn fence_test_json(site: &str, r: &pb::FenceTestReply) -> Value {
    let results: Vec<_> = r
        .results
        .iter()
        .map(|x| {
            json!({"service": x.service, "phase": x.phase, "step": x.step + 1, "agent": x.agent,
                   "target": x.target, "node": x.node, "ok": x.ok,
                   "power": if x.ok { Value::String(x.power.clone()) } else { Value::Null },
                   "error": if x.ok { Value::Null } else { Value::String(x.detail.clone()) },
                   "elapsed_ms": x.elapsed_ms})
        })
        .collect();
    json!({"site": site, "spec_version": r.spec_version, "results": results})
}

/// `droverctl fence test`.
pub fn fence_test_table(site: &str, r: &pb::FenceTestReply) -> String {
    if r.results.is_empty() {
        return format!(
            "no fence_agent step fences site {site} (spec version {}): its fence and \
             on_lease_lost runbooks have none\n",
            r.spec_version
        );
    }
    let mut rows = vec![vec![
        "SERVICE".to_string(),
        "STEP".into(),
        "AGENT".into(),
        "TARGET".into(),
        "NODE".into(),
        "ELAPSED".into(),
        "RESULT".into(),
    ]];
    for x in &r.results {
        rows.push(vec![
            x.service.clone(),
            format!("{} #{}", x.phase, x.step + 1),
            x.agent.clone(),
            if x.target.is_empty() { "-".into() } else { x.target.clone() },
            if x.node.is_empty() { "-".into() } else { x.node.clone() },
            format!("{}ms", x.elapsed_ms),
            // Last: an error can be long.
            if x.ok { x.power.clone() } else { format!("error: {}", x.detail) },
        ]);
    }
    let mut out = format!("fence agents of site {site} (spec version {}):\n", r.spec_version);
    out.push_str(&table(&rows));
    out
}

/// Left-aligned columns separated by two spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> =
            row.iter().enumerate().map(|(i, cell)| format!("{cell:<w$}", w = widths[i])).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// `plan --json`: the reply as it is, with durations in milliseconds.
pub fn plan_json(r: &pb::PlanReply) -> Value {
    json!({
        "kind": r.kind,
        "from_site": r.from_site,
        "to_site": r.to_site,
        "epoch": r.epoch,
        "would_start": r.would_start,
        "gates": r.gates.iter().map(|g| json!({
            "name": g.name, "passed": g.passed, "detail": g.detail,
        })).collect::<Vec<_>>(),
        "steps": r.steps.iter().map(|s| json!({
            "stage": s.stage, "site": s.site, "kind": s.kind, "runs_on": s.runs_on,
            "timeout_ms": s.timeout_ms, "retries": s.retries, "on_failure": s.on_failure,
            "worst_case_ms": s.worst_case_ms,
        })).collect::<Vec<_>>(),
        "safe_wait_ms": r.safe_wait_ms,
        "worst_case_ms": r.worst_case_ms,
        "best_case_ms": r.best_case_ms,
        "detection_ms": r.detection_ms,
    })
}

/// `plan`: the gates, then the steps, then the time bound.
pub fn plan_table(service: &str, r: &pb::PlanReply) -> String {
    let secs = |ms: u64| format!("{:.1}s", ms as f64 / 1000.0);
    let mut out = format!(
        "{} of {service} from {} to {} (would be epoch {}), a dry run: nothing changes\n\ngates:\n",
        r.kind, r.from_site, r.to_site, r.epoch
    );
    let mut rows = vec![vec!["".to_string(), "GATE".into(), "VERDICT".into()]];
    for g in &r.gates {
        let mark = if g.passed { "ok" } else { "NO" };
        rows.push(vec![mark.to_string(), g.name.clone(), g.detail.clone()]);
    }
    out.push_str(&table(&rows));
    out.push_str("\nsteps:\n");
    let mut rows = vec![vec![
        "#".to_string(),
        "STAGE".into(),
        "KIND".into(),
        "SITE".into(),
        "TIMEOUT".into(),
        "RETRIES".into(),
        "ON FAILURE".into(),
        "WORST".into(),
        "RUNS ON".into(),
    ]];
    for (i, s) in r.steps.iter().enumerate() {
        rows.push(vec![
            (i + 1).to_string(),
            s.stage.clone(),
            s.kind.clone(),
            s.site.clone(),
            if s.timeout_ms == 0 { "-".into() } else { secs(s.timeout_ms) },
            s.retries.to_string(),
            s.on_failure.clone(),
            secs(s.worst_case_ms),
            s.runs_on.clone(),
        ]);
    }
    out.push_str(&table(&rows));
    let detection = if r.kind == "failover" {
        format!(
            "an automatic failover starts about {} after the outage (down_after, a check \
             interval, a report)\n",
            secs(r.detection_ms)
        )
    } else {
        String::new()
    };
    out.push_str(&format!(
        "\ntime to recovery: at least {} plus the runbooks' own time (the lease wait when nothing \
         confirms the old site's stop, a check interval per probe step), at most {} (every \
         attempt timing out, and the lease wait of {} in full)\n{detection}{}\n",
        secs(r.best_case_ms),
        secs(r.worst_case_ms),
        secs(r.safe_wait_ms),
        if r.would_start {
            format!(
                "every gate passes: 'droverctl {} {service} --to {}{}' would start now",
                r.kind,
                r.to_site,
                if r.kind == "failover" { " --reason TEXT" } else { "" }
            )
        } else {
            format!("a gate says no: the {} would be refused now", r.kind)
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with_standby(standby: pb::StandbyStatus) -> pb::StatusReply {
        pb::StatusReply {
            spec_version: 3,
            services: vec![pb::ServiceStatus {
                name: "webshop".into(),
                active_site: "prod".into(),
                epoch: 1,
                phase: "protecting".into(),
                mode: "auto".into(),
                lease_site: "prod".into(),
                standbys: vec![standby],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn status_shows_each_standbys_verdict_with_its_reasons_and_fingerprints() {
        let s = status_with_standby(pb::StandbyStatus {
            site: "dr".into(),
            ready: false,
            reasons: vec![
                "consistency check config differs: prod (active) has \"v1\", dr has \"v2\"".into(),
            ],
            consistency: vec![
                pb::ConsistencyStatus {
                    check: "config".into(),
                    gate: true,
                    state: "mismatch".into(),
                    active_site: "prod".into(),
                    active_value: "v1".into(),
                    standby_value: "v2".into(),
                    detail: String::new(),
                },
                pb::ConsistencyStatus {
                    check: "schema".into(),
                    gate: false,
                    state: "unknown".into(),
                    active_site: "prod".into(),
                    active_value: "7".into(),
                    standby_value: String::new(),
                    detail: "dr: no report from a node of dr yet".into(),
                },
            ],
            ..Default::default()
        });
        let text = services_table(&s);
        assert!(!text.starts_with("ALERT"), "{text}");
        let tail = text.split("standby readiness:\n").nth(1).unwrap_or_else(|| panic!("{text}"));
        assert_eq!(
            tail,
            "  webshop -> dr: NOT READY\n      consistency check config differs: prod (active) \
             has \"v1\", dr has \"v2\"\n      consistency config: mismatch (prod=\"v1\" dr=\"v2\")\n      \
             consistency schema: unknown (prod=\"7\" dr=unknown)\n"
        );
        let json = status_json(&s);
        let dr = &json["services"][0]["standbys"][0];
        assert_eq!(dr["ready"], false);
        assert_eq!(dr["consistency"][0]["standby"], "v2");
        assert_eq!(dr["consistency"][1]["standby"], Value::Null);
        assert_eq!(dr["split_brain"], Value::Null);
    }

    #[test]
    fn a_serving_standby_opens_status_with_an_alert() {
        let alert = "webshop: standby dr is serving: possible split brain (passive check app \
                     passes from 3 of 5 observers (HTTP 200))";
        let s = status_with_standby(pb::StandbyStatus {
            site: "dr".into(),
            ready: false,
            reasons: vec![alert.into()],
            passive: vec![pb::PassiveStatus {
                check: "app".into(),
                gate: true,
                state: "serving".into(),
                acknowledged: false,
                detail: "passes from 3 of 5 observers (HTTP 200)".into(),
            }],
            split_brain: alert.into(),
            ..Default::default()
        });
        let text = services_table(&s);
        assert_eq!(text.lines().next(), Some(format!("ALERT: {alert}").as_str()), "{text}");
        let json = status_json(&s);
        assert_eq!(json["services"][0]["standbys"][0]["split_brain"], alert);
        assert_eq!(json["services"][0]["standbys"][0]["passive"][0]["state"], "serving");
    }
}
