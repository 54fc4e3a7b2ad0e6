//! The WebSocket echo load, run inside the upstream's process on its one thread.
//!
//! The client and the echo upstream share the load core. As two processes they each sleep in
//! their own `epoll_wait` and the core switches between them for every batch of messages; that
//! switching, not the proxy, bounded the echo rate (bench/README, "Sixth round"). In one process
//! on one thread they share one event loop: the proxy's answer to the client and its message to
//! the upstream are picked up by the same wake-up.
//!
//! Control: one command per line on standard input, one JSON line back on standard output.
//! `echo<TAB>URL<TAB>CONNS<TAB>WINDOW<TAB>SECONDS[<TAB>Name: value]...` opens CONNS WebSockets
//! to URL (a `ws://` URL, through the proxy under test), then each keeps WINDOW 32-byte text
//! messages on their way for SECONDS, sending the next as an echo comes back (WINDOW 1: send,
//! wait for the echo, again and again); the answer has messages, seconds, rate (messages/s),
//! p50_us, p99_us (round trips) and errors.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads commands from standard input until it ends, answering each on standard output.
pub async fn control() {
    // Standard input is read on a thread of its own, which sleeps until a command comes.
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = commands.recv().await {
        let answer = match parse(&line) {
            Ok(cmd) => run(&cmd).await,
            Err(e) => json!({ "error": e }),
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{answer}");
        let _ = out.flush();
    }
}

struct Command {
    url: String,
    conns: usize,
    window: usize,
    seconds: f64,
    headers: Vec<(String, String)>,
}

fn parse(line: &str) -> Result<Command, String> {
    let usage = "usage: echo<TAB>URL<TAB>CONNS<TAB>WINDOW<TAB>SECONDS[<TAB>Name: value]...";
    let mut fields = line.split('\t');
    if fields.next() != Some("echo") {
        return Err(usage.into());
    }
    let url = fields.next().ok_or(usage)?.to_owned();
    let conns = fields.next().and_then(|n| n.parse().ok()).ok_or(usage)?;
    let window = fields
        .next()
        .and_then(|n| n.parse().ok())
        .filter(|&w| w > 0)
        .ok_or(usage)?;
    let seconds = fields
        .next()
        .and_then(|n| n.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .ok_or(usage)?;
    let headers = fields
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("a header is 'Name: value', not {h:?}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Command {
        url,
        conns,
        window,
        seconds,
        headers,
    })
}

/// How long after the end of a run an echo may still come back.
const STALLED: Duration = Duration::from_secs(5);

async fn run(cmd: &Command) -> Value {
    let payload = [b'x'; 32];
    let mut sockets = vec![];
    for _ in 0..cmd.conns {
        match RawWs::connect(&cmd.url, &cmd.headers, &payload).await {
            Ok(ws) => sockets.push(ws),
            Err(e) => return json!({ "error": format!("cannot open a WebSocket: {e}") }),
        }
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(cmd.seconds);
    let mut tasks = vec![];
    let window = cmd.window;
    for mut ws in sockets {
        tasks.push(tokio::spawn(async move {
            let r = ws.echo_until(deadline, window).await;
            ws.close().await;
            r
        }));
    }
    let mut all = vec![];
    let mut errors = 0;
    for t in tasks {
        // A task that failed counts as an error.
        let (l, e) = t.await.unwrap_or((vec![], 1));
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
    json!({
        "messages": all.len(),
        "seconds": seconds,
        "rate": all.len() as f64 / seconds,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "errors": errors,
    })
}

/// One WebSocket for the echo run, spoken by hand: the handshake, then pre-built masked frames
/// out and plain frames back. Every microsecond spent here is one the proxy under test can't
/// show: so no WebSocket library on this path.
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

    /// Keeps `window` messages on their way until `deadline`, sending one more for each echo
    /// that comes back; then waits for the last echoes. Round-trip times in µs, and 1 if
    /// anything but the echo came back (or the connection failed).
    async fn echo_until(&mut self, deadline: Instant, window: usize) -> (Vec<u32>, u64) {
        let mut latencies: Vec<u32> = Vec::with_capacity(1 << 16);
        let mut sent: std::collections::VecDeque<Instant> = Default::default();
        let mut out = Vec::with_capacity(self.frame.len() * window);
        let one = self.expect.len();
        self.buf = vec![0; one * window.max(16)];
        let mut filled = 0;
        let mut more = window;
        loop {
            let now = Instant::now();
            if now < deadline {
                for _ in 0..more {
                    out.extend_from_slice(&self.frame);
                    sent.push_back(now);
                }
                if !out.is_empty() && self.stream.write_all(&out).await.is_err() {
                    return (latencies, 1);
                }
                out.clear();
            }
            if sent.is_empty() {
                return (latencies, 0);
            }
            // A lost echo or a stalled proxy ends the run as an error, not a hang.
            let read = tokio::time::timeout_at(
                (deadline + STALLED).into(),
                self.stream.read(&mut self.buf[filled..]),
            );
            match read.await {
                Ok(Ok(0) | Err(_)) | Err(_) => return (latencies, 1),
                Ok(Ok(n)) => filled += n,
            }
            let whole = filled / one * one;
            let now = Instant::now();
            for echo in self.buf[..whole].chunks(one) {
                if echo != self.expect {
                    return (latencies, 1);
                }
                let Some(at) = sent.pop_front() else {
                    // An echo of a message never sent.
                    return (latencies, 1);
                };
                latencies.push(now.duration_since(at).as_micros().min(u32::MAX as u128) as u32);
            }
            self.buf.copy_within(whole..filled, 0);
            filled -= whole;
            more = whole / one;
        }
    }

    async fn close(mut self) {
        // A close frame (masked, empty) and our end of the stream.
        let _ = self.stream.write_all(&[0x88, 0x80, 0, 0, 0, 0]).await;
        let _ = self.stream.shutdown().await;
    }
}
