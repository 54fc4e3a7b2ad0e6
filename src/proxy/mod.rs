//! Forwarding to upstreams: HTTP with streaming bodies both ways, and WebSocket upgrades.

pub(crate) mod cancel;
pub mod headers;
pub(crate) mod pipe;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::app::App;
use crate::clock;
use crate::connections::{Registrar, Registration};
use crate::error::Error;
use crate::http_util::{Body, BoxError};
use crate::routes::Route;
use crate::tls::UpstreamConnector;

pub type UpstreamClient = Client<UpstreamConnector, Body>;

/// Most header fields an upstream's answer may have, on either path (hyper's client allows 100
/// by default, latchkey's HTTP/1.1 path as many as this).
pub const MAX_UPSTREAM_HEADERS: usize = 128;

/// The pooled client for every upstream, `http://` and `https://`. `https://` upstreams are
/// verified against `upstream_ca` when it holds certificates, else against the Mozilla roots.
pub fn client(upstream_ca: &[rustls_pki_types::CertificateDer<'static>]) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
    let connector =
        UpstreamConnector::new(connector, crate::tls::upstream_client_config(upstream_ca));
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .http1_max_headers(MAX_UPSTREAM_HEADERS)
        .build(connector)
}

/// Refuses request paths whose meaning could differ between latchkey and the upstream: encoded
/// slashes and backslashes, backslashes, and dot segments (literal or encoded). What latchkey
/// authorises is then byte for byte what it forwards.
pub fn check_path(path: &str) -> Result<(), Error> {
    let bytes = path.as_bytes();
    let encoded = |code: &[u8]| bytes.windows(3).any(|w| w.eq_ignore_ascii_case(code));
    if bytes.contains(&b'\\') || (bytes.contains(&b'%') && (encoded(b"%2f") || encoded(b"%5c"))) {
        return Err(Error::bad_request(
            "Encoded slashes and backslashes are not allowed in paths.",
        ));
    }
    let dots = |seg: &str| {
        [".", "..", "%2e", "%2e%2e", ".%2e", "%2e."]
            .iter()
            .any(|d| seg.eq_ignore_ascii_case(d))
    };
    if path.split('/').any(dots) {
        return Err(Error::bad_request("Dot segments are not allowed in paths."));
    }
    if !path.starts_with('/') {
        return Err(Error::bad_request("The request path must start with '/'."));
    }
    Ok(())
}

/// Longest request target accepted (path and query), in bytes.
const MAX_URI: usize = 8 * 1024;

/// Refuses overlong request targets (414). Conflicting framing needs no check here: hyper
/// refuses duplicate Content-Lengths and, when Transfer-Encoding is present, drops
/// Content-Length and decodes the chunks itself (RFC 9112 section 6.3), so the body latchkey
/// forwards is re-framed for the upstream.
pub fn check_uri_length(uri: &Uri) -> Result<(), Error> {
    if uri.path_and_query().map_or(0, |p| p.as_str().len()) > MAX_URI {
        return Err(Error::UriTooLong);
    }
    Ok(())
}

/// The upstream path for a request path under a route, in two pieces: the target's base
/// path, then the rest of the request path.
pub fn upstream_path<'a>(route: &'a Route, path: &'a str) -> (&'a str, &'a str) {
    let rest = if route.strip_prefix && route.path != "/" {
        let r = path.get(route.path.len()..).unwrap_or("");
        if r.starts_with('/') { r } else { "/" }
    } else {
        path
    };
    (&route.target.base_path, rest)
}

/// The upstream URI for a request path under a route.
pub fn upstream_uri(route: &Route, path: &str, query: Option<&str>) -> Result<Uri, Error> {
    let (base, rest) = upstream_path(route, path);
    let mut pq = format!("{base}{rest}");
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    Uri::builder()
        .scheme(route.target.scheme.clone())
        .authority(route.target.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| Error::bad_request("The request path cannot be forwarded."))
}

/// Everything `forward` needs besides the request.
pub struct Forward<'a> {
    pub app: &'a App,
    pub route: Arc<Route>,
    /// Present for guarded routes: WebSockets and long answers are registered so that
    /// revocation can close them.
    pub registrar: Option<Registrar>,
}

/// Sends the request upstream and streams the answer back. WebSocket upgrades are joined into a
/// byte pipe that ends when either side closes or the registration is cancelled.
pub async fn forward(
    mut req: Request<Incoming>,
    uri: Uri,
    websocket: bool,
    f: Forward<'_>,
) -> Result<Response<Body>, Error> {
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let route = f.route.clone();
    let (body, sent) = SignalEnd::new(body.map_err(BoxError::from).boxed());
    let upstream_req = Request::from_parts(parts, body.boxed());
    route.touch(clock::now_millis());

    // The timeout counts from when the request body has been sent: a large upload is not an
    // upstream that is silent.
    let timeout = f.app.config.upstream_timeout;
    let silent = async move {
        let _ = sent.await;
        tokio::time::sleep(timeout).await;
    };
    let mut resp = tokio::select! {
        r = f.app.client.request(upstream_req) => match r {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(route = %route.path, error = %e, "upstream request failed");
                return Err(Error::UpstreamUnavailable);
            }
        },
        _ = silent => {
            tracing::warn!(route = %route.path, "upstream timed out");
            return Err(Error::UpstreamTimeout);
        }
    };
    route.touch(clock::now_millis());
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::prepare_response(resp.headers_mut(), switching);

    if switching {
        let Some(client_upgrade) = client_upgrade else {
            return Err(Error::UpstreamUnavailable);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let registration = f.app.register_any(f.registrar, true).await?;
        let cancel = registration
            .as_ref()
            .map(|r| r.cancel.clone())
            .unwrap_or_default();
        f.app.tracker.spawn(async move {
            let _registration = registration;
            let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade failed");
                    return;
                }
            };
            tunnel(
                TokioIo::new(client),
                TokioIo::new(upstream),
                &[],
                &route,
                &cancel,
            )
            .await;
        });
        let (parts, body) = resp.into_parts();
        return Ok(Response::from_parts(
            parts,
            body.map_err(BoxError::from).boxed(),
        ));
    }

    let (parts, body) = resp.into_parts();
    let long = may_outlast_access(hyper::body::Body::size_hint(&body).exact());
    let body: Body = match (f.registrar, long) {
        (Some(registrar), true) => {
            let registration = f.app.register(registrar, false).await?;
            Revocable {
                inner: body.map_err(BoxError::from).boxed(),
                cancelled: Box::pin(registration.cancel.clone().cancelled_owned()),
                _registration: registration,
            }
            .boxed()
        }
        _ => body.map_err(BoxError::from).boxed(),
    };
    Ok(Response::from_parts(parts, body))
}

/// Joins a client's WebSocket and its upstream until either side closes or access ends
/// (`cancel`). `early`: bytes the client sent behind its request, for the upstream first.
pub(crate) async fn tunnel<C, U>(
    client: C,
    upstream: U,
    early: &[u8],
    route: &Arc<Route>,
    cancel: &tokio_util::sync::CancellationToken,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = Touching::new(client, route.clone());
    let mut upstream = Touching::new(upstream, route.clone());
    let joined = async {
        tokio::io::AsyncWriteExt::write_all(&mut upstream, early).await?;
        pipe::copy_bidirectional(&mut client, &mut upstream).await
    };
    match cancel::until_cancelled(joined, cancel).await {
        Some(Ok((up, down))) => {
            tracing::debug!(to_upstream = up, to_client = down, "websocket closed");
        }
        Some(Err(_)) => {}
        None => tracing::info!(route = %route.path, "websocket closed: access ended"),
    }
}

/// Whether an answer of this length (None: not known) may outlast its user's access, and is
/// registered so that revocation cuts it off.
pub(crate) fn may_outlast_access(length: Option<u64>) -> bool {
    length.is_none_or(|n| n > LONG_ANSWER)
}

/// Answers with a length above this (bytes) are registered so that revocation can cut them
/// off; at most this much of a shorter one reaches a user whose access has just ended, and
/// registering every answer would cost the common, small ones.
const LONG_ANSWER: u64 = 64 * 1024;

/// A request body that says when it has been sent completely (or dropped).
struct SignalEnd {
    inner: Body,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SignalEnd {
    fn new(inner: Body) -> (Self, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut me = SignalEnd {
            inner,
            done: Some(tx),
        };
        if hyper::body::Body::is_end_stream(&me.inner) {
            me.finish();
        }
        (me, rx)
    }

    fn finish(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
    }
}

impl hyper::body::Body for SignalEnd {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.finish();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that ends as soon as access is revoked (long polls, event streams,
/// downloads without a length).
struct Revocable {
    inner: Body,
    cancelled: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    _registration: Registration,
}

impl hyper::body::Body for Revocable {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err("access revoked".into())));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }
}

/// Marks the route active whenever bytes arrive from either side of a WebSocket.
pub(crate) struct Touching<T> {
    io: T,
    route: Arc<Route>,
    last: i64,
}

impl<T> Touching<T> {
    pub(crate) fn new(io: T, route: Arc<Route>) -> Self {
        Touching { io, route, last: 0 }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Touching<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = clock::now_millis();
            // Coarse: one store of the time per second is plenty for activity tracking.
            if now - self.last >= 1000 {
                self.last = now;
                self.route.touch(now);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Touching<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ambiguous_paths_are_refused() {
        assert!(check_path("/user/john/lab").is_ok());
        assert!(check_path("/user/john/a%20b").is_ok());
        for bad in [
            "/user/john/../nina",
            "/user/john/%2e%2e/nina",
            "/user/john%2fx",
            "/user/john/%5c",
            "/user/john/.",
            "/user\\john",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}
