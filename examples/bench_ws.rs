//! The WebSocket load client of `bench/run`, on one thread (it shares its core with the upstream).
//!
//! - `bench_ws echo URL CONNS SECONDS [-H 'Name: value']...`: opens CONNS WebSockets, then each
//!   sends a 32-byte text message and waits for its echo, again and again, for SECONDS. Prints one
//!   JSON line: messages, seconds, rate (messages/s), p50_us, p99_us, errors.
//! - `bench_ws hold URL CONNS [-H 'Name: value']...`: opens CONNS WebSockets (256 handshakes at a
//!   time) and keeps them idle; prints `open N failed M` once done, then waits for a line (or end
//!   of input) on stdin, closes them all and prints `closed`.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Args {
    mode: String,
    url: String,
    conns: usize,
    seconds: f64,
    headers: Vec<(String, String)>,
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let usage = "usage: bench_ws echo URL CONNS SECONDS [-H 'Name: value']... | bench_ws hold URL CONNS [-H ...]";
    let mode = it.next().expect(usage);
    let url = it.next().expect(usage);
    let conns = it.next().and_then(|n| n.parse().ok()).expect(usage);
    let seconds = if mode == "echo" {
        it.next().and_then(|n| n.parse().ok()).expect(usage)
    } else {
        0.0
    };
    let mut headers = vec![];
    while let Some(flag) = it.next() {
        assert_eq!(flag, "-H", "{usage}");
        let h = it.next().expect(usage);
        let (k, v) = h.split_once(':').expect("a header is 'Name: value'");
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Args {
        mode,
        url,
        conns,
        seconds,
        headers,
    }
}

async fn connect(url: &str, headers: &[(String, String)]) -> Result<Ws, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    for (k, v) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?,
            HeaderValue::from_str(v).map_err(|e| e.to_string())?,
        );
    }
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async move {
        match args.mode.as_str() {
            "echo" => echo(&args).await,
            "hold" => hold(&args).await,
            m => panic!("unknown mode {m}"),
        }
    });
}

/// One WebSocket for the echo run, spoken by hand: the handshake, then pre-built masked frames
/// out and plain frames back. The load core is shared with the upstream, and every microsecond it
/// spends here is one the proxy under test can't show: so no WebSocket library on this path.
struct RawWs {
    stream: TcpStream,
    /// The message as a masked client frame, ready to write.
    frame: Vec<u8>,
    /// The frame the echo comes back as (servers don't mask).
    expect: Vec<u8>,
    buf: Vec<u8>,
}

impl RawWs {
    async fn connect(
        url: &str,
        headers: &[(String, String)],
        payload: &[u8],
    ) -> Result<RawWs, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or("the echo run speaks ws:// only")?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let path = if path.is_empty() { "/" } else { path };
        let mut stream = TcpStream::connect(authority)
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let key: [u8; 16] = rand::random();
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        let end = loop {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the proxy closed the connection during the handshake".into());
            }
            answer.extend_from_slice(&chunk[..n]);
            if let Some(at) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        if !answer.starts_with(b"HTTP/1.1 101") {
            let line = answer.split(|&b| b == b'\r').next().unwrap_or_default();
            return Err(format!(
                "handshake refused: {}",
                String::from_utf8_lossy(line)
            ));
        }
        if end != answer.len() {
            return Err("bytes after the handshake answer".into());
        }
        assert!(payload.len() < 126, "a short message");
        let mask: [u8; 4] = rand::random();
        let mut frame = vec![0x81, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let mut expect = vec![0x81, payload.len() as u8];
        expect.extend_from_slice(payload);
        Ok(RawWs {
            stream,
            frame,
            buf: vec![0; expect.len()],
            expect,
        })
    }

    /// Sends the message and waits for its echo; false if anything else came back.
    async fn round_trip(&mut self) -> std::io::Result<bool> {
        self.stream.write_all(&self.frame).await?;
        self.stream.read_exact(&mut self.buf).await?;
        Ok(self.buf == self.expect)
    }

    async fn close(mut self) {
        // A close frame (masked, empty) and our end of the stream.
        let _ = self.stream.write_all(&[0x88, 0x80, 0, 0, 0, 0]).await;
        let _ = self.stream.shutdown().await;
    }
}

async fn echo(args: &Args) {
    let payload = [b'x'; 32];
    let mut sockets = vec![];
    for _ in 0..args.conns {
        match RawWs::connect(&args.url, &args.headers, &payload).await {
            Ok(ws) => sockets.push(ws),
            Err(e) => {
                eprintln!("cannot open a WebSocket: {e}");
                std::process::exit(1);
            }
        }
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let mut tasks = vec![];
    for mut ws in sockets {
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                match ws.round_trip().await {
                    Ok(true) => {
                        latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32)
                    }
                    _ => {
                        errors += 1;
                        break;
                    }
                }
            }
            ws.close().await;
            (latencies, errors)
        }));
    }
    let mut all = vec![];
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("an echo task");
        all.extend(l);
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| -> u32 {
        if all.is_empty() {
            return 0;
        }
        all[((all.len() as f64 * p) as usize).min(all.len() - 1)]
    };
    println!(
        "{}",
        serde_json::json!({
            "messages": all.len(),
            "seconds": seconds,
            "rate": all.len() as f64 / seconds,
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
            "errors": errors,
        })
    );
}

async fn hold(args: &Args) {
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = vec![];
    for _ in 0..args.conns {
        let gate = gate.clone();
        let url = args.url.clone();
        let headers = args.headers.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            connect(&url, &headers).await
        }));
    }
    let mut open = vec![];
    let mut failed = 0;
    let mut first_error = None;
    for t in tasks {
        match t.await.expect("a connect task") {
            Ok(ws) => open.push(ws),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("first failure: {e}");
    }
    println!("open {} failed {failed}", open.len());
    let _ = std::io::stdout().flush();
    // Wait for the go-ahead without blocking the runtime's only thread.
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    })
    .await;
    drop(open);
    println!("closed");
}
