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
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};

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
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
            if matches!(msg, Message::Close(_)) || (echo && ws.send(msg).await.is_err()) {
                break;
            }
        }
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
