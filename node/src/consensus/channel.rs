//! Connections to other members: the gRPC endpoint of a member, the dialer that opens it (the
//! operating system's TCP, or the simulator's), and [`PeerChannel`], a channel that is
//! replaced when the member stops answering on it.
//!
//! Why replace a connection: when a link loses packets for a while (a partition, a stalled
//! member) the bytes sent meanwhile are retransmitted by TCP only after an exponentially
//! growing timeout (Linux doubles it up to 120 s, RFC 6298 5.5), and everything sent on the
//! HTTP/2 connection after them waits behind them. A link that healed can so stay silent for
//! tens of seconds; HTTP/2 keepalive (10 s interval, 5 s timeout here) is the only other way
//! out. Every call on a [`PeerChannel`] records its outcome; once the member has answered
//! nothing for [`REDIAL_AFTER`] and a call went unanswered, the next call opens a fresh
//! connection (at most one a [`REDIAL_AFTER`]). Calls already running keep the old one.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint};
use tower::ServiceExt;
use tracing::debug;

use crate::tls::TlsMaterial;

/// How long establishing a connection to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Silence of a member (no answer on its connection) after which a call that went unanswered
/// makes the next call dial a fresh connection; also the shortest time between two dials.
/// Four heartbeat intervals at the default Raft timings (250 ms): a follower that answers
/// heartbeats is never redialed, one whose connection stalled is within a second.
pub const REDIAL_AFTER: Duration = Duration::from_secs(1);

/// Builds a gRPC endpoint for a member's `host:port`, over mutual TLS unless `tls` is `None`
/// (the `--insecure-dev` mode). The peer's certificate must carry `server_name`.
pub fn endpoint(
    address: &str,
    server_name: &str,
    tls: Option<&TlsMaterial>,
) -> Result<Endpoint, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{address}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        ep = ep.tls_config(tls.client_tls(server_name))?;
    }
    Ok(ep)
}

/// Turns an [`Endpoint`] into a lazily connecting [`Channel`]: over the operating system's
/// TCP on a real node, over the simulator's network in `drover-sim`.
#[derive(Clone, Default)]
pub struct Dialer(Option<Arc<dyn Fn(Endpoint) -> Channel + Send + Sync>>);

impl Dialer {
    /// Dials with `connect`, e.g. an `Endpoint::connect_with_connector_lazy` over a simulated
    /// TCP stack.
    pub fn custom(connect: impl Fn(Endpoint) -> Channel + Send + Sync + 'static) -> Dialer {
        Dialer(Some(Arc::new(connect)))
    }

    /// A channel that connects on first use (and reconnects after a failure).
    pub fn channel(&self, ep: Endpoint) -> Channel {
        match &self.0 {
            Some(connect) => connect(ep),
            None => ep.connect_lazy(),
        }
    }
}

/// Whether a member's connection is to be replaced: a call went unanswered, the member has
/// answered nothing on it for [`REDIAL_AFTER`] (`silent`: since its last answer or since the
/// connection was dialed, whichever is later), and the last dial is that old too.
pub fn redial_due(unanswered: bool, silent: Duration, since_dial: Duration) -> bool {
    unanswered && silent >= REDIAL_AFTER && since_dial >= REDIAL_AFTER
}

/// A channel to one member that dials a fresh connection when the member stops answering on
/// the current one (see the module doc). Cloning shares the connection and its record. Use it
/// as the transport of a generated gRPC client.
#[derive(Clone)]
pub struct PeerChannel(Arc<Shared>);

struct Shared {
    endpoint: Endpoint,
    dialer: Dialer,
    state: Mutex<State>,
}

struct State {
    channel: Channel,
    dialed: Instant,
    answered: Option<Instant>,
    unanswered: bool,
}

impl PeerChannel {
    /// A channel to `endpoint`, dialed by `dialer` (lazily: on first use).
    pub fn new(endpoint: Endpoint, dialer: Dialer) -> PeerChannel {
        let channel = dialer.channel(endpoint.clone());
        let state = State { channel, dialed: Instant::now(), answered: None, unanswered: false };
        PeerChannel(Arc::new(Shared { endpoint, dialer, state: Mutex::new(state) }))
    }

    /// The connection the next call uses, dialing a fresh one first if [`redial_due`].
    fn current(&self) -> Channel {
        let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let heard = s.answered.map_or(s.dialed, |a| a.max(s.dialed));
        let silent = now.saturating_duration_since(heard);
        if redial_due(s.unanswered, silent, now.saturating_duration_since(s.dialed)) {
            debug!(
                peer = %self.0.endpoint.uri(),
                silent_ms = silent.as_millis() as u64,
                "no answer on this connection: dialing a fresh one"
            );
            s.channel = self.0.dialer.channel(self.0.endpoint.clone());
            s.dialed = now;
            s.unanswered = false;
        }
        s.channel.clone()
    }

    fn record(&self, answered: bool) {
        let mut s = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        if answered {
            s.answered = Some(Instant::now());
            s.unanswered = false;
        } else {
            s.unanswered = true;
        }
    }
}

/// Records a call that ends without a response (a transport error, or dropped by its caller's
/// deadline) as unanswered.
struct CallRecord {
    channel: PeerChannel,
    settled: bool,
}

impl CallRecord {
    fn settle(&mut self, answered: bool) {
        self.settled = true;
        self.channel.record(answered);
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        if !self.settled {
            self.channel.record(false);
        }
    }
}

impl tower::Service<http::Request<Body>> for PeerChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the connection's, awaited in `call` (the connection may change).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let channel = self.current();
        let mut record = CallRecord { channel: self.clone(), settled: false };
        Box::pin(async move {
            let response = channel.oneshot(request).await;
            record.settle(response.is_ok());
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_replaced_only_after_a_second_of_silence_and_an_unanswered_call() {
        let ms = Duration::from_millis;
        // A follower answering heartbeats: never.
        assert!(!redial_due(false, ms(5000), ms(5000)));
        assert!(!redial_due(true, ms(250), ms(5000)));
        // Silent for a second and a call went unanswered: yes.
        assert!(redial_due(true, ms(1000), ms(5000)));
        // But not twice within a second.
        assert!(!redial_due(true, ms(3000), ms(999)));
    }
}
