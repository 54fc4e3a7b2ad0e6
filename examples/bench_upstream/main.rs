//! The upstream of `bench/run`: a small, fast HTTP/1.1 server on a single-threaded tokio runtime.
//! It shares the load core with the load generator, so whatever it spends per request is
//! capacity the proxy under test cannot show: it answers from pre-built bytes, parses heads with
//! `httparse` and nothing else, and answers every complete request of a read with one write.
//!
//! - any path ending in `/big`: 1 MiB (`Content-Length: 1048576`);
//! - a WebSocket upgrade on any path: echoes every text and binary message (by hand, below);
//! - anything else: a small 128-byte answer.
//!
//! Keep-alive as HTTP/1.1 says (`Connection: close` and HTTP/1.0 without `keep-alive` end the
//! connection after the answer); request bodies with a `Content-Length` are read and dropped; a
//! chunked request body or a head that does not parse gets 400 and the connection is closed.
//!
//! Usage: `bench_upstream [ADDR]` (default `127.0.0.1:0`). Prints `listening ADDR` once ready.
//! It is also the WebSocket echo's load client, on the same thread: see `echo.rs` for the
//! commands it takes on standard input.

mod echo;

use std::io::Write;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The small answer's 128 bytes of body (checked at compile time below).
const SMALL_BODY: &[u8] = b"Hello from the latchkey bench upstream. This answer is exactly one hundred and twenty-eight bytes long, newline included.......\n";
const _: () = assert!(SMALL_BODY.len() == 128);
/// The heads, up to the blank line that ends them.
const SMALL_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 128\r\n";
const BIG_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1048576\r\n";
static BIG_BODY: [u8; 1 << 20] = [b'x'; 1 << 20];
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\nconnection: close\r\n\r\nbad request\n";

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
    let control = tokio::spawn(echo::control());
    tokio::spawn(async move {
        // The driver waits for the answer to its command: a control that died would leave it
        // waiting for good.
        if control.await.is_err() {
            eprintln!("the echo control failed");
            std::process::exit(1);
        }
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = serve_connection(stream).await;
        });
    }
}

/// What one request head asks for.
enum Ask {
    Small,
    Big,
    /// A WebSocket upgrade with this `Sec-WebSocket-Accept`.
    Upgrade(String),
    Bad,
}

struct Head {
    ask: Ask,
    head_only: bool,
    http10: bool,
    keep_alive: bool,
    body: usize,
    len: usize,
}

fn parse(buf: &[u8]) -> Option<Head> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => {
            return Some(Head {
                ask: Ask::Bad,
                head_only: false,
                http10: false,
                keep_alive: false,
                body: 0,
                len: buf.len(),
            });
        }
    };
    let mut keep_alive = req.version == Some(1);
    let (mut body, mut upgrade, mut key, mut chunked) = (0, false, None, false);
    for f in req.headers.iter() {
        let value = std::str::from_utf8(f.value).unwrap_or("");
        if f.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if f.name.eq_ignore_ascii_case("content-length") {
            match value.trim().parse() {
                Ok(n) => body = n,
                Err(_) => chunked = true,
            }
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if f.name.eq_ignore_ascii_case("upgrade") {
            upgrade = value.eq_ignore_ascii_case("websocket");
        } else if f.name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(derive_accept_key(f.value));
        }
    }
    let ask = match (chunked, upgrade, key) {
        (true, _, _) | (_, true, None) => Ask::Bad,
        (false, true, Some(accept)) => Ask::Upgrade(accept),
        _ if req.path.unwrap_or("").ends_with("/big") => Ask::Big,
        _ => Ask::Small,
    };
    Some(Head {
        ask,
        head_only: req.method == Some("HEAD"),
        http10: req.version == Some(0),
        keep_alive,
        body,
        len,
    })
}

/// One client connection: every complete request in a read answered, in order, with one write
/// (the 1 MiB answer written on its own).
async fn serve_connection(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    // Body bytes of the last request still to be read and dropped.
    let mut skip = 0usize;
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut at = 0;
        let mut close = false;
        loop {
            let dropped = skip.min(buf.len() - at);
            at += dropped;
            skip -= dropped;
            if skip > 0 || at == buf.len() {
                break;
            }
            let Some(head) = parse(&buf[at..]) else { break };
            at += head.len;
            skip = head.body;
            let (head_bytes, body): (&[u8], &[u8]) = match head.ask {
                Ask::Bad => {
                    out.extend_from_slice(BAD_REQUEST);
                    close = true;
                    break;
                }
                Ask::Upgrade(accept) => {
                    out.extend_from_slice(
                        format!(
                            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {accept}\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                    stream.write_all(&out).await?;
                    buf.drain(..at);
                    return echo_frames(stream, buf).await;
                }
                Ask::Small => (SMALL_HEAD, SMALL_BODY),
                Ask::Big => (BIG_HEAD, &BIG_BODY),
            };
            out.extend_from_slice(head_bytes);
            // Said in the answer too, so that a client does not put the connection back in its
            // pool (and send the next request into a closed socket).
            if !head.keep_alive {
                out.extend_from_slice(b"connection: close\r\n");
            } else if head.http10 {
                out.extend_from_slice(b"connection: keep-alive\r\n");
            }
            out.extend_from_slice(b"\r\n");
            if !head.head_only {
                if body.len() > 64 * 1024 {
                    stream.write_all(&out).await?;
                    out.clear();
                    stream.write_all(body).await?;
                } else {
                    out.extend_from_slice(body);
                }
            }
            if !head.keep_alive {
                close = true;
                break;
            }
        }
        buf.drain(..at);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if close {
            return stream.shutdown().await;
        }
        if buf.len() > 64 * 1024 {
            stream.write_all(BAD_REQUEST).await?;
            return stream.shutdown().await;
        }
    }
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
