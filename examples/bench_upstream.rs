//! The upstream of `bench/run`: a small, fast HTTP/1.1 server on a single-threaded tokio runtime
//! (it shares the load core with the load generator, so it should spend as little of it as it
//! can).
//!
//! - any path ending in `/big`: 1 MiB (`Content-Length: 1048576`);
//! - a WebSocket upgrade on any path: echoes every text and binary message;
//! - anything else: a small 128-byte answer.
//!
//! Usage: `bench_upstream [ADDR]` (default `127.0.0.1:0`). Prints `listening ADDR` once ready.

use std::convert::Infallible;
use std::io::Write;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const SMALL: &[u8; 128] = b"Hello from the latchkey bench upstream. This answer is exactly one hundred and twenty-eight bytes long, newline included.......\n";
static BIG: [u8; 1 << 20] = [b'x'; 1 << 20];

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(serve(&addr));
}

async fn serve(addr: &str) {
    let listener = TcpListener::bind(addr).await.expect("bind the upstream");
    let local = listener.local_addr().expect("a bound address");
    println!("listening {local}");
    let _ = std::io::stdout().flush();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .with_upgrades()
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.headers().contains_key(header::UPGRADE) {
        return Ok(websocket_echo(req));
    }
    let body = if req.uri().path().ends_with("/big") {
        Bytes::from_static(&BIG)
    } else {
        Bytes::from_static(SMALL)
    };
    let mut r = Response::new(Full::new(body));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(r)
}

fn websocket_echo(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"no Sec-WebSocket-Key\n")));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        // The plain TCP stream back from hyper, so the echo loop works on it directly.
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            return;
        };
        let _ = echo_frames(parts.io.into_inner(), parts.read_buf.to_vec()).await;
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// Echoes WebSocket frames by hand: each data frame goes back unmasked with its opcode, a ping
/// as a pong, a close as a close, which ends the connection. Every complete frame in a read is
/// answered with one write. No WebSocket library: this runs on the load core, and its cost would
/// be counted against whichever proxy is measured.
async fn echo_frames(mut stream: TcpStream, mut buf: Vec<u8>) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let mut at = 0;
        let mut closing = false;
        while let Some((opcode, payload, used)) = frame(&mut buf[at..]) {
            let opcode = match opcode {
                0x9 => 0xA,
                0xA => {
                    at += used;
                    continue;
                }
                op => op,
            };
            let len = payload.len();
            out.push(0x80 | opcode);
            if len < 126 {
                out.push(len as u8);
            } else if len <= u16::MAX as usize {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                out.push(127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
            out.extend_from_slice(payload);
            at += used;
            if opcode == 0x8 {
                closing = true;
                break;
            }
        }
        buf.drain(..at);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if closing {
            return stream.shutdown().await;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The first complete frame in `buf`, unmasked in place: (opcode, payload, bytes used).
fn frame(buf: &mut [u8]) -> Option<(u8, &[u8], usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0F;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7F {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask: Option<[u8; 4]> = if masked {
        let m = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    let end = at.checked_add(len)?;
    let payload = buf.get_mut(at..end)?;
    if let Some(mask) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Some((opcode, &buf[at..end], end))
}
