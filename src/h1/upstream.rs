//! The upstream side of the HTTP/1.1 path: keep-alive connections to `http://` upstreams, and
//! one exchange on them (the request out, the answer back to the client as it arrives).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::uri::Authority;
use http::{Method, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use super::RawFields;
use super::chunked::Chunked;
use crate::app::{App, Prepared};
use crate::clock;
use crate::error::Error;
use crate::proxy::headers::{self, Forwarding};
use crate::routes::Route;

/// Idle connections kept per upstream address.
const MAX_IDLE: usize = 256;
/// How long an idle connection is kept (upstreams close theirs after a while too).
const IDLE_TIMEOUT_MS: i64 = 30_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEADERS: usize = crate::proxy::MAX_UPSTREAM_HEADERS;
/// Longest answer head accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;
/// Bytes read from an upstream at a time while copying a body.
const READ_CHUNK: usize = 64 * 1024;

/// A connection to an upstream, with what has been read from it and not used yet.
pub struct Upstream {
    authority: Authority,
    stream: TcpStream,
    buf: BytesMut,
    /// It carried an exchange before: it may have been closed by the upstream meanwhile.
    reused: bool,
    since: i64,
}

impl Upstream {
    async fn connect(authority: &Authority) -> std::io::Result<Upstream> {
        let port = authority.port_u16().unwrap_or(80);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        stream.set_nodelay(true)?;
        Ok(Upstream {
            authority: authority.clone(),
            stream,
            buf: BytesMut::with_capacity(8192),
            reused: false,
            since: clock::monotonic_millis(),
        })
    }

    /// Whether the upstream has answered (or closed) while the request body was still being
    /// sent: what it sent goes to `buf`. False when the readiness was left over, and while all
    /// it sent are interim answers (1xx, such as 103 Early Hints): those ask for the rest of the
    /// body, not for an end to it.
    fn answered_early(&mut self) -> bool {
        match self.stream.try_read_buf(&mut self.buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
        !interim_only(&self.buf)
    }

    /// Writes some of `data`, unless the upstream answers first (None).
    async fn send_unless_answered(&mut self, data: &[u8]) -> std::io::Result<Option<usize>> {
        loop {
            let ready = self
                .stream
                .ready(Interest::READABLE | Interest::WRITABLE)
                .await?;
            if ready.is_readable() && self.answered_early() {
                return Ok(None);
            }
            if ready.is_writable() {
                match self.stream.try_write(data) {
                    Ok(n) => return Ok(Some(n)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Still usable: not idle for too long, and the upstream has neither closed it nor sent
    /// anything unasked (no system call when the socket is quiet).
    fn usable(&self) -> bool {
        if clock::monotonic_millis() - self.since > IDLE_TIMEOUT_MS || !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Idle upstream connections of every client connection, by upstream address.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Authority, Vec<Upstream>>>,
}

impl Pool {
    fn checkout(&self, authority: &Authority) -> Option<Upstream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(authority)?;
        while let Some(up) = list.pop() {
            if up.usable() {
                return Some(up);
            }
        }
        None
    }

    /// Keeps a connection for the next client connection.
    pub fn checkin(&self, mut up: Upstream) {
        if !up.usable() {
            return;
        }
        up.since = clock::monotonic_millis();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(up.authority.clone()).or_default();
        if list.len() < MAX_IDLE {
            list.push(up);
        }
    }

    /// Drops connections idle for too long or closed by their upstream.
    pub fn prune(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        for list in idle.values_mut() {
            list.retain(Upstream::usable);
        }
        idle.retain(|_, list| !list.is_empty());
    }
}

/// One request to forward.
pub struct Exchange<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    /// The request's header fields as the client sent them.
    pub fields: &'a RawFields<'a>,
    /// How they are rewritten for the upstream.
    pub forwarding: Forwarding<'a>,
    /// Request body bytes still to come from the client (`Content-Length`).
    pub body_len: u64,
    pub head_request: bool,
    /// The client asked to close the connection after this answer.
    pub client_close: bool,
    pub request_id: &'a str,
    /// How long the upstream may take to start its answer once the request is sent.
    pub timeout: Duration,
}

/// Why an exchange ended without an answer from the upstream.
pub enum Failure {
    /// Nothing has been sent to the client: answer with this error.
    Answer(Error),
    /// The client connection cannot be used any more.
    Abort,
}

/// How the upstream's answer body is framed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes: sent on to the client in chunks.
    Close,
}

/// Buffers a client connection keeps from one exchange to the next.
#[derive(Default)]
pub struct Scratch {
    /// What is about to be written, to the upstream or to the client.
    out: Vec<u8>,
    /// The header lines of the upstream's answer, as sent on.
    fields: Vec<u8>,
    /// How long the upstream may take to start its answer.
    timer: super::Deadline,
}

impl Scratch {
    /// Gives back what a large exchange made the buffers grow to.
    pub fn trim(&mut self) {
        if self.out.capacity() > 16 * 1024 {
            self.out = Vec::new();
        }
    }
}

/// Forwards one request and copies the answer to the client. `on_head` runs once the answer's
/// head has been written. Ok(false) when the client connection must close.
#[allow(clippy::too_many_arguments)]
pub async fn exchange<IO>(
    app: &App,
    sticky: &mut Option<Upstream>,
    scratch: &mut Scratch,
    client: &mut IO,
    client_buf: &mut BytesMut,
    x: Exchange<'_>,
    prepared: &Prepared,
    on_head: impl FnOnce(StatusCode),
) -> Result<Exchanged, Failure>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let pool = &app.pool;
    let route = prepared.route.clone();
    let authority = &route.target.authority;
    let Scratch { out, fields, timer } = scratch;
    out.clear();
    request_head(out, &route, &x);
    let buffered = x.body_len.min(client_buf.len() as u64) as usize;
    out.extend_from_slice(&client_buf[..buffered]);
    client_buf.advance(buffered);
    let mut body_left = x.body_len - buffered as u64;
    // The whole request is in `out`: on a reused connection the upstream closed meanwhile, it
    // can be sent again on a new one.
    let replayable = body_left == 0;

    route.touch(clock::now_millis());
    let mut up = match sticky.take() {
        Some(up) if &up.authority == authority && up.usable() => Some(up),
        Some(other) => {
            pool.checkin(other);
            None
        }
        None => None,
    };
    let mut head = None;
    let mut cut_short = false;
    for attempt in 0..2 {
        // A retry goes to a new connection: the idle ones may all have been closed meanwhile.
        let kept = match attempt {
            0 => up.take().or_else(|| pool.checkout(authority)),
            _ => None,
        };
        let mut conn = match kept {
            Some(c) => c,
            None => match Upstream::connect(authority).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(route = %route.path, error = %e, "upstream request failed");
                    return Err(Failure::Answer(Error::UpstreamUnavailable));
                }
            },
        };
        // A request that may have reached the upstream is sent again only when repeating it
        // changes nothing (RFC 9110 section 9.2.2).
        let retry_allowed = conn.reused && replayable && x.method.is_idempotent();
        if let Err(e) = conn.stream.write_all(out).await {
            if conn.reused && replayable {
                continue;
            }
            tracing::warn!(route = %route.path, error = %e, "upstream request failed");
            return Err(Failure::Answer(Error::UpstreamUnavailable));
        }
        // The upstream may answer before it has the whole body (a 413, a 401): sending stops
        // then, the answer goes to the client, and the client connection closes after it (the
        // rest of its body is never read).
        while body_left > 0 {
            if client_buf.is_empty() {
                client_buf.reserve(READ_CHUNK.min(body_left as usize));
                let read = tokio::select! {
                    biased;
                    r = client.read_buf(client_buf) => Some(r),
                    _ = conn.stream.readable() => None,
                };
                match read {
                    None if conn.answered_early() => {
                        cut_short = true;
                        break;
                    }
                    None => continue,
                    Some(Ok(0) | Err(_)) => return Err(Failure::Abort),
                    Some(Ok(_)) => {}
                }
            }
            let n = body_left.min(client_buf.len() as u64) as usize;
            match conn.send_unless_answered(&client_buf[..n]).await {
                Ok(Some(sent)) => {
                    client_buf.advance(sent);
                    body_left -= sent as u64;
                }
                Ok(None) => {
                    cut_short = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(route = %route.path, error = %e, "upstream request failed");
                    return Err(Failure::Answer(Error::UpstreamUnavailable));
                }
            }
        }
        // At least the configured time, and up to an eighth more: most requests then leave the
        // timer where it is.
        timer.arm_late(x.timeout, x.timeout / 8);
        let answer = tokio::select! {
            biased;
            r = read_head(&mut conn, fields, prepared.websocket) => Some(r),
            _ = timer.sleep() => None,
        };
        match answer {
            None => {
                tracing::warn!(route = %route.path, "upstream timed out");
                return Err(Failure::Answer(Error::UpstreamTimeout));
            }
            Some(Err(HeadError::Closed)) if retry_allowed => continue,
            Some(Err(e)) => {
                tracing::warn!(route = %route.path, error = ?e, "upstream request failed");
                return Err(Failure::Answer(Error::UpstreamUnavailable));
            }
            Some(Ok(h)) => {
                head = Some((conn, h));
                break;
            }
        }
    }
    let Some((mut conn, answer)) = head else {
        tracing::warn!(route = %route.path, "upstream closed the connection twice");
        return Err(Failure::Answer(Error::UpstreamUnavailable));
    };
    route.touch(clock::now_millis());

    if answer.status == StatusCode::SWITCHING_PROTOCOLS {
        // Registered before the client hears of it: a revocation from then on closes it.
        let registration = app
            .register_any(prepared.registrar(app), true)
            .await
            .map_err(Failure::Answer)?;
        answer_head(out, &answer, fields, x.request_id, false, false);
        // Frames the upstream sent right behind its answer go with it.
        out.extend_from_slice(&conn.buf);
        conn.buf.clear();
        if client.write_all(out).await.is_err() || client.flush().await.is_err() {
            return Ok(Exchanged::Done(false));
        }
        on_head(answer.status);
        return Ok(Exchanged::Upgraded(Upgraded {
            registration,
            route,
            conn,
        }));
    }

    let framing = if x.head_request
        || answer.status == StatusCode::NO_CONTENT
        || answer.status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if answer.chunked {
        Framing::Chunked
    } else if let Some(n) = answer.content_length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    let mut reusable = answer.keep_alive && framing != Framing::Close && !cut_short;
    let close_client = x.client_close || cut_short;

    // Answers without a length stream until they end, and a long one may take a while: they
    // are closed when access ends. A short one, or one that is all here already, is simply
    // written out.
    let lasts = match framing {
        Framing::Chunked | Framing::Close => true,
        Framing::Length(n) => {
            crate::proxy::may_outlast_access(Some(n)) && n > conn.buf.len() as u64
        }
        Framing::Empty => false,
    };
    let registrar = lasts.then(|| prepared.registrar(app)).flatten();
    let registration = app
        .register_any(registrar, false)
        .await
        .map_err(Failure::Answer)?;

    let chunked = matches!(framing, Framing::Chunked | Framing::Close);
    answer_head(out, &answer, fields, x.request_id, chunked, close_client);
    let mut head_sent = Some(on_head);
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut chunks = Chunked::new();
    let mut done = framing == Framing::Empty || framing == Framing::Length(0);
    // The body, to its end (true) or until either side fails (false). When access ends, the
    // registration's token drops it wherever it is, a write to a slow client included.
    let body = async {
        loop {
            // Move what has arrived from the upstream into `out`, framed for the client.
            if !conn.buf.is_empty() && !done {
                match framing {
                    Framing::Length(_) => {
                        let n = left.min(conn.buf.len() as u64) as usize;
                        if out.is_empty() {
                            // Body bytes only: straight from the read buffer, without a copy.
                            if client.write_all(&conn.buf[..n]).await.is_err()
                                || client.flush().await.is_err()
                            {
                                return Ok(false);
                            }
                        } else {
                            out.extend_from_slice(&conn.buf[..n]);
                        }
                        conn.buf.advance(n);
                        left -= n as u64;
                        done = left == 0;
                    }
                    Framing::Chunked => {
                        let Ok(n) = chunks.feed(&conn.buf, out) else {
                            tracing::warn!(route = %route.path, "upstream sent a broken chunked body");
                            if head_sent.is_some() {
                                // Nothing has reached the client yet: it can still be told.
                                return Err(Failure::Answer(Error::UpstreamUnavailable));
                            }
                            return Ok(false);
                        };
                        conn.buf.advance(n);
                        done = chunks.is_done();
                    }
                    Framing::Close => {
                        out.extend_from_slice(format!("{:x}\r\n", conn.buf.len()).as_bytes());
                        out.extend_from_slice(&conn.buf);
                        out.extend_from_slice(b"\r\n");
                        conn.buf.clear();
                    }
                    Framing::Empty => {}
                }
            }
            if !out.is_empty() {
                if client.write_all(out).await.is_err() || client.flush().await.is_err() {
                    return Ok(false);
                }
                out.clear();
                if let Some(f) = head_sent.take() {
                    f(answer.status);
                }
            }
            if done {
                break;
            }
            conn.buf.reserve(READ_CHUNK);
            let read = conn.stream.read_buf(&mut conn.buf).await;
            match read {
                Ok(0) if framing == Framing::Close => {
                    out.extend_from_slice(b"0\r\n\r\n");
                    done = true;
                    reusable = false;
                }
                Ok(0) | Err(_) => {
                    // The upstream broke off the body: the client cannot be told but by a close.
                    return Ok(false);
                }
                Ok(_) => {}
            }
        }
        Ok::<bool, Failure>(true)
    };
    let completed = match &registration {
        Some(r) => match crate::proxy::cancel::until_cancelled(body, &r.cancel).await {
            Some(completed) => completed?,
            None => {
                tracing::info!(route = %route.path, "response closed: access ended");
                false
            }
        },
        None => body.await?,
    };
    if !completed {
        return Ok(Exchanged::Done(false));
    }
    drop(registration);
    if reusable && conn.buf.is_empty() {
        if conn.buf.capacity() > 16 * 1024 {
            // A kept connection holds no large buffer.
            conn.buf = BytesMut::with_capacity(8192);
        }
        conn.reused = true;
        conn.since = clock::monotonic_millis();
        *sticky = Some(conn);
    }
    Ok(Exchanged::Done(!close_client))
}

/// A WebSocket the upstream accepted: its 101 has gone to the client.
pub struct Upgraded {
    conn: Upstream,
    route: std::sync::Arc<Route>,
    /// Present on guarded routes: revocation closes the WebSocket through it.
    registration: Option<crate::connections::Registration>,
}

impl Upgraded {
    /// Joins the client and the upstream until either side closes or access ends
    /// (revocation, the end of the server's session, shutdown's drain deadline). `early` are
    /// bytes the client sent behind its request.
    pub async fn run<IO>(mut self, client: &mut IO, early: &[u8])
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let cancel = self
            .registration
            .as_ref()
            .map(|r| r.cancel.clone())
            .unwrap_or_default();
        // An idle WebSocket keeps no buffer.
        self.conn.buf = BytesMut::new();
        crate::proxy::tunnel(client, &mut self.conn.stream, early, &self.route, &cancel).await;
        drop(self.registration);
    }
}

/// What became of an exchange.
pub enum Exchanged {
    /// Answered; whether the client connection may carry another request.
    Done(bool),
    /// A WebSocket: the connection is a tunnel from now on.
    Upgraded(Upgraded),
}

/// The request head for the upstream: origin-form target, HTTP/1.1, the rewritten headers.
fn request_head(out: &mut Vec<u8>, route: &Route, x: &Exchange<'_>) {
    out.extend_from_slice(x.method.as_str().as_bytes());
    out.push(b' ');
    let (base, rest) = crate::proxy::upstream_path(route, x.uri.path());
    out.extend_from_slice(base.as_bytes());
    out.extend_from_slice(rest.as_bytes());
    if let Some(q) = x.uri.query() {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host = false;
    crate::proxy::headers::rewrite_request(x.fields, &x.forwarding, |name, value| {
        // The framing is latchkey's own: the length it read is the length it sends, whatever
        // the fields say (Transfer-Encoding is hop-by-hop, and this path takes no request that
        // has one).
        if name.eq_ignore_ascii_case(b"content-length") {
            header_line(out, b"content-length", x.body_len.to_string().as_bytes());
            return;
        }
        host |= name.eq_ignore_ascii_case(b"host");
        header_line(out, name, value);
    });
    // HTTP/1.1 requests need a Host; a client that sent none gets the upstream's.
    if !host {
        header_line(out, b"host", route.target.authority.as_str().as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// The head of the answer for the client, into `out`: the upstream's status and filtered
/// fields, latchkey's framing, request id and close.
fn answer_head(
    out: &mut Vec<u8>,
    answer: &AnswerHead,
    fields: &[u8],
    request_id: &str,
    chunked: bool,
    close: bool,
) {
    out.clear();
    status_line(out, answer.status);
    out.extend_from_slice(fields);
    if chunked {
        header_line(out, b"transfer-encoding", b"chunked");
    }
    if !answer.has_request_id {
        header_line(out, b"x-request-id", request_id.as_bytes());
    }
    if close {
        header_line(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

pub fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// An upstream's answer head, its header fields already filtered for the client.
struct AnswerHead {
    status: StatusCode,
    content_length: Option<u64>,
    chunked: bool,
    /// The upstream may be asked again on this connection.
    keep_alive: bool,
    has_request_id: bool,
}

#[derive(Debug)]
enum HeadError {
    /// Closed before a byte of the answer arrived.
    Closed,
    Io(#[allow(dead_code)] std::io::Error),
    Malformed,
}

/// Reads the head of the upstream's answer, skipping interim (1xx) answers. The header lines
/// to send on go to `fields`.
async fn read_head(
    conn: &mut Upstream,
    fields: &mut Vec<u8>,
    upgrade: bool,
) -> Result<AnswerHead, HeadError> {
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&conn.buf, fields)? {
                Some((len, head)) => {
                    conn.buf.advance(len);
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        // Only the answer to an upgrade this request asked for.
                        if upgrade {
                            return Ok(head);
                        }
                        return Err(HeadError::Malformed);
                    }
                    if head.status.is_informational() {
                        continue;
                    }
                    return Ok(head);
                }
                None if conn.buf.len() >= MAX_HEAD => return Err(HeadError::Malformed),
                None => {}
            }
        }
        conn.buf.reserve(8192);
        let was_empty = conn.buf.is_empty();
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) if was_empty => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Malformed),
            Err(e) if was_empty && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(HeadError::Closed);
            }
            Err(e) => return Err(HeadError::Io(e)),
            Ok(_) => {}
        }
    }
}

/// Whether `buf` holds nothing but interim answers (1xx other than 101), the last one perhaps
/// not complete yet; false as soon as it holds the start of a final answer, or nonsense.
fn interim_only(mut buf: &[u8]) -> bool {
    loop {
        if buf.is_empty() {
            return true;
        }
        // "HTTP/1.1 1xx": decided by the first digit of the status, once it is there.
        let Some(&first) = buf.get(9) else {
            return b"HTTP/1.1 ".starts_with(buf);
        };
        if !buf.starts_with(b"HTTP/1.1 ") || first != b'1' || buf.get(9..12) == Some(b"101") {
            return false;
        }
        let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::Response::new(&mut parsed).parse(buf) {
            Ok(httparse::Status::Complete(n)) => buf = &buf[n..],
            Ok(httparse::Status::Partial) => return true,
            Err(_) => return false,
        }
    }
}

fn parse_head(buf: &[u8], fields: &mut Vec<u8>) -> Result<Option<(usize, AnswerHead)>, HeadError> {
    let mut parsed = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut parsed);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HeadError::Malformed),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(HeadError::Malformed)?;
    fields.clear();
    let mut head = AnswerHead {
        status,
        content_length: None,
        chunked: false,
        keep_alive: resp.version == Some(1),
        has_request_id: false,
    };
    // Header names the upstream's `Connection` header lists: hop-by-hop, not sent on.
    let mut named: Vec<&[u8]> = vec![];
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',').map(|t| t.trim_ascii()) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.keep_alive = false;
                }
                named.push(token);
            }
        }
    }
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Chunked when it is the last coding; any other is read until the upstream closes.
            let last = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            head.chunked = last.eq_ignore_ascii_case(b"chunked");
            if !head.chunked {
                head.keep_alive = false;
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(HeadError::Malformed)?;
            if head.content_length.is_some_and(|m| m != n) {
                return Err(HeadError::Malformed);
            }
            if head.content_length.is_some() {
                continue;
            }
            head.content_length = Some(n);
        }
        // A 101 keeps its Upgrade and Connection: they are what it says. A `Connection` token
        // cannot take away the length latchkey frames the answer by.
        let listed = !name.eq_ignore_ascii_case(b"content-length")
            && named.iter().any(|n| n.eq_ignore_ascii_case(name));
        if status != StatusCode::SWITCHING_PROTOCOLS && (headers::is_hop_by_hop(name) || listed) {
            continue;
        }
        if (name.eq_ignore_ascii_case(b"set-cookie") && headers::sets_own_cookie(h.value))
            || name.eq_ignore_ascii_case(headers::SERVICE_WORKER_ALLOWED.as_bytes())
        {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-request-id") {
            head.has_request_id = true;
        }
        header_line(fields, name, h.value);
    }
    if head.chunked && head.content_length.is_some() {
        // Transfer-Encoding wins (RFC 9112 section 6.3); the length is not sent on.
        head.content_length = None;
        head.keep_alive = false;
        *fields = strip_field(fields, b"content-length");
    }
    Ok(Some((len, head)))
}

/// Header lines without those of one name.
fn strip_field(fields: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.len());
    for line in fields.split_inclusive(|b| *b == b'\n') {
        let field = line.split(|b| *b == b':').next().unwrap_or(b"");
        if !field.eq_ignore_ascii_case(name) {
            out.extend_from_slice(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> (AnswerHead, String) {
        let mut fields = vec![];
        match parse_head(raw.as_bytes(), &mut fields) {
            Ok(Some((n, h))) => {
                assert_eq!(n, raw.len());
                (h, String::from_utf8(fields).unwrap())
            }
            _ => panic!("not parsed: {raw:?}"),
        }
    }

    #[test]
    fn hop_by_hop_and_own_cookies_stay_behind() {
        let (h, fields) = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n\
             X-Secret: 1\r\nSet-Cookie: latchkey-session=stolen\r\nSet-Cookie: theirs=1\r\n\
             Content-Length: 2\r\nX-Kept: yes\r\n\r\n",
        );
        assert_eq!(
            fields,
            "Set-Cookie: theirs=1\r\nContent-Length: 2\r\nX-Kept: yes\r\n"
        );
        assert_eq!(h.content_length, Some(2));
        assert!(h.keep_alive);
        assert!(!h.has_request_id);
    }

    #[test]
    fn interim_answers_do_not_count_as_an_early_answer() {
        let interim = [
            &b""[..],
            b"HTTP/1",
            b"HTTP/1.1 ",
            b"HTTP/1.1 10",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
            b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 1",
        ];
        let early = [
            &b"HTTP/1.1 4"[..],
            b"HTTP/1.1 413 Content Too Large\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 401 Unauthorized\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\n",
            b"garbage",
        ];
        let cases = interim.iter().map(|b| (b, true));
        for (bytes, only) in cases.chain(early.iter().map(|b| (b, false))) {
            assert_eq!(
                interim_only(bytes),
                only,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn framing_is_read_as_rfc_9112_says() {
        let (h, fields) =
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n");
        assert!(h.chunked);
        assert_eq!(h.content_length, None);
        assert!(!fields.contains("Content-Length"));
        let (h, _) = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert!(!h.chunked && !h.keep_alive);
        let (h, _) = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.keep_alive);
        let (h, _) = head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.keep_alive);
        assert!(matches!(
            parse_head(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                &mut vec![]
            ),
            Err(HeadError::Malformed)
        ));
        assert!(matches!(
            parse_head(
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                &mut vec![]
            ),
            Err(HeadError::Malformed)
        ));
    }
}
