//! The idle-WebSocket client of `bench/run`, on one thread (it shares its core with the upstream;
//! the echo load runs inside the upstream, examples/bench_upstream/echo.rs).
//!
//! `bench_ws hold URL CONNS [-H 'Name: value']...`: opens CONNS WebSockets (256 handshakes at a
//! time) and keeps them idle; prints `open N failed M` once done, then waits for a line (or end
//! of input) on stdin, closes them all and prints `closed`.

use std::io::{BufRead, Write};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Args {
    mode: String,
    url: String,
    conns: usize,
    headers: Vec<(String, String)>,
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let usage = "usage: bench_ws hold URL CONNS [-H 'Name: value']...";
    let mode = it.next().expect(usage);
    let url = it.next().expect(usage);
    let conns = it.next().and_then(|n| n.parse().ok()).expect(usage);
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
            "hold" => hold(&args).await,
            m => panic!("unknown mode {m}"),
        }
    });
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
