//! latchkey's own HTTP/1.1 path for the requests that make up nearly all of its traffic: a
//! client's request to a shared server behind a plain `http://` upstream.
//!
//! One task per client connection reads the request head, runs the same access check as every
//! other request (`App::prepare_proxy`), writes the rewritten head and the body to an upstream
//! connection it keeps for as long as the client stays, and copies the answer back, framing
//! included. No channel, task or pool sits between the client and the upstream, and the
//! request head is parsed once, in place.
//!
//! WebSocket upgrades are forwarded here too, and the connection then becomes a tunnel. Anything
//! else is handed, with the bytes read so far, to hyper for the rest of the connection:
//! latchkey's pages and API, health checks, other upgrades, HTTP/2, HTTP/1.0, chunked or
//! `Expect` uploads, `https://` upstreams and anything malformed (which hyper and `App::handle`
//! then refuse with the usual error). The decision is made before anything is counted or
//! logged, so no request is handled twice.
//!
//! The request's header fields are never put in a map: the access check reads them where they
//! were parsed (`RawFields`), and `proxy::headers::rewrite_request`, which the hyper path uses
//! too, writes them out for the upstream.

mod chunked;
mod conn;
mod upstream;

use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use conn::{Served, Tunnel, serve};
pub use upstream::Pool;

/// The header fields of a request head, where they are in the bytes it was read into: read
/// and rewritten for the upstream without building a header map.
pub struct RawFields<'a> {
    head: &'a [u8],
    at: &'a [(Range<usize>, Range<usize>)],
}

impl crate::http_util::Fields for RawFields<'_> {
    fn each(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.at
            .iter()
            .map(|(name, value)| (&self.head[name.clone()], &self.head[value.clone()]))
    }
}

/// A timer kept for a connection's life and moved later for each wait. tokio moves a timer
/// later without touching its timer wheel, where a new timer per request cost an insertion
/// and a removal.
#[derive(Default)]
pub struct Deadline(Option<Pin<Box<tokio::time::Sleep>>>);

impl Deadline {
    /// Fires between `after - slack` and `after` from now: a timer still that far off is
    /// left alone, which spares most requests on a busy connection the timer update.
    pub fn arm_within(&mut self, after: std::time::Duration, slack: std::time::Duration) {
        let now = tokio::time::Instant::now();
        match &mut self.0 {
            Some(s) if s.deadline() >= now + after.saturating_sub(slack) && !s.is_elapsed() => {}
            Some(s) => s.as_mut().reset(now + after),
            None => self.0 = Some(Box::pin(tokio::time::sleep_until(now + after))),
        }
    }

    /// Fires between `after` and `after + slack` from now: a timer already set in that range
    /// is left alone.
    pub fn arm_late(&mut self, after: std::time::Duration, slack: std::time::Duration) {
        let now = tokio::time::Instant::now();
        match &mut self.0 {
            Some(s) if s.deadline() >= now + after && s.deadline() <= now + after + slack => {}
            Some(s) => s.as_mut().reset(now + after + slack),
            None => self.0 = Some(Box::pin(tokio::time::sleep_until(now + after + slack))),
        }
    }

    /// The armed timer (arm it first).
    pub fn sleep(&mut self) -> Pin<&mut tokio::time::Sleep> {
        self.0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(std::time::Duration::MAX / 4)))
            .as_mut()
    }
}

/// A connection whose first bytes were already read: they are read again first.
pub struct Rewind<IO> {
    pre: Bytes,
    io: IO,
}

impl<IO> Rewind<IO> {
    pub fn new(pre: Bytes, io: IO) -> Rewind<IO> {
        Rewind { pre, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            if self.pre.is_empty() {
                // Let go of the read buffer it shares: a WebSocket lives on this connection.
                self.pre = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
