//! The byte pipe between a client's WebSocket and its upstream.
//!
//! `tokio::io::copy_bidirectional` keeps an 8 KiB buffer per direction for the life of the
//! connection: 16 KiB for every open WebSocket, idle or not, which is most of what an idle
//! WebSocket costs. Here each read goes into a buffer on the stack of the poll call, and is
//! written on at once; only bytes the other side cannot take yet are copied to the heap, and that
//! copy is freed as soon as they are written. An idle connection holds no buffer at all.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read at most per read call.
const CHUNK: usize = 16 * 1024;

/// One direction: reads from one side, writes to the other.
#[derive(Default)]
struct Half {
    /// Bytes read but not yet written, because the writer was not ready.
    pending: Vec<u8>,
    written: usize,
    /// Bytes were written since the last flush.
    unflushed: bool,
    /// The reader reached its end.
    eof: bool,
    done: bool,
    amount: u64,
}

impl Half {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(self.amount));
        }
        loop {
            // Bytes left over from an earlier read go first.
            while self.written < self.pending.len() {
                let n = ready!(
                    writer
                        .as_mut()
                        .poll_write(cx, &self.pending[self.written..])
                )?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                self.amount += n as u64;
                self.unflushed = true;
            }
            if !self.pending.is_empty() {
                // Give the memory back: idle connections keep nothing.
                self.pending = Vec::new();
                self.written = 0;
            }
            if self.eof {
                ready!(writer.as_mut().poll_flush(cx))?;
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(self.amount));
            }
            let mut storage = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut buf = ReadBuf::uninit(&mut storage);
            match reader.as_mut().poll_read(cx, &mut buf) {
                Poll::Pending => {
                    if self.unflushed {
                        ready!(writer.as_mut().poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let data = buf.filled();
            if data.is_empty() {
                self.eof = true;
                continue;
            }
            let mut at = 0;
            while at < data.len() {
                match writer.as_mut().poll_write(cx, &data[at..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        at += n;
                        self.amount += n as u64;
                        self.unflushed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // The writer will wake us; keep the rest until then.
                        self.pending = data[at..].to_vec();
                        self.written = 0;
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// Copies both ways until both directions reached their end (shutting down each writer after its
/// reader's end), like `tokio::io::copy_bidirectional`. Returns the bytes copied from `a` to `b`
/// and from `b` to `a`.
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Half::default();
    let mut b_to_a = Half::default();
    poll_fn(|cx| {
        let ab = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let ba = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        match (ab, ba) {
            (Poll::Ready(up), Poll::Ready(down)) => Poll::Ready(Ok((up, down))),
            _ => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn bytes_flow_both_ways_and_ends_propagate() {
        let (mut client, mut proxy_client_side) = duplex(64);
        let (mut proxy_upstream_side, mut upstream) = duplex(64);
        let pipe = tokio::spawn(async move {
            super::copy_bidirectional(&mut proxy_client_side, &mut proxy_upstream_side).await
        });
        // More than both duplex buffers and one read chunk, so writes come back Pending and the
        // leftover path runs.
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = vec![];
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = vec![];
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big);
        upstream.write_all(b"pong").await.unwrap();
        upstream.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"pong");
        let (up, down) = pipe.await.unwrap().unwrap();
        assert_eq!((up, down), (100_000, 4));
    }
}
