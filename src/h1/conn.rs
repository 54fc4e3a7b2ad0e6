//! The client side of the HTTP/1.1 path: read a request head, decide whether it is ours, run
//! the access check, forward, and go on with the next request on the connection.

use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Response, Uri, header};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::upstream::{self, Exchange, Exchanged, Failure, Scratch, Upstream};
use super::{RawFields, Rewind};
use crate::app::{App, Proxied, SessionMemo};
use crate::http_util::{self, Body};
use crate::routes::Route;

/// Most header fields a request may have here; more go to hyper (which allows as many).
const MAX_HEADERS: usize = 64;
/// Longest request head read here; longer ones go to hyper, which refuses them.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send a request head, counted from when latchkey starts
/// waiting for it (so also how long an idle keep-alive connection stays open).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How much earlier than `HEAD_TIMEOUT` the wait may end.
const HEAD_TIMEOUT_SLACK: Duration = Duration::from_secs(5);

/// How a client connection left this path.
pub enum Served<IO> {
    /// Closed, or to be closed.
    Closed,
    /// For hyper to serve the rest, every byte read from it so far in front.
    Handoff(Rewind<IO>),
    /// A WebSocket: run the tunnel (in a task of its own, so that none of this path's state
    /// stays with it).
    Tunnel(Tunnel<IO>),
}

/// A client connection joined to an upstream after a WebSocket upgrade.
pub struct Tunnel<IO> {
    io: IO,
    /// Bytes the client sent behind its request.
    early: Vec<u8>,
    websocket: upstream::Upgraded,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Tunnel<IO> {
    /// Runs until either side closes or access ends.
    pub async fn run(mut self) {
        self.websocket.run(&mut self.io, &self.early).await;
    }
}

/// Serves a client connection until it closes, hands it to hyper, or turns into a WebSocket.
pub async fn serve<IO>(
    app: &Arc<App>,
    io: IO,
    peer: SocketAddr,
    tls: bool,
    stop: &watch::Receiver<bool>,
) -> Served<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut c = Client {
        app,
        io,
        peer,
        tls,
        buf: BytesMut::with_capacity(4096),
        upstream: None,
        scratch: Scratch::default(),
        fields: Vec::new(),
        session: SessionMemo::default(),
        head_timer: Default::default(),
    };
    enum End {
        Closed,
        Handoff(Bytes),
        Tunnel(upstream::Upgraded),
    }
    // One wait for shutdown for the connection's life, not one per request.
    let mut watch = stop.clone();
    let mut shutdown = std::pin::pin!(async move {
        while !*watch.borrow_and_update() {
            if watch.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    });
    let end = loop {
        match c.read_head(stop, shutdown.as_mut()).await {
            Head::Complete(head) => {
                let request = c.buf.split_to(head.len).freeze();
                let Some((uri, route)) = c.ours(&head, &request) else {
                    let mut all = BytesMut::from(&request[..]);
                    all.extend_from_slice(&c.buf);
                    break End::Handoff(all.freeze());
                };
                match c.answer(&head, uri, &request, route).await {
                    Exchanged::Done(true) if !*stop.borrow() => {}
                    Exchanged::Done(_) => break End::Closed,
                    Exchanged::Upgraded(websocket) => break End::Tunnel(websocket),
                }
            }
            Head::NotOurs => break End::Handoff(c.buf.split().freeze()),
            Head::Closed => break End::Closed,
        }
    };
    if let Some(up) = c.upstream.take() {
        app.pool.checkin(up);
    }
    match end {
        End::Closed => Served::Closed,
        End::Handoff(pre) => Served::Handoff(Rewind::new(pre, c.io)),
        End::Tunnel(websocket) => Served::Tunnel(Tunnel {
            early: c.buf.to_vec(),
            io: c.io,
            websocket,
        }),
    }
}

/// A client connection and what it keeps from one request to the next.
struct Client<'a, IO> {
    app: &'a Arc<App>,
    io: IO,
    peer: SocketAddr,
    tls: bool,
    /// Bytes read from the client and not used yet.
    buf: BytesMut,
    /// The upstream connection of the last request, kept for the next one.
    upstream: Option<Upstream>,
    scratch: Scratch,
    /// Where the header fields of the request head are in `buf`.
    fields: Vec<(Range<usize>, Range<usize>)>,
    session: SessionMemo,
    /// How long the client may take to send a request head.
    head_timer: super::Deadline,
}

/// Where the parts of a request head are, in the buffer it was read into.
struct HeadIndex {
    len: usize,
    method: Method,
    target: Range<usize>,
    content_length: u64,
    /// The client asked to close the connection after this request.
    close: bool,
    /// A WebSocket upgrade.
    upgrade: bool,
}

enum Head {
    Complete(HeadIndex),
    /// Not a request this path answers, or not one it can read: hyper takes over.
    NotOurs,
    /// The client closed, went quiet, or latchkey is shutting down.
    Closed,
}

impl<IO> Client<'_, IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    /// Reads the next request head; `shutdown` ends the wait while none has begun.
    async fn read_head(
        &mut self,
        stop: &watch::Receiver<bool>,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Head {
        let mut armed = false;
        let buf = &mut self.buf;
        let io = &mut self.io;
        loop {
            if !buf.is_empty() {
                match index(buf, &mut self.fields) {
                    Ok(Some(head)) => return Head::Complete(head),
                    Ok(None) if buf.len() < MAX_HEAD => {}
                    _ => return Head::NotOurs,
                }
            } else if *stop.borrow() {
                return Head::Closed;
            }
            buf.reserve(4096);
            let idle = buf.is_empty();
            if !armed {
                self.head_timer.arm_within(HEAD_TIMEOUT, HEAD_TIMEOUT_SLACK);
                armed = true;
            }
            let read = tokio::select! {
                biased;
                r = io.read_buf(buf) => r,
                _ = self.head_timer.sleep() => return Head::Closed,
                _ = shutdown.as_mut(), if idle => return Head::Closed,
            };
            match read {
                Ok(0) | Err(_) => return Head::Closed,
                Ok(_) => {}
            }
        }
    }

    /// The request's URI and route, when this path answers it.
    fn ours(&self, head: &HeadIndex, request: &Bytes) -> Option<(Uri, Arc<Route>)> {
        let uri = Uri::from_maybe_shared(request.slice(head.target.clone())).ok()?;
        if crate::proxy::check_uri_length(&uri).is_err() {
            return None;
        }
        let route = self.app.plain_route(uri.path())?;
        Some((uri, route))
    }

    /// Answers one request, whose head is `request`.
    async fn answer(
        &mut self,
        head: &HeadIndex,
        uri: Uri,
        request: &[u8],
        route: Arc<Route>,
    ) -> Exchanged {
        let at = std::mem::take(&mut self.fields);
        let fields = RawFields {
            head: request,
            at: &at,
        };
        let done = self.answer_with(head, &uri, &fields, route).await;
        self.fields = at;
        // An idle keep-alive connection holds no large buffer after an upload or a download.
        self.scratch.trim();
        if self.buf.is_empty() && self.buf.capacity() > 16 * 1024 {
            self.buf = BytesMut::with_capacity(4096);
        }
        done
    }

    async fn answer_with(
        &mut self,
        head: &HeadIndex,
        uri: &Uri,
        fields: &RawFields<'_>,
        route: Arc<Route>,
    ) -> Exchanged {
        let app = self.app;
        let (body_len, close) = (head.content_length, head.close);
        let begun = app.begin_proxied(&head.method, uri, fields, self.peer, self.tls);
        let head_request = head.method == Method::HEAD;
        let mut body_read = true;
        let proxied = app
            .prepare_proxy(
                &head.method,
                uri,
                fields,
                &begun.ctx,
                Some(route),
                Some(&mut self.session),
            )
            .await;
        let result = match proxied {
            Ok(Proxied::Forward(prepared)) => {
                let exchange = Exchange {
                    method: &head.method,
                    uri,
                    fields,
                    forwarding: prepared.forwarding(&begun.ctx, None),
                    body_len,
                    head_request,
                    client_close: close,
                    request_id: &begun.ctx.request_id,
                    timeout: app.config.upstream_timeout,
                };
                let mut logged = false;
                let forwarded = upstream::exchange(
                    app,
                    &mut self.upstream,
                    &mut self.scratch,
                    &mut self.io,
                    &mut self.buf,
                    exchange,
                    &prepared,
                    |status| {
                        app.log_access(&begun, status);
                        logged = true;
                    },
                )
                .await;
                match forwarded {
                    Ok(done) => {
                        if !logged {
                            // The client went away before the answer's head reached it.
                            app.log_access(&begun, client_gone());
                        }
                        return done;
                    }
                    Err(Failure::Abort) => {
                        if !logged {
                            app.log_access(&begun, client_gone());
                        }
                        return Exchanged::Done(false);
                    }
                    Err(Failure::Answer(e)) => {
                        // Part of the body may have gone upstream already: never read the rest
                        // as a request.
                        if body_len > 0 {
                            body_read = false;
                        }
                        Err(e)
                    }
                }
            }
            Ok(Proxied::Answer(resp)) => Ok(resp),
            Err(e) => Err(e),
        };
        // Proxied requests only here, never latchkey's own pages.
        let resp = app
            .answer(&begun, result, fields, false, || {
                http_util::wants_json(fields, uri.path())
            })
            .await;
        app.log_access(&begun, resp.status());
        // An unread request body would be read as the next request: skip it, or close.
        let close = if body_read && body_len <= self.buf.len() as u64 {
            self.buf.advance(body_len as usize);
            close
        } else {
            true
        };
        Exchanged::Done(write_answer(&mut self.io, resp, head_request, close).await)
    }
}

/// Parses a request head in place. `Ok(None)`: not complete yet; `Err`: not one for this path.
/// Where each header field is goes to `at_fields`.
fn index(
    buf: &[u8],
    at_fields: &mut Vec<(Range<usize>, Range<usize>)>,
) -> Result<Option<HeadIndex>, ()> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    if req.version != Some(1) {
        return Err(());
    }
    let method = Method::from_bytes(req.method.ok_or(())?.as_bytes()).map_err(|_| ())?;
    if method == Method::CONNECT {
        return Err(());
    }
    let target = req.path.ok_or(())?;
    if !target.starts_with('/') {
        return Err(());
    }
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + s.len()
    };
    let mut head = HeadIndex {
        len,
        method,
        target: at(target.as_bytes()),
        content_length: 0,
        close: false,
        upgrade: false,
    };
    let mut seen_length = false;
    let (mut hosts, mut authorizations) = (0, 0);
    at_fields.clear();
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.contains(&b'_')
            || name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Err(());
        }
        // WebSocket upgrades (GET, no body) are forwarded here; any other upgrade goes to hyper.
        if name.eq_ignore_ascii_case(b"upgrade") {
            if head.method != Method::GET || !h.value.eq_ignore_ascii_case(b"websocket") {
                return Err(());
            }
            head.upgrade = true;
        }
        // Fields that may appear once: hyper's path refuses a request with two.
        hosts += usize::from(name.eq_ignore_ascii_case(b"host"));
        authorizations += usize::from(name.eq_ignore_ascii_case(b"authorization"));
        if hosts > 1 || authorizations > 1 {
            return Err(());
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if seen_length {
                return Err(());
            }
            seen_length = true;
            head.content_length = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok())
                .ok_or(())?;
        }
        if name.eq_ignore_ascii_case(b"connection")
            && h.value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            head.close = true;
        }
        at_fields.push((at(name), at(h.value)));
    }
    if head.upgrade && head.content_length > 0 {
        return Err(());
    }
    Ok(Some(head))
}

/// The status logged and counted for a request whose client went away before its answer:
/// 499, as nginx logs it ("client closed request"); it is never sent.
fn client_gone() -> http::StatusCode {
    http::StatusCode::from_u16(499).unwrap_or(http::StatusCode::BAD_REQUEST)
}

/// Writes a response latchkey made itself (an error page, a redirect); false when the
/// connection must close.
async fn write_answer<IO>(
    io: &mut IO,
    resp: Response<Body>,
    head_request: bool,
    close: bool,
) -> bool
where
    IO: AsyncWrite + Unpin,
{
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let close = close
        || parts
            .headers
            .get(header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let mut out = Vec::with_capacity(512 + body.len());
    upstream::status_line(&mut out, parts.status);
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        upstream::header_line(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    upstream::header_line(
        &mut out,
        b"content-length",
        body.len().to_string().as_bytes(),
    );
    if close {
        upstream::header_line(&mut out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(&body);
    }
    io.write_all(&out).await.is_ok() && io.flush().await.is_ok() && !close
}
