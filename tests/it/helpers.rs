//! Test rig: a redis-server process per test, upstreams on port 0, latchkey instances, and an
//! HTTP client that signs in like a browser.

#![allow(dead_code)]

use std::net::SocketAddr;
pub use std::process::Command;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use latchkey::http_util::{Body, full};
use latchkey::{App, Config};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const API_TOKEN: &str = "test-route-api-token-0123456789";
pub const PASSWORD: &str = "correct horse battery";

/// Which store a test runs against.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Memory,
    Redis,
}

/// Runs one async test body against both stores.
#[macro_export]
macro_rules! both_stores {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_memory() {
                super::$name($crate::helpers::Backend::Memory).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_redis() {
                super::$name($crate::helpers::Backend::Redis).await;
            }
        }
    };
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A redis-server process owned by one test; killed when dropped.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: std::path::PathBuf,
}

impl Redis {
    pub async fn start() -> Redis {
        let dir =
            std::env::temp_dir().join(format!("latchkey-redis-{}", latchkey::secret::random_id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut r = Redis {
            port: free_port(),
            child: None,
            dir,
        };
        r.spawn().await;
        r
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                self.dir.to_str().expect("utf-8 temp dir"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the README's test command installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts on the same port with the same data directory (append-only file kept).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a test upstream saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body_len: usize,
}

/// A real HTTP + WebSocket upstream on port 0 that counts and records every request.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn spawn() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(vec![]));
        let (h, s) = (hits.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (h, s) = (h.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (h, s) = (h.clone(), s.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(upstream_answer(req, h, s).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, hits, seen }
    }

    pub fn target(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }
}

async fn upstream_answer(
    req: Request<Incoming>,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Response<Body> {
    hits.fetch_add(1, Ordering::SeqCst);
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers = req.headers().clone();
    if req.headers().contains_key(http::header::UPGRADE) {
        seen.lock().unwrap().push(Seen {
            method,
            path,
            headers,
            body_len: 0,
        });
        return latchkey::demo::websocket_echo(req);
    }
    if path.ends_with("/slow") {
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    if path.ends_with("/big") {
        // 256 MiB produced on the fly, never held.
        let chunk = bytes::Bytes::from(vec![1u8; 1024 * 1024]);
        let stream = futures_util::stream::iter((0..256).map(move |_| {
            Ok::<_, latchkey::http_util::BoxError>(hyper::body::Frame::data(chunk.clone()))
        }));
        return Response::new(http_body_util::BodyExt::boxed(
            http_body_util::StreamBody::new(stream),
        ));
    }
    if path.ends_with("/stream") {
        // A long-lived response without a length: one chunk every 50 ms, forever.
        seen.lock().unwrap().push(Seen {
            method,
            path,
            headers,
            body_len: 0,
        });
        let stream = futures_util::stream::unfold(0u64, |n| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some((
                Ok::<_, latchkey::http_util::BoxError>(hyper::body::Frame::data(
                    bytes::Bytes::from(format!("tick {n}\n")),
                )),
                n + 1,
            ))
        });
        let body = http_body_util::StreamBody::new(stream);
        return Response::new(http_body_util::BodyExt::boxed(body));
    }
    // Count the body as it streams in, without holding it.
    let mut body = req.into_body();
    let mut body_len = 0;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            body_len += data.len();
        }
    }
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        headers,
        body_len,
    });
    let mut r = Response::new(full(format!("upstream saw {method} {path}")));
    *r.status_mut() = StatusCode::OK;
    r
}

fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| latchkey::auth::password::hash(PASSWORD).expect("hash"))
}

/// Options for a latchkey instance under test.
pub struct Options {
    pub backend: Backend,
    pub redis_url: Option<String>,
    pub extra_config: String,
}

/// A running latchkey instance (and, on the Redis backend, its redis-server).
pub struct Latchkey {
    pub base: String,
    pub api: String,
    pub app: Arc<App>,
    pub redis: Option<Redis>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Latchkey {
    pub async fn spawn(backend: Backend) -> Latchkey {
        Latchkey::spawn_with(backend, "").await
    }

    pub async fn spawn_with(backend: Backend, extra: &str) -> Latchkey {
        let redis = match backend {
            Backend::Memory => None,
            Backend::Redis => Some(Redis::start().await),
        };
        let url = redis.as_ref().map(|r| r.url());
        let mut l = Latchkey::start(url.as_deref(), extra).await;
        l.redis = redis;
        l
    }

    /// Starts an instance on the given store URL (None: memory).
    pub async fn start(redis_url: Option<&str>, extra: &str) -> Latchkey {
        Latchkey::start_with_env(redis_url, extra, &[]).await
    }

    /// Starts an instance with extra `LATCHKEY_*` environment overrides.
    pub async fn start_with_env(
        redis_url: Option<&str>,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Latchkey {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let hash = password_hash();
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
upstream_timeout = 2
[api]
listen = "127.0.0.1:0"
token = "{API_TOKEN}"
[store]
url = "{store}"
[sharing]
min_expires_in = 1
{login}
{extra}
[[users]]
name = "john"
password_hash = "{hash}"
groups = ["team-a"]
[[users]]
name = "nina"
password_hash = "{hash}"
groups = ["team-b"]
[[users]]
name = "otto"
password_hash = "{hash}"
groups = ["team-a"]
"#,
            store = redis_url.unwrap_or("memory://"),
            login = if extra.contains("[login]") {
                ""
            } else {
                "[login]\nmax_failures = 1000"
            },
        );
        let config = Config::from_sources(&text, &env).expect("test config is valid");
        let store = latchkey::store::open_with_timeout(&config.store_url, config.store_timeout)
            .await
            .expect("store opens");
        let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let api = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", public.local_addr().unwrap());
        let api_url = format!("http://{}", api.local_addr().unwrap());
        let app = App::new(config, store).await;
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(latchkey::serve(
            latchkey::Listeners {
                public,
                api,
                tls: None,
            },
            app.clone(),
            async move {
                let _ = rx.await;
            },
            Duration::from_secs(2),
        ));
        Latchkey {
            base,
            api: api_url,
            app,
            redis: None,
            stop: Some(tx),
            done: Some(done),
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends bytes as they are (no URL normalisation) and returns the status code.
    pub async fn raw_status(addr_url: &str, request: &str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = addr_url.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        head.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    /// A raw client for the route API.
    pub fn route_api(&self) -> reqwest::Client {
        reqwest::Client::builder().build().unwrap()
    }

    /// Registers a server route through the route API, as JupyterHub does (text/plain body).
    pub async fn post_route(&self, path: &str, body: serde_json::Value) -> StatusCode {
        self.route_api()
            .post(format!("{}/api/routes{}", self.api, path))
            .header("authorization", format!("token {API_TOKEN}"))
            .header("content-type", "text/plain; charset=utf-8")
            .body(body.to_string())
            .send()
            .await
            .expect("route API answers")
            .status()
    }

    pub async fn delete_route(&self, path: &str) -> StatusCode {
        self.route_api()
            .delete(format!("{}/api/routes{}", self.api, path))
            .header("authorization", format!("token {API_TOKEN}"))
            .send()
            .await
            .expect("route API answers")
            .status()
    }

    /// john's default server at /user/john, proxied to `upstream`.
    pub async fn register_john(&self, upstream: &Upstream) {
        let s = self
            .post_route(
                "/user/john",
                serde_json::json!({"user": "john", "server_name": "", "target": upstream.target()}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }

    /// A browser-like client, not signed in.
    pub fn browser(&self) -> Browser {
        Browser::new(&self.base)
    }

    /// A browser signed in as `user`.
    pub async fn signed_in(&self, user: &str) -> Browser {
        let b = self.browser();
        b.login(user).await;
        b
    }
}

impl Drop for Latchkey {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A counting upstream, and latchkey on `backend` with john's default server routed to it.
pub async fn johns_server(backend: Backend) -> (Upstream, Latchkey) {
    let upstream = Upstream::spawn().await;
    let lk = Latchkey::spawn(backend).await;
    lk.register_john(&upstream).await;
    (upstream, lk)
}

/// A client with a cookie jar that follows no redirects, like a browser driven step by step.
pub struct Browser {
    pub base: String,
    pub client: reqwest::Client,
    pub jar: Arc<reqwest::cookie::Jar>,
}

impl Browser {
    pub fn new(base: &str) -> Browser {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let client = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Browser {
            base: base.to_owned(),
            client,
            jar,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn cookie(&self, name: &str, path: &str) -> Option<String> {
        use reqwest::cookie::CookieStore;
        let url: reqwest::Url = self.url(path).parse().unwrap();
        let header = self.jar.cookies(&url)?;
        header
            .to_str()
            .ok()?
            .split("; ")
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }

    /// The XSRF token, fetched from the login page if the jar has none yet.
    pub async fn xsrf(&self) -> String {
        if let Some(x) = self.cookie("_xsrf", "/hub/") {
            return x;
        }
        self.client
            .get(self.url("/hub/login"))
            .send()
            .await
            .unwrap();
        self.cookie("_xsrf", "/hub/")
            .expect("the login page sets _xsrf")
    }

    pub async fn login(&self, user: &str) {
        let xsrf = self.xsrf().await;
        let r = self
            .client
            .post(self.url("/hub/login"))
            .form(&[("username", user), ("password", PASSWORD), ("_xsrf", &xsrf)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "sign-in as {user}");
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// A state-changing API call with the XSRF header.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let xsrf = self.xsrf().await;
        let mut rb = self
            .client
            .request(method, self.url(path))
            .header("x-xsrftoken", xsrf);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        rb.send().await.unwrap()
    }

    /// Creates an invite code for a server and returns (code, full JSON).
    pub async fn invite(
        &self,
        server: &str,
        body: serde_json::Value,
    ) -> (String, serde_json::Value) {
        let r = self
            .api(
                reqwest::Method::POST,
                &format!("/hub/api/share-codes/{server}"),
                Some(body),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: serde_json::Value = r.json().await.unwrap();
        (v["code"].as_str().unwrap().to_owned(), v)
    }

    /// Accepts an invite with the form, as the Accept button does.
    pub async fn accept(&self, code: &str) -> reqwest::Response {
        let xsrf = self.xsrf().await;
        self.client
            .post(self.url("/hub/accept-share"))
            .form(&[("code", code), ("_xsrf", &xsrf)])
            .send()
            .await
            .unwrap()
    }

    /// The cookie header to send on a raw WebSocket handshake.
    pub fn cookie_header(&self, path: &str) -> String {
        use reqwest::cookie::CookieStore;
        let url: reqwest::Url = self.url(path).parse().unwrap();
        self.jar
            .cookies(&url)
            .map(|h| h.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    /// Opens a WebSocket through latchkey with this browser's cookies.
    pub async fn websocket(
        &self,
        path: &str,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        tokio_tungstenite::tungstenite::Error,
    > {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let ws_url = self.url(path).replacen("http://", "ws://", 1);
        let mut req = ws_url.into_client_request().unwrap();
        let cookie = self.cookie_header(path);
        if !cookie.is_empty() {
            req.headers_mut().insert("cookie", cookie.parse().unwrap());
        }
        req.headers_mut()
            .insert("origin", self.base.parse().unwrap());
        tokio_tungstenite::connect_async(req)
            .await
            .map(|(ws, _)| ws)
    }
}

/// Waits until `cond` holds, polling every 10 ms for at most `within`.
pub async fn eventually(within: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Several latchkey instances sharing one redis-server: the multi-instance rig.
pub struct Rig {
    pub redis: Redis,
    pub instances: Vec<Latchkey>,
}

impl Rig {
    pub async fn start(n: usize) -> Rig {
        Rig::start_with(n, "").await
    }

    pub async fn start_with(n: usize, extra: &str) -> Rig {
        let redis = Redis::start().await;
        let mut instances = vec![];
        for _ in 0..n {
            instances.push(Latchkey::start(Some(&redis.url()), extra).await);
        }
        Rig { redis, instances }
    }

    pub fn redis_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.redis.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Waits for a WebSocket to be closed by the other side; returns how long it took.
pub async fn closed_within<S>(ws: &mut S, limit: Duration) -> Option<Duration>
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt;
    let started = std::time::Instant::now();
    tokio::time::timeout(limit, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => break,
                Some(Ok(m)) if m.is_close() => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .ok()
    .map(|_| started.elapsed())
}
