//! The `dns` step against real authoritative servers, Knot DNS and BIND 9: RFC 2136 updates
//! signed with TSIG, the epoch kept in the companion TXT record as a fencing token, and the
//! server's refusals as the step reports them. Every case runs once per server (`knot::` and
//! `bind::` tests), each on its own server on 127.0.0.1; what resolvers then see is read with
//! `kdig`, independently of drover's own client.

use std::time::Duration;

use drover::actuate::dns::{self, Expected};
use drover::actuate::{Actuator, RealActuator, StepContext, StepError, StepOutput};
use drover::spec::{
    DnsProtocol, DnsRecord, DnsRecordType, DnsStep, OnFailure, RunOn, Step, StepAction, Tsig,
};
use drover_tests::servers::{free_port, DnsServer, OUTSIDER_KEY as OUTSIDER, OUTSIDER_SECRET};

const ZONE: &str = "drover.test.";
/// The service's address at site A (in the zone file) and at site B.
const SITE_A: &str = "192.0.2.10";
const SITE_B: &str = "198.51.100.20";
/// Bound of one step attempt against the local server.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// The zone's records at the start of every case: www and db at site A.
const RECORDS: [(&str, &str, &str); 2] = [("www", "A", SITE_A), ("db", "A", SITE_A)];

/// The server a case runs against. Where the two answer differently, it is to a key the zone
/// does not let update: Knot says NOTAUTH (BADKEY), BIND says REFUSED.
#[derive(Clone, Copy, PartialEq)]
enum Flavor {
    Knot,
    Bind,
}

/// Runs each case once on Knot and once on BIND, as `knot::<case>` and `bind::<case>`.
macro_rules! on_both_servers {
    ($($case:ident),* $(,)?) => {
        mod knot {
            $(#[tokio::test]
            async fn $case() {
                let test = concat!("knot_", stringify!($case));
                let Some(s) = drover_tests::servers::DnsServer::knot(test, super::ZONE, &super::RECORDS)
                else { return };
                super::$case(&s, super::Flavor::Knot).await;
            })*
        }
        mod bind {
            $(#[tokio::test]
            async fn $case() {
                let test = concat!("bind_", stringify!($case));
                let Some(s) = drover_tests::servers::DnsServer::bind(test, super::ZONE, &super::RECORDS)
                else { return };
                super::$case(&s, super::Flavor::Bind).await;
            })*
        }
    };
}

on_both_servers!(
    failover_moves_the_records_to_site_b_and_records_the_epoch,
    a_wrong_or_unauthorised_key_is_refused_by_the_server,
    a_stale_epoch_is_refused_by_the_check_and_by_the_server,
    udp_works_and_an_unreachable_server_is_reported,
    every_server_must_answer_the_new_records_before_the_step_succeeds,
    drift_is_read_back_and_a_newer_epoch_is_not_drift_to_repair,
);

/// A `dns` step setting `records` (name relative to the zone, type, value) with `key`.
fn dns_step(
    server: &DnsServer,
    records: &[(&str, DnsRecordType, &str)],
    tsig: Option<Tsig>,
) -> DnsStep {
    DnsStep {
        server: server.server(),
        zone: ZONE.into(),
        tsig,
        records: records
            .iter()
            .map(|(name, rtype, value)| DnsRecord {
                name: format!("{name}.{ZONE}"),
                rtype: *rtype,
                ttl_secs: 30,
                value: (*value).into(),
            })
            .collect(),
        protocol: DnsProtocol::Tcp,
        verify_servers: Vec::new(),
    }
}

fn ctx(epoch: u64) -> StepContext {
    StepContext {
        service: "shop".into(),
        epoch,
        from_site: "a".into(),
        to_site: "b".into(),
        recovery_point: None,
        test: false,
    }
}

/// Runs `dns` as a runbook step, through the actuator the workflow driver uses.
async fn run_step(dns: &DnsStep, epoch: u64) -> Result<StepOutput, StepError> {
    let step = Step {
        run_on: RunOn::Any,
        timeout: STEP_TIMEOUT,
        retries: 0,
        backoff: Duration::ZERO,
        on_failure: OnFailure::Abort,
        action: StepAction::Dns(dns.clone()),
    };
    RealActuator::new().run(&step, &ctx(epoch)).await
}

fn companion(name: &str) -> String {
    format!("_drover.{name}.{ZONE}")
}

fn failed_reason(result: Result<StepOutput, StepError>) -> String {
    match result {
        Err(StepError::Failed { reason, .. }) => reason,
        other => panic!("expected StepError::Failed, got {other:?}"),
    }
}

fn refused_reason(result: Result<StepOutput, StepError>) -> String {
    match result {
        Err(StepError::Refused { reason }) => reason,
        other => panic!("expected StepError::Refused, got {other:?}"),
    }
}

async fn failover_moves_the_records_to_site_b_and_records_the_epoch(srv: &DnsServer, _: Flavor) {
    let key = Some(srv.key());
    let serial_before = srv.soa_serial().expect("serial");
    assert_eq!(srv.dig(&format!("www.{ZONE}"), "A"), vec![SITE_A]);
    assert!(srv.dig(&companion("www"), "TXT").is_empty());

    // Epoch 1 activates site A: no epoch recorded yet.
    let to_a = dns_step(
        srv,
        &[("www", DnsRecordType::A, SITE_A), ("db", DnsRecordType::A, SITE_A)],
        key.clone(),
    );
    let out = run_step(&to_a, 1).await.expect("epoch 1 update");
    assert!(
        out.detail.starts_with(&format!(
            "updated 2 records in zone {ZONE} at {} over tcp (epoch 1, was none) after ",
            srv.server()
        )),
        "{}",
        out.detail
    );
    assert_eq!(srv.dig(&companion("www"), "TXT"), vec!["1"]);

    // Epoch 2 fails over to site B.
    let to_b =
        dns_step(srv, &[("www", DnsRecordType::A, SITE_B), ("db", DnsRecordType::A, SITE_B)], key);
    let out = run_step(&to_b, 2).await.expect("epoch 2 update");
    assert!(out.detail.contains("(epoch 2, was 1)"), "{}", out.detail);
    assert_eq!(srv.dig(&format!("www.{ZONE}"), "A"), vec![SITE_B], "the RRset is replaced");
    assert_eq!(srv.dig(&format!("db.{ZONE}"), "A"), vec![SITE_B]);
    assert_eq!(srv.dig(&companion("www"), "TXT"), vec!["2"]);
    // One UPDATE message per step: the zone's serial moved once for each.
    assert_eq!(srv.soa_serial(), Some(serial_before + 2));
    assert_eq!(dns::read_epoch(&to_b, STEP_TIMEOUT).await.expect("read"), Expected::Epoch(2));

    // The same step again (a new leader re-running it) is fine.
    let out = run_step(&to_b, 2).await.expect("epoch 2 again");
    assert!(out.detail.contains("(epoch 2, was 2)"), "{}", out.detail);
    assert_eq!(srv.dig(&format!("www.{ZONE}"), "A"), vec![SITE_B]);
}

async fn a_wrong_or_unauthorised_key_is_refused_by_the_server(srv: &DnsServer, flavor: Flavor) {
    let wrong = Tsig { secret_file: srv.secret_file("wrong.key", OUTSIDER_SECRET), ..srv.key() };
    let step = dns_step(srv, &[("www", DnsRecordType::A, SITE_B)], Some(wrong));
    // The signed read is the first to be rejected; the update is rejected the same way.
    let why = failed_reason(run_step(&step, 1).await);
    assert!(why.contains("answered NOTAUTH (TSIG BADSIG) to the query of TXT"), "{why}");
    assert!(why.contains("another secret for key drover (hmac-sha256)"), "{why}");
    assert!(why.contains("check that the key name, secret and algorithm are the same"), "{why}");
    assert!(!why.contains(OUTSIDER_SECRET), "the secret leaked: {why}");
    let why = failed_reason(dns::update(&step, STEP_TIMEOUT, &ctx(1), Expected::Absent).await);
    assert!(
        why.contains("answered NOTAUTH (TSIG BADSIG) to the update of zone drover.test."),
        "{why}"
    );

    // A key the server knows (for transfers) but does not let update the zone.
    let outsider = Tsig {
        name: OUTSIDER.into(),
        algorithm: "hmac-sha256".into(),
        secret_file: srv.secret_file("outsider.key", OUTSIDER_SECRET),
    };
    let step = dns_step(srv, &[("www", DnsRecordType::A, SITE_B)], Some(outsider));
    let why = failed_reason(run_step(&step, 1).await);
    let advice = match flavor {
        Flavor::Knot => {
            "NOTAUTH (TSIG BADKEY) to the update of zone drover.test.: the server does \
                         not know key outsider (hmac-sha256) or does not let it make"
        }
        Flavor::Bind => {
            "REFUSED to the update of zone drover.test.: the server's policy does not \
                         allow it: allow key outsider (hmac-sha256) to update"
        }
    };
    assert!(why.contains(advice), "{why}");

    // The right key, for a name the zone's policy does not let it update.
    let step = dns_step(srv, &[("mail", DnsRecordType::A, SITE_B)], Some(srv.key()));
    let why = failed_reason(run_step(&step, 1).await);
    let answer = match flavor {
        Flavor::Knot => "answered NOTAUTH (TSIG BADKEY) to the update of zone",
        Flavor::Bind => "answered REFUSED to the update of zone",
    };
    assert!(why.contains(answer), "{why}");
    assert!(
        why.contains("the step's records and the TXT record _drover.mail.drover.test."),
        "{why}"
    );

    // No key at all.
    let step = dns_step(srv, &[("www", DnsRecordType::A, SITE_B)], None);
    let why = failed_reason(run_step(&step, 1).await);
    let advice = match flavor {
        Flavor::Knot => {
            "answered NOTAUTH to the update of zone drover.test.: the server wants a \
                         TSIG key to update zone drover.test., or is not authoritative for it; \
                         give the step a tsig key"
        }
        Flavor::Bind => {
            "answered REFUSED to the update of zone drover.test.: the server's policy \
                         does not allow it: allow this node to update"
        }
    };
    assert!(why.contains(advice), "{why}");

    // A secret file that is not there.
    let missing = Tsig { secret_file: "/nonexistent/drover.key".into(), ..srv.key() };
    let step = dns_step(srv, &[("www", DnsRecordType::A, SITE_B)], Some(missing));
    let why = failed_reason(run_step(&step, 1).await);
    assert!(why.contains("/nonexistent/drover.key") && why.contains("does not exist"), "{why}");

    assert_eq!(srv.dig(&format!("www.{ZONE}"), "A"), vec![SITE_A], "nothing changed");
    assert!(srv.dig(&companion("www"), "TXT").is_empty());
}

async fn a_stale_epoch_is_refused_by_the_check_and_by_the_server(srv: &DnsServer, _: Flavor) {
    let key = Some(srv.key());
    let newer = dns_step(srv, &[("www", DnsRecordType::A, SITE_B)], key.clone());
    run_step(&newer, 3).await.expect("epoch 3 update");
    assert_eq!(srv.dig(&companion("www"), "TXT"), vec!["3"]);

    // A stale leader (epoch 2) reads epoch 3 and does not send its update.
    let stale = dns_step(srv, &[("www", DnsRecordType::A, SITE_A)], key);
    let why = refused_reason(run_step(&stale, 2).await);
    assert!(why.contains("holds epoch 3, newer than this step's epoch 2"), "{why}");

    // Sent anyway with what it read earlier (epoch 2): the server checks the prerequisite.
    let why = refused_reason(dns::update(&stale, STEP_TIMEOUT, &ctx(2), Expected::Epoch(2)).await);
    assert!(why.contains("answered NXRRSET to the update of zone drover.test."), "{why}");
    assert!(
        why.contains("its prerequisite that _drover.www.drover.test. holds epoch 2 failed"),
        "{why}"
    );
    assert!(why.contains("it now holds epoch 3"), "{why}");

    // A newer epoch whose read is out of date is refused too: another writer changed the
    // records between its read and its update, and a blind retry must not overwrite them.
    let why = refused_reason(dns::update(&stale, STEP_TIMEOUT, &ctx(4), Expected::Epoch(2)).await);
    assert!(why.contains("NXRRSET") && why.contains("it now holds epoch 3"), "{why}");
    assert!(why.contains("another writer changed it since it was read"), "{why}");
    let why = refused_reason(dns::update(&stale, STEP_TIMEOUT, &ctx(4), Expected::Absent).await);
    assert!(why.contains("answered YXRRSET"), "{why}");
    assert!(
        why.contains("prerequisite that _drover.www.drover.test. does not exist failed"),
        "{why}"
    );

    assert_eq!(srv.dig(&format!("www.{ZONE}"), "A"), vec![SITE_B], "nothing changed");
    assert_eq!(srv.dig(&companion("www"), "TXT"), vec!["3"]);

    // With the epoch it really holds, epoch 4 goes through.
    dns::update(&stale, STEP_TIMEOUT, &ctx(4), Expected::Epoch(3)).await.expect("epoch 4");
    assert_eq!(srv.dig(&format!("www.{ZONE}"), "A"), vec![SITE_A]);
    assert_eq!(srv.dig(&companion("www"), "TXT"), vec!["4"]);
}

async fn udp_works_and_an_unreachable_server_is_reported(srv: &DnsServer, _: Flavor) {
    let mut step = dns_step(srv, &[("www", DnsRecordType::A, SITE_B)], Some(srv.key()));
    step.protocol = DnsProtocol::Udp;
    let out = run_step(&step, 1).await.expect("update over UDP");
    assert!(out.detail.contains("over udp (epoch 1, was none)"), "{}", out.detail);
    assert_eq!(srv.dig(&format!("www.{ZONE}"), "A"), vec![SITE_B]);
    assert_eq!(srv.dig(&companion("www"), "TXT"), vec!["1"]);

    // Nothing listens on this port.
    let closed = free_port();
    step.server = format!("127.0.0.1:{closed}");
    let short = Duration::from_millis(800);
    match dns::run(&step, short, &ctx(2)).await {
        Err(StepError::Timeout { after, output_tail }) => {
            assert_eq!(after, short);
            assert!(
                output_tail
                    .contains(&format!("waiting for the answer of 127.0.0.1:{closed} over udp")),
                "{output_tail}"
            );
        }
        other => panic!("expected a timeout over UDP, got {other:?}"),
    }
    step.protocol = DnsProtocol::Tcp;
    let why = failed_reason(dns::run(&step, short, &ctx(2)).await);
    assert!(
        why.contains(&format!("DNS server 127.0.0.1:{closed} refused the tcp connection")),
        "{why}"
    );
}

async fn every_server_must_answer_the_new_records_before_the_step_succeeds(
    srv: &DnsServer,
    _: Flavor,
) {
    // A real secondary (Knot, refreshing every 2 s): the step waits for its serial.
    let test = "dns_verify_secondary";
    let Some(secondary) = DnsServer::knot_secondary(test, srv, &RECORDS) else { return };
    let mut step = dns_step(srv, &[("www", DnsRecordType::A, SITE_B)], Some(srv.key()));
    step.verify_servers = vec![secondary.server()];
    let long = Duration::from_secs(15);
    let out = dns::run(&step, long, &ctx(1)).await.expect("the secondary catches up");
    assert!(out.detail.ends_with("read back from 2 servers"), "{}", out.detail);
    assert_eq!(secondary.dig(&format!("www.{ZONE}"), "A"), vec![SITE_B]);
    assert_eq!(secondary.dig(&companion("www"), "TXT"), vec!["1"]);

    // A server of the zone that never gets the update (here: a second primary with the old
    // zone): the update is applied, but the step fails and says where and what is stale.
    let Some(stale) = DnsServer::knot("dns_verify_stale", ZONE, &RECORDS) else { return };
    let mut step = dns_step(srv, &[("www", DnsRecordType::A, SITE_A)], Some(srv.key()));
    step.verify_servers = vec![stale.server()];
    let short = Duration::from_secs(3);
    let why = failed_reason(dns::run(&step, short, &ctx(2)).await);
    let named = format!("dns: {} (in verify_servers) still answers", stale.server());
    assert!(why.starts_with(&named), "{why}");
    assert!(why.contains(&format!("after the update of zone {ZONE} at {}", srv.server())), "{why}");
    assert!(
        why.contains(&format!("_drover.www.{ZONE} TXT holds epoch none (the step's epoch is 2)")),
        "{why}"
    );
    assert!(why.contains("(its serial 1, the updated server's 3)"), "{why}");
    assert!(why.contains("can transfer the zone, or raise the step's timeout"), "{why}");
    assert_eq!(srv.dig(&companion("www"), "TXT"), vec!["2"], "the update itself was applied");

    // The stale server listing another value for the record is named with it.
    let mut step = dns_step(srv, &[("www", DnsRecordType::A, SITE_B)], Some(srv.key()));
    step.verify_servers = vec![stale.server()];
    let why = failed_reason(dns::run(&step, short, &ctx(3)).await);
    assert!(
        why.contains(&format!("www.{ZONE} A answers {SITE_A} (the step sets {SITE_B})")),
        "{why}"
    );
}

async fn drift_is_read_back_and_a_newer_epoch_is_not_drift_to_repair(srv: &DnsServer, _: Flavor) {
    let to_b = dns_step(srv, &[("www", DnsRecordType::A, SITE_B)], Some(srv.key()));
    run_step(&to_b, 2).await.expect("epoch 2 update");
    let out = dns::verify(&to_b, STEP_TIMEOUT, &ctx(2)).await.expect("no drift yet");
    assert_eq!(out.detail, format!("zone {ZONE}: 1 record and epoch 2 as set, on 1 server"));

    // Someone points www back at site A by hand (keeping the companion): drift.
    let by_hand = dns_step(srv, &[("www", DnsRecordType::A, SITE_A)], Some(srv.key()));
    dns::update(&by_hand, STEP_TIMEOUT, &ctx(2), Expected::Epoch(2)).await.expect("hand edit");
    let why = failed_reason(dns::verify(&to_b, STEP_TIMEOUT, &ctx(2)).await);
    assert_eq!(
        why,
        format!(
            "dns: zone {ZONE} no longer holds what epoch 2 set: {}: www.{ZONE} A answers \
             {SITE_A} (the step sets {SITE_B})",
            srv.server()
        )
    );
    // Running the step again repairs it.
    run_step(&to_b, 2).await.expect("repair");
    dns::verify(&to_b, STEP_TIMEOUT, &ctx(2)).await.expect("repaired");

    // A newer epoch in the companion: a check for epoch 2 is refused, not drift to repair,
    // and a run for epoch 2 leaves the records alone.
    let newer = dns_step(srv, &[("www", DnsRecordType::A, SITE_A)], Some(srv.key()));
    run_step(&newer, 5).await.expect("epoch 5");
    let why = refused_reason(dns::verify(&to_b, STEP_TIMEOUT, &ctx(2)).await);
    assert!(why.contains("holds epoch 5, newer than this step's epoch 2"), "{why}");
    refused_reason(run_step(&to_b, 2).await);
    assert_eq!(srv.dig(&format!("www.{ZONE}"), "A"), vec![SITE_A]);
    assert_eq!(srv.dig(&companion("www"), "TXT"), vec!["5"]);
}
