//! Running latchkey in production: TLS with HTTP/2 and certificate reload, https upstreams, the
//! HTTP-to-HTTPS redirect, graceful shutdown with live WebSockets, readiness, Prometheus
//! metrics, and logs that keep every secret out at TRACE level.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use latchkey::http_util::full;
use latchkey::{App, Config};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::*;

const GENEROUS: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Certificates made for the test: one CA, leaves for "localhost" and 127.0.0.1.

struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self, name: &str) -> Leaf {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "latchkey-production-{}",
            latchkey::secret::random_id()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a file through a rename, as certificate tools do, so readers never see half of it.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn install(dir: &TempDir, leaf: &Leaf) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.path("cert.pem"), dir.path("key.pem"));
    write_atomically(&key, &leaf.key_pem);
    write_atomically(&cert, &leaf.cert_pem);
    (cert, key)
}

fn client_tls(ca_pem: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type TlsClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to `addr` as "localhost", with what the server presented.
async fn tls_connect(addr: SocketAddr, ca_pem: &str) -> (TlsClientStream, CertificateDer<'static>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = client_tls(ca_pem, &[b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let presented = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    (stream, presented)
}

/// The certificate a new handshake gets.
async fn presented_certificate(addr: SocketAddr, ca_pem: &str) -> CertificateDer<'static> {
    tls_connect(addr, ca_pem).await.1
}

// ---------------------------------------------------------------------------------------------
// An upstream that speaks TLS (HTTP/1.1 and WebSocket), like a server behind `https://`.

struct TlsUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
}

impl TlsUpstream {
    async fn spawn(leaf: &Leaf) -> TlsUpstream {
        let chain = vec![leaf.der.clone()];
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(vec![]));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, record) = (acceptor.clone(), record.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            record.lock().unwrap().push(req.headers().clone());
                            if req.headers().contains_key(http::header::UPGRADE) {
                                return Ok::<_, std::convert::Infallible>(
                                    latchkey::demo::websocket_echo(req),
                                );
                            }
                            Ok(Response::new(full(format!(
                                "tls upstream saw {} {}",
                                req.method(),
                                req.uri().path()
                            ))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TlsUpstream { addr, seen }
    }

    fn target(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn last(&self) -> http::HeaderMap {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// latchkey instances with the production options: TLS, redirect listener, drain deadline.

fn password_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| latchkey::auth::password::hash(PASSWORD).unwrap())
}

struct Instance {
    /// `https://localhost:PORT` with TLS, else `http://127.0.0.1:PORT`.
    base: String,
    api: String,
    public: SocketAddr,
    redirect: Option<SocketAddr>,
    ca_pem: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

struct Setup<'a> {
    /// Extra `[server]` keys.
    server: &'a str,
    store_url: Option<&'a str>,
    ca_pem: Option<String>,
    redirect: bool,
    drain: Duration,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            server: "",
            store_url: None,
            ca_pem: None,
            redirect: false,
            drain: Duration::from_secs(5),
        }
    }
}

impl Instance {
    async fn start(setup: Setup<'_>) -> Instance {
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
upstream_timeout = 5
{server}
[api]
listen = "127.0.0.1:0"
token = "{API_TOKEN}"
[store]
url = "{store}"
[sharing]
min_expires_in = 1
[login]
max_failures = 1000
[[users]]
name = "john"
password_hash = "{hash}"
groups = ["team-a"]
[[users]]
name = "nina"
password_hash = "{hash}"
groups = ["team-b"]
"#,
            server = setup.server,
            store = setup.store_url.unwrap_or("memory://"),
            hash = password_hash(),
        );
        let config = Config::from_sources(&text, &[]).expect("test config is valid");
        let store = latchkey::store::open(&config.store_url).await.unwrap();
        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let public_addr = public.local_addr().unwrap();
        let api_url = format!("http://{}", api.local_addr().unwrap());
        let mut redirect = None;
        let tls = match &config.tls {
            Some(files) => {
                let mut tls = latchkey::server::Tls::load(files).unwrap();
                if setup.redirect {
                    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                    redirect = Some(l.local_addr().unwrap());
                    tls.redirect = Some(l);
                }
                Some(tls)
            }
            None => None,
        };
        let base = match tls {
            Some(_) => format!("https://localhost:{}", public_addr.port()),
            None => format!("http://{public_addr}"),
        };
        let app = App::new(config, store).await;
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(latchkey::serve(
            latchkey::Listeners { public, api, tls },
            app,
            async move {
                let _ = rx.await;
            },
            setup.drain,
        ));
        Instance {
            base,
            api: api_url,
            public: public_addr,
            redirect,
            ca_pem: setup.ca_pem,
            stop: Some(tx),
            done: Some(done),
        }
    }

    /// What SIGTERM does to the process: shutdown starts, `serve` keeps draining.
    fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Waits (at most `within`) for `serve` to return; true if it did.
    async fn stopped_within(&mut self, within: Duration) -> bool {
        let Some(done) = self.done.as_mut() else {
            return true;
        };
        if tokio::time::timeout(within, done).await.is_ok() {
            self.done = None;
            return true;
        }
        false
    }

    fn is_serving(&self) -> bool {
        self.done.as_ref().is_some_and(|d| !d.is_finished())
    }

    fn front(&self) -> Front {
        Front {
            base: self.base.clone(),
            addr: self.public,
            ca_pem: self.ca_pem.clone(),
        }
    }

    fn browser(&self) -> Browser {
        self.front().browser()
    }

    async fn signed_in(&self, user: &str) -> Browser {
        let b = self.browser();
        b.login(user).await;
        b
    }

    async fn post_route(&self, path: &str, body: serde_json::Value) -> StatusCode {
        reqwest::Client::new()
            .post(format!("{}/api/routes{path}", self.api))
            .header("authorization", format!("token {API_TOKEN}"))
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn metrics(&self) -> (String, prometheus_parse::Scrape) {
        let r = reqwest::get(format!("{}/metrics", self.api)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()["content-type"],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let text = r.text().await.unwrap();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("the exposition parses");
        (text, scrape)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// How clients reach an instance's public listener.
#[derive(Clone)]
struct Front {
    /// `https://localhost:PORT` with TLS, else `http://127.0.0.1:PORT`.
    base: String,
    addr: SocketAddr,
    /// The CA that signed the listener's certificate, with TLS.
    ca_pem: Option<String>,
}

impl Front {
    /// A browser-like client (cookie jar, no redirects) that trusts the test CA; it speaks
    /// HTTP/2 over TLS when ALPN offers it.
    fn browser(&self) -> Browser {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let mut b = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &self.ca_pem {
            b = b
                .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
                .resolve("localhost", self.addr);
        }
        Browser {
            base: self.base.clone(),
            client: b.build().unwrap(),
            jar,
        }
    }
}

/// A WebSocket through latchkey over TLS (wss), on a connection of its own.
async fn wss(
    front: &Front,
    browser: &Browser,
    path: &str,
) -> (
    tokio_tungstenite::WebSocketStream<TlsClientStream>,
    CertificateDer<'static>,
) {
    let (stream, presented) = tls_connect(front.addr, front.ca_pem.as_deref().unwrap()).await;
    let mut req = format!("wss://localhost:{}{path}", front.addr.port())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", browser.cookie_header(path).parse().unwrap());
    req.headers_mut()
        .insert("origin", front.base.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    (ws, presented)
}

async fn echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    let answer = tokio::time::timeout(GENEROUS, ws.next())
        .await
        .expect("the echo arrives")
        .expect("the socket is open")
        .expect("a message");
    assert_eq!(answer.into_text().unwrap().as_str(), text);
}

/// Waits for the socket to end (close frame, error or EOF); true if it did within `within`.
async fn closes_within<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, within: Duration) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .is_ok()
}

fn sample_value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one sample of {metric} {labels:?}, found {found:?}"
    );
    found[0]
}

// ---------------------------------------------------------------------------------------------
// TLS, HTTP/2, cookies, https upstreams, redirect.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http2_with_secure_cookies_and_reaches_https_upstreams() {
    let ca = TestCa::new("latchkey test CA");
    let dir = TempDir::new();
    let (cert, key) = install(&dir, &ca.leaf("latchkey"));
    let ca_file = dir.path("upstream-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let upstream = TlsUpstream::spawn(&ca.leaf("upstream")).await;
    let stranger = TlsUpstream::spawn(&TestCa::new("unknown CA").leaf("stranger")).await;
    let server = format!(
        "tls_cert = {cert:?}\ntls_key = {key:?}\nupstream_ca = {ca_file:?}\nhttp_redirect_listen = \"127.0.0.1:0\"\n"
    );
    let lk = Instance::start(Setup {
        server: &server,
        ca_pem: Some(ca.pem()),
        redirect: true,
        ..Setup::default()
    })
    .await;

    // https:// targets are accepted by the route API now, with the configured CA.
    let s = lk
        .post_route(
            "/user/john",
            json!({"user": "john", "server_name": "", "target": upstream.target()}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let s = lk
        .post_route(
            "/user/john/other",
            json!({"user": "john", "server_name": "other", "target": stranger.target()}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);

    // Signing in over TLS sets the __Host- cookie with Secure, HttpOnly, Path=/ and no Domain.
    let john = lk.browser();
    let xsrf = john.xsrf().await;
    let r = john
        .client
        .post(john.url("/hub/login"))
        .form(&[
            ("username", "john"),
            ("password", PASSWORD),
            ("_xsrf", &xsrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.version(), http::Version::HTTP_2, "ALPN chose h2");
    let set_cookie: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let session = set_cookie
        .iter()
        .find(|c| c.starts_with("__Host-latchkey-session="))
        .unwrap_or_else(|| panic!("a __Host- session cookie in {set_cookie:?}"));
    for attr in ["Secure", "HttpOnly", "Path=/", "SameSite=Lax"] {
        assert!(session.contains(attr), "{attr} missing from {session}");
    }
    assert!(!session.to_ascii_lowercase().contains("domain="));

    // HTTP/2 from the client, HTTP/1.1 over TLS to the upstream, request id passed along.
    let r = john.get("/user/john/tree").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), http::Version::HTTP_2);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(
        r.text().await.unwrap(),
        "tls upstream saw GET /user/john/tree"
    );
    let seen = upstream.last();
    assert_eq!(seen["x-request-id"], request_id.as_str());
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-latchkey-user"], "john");

    // A WebSocket over wss to latchkey and over TLS to the upstream.
    let (mut ws, _) = wss(&lk.front(), &john, "/user/john/api/kernels/k/channels").await;
    echo(&mut ws, "print(6*7)").await;
    ws.close(None).await.unwrap();

    // An upstream whose certificate no configured CA signed is not reached: 502.
    let r = john.get("/user/john/other/tree").await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(stranger.seen.lock().unwrap().is_empty());

    // The plain HTTP listener sends browsers to the same path on HTTPS.
    let redirect = lk.redirect.unwrap();
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = plain
        .get(format!(
            "http://localhost:{}/hub/login?next=%2Fuser%2Fjohn%2F",
            redirect.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        r.headers()["location"],
        format!(
            "https://localhost:{}/hub/login?next=%2Fuser%2Fjohn%2F",
            lk.public.port()
        )
        .as_str()
    );
    assert!(r.headers().contains_key("x-request-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_targets_need_a_trusted_certificate_without_an_upstream_ca() {
    // Without upstream_ca, upstreams are checked against the Mozilla roots: a private CA fails.
    let ca = TestCa::new("private CA");
    let upstream = TlsUpstream::spawn(&ca.leaf("upstream")).await;
    let lk = Instance::start(Setup::default()).await;
    let s = lk
        .post_route(
            "/user/john",
            json!({"user": "john", "server_name": "", "target": upstream.target()}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let john = lk.signed_in("john").await;
    assert_eq!(
        john.get("/user/john/").await.status(),
        StatusCode::BAD_GATEWAY
    );
    assert!(upstream.seen.lock().unwrap().is_empty());
}

#[test]
fn config_checks_the_production_keys() {
    let dir = TempDir::new();
    let bad_ca = dir.path("not-a-ca.pem");
    std::fs::write(&bad_ca, "no certificate here").unwrap();
    let text = format!(
        "[api]\ntoken = \"0123456789abcdef\"\n[server]\nhttp_redirect_listen = \"127.0.0.1:8080\"\nupstream_ca = {bad_ca:?}\ntls_reload_interval = 0\n"
    );
    let problems = Config::from_sources(&text, &[]).unwrap_err().join("\n");
    for needle in [
        "server.http_redirect_listen needs server.tls_cert",
        "server.upstream_ca",
        "server.tls_reload_interval",
    ] {
        assert!(
            problems.contains(needle),
            "{needle} missing from {problems}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Certificate reload.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_is_served_to_new_connections_while_live_ones_carry_on() {
    let ca = TestCa::new("latchkey test CA");
    let dir = TempDir::new();
    let first = ca.leaf("first");
    let (cert, key) = install(&dir, &first);
    let upstream = Upstream::spawn().await;
    let server = format!("tls_cert = {cert:?}\ntls_key = {key:?}\ntls_reload_interval = 1\n");
    let lk = Instance::start(Setup {
        server: &server,
        ca_pem: Some(ca.pem()),
        ..Setup::default()
    })
    .await;
    let ca_pem = ca.pem();
    lk.post_route(
        "/user/john",
        json!({"user": "john", "server_name": "", "target": upstream.target()}),
    )
    .await;
    let john = lk.signed_in("john").await;

    // Two live connections made with the first certificate: a WebSocket, and an HTTP/1.1
    // keep-alive connection.
    let (mut ws, presented) = wss(&lk.front(), &john, "/user/john/ws").await;
    assert_eq!(presented, first.der);
    echo(&mut ws, "before").await;
    let (stream, presented) = tls_connect(lk.public, &ca_pem).await;
    assert_eq!(presented, first.der);
    let (mut http, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let cookie = john.cookie_header("/user/john/");
    let get = |path: &str| {
        Request::get(path)
            .header("host", format!("localhost:{}", lk.public.port()))
            .header("cookie", cookie.clone())
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let r = http.send_request(get("/user/john/one")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.into_body().collect().await.unwrap();

    // The files change: new handshakes get the second certificate.
    let second = ca.leaf("second");
    install(&dir, &second);
    let reloaded = eventually(GENEROUS, async || {
        presented_certificate(lk.public, &ca_pem).await == second.der
    })
    .await;
    assert!(reloaded, "new connections get the new certificate");

    // The live connections were not dropped.
    echo(&mut ws, "after").await;
    let r = http.send_request(get("/user/john/two")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.into_body().collect().await.unwrap().to_bytes(),
        "upstream saw GET /user/john/two"
    );
    let (_, scrape) = lk.metrics().await;
    assert!(
        sample_value(
            &scrape,
            "latchkey_tls_certificate_reloads_total",
            &[("result", "ok")]
        ) >= 1.0
    );
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_a_broken_one_is_refused() {
    // This process keeps running on SIGHUP from here on: tokio's handler replaces the default.
    let mut own_hangup =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).unwrap();
    let hangup = || {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("kill -HUP {}", std::process::id()))
            .status()
            .unwrap();
        assert!(status.success());
    };

    let ca = TestCa::new("latchkey test CA");
    let dir = TempDir::new();
    let first = ca.leaf("first");
    let (cert, key) = install(&dir, &first);
    // File checks an hour apart: only SIGHUP can make the reloads below happen in time.
    let server = format!("tls_cert = {cert:?}\ntls_key = {key:?}\ntls_reload_interval = 3600\n");
    let lk = Instance::start(Setup {
        server: &server,
        ca_pem: Some(ca.pem()),
        ..Setup::default()
    })
    .await;
    let ca_pem = ca.pem();
    assert_eq!(presented_certificate(lk.public, &ca_pem).await, first.der);

    // A key that does not fit the certificate: the reload fails, the old certificate stays.
    let other = ca.leaf("other");
    write_atomically(&cert, &ca.leaf("second").cert_pem);
    write_atomically(&key, &other.key_pem);
    let failed = eventually(GENEROUS, async || {
        hangup();
        own_hangup.recv().await;
        let (_, scrape) = lk.metrics().await;
        scrape.samples.iter().any(|s| {
            s.metric == "latchkey_tls_certificate_reloads_total"
                && s.labels.get("result") == Some("error")
        })
    })
    .await;
    assert!(failed, "the broken pair is reported");
    assert_eq!(presented_certificate(lk.public, &ca_pem).await, first.der);

    // A good pair: SIGHUP swaps it in.
    let third = ca.leaf("third");
    install(&dir, &third);
    let reloaded = eventually(GENEROUS, async || {
        hangup();
        own_hangup.recv().await;
        presented_certificate(lk.public, &ca_pem).await == third.der
    })
    .await;
    assert!(reloaded, "SIGHUP reloads the certificate");
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown and readiness.

async fn john_with_a_websocket(
    lk: &Instance,
    upstream: &Upstream,
) -> (
    Browser,
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) {
    let s = lk
        .post_route(
            "/user/john",
            json!({"user": "john", "server_name": "", "target": upstream.target()}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let john = lk.signed_in("john").await;
    let mut ws = john
        .websocket("/user/john/api/kernels/k/channels")
        .await
        .unwrap();
    echo(&mut ws, "hello").await;
    (john, ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_readiness_fails_listeners_close_and_a_live_websocket_works_until_closed() {
    let upstream = Upstream::spawn().await;
    let mut lk = Instance::start(Setup {
        // Readiness fails at once; the listeners stay open this long for load balancers.
        server: "shutdown_delay = 5\n",
        drain: Duration::from_secs(120),
        ..Setup::default()
    })
    .await;
    let (_john, mut ws) = john_with_a_websocket(&lk, &upstream).await;
    let ready = reqwest::get(format!("{}/readyz", lk.api)).await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    lk.begin_shutdown();
    // Readiness answers 503 on both listeners while they still accept connections.
    let draining = eventually(GENEROUS, async || {
        let public = reqwest::get(format!("{}/readyz", lk.base)).await;
        public.is_ok_and(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    assert!(draining, "readiness fails once shutdown starts");
    let api = reqwest::get(format!("{}/readyz", lk.api)).await.unwrap();
    assert_eq!(api.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (_, scrape) = lk.metrics().await;
    assert_eq!(sample_value(&scrape, "latchkey_draining", &[]), 1.0);
    assert_eq!(
        sample_value(&scrape, "latchkey_websockets_active", &[]),
        1.0
    );

    // Then the listeners close: new connections are refused.
    let closed = eventually(GENEROUS, async || {
        TcpStream::connect(lk.public).await.is_err()
    })
    .await;
    assert!(closed, "the public listener closes");

    // The WebSocket opened before keeps working, and latchkey waits for it.
    echo(&mut ws, "still here").await;
    echo(&mut ws, "and here").await;
    assert!(lk.is_serving(), "serve drains while a WebSocket is open");

    // The client closes it: the drain is complete long before the 120 s deadline.
    ws.close(None).await.unwrap();
    assert!(closes_within(&mut ws, GENEROUS).await);
    drop(ws);
    assert!(
        lk.stopped_within(GENEROUS).await,
        "serve returns once the last WebSocket closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_still_open_at_the_drain_deadline_are_closed() {
    let upstream = Upstream::spawn().await;
    let mut lk = Instance::start(Setup {
        drain: Duration::from_secs(5),
        ..Setup::default()
    })
    .await;
    let (_john, mut ws) = john_with_a_websocket(&lk, &upstream).await;
    lk.begin_shutdown();
    // Until the deadline the socket works; the client never closes it.
    echo(&mut ws, "draining").await;
    assert!(
        closes_within(&mut ws, GENEROUS).await,
        "the deadline closes the socket"
    );
    assert!(lk.stopped_within(GENEROUS).await, "serve returns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_store_while_liveness_stays_up() {
    let mut lk = Latchkey::spawn(Backend::Redis).await;
    let client = reqwest::Client::new();
    let status = async |url: String| client.get(url).send().await.unwrap().status();
    for base in [&lk.base, &lk.api] {
        assert_eq!(status(format!("{base}/readyz")).await, StatusCode::OK);
    }

    lk.redis.as_mut().unwrap().kill();
    for base in [lk.base.clone(), lk.api.clone()] {
        let down = eventually(GENEROUS, async || {
            status(format!("{base}/readyz")).await == StatusCode::SERVICE_UNAVAILABLE
        })
        .await;
        assert!(down, "readiness fails without Redis on {base}");
        for path in ["/healthz", "/_chp_healthz"] {
            assert_eq!(status(format!("{base}{path}")).await, StatusCode::OK);
        }
    }
    let text = client
        .get(format!("{}/metrics", lk.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(sample_value(&scrape, "latchkey_store_errors_total", &[("op", "ping")]) >= 1.0);

    lk.redis.as_mut().unwrap().restart().await;
    for base in [lk.base.clone(), lk.api.clone()] {
        let up = eventually(GENEROUS, async || {
            status(format!("{base}/readyz")).await == StatusCode::OK
        })
        .await;
        assert!(up, "readiness recovers with Redis on {base}");
    }
    lk.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Metrics.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_story_in_openmetrics_without_names_or_secrets() {
    let upstream = Upstream::spawn().await;
    let lk = Instance::start(Setup::default()).await;
    let (john, mut ws) = john_with_a_websocket(&lk, &upstream).await;
    let nina = lk.signed_in("nina").await;
    let (code, _) = john
        .invite("john/", json!({"expires_in": 3600, "role": "use"}))
        .await;
    assert_eq!(nina.accept(&code).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(nina.get("/user/john/tree").await.status(), StatusCode::OK);
    assert_eq!(nina.get("/hub/home").await.status(), StatusCode::OK);
    assert_eq!(
        nina.get("/hub/api/users/nina/shared").await.status(),
        StatusCode::OK
    );
    john.revoke("john/", "nina").await;
    assert_eq!(
        nina.get("/user/john/tree").await.status(),
        StatusCode::FORBIDDEN
    );

    let (text, scrape) = lk.metrics().await;
    // OpenMetrics: ends with # EOF, and every other line is a descriptor or a sample the
    // Prometheus parser understands.
    assert!(text.ends_with("# EOF\n"));
    for line in text.lines() {
        let known = line.starts_with("# HELP ")
            || line.starts_with("# TYPE ")
            || line.starts_with("# UNIT ")
            || line == "# EOF"
            || matches!(
                prometheus_parse::LineInfo::parse(line),
                prometheus_parse::LineInfo::Sample { .. }
            );
        assert!(known, "not an OpenMetrics line: {line:?}");
    }
    let at_least = |metric: &str, labels: &[(&str, &str)], n: f64| {
        let v = sample_value(&scrape, metric, labels);
        assert!(v >= n, "{metric} {labels:?} = {v}, expected at least {n}");
    };
    at_least(
        "latchkey_requests_total",
        &[("class", "proxy"), ("status", "2xx")],
        1.0,
    );
    at_least(
        "latchkey_requests_total",
        &[("class", "proxy"), ("status", "1xx")],
        1.0,
    );
    at_least(
        "latchkey_requests_total",
        &[("class", "proxy"), ("status", "4xx")],
        1.0,
    );
    at_least(
        "latchkey_requests_total",
        &[("class", "page"), ("status", "3xx")],
        1.0,
    );
    at_least(
        "latchkey_requests_total",
        &[("class", "api"), ("status", "2xx")],
        2.0,
    );
    at_least(
        "latchkey_requests_total",
        &[("class", "route_api"), ("status", "2xx")],
        1.0,
    );
    at_least(
        "latchkey_request_duration_seconds",
        &[("class", "proxy")],
        3.0,
    );
    assert_eq!(
        sample_value(&scrape, "latchkey_invites_created_total", &[]),
        1.0
    );
    assert_eq!(
        sample_value(&scrape, "latchkey_invites_accepted_total", &[]),
        1.0
    );
    assert_eq!(
        sample_value(
            &scrape,
            "latchkey_revocations_total",
            &[("kind", "grantee")]
        ),
        1.0
    );
    assert_eq!(
        sample_value(&scrape, "latchkey_websockets_active", &[]),
        1.0
    );
    assert_eq!(sample_value(&scrape, "latchkey_routes", &[]), 1.0);
    assert_eq!(sample_value(&scrape, "latchkey_draining", &[]), 0.0);
    at_least(
        "latchkey_store_operation_duration_seconds",
        &[("op", "accept_invite")],
        1.0,
    );
    at_least(
        "latchkey_store_operation_duration_seconds",
        &[("op", "create_invite")],
        1.0,
    );
    // Label values are closed sets: no user, path, code or token.
    for secret_or_name in ["john", "nina", "/user", code.as_str(), API_TOKEN] {
        assert!(
            !text.contains(secret_or_name),
            "{secret_or_name} appears in the metrics"
        );
    }

    ws.close(None).await.unwrap();
    assert!(closes_within(&mut ws, GENEROUS).await);
    drop(ws);
    let gone = eventually(GENEROUS, async || {
        let (_, scrape) = lk.metrics().await;
        sample_value(&scrape, "latchkey_websockets_active", &[]) == 0.0
    })
    .await;
    assert!(gone, "the gauge returns to 0 when the socket closes");
}

// ---------------------------------------------------------------------------------------------
// Logs.

/// Log output collected from one thread's subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// latchkey on a thread of its own whose every event, at TRACE level and from every crate
/// (`log` records included, as `latchkey serve` forwards them), goes to `captured` as JSON
/// lines. The test's clients and upstreams run on other threads, so what is captured is
/// latchkey's alone.
fn latchkey_logging_everything(
    captured: Captured,
    store_url: String,
    server: String,
    ca_pem: String,
) -> (
    std::sync::mpsc::Receiver<(Front, String)>,
    oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let _ = tracing_log::LogTracer::init();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut lk = Instance::start(Setup {
                    server: &server,
                    store_url: Some(&store_url),
                    ca_pem: Some(ca_pem),
                    ..Setup::default()
                })
                .await;
                addr_tx.send((lk.front(), lk.api.clone())).unwrap();
                let _ = stop_rx.await;
                lk.begin_shutdown();
                lk.stopped_within(GENEROUS).await;
            });
        });
    });
    (addr_rx, stop_tx, thread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_keep_every_secret_out_and_have_one_access_line_per_request() {
    // The whole production path: Redis, TLS with HTTP/2 from browsers, TLS to the upstream.
    let redis = Redis::start().await;
    let ca = TestCa::new("latchkey test CA");
    let dir = TempDir::new();
    let (cert, key) = install(&dir, &ca.leaf("latchkey"));
    let ca_file = dir.path("upstream-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let upstream = TlsUpstream::spawn(&ca.leaf("upstream")).await;
    let server = format!("tls_cert = {cert:?}\ntls_key = {key:?}\nupstream_ca = {ca_file:?}\n");
    let captured = Captured::default();
    let (addr, stop, thread) =
        latchkey_logging_everything(captured.clone(), redis.url(), server, ca.pem());
    let (front, api) = tokio::task::spawn_blocking(move || addr.recv().unwrap())
        .await
        .unwrap();
    let mut request_ids: Vec<String> = vec![];
    let mut note = |r: &reqwest::Response| {
        request_ids.push(r.headers()["x-request-id"].to_str().unwrap().to_owned());
    };

    // The upstream credential latchkey injects, and the route API token that registers it.
    let upstream_credential = format!("token upstream-{}", latchkey::secret::random_id());
    let r = reqwest::Client::new()
        .post(format!("{api}/api/routes/user/john"))
        .header("authorization", format!("token {API_TOKEN}"))
        .body(
            json!({"user": "john", "server_name": "", "target": upstream.target(),
                   "upstream_headers": {"authorization": upstream_credential}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    note(&r);

    let john = front.browser();
    let nina = front.browser();
    john.login("john").await;
    nina.login("nina").await;
    let john_session = john.cookie("__Host-latchkey-session", "/").unwrap();
    let nina_session = nina.cookie("__Host-latchkey-session", "/").unwrap();

    // An API token, used in a header.
    let r = john
        .api(
            reqwest::Method::POST,
            "/hub/api/users/john/tokens",
            Some(json!({"note": "ci"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.version(), http::Version::HTTP_2);
    note(&r);
    let token: serde_json::Value = r.json().await.unwrap();
    let api_token = token["token"].as_str().unwrap().to_owned();
    let r = front
        .browser()
        .client
        .get(front.browser().url("/hub/api/shares/john/"))
        .header("authorization", format!("token {api_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    note(&r);

    // Invite, a look at the accept page, a wrong code, acceptance, use, WebSocket, revoke.
    let (code, _) = john.invite("john/", json!({"role": "use"})).await;
    let r = nina.get(&format!("/hub/accept-share?code={code}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    note(&r);
    let wrong_code = latchkey::secret::Secret::generate().expose().to_owned();
    let r = nina.accept(&wrong_code).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    note(&r);
    let r = nina.accept(&code).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    note(&r);
    let jupyter_token = format!("jt-{}", latchkey::secret::random_id());
    let r = nina
        .get(&format!("/user/john/tree?token={jupyter_token}"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    note(&r);
    let forwarded_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let seen = upstream.last();
    assert_eq!(seen["x-request-id"], forwarded_id.as_str());
    assert_eq!(seen["authorization"], upstream_credential.as_str());
    let (mut ws, _) = wss(&front, &nina, "/user/john/api/kernels/k/channels").await;
    echo(&mut ws, "print(6*7)").await;
    let r = john
        .api(
            reqwest::Method::PATCH,
            "/hub/api/shares/john/",
            Some(json!({"user": "nina"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    note(&r);
    assert!(closes_within(&mut ws, GENEROUS).await);
    let r = nina.get("/user/john/tree").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    note(&r);
    let refused_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let page = r.text().await.unwrap();
    assert!(
        page.contains(&refused_id),
        "the error page shows the request id"
    );

    let _ = stop.send(());
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();
    let logs = captured.text();
    for level in ["DEBUG", "TRACE"] {
        assert!(
            logs.contains(&format!("\"level\":\"{level}\"")),
            "{level} events were captured"
        );
    }

    for (what, secret) in [
        ("invite code", code.as_str()),
        ("wrong invite code", wrong_code.as_str()),
        ("john's session id", john_session.as_str()),
        ("nina's session id", nina_session.as_str()),
        ("API token", api_token.as_str()),
        ("route API token", API_TOKEN),
        ("upstream credential", upstream_credential.as_str()),
        ("token in a query", jupyter_token.as_str()),
        ("password", PASSWORD),
    ] {
        assert!(!logs.contains(secret), "the {what} appears in the logs");
    }

    // Exactly one access line per request, carrying the id the client got.
    let access: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "latchkey::access")
        .collect();
    for id in &request_ids {
        let n = access
            .iter()
            .filter(|v| v["request_id"] == id.as_str())
            .count();
        assert_eq!(n, 1, "access lines for request {id}");
    }
    let mut ids: Vec<&str> = access
        .iter()
        .map(|v| v["request_id"].as_str().unwrap())
        .collect();
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total, "no request has two access lines");
    eprintln!(
        "captured {} log lines ({} access lines) from the flow",
        logs.lines().count(),
        total
    );
}
