//! Accepting connections: TCP, optional TLS (with certificate reload), HTTP/1.1 and HTTP/2
//! with upgrades, the HTTP-to-HTTPS redirect listener, and graceful shutdown. No product logic
//! lives here.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::app::App;
use crate::h1::Served;
use crate::http_util::{self, Body};
use crate::metrics::Class;
use crate::tls::ReloadingCert;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The listeners of one latchkey instance, bound by the caller.
pub struct Listeners {
    pub public: TcpListener,
    pub api: TcpListener,
    /// TLS on the public listener.
    pub tls: Option<Tls>,
}

/// TLS for the public listener.
pub struct Tls {
    /// The certificate, reloaded on SIGHUP and when its files change
    /// (`[server] tls_reload_interval`).
    pub cert: Arc<ReloadingCert>,
    /// A plain HTTP listener that answers every request with a redirect to HTTPS.
    pub redirect: Option<TcpListener>,
}

impl Tls {
    /// Reads the configured certificate and key.
    pub fn load(files: &crate::config::TlsFiles) -> Result<Tls, String> {
        Ok(Tls {
            cert: ReloadingCert::load(&files.cert, &files.key)?,
            redirect: None,
        })
    }
}

fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // A client may shut down its sending side once its request is out (nc -N, health
        // checkers): it still gets its answer.
        .half_close(true)
        .max_headers(128)
        .max_buf_size(64 * 1024);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(64 * 1024);
    b
}

/// Serves until `shutdown` resolves, then shuts down gracefully:
/// 1. readiness (`/readyz`) answers 503 at once;
/// 2. after `[server] shutdown_delay`, the listeners close;
/// 3. HTTP requests in flight and open WebSockets may finish until `drain` has passed since
///    the shutdown began; WebSockets still open then are closed and `serve` returns.
pub async fn serve(
    listeners: Listeners,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let background = tokio::spawn(app.clone().run_background());
    let https_port = listeners
        .public
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(443);
    let mut loops = vec![];
    let mut cert_watch = None;
    let acceptor = match listeners.tls {
        Some(tls) => {
            let acceptor = match tls.cert.acceptor() {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "cannot configure TLS");
                    background.abort();
                    return;
                }
            };
            let metrics_app = app.clone();
            cert_watch = Some(tokio::spawn(
                tls.cert
                    .clone()
                    .watch(app.config.tls_reload_interval, move |ok| {
                        metrics_app.metrics.tls_reloaded(ok)
                    }),
            ));
            if let Some(redirect) = tls.redirect {
                loops.push(tokio::spawn(accept_loop(
                    redirect,
                    None,
                    app.clone(),
                    stop_rx.clone(),
                    Kind::Redirect { https_port },
                )));
            }
            Some(acceptor)
        }
        None => None,
    };
    loops.push(tokio::spawn(accept_loop(
        listeners.public,
        acceptor,
        app.clone(),
        stop_rx.clone(),
        Kind::Public,
    )));
    loops.push(tokio::spawn(accept_loop(
        listeners.api,
        None,
        app.clone(),
        stop_rx,
        Kind::RouteApi,
    )));

    shutdown.await;
    let deadline = tokio::time::Instant::now() + drain;
    app.draining.store(true, Ordering::SeqCst);
    let delay = app.config.shutdown_delay;
    tracing::info!(
        delay_s = delay.as_secs(),
        drain_s = drain.as_secs(),
        "shutting down: readiness answers 503"
    );
    if !delay.is_zero() {
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + delay)).await;
    }
    tracing::info!(
        websockets = app.tracker.len(),
        "listeners closed; draining requests and WebSockets"
    );
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout_at(deadline, async {
        for l in loops {
            let _ = l.await;
        }
    })
    .await;
    app.tracker.close();
    if tokio::time::timeout_at(deadline, app.tracker.wait())
        .await
        .is_err()
    {
        let closed = app.connections.close_where(|_| true);
        tracing::warn!(
            websockets = app.tracker.len(),
            closed,
            "drain deadline passed: closing what is still open"
        );
    }
    background.abort();
    if let Some(w) = cert_watch {
        w.abort();
    }
    tracing::info!("stopped");
}

#[derive(Clone, Copy)]
enum Kind {
    Public,
    RouteApi,
    /// Plain HTTP that redirects to HTTPS on this port (unless `public_url` says otherwise).
    Redirect {
        https_port: u16,
    },
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
    kind: Kind,
) {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(builder());
    let inherited = nodelay_for_every_accepted(&listener);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        if !inherited {
            let _ = stream.set_nodelay(true);
        }
        let conn = Connection {
            app: app.clone(),
            peer,
            kind,
            tls: false,
            builder: builder.clone(),
            watcher: graceful.watcher(),
            stop: stop.clone(),
        };
        // The connection's future is several KiB (hyper's state machines and the TLS handshake
        // among its states). Spawned as it is, it was copied whole on its way into the task and
        // again when the task ended, for every connection; built once on the heap behind a
        // small future, it is not.
        let tls = tls.clone();
        tokio::spawn(async move { Box::pin(conn.serve(stream, tls)).await });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Sets `TCP_NODELAY` on the listening socket, which Linux copies to every connection it
/// accepts: one system call at start instead of one per connection. False where it cannot be
/// relied on (then each accepted connection gets it).
fn nodelay_for_every_accepted(listener: &TcpListener) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: a valid socket descriptor, and a pointer to an int with its size.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = listener;
        false
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    app: Arc<App>,
    peer: SocketAddr,
    kind: Kind,
    /// Over TLS (set once the handshake is done).
    tls: bool,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    stop: watch::Receiver<bool>,
}

impl Connection {
    /// Serves the connection to its end: plain HTTP/1.1 on the public listener takes latchkey's
    /// own path; TLS and everything else (and what that path hands over) goes to hyper. The
    /// rarer paths are boxed, so that a connection on the common one carries only its own state.
    async fn serve(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        match tls {
            Some(acceptor) => Box::pin(self.serve_tls(stream, acceptor)).await,
            None if matches!(self.kind, Kind::Public) => self.serve_h1(stream).await,
            None => Box::pin(self.serve_hyper(stream)).await,
        }
    }

    async fn serve_tls(mut self, stream: TcpStream, acceptor: TlsAcceptor) {
        let peer = self.peer;
        // The handshake runs here, in the connection's task, so a slow client never holds up
        // `accept`.
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        self.tls = true;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        if matches!(self.kind, Kind::Public) && !h2 {
            self.serve_h1(stream).await;
        } else {
            self.serve_hyper(stream).await;
        }
    }

    async fn serve_h1<IO>(self, stream: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        match crate::h1::serve(&self.app, stream, self.peer, self.tls, &self.stop).await {
            Served::Closed => {}
            Served::Handoff(rest) => Box::pin(self.serve_hyper(rest)).await,
            // Upgraded connections live in the tracker, as hyper's do: shutdown waits for them
            // until its drain deadline.
            Served::Tunnel(t) => drop(self.app.tracker.spawn(t.run())),
        }
    }

    /// hyper serves the connection (HTTP/1.1 or HTTP/2, with upgrades) until it closes or
    /// graceful shutdown ends it.
    async fn serve_hyper<IO>(self, stream: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = service(self.app, self.peer, self.tls, self.kind);
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        let _ = self.watcher.watch(conn.into_owned()).await;
    }
}

fn service(
    app: Arc<App>,
    peer: SocketAddr,
    tls: bool,
    kind: Kind,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send,
> + Clone {
    service_fn(move |req| {
        let app = app.clone();
        async move {
            Ok(match kind {
                Kind::Public => app.handle(req, peer, tls).await,
                Kind::RouteApi => crate::api::routes::handle(app, req).await,
                Kind::Redirect { https_port } => redirect_to_https(&app, &req, https_port),
            })
        }
    })
}

/// 308 to the same path and query over HTTPS: on `public_url` when it is an https URL, else on
/// the host the client asked for, at the TLS listener's port.
fn redirect_to_https(app: &App, req: &Request<Incoming>, https_port: u16) -> Response<Body> {
    let started = std::time::Instant::now();
    let request_id = crate::secret::random_id();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .or_else(|| req.uri().authority().cloned());
    let location = match app.config.public_url.as_deref() {
        Some(base) if base.starts_with("https://") => Some(format!("{base}{pq}")),
        _ => host.map(|a| {
            let port = if https_port == 443 {
                String::new()
            } else {
                format!(":{https_port}")
            };
            format!("https://{}{port}{pq}", a.host())
        }),
    };
    let mut resp = match location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        Some(location) => {
            let mut r = Response::new(http_util::empty());
            *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
            r.headers_mut().insert(header::LOCATION, location);
            r
        }
        None => crate::error::Error::bad_request(
            "This address only redirects to HTTPS, and the request names no host.",
        )
        .render(&request_id, true),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().entry("x-request-id").or_insert(v);
    }
    tracing::info!(
        target: "latchkey::access",
        request_id = %request_id,
        listener = "redirect",
        method = %req.method(),
        path = %req.uri().path(),
        status = resp.status().as_u16(),
    );
    app.metrics
        .request(Class::Redirect, resp.status(), started.elapsed());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nagle's algorithm is off on every accepted connection, set once on the listener.
    #[tokio::test]
    async fn accepted_connections_have_nodelay_from_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let inherited = nodelay_for_every_accepted(&listener);
        assert_eq!(inherited, cfg!(target_os = "linux"));
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, _client) = tokio::join!(listener.accept(), client);
        let (stream, _) = accepted.expect("accept");
        if inherited {
            assert!(
                stream.nodelay().unwrap(),
                "TCP_NODELAY came with the connection"
            );
        }
    }

    /// The plain HTTP/1.1 connection, the common one, is what every accepted connection's
    /// future is sized by; hyper's and the TLS handshake's states, which made it 14 KiB, stay
    /// behind boxes.
    #[tokio::test]
    async fn a_plain_connection_carries_only_its_own_state() {
        let config =
            crate::config::Config::from_sources("[api]\ntoken = \"0123456789abcdef\"\n", &[])
                .expect("config");
        let store = crate::store::open("memory://").await.expect("store");
        let app = App::new(config, store).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, client) = tokio::join!(listener.accept(), client);
        let (stream, peer) = accepted.expect("accept");
        let _client = client.expect("connect");
        let (_stop_tx, stop) = watch::channel(false);
        let conn = Connection {
            app,
            peer,
            kind: Kind::Public,
            tls: false,
            builder: Arc::new(builder()),
            watcher: GracefulShutdown::new().watcher(),
            stop,
        };
        let future = conn.serve(stream, None);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 6 * 1024, "a connection's future is {size} bytes");
    }
}
