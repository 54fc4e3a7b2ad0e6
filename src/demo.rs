//! `latchkey demo`: the whole story on one machine with nothing else installed. It starts a
//! small demo server (a page and a WebSocket echo) as john's server, creates the users john and
//! nina, and prints how to sign in.

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Message, Role as WsRole};

use crate::config::{Config, UserConfig};
use crate::http_util::{Body, full};
use crate::ids::{GroupName, ServerName, ServerRef, UserName};
use crate::secret::{self, Secret};
use crate::store::NewRoute;

pub async fn run(listen: &str, api_listen: &str, user_hosts: bool) -> ExitCode {
    let passwords: Vec<(String, String)> = ["john", "nina"]
        .iter()
        .map(|u| (u.to_string(), Secret::generate().expose()[..12].to_owned()))
        .collect();
    let mut users = vec![];
    for (name, pw) in &passwords {
        let Ok(hash) = crate::auth::password::hash(pw) else {
            eprintln!("cannot hash the demo passwords");
            return ExitCode::FAILURE;
        };
        users.push(UserConfig {
            name: UserName::parse(name).expect("demo user names are valid"),
            password_hash: hash,
            groups: vec![GroupName::parse("demo").expect("valid group")],
        });
    }
    // With host-based routing the public URL names the port, so the port is taken first.
    let (Ok(listen_addr), Ok(api_addr)) = (listen.parse(), api_listen.parse()) else {
        eprintln!("--listen and --api-listen take addresses like 127.0.0.1:8000");
        return ExitCode::FAILURE;
    };
    let (public, api) = match crate::cli::bind(listen_addr, api_addr).await {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!(
                "{e}\nTry: latchkey demo --listen 127.0.0.1:9000 --api-listen 127.0.0.1:9001"
            );
            return ExitCode::FAILURE;
        }
    };
    let port = public.local_addr().expect("bound").port();
    let hosts = if user_hosts {
        format!("public_url = \"http://localhost:{port}\"\nuser_domain = \"localhost\"\n")
    } else {
        String::new()
    };
    let text = format!(
        "[server]\nlisten = {listen:?}\n{hosts}[api]\nlisten = {api_listen:?}\ntoken = {:?}\n",
        Secret::generate().expose()
    );
    let mut config = match Config::from_sources(&text, &[]) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("{p}");
            }
            return ExitCode::FAILURE;
        }
    };
    config.users = users;

    let upstream = match TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot start the demo server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let upstream_addr = upstream
        .local_addr()
        .expect("bound listener has an address");
    tokio::spawn(serve_upstream(upstream));

    let base = match user_hosts {
        true => format!("http://localhost:{port}"),
        false => format!("http://{}", public.local_addr().expect("bound")),
    };
    let johns = match user_hosts {
        true => format!("http://john.localhost:{port}"),
        false => base.clone(),
    };
    let store = crate::store::open("memory://")
        .await
        .expect("memory store opens");
    let john = ServerRef::new(
        UserName::parse("john").expect("valid"),
        ServerName::default(),
    );
    let data = serde_json::json!({
        "target": format!("http://{upstream_addr}"),
        "user": "john",
        "server_name": "",
    });
    let route = NewRoute {
        path: "/user/john".into(),
        data: data.as_object().cloned().unwrap_or_default(),
        target: format!("http://{upstream_addr}"),
        server: Some(john),
        explicit_session: None,
        fresh_session: secret::random_id(),
        now: crate::clock::now(),
    };
    if store.put_route(route).await.is_err() {
        eprintln!("cannot register the demo server");
        return ExitCode::FAILURE;
    }
    let app = crate::App::new(config, store).await;

    println!();
    println!("latchkey demo is running at {base}/");
    println!();
    println!(
        "  Sign in as john (owner):  user john, password {}",
        passwords[0].1
    );
    println!(
        "  Sign in as nina (sharee): user nina, password {}",
        passwords[1].1
    );
    println!();
    println!("  1. As john, open {base}/hub/home, click Share, create an invite link and copy it.");
    println!("  2. In a private window, sign in as nina and open the link; click Accept.");
    println!("  3. nina lands in john's server at {johns}/user/john/ (page + WebSocket echo).");
    println!(
        "  4. Back as john, Refresh the sharing menu: nina is listed, connected. Click Revoke."
    );
    println!();
    println!("Press Ctrl-C to stop.");
    crate::serve(
        crate::Listeners {
            public,
            api,
            tls: None,
        },
        app,
        crate::cli::shutdown_signal(),
        Duration::from_secs(5),
    )
    .await;
    ExitCode::SUCCESS
}

/// The demo server: an HTML page that shows who is visiting and a WebSocket echo.
pub async fn serve_upstream(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service_fn(demo_handler))
                .await;
        });
    }
}

async fn demo_handler(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.headers().contains_key(header::UPGRADE) {
        return Ok(websocket_echo(req));
    }
    let user = req
        .headers()
        .get("x-latchkey-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("nobody")
        .to_owned();
    let role = req
        .headers()
        .get("x-latchkey-role")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let method = req.method().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if method == http::Method::POST {
        let mut r = Response::new(full(format!("saved {} bytes as {user}\n", body.len())));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        return Ok(r);
    }
    let html = DEMO_PAGE
        .replace("{{user}}", &escape(&user))
        .replace("{{role}}", &escape(&role));
    let mut r = Response::new(full(html));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    Ok(r)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Answers a WebSocket handshake and echoes every text and binary message.
pub fn websocket_echo(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(full("missing Sec-WebSocket-Key"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), WsRole::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
            if matches!(msg, Message::Close(_)) || (echo && ws.send(msg).await.is_err()) {
                break;
            }
        }
    });
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

const DEMO_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>john's demo server</title>
<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}
#log{background:#f3f4f6;padding:.5rem;min-height:4rem;white-space:pre-wrap}</style></head>
<body>
<h1>john's demo server</h1>
<p>You are <strong id="user">{{user}}</strong> (role <strong id="role">{{role}}</strong>), reaching this server through latchkey.</p>
<h2>WebSocket echo</h2>
<form id="ws"><input id="msg" value="hello" aria-label="Message"> <button>Send</button></form>
<div id="log" aria-live="polite"></div>
<h2>Save something</h2>
<form method="post"><input name="note" value="a note" aria-label="Note"> <button>Save (POST)</button></form>
<script>
const log = document.getElementById('log');
// The server's own directory, also when the page was opened without its trailing slash.
const dir = location.pathname.endsWith('/') ? location.pathname : location.pathname + '/';
const url = location.origin.replace(/^http/, 'ws') + dir + 'echo';
const ws = new WebSocket(url);
ws.onopen = () => log.textContent += 'connected\n';
ws.onmessage = (e) => log.textContent += 'echo: ' + e.data + '\n';
ws.onclose = () => log.textContent += 'closed\n';
document.getElementById('ws').onsubmit = (e) => { e.preventDefault(); ws.send(document.getElementById('msg').value); };
</script>
</body></html>
"#;

/// For tests and embedding: a demo upstream on a free loopback port.
pub async fn spawn_upstream() -> std::io::Result<std::net::SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(serve_upstream(l));
    Ok(addr)
}
