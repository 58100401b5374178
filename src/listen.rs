//! The listeners, and what they hold against slow and greedy clients: a connection must send its
//! request head within `http_header_timeout_secs` (the first one and every later one on a kept-alive
//! connection), a body must keep arriving (`http_body_timeout_secs` between two pieces, enforced
//! by a layer in `main.rs`), and one address holds at most `max_connections_per_ip` connections.
//! Without these, fifty connections that sent a byte a second held their tasks and sockets
//! forever (slowloris). And the answers hyper writes itself, to a request it cannot parse, carry
//! a Matrix error like every other ([`Connection`]).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
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
    A: Accept<TcpStream, S> + Clone + Send + 'static,
    A::Future: Send,
    A::Stream: Send,
    A::Service: Send,
    S: Send + 'static,
{
    type Stream = Connection<A::Stream>;
    type Service = A::Service;
    type Future =
        Pin<Box<dyn Future<Output = io::Result<(Connection<A::Stream>, A::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let slot = match stream.peer_addr() {
            Ok(peer) => {
                let ip = peer.ip();
                let count = {
                    let mut open = self.open.lock();
                    let count = open.entry(ip).or_default();
                    *count += 1;
                    *count
                };
                // Made before the check, so that a refused connection gives its count back too.
                let slot = Slot {
                    ip,
                    open: self.open.clone(),
                };
                if count > self.limits.max_per_ip {
                    tracing::warn!(%ip, max = self.limits.max_per_ip, "refused a connection: too many from this address");
                    return Box::pin(std::future::ready(Err(io::Error::other(
                        "too many connections from this address",
                    ))));
                }
                Some(slot)
            }
            Err(_) => None,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let inner = self.inner.clone();
        Box::pin(async move {
            // The place is held from here (a TLS handshake too) until the connection closes.
            let (stream, service) = inner.accept(stream, service).await?;
            Ok((
                Connection {
                    inner: stream,
                    pending: Vec::new(),
                    _slot: slot,
                },
                service,
            ))
        })
    }
}

/// One open connection of an address; gives its place back when the connection closes.
struct Slot {
    ip: IpAddr,
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

/// An accepted connection (plain, or TLS): it holds its place in its address's count while it
/// lives, and gives hyper's own error answers a Matrix body. hyper answers a request it cannot
/// parse (a URI over 64 KiB, too many headers, a head past its buffer, garbage) by itself, with
/// an empty body, before any service runs, and has no hook for that answer; this recognises the
/// one shape such an answer has (a 4xx head with `connection: close` and `content-length: 0`,
/// in one write; Hearth's own errors always have a JSON body) and sends it with a Matrix error
/// body instead. hyper closes the connection after.
pub struct Connection<S> {
    inner: S,
    /// The rewritten answer, still to be written.
    pending: Vec<u8>,
    _slot: Option<Slot>,
}

/// The Matrix answer for one of hyper's own error heads, if `head` is one.
fn matrix_answer(head: &[u8]) -> Option<Vec<u8>> {
    // Every write passes here: only a short 4xx head is worth a look.
    if head.len() > 256 || !head.starts_with(b"HTTP/1.1 4") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let rest = text.strip_prefix("HTTP/1.1 4")?;
    if !text.ends_with("\r\n\r\n")
        || !text.contains("\r\nconnection: close\r\n")
        || !text.contains("\r\ncontent-length: 0\r\n")
    {
        return None;
    }
    let status_line = text.lines().next()?;
    let reason = status_line.splitn(3, ' ').nth(2).unwrap_or("Bad Request");
    let errcode = if rest.starts_with("14 ") || rest.starts_with("31 ") {
        "M_TOO_LARGE"
    } else {
        "M_UNKNOWN"
    };
    let body = serde_json::json!({ "errcode": errcode, "error": reason }).to_string();
    let date = text
        .lines()
        .find(|l| l.starts_with("date: "))
        .map(|l| format!("{l}\r\n"))
        .unwrap_or_default();
    Some(
        format!(
            "{status_line}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{date}\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<S: AsyncWrite + Unpin> Connection<S> {
    /// Writes what is pending; ready once nothing is.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Connection<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Connection<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.drain(cx))?;
        if let Some(answer) = matrix_answer(buf) {
            self.pending = answer;
            // Whatever the socket takes now; the rest goes with the next write or flush.
            let _ = self.drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next()) {
            return self.poll_write(cx, only);
        }
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::matrix_answer;

    #[test]
    fn hyper_error_heads_become_matrix_errors() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 21:09:17 GMT\r\n\r\n";
        let answer = String::from_utf8(matrix_answer(head).expect("rewritten")).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").expect("a body");
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("content-type: application/json"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("date: Mon, 07 Dec 2026"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["errcode"], "M_TOO_LARGE");
        // Hearth's own answers (with a body) and successes pass untouched.
        assert!(matrix_answer(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n").is_none());
        assert!(
            matrix_answer(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                .is_none()
        );
    }
}
