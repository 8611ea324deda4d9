//! tonic over turmoil's simulated TCP: the nodes' real gRPC services and clients, carried by
//! the simulated network (latency, partitions, crashes).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use drover::consensus::channel::Dialer;
use futures::Stream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::transport::Uri;

/// The port every simulated node serves gRPC on.
pub const GRPC_PORT: u16 = 7000;

/// A simulated TCP connection accepted by a node's gRPC server.
pub struct SimConn(turmoil::net::TcpStream);

impl Connected for SimConn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SimConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The connections accepted on `port` of the current simulated host, as tonic's server wants
/// them.
pub async fn incoming(port: u16) -> io::Result<impl Stream<Item = io::Result<SimConn>>> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    Ok(futures::stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            SimConn(stream)
        });
        Some((next, listener))
    }))
}

/// Dials members (`host:port` addresses naming simulated hosts) over simulated TCP.
pub fn dialer() -> Dialer {
    Dialer::custom(|endpoint| {
        endpoint.connect_with_connector_lazy(tower::service_fn(|uri: Uri| async move {
            let host = uri.host().unwrap_or_default().to_string();
            let port = uri.port_u16().unwrap_or(GRPC_PORT);
            let stream = turmoil::net::TcpStream::connect((host.as_str(), port)).await?;
            Ok::<_, io::Error>(TokioIo::new(stream))
        }))
    })
}
