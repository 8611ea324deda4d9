//! The `dns` step against a real Knot DNS server: RFC 2136 updates signed with TSIG, the
//! epoch kept in the companion TXT record as a fencing token, and the server's refusals as the
//! step reports them. Each test runs its own `knotd` on 127.0.0.1; what resolvers then see is
//! read with `kdig`, independently of drover's own client.

use std::fs;
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover::actuate::dns::{self, Expected};
use drover::actuate::{Actuator, RealActuator, StepContext, StepError, StepOutput};
use drover::spec::{
    DnsProtocol, DnsRecord, DnsRecordType, DnsStep, OnFailure, RunOn, Step, StepAction, Tsig,
};
use drover_tests::{require_program, run_with_deadline};

const ZONE: &str = "drover.test.";
/// The service's address at site A (in the zone file) and at site B.
const SITE_A: &str = "192.0.2.10";
const SITE_B: &str = "198.51.100.20";
/// The key Knot lets update the zone, and one it knows (for zone transfers) but does not let
/// update it.
const KEY: &str = "drover";
const SECRET: &str = "ZHJvdmVyLXRlc3Qta2V5LTAxMjM0NTY3ODlhYmNkZWY=";
const OUTSIDER: &str = "outsider";
const OUTSIDER_SECRET: &str = "b3V0c2lkZXIta2V5LTAxMjM0NTY3ODlhYmNkZWZnaGk=";
/// Bound of one step attempt against the local server.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long knotd gets to answer after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A `knotd` serving `drover.test.` on a free loopback port (TCP and UDP), in its own temp
/// dir; killed when dropped, also when a test panics.
struct Knot {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    kdig: PathBuf,
}

impl Knot {
    /// Starts knotd, or `None` (after a skip message) when knotd or kdig is not installed.
    fn start(test: &str) -> Option<Knot> {
        let knotd = require_program(test, "knotd", "knot")?;
        let kdig = require_program(test, "kdig", "knot-dnsutils")?;
        let dir = tempfile::Builder::new().prefix(&format!("{test}-")).tempdir().expect("temp dir");
        let port = free_port();
        let root = dir.path().display();
        // knotd 3.x runs as the user that starts it when the config sets no `user:`, so this
        // works as root and as anyone else. The zone file is never written back
        // (zonefile-sync: -1); updates live in the journal under `storage`.
        let config = format!(
            "server:\n  rundir: \"{root}\"\n  listen: 127.0.0.1@{port}\n\
             log:\n  - target: stderr\n    any: info\n\
             database:\n  storage: \"{root}\"\n\
             key:\n  - id: {KEY}\n    algorithm: hmac-sha256\n    secret: {SECRET}\n\
             \x20 - id: {OUTSIDER}\n    algorithm: hmac-sha256\n    secret: {OUTSIDER_SECRET}\n\
             acl:\n  - id: drover_update\n    key: {KEY}\n    action: update\n\
             \x20   update-type: [A, AAAA, CNAME, TXT]\n\
             \x20   update-owner: name\n    update-owner-match: equal\n\
             \x20   update-owner-name: [www.{ZONE}, db.{ZONE}, _drover.www.{ZONE}]\n\
             \x20 - id: outsider_transfer\n    key: {OUTSIDER}\n    action: transfer\n\
             template:\n  - id: default\n    storage: \"{root}\"\n    zonefile-sync: -1\n\
             zone:\n  - domain: {ZONE}\n    file: drover.test.zone\n    acl: [drover_update, outsider_transfer]\n"
        );
        fs::write(dir.path().join("knot.conf"), config).expect("write knot.conf");
        let zone_file = format!(
            "$ORIGIN {ZONE}\n$TTL 60\n\
             @ SOA ns1 hostmaster 1 3600 600 86400 60\n\
             @ NS ns1\n\
             ns1 A 127.0.0.1\n\
             www A {SITE_A}\n\
             db A {SITE_A}\n"
        );
        fs::write(dir.path().join("drover.test.zone"), zone_file).expect("write the zone file");
        fs::write(dir.path().join("drover.key"), format!("{SECRET}\n")).expect("write key");
        let log = fs::File::create(dir.path().join("knotd.log")).expect("create knotd.log");
        let child = Command::new(knotd)
            .arg("-c")
            .arg(dir.path().join("knot.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn knotd");
        let mut knot = Knot { child, dir, port, kdig };
        knot.wait_until_serving();
        Some(knot)
    }

    fn wait_until_serving(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("knotd exited ({status}) before serving:\n{}", self.log());
            }
            if self.soa_serial().is_some() {
                return;
            }
            if started.elapsed() > START_TIMEOUT {
                panic!("knotd did not serve {ZONE} within {START_TIMEOUT:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("knotd.log")).unwrap_or_default()
    }

    /// A file holding `secret`, for a step's `tsig.secret_file`.
    fn secret_file(&self, name: &str, secret: &str) -> String {
        let path = self.dir.path().join(name);
        fs::write(&path, format!("{secret}\n")).expect("write a secret file");
        path.to_string_lossy().into_owned()
    }

    /// A `dns` step setting `records` (name relative to the zone, type, value) with `key`.
    fn step(&self, records: &[(&str, DnsRecordType, &str)], tsig: Option<Tsig>) -> DnsStep {
        DnsStep {
            server: self.server(),
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
        }
    }

    /// The key Knot lets update the zone.
    fn key(&self) -> Tsig {
        Tsig {
            name: KEY.into(),
            algorithm: "hmac-sha256".into(),
            secret_file: self.dir.path().join("drover.key").to_string_lossy().into_owned(),
        }
    }

    /// What a resolver gets for `name type` (kdig +short, over TCP), one value a line.
    fn dig(&self, name: &str, rtype: &str) -> Vec<String> {
        let out = run_with_deadline(
            Command::new(&self.kdig)
                .arg("@127.0.0.1")
                .arg("-p")
                .arg(self.port.to_string())
                .args(["+tcp", "+short", "+timeout=2", "+retry=0"])
                .arg(name)
                .arg(rtype),
            Duration::from_secs(10),
        );
        assert!(out.success(), "kdig {name} {rtype} failed: {}", out.describe());
        out.stdout.lines().map(|l| l.trim().trim_matches('"').to_string()).collect()
    }

    fn soa_serial(&self) -> Option<u32> {
        let out =
            run_with_deadline(
                Command::new(&self.kdig)
                    .arg("@127.0.0.1")
                    .arg("-p")
                    .arg(self.port.to_string())
                    .args(["+tcp", "+short", "+timeout=1", "+retry=0", ZONE, "SOA"]),
                Duration::from_secs(5),
            );
        out.stdout.split_whitespace().nth(2)?.parse().ok()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("knotd log:\n{}", self.log());
        }
    }
}

/// A loopback port free for both TCP and UDP (knotd listens on both).
fn free_port() -> u16 {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
        let port = tcp.local_addr().expect("local addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both TCP and UDP");
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

#[tokio::test]
async fn failover_moves_the_records_to_site_b_and_records_the_epoch() {
    let Some(knot) = Knot::start("dns_failover") else { return };
    let key = Some(knot.key());
    let serial_before = knot.soa_serial().expect("serial");
    assert_eq!(knot.dig(&format!("www.{ZONE}"), "A"), vec![SITE_A]);
    assert!(knot.dig(&companion("www"), "TXT").is_empty());

    // Epoch 1 activates site A: no epoch recorded yet.
    let to_a = knot
        .step(&[("www", DnsRecordType::A, SITE_A), ("db", DnsRecordType::A, SITE_A)], key.clone());
    let out = run_step(&to_a, 1).await.expect("epoch 1 update");
    assert!(
        out.detail.starts_with(&format!(
            "updated 2 records in zone {ZONE} at {} over tcp (epoch 1, was none) after ",
            knot.server()
        )),
        "{}",
        out.detail
    );
    assert_eq!(knot.dig(&companion("www"), "TXT"), vec!["1"]);

    // Epoch 2 fails over to site B.
    let to_b =
        knot.step(&[("www", DnsRecordType::A, SITE_B), ("db", DnsRecordType::A, SITE_B)], key);
    let out = run_step(&to_b, 2).await.expect("epoch 2 update");
    assert!(out.detail.contains("(epoch 2, was 1)"), "{}", out.detail);
    assert_eq!(knot.dig(&format!("www.{ZONE}"), "A"), vec![SITE_B], "the RRset is replaced");
    assert_eq!(knot.dig(&format!("db.{ZONE}"), "A"), vec![SITE_B]);
    assert_eq!(knot.dig(&companion("www"), "TXT"), vec!["2"]);
    // One UPDATE message per step: the zone's serial moved once for each.
    assert_eq!(knot.soa_serial(), Some(serial_before + 2));
    assert_eq!(dns::read_epoch(&to_b, STEP_TIMEOUT).await.expect("read"), Expected::Epoch(2));

    // The same step again (a new leader re-running it) is fine.
    let out = run_step(&to_b, 2).await.expect("epoch 2 again");
    assert!(out.detail.contains("(epoch 2, was 2)"), "{}", out.detail);
    assert_eq!(knot.dig(&format!("www.{ZONE}"), "A"), vec![SITE_B]);
}

#[tokio::test]
async fn a_wrong_or_unauthorised_key_is_refused_by_the_server() {
    let Some(knot) = Knot::start("dns_wrong_key") else { return };
    let wrong = Tsig { secret_file: knot.secret_file("wrong.key", OUTSIDER_SECRET), ..knot.key() };
    let step = knot.step(&[("www", DnsRecordType::A, SITE_B)], Some(wrong));
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
        secret_file: knot.secret_file("outsider.key", OUTSIDER_SECRET),
    };
    let step = knot.step(&[("www", DnsRecordType::A, SITE_B)], Some(outsider));
    let why = failed_reason(run_step(&step, 1).await);
    assert!(
        why.contains("answered NOTAUTH (TSIG BADKEY) to the update of zone drover.test."),
        "{why}"
    );
    assert!(
        why.contains("does not know key outsider (hmac-sha256) or does not let it make"),
        "{why}"
    );

    // The right key, for a name the zone's ACL does not let it update.
    let step = knot.step(&[("mail", DnsRecordType::A, SITE_B)], Some(knot.key()));
    let why = failed_reason(run_step(&step, 1).await);
    assert!(why.contains("answered NOTAUTH (TSIG BADKEY) to the update of zone"), "{why}");
    assert!(
        why.contains(
            "lets the key update the step's records and the TXT record _drover.mail.drover.test."
        ),
        "{why}"
    );

    // No key at all.
    let step = knot.step(&[("www", DnsRecordType::A, SITE_B)], None);
    let why = failed_reason(run_step(&step, 1).await);
    assert!(why.contains("answered NOTAUTH to the update of zone drover.test."), "{why}");
    assert!(why.contains("give the step a tsig key"), "{why}");

    // A secret file that is not there.
    let missing = Tsig { secret_file: "/nonexistent/drover.key".into(), ..knot.key() };
    let step = knot.step(&[("www", DnsRecordType::A, SITE_B)], Some(missing));
    let why = failed_reason(run_step(&step, 1).await);
    assert!(why.contains("/nonexistent/drover.key") && why.contains("does not exist"), "{why}");

    assert_eq!(knot.dig(&format!("www.{ZONE}"), "A"), vec![SITE_A], "nothing changed");
    assert!(knot.dig(&companion("www"), "TXT").is_empty());
}

#[tokio::test]
async fn a_stale_epoch_is_refused_by_the_check_and_by_the_server() {
    let Some(knot) = Knot::start("dns_stale_epoch") else { return };
    let key = Some(knot.key());
    let newer = knot.step(&[("www", DnsRecordType::A, SITE_B)], key.clone());
    run_step(&newer, 3).await.expect("epoch 3 update");
    assert_eq!(knot.dig(&companion("www"), "TXT"), vec!["3"]);

    // A stale leader (epoch 2) reads epoch 3 and does not send its update.
    let stale = knot.step(&[("www", DnsRecordType::A, SITE_A)], key);
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

    // A newer epoch whose read is out of date is told to read again, not that it is stale.
    let why = failed_reason(dns::update(&stale, STEP_TIMEOUT, &ctx(4), Expected::Epoch(2)).await);
    assert!(why.contains("NXRRSET") && why.contains("it now holds epoch 3"), "{why}");
    let why = failed_reason(dns::update(&stale, STEP_TIMEOUT, &ctx(4), Expected::Absent).await);
    assert!(why.contains("answered YXRRSET"), "{why}");
    assert!(
        why.contains("prerequisite that _drover.www.drover.test. does not exist failed"),
        "{why}"
    );

    assert_eq!(knot.dig(&format!("www.{ZONE}"), "A"), vec![SITE_B], "nothing changed");
    assert_eq!(knot.dig(&companion("www"), "TXT"), vec!["3"]);

    // With the epoch it really holds, epoch 4 goes through.
    dns::update(&stale, STEP_TIMEOUT, &ctx(4), Expected::Epoch(3)).await.expect("epoch 4");
    assert_eq!(knot.dig(&format!("www.{ZONE}"), "A"), vec![SITE_A]);
    assert_eq!(knot.dig(&companion("www"), "TXT"), vec!["4"]);
}

#[tokio::test]
async fn udp_works_and_an_unreachable_server_is_reported() {
    let Some(knot) = Knot::start("dns_udp") else { return };
    let mut step = knot.step(&[("www", DnsRecordType::A, SITE_B)], Some(knot.key()));
    step.protocol = DnsProtocol::Udp;
    let out = run_step(&step, 1).await.expect("update over UDP");
    assert!(out.detail.contains("over udp (epoch 1, was none)"), "{}", out.detail);
    assert_eq!(knot.dig(&format!("www.{ZONE}"), "A"), vec![SITE_B]);
    assert_eq!(knot.dig(&companion("www"), "TXT"), vec!["1"]);

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
