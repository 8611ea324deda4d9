//! Loading, certificate generation and real mutual-TLS handshakes over loopback.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;

use super::accept::{certificate_name, refusal_reason};
use super::certs::{self, AdminSubject, CertSubject};
use super::identity::identity_of;
use super::*;

fn subject(name: &str, hosts: &[&str]) -> CertSubject {
    CertSubject { name: name.into(), hosts: hosts.iter().map(|h| h.to_string()).collect() }
}

/// A dev CA with nodes prod-1 (extra hosts) and dr-1, and admin `admin`.
fn cluster() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    certs::init(
        dir.path(),
        &[subject("prod-1", &["127.0.0.1", "ctl-1.prod.example"]), subject("dr-1", &[])],
        &[admin("admin", AdminRole::Admin), admin("vic", AdminRole::Viewer)],
        false,
    )
    .unwrap();
    dir
}

fn admin(name: &str, role: AdminRole) -> AdminSubject {
    AdminSubject { name: name.into(), role }
}

fn files(dir: &Path, name: &str) -> TlsFiles {
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
    }
}

fn first_cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

/// A raw rustls client trusting `ca` and presenting `identity` (cert, key) if given.
fn client_config(ca: &Path, identity: Option<(PathBuf, PathBuf)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(first_cert(ca)).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![first_cert(&cert)],
                PrivateKeyDer::from_pem_file(&key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

fn identity(dir: &Path, name: &str) -> Option<(PathBuf, PathBuf)> {
    Some((dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem"))))
}

/// Connects a client to `addr`, expecting server name `prod-1`, writes "ping" and reads the
/// answer. Returns what was read, or the error (a refused client sees an alert or EOF).
async fn client_ping(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<Vec<u8>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = connector.connect(ServerName::try_from("prod-1").unwrap(), tcp).await?;
    tls.write_all(b"ping").await?;
    tls.flush().await?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await?;
    Ok(buf.to_vec())
}

/// One server-side handshake with tokio-rustls directly: returns the server's result (with
/// the client certificate's name on success) and the client's.
async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> (io::Result<Option<String>>, io::Result<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await?;
        let name =
            tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(certificate_name);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").await?;
        tls.flush().await?;
        Ok(name)
    });
    let client_result = client_ping(addr, client).await;
    (server_side.await.unwrap(), client_result)
}

#[test]
fn init_writes_all_files_and_they_load() {
    let dir = cluster();
    let mut listed = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect::<Vec<_>>();
    listed.sort();
    assert_eq!(
        listed,
        [
            "admin-key.pem",
            "admin.pem",
            "ca-key.pem",
            "ca.pem",
            "dr-1-key.pem",
            "dr-1.pem",
            "prod-1-key.pem",
            "prod-1.pem",
            "vic-key.pem",
            "vic.pem"
        ]
    );
    for f in &listed {
        let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
        if f.ends_with("-key.pem") {
            assert_eq!(mode, 0o600, "{f}");
        } else {
            assert_eq!(mode, 0o644, "{f}");
        }
    }
    for name in ["prod-1", "dr-1", "admin"] {
        let m = load(&files(dir.path(), name)).unwrap();
        m.server_config().unwrap();
        assert_eq!(
            certificate_name(&first_cert(&dir.path().join(format!("{name}.pem")))).as_deref(),
            Some(name)
        );
    }
}

#[test]
fn init_returns_the_files_it_wrote_into_a_new_directory() {
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("a/b");
    let written = certs::init(&out, &[subject("n1", &[])], &[], false).unwrap();
    assert_eq!(written, ["ca.pem", "ca-key.pem", "n1.pem", "n1-key.pem"].map(|f| out.join(f)));
    assert!(written.iter().all(|p| p.is_file()));
}

#[test]
fn init_refuses_to_replace_a_ca_without_force() {
    let dir = cluster();
    let before = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let err = certs::init(dir.path(), &[subject("x", &[])], &[], false).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} already holds a CA; pass --force to replace it or choose another --out",
            dir.path().display()
        )
    );
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);
    assert!(!dir.path().join("x.pem").exists());

    // --force replaces it, and tightens a loosened key file back to 0600.
    let key = dir.path().join("prod-1-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    certs::init(dir.path(), &[subject("prod-1", &[])], &[], true).unwrap();
    assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    load(&files(dir.path(), "prod-1")).unwrap();
}

#[test]
fn init_rejects_bad_or_duplicate_names() {
    let dir = tempfile::tempdir().unwrap();
    for (nodes, admins, needle) in [
        (vec![subject("Prod", &[])], vec![], "lowercase"),
        (vec![subject("ca", &[])], vec![], "clash"),
        (vec![subject("a", &[])], vec![admin("a", AdminRole::Viewer)], "given twice"),
        (vec![subject("a", &["bad host"])], vec![], "neither an IP"),
    ] {
        let err = certs::init(dir.path(), &nodes, &admins, false).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn parse_subject_syntax() {
    assert_eq!(certs::parse_subject("prod-1").unwrap(), subject("prod-1", &[]));
    assert_eq!(
        certs::parse_subject("prod-1=10.0.0.1,ctl-1.prod.example").unwrap(),
        subject("prod-1", &["10.0.0.1", "ctl-1.prod.example"])
    );
    assert_eq!(certs::parse_subject("w=::1").unwrap(), subject("w", &["::1"]));
    for (bad, needle) in [
        ("prod-1=", "empty host"),
        ("prod-1=a,,b", "empty host"),
        ("=10.0.0.1", "must not be empty"),
        ("Prod=10.0.0.1", "lowercase"),
        ("p=a b", "neither an IP"),
    ] {
        let err = certs::parse_subject(bad).unwrap_err().to_string();
        assert!(err.contains(needle), "{bad}: {err}");
        assert!(err.starts_with(&format!("invalid certificate subject {bad:?}")), "{err}");
    }
}

#[test]
fn node_certificates_carry_the_requested_names() {
    let dir = cluster();
    let m = load(&files(dir.path(), "prod-1")).unwrap();
    let server = m.server_config().unwrap();
    // rustls' own verifier must accept the node cert for each of its names.
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        r.add(first_cert(&dir.path().join("ca.pem"))).unwrap();
        Arc::new(r)
    };
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots,
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let cert = first_cert(&dir.path().join("prod-1.pem"));
    let now = rustls::pki_types::UnixTime::now();
    for name in ["prod-1", "localhost", "127.0.0.1", "ctl-1.prod.example"] {
        verifier
            .verify_server_cert(&cert, &[], &ServerName::try_from(name).unwrap(), &[], now)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(verifier
        .verify_server_cert(&cert, &[], &ServerName::try_from("dr-1").unwrap(), &[], now)
        .is_err());
    assert_eq!(server.alpn_protocols, vec![b"h2".to_vec()]);
}

#[test]
fn load_names_the_file_and_the_problem() {
    let dir = cluster();
    let d = dir.path();

    let mut f = files(d, "prod-1");
    f.cert = d.join("empty.pem");
    std::fs::write(&f.cert, "").unwrap();
    let msg = load(&f).unwrap_err().to_string();
    assert!(msg.starts_with(&format!("no PEM certificate found in {}", f.cert.display())), "{msg}");

    let mut f = files(d, "prod-1");
    f.key = d.join("prod-1.pem");
    let msg = load(&f).unwrap_err().to_string();
    assert!(msg.starts_with(&format!("no private key in {}", f.key.display())), "{msg}");

    let mut f = files(d, "prod-1");
    f.key = d.join("dr-1-key.pem");
    let msg = load(&f).unwrap_err().to_string();
    assert!(msg.contains("does not fit certificate"), "{msg}");

    let mut f = files(d, "prod-1");
    f.ca = d.join("missing.pem");
    let msg = load(&f).unwrap_err().to_string();
    assert!(msg.starts_with(&format!("cannot read {}: ", f.ca.display())), "{msg}");
    assert!(!msg.contains('\n'));
}

#[test]
fn certificate_name_falls_back_to_the_common_name() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["10.1.2.3".to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "only-cn");
    let cert = params.self_signed(&key).unwrap();
    assert_eq!(certificate_name(cert.der()).as_deref(), Some("only-cn"));

    let params = rcgen::CertificateParams::new(vec![
        "10.1.2.3".to_string(),
        "first.example".to_string(),
        "second.example".to_string(),
    ])
    .unwrap();
    let cert = params.self_signed(&key).unwrap();
    assert_eq!(certificate_name(cert.der()).as_deref(), Some("first.example"));
    assert_eq!(certificate_name(&CertificateDer::from(vec![0x30, 0x03, 1])), None);
}

#[tokio::test]
async fn mtls_handshake_accepts_a_client_of_the_cluster_ca() {
    let dir = cluster();
    let server = load(&files(dir.path(), "prod-1")).unwrap().server_config().unwrap();
    let client = client_config(&dir.path().join("ca.pem"), identity(dir.path(), "admin"));
    let (server_result, client_result) = handshake(server, client).await;
    assert_eq!(server_result.unwrap().as_deref(), Some("admin"));
    assert_eq!(client_result.unwrap(), b"pong");
}

#[tokio::test]
async fn mtls_handshake_refuses_a_client_of_another_ca() {
    let dir = cluster();
    let other = cluster();
    let server = load(&files(dir.path(), "prod-1")).unwrap().server_config().unwrap();
    // Trusts the right CA for the server, but presents a certificate from another CA.
    let client = client_config(&dir.path().join("ca.pem"), identity(other.path(), "admin"));
    let (server_result, client_result) = handshake(server, client).await;
    let err = server_result.unwrap_err();
    assert_eq!(refusal_reason(&err), "client certificate is not signed by the cluster CA", "{err}");
    assert!(client_result.is_err());
}

#[tokio::test]
async fn mtls_handshake_refuses_a_client_without_certificate() {
    let dir = cluster();
    let server = load(&files(dir.path(), "prod-1")).unwrap().server_config().unwrap();
    let client = client_config(&dir.path().join("ca.pem"), None);
    let (server_result, client_result) = handshake(server, client).await;
    let err = server_result.unwrap_err();
    assert_eq!(refusal_reason(&err), "client presented no certificate", "{err}");
    assert!(client_result.is_err());
}

#[tokio::test]
async fn mtls_handshake_refuses_an_expired_client_certificate() {
    let dir = cluster();
    // Issue an expired client certificate from the cluster CA's own key.
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.path().join("ca-key.pem")).unwrap())
            .unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "drover cluster CA");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["old".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.path().join("old.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("old-key.pem"), key.serialize_pem()).unwrap();

    let server = load(&files(dir.path(), "prod-1")).unwrap().server_config().unwrap();
    let client = client_config(&dir.path().join("ca.pem"), identity(dir.path(), "old"));
    let (server_result, _) = handshake(server, client).await;
    let err = server_result.unwrap_err();
    assert_eq!(refusal_reason(&err), "certificate expired", "{err}");
}

/// Captures formatted tracing output of the current thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
    /// Waits (up to 5 s) until the output contains `needle`, and returns it.
    async fn wait_for(&self, needle: &str) -> String {
        for _ in 0..500 {
            let text = self.text();
            if text.contains(needle) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("log never contained {needle:?}:\n{}", self.text());
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

/// Whether a client attempt failed (within 5 s; an accepted client would wait forever for a
/// reply nobody sends, so a timeout counts as "not refused").
async fn refused(attempt: impl std::future::Future<Output = io::Result<Vec<u8>>>) -> bool {
    matches!(tokio::time::timeout(Duration::from_secs(5), attempt).await, Ok(Err(_)))
}

// current_thread (the default): the spawned accept and handshake tasks run on this thread, so
// the thread-local subscriber sees their events.
#[tokio::test]
async fn serve_incoming_yields_good_clients_and_logs_refusals_once() {
    let (logs, _guard) = capture_logs();
    let dir = cluster();
    let other = cluster();
    let server = load(&files(dir.path(), "prod-1")).unwrap().server_config().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = serve_incoming(listener, Some(server));
    let ca = dir.path().join("ca.pem");

    // Refused clients first; each sees its connection fail.
    let foreign = client_config(&ca, identity(other.path(), "admin"));
    assert!(refused(client_ping(addr, foreign)).await);
    logs.wait_for("refused connection: client certificate is not signed by the cluster CA").await;
    assert!(refused(client_ping(addr, client_config(&ca, None))).await);
    logs.wait_for("refused connection: client presented no certificate").await;

    // Then a good one: it is the first (and only) connection the stream yields.
    let good = tokio::spawn(client_ping(addr, client_config(&ca, identity(dir.path(), "dr-1"))));
    let mut conn = tokio::time::timeout(Duration::from_secs(5), incoming.next())
        .await
        .expect("no connection yielded")
        .expect("stream ended")
        .unwrap();
    let info = conn.connect_info();
    assert_eq!(info.peer_name.as_deref(), Some("dr-1"));
    assert_eq!(info.remote_addr.unwrap().ip(), addr.ip());
    assert!(matches!(conn, Conn::Tls(_)));
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    conn.write_all(b"pong").await.unwrap();
    conn.flush().await.unwrap();
    assert_eq!(good.await.unwrap().unwrap(), b"pong");

    assert!(
        tokio::time::timeout(Duration::from_millis(200), incoming.next()).await.is_err(),
        "a refused connection was yielded"
    );
    let text = logs.text();
    let refusals: Vec<&str> = text.lines().filter(|l| l.contains("refused connection")).collect();
    assert_eq!(refusals.len(), 2, "{text}");
    for line in &refusals {
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
        assert!(line.contains("cause="), "{line}");
    }
}

#[tokio::test]
async fn tonic_client_tls_connects_to_serve_incoming() {
    let dir = cluster();
    let server = load(&files(dir.path(), "prod-1")).unwrap().server_config().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = serve_incoming(listener, Some(server));

    let client = load(&files(dir.path(), "dr-1")).unwrap();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(client.client_tls("prod-1"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    let connect = tokio::spawn(async move { endpoint.connect().await });
    let conn = tokio::time::timeout(Duration::from_secs(5), incoming.next())
        .await
        .expect("no connection yielded")
        .unwrap()
        .unwrap();
    assert_eq!(conn.connect_info().peer_name.as_deref(), Some("dr-1"));
    connect.await.unwrap().expect("tonic connect failed");

    // The wrong server name is refused by the client.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(client.client_tls("dr-1"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    assert!(endpoint.connect().await.is_err());
}

#[tokio::test]
async fn serve_incoming_passes_plaintext_through_without_tls() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = serve_incoming(listener, None);
    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut conn = incoming.next().await.unwrap().unwrap();
    assert!(matches!(conn, Conn::Plain(_)));
    let info = conn.connect_info();
    assert_eq!(info.peer_name, None);
    assert_eq!(info.remote_addr, Some(client.local_addr().unwrap()));
    client.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi");
}

#[tokio::test]
async fn dropping_incoming_closes_the_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = serve_incoming(listener, None);
    drop(incoming);
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("listener still accepting after the stream was dropped");
}

#[tokio::test(start_paused = true)]
async fn stalled_handshakes_time_out() {
    let (logs, _guard) = capture_logs();
    let dir = cluster();
    let server = load(&files(dir.path(), "prod-1")).unwrap().server_config().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _incoming = serve_incoming(listener, Some(server));
    // Connects but never says anything.
    let _silent = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(accept::HANDSHAKE_TIMEOUT + Duration::from_secs(1)).await;
    logs.wait_for("refused connection: TLS handshake timed out").await;
}

// ---- check-config's certificate checks ------------------------------------------------------

fn now_s() -> i64 {
    crate::pb::unix_now_ms() / 1000
}

#[test]
fn a_node_with_its_own_certificate_passes_the_checks() {
    let dir = cluster();
    let tls = load(&files(dir.path(), "prod-1")).unwrap();
    assert_eq!(inspect::check_node_certificates(&tls, "prod-1", now_s()), Vec::<String>::new());
}

#[test]
fn another_nodes_certificate_is_named_as_such() {
    let dir = cluster();
    let tls = load(&files(dir.path(), "dr-1")).unwrap();
    let problems = inspect::check_node_certificates(&tls, "prod-1", now_s());
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = &problems[0];
    assert!(p.starts_with("tls.cert:") && p.contains("dr-1.pem"), "{p}");
    assert!(p.contains("issued to dr-1, localhost") && p.contains("\"prod-1\""), "{p}");
}

#[test]
fn an_expired_or_not_yet_valid_certificate_is_reported_with_its_date() {
    let dir = cluster();
    let tls = load(&files(dir.path(), "prod-1")).unwrap();
    let two_years_s = 2 * 365 * 24 * 3600;
    let later = inspect::check_node_certificates(&tls, "prod-1", now_s() + two_years_s);
    assert!(
        later.iter().any(|p| p.starts_with("tls.cert:") && p.contains("expired on")),
        "{later:?}"
    );
    assert!(
        later.iter().any(|p| p.starts_with("tls.ca:") && p.contains("expired on")),
        "{later:?}"
    );
    let earlier = inspect::check_node_certificates(&tls, "prod-1", now_s() - two_years_s);
    assert!(
        earlier.iter().any(|p| p.starts_with("tls.cert:") && p.contains("not valid before")),
        "{earlier:?}"
    );
}

#[test]
fn a_leaf_certificate_as_the_ca_is_refused() {
    let dir = cluster();
    let mut f = files(dir.path(), "prod-1");
    f.ca = dir.path().join("dr-1.pem");
    let tls = load(&f).unwrap();
    let problems = inspect::check_node_certificates(&tls, "prod-1", now_s());
    assert!(
        problems.iter().any(|p| p.starts_with("tls.ca:") && p.contains("not a CA")),
        "{problems:?}"
    );
}

#[test]
fn a_certificate_from_another_ca_does_not_verify() {
    let (ours, theirs) = (cluster(), cluster());
    let mut f = files(ours.path(), "prod-1");
    f.ca = theirs.path().join("ca.pem");
    let tls = load(&f).unwrap();
    let problems = inspect::check_node_certificates(&tls, "prod-1", now_s());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("does not verify against the CA"), "{problems:?}");
}

#[test]
fn init_writes_identities_into_certificates() {
    let dir = cluster();
    let of = |name: &str| identity_of(&first_cert(&dir.path().join(format!("{name}.pem"))));
    assert_eq!(of("prod-1"), PeerIdentity::Node { name: "prod-1".into() });
    assert_eq!(of("dr-1"), PeerIdentity::Node { name: "dr-1".into() });
    assert_eq!(of("admin"), PeerIdentity::Admin { user: "admin".into(), role: AdminRole::Admin });
    assert_eq!(of("vic"), PeerIdentity::Admin { user: "vic".into(), role: AdminRole::Viewer });
}

/// A certificate signed by nobody in particular with these URI SANs and common name.
fn with_uris(cn: &str, uris: &[&str]) -> CertificateDer<'static> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.subject_alt_names =
        uris.iter().map(|u| rcgen::SanType::URI(u.to_string().try_into().unwrap())).collect();
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().clone()
}

#[test]
fn identities_from_uri_sans_as_another_ca_would_issue_them() {
    let id = |cn: &str, uris: &[&str]| identity_of(&with_uris(cn, uris));
    assert_eq!(id("x", &["drover://node/dr-2"]), PeerIdentity::Node { name: "dr-2".into() });
    // The user comes from the URI, else from the common name.
    assert_eq!(
        id("Alice", &["drover://role/operator", "drover://user/alice"]),
        PeerIdentity::Admin { user: "alice".into(), role: AdminRole::Operator }
    );
    assert_eq!(
        id("bob", &["spiffe://x/y", "drover://role/viewer"]),
        PeerIdentity::Admin { user: "bob".into(), role: AdminRole::Viewer }
    );
    for (cn, uris, needle) in [
        ("admin", &[][..], "no drover://node/"),
        ("n", &["drover://node/a", "drover://role/admin"][..], "both"),
        ("n", &["drover://node/a", "drover://node/b"][..], "more than one"),
        ("n", &["drover://node/Prod_1"][..], "not a member name"),
        ("n", &["drover://node/a", "drover://user/a"][..], "also names"),
        ("n", &["drover://role/root"][..], "not a role"),
        ("n", &["drover://role/admin", "drover://user/a b"][..], "characters"),
    ] {
        match id(cn, uris) {
            PeerIdentity::Unrecognized { reason, .. } => {
                assert!(reason.contains(needle), "{uris:?}: {reason}")
            }
            other => panic!("{uris:?} gave {other:?}"),
        }
    }
}
