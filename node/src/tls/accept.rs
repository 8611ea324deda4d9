//! The gRPC server's accept loop: TCP accept, TLS handshake, clear refusals.
//!
//! ```text
//! TcpListener --accept task--> over a cap? close at once (256 handshakes in all, 8 per peer IP)
//!                  |
//!                  v
//!              one task per handshake (5 s timeout)
//!                                  | ok                          | refused
//!                                  v                             v
//!                       mpsc (capacity 64) --> Incoming    warn!("refused connection: ...")
//!                                              (Stream of Conn for tonic)
//! ```
//!
//! A refused handshake never reaches tonic; it is logged with the peer address and a
//! plain-English reason, at most one line per reason every 10 s with a count of the others
//! ([`LogLimiter`]). The accept loop never waits for a handshake slot: a connection over a cap
//! is closed at once, so idle or half-done handshakes from one address (500 of them, say) hold
//! at most 8 slots for 5 s each and never keep the members or an operator out. When the
//! [`Incoming`] stream is dropped (server shut down) the accept task ends and the listener
//! closes.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::identity::{identity_of, PeerIdentity};
use crate::edge::ratelog::LogLimiter;

/// Handshakes slower than this are abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Accepted connections waiting for the server to pick them up.
const CHANNEL_CAPACITY: usize = 64;
/// Handshakes in flight at once; a connection beyond this is closed at once.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 256;
/// Handshakes in flight at once from one peer IP address; a connection beyond this is closed
/// at once. Members and operators handshake once per connection, far below it.
pub const MAX_HANDSHAKES_PER_IP: usize = 8;
/// One warning line per cause per this interval.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Pause after an accept error such as running out of file descriptors.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// An accepted connection: plaintext (only with `--insecure-dev`) or mutual TLS.
#[derive(Debug)]
pub enum Conn {
    /// Plaintext TCP.
    Plain(TcpStream),
    /// A completed server-side TLS session with a verified client certificate.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// What a gRPC handler can learn about the connection a request came on, via
/// `request.extensions().get::<ConnectInfo>()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectInfo {
    /// The peer's address, if the socket still knows it.
    pub remote_addr: Option<SocketAddr>,
    /// The peer certificate's first DNS subject alternative name, or else its common name;
    /// `None` for plaintext connections.
    pub peer_name: Option<String>,
    /// The drover identity the peer certificate carries ([`super::identity`]); `None` for
    /// plaintext connections.
    pub identity: Option<PeerIdentity>,
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnectInfo;

    fn connect_info(&self) -> ConnectInfo {
        let leaf = match self {
            Conn::Plain(_) => None,
            Conn::Tls(s) => s.get_ref().1.peer_certificates().and_then(|chain| chain.first()),
        };
        ConnectInfo {
            remote_addr: self.tcp().peer_addr().ok(),
            peer_name: leaf.and_then(certificate_name),
            identity: leaf.map(identity_of),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The stream of accepted connections returned by [`serve_incoming`]. Never yields an error:
/// failed accepts and handshakes are logged and skipped. Dropping it stops the accept task.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<Conn>,
}

impl futures::Stream for Incoming {
    type Item = Result<Conn, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

/// Accepts connections on `listener` in a spawned task and yields them for
/// `tonic::transport::Server::serve_with_incoming_shutdown`.
///
/// With `tls`, each connection's handshake runs in its own task with a 10 s timeout; refusals
/// are logged once at warn (`refused connection: client certificate is not signed by the
/// cluster CA`, ...) and never yielded. With `None`, plaintext connections pass straight
/// through (the caller warns about `--insecure-dev`). Must be called inside a tokio runtime.
pub fn serve_incoming(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> Incoming {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    tokio::spawn(accept_loop(listener, tls.map(TlsAcceptor::from), tx));
    Incoming { rx }
}

/// Handshakes in flight per peer IP; a slot is given back when its guard drops.
#[derive(Debug, Default, Clone)]
struct PerIp(Arc<Mutex<HashMap<IpAddr, usize>>>);

struct IpSlot(PerIp, IpAddr);

impl PerIp {
    fn take(&self, ip: IpAddr, cap: usize) -> Option<IpSlot> {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = m.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(IpSlot(self.clone(), ip))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = (self.0).0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Logs `msg` for `cause` unless the limiter leaves it out.
fn warn_limited(log: &LogLimiter, cause: &'static str, peer: SocketAddr, detail: &str, msg: &str) {
    if let Some(left_out) = log.allow(cause, tokio::time::Instant::now()) {
        tracing::warn!(
            %peer,
            cause = %detail,
            left_out,
            "{msg} (one line per {}s for this cause; left_out: how many more since the last)",
            LOG_INTERVAL.as_secs()
        );
    }
}

async fn accept_loop(listener: TcpListener, acceptor: Option<TlsAcceptor>, tx: mpsc::Sender<Conn>) {
    let handshakes = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    let per_ip = PerIp::default();
    let log = Arc::new(LogLimiter::new(LOG_INTERVAL));
    loop {
        let (tcp, addr) = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) if is_per_connection(&err) => {
                    tracing::debug!(cause = %err, "connection failed before it was accepted");
                    continue;
                }
                Err(err) => {
                    tracing::warn!(cause = %err, "accept failed; retrying in 100ms");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        // Raft heartbeats and admin calls are small; don't let Nagle delay them.
        let _ = tcp.set_nodelay(true);
        let Some(acceptor) = acceptor.clone() else {
            if tx.send(Conn::Plain(tcp)).await.is_err() {
                return;
            }
            continue;
        };
        let Some(ip_slot) = per_ip.take(addr.ip(), MAX_HANDSHAKES_PER_IP) else {
            let detail =
                format!("{MAX_HANDSHAKES_PER_IP} handshakes from {} in progress", addr.ip());
            warn_limited(
                &log,
                "per-ip cap",
                addr,
                &detail,
                "closed connection: too many handshakes from one address",
            );
            continue;
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            let detail = format!("{MAX_CONCURRENT_HANDSHAKES} handshakes in progress");
            warn_limited(
                &log,
                "cap",
                addr,
                &detail,
                "closed connection: too many handshakes in progress",
            );
            continue;
        };
        let (tx, log) = (tx.clone(), log.clone());
        tokio::spawn(async move {
            let _slots = (permit, ip_slot);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // A closed channel means the server is shutting down; drop the connection.
                    let _ = tx.send(Conn::Tls(Box::new(stream))).await;
                }
                Ok(Err(err)) => {
                    let reason = refusal_reason(&err);
                    let msg = format!("refused connection: {reason}");
                    warn_limited(&log, reason, addr, &err.to_string(), &msg);
                }
                Err(_) => {
                    let err = format!("no handshake within {}s", HANDSHAKE_TIMEOUT.as_secs());
                    warn_limited(
                        &log,
                        "timeout",
                        addr,
                        &err,
                        "refused connection: TLS handshake timed out",
                    );
                }
            }
        });
    }
}

/// Errors that concern one connection only; the listener itself is fine.
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// A plain-English reason for a failed server-side handshake.
pub(crate) fn refusal_reason(err: &io::Error) -> &'static str {
    use rustls::CertificateError as C;
    let Some(tls_err) = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return "TLS handshake failed";
    };
    match tls_err {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "client certificate is not signed by the cluster CA"
        }
        rustls::Error::NoCertificatesPresented => "client presented no certificate",
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "certificate expired"
        }
        _ => "TLS handshake failed",
    }
}

/// The first DNS subject alternative name of a certificate, or else its subject common name.
pub(crate) fn certificate_name(cert: &CertificateDer<'_>) -> Option<String> {
    der::first_dns_san(cert).or_else(|| der::common_name(cert))
}

/// Just enough DER to pull names out of an X.509 certificate (RFC 5280), so the node needs no
/// full X.509 parser. Anything unexpected yields `None`.
pub(crate) mod der {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const BOOLEAN: u8 = 0x01;
    const OCTET_STRING: u8 = 0x04;
    const VERSION: u8 = 0xa0; // [0] EXPLICIT
    const EXTENSIONS: u8 = 0xa3; // [3] EXPLICIT
    const DNS_NAME: u8 = 0x82; // GeneralName [2] IMPLICIT IA5String
    const URI: u8 = 0x86; // GeneralName [6] IMPLICIT IA5String
    const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17
    const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3

    /// Reads one tag-length-value from the front of `input`.
    fn tlv<'a>(input: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let (bytes, after) = rest.split_at(n);
            rest = after;
            bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        if rest.len() < len {
            return None;
        }
        let (value, after) = rest.split_at(len);
        *input = after;
        Some((tag, value))
    }

    fn expect<'a>(input: &mut &'a [u8], tag: u8) -> Option<&'a [u8]> {
        match tlv(input)? {
            (t, v) if t == tag => Some(v),
            _ => None,
        }
    }

    /// Returns (subject, extensions-or-empty) of the TBSCertificate.
    fn subject_and_extensions(cert: &[u8]) -> Option<(&[u8], &[u8])> {
        let mut input = cert;
        let mut cert = expect(&mut input, SEQUENCE)?;
        let mut tbs = expect(&mut cert, SEQUENCE)?;
        if tbs.first() == Some(&VERSION) {
            tlv(&mut tbs)?;
        }
        tlv(&mut tbs)?; // serialNumber
        tlv(&mut tbs)?; // signature
        tlv(&mut tbs)?; // issuer
        tlv(&mut tbs)?; // validity
        let subject = expect(&mut tbs, SEQUENCE)?;
        tlv(&mut tbs)?; // subjectPublicKeyInfo
        while !tbs.is_empty() {
            let (tag, value) = tlv(&mut tbs)?;
            if tag == EXTENSIONS {
                let mut v = value;
                return Some((subject, expect(&mut v, SEQUENCE)?));
            }
        }
        Some((subject, &[]))
    }

    /// The subject alternative names of the certificate as (GeneralName tag, value) pairs;
    /// empty when it has none, `None` when the DER is not understood.
    fn san_entries(cert: &[u8]) -> Option<Vec<(u8, &[u8])>> {
        let (_, mut exts) = subject_and_extensions(cert)?;
        while !exts.is_empty() {
            let mut ext = expect(&mut exts, SEQUENCE)?;
            let oid = expect(&mut ext, OID)?;
            if oid != OID_SUBJECT_ALT_NAME {
                continue;
            }
            if ext.first() == Some(&BOOLEAN) {
                tlv(&mut ext)?;
            }
            let mut value = expect(&mut ext, OCTET_STRING)?;
            let mut names = expect(&mut value, SEQUENCE)?;
            let mut entries = Vec::new();
            while !names.is_empty() {
                entries.push(tlv(&mut names)?);
            }
            return Some(entries);
        }
        Some(Vec::new())
    }

    pub(super) fn first_dns_san(cert: &[u8]) -> Option<String> {
        let entries = san_entries(cert)?;
        let (_, name) = entries.into_iter().find(|(tag, _)| *tag == DNS_NAME)?;
        String::from_utf8(name.to_vec()).ok()
    }

    /// Every URI subject alternative name; `None` when the DER is not understood or a URI is
    /// not UTF-8.
    pub(crate) fn uri_sans(cert: &[u8]) -> Option<Vec<String>> {
        san_entries(cert)?
            .into_iter()
            .filter(|(tag, _)| *tag == URI)
            .map(|(_, v)| String::from_utf8(v.to_vec()).ok())
            .collect()
    }

    pub(crate) fn common_name(cert: &[u8]) -> Option<String> {
        let (mut subject, _) = subject_and_extensions(cert)?;
        while !subject.is_empty() {
            let mut rdn = expect(&mut subject, SET)?;
            while !rdn.is_empty() {
                let mut atv = expect(&mut rdn, SEQUENCE)?;
                if expect(&mut atv, OID)? == OID_COMMON_NAME {
                    let (_, value) = tlv(&mut atv)?;
                    return String::from_utf8(value.to_vec()).ok();
                }
            }
        }
        None
    }
}
