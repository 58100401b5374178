//! The listeners, and what they hold against slow and greedy clients: a connection must send its
//! request head within `http_header_timeout_secs` (the first one and every later one on a kept-alive
//! connection), a body must keep arriving (`http_body_timeout_secs` between two pieces, enforced
//! by a layer in `main.rs`), and one address holds at most `max_connections_per_ip` connections.
//! Without these, fifty connections that sent a byte a second held their tasks and sockets
//! forever (slowloris).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What every listener enforces.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    pub header_timeout: Duration,
    pub max_per_ip: usize,
}

/// A plain or TLS (by `acceptor`) server on `listener` with the limits applied.
pub fn server<A>(
    listener: tokio::net::TcpListener,
    acceptor: A,
    limits: ConnectionLimits,
) -> axum_server::Server<SocketAddr, PerIpAcceptor<A>> {
    let mut server =
        axum_server::Server::<SocketAddr>::from_listener(listener).acceptor(PerIpAcceptor {
            inner: acceptor,
            limits,
            open: Default::default(),
        });
    server
        .http_builder()
        .http1()
        .header_read_timeout(Some(limits.header_timeout));
    // Also bounds what http1's header timer does not see: a TLS client that never speaks, and
    // protocol detection.
    server.first_request_timeout(limits.header_timeout)
}

/// Counts each address's open connections and refuses one over the cap; sets `TCP_NODELAY`
/// (without it the last small piece of a streamed response waited for the client's delayed ACK,
/// 40 ms on a sub-millisecond answer). Wraps the real acceptor (plain, or TLS around this).
#[derive(Clone)]
pub struct PerIpAcceptor<A> {
    inner: A,
    limits: ConnectionLimits,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl<A, S> Accept<TcpStream, S> for PerIpAcceptor<A>
where
    A: Accept<Counted<TcpStream>, S> + Clone + Send + 'static,
    A::Future: Send,
    A::Stream: Send,
    A::Service: Send,
    S: Send + 'static,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(A::Stream, A::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let slot = stream.peer_addr().ok().map(|peer| {
            let ip = peer.ip();
            let mut open = self.open.lock();
            let count = open.entry(ip).or_default();
            *count += 1;
            Slot {
                ip,
                over: *count > self.limits.max_per_ip,
                open: self.open.clone(),
            }
        });
        if slot.as_ref().is_some_and(|s| s.over) {
            tracing::warn!(
                ip = %slot.as_ref().map(|s| s.ip).expect("checked"),
                max = self.limits.max_per_ip,
                "refused a connection: too many from this address"
            );
            return Box::pin(std::future::ready(Err(io::Error::other(
                "too many connections from this address",
            ))));
        }
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let inner = self.inner.clone();
        Box::pin(async move {
            inner
                .accept(
                    Counted {
                        inner: stream,
                        _slot: slot,
                    },
                    service,
                )
                .await
        })
    }
}

/// One open connection of an address; gives its place back when the connection closes.
struct Slot {
    ip: IpAddr,
    over: bool,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A connection that holds its place in the per-address count while it lives.
pub struct Counted<S> {
    inner: S,
    _slot: Option<Slot>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
