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

    /// Stops the server answering (SIGSTOP) until [`resume`](Self::resume): commands sent
    /// meanwhile wait.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self.child.as_ref().expect("a running redis-server").id();
        let ok = Command::new("kill")
            .args([which, &pid.to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill {which} {pid}");
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

/// How many header fields the test upstream's `/many-headers` answer has.
pub const MANY_HEADERS: usize = 120;

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
    if path.ends_with("/many-headers") {
        // More header fields than hyper's client takes by default (100).
        let mut r = Response::new(full("many headers"));
        for i in 0..MANY_HEADERS {
            r.headers_mut().insert(
                http::HeaderName::try_from(format!("x-field-{i}")).unwrap(),
                http::HeaderValue::from(i),
            );
        }
        return r;
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
        // Bound first, so that the config may name the public port ("{public_port}").
        let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let api = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = public.local_addr().unwrap().port().to_string();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.replace("{public_port}", &port)))
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

    /// Posts the sharing page's form of john's server, as the browser does (with the XSRF
    /// token), without following the redirect.
    pub async fn sharing_form(&self, fields: &[(&str, &str)]) -> reqwest::Response {
        let xsrf = self.xsrf().await;
        let mut form = vec![("_xsrf", xsrf.as_str())];
        form.extend_from_slice(fields);
        self.client
            .post(self.url("/hub/sharing/john/"))
            .form(&form)
            .send()
            .await
            .unwrap()
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
        let r = self.try_login(user, PASSWORD).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "sign-in as {user}");
    }

    /// Posts the sign-in form with this password; the answer, whatever it is.
    pub async fn try_login(&self, user: &str, password: &str) -> reqwest::Response {
        let xsrf = self.xsrf().await;
        self.client
            .post(self.url("/hub/login"))
            .form(&[("username", user), ("password", password), ("_xsrf", &xsrf)])
            .send()
            .await
            .unwrap()
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

    /// Revokes a user's access to a server (`server` as in the API path, `john/`), as its owner
    /// does; the call must succeed.
    pub async fn revoke(&self, server: &str, user: &str) {
        let r = self
            .api(
                reqwest::Method::PATCH,
                &format!("/hub/api/shares/{server}"),
                Some(serde_json::json!({ "user": user })),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "revoke {user} on {server}");
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

/// Opens a WebSocket through latchkey at `base` with an API token, as a script would.
pub async fn token_websocket(
    base: &str,
    path: &str,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{base}{path}").replacen("http://", "ws://", 1);
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("token {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .expect("the WebSocket opens with the token")
        .0
}

/// Creates an API token for the signed-in `owner` (a [`Browser`]) with this body (note,
/// expiry); returns (token, id).
pub async fn new_api_token(
    owner: &Browser,
    user: &str,
    body: serde_json::Value,
) -> (String, String) {
    let r = owner
        .api(
            reqwest::Method::POST,
            &format!("/hub/api/users/{user}/tokens"),
            Some(body),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: serde_json::Value = r.json().await.unwrap();
    (
        v["token"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    )
}

/// Deletes one of `user`'s API tokens through `owner`'s session; the status answered.
pub async fn delete_api_token(owner: &Browser, user: &str, id: &str) -> StatusCode {
    owner
        .api(
            reqwest::Method::DELETE,
            &format!("/hub/api/users/{user}/tokens/{id}"),
            None,
        )
        .await
        .status()
}

/// The status of a GET of `url` with an API token and nothing else, as a script sends it.
pub async fn status_with_token(url: &str, token: &str) -> StatusCode {
    reqwest::Client::new()
        .get(url)
        .header("authorization", format!("token {token}"))
        .send()
        .await
        .unwrap()
        .status()
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

// Raw HTTP/1.1 on both sides, for tests that need exact control of the bytes: an upstream that
// misbehaves on purpose, and a client that pipelines or reuses one connection.

/// A TCP stream and what has been read from it but not used yet.
pub struct Wire {
    pub stream: tokio::net::TcpStream,
    pub buf: Vec<u8>,
}

impl Wire {
    pub fn new(stream: tokio::net::TcpStream) -> Wire {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads what arrives next; 0 when the peer closed (or reset) the connection.
    pub async fn more(&mut self) -> usize {
        use tokio::io::AsyncReadExt;
        self.buf.reserve(64 * 1024);
        self.stream.read_buf(&mut self.buf).await.unwrap_or(0)
    }

    /// Reads until at least `n` bytes are buffered; false if the peer closed first.
    pub async fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            if self.more().await == 0 {
                return false;
            }
        }
        true
    }

    pub fn take(&mut self, n: usize) -> Vec<u8> {
        self.buf.drain(..n).collect()
    }

    /// One line without its line end (CRLF or LF).
    pub async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line = self.take(i + 1);
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Some(line);
            }
            if self.more().await == 0 {
                return None;
            }
        }
    }

    /// A chunked body, decoded, and its trailer fields.
    pub async fn chunked(&mut self) -> Result<(Vec<u8>, Vec<(String, String)>), String> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await.ok_or_else(|| {
                format!("closed inside a chunked body after {} bytes", body.len())
            })?;
            let line = String::from_utf8_lossy(&line).into_owned();
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| format!("bad chunk size line {line:?}"))?;
            if size == 0 {
                break;
            }
            if !self.fill(size + 2).await {
                return Err(format!(
                    "closed inside a chunk after {} bytes",
                    body.len() + self.buf.len()
                ));
            }
            body.extend(self.take(size));
            if self.take(2) != b"\r\n" {
                return Err("chunk data not followed by CRLF".into());
            }
        }
        let mut trailers = vec![];
        loop {
            let line = self
                .line()
                .await
                .ok_or("closed inside the trailer section")?;
            if line.is_empty() {
                return Ok((body, trailers));
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            let (name, value) = line.split_once(':').ok_or("bad trailer line")?;
            trailers.push((name.to_owned(), value.trim().to_owned()));
        }
    }

    /// Everything until the peer closes.
    pub async fn rest_until_close(&mut self) -> Vec<u8> {
        while self.more().await > 0 {}
        std::mem::take(&mut self.buf)
    }
}

fn fields(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn fields_named<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A request as a raw upstream read it.
#[derive(Clone, Debug)]
pub struct RawRequest {
    pub method: String,
    pub target: String,
    /// The header fields in the order and the case they came in.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The upstream connection it came on (0, 1, ... in the order accepted).
    pub conn: usize,
    /// Which request it was on that connection (0, 1, ...).
    pub nth: usize,
}

impl RawRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        field(&self.headers, name)
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        fields_named(&self.headers, name)
    }
}

/// What a raw upstream does after reading a request.
pub enum Step {
    Write(Vec<u8>),
    Sleep(Duration),
    /// Close the connection (FIN).
    Close,
    /// Reset the connection (RST).
    Reset,
    /// Hold the connection and never answer.
    Hang,
}

type RawAnswer = Arc<dyn Fn(&RawRequest) -> Vec<Step> + Send + Sync>;

/// An HTTP/1.1 upstream on port 0 written on raw TCP: it reads each request (head and
/// `Content-Length` or chunked body), records it, and does the steps `answer` gives for it.
/// After the last step it reads the next request on the same connection.
pub struct RawUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<RawRequest>>>,
    pub accepted: Arc<AtomicUsize>,
}

impl RawUpstream {
    pub async fn spawn(
        answer: impl Fn(&RawRequest) -> Vec<Step> + Send + Sync + 'static,
    ) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw upstream");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(vec![]));
        let accepted = Arc::new(AtomicUsize::new(0));
        let answer: RawAnswer = Arc::new(answer);
        let (s, a) = (seen.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_raw(
                    Wire::new(stream),
                    conn,
                    answer.clone(),
                    s.clone(),
                ));
            }
        });
        RawUpstream {
            addr,
            seen,
            accepted,
        }
    }

    pub fn target(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<RawRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn serve_raw(
    mut wire: Wire,
    conn: usize,
    answer: RawAnswer,
    seen: Arc<Mutex<Vec<RawRequest>>>,
) {
    use tokio::io::AsyncWriteExt;
    for nth in 0.. {
        let Some(req) = read_raw_request(&mut wire, conn, nth).await else {
            return;
        };
        seen.lock().unwrap().push(req.clone());
        for step in answer(&req) {
            match step {
                Step::Write(bytes) => {
                    if wire.stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Close => {
                    let _ = wire.stream.shutdown().await;
                    return;
                }
                Step::Reset => {
                    let _ = wire.stream.set_zero_linger();
                    return;
                }
                Step::Hang => std::future::pending::<()>().await,
            }
        }
    }
}

async fn read_raw_request(wire: &mut Wire, conn: usize, nth: usize) -> Option<RawRequest> {
    loop {
        if !wire.buf.is_empty() {
            let mut h = [httparse::EMPTY_HEADER; 128];
            let mut r = httparse::Request::new(&mut h);
            let parsed = match r.parse(&wire.buf) {
                Ok(httparse::Status::Complete(n)) => Some((
                    n,
                    r.method.unwrap_or_default().to_owned(),
                    r.path.unwrap_or_default().to_owned(),
                    fields(r.headers),
                )),
                Ok(httparse::Status::Partial) => None,
                Err(_) => return None,
            };
            if let Some((n, method, target, headers)) = parsed {
                wire.take(n);
                let chunked = field(&headers, "transfer-encoding")
                    .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
                let body = if chunked {
                    wire.chunked().await.ok()?.0
                } else {
                    let n: usize = field(&headers, "content-length")
                        .map(|v| v.trim().parse().expect("a valid Content-Length"))
                        .unwrap_or(0);
                    if !wire.fill(n).await {
                        return None;
                    }
                    wire.take(n)
                };
                return Some(RawRequest {
                    method,
                    target,
                    headers,
                    body,
                    conn,
                    nth,
                });
            }
        }
        if wire.more().await == 0 {
            return None;
        }
    }
}

/// An answer as a raw client read it.
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub status: u16,
    /// The header fields in the order and the case they came in.
    pub headers: Vec<(String, String)>,
    /// The body, decoded from chunks when it came chunked.
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// Interim (1xx) answers seen before this one.
    pub interim: Vec<u16>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        field(&self.headers, name)
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        fields_named(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    }
}

/// A client on one raw TCP connection that writes requests by hand and reads answers with
/// their framing.
pub struct RawClient {
    pub wire: Wire,
}

impl RawClient {
    /// Connects to `base` (`http://host:port`).
    pub async fn connect(base: &str) -> RawClient {
        let addr = base.trim_start_matches("http://");
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to latchkey");
        stream.set_nodelay(true).unwrap();
        RawClient {
            wire: Wire::new(stream),
        }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        use tokio::io::AsyncWriteExt;
        self.wire
            .stream
            .write_all(bytes.as_ref())
            .await
            .expect("write to latchkey");
    }

    /// The next answer (to a request that is not HEAD); panics if none comes whole in 5 s.
    pub async fn response(&mut self) -> RawResponse {
        self.try_response(false)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next answer to a HEAD request (no body follows the head).
    pub async fn head_response(&mut self) -> RawResponse {
        self.try_response(true)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The next answer, or why none came whole within 5 s.
    pub async fn try_response(&mut self, head_request: bool) -> Result<RawResponse, String> {
        tokio::time::timeout(Duration::from_secs(5), self.read_response(head_request))
            .await
            .map_err(|_| "no complete answer within 5 s".to_owned())?
    }

    /// The status and header fields of the next final answer, its body left unread.
    pub async fn response_head(
        &mut self,
    ) -> Result<(u16, Vec<(String, String)>, Vec<u16>), String> {
        let mut interim = vec![];
        loop {
            let (status, headers) = self.read_head().await?;
            if (100..200).contains(&status) && status != 101 {
                interim.push(status);
                continue;
            }
            return Ok((status, headers, interim));
        }
    }

    async fn read_head(&mut self) -> Result<(u16, Vec<(String, String)>), String> {
        loop {
            if !self.wire.buf.is_empty() {
                let mut h = [httparse::EMPTY_HEADER; 128];
                let mut r = httparse::Response::new(&mut h);
                let parsed = match r.parse(&self.wire.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        Some((n, r.code.unwrap_or(0), fields(r.headers)))
                    }
                    Ok(httparse::Status::Partial) => None,
                    Err(e) => {
                        return Err(format!(
                            "not an HTTP/1.1 answer ({e}): {:?}",
                            String::from_utf8_lossy(&self.wire.buf[..self.wire.buf.len().min(300)])
                        ));
                    }
                };
                if let Some((n, status, headers)) = parsed {
                    self.wire.take(n);
                    return Ok((status, headers));
                }
            }
            if self.wire.more().await == 0 {
                return Err(format!(
                    "the connection closed before an answer head ({} bytes: {:?})",
                    self.wire.buf.len(),
                    String::from_utf8_lossy(&self.wire.buf)
                ));
            }
        }
    }

    async fn read_response(&mut self, head_request: bool) -> Result<RawResponse, String> {
        let (status, headers, interim) = self.response_head().await?;
        let mut trailers = vec![];
        let body = if head_request || status == 204 || status == 304 {
            vec![]
        } else if field(&headers, "transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            let (body, t) = self.wire.chunked().await?;
            trailers = t;
            body
        } else if let Some(n) = field(&headers, "content-length") {
            let n: usize = n.trim().parse().map_err(|_| "bad Content-Length")?;
            if !self.wire.fill(n).await {
                return Err(format!(
                    "the connection closed after {} of {n} body bytes",
                    self.wire.buf.len()
                ));
            }
            self.wire.take(n)
        } else {
            self.wire.rest_until_close().await
        };
        Ok(RawResponse {
            status,
            headers,
            body,
            trailers,
            interim,
        })
    }

    /// Whether latchkey closes the connection within `limit` (bytes that arrive meanwhile are
    /// kept in the buffer).
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async { while self.wire.more().await > 0 {} })
            .await
            .is_ok()
    }

    /// Whether nothing arrives (and the connection stays open) for `d`.
    pub async fn quiet_for(&mut self, d: Duration) -> bool {
        self.wire.buf.is_empty() && tokio::time::timeout(d, self.wire.more()).await.is_err()
    }
}
