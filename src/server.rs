//! Accepting connections: TCP, optional TLS, HTTP/1.1 and HTTP/2 with upgrades, graceful
//! shutdown. No product logic lives here.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::app::App;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The two listeners of one latchkey instance, bound by the caller.
pub struct Listeners {
    pub public: TcpListener,
    pub api: TcpListener,
    pub tls: Option<TlsAcceptor>,
}

fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(128)
        .max_buf_size(64 * 1024);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(64 * 1024);
    b
}

/// Serves until `shutdown` resolves, then drains HTTP requests and WebSockets for at most
/// `drain` before returning.
pub async fn serve(
    listeners: Listeners,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let background = tokio::spawn(app.clone().run_background());
    let public = tokio::spawn(accept_loop(
        listeners.public,
        listeners.tls,
        app.clone(),
        stop_rx.clone(),
        Kind::Public,
    ));
    let api = tokio::spawn(accept_loop(
        listeners.api,
        None,
        app.clone(),
        stop_rx,
        Kind::RouteApi,
    ));
    shutdown.await;
    tracing::info!("shutting down: draining connections");
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + drain;
    let _ = tokio::time::timeout_at(deadline, async {
        let _ = public.await;
        let _ = api.await;
    })
    .await;
    app.tracker.close();
    let _ = tokio::time::timeout_at(deadline, app.tracker.wait()).await;
    background.abort();
    tracing::info!("stopped");
}

#[derive(Clone, Copy)]
enum Kind {
    Public,
    RouteApi,
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
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    )
                    .await
                    {
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
                    let conn = builder.serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        service(app, peer, true, kind),
                    );
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                None => {
                    let conn = builder.serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        service(app, peer, false, kind),
                    );
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn service(
    app: Arc<App>,
    peer: SocketAddr,
    tls: bool,
    kind: Kind,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = http::Response<crate::http_util::Body>,
    Error = std::convert::Infallible,
    Future = impl Future<
        Output = Result<http::Response<crate::http_util::Body>, std::convert::Infallible>,
    > + Send,
> + Clone {
    service_fn(move |req| {
        let app = app.clone();
        async move {
            Ok(match kind {
                Kind::Public => app.handle(req, peer, tls).await,
                Kind::RouteApi => crate::api::routes::handle(app, req).await,
            })
        }
    })
}

/// Builds a TLS acceptor from PEM files, with the ring provider and ALPN h2 + http/1.1.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot parse {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the TLS certificate and key do not fit: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
