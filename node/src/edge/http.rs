//! The outbound HTTP(S) client of health checks, lag probes and webhooks.
//!
//! hyper 1 over hyper-util's pooled client with rustls (ring provider; trust roots from the
//! operating system's store, loaded once per process). HTTP/1.1 only; redirects are not
//! followed (a redirect is an answer with its own status). No connection is kept idle between
//! requests, so every health check opens a fresh connection, as a load balancer's would, and a
//! dead listener cannot hide behind a kept-alive socket. Callers bound the whole exchange with
//! their own timeout; the body read here is capped.

use std::error::Error as StdError;
use std::sync::{Arc, OnceLock};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A request to send.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Bytes>,
}

impl Outgoing {
    /// A GET of `url` with no headers.
    pub(crate) fn get(url: &str) -> Outgoing {
        Outgoing { method: Method::GET, url: url.to_string(), headers: Vec::new(), body: None }
    }
}

/// An answer: status and the first `body_cap` bytes of the body.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why there is no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HttpError {
    /// The request could not even be built: malformed URL, bad header. Not the server's fault.
    Invalid(String),
    /// Connecting, TLS, sending or reading failed.
    Transport(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Invalid(s) | HttpError::Transport(s) => f.write_str(s),
        }
    }
}

/// A cheap-to-clone HTTP(S) client.
#[derive(Clone)]
pub(crate) struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

/// The process-wide client (trust roots are read once).
pub(crate) fn client() -> &'static HttpClient {
    static CLIENT: OnceLock<HttpClient> = OnceLock::new();
    CLIENT.get_or_init(HttpClient::new)
}

impl HttpClient {
    fn new() -> HttpClient {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for err in &native.errors {
            tracing::warn!(cause = %err, "reading the system's trusted CA certificates");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            tracing::warn!(
                ignored,
                "no trusted CA certificates found in the system store; https checks and \
                 webhooks will fail certificate verification (install ca-certificates)"
            );
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(https);
        HttpClient { inner }
    }

    /// Sends `req` and reads at most `body_cap` bytes of the answer's body (the rest is not
    /// read). Not bounded in time: wrap it in the caller's timeout.
    pub(crate) async fn send(&self, req: Outgoing, body_cap: usize) -> Result<Answer, HttpError> {
        let uri = parse_url(&req.url)?;
        let mut builder = Request::builder().method(req.method).uri(uri);
        for (name, value) in &req.headers {
            let name = hyper::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HttpError::Invalid(format!("{name:?} is not a valid header name")))?;
            let value = hyper::header::HeaderValue::from_str(value).map_err(|_| {
                HttpError::Invalid(format!("the value of header {name} is not valid in HTTP"))
            })?;
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(req.body.unwrap_or_default()))
            .map_err(|e| HttpError::Invalid(format!("cannot build the request: {e}")))?;
        let response = self.inner.request(request).await.map_err(|e| transport(&e))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut buf = Vec::new();
        while buf.len() < body_cap {
            match body.frame().await {
                None => break,
                Some(Err(e)) => return Err(transport(&e)),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        let room = body_cap - buf.len();
                        buf.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
            }
        }
        Ok(Answer { status, body: buf })
    }
}

/// Parses an `http://` or `https://` URL.
pub(crate) fn parse_url(url: &str) -> Result<Uri, HttpError> {
    let uri: Uri =
        url.parse().map_err(|e| HttpError::Invalid(format!("malformed URL {url:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(uri),
        _ => Err(HttpError::Invalid(format!("{url:?} is not an http:// or https:// URL"))),
    }
}

/// One short line for a transport error: `connection refused`, or the causes joined by `: `
/// (the outermost, generic "client error" wrapper left out).
fn transport(err: &(dyn StdError + 'static)) -> HttpError {
    let mut chain = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return HttpError::Transport("connection refused".to_string());
            }
        }
        chain.push(e.to_string());
        cur = e.source();
    }
    if chain.len() > 1 && chain[0].starts_with("client error") {
        chain.remove(0);
    }
    chain.dedup();
    HttpError::Transport(super::shorten(&chain.join(": "), 200))
}
