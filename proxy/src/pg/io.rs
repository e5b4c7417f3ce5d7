//! Waiting on a client and a server connection at once.
//!
//! Both directions make progress in the same wait: buffered output is written while input is
//! read, so a client that pipelines a large batch while the server streams a large result can
//! never deadlock the two. Input from one side is only read while the output waiting for the
//! other side is small, which is what gives backpressure: a slow client slows the server down
//! instead of making Sentinel buffer the result.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use tokio::io::AsyncWrite;

use super::conn::Conn;

/// Output waiting for one side above which Sentinel stops reading from the other.
const HIGH_WATER: usize = 256 * 1024;
const READ_RESERVE: usize = 16 * 1024;

pub enum Io {
    /// New bytes from the client.
    Client,
    /// New bytes from the server.
    Server,
    ClientClosed(Option<io::Error>),
    ServerClosed(Option<io::Error>),
}

/// Writes what is buffered for both sides and returns when one side has sent something or
/// gone away. Cancel safe: reads and writes only ever complete whole into the buffers.
///
/// The client is read only when `read_client` and while what waits to be written to either side
/// is small, so a client that sends without reading cannot grow Sentinel's buffers.
pub async fn next_io(client: &mut Conn, mut server: Option<&mut Conn>, read_client: bool) -> Io {
    poll_fn(|cx| {
        if let Some(server) = server.as_deref_mut()
            && let Poll::Ready(Err(e)) = poll_drain(cx, server)
        {
            return Poll::Ready(Io::ServerClosed(Some(e)));
        }
        if let Poll::Ready(Err(e)) = poll_drain(cx, client) {
            return Poll::Ready(Io::ClientClosed(Some(e)));
        }
        if let Some(server) = server.as_deref_mut()
            && client.wbuf.len() < HIGH_WATER
        {
            match poll_fill(cx, server) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Io::ServerClosed(None)),
                Poll::Ready(Ok(_)) => return Poll::Ready(Io::Server),
                Poll::Ready(Err(e)) => return Poll::Ready(Io::ServerClosed(Some(e))),
                Poll::Pending => {}
            }
        }
        let server_backlog = server.as_deref().map_or(0, |s| s.wbuf.len());
        if read_client && server_backlog < HIGH_WATER && client.wbuf.len() < HIGH_WATER {
            match poll_fill(cx, client) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Io::ClientClosed(None)),
                Poll::Ready(Ok(_)) => return Poll::Ready(Io::Client),
                Poll::Ready(Err(e)) => return Poll::Ready(Io::ClientClosed(Some(e))),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

fn poll_fill(cx: &mut Context<'_>, conn: &mut Conn) -> Poll<io::Result<usize>> {
    if conn.rbuf.capacity() - conn.rbuf.len() < 1024 {
        conn.rbuf.reserve(READ_RESERVE);
    }
    tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.rbuf)
}

/// Writes buffered output until it is all sent (then flushes) or the socket is full.
fn poll_drain(cx: &mut Context<'_>, conn: &mut Conn) -> Poll<io::Result<()>> {
    while !conn.wbuf.is_empty() {
        let n = ready!(Pin::new(&mut conn.stream).poll_write(cx, &conn.wbuf))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        conn.wbuf.advance(n);
    }
    Pin::new(&mut conn.stream).poll_flush(cx)
}
