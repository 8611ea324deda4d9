//! Probe tests against real local servers and processes (127.0.0.1 only).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use super::*;
use crate::spec::{ClusterSpec, Policy, RunOn, Service, Site};
use crate::spec::{ConsistencyCheck, FingerprintSource, MAX_FINGERPRINT_BYTES};

/// A local HTTP server whose `/health` answers the status in `status` with body
/// `all systems ok`; `/slow` answers after 5 s; `/lag` and `/text` answer fixed bodies.
struct TestServer {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    async fn start() -> TestServer {
        let status = Arc::new(AtomicU16::new(200));
        let s = status.clone();
        let app = Router::new()
            .route(
                "/health",
                get(move || {
                    let code = StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap();
                    async move { (code, "all systems ok") }
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route("/lag", get(|| async { " 12.5\n" }))
            .route("/text", get(|| async { "soon" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TestServer { addr, status, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn check(probe: CheckProbe, timeout_ms: u64) -> Check {
    Check {
        site: "prod".into(),
        probe,
        interval: Duration::from_millis(timeout_ms + 100),
        timeout: Duration::from_millis(timeout_ms),
    }
}

fn http(url: String, expect_status: u16, body_contains: Option<&str>) -> CheckProbe {
    CheckProbe::Http { url, expect_status, body_contains: body_contains.map(str::to_string) }
}

fn exec(script: &str) -> CheckProbe {
    CheckProbe::Exec { command: vec!["sh".into(), "-c".into(), script.into()] }
}

#[tokio::test]
async fn http_check_verdicts() {
    let srv = TestServer::start().await;

    let r = run_check(&check(http(srv.url("/health"), 200, Some("systems ok")), 2000)).await;
    assert_eq!((r.verdict, r.detail.as_str()), (Verdict::Healthy, "HTTP 200"));
    assert_eq!(r.lag, None);

    let r = run_check(&check(http(srv.url("/health"), 204, None), 2000)).await;
    assert_eq!((r.verdict, r.detail.as_str()), (Verdict::Unhealthy, "HTTP 200 (expected 204)"));

    let r = run_check(&check(http(srv.url("/health"), 200, Some("degraded")), 2000)).await;
    assert_eq!(r.verdict, Verdict::Unhealthy);
    assert!(r.detail.contains("lacks \"degraded\""), "{}", r.detail);

    srv.status.store(503, Ordering::SeqCst);
    let r = run_check(&check(http(srv.url("/health"), 200, None), 2000)).await;
    assert_eq!((r.verdict, r.detail.as_str()), (Verdict::Unhealthy, "HTTP 503 (expected 200)"));
}

#[tokio::test]
async fn http_check_timeout_is_unhealthy_and_prompt() {
    let srv = TestServer::start().await;
    let t = Instant::now();
    let r = run_check(&check(http(srv.url("/slow"), 200, None), 300)).await;
    assert_eq!((r.verdict, r.detail.as_str()), (Verdict::Unhealthy, "timed out after 300ms"));
    assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
    assert!(r.latency >= Duration::from_millis(300));
}

#[tokio::test]
async fn http_check_refused_and_malformed() {
    let addr = closed_port().await;
    let r = run_check(&check(http(format!("http://{addr}/"), 200, None), 2000)).await;
    assert_eq!((r.verdict, r.detail.as_str()), (Verdict::Unhealthy, "connection refused"));

    let r = run_check(&check(http("http://exa mple/".into(), 200, None), 2000)).await;
    assert_eq!(r.verdict, Verdict::Unknown);
    assert!(r.detail.contains("malformed URL"), "{}", r.detail);
}

async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn tcp_check_open_closed_malformed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap();
    let r = run_check(&check(CheckProbe::Tcp { address: open.to_string() }, 2000)).await;
    assert_eq!(r.verdict, Verdict::Healthy, "{}", r.detail);
    assert_eq!(r.detail, format!("connected to {open}"));

    let closed = closed_port().await;
    let r = run_check(&check(CheckProbe::Tcp { address: closed.to_string() }, 2000)).await;
    assert_eq!((r.verdict, r.detail.as_str()), (Verdict::Unhealthy, "connection refused"));

    let r = run_check(&check(CheckProbe::Tcp { address: "no-port".into() }, 2000)).await;
    assert_eq!(r.verdict, Verdict::Unknown);
}

#[tokio::test]
async fn exec_check_verdicts() {
    let r = run_check(&check(exec("exit 0"), 2000)).await;
    assert_eq!((r.verdict, r.detail.as_str()), (Verdict::Healthy, "exit 0"));

    let r =
        run_check(&check(exec("echo noise; echo 'replica is stopped' >&2; exit 1"), 2000)).await;
    assert_eq!((r.verdict, r.detail.as_str()), (Verdict::Unhealthy, "exit 1: replica is stopped"));

    let t = Instant::now();
    let r = run_check(&check(exec("sleep 10"), 200)).await;
    assert_eq!((r.verdict, r.detail.as_str()), (Verdict::Unhealthy, "timed out after 200ms"));
    assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());

    let missing = CheckProbe::Exec { command: vec!["drover-test-no-such-binary".into()] };
    let r = run_check(&check(missing, 2000)).await;
    assert_eq!(
        (r.verdict, r.detail.as_str()),
        (Verdict::Unknown, "command not found: drover-test-no-such-binary")
    );
}

fn lag_probe(source: LagSource) -> LagProbe {
    LagProbe {
        run_on: RunOn::Any,
        source,
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
    }
}

fn lag_exec(script: &str) -> LagProbe {
    lag_probe(LagSource::Exec { command: vec!["sh".into(), "-c".into(), script.into()] })
}

#[tokio::test]
async fn lag_exec_parses_last_line() {
    assert_eq!(run_lag(&lag_exec("echo checking; echo ' 42.5 '; echo")).await, Ok(42.5));
    assert_eq!(run_lag(&lag_exec("echo 0")).await, Ok(0.0));

    let err = run_lag(&lag_exec("echo soon")).await.unwrap_err();
    assert_eq!(err, "lag probe reported \"soon\", which is not a number");
    let err = run_lag(&lag_exec("echo -3")).await.unwrap_err();
    assert!(err.contains(">= 0"), "{err}");
    let err = run_lag(&lag_exec("echo NaN")).await.unwrap_err();
    assert!(err.contains("finite"), "{err}");
    let err = run_lag(&lag_exec("true")).await.unwrap_err();
    assert!(err.contains("printed nothing"), "{err}");
    let err = run_lag(&lag_exec("echo 'no replica' >&2; exit 2")).await.unwrap_err();
    assert_eq!(err, "lag command: exit 2: no replica");
}

#[tokio::test]
async fn lag_http_parses_body() {
    let srv = TestServer::start().await;
    assert_eq!(run_lag(&lag_probe(LagSource::Http { url: srv.url("/lag") })).await, Ok(12.5));
    let err = run_lag(&lag_probe(LagSource::Http { url: srv.url("/text") })).await.unwrap_err();
    assert!(err.contains("not a number"), "{err}");
    srv.status.store(500, Ordering::SeqCst);
    let err = run_lag(&lag_probe(LagSource::Http { url: srv.url("/health") })).await.unwrap_err();
    assert_eq!(err, "lag URL answered HTTP 500 (expected 2xx)");
}

fn service(name: &str, checks: Vec<Check>, lag: Option<LagProbe>) -> Service {
    Service {
        name: name.into(),
        initial_active: "prod".into(),
        policy: Default::default(),
        max_lag_on_failover: None,
        checks,
        lag,
        readiness: Vec::new(),
        runbooks: Default::default(),
        veto: Vec::new(),
        consistency: Vec::new(),
        passive: Vec::new(),
    }
}

fn spec(services: Vec<Service>) -> Arc<ClusterSpec> {
    let site = |name: &str, witness| Site { name: name.into(), witness };
    Arc::new(ClusterSpec {
        sites: vec![site("prod", false), site("dr", false), site("witness", true)],
        policy: Policy::default(),
        services,
    })
}

fn fast(site: &str, probe: CheckProbe) -> Check {
    Check {
        site: site.into(),
        probe,
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(80),
    }
}

/// Polls `prober.latest()` until `pred` holds (5 s at most); returns the reports.
async fn wait_for(
    prober: &Prober,
    what: &str,
    pred: impl Fn(&[SiteReport]) -> bool,
) -> Vec<SiteReport> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reports = prober.latest();
        if pred(&reports) {
            return reports;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last: {reports:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn find<'a>(reports: &'a [SiteReport], service: &str, site: &str) -> Option<&'a SiteReport> {
    reports.iter().find(|r| r.service == service && r.site == site)
}

#[tokio::test]
async fn prober_reports_and_follows_changes() {
    let srv = TestServer::start().await;
    let (tx, rx) = watch::channel(None);
    let prober = Prober::spawn("dr".into(), rx, ProbeLimits::default());
    assert!(prober.latest().is_empty());

    let lag = LagProbe {
        run_on: RunOn::Site("dr".into()),
        source: LagSource::Exec { command: vec!["sh".into(), "-c".into(), "echo 3".into()] },
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(80),
    };
    let first = spec(vec![service(
        "web",
        vec![
            fast("prod", http(srv.url("/health"), 200, None)),
            fast("dr", CheckProbe::Tcp { address: srv.addr.to_string() }),
            fast("dr", exec("exit 0")),
        ],
        Some(lag),
    )]);
    tx.send(Some(first)).unwrap();

    let reports = wait_for(&prober, "both sites healthy with lag", |r| {
        r.len() == 2
            && r.iter().all(|r| r.verdict == Verdict::Healthy)
            && find(r, "web", "dr").is_some_and(|r| r.lag == Some(3.0))
    })
    .await;
    // Spec order, and the lag only on the run_on site's report.
    assert_eq!(
        reports.iter().map(|r| (r.service.as_str(), r.site.as_str())).collect::<Vec<_>>(),
        [("web", "prod"), ("web", "dr")]
    );
    assert_eq!(find(&reports, "web", "prod").unwrap().lag, None);
    assert_eq!(find(&reports, "web", "prod").unwrap().detail, "HTTP 200");

    srv.status.store(503, Ordering::SeqCst);
    let reports = wait_for(&prober, "prod unhealthy", |r| {
        find(r, "web", "prod").is_some_and(|r| r.verdict == Verdict::Unhealthy)
    })
    .await;
    assert_eq!(find(&reports, "web", "prod").unwrap().detail, "HTTP 503 (expected 200)");
    assert_eq!(find(&reports, "web", "dr").unwrap().verdict, Verdict::Healthy);

    // One failing check among several makes the site unhealthy, named in the detail.
    let second = spec(vec![service(
        "web",
        vec![
            fast("dr", CheckProbe::Tcp { address: srv.addr.to_string() }),
            fast("dr", exec("echo 'db down' >&2; exit 1")),
        ],
        None,
    )]);
    tx.send(Some(second)).unwrap();
    let reports = wait_for(&prober, "prod gone and dr unhealthy", |r| {
        r.len() == 1 && r[0].site == "dr" && r[0].verdict == Verdict::Unhealthy
    })
    .await;
    assert_eq!(reports[0].detail, "exec sh: exit 1: db down");
    assert_eq!(reports[0].lag, None);

    tx.send(None).unwrap();
    wait_for(&prober, "no reports without a spec", <[SiteReport]>::is_empty).await;
}

#[tokio::test]
async fn prober_skips_lag_probe_of_other_site_and_reports_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("lag-ran");
    let lag = LagProbe {
        run_on: RunOn::Site("dr".into()),
        source: LagSource::Exec {
            command: vec!["sh".into(), "-c".into(), format!("touch {}; echo 1", ran.display())],
        },
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(80),
    };
    let missing = CheckProbe::Exec { command: vec!["drover-test-no-such-binary".into()] };
    let (_tx, rx) = watch::channel(Some(spec(vec![service(
        "db",
        vec![fast("prod", exec("exit 0")), fast("dr", missing)],
        Some(lag),
    )])));
    let prober = Prober::spawn("prod".into(), rx, ProbeLimits::default());
    let reports = wait_for(&prober, "prod healthy, dr unknown", |r| {
        find(r, "db", "prod").is_some_and(|r| r.verdict == Verdict::Healthy)
            && find(r, "db", "dr").is_some_and(|r| r.detail.contains("command not found"))
    })
    .await;
    assert_eq!(find(&reports, "db", "dr").unwrap().verdict, Verdict::Unknown);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!ran.exists(), "a lag probe of site dr ran on a node of prod");
    assert!(prober.latest().iter().all(|r| r.lag.is_none()));
}

#[tokio::test]
async fn prober_bounds_concurrency() {
    // Each run holds a directory lock for 150 ms; with one run in flight at a time no run ever
    // finds the lock taken.
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("lock");
    let script = format!(
        "mkdir {0} || {{ echo overlap >&2; exit 1; }}; sleep 0.15; rmdir {0}",
        lock.display()
    );
    let slow = |site: &str| Check {
        site: site.into(),
        probe: exec(&script),
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(1000),
    };
    let (_tx, rx) =
        watch::channel(Some(spec(vec![service("app", vec![slow("prod"), slow("dr")], None)])));
    let limits = ProbeLimits { max_in_flight: 1, ..ProbeLimits::default() };
    let prober = Prober::spawn("prod".into(), rx, limits);
    wait_for(&prober, "both healthy", |r| {
        r.len() == 2 && r.iter().all(|r| r.verdict == Verdict::Healthy)
    })
    .await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for r in prober.latest() {
            assert_ne!(r.verdict, Verdict::Unhealthy, "runs overlapped: {r:?}");
        }
    }
}

#[tokio::test]
async fn dropping_the_prober_stops_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let ticks = dir.path().join("ticks");
    let (_tx, rx) = watch::channel(Some(spec(vec![service(
        "app",
        vec![fast("prod", exec(&format!("echo x >> {}", ticks.display())))],
        None,
    )])));
    let prober = Prober::spawn("prod".into(), rx, ProbeLimits::default());
    wait_for(&prober, "a healthy run", |r| r.iter().any(|r| r.verdict == Verdict::Healthy)).await;
    drop(prober);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let size = std::fs::metadata(&ticks).unwrap().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(std::fs::metadata(&ticks).unwrap().len(), size, "checks still run after drop");
}

#[tokio::test]
async fn https_check_verifies_the_server_certificate() {
    // A TLS server with a self-signed certificate: the handshake runs (rustls, ring) and the
    // check fails on trust, as it must for a certificate no system CA signed.
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = key.cert.der().clone();
    let private = rustls_pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], private)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let r = run_check(&check(http(format!("https://localhost:{port}/"), 200, None), 3000)).await;
    server.abort();
    assert_eq!(r.verdict, Verdict::Unhealthy);
    assert!(r.detail.contains("certificate"), "{}", r.detail);
}

#[tokio::test]
async fn services_with_the_same_check_share_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let ticks = dir.path().join("ticks");
    let same = fast("prod", exec(&format!("echo x >> {}", ticks.display())));
    let services = (0..50).map(|i| service(&format!("svc-{i}"), vec![same.clone()], None));
    let (_tx, rx) = watch::channel(Some(spec(services.collect())));
    let prober = Prober::spawn("prod".into(), rx, ProbeLimits::default());
    wait_for(&prober, "all 50 services healthy", |r| {
        r.len() == 50 && r.iter().all(|r| r.verdict == Verdict::Healthy)
    })
    .await;
    let lines = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().lines().count();
    let before = lines(&ticks);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let runs = lines(&ticks) - before;
    // One job at a 100 ms interval: about 10 runs in a second, never one per service.
    assert!((1..=15).contains(&runs), "{runs} runs in 1s for one shared check");
}

#[tokio::test]
async fn a_timeout_of_a_run_that_waited_for_a_slot_is_unknown() {
    let srv = TestServer::start().await;
    // One slot; two checks that each hold it until their 600 ms timeout: whichever waits for
    // the other starts ~600 ms late, and its timeout is the observer's lateness.
    let slow = |path: &str| Check {
        site: "prod".into(),
        probe: http(srv.url(path), 200, None),
        interval: Duration::from_millis(700),
        timeout: Duration::from_millis(600),
    };
    let (_tx, rx) = watch::channel(Some(spec(vec![
        service("a", vec![slow("/slow?a")], None),
        service("b", vec![slow("/slow?b")], None),
    ])));
    let limits = ProbeLimits { max_in_flight: 1, ..ProbeLimits::default() };
    let prober = Prober::spawn("prod".into(), rx, limits);
    let reports = wait_for(&prober, "a late run reported unknown", |r| {
        r.iter().any(|r| r.verdict == Verdict::Unknown && r.detail.contains("not counted"))
    })
    .await;
    let late = reports.iter().find(|r| r.detail.contains("not counted")).unwrap();
    assert!(late.detail.contains("timed out after 600ms"), "{}", late.detail);
    assert!(late.detail.contains("late"), "{}", late.detail);
}

#[test]
fn a_fingerprint_is_trimmed_and_bounded() {
    assert_eq!(parse_fingerprint("config", b"  abc123 \n"), Ok("abc123".to_string()));
    let empty = parse_fingerprint("config", b" \n").unwrap_err();
    assert!(empty.contains("config printed nothing"), "{empty}");
    let long = vec![b'a'; MAX_FINGERPRINT_BYTES + 1];
    let too_long = parse_fingerprint("config", &long).unwrap_err();
    assert!(too_long.contains("257 bytes") && too_long.contains("sha256sum"), "{too_long}");
    assert!(parse_fingerprint("config", &long[..MAX_FINGERPRINT_BYTES]).is_ok());
}

fn consistency(source: FingerprintSource) -> ConsistencyCheck {
    ConsistencyCheck {
        name: "config".into(),
        source,
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(150),
        gate: true,
    }
}

#[tokio::test]
async fn a_fingerprint_comes_from_a_command_with_the_site_or_from_a_url() {
    let by_site = consistency(FingerprintSource::Exec {
        command: vec!["sh".into(), "-c".into(), "echo \"$DROVER_SERVICE@$DROVER_SITE\"".into()],
    });
    assert_eq!(run_fingerprint(&by_site, "web", "dr").await, Ok("web@dr".to_string()));
    let failing = consistency(FingerprintSource::Exec {
        command: vec!["sh".into(), "-c".into(), "echo no config >&2; exit 3".into()],
    });
    let err = run_fingerprint(&failing, "web", "dr").await.unwrap_err();
    assert!(err.starts_with("consistency check config: exit 3") && err.ends_with("no config"));
    let srv = TestServer::start().await;
    let url = consistency(FingerprintSource::Http { url: srv.url("/text") });
    assert_eq!(run_fingerprint(&url, "web", "dr").await, Ok("soon".to_string()));
    srv.status.store(500, Ordering::SeqCst);
    let down = consistency(FingerprintSource::Http { url: srv.url("/health") });
    let err = run_fingerprint(&down, "web", "dr").await.unwrap_err();
    assert_eq!(err, "consistency check config: HTTP 500 (expected 2xx)");
}

#[tokio::test]
async fn the_prober_reports_its_own_sites_fingerprints_and_every_passive_check() {
    let (tx, rx) = watch::channel(None);
    let prober = Prober::spawn("dr".into(), rx, ProbeLimits::default());
    let mut svc =
        service("web", vec![fast("prod", exec("exit 0")), fast("dr", exec("exit 0"))], None);
    svc.consistency.push(consistency(FingerprintSource::Exec {
        command: vec!["sh".into(), "-c".into(), "echo \"v-$DROVER_SITE\"".into()],
    }));
    svc.passive.push(crate::spec::PassiveCheck {
        name: "app".into(),
        check: fast("dr", exec("exit 0")),
        gate: true,
    });
    tx.send(Some(spec(vec![svc]))).unwrap();
    let reports = wait_for(&prober, "a fingerprint and a passive result", |r| {
        find(r, "web", "dr").is_some_and(|r| {
            !r.fingerprints.is_empty()
                && r.passive.first().is_some_and(|p| p.verdict == Verdict::Healthy)
        })
    })
    .await;
    let dr = find(&reports, "web", "dr").unwrap();
    assert_eq!(dr.fingerprints[0].check, "config");
    assert_eq!(dr.fingerprints[0].value, Ok("v-dr".to_string()));
    assert_eq!(dr.passive[0].check, "app");
    // This node is in dr: it fingerprints dr only, and prod has no passive check.
    let prod = find(&reports, "web", "prod").unwrap();
    assert!(prod.fingerprints.is_empty() && prod.passive.is_empty(), "{prod:?}");
}
