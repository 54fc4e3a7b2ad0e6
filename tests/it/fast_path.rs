//! latchkey's own HTTP/1.1 path (`src/h1`) against real sockets: a raw client that writes HTTP/1.1
//! by hand (pipelining, keep-alive, a latchkey page after a proxied request on one connection)
//! and raw upstreams that frame their answers in every way HTTP/1.1 allows, or misbehave.
//!
//! The raw upstreams mark their answers with an `X-Up` header in that case: latchkey's own path
//! passes header names on as they came, while hyper would write `x-up`. `assert_fast` uses that
//! to check that an answer really came through the path under test. Adding `VIA_HYPER` (a header
//! name with '_') to a request sends the same request through hyper instead, for comparison.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::both_stores;
use crate::helpers::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A signed-in user (or nobody) writing raw requests to one latchkey.
struct Caller {
    base: String,
    host: String,
    cookie: String,
}

impl Caller {
    async fn signed_in(lk: &Latchkey, user: &str) -> Caller {
        let b = lk.signed_in(user).await;
        let cookie = b.cookie_header("/user/");
        assert!(cookie.contains("latchkey-session="), "{cookie}");
        Caller {
            cookie,
            ..Caller::anonymous(lk)
        }
    }

    fn anonymous(lk: &Latchkey) -> Caller {
        Caller {
            base: lk.base.clone(),
            host: lk.base.trim_start_matches("http://").to_owned(),
            cookie: String::new(),
        }
    }

    /// A request with this caller's cookie; `Content-Length` when there is a body or the
    /// method is POST, unless the fields give a `Transfer-Encoding`.
    fn request(&self, method: &str, path: &str, fields: &[&str], body: &[u8]) -> Vec<u8> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if !self.cookie.is_empty() {
            head.push_str(&format!("Cookie: {}\r\n", self.cookie));
        }
        for f in fields {
            head.push_str(f);
            head.push_str("\r\n");
        }
        let coded = fields
            .iter()
            .any(|f| f.to_ascii_lowercase().starts_with("transfer-encoding:"));
        if (!body.is_empty() || method == "POST") && !coded {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn get(&self, path: &str) -> Vec<u8> {
        self.request("GET", path, &[], b"")
    }

    async fn connect(&self) -> RawClient {
        RawClient::connect(&self.base).await
    }
}

/// An upstream answer with a `Content-Length`, marked `X-Up: raw`.
fn answer(status: &str, fields: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nX-Up: raw\r\n");
    for f in fields {
        out.push_str(f);
        out.push_str("\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Answers "METHOD target", keeping the connection.
fn echo(req: &RawRequest) -> Vec<Step> {
    vec![Step::Write(answer(
        "200 OK",
        &[],
        format!("{} {}", req.method, req.target).as_bytes(),
    ))]
}

/// The upstream's answer: the SHA-256 of a POST's body, else as `echo`.
fn digest_or_echo(req: &RawRequest) -> Vec<Step> {
    if req.method == "POST" {
        vec![Step::Write(answer(
            "200 OK",
            &[],
            digest(&req.body).as_bytes(),
        ))]
    } else {
        echo(req)
    }
}

fn assert_fast(r: &RawResponse) {
    assert!(
        r.headers.iter().any(|(n, _)| n == "X-Up"),
        "expected an answer from latchkey's own HTTP/1.1 path (upstream header case kept), got {:?}",
        r.headers
    );
}

/// Registers `/user/john` (name "") or `/user/john/{name}` for a target.
async fn route(lk: &Latchkey, name: &str, target: &str) {
    let path = if name.is_empty() {
        "/user/john".to_owned()
    } else {
        format!("/user/john/{name}")
    };
    let s = lk
        .post_route(
            &path,
            json!({"user": "john", "server_name": name, "target": target}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
}

/// latchkey (memory store) with john's server at a raw upstream, and john signed in.
async fn johns_raw_server(
    answer: impl Fn(&RawRequest) -> Vec<Step> + Send + Sync + 'static,
) -> (RawUpstream, Latchkey, Caller) {
    let up = RawUpstream::spawn(answer).await;
    let lk = Latchkey::spawn(Backend::Memory).await;
    route(&lk, "", &up.target()).await;
    let john = Caller::signed_in(&lk, "john").await;
    (up, lk, john)
}

/// `latchkey_requests_total` for one class, summed over status classes.
async fn requests_counted(lk: &Latchkey, class: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", lk.api))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let label = format!("class=\"{class}\"");
    text.lines()
        .filter(|l| l.starts_with("latchkey_requests_total{") && l.contains(&label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Bytes that look like nothing in particular (a linear congruential generator).
fn noise(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x2545_f491;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

fn digest(body: &[u8]) -> String {
    format!("{} {:x}", body.len(), Sha256::digest(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_arrives_whole_without_its_trailer_and_the_connection_goes_on() {
    let big = noise(200_000);
    let last_chunk = {
        // Upper-case hex, larger than one read of latchkey's.
        let mut c = format!("{:X}\r\n", big.len()).into_bytes();
        c.extend_from_slice(&big);
        c.extend_from_slice(b"\r\n1\r\n!\r\n0\r\nX-Checksum: abc\r\n\r\n");
        c
    };
    let (up, _lk, john) = johns_raw_server(move |req| {
        if req.target != "/user/john/chunked" {
            return echo(req);
        }
        vec![
            Step::Write(
                b"HTTP/1.1 200 OK\r\nX-Up: raw\r\nTransfer-Encoding: chunked\r\n\
                  Trailer: X-Checksum\r\n\r\n5\r\nhello\r\n"
                    .to_vec(),
            ),
            Step::Sleep(ms(20)),
            Step::Write(b"7;name=value\r\n, world\r\n".to_vec()),
            Step::Sleep(ms(20)),
            Step::Write(last_chunk.clone()),
        ]
    })
    .await;
    let mut c = john.connect().await;
    c.send(john.get("/user/john/chunked")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_fast(&r);
    assert!(r.is_chunked(), "{:?}", r.headers);
    assert_eq!(r.header("content-length"), None);
    let mut expected = b"hello, world".to_vec();
    expected.extend_from_slice(&big);
    expected.push(b'!');
    assert_eq!(r.body.len(), expected.len());
    assert!(r.body == expected, "the body arrives byte for byte");
    // Trailer fields are dropped, as hyper drops them: nothing from the upstream passes
    // latchkey's header checks after the head.
    assert!(r.trailers.is_empty(), "{:?}", r.trailers);

    c.send(john.get("/user/john/next")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "GET /user/john/next");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[1].conn, seen[1].nth),
        (seen[0].conn, 1),
        "the end of the chunked body was found, so the upstream connection was kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_length_is_read_to_the_close_and_rechunked() {
    let big = noise(300_000);
    let body = big.clone();
    let (up, _lk, john) = johns_raw_server(move |req| match req.target.as_str() {
        "/user/john/eof" => vec![
            Step::Write(
                b"HTTP/1.1 200 OK\r\nX-Up: raw\r\nContent-Type: application/octet-stream\r\n\r\nfirst;"
                    .to_vec(),
            ),
            Step::Sleep(ms(20)),
            Step::Write(body.clone()),
            Step::Sleep(ms(20)),
            Step::Close,
        ],
        "/user/john/http10" => vec![
            Step::Write(b"HTTP/1.0 200 OK\r\nX-Up: raw\r\n\r\nold style".to_vec()),
            Step::Close,
        ],
        _ => echo(req),
    })
    .await;
    let mut c = john.connect().await;
    c.send(john.get("/user/john/eof")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert_fast(&r);
    assert!(r.is_chunked(), "re-chunked for the client: {:?}", r.headers);
    let mut expected = b"first;".to_vec();
    expected.extend_from_slice(&big);
    assert_eq!(r.body.len(), expected.len());
    assert!(r.body == expected);

    c.send(john.get("/user/john/after")).await;
    let r = c.response().await;
    assert_eq!((r.status, r.text().as_str()), (200, "GET /user/john/after"));

    c.send(john.get("/user/john/http10")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert!(r.is_chunked());
    assert_eq!(r.text(), "old style");
    c.send(john.get("/user/john/last")).await;
    let r = c.response().await;
    assert_eq!((r.status, r.text().as_str()), (200, "GET /user/john/last"));

    // A closed connection is never used again.
    let seen = up.seen();
    let conns: Vec<usize> = seen.iter().map(|s| s.conn).collect();
    assert_eq!(conns, vec![0, 1, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_the_upstream_byte_for_byte() {
    let (up, _lk, john) = johns_raw_server(digest_or_echo).await;
    let mut c = john.connect().await;

    // A small body that looks like a request of its own.
    let small = b"GET /user/john/smuggled HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    c.send(john.request("POST", "/user/john/small", &[], &small))
        .await;
    let r = c.response().await;
    assert_fast(&r);
    assert_eq!((r.status, r.text()), (200, digest(&small)));

    // 3 MiB: most of it arrives after latchkey has read the head.
    let big = noise(3 * 1024 * 1024);
    c.send(john.request(
        "POST",
        "/user/john/big",
        &["Content-Type: application/octet-stream"],
        &big,
    ))
    .await;
    let r = c.response().await;
    assert_eq!((r.status, r.text()), (200, digest(&big)));

    // A POST and a GET in one write; then a POST, an extra CRLF (RFC 9112 section 2.2 lets a
    // server ignore it) and a GET.
    let mut two = john.request("POST", "/user/john/first", &[], b"0123456789");
    two.extend(john.get("/user/john/second"));
    c.send(&two).await;
    let r = c.response().await;
    assert_eq!((r.status, r.text()), (200, digest(b"0123456789")));
    let r = c.response().await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "GET /user/john/second")
    );
    let mut two = john.request("POST", "/user/john/third", &[], b"abc");
    two.extend_from_slice(b"\r\n");
    two.extend(john.get("/user/john/fourth"));
    c.send(&two).await;
    let r = c.response().await;
    assert_eq!((r.status, r.text()), (200, digest(b"abc")));
    let r = c.response().await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "GET /user/john/fourth")
    );

    let seen = up.seen();
    let what: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.target.as_str()))
        .collect();
    assert_eq!(
        what,
        vec![
            ("POST", "/user/john/small"),
            ("POST", "/user/john/big"),
            ("POST", "/user/john/first"),
            ("GET", "/user/john/second"),
            ("POST", "/user/john/third"),
            ("GET", "/user/john/fourth"),
        ]
    );
    assert!(seen[0].body == small);
    assert!(seen[1].body == big);
    assert_eq!(seen[1].header("content-length"), Some("3145728"));
    assert_eq!(
        seen[1].header("content-type"),
        Some("application/octet-stream")
    );
    assert!(seen.iter().all(|s| s.conn == 0), "one upstream connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (up, _lk, john) = johns_raw_server(|req| match req.target.as_str() {
        "/user/john/p1" => {
            let mut s = vec![Step::Sleep(ms(50))];
            s.extend(echo(req));
            s
        }
        "/user/john/p2?x=1" => vec![Step::Write(
            b"HTTP/1.1 200 OK\r\nX-Up: raw\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\ntwo\r\n0\r\n\r\n"
                .to_vec(),
        )],
        _ => echo(req),
    })
    .await;
    let mut c = john.connect().await;
    let mut all = john.get("/user/john/p1");
    all.extend(john.get("/user/john/p2?x=1"));
    all.extend(john.request("HEAD", "/user/john/p3", &[], b""));
    all.extend(john.get("/user/john/p4"));
    c.send(&all).await;
    let r = c.response().await;
    assert_fast(&r);
    assert_eq!((r.status, r.text().as_str()), (200, "GET /user/john/p1"));
    let r = c.response().await;
    assert_eq!((r.status, r.text().as_str()), (200, "two"));
    let r = c.head_response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("18"));
    let r = c.response().await;
    assert_eq!((r.status, r.text().as_str()), (200, "GET /user/john/p4"));
    assert!(c.quiet_for(ms(100)).await, "four answers, nothing more");
    let targets: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        [
            "/user/john/p1",
            "/user/john/p2?x=1",
            "/user/john/p3",
            "/user/john/p4"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_connection_closed_meanwhile_is_replaced() {
    let lk = Latchkey::spawn(Backend::Memory).await;
    // Answers, then closes: every connection serves one request.
    let one_each = RawUpstream::spawn(|req| {
        let mut s = echo(req);
        s.push(Step::Close);
        s
    })
    .await;
    // Keeps its first connection after the first answer, but closes it (FIN, or RST) when the
    // second request arrives on it, without answering.
    let ends_first_connection = |reset: bool| {
        move |req: &RawRequest| {
            if req.conn == 0 && req.nth == 1 {
                vec![if reset { Step::Reset } else { Step::Close }]
            } else {
                echo(req)
            }
        }
    };
    let quiet = RawUpstream::spawn(ends_first_connection(false)).await;
    let reset = RawUpstream::spawn(ends_first_connection(true)).await;
    let post = RawUpstream::spawn(ends_first_connection(false)).await;
    route(&lk, "", &one_each.target()).await;
    route(&lk, "quiet", &quiet.target()).await;
    route(&lk, "reset", &reset.target()).await;
    route(&lk, "post", &post.target()).await;
    let john = Caller::signed_in(&lk, "john").await;
    let mut c = john.connect().await;

    // Closed after the answer: noticed before use (after a pause) or not (at once).
    for (path, pause) in [
        ("/user/john/a", 0),
        ("/user/john/b", 50),
        ("/user/john/c", 0),
    ] {
        tokio::time::sleep(ms(pause)).await;
        c.send(john.get(path)).await;
        let r = c.response().await;
        assert_fast(&r);
        assert_eq!((r.status, r.text()), (200, format!("GET {path}")));
    }
    assert_eq!(one_each.connections(), 3);

    // Closed when the request arrives: sent again once, on a new connection.
    for (name, up) in [("quiet", &quiet), ("reset", &reset)] {
        for step in ["a", "b", "c"] {
            let path = format!("/user/john/{name}/{step}");
            c.send(john.get(&path)).await;
            let r = c.response().await;
            assert_fast(&r);
            assert_eq!((r.status, r.text()), (200, format!("GET {path}")), "{name}");
        }
        let seen: Vec<(String, usize, usize)> = up
            .seen()
            .into_iter()
            .map(|s| (s.target, s.conn, s.nth))
            .collect();
        let p = |s: &str| format!("/user/john/{name}/{s}");
        assert_eq!(
            seen,
            vec![
                (p("a"), 0, 0),
                (p("b"), 0, 1),
                (p("b"), 1, 0),
                (p("c"), 1, 1)
            ],
            "{name}"
        );
    }

    // A request whose body was still arriving cannot be sent again: never twice upstream.
    c.send(john.get("/user/john/post/a")).await;
    assert_eq!(c.response().await.status, 200);
    let request = john.request("POST", "/user/john/post/b", &[], b"0123456789");
    let (head, body) = request.split_at(request.len() - 10);
    c.send(head).await;
    tokio::time::sleep(ms(100)).await;
    c.send(body).await;
    let r = c.response().await;
    assert_eq!(r.status, 502);
    assert!(r.header("x-request-id").is_some());
    let posts = post.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(posts, 1, "a request with a body is not replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latchkey_pages_after_a_proxied_request_on_one_connection() {
    let (up, lk, john) = johns_raw_server(echo).await;
    let proxied = requests_counted(&lk, "proxy").await;
    let health = requests_counted(&lk, "health").await;
    let pages = requests_counted(&lk, "page").await;

    // One request at a time.
    let mut c = john.connect().await;
    c.send(john.get("/user/john/a")).await;
    let r = c.response().await;
    assert_fast(&r);
    assert_eq!((r.status, r.text().as_str()), (200, "GET /user/john/a"));
    c.send(john.get("/healthz")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("OK"), "{}", r.text());
    c.send(john.get("/hub/home")).await;
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text().contains("john"));
    c.send(john.get("/user/john/b")).await;
    let r = c.response().await;
    assert_eq!((r.status, r.text().as_str()), (200, "GET /user/john/b"));

    // All in one write: the bytes already read go to hyper with the rest.
    let mut c = john.connect().await;
    let mut all = john.get("/user/john/c");
    all.extend(john.get("/healthz"));
    all.extend(john.get("/user/john/d"));
    c.send(&all).await;
    let r = c.response().await;
    assert_fast(&r);
    assert_eq!((r.status, r.text().as_str()), (200, "GET /user/john/c"));
    let r = c.response().await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("OK"));
    let r = c.response().await;
    assert_eq!((r.status, r.text().as_str()), (200, "GET /user/john/d"));

    assert_eq!(up.seen().len(), 4);
    // Each request is counted once, whichever path answered it.
    assert_eq!(requests_counted(&lk, "proxy").await - proxied, 4.0);
    assert_eq!(requests_counted(&lk, "health").await - health, 2.0);
    assert_eq!(requests_counted(&lk, "page").await - pages, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_answers_are_skipped() {
    let (up, _lk, john) = johns_raw_server(|req| {
        if req.target != "/user/john/hints" {
            return echo(req);
        }
        vec![
            Step::Write(
                b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n".to_vec(),
            ),
            Step::Sleep(ms(20)),
            Step::Write(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
            Step::Write(answer(
                "200 OK",
                &["Link: </style.css>; rel=preload"],
                b"page",
            )),
        ]
    })
    .await;
    let mut c = john.connect().await;
    c.send(john.get("/user/john/hints")).await;
    let r = c.response().await;
    assert_fast(&r);
    assert_eq!((r.status, r.text().as_str()), (200, "page"));
    assert_eq!(r.header("link"), Some("</style.css>; rel=preload"));
    c.send(john.get("/user/john/next")).await;
    let r = c.response().await;
    assert_eq!((r.status, r.text().as_str()), (200, "GET /user/john/next"));
    assert!(up.seen().iter().all(|s| s.conn == 0));
}

async fn identities_and_the_session_cookie_stay_behind(backend: Backend) {
    let up = RawUpstream::spawn(echo).await;
    let lk = Latchkey::spawn(backend).await;
    route(&lk, "", &up.target()).await;
    let john = Caller::signed_in(&lk, "john").await;
    let session = john.cookie.clone();
    let mut c = john.connect().await;
    let request = format!(
        "GET /user/john/who?q=a%20b&x=1 HTTP/1.1\r\nHost: {}\r\n\
         X-Latchkey-User: mallory\r\nX-Latchkey-Role: owner\r\nX-Latchkey-Groups: admins\r\n\
         X-Forwarded-User: mallory\r\nRemote-User: mallory\r\nX-Auth-Request-User: mallory\r\n\
         Connection: keep-alive, X-Secret\r\nX-Secret: mallory\r\nKeep-Alive: timeout=5\r\n\
         Proxy-Authorization: Basic bWFsbG9yeTp4\r\nX-Real-Ip: 10.6.6.6\r\n\
         Cookie: theirs=1; {session}; other=2\r\nX-Kept: yes\r\n\r\n",
        john.host
    );
    c.send(&request).await;
    let r = c.response().await;
    assert_fast(&r);
    assert_eq!(r.status, 200);
    let seen = up.seen().pop().unwrap();
    assert_eq!(seen.target, "/user/john/who?q=a%20b&x=1");
    assert_eq!(seen.headers_named("x-latchkey-user"), ["john"]);
    assert_eq!(seen.headers_named("x-latchkey-role"), ["owner"]);
    assert_eq!(seen.header("cookie"), Some("theirs=1; other=2"));
    assert_eq!(seen.header("x-kept"), Some("yes"));
    for (name, value) in &seen.headers {
        assert!(
            !value.contains("mallory") && !value.contains("latchkey-session"),
            "{name}: {value} reached the upstream"
        );
    }
    for gone in [
        "x-latchkey-groups",
        "x-forwarded-user",
        "remote-user",
        "x-auth-request-user",
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "x-real-ip",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} reached the upstream");
    }
    let rid = seen
        .header("x-request-id")
        .expect("the upstream gets a request id");
    assert_eq!(r.headers_named("x-request-id"), [rid]);

    // A name with '_' is left to hyper, which refuses it; the upstream sees nothing.
    c.send(format!(
        "GET /user/john/under HTTP/1.1\r\nHost: {}\r\nCookie: {session}\r\nX_Latchkey_User: mallory\r\n\r\n",
        john.host
    ))
    .await;
    let r = c.response().await;
    assert_eq!(r.status, 400);
    assert_eq!(up.seen().len(), 1);

    // Without a session: sent to sign in, the upstream sees nothing.
    let anon = Caller::anonymous(&lk);
    let mut c = anon.connect().await;
    c.send(anon.request("GET", "/user/john/who", &["X-Latchkey-User: john"], b""))
        .await;
    let r = c.response().await;
    assert!(matches!(r.status, 302 | 303), "{}", r.status);
    assert!(
        r.header("location")
            .unwrap()
            .starts_with("/hub/login?next=")
    );
    assert!(r.header("x-request-id").is_some());
    assert_eq!(up.seen().len(), 1);
}
both_stores!(identities_and_the_session_cookie_stay_behind);

/// Host and Authorization may appear once: two of either are refused (a second Authorization
/// could carry a latchkey token past the check of the first), and the upstream sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_or_authorization_is_refused() {
    let (up, _lk, john) = johns_raw_server(echo).await;
    for extra in [
        "Host: other.example",
        "Authorization: token a\r\nAuthorization: token b",
    ] {
        let mut c = john.connect().await;
        c.send(john.request("GET", "/user/john/twice", &[extra], b""))
            .await;
        let r = c.response().await;
        assert_eq!(r.status, 400, "{extra}");
        assert!(r.text().contains("only once"), "{}", r.text());
    }
    assert!(up.seen().is_empty());
}

/// latchkey remembers the hash of a connection's last session cookie: each request is still
/// identified by the cookie it carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_on_a_connection_is_identified_by_its_own_cookie() {
    let (up, lk, john) = johns_raw_server(echo).await;
    let (name, value) = john.cookie.split_once('=').unwrap();
    // As well formed as john's, one character different.
    let last = value.chars().last().unwrap();
    let forged = format!(
        "{name}={}{}",
        &value[..value.len() - 1],
        if last == 'A' { 'B' } else { 'A' }
    );
    let stranger = Caller {
        cookie: forged,
        ..Caller::anonymous(&lk)
    };
    let anon = Caller::anonymous(&lk);
    let mut c = john.connect().await;
    for (who, expected) in [
        (&john, 200),
        (&stranger, 302),
        (&john, 200),
        (&anon, 302),
        (&john, 200),
    ] {
        c.send(who.get("/user/john/who")).await;
        let r = c.response().await;
        assert_eq!(r.status, expected, "cookie {:?}", who.cookie);
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    assert!(
        seen.iter()
            .all(|s| s.headers_named("x-latchkey-user") == ["john"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_have_no_body() {
    let (up, lk, john) = johns_raw_server(|req| {
        if req.method == "HEAD" {
            vec![Step::Write(
                b"HTTP/1.1 200 OK\r\nX-Up: raw\r\nContent-Length: 10\r\n\r\n".to_vec(),
            )]
        } else {
            echo(req)
        }
    })
    .await;
    let mut c = john.connect().await;
    c.send(john.request("HEAD", "/user/john/file", &[], b""))
        .await;
    let r = c.head_response().await;
    assert_fast(&r);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("10"));
    c.send(john.get("/user/john/next")).await;
    let r = c.response().await;
    assert_eq!((r.status, r.text().as_str()), (200, "GET /user/john/next"));
    // HEAD and GET in one write.
    let mut two = john.request("HEAD", "/user/john/file", &[], b"");
    two.extend(john.get("/user/john/again"));
    c.send(&two).await;
    assert_eq!(c.head_response().await.header("content-length"), Some("10"));
    let r = c.response().await;
    assert_eq!((r.status, r.text().as_str()), (200, "GET /user/john/again"));
    assert!(up.seen().iter().all(|s| s.conn == 0));

    // A HEAD latchkey refuses itself: the page's length, no page.
    let nina = Caller::signed_in(&lk, "nina").await;
    let mut c = nina.connect().await;
    let mut two = nina.request("HEAD", "/user/john/file", &[], b"");
    two.extend(nina.get("/user/john/file"));
    c.send(&two).await;
    let head = c.head_response().await;
    assert_eq!(head.status, 403);
    let r = c.response().await;
    assert_eq!(r.status, 403);
    assert_eq!(
        head.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert!(c.quiet_for(ms(100)).await);
    assert_eq!(up.seen().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_content_and_not_modified_have_no_body() {
    let (up, _lk, john) = johns_raw_server(|req| match req.target.as_str() {
        "/user/john/204" => vec![Step::Write(
            b"HTTP/1.1 204 No Content\r\nX-Up: raw\r\n\r\n".to_vec(),
        )],
        "/user/john/304" => vec![Step::Write(
            b"HTTP/1.1 304 Not Modified\r\nX-Up: raw\r\nETag: \"v1\"\r\nContent-Length: 100\r\n\r\n"
                .to_vec(),
        )],
        "/user/john/empty" => vec![Step::Write(answer("200 OK", &[], b""))],
        _ => echo(req),
    })
    .await;
    let mut c = john.connect().await;
    c.send(john.get("/user/john/204")).await;
    let r = c.response().await;
    assert_fast(&r);
    assert_eq!(r.status, 204);
    assert!(!r.is_chunked(), "{:?}", r.headers);
    c.send(john.request("GET", "/user/john/304", &["If-None-Match: \"v1\""], b""))
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some("\"v1\""));
    c.send(john.get("/user/john/empty")).await;
    let r = c.response().await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    c.send(john.get("/user/john/next")).await;
    let r = c.response().await;
    assert_eq!((r.status, r.text().as_str()), (200, "GET /user/john/next"));
    assert!(c.quiet_for(ms(100)).await);
    let seen = up.seen();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[1].header("if-none-match"), Some("\"v1\""));
    assert!(seen.iter().all(|s| s.conn == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields_and_latchkey_cookies_from_the_upstream_stay_behind() {
    let (_up, _lk, john) = johns_raw_server(|req| {
        vec![Step::Write(answer(
            "200 OK",
            &[
                "X-Private: 1",
                "Connection: keep-alive, X-Private, X-Other",
                "X-Other: 2",
                "Keep-Alive: timeout=5",
                "Set-Cookie: latchkey-session=forged; Path=/; HttpOnly",
                "Set-Cookie: theirs=1; Path=/user/john/",
                "Set-Cookie: __Host-latchkey-session=forged; Path=/; Secure",
                "Set-Cookie: latchkey-host-state=forged; Path=/",
                "Service-Worker-Allowed: /",
                "Proxy-Authenticate: Basic",
                "X-Kept: yes",
            ],
            req.target.as_bytes(),
        ))]
    })
    .await;
    let mut c = john.connect().await;
    for path in ["/user/john/a", "/user/john/b"] {
        c.send(john.get(path)).await;
        let r = c.response().await;
        assert_fast(&r);
        assert_eq!((r.status, r.text().as_str()), (200, path));
        for gone in [
            "x-private",
            "x-other",
            "keep-alive",
            "proxy-authenticate",
            "connection",
            "service-worker-allowed",
        ] {
            assert_eq!(r.header(gone), None, "{gone} reached the client");
        }
        assert_eq!(
            r.headers_named("set-cookie"),
            ["theirs=1; Path=/user/john/"]
        );
        assert_eq!(r.header("x-kept"), Some("yes"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_gets_502_and_a_silent_one_504() {
    let lk = Latchkey::start_with_env(None, "", &[("LATCHKEY_SERVER_UPSTREAM_TIMEOUT", "1")]).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let silent = RawUpstream::spawn(|_| vec![Step::Hang]).await;
    let ok = RawUpstream::spawn(echo).await;
    route(&lk, "", &format!("http://{dead}")).await;
    route(&lk, "silent", &silent.target()).await;
    route(&lk, "ok", &ok.target()).await;
    let john = Caller::signed_in(&lk, "john").await;
    let mut c = john.connect().await;

    c.send(john.get("/user/john/ok/warm")).await;
    assert_fast(&c.response().await);

    let started = Instant::now();
    c.send(john.get("/user/john/tree")).await;
    let r = c.response().await;
    assert_eq!(r.status, 502);
    assert!(started.elapsed() < ms(900));
    let rid = r.header("x-request-id").expect("a request id").to_owned();
    assert!(r.text().contains("Server not reachable"), "{}", r.text());
    assert!(r.text().contains(&rid));
    assert!(!r.text().contains(&dead.to_string()));

    let started = Instant::now();
    c.send(john.get("/user/john/silent/")).await;
    let r = c.response().await;
    let took = started.elapsed();
    assert_eq!(r.status, 504);
    assert!(took >= ms(900) && took < ms(1900), "{took:?}");
    let rid = r.header("x-request-id").expect("a request id").to_owned();
    assert!(r.text().contains(&rid));
    assert_eq!(silent.seen().len(), 1);

    // POST with a body to the dead upstream: 502 too.
    c.send(john.request("POST", "/user/john/tree", &[], b"data"))
        .await;
    assert_eq!(c.response().await.status, 502);

    // The same client connection still works if latchkey kept it, and a new one does anyway.
    c.send(john.get("/user/john/ok/after")).await;
    match c.try_response(false).await {
        Ok(r) => assert_eq!(
            (r.status, r.text().as_str()),
            (200, "GET /user/john/ok/after")
        ),
        Err(_) => {
            let mut c = john.connect().await;
            c.send(john.get("/user/john/ok/after")).await;
            let r = c.response().await;
            assert_eq!(
                (r.status, r.text().as_str()),
                (200, "GET /user/john/ok/after")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_a_complete_answer_never_answer_the_next_request() {
    let smuggled = answer("200 OK", &[], b"smuggled").to_vec();
    let s2 = smuggled.clone();
    let (up, _lk, john) = johns_raw_server(move |req| match req.target.as_str() {
        // More than the Content-Length, in the same write.
        "/user/john/extra" => {
            let mut a = answer("200 OK", &[], b"ok");
            a.extend_from_slice(&s2);
            vec![Step::Write(a)]
        }
        // An unasked answer a little later.
        "/user/john/late" => vec![
            Step::Write(answer("200 OK", &[], b"ok")),
            Step::Sleep(ms(20)),
            Step::Write(s2.clone()),
        ],
        // Both Transfer-Encoding and Content-Length: the chunks count (RFC 9112 section 6.3).
        "/user/john/both" => {
            let mut a = b"HTTP/1.1 200 OK\r\nX-Up: raw\r\nContent-Length: 3\r\n\
                          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec();
            a.extend_from_slice(&s2);
            vec![Step::Write(a)]
        }
        _ => echo(req),
    })
    .await;
    let mut c = john.connect().await;
    for path in ["/user/john/extra", "/user/john/late", "/user/john/both"] {
        c.send(john.get(path)).await;
        let r = c.response().await;
        assert_fast(&r);
        assert_eq!(r.status, 200);
        if path.ends_with("both") {
            assert_eq!(r.text(), "hello");
            assert_eq!(r.header("content-length"), None);
        } else {
            assert_eq!(r.text(), "ok");
        }
        tokio::time::sleep(ms(150)).await;
        let next = format!("{path}/next");
        c.send(john.get(&next)).await;
        let r = c.response().await;
        assert_eq!((r.status, r.text()), (200, format!("GET {next}")), "{path}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 6);
    for pair in seen.chunks(2) {
        assert_ne!(
            pair[0].conn, pair[1].conn,
            "{}: a connection with stray bytes is not used again",
            pair[0].target
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_body_is_never_read_as_a_request() {
    let (up, lk, _john) = johns_raw_server(echo).await;
    let nina = Caller::signed_in(&lk, "nina").await;
    let mut c = nina.connect().await;
    // The body is a request of its own; it must not be answered.
    let body = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", nina.host);
    c.send(nina.request("POST", "/user/john/x", &[], body.as_bytes()))
        .await;
    let r = c.response().await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("not shared with you"));
    c.send(nina.get("/user/john/y")).await;
    let r = c.response().await;
    assert_eq!(r.status, 403, "the next answer is for the next request");
    assert!(c.quiet_for(ms(100)).await);

    // The body not there yet when latchkey refuses: it closes rather than read it as a request.
    let mut c = nina.connect().await;
    let request = nina.request("POST", "/user/john/x", &[], body.as_bytes());
    let (head, rest) = request.split_at(request.len() - body.len());
    c.send(head).await;
    let r = c.response().await;
    assert_eq!(r.status, 403);
    c.send(rest).await;
    match c.try_response(false).await {
        Err(_) => {}
        Ok(r) => panic!(
            "the body was answered as a request: {} {:?}",
            r.status,
            r.text()
        ),
    }
    assert!(up.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_answer_closes_the_client_connection_and_is_still_counted() {
    let (_up, lk, john) = johns_raw_server(|req| match req.target.as_str() {
        "/user/john/short" => vec![
            Step::Write(
                b"HTTP/1.1 200 OK\r\nX-Up: raw\r\nContent-Length: 100\r\n\r\n0123456789".to_vec(),
            ),
            Step::Sleep(ms(20)),
            Step::Close,
        ],
        "/user/john/bad-chunk-later" => vec![
            Step::Write(
                b"HTTP/1.1 200 OK\r\nX-Up: raw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                    .to_vec(),
            ),
            Step::Sleep(ms(20)),
            Step::Write(b"zz\r\n".to_vec()),
            Step::Hang,
        ],
        "/user/john/bad-chunk" => vec![
            Step::Write(
                b"HTTP/1.1 200 OK\r\nX-Up: raw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX"
                    .to_vec(),
            ),
            Step::Hang,
        ],
        _ => echo(req),
    })
    .await;
    let mut uncounted = vec![];
    for path in [
        "/user/john/short",
        "/user/john/bad-chunk-later",
        "/user/john/bad-chunk",
        "/user/john/fine",
    ] {
        let before = requests_counted(&lk, "proxy").await;
        let mut c = john.connect().await;
        c.send(john.get(path)).await;
        let started = Instant::now();
        let r = c.try_response(false).await;
        if path.ends_with("fine") {
            assert_eq!(r.unwrap().status, 200);
        } else if path.ends_with("bad-chunk") {
            // Broken before anything reached the client: it can still be told.
            assert_eq!(r.unwrap().status, 502, "{path}");
        } else {
            assert!(r.is_err(), "{path}: {r:?}");
            assert!(
                started.elapsed() < ms(1000),
                "{path}: latchkey closed the client connection"
            );
            assert!(c.closed_within(ms(500)).await, "{path}");
        }
        // The count follows the answer by a moment.
        let counted = eventually(ms(500), async || {
            requests_counted(&lk, "proxy").await - before >= 1.0
        })
        .await;
        if !counted {
            uncounted.push(path);
        }
    }
    assert!(
        uncounted.is_empty(),
        "every proxied request is counted (latchkey_requests_total) and logged; not: {uncounted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_access_ends_a_streamed_answer() {
    // Three seconds of ticks, chunked, until the upstream closes, or as a download of a known
    // length.
    let (_up, lk, _john) = johns_raw_server(ticking_answers).await;
    let (john, _, nina) = shared_with_nina(&lk).await;
    let mut streams = vec![];
    for path in [
        "/user/john/chunked",
        "/user/john/no-length",
        "/user/john/length",
    ] {
        let mut c = nina.connect().await;
        c.send(nina.get(path)).await;
        let (status, headers, _) = c.response_head().await.unwrap();
        assert_eq!(status, 200, "{path}");
        assert!(headers.iter().any(|(n, _)| n == "X-Up"), "{headers:?}");
        assert!(c.wire.fill(20).await, "{path}: the stream flows");
        streams.push((path, c));
    }

    john.revoke("john/", "nina").await;
    for (path, mut c) in streams {
        assert!(
            c.closed_within(ms(1500)).await,
            "{path}: the revoked stream must end"
        );
        assert!(
            !c.wire.buf.ends_with(b"0\r\n\r\n") && c.wire.buf.len() < half_of(path),
            "{path}: cut off, not finished: {} bytes",
            c.wire.buf.len()
        );
    }
    let mut c = nina.connect().await;
    c.send(nina.get("/user/john/chunked")).await;
    assert_eq!(c.response().await.status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_access_ends_an_answer_stuck_on_a_client_that_stopped_reading() {
    // The upstream sends a long download as fast as it can; nina's client reads the head and
    // then nothing, so latchkey's write to her blocks once the socket buffers are full. Her
    // revocation must end the exchange there and then (the upstream sees its connection
    // closed), not when her client reads again.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}", listener.local_addr().unwrap());
    let (closed_tx, closed) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = vec![];
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await.unwrap() == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let answer = b"HTTP/1.1 200 OK\r\nX-Up: raw\r\nContent-Length: 1073741824\r\n\r\n";
        stream.write_all(answer).await.unwrap();
        let block = vec![b'x'; 64 * 1024];
        while stream.write_all(&block).await.is_ok() {}
        let _ = closed_tx.send(());
    });
    let lk = Latchkey::spawn(Backend::Memory).await;
    route(&lk, "", &target).await;
    let (john, _, nina) = shared_with_nina(&lk).await;
    let mut c = nina.connect().await;
    c.send(nina.get("/user/john/download")).await;
    let (status, headers, _) = c.response_head().await.unwrap();
    assert_eq!(status, 200);
    assert!(headers.iter().any(|(n, _)| n == "X-Up"), "{headers:?}");
    // Long enough for every buffer on the way to fill up.
    tokio::time::sleep(ms(500)).await;

    john.revoke("john/", "nina").await;
    assert!(
        tokio::time::timeout(ms(2000), closed).await.is_ok(),
        "latchkey gave up the upstream connection while nina's client was not reading"
    );
    assert!(
        c.closed_within(ms(5000)).await,
        "nina's connection ends once she reads what was already on its way"
    );
}

/// john's browser, and nina, who accepted his invite (role `use`): her browser, and a raw
/// client with her cookie.
async fn shared_with_nina(lk: &Latchkey) -> (Browser, Browser, Caller) {
    let john = lk.signed_in("john").await;
    let nina_browser = lk.signed_in("nina").await;
    share(&john, &nina_browser).await;
    let nina = Caller {
        cookie: nina_browser.cookie_header("/user/"),
        ..Caller::anonymous(lk)
    };
    (john, nina_browser, nina)
}

/// An invite from john to his server, accepted by `by`.
async fn share(john: &Browser, by: &Browser) {
    let (code, _) = john.invite("john/", json!({"role": "use"})).await;
    assert_eq!(by.accept(&code).await.status(), StatusCode::SEE_OTHER);
}

/// Half of what `ticking_answers` sends for a path: a revoked answer ends before this.
fn half_of(path: &str) -> usize {
    if path.ends_with("length") && !path.ends_with("no-length") {
        150 * 1024 / 2
    } else {
        1500 / 2
    }
}

/// Three seconds of ticks: chunked, until the upstream closes, or with a Content-Length (the
/// paths' names); `late-` in front: the answer starts after 600 ms.
fn ticking_answers(req: &RawRequest) -> Vec<Step> {
    let target = req.target.replace("/late-", "/");
    let kib = [b'x'; 1024];
    let (head, tick, end): (&[u8], &[u8], Step) = match target.as_str() {
        "/user/john/chunked" => (
            b"HTTP/1.1 200 OK\r\nX-Up: raw\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5\r\ntick\n\r\n",
            Step::Write(b"0\r\n\r\n".to_vec()),
        ),
        "/user/john/no-length" => (
            b"HTTP/1.1 200 OK\r\nX-Up: raw\r\n\r\n",
            b"tick\n",
            Step::Close,
        ),
        // 150 ticks of 1 KiB: long enough to be cut off.
        "/user/john/length" => (
            b"HTTP/1.1 200 OK\r\nX-Up: raw\r\nContent-Length: 153600\r\n\r\n",
            &kib,
            Step::Sleep(ms(0)),
        ),
        _ => return echo(req),
    };
    let mut s = vec![];
    if target != req.target {
        s.push(Step::Sleep(ms(600)));
    }
    s.push(Step::Write(head.to_vec()));
    for _ in 0..150 {
        s.push(Step::Write(tick.to_vec()));
        s.push(Step::Sleep(ms(20)));
    }
    s.push(end);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_while_the_upstream_has_not_answered_yet_refuses_the_answer() {
    // The access check passes, then the upstream takes 600 ms to start its answer; nina is
    // revoked in that time, when her request has no stream to close yet.
    let (_up, lk, _john) = johns_raw_server(ticking_answers).await;
    let (john, nina_browser, nina) = shared_with_nina(&lk).await;
    for path in ["/user/john/late-chunked", "/user/john/late-length"] {
        let mut c = nina.connect().await;
        c.send(nina.get(path)).await;
        tokio::time::sleep(ms(200)).await;
        john.revoke("john/", "nina").await;
        // Checked again when the answer starts (the periodic recheck of open connections would
        // only cut it later): nothing of the upstream's answer reaches her.
        let r = c.response().await;
        assert_eq!(r.status, 403, "{path}");
        assert!(r.text().contains("on its way"), "{path}: {}", r.text());
        assert!(
            !r.headers.iter().any(|(n, _)| n == "X-Up"),
            "{path}: {:?}",
            r.headers
        );
        // Shared again for the next path.
        share(&john, &nina_browser).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_deleted_while_the_upstream_has_not_answered_yet_refuses_the_answer() {
    // john's own server, so only his API token can end his access: he deletes it while the
    // upstream takes 600 ms to start its answer to a request made with it.
    let (_up, lk, _) = johns_raw_server(ticking_answers).await;
    let john = lk.signed_in("john").await;
    let (token, id) = new_api_token(&john, "john", json!({"note": "script"})).await;
    let script = Caller::anonymous(&lk);
    let auth = format!("Authorization: token {token}");
    let mut c = script.connect().await;
    c.send(script.request("GET", "/user/john/late-chunked", &[&auth], b""))
        .await;
    tokio::time::sleep(ms(200)).await;
    assert_eq!(
        delete_api_token(&john, "john", &id).await,
        StatusCode::NO_CONTENT
    );
    let r = c.response().await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("on its way"), "{}", r.text());
    assert!(
        !r.headers.iter().any(|(n, _)| n == "X-Up"),
        "{:?}",
        r.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_across_client_connections_and_routes() {
    let (up, lk, john) = johns_raw_server(echo).await;
    let other = RawUpstream::spawn(echo).await;
    route(&lk, "lab", &other.target()).await;

    // Connection: close is honoured; the upstream connection goes to the pool.
    let mut c = john.connect().await;
    c.send(john.request("GET", "/user/john/a", &["Connection: close"], b""))
        .await;
    let r = c.response().await;
    assert_fast(&r);
    assert_eq!((r.status, r.text().as_str()), (200, "GET /user/john/a"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_within(ms(500)).await);
    assert_eq!(up.seen()[0].header("connection"), None);

    let mut c = john.connect().await;
    for path in [
        "/user/john/b",
        "/user/john/lab/c",
        "/user/john/d",
        "/user/john/lab/e",
    ] {
        c.send(john.get(path)).await;
        let r = c.response().await;
        assert_eq!((r.status, r.text()), (200, format!("GET {path}")));
    }
    assert_eq!(up.connections(), 1, "one connection for three requests");
    assert_eq!(other.connections(), 1);
    assert_eq!(up.seen().len(), 3);
    assert_eq!(other.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_watched_for_revocation_keep_their_upstream_connection_when_complete() {
    // A download over 64 KiB and a chunked answer are registered (revocation would cut them);
    // finished, their upstream connection goes back to the pool like any other.
    let big = noise(100 * 1024);
    let body = big.clone();
    let (up, lk, _john) = johns_raw_server(move |req| match req.target.as_str() {
        "/user/john/big" => vec![Step::Write(answer("200 OK", &[], &body))],
        "/user/john/chunked" => vec![Step::Write(
            b"HTTP/1.1 200 OK\r\nX-Up: raw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        )],
        _ => echo(req),
    })
    .await;
    let (_, _, nina) = shared_with_nina(&lk).await;
    let mut c = nina.connect().await;
    for _ in 0..2 {
        c.send(nina.get("/user/john/big")).await;
        let r = c.response().await;
        assert_fast(&r);
        assert_eq!((r.status, r.body.len()), (200, big.len()));
        assert!(r.body == big);
        c.send(nina.get("/user/john/chunked")).await;
        let r = c.response().await;
        assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    }
    c.send(nina.get("/user/john/x")).await;
    assert_eq!(c.response().await.text(), "GET /user/john/x");
    assert_eq!(
        up.connections(),
        1,
        "one upstream connection for five answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_left_to_hyper_still_work_on_the_same_connection() {
    let (up, _lk, john) = johns_raw_server(digest_or_echo).await;
    let mut c = john.connect().await;
    c.send(john.get("/user/john/a")).await;
    assert_fast(&c.response().await);

    // A chunked upload.
    c.send(john.request(
        "POST",
        "/user/john/chunked-upload",
        &["Transfer-Encoding: chunked"],
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    ))
    .await;
    let r = c.response().await;
    assert_eq!((r.status, r.text()), (200, digest(b"hello world")));
    // Expect: 100-continue.
    c.send(john.request(
        "POST",
        "/user/john/expect",
        &["Expect: 100-continue"],
        b"12345",
    ))
    .await;
    let r = c.response().await;
    assert_eq!((r.status, r.text()), (200, digest(b"12345")));
    c.send(john.get("/user/john/b")).await;
    let r = c.response().await;
    assert_eq!((r.status, r.text().as_str()), (200, "GET /user/john/b"));

    // Both framings: Transfer-Encoding wins, and the upstream never gets both.
    let mut c = john.connect().await;
    c.send(john.request(
        "POST",
        "/user/john/both",
        &["Transfer-Encoding: chunked", "Content-Length: 3"],
        b"",
    ))
    .await;
    c.send(b"3\r\nabc\r\n0\r\n\r\n").await;
    let r = c.response().await;
    assert_eq!((r.status, r.text()), (200, digest(b"abc")));
    assert!(
        c.closed_within(ms(500)).await,
        "a request with both framings ends its connection (RFC 9112 section 6.3)"
    );

    // HTTP/1.0.
    let mut c = john.connect().await;
    c.send(format!(
        "GET /user/john/old HTTP/1.0\r\nHost: {}\r\nCookie: {}\r\n\r\n",
        john.host, john.cookie
    ))
    .await;
    let r = c.response().await;
    assert_eq!((r.status, r.text().as_str()), (200, "GET /user/john/old"));

    // Two different lengths: refused, and nothing reaches the upstream.
    let mut c = john.connect().await;
    c.send(format!(
        "POST /user/john/two-lengths HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\n\
         Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        john.host, john.cookie
    ))
    .await;
    assert_eq!(c.response().await.status, 400);

    let seen = up.seen();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            "/user/john/a",
            "/user/john/chunked-upload",
            "/user/john/expect",
            "/user/john/b",
            "/user/john/both",
            "/user/john/old"
        ]
    );
    for s in &seen {
        assert!(
            !(s.header("transfer-encoding").is_some() && s.header("content-length").is_some()),
            "{}: both framings reached the upstream",
            s.target
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_that_arrive_in_pieces_are_read_whole() {
    let (up, _lk, john) = johns_raw_server(|req| {
        // The answer head three bytes at a time.
        answer("200 OK", &["X-Pieces: yes"], req.target.as_bytes())
            .chunks(3)
            .flat_map(|p| [Step::Write(p.to_vec()), Step::Sleep(ms(1))])
            .collect()
    })
    .await;
    let mut c = john.connect().await;
    let request = john.request("POST", "/user/john/pieces", &[], b"body!");
    for byte in &request {
        c.send([*byte]).await;
        tokio::time::sleep(ms(1)).await;
    }
    let r = c.response().await;
    assert_fast(&r);
    assert_eq!((r.status, r.text().as_str()), (200, "/user/john/pieces"));
    assert_eq!(r.header("x-pieces"), Some("yes"));
    assert_eq!(up.seen()[0].body, b"body!");
    c.send(john.get("/user/john/next")).await;
    assert_eq!(c.response().await.text(), "/user/john/next");
}

/// The same request through hyper: a header name with '_' (not an identity header's) makes
/// latchkey's own path hand the connection over.
const VIA_HYPER: &str = "X_Via: hyper";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_treat_requests_and_answers_alike() {
    let (up, _lk, john) = johns_raw_server(|req| {
        let t = req.target.as_str();
        let w = |b: &[u8]| vec![Step::Write(b.to_vec())];
        if t.ends_with("/chunked") {
            w(b"HTTP/1.1 200 OK\r\nX-Up: raw\r\nTransfer-Encoding: chunked\r\n\r\n\
                5\r\nhello\r\n0\r\n\r\n")
        } else if t.ends_with("/no-length") {
            vec![
                Step::Write(b"HTTP/1.1 200 OK\r\nX-Up: raw\r\n\r\nuntil".to_vec()),
                Step::Sleep(ms(20)),
                Step::Write(b" close".to_vec()),
                Step::Close,
            ]
        } else if t.ends_with("/204") {
            w(b"HTTP/1.1 204 No Content\r\nX-Up: raw\r\n\r\n")
        } else if t.ends_with("/304") {
            w(b"HTTP/1.1 304 Not Modified\r\nX-Up: raw\r\nETag: \"1\"\r\nContent-Length: 100\r\n\r\n")
        } else if t.ends_with("/fields") {
            w(&answer(
                "200 OK",
                &[
                    "Connection: X-Private",
                    "X-Private: 1",
                    "Set-Cookie: latchkey-session=x; Path=/",
                    "Set-Cookie: a=1",
                    "Keep-Alive: timeout=3",
                    "X-Request-Id: upstream-id",
                    "Content-Type: text/plain",
                ],
                b"fields",
            ))
        } else if t.ends_with("/hints") {
            w(b"HTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\n\
                HTTP/1.1 200 OK\r\nX-Up: raw\r\nContent-Length: 2\r\n\r\nok")
        } else if t.ends_with("/odd-status") {
            w(b"HTTP/1.1 299 Whatever\r\nX-Up: raw\r\nContent-Length: 2\r\n\r\nok")
        } else if t.ends_with("/http10") {
            w(b"HTTP/1.0 200 OK\r\nX-Up: raw\r\nContent-Length: 2\r\n\r\nok")
        } else {
            echo(req)
        }
    })
    .await;
    let lower = |h: &[(String, String)], skip: &[&str]| {
        let mut v: Vec<(String, String)> = h
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .filter(|(n, _)| !skip.contains(&n.as_str()))
            .collect();
        v.sort();
        v
    };
    let cases: Vec<(&str, &str, Vec<&str>, &[u8])> = vec![
        (
            "GET",
            "/user/john/plain?a=1&b=%2F",
            vec![
                "Accept: */*",
                "X-Latchkey-User: mallory",
                "Cookie: a=1; latchkey-session=forged",
                "Connection: X-Hop",
                "X-Hop: 1",
                "X-Forwarded-For: 10.9.9.9",
                "X-Forwarded-Proto: https",
                "X-Forwarded-Host: elsewhere",
                "Forwarded: for=10.9.9.9",
                "TE: trailers",
            ],
            b"",
        ),
        (
            "POST",
            "/user/john/post",
            vec!["Content-Type: text/plain"],
            b"data",
        ),
        (
            "POST",
            "/user/john/post",
            vec!["Origin: http://elsewhere.example"],
            b"data",
        ),
        ("PUT", "/user/john/put", vec![], b""),
        ("DELETE", "/user/john/plain", vec![], b""),
        ("OPTIONS", "/user/john/plain", vec![], b""),
        ("HEAD", "/user/john/plain", vec![], b""),
        ("GET", "/user/john/chunked", vec![], b""),
        ("GET", "/user/john/no-length", vec![], b""),
        ("GET", "/user/john/204", vec![], b""),
        ("GET", "/user/john/304", vec![], b""),
        ("GET", "/user/john/fields", vec![], b""),
        ("GET", "/user/john/hints", vec![], b""),
        ("GET", "/user/john/odd-status", vec![], b""),
        ("GET", "/user/john/http10", vec![], b""),
        ("GET", "/user/john/a//b", vec![], b""),
        ("GET", "/user/john", vec![], b""),
    ];
    for (method, path, fields, body) in cases {
        let mut got = vec![];
        for via in [None, Some(VIA_HYPER)] {
            let mut fields = fields.clone();
            fields.extend(via);
            let before = up.seen().len();
            let mut c = john.connect().await;
            c.send(john.request(method, path, &fields, body)).await;
            let r = c.try_response(method == "HEAD").await.map(|r| {
                let rid = r.header("x-request-id").unwrap_or("-").to_owned();
                let skip = [
                    "date",
                    "x-request-id",
                    "transfer-encoding",
                    "content-length",
                    "connection",
                ];
                (
                    r.status,
                    lower(&r.headers, &skip),
                    r.text().replace(&rid, "RID"),
                )
            });
            let seen = up.seen().get(before).cloned().map(|s| {
                let headers = lower(&s.headers, &["x-request-id", "x_via"]);
                (s.method, s.target, headers, s.body)
            });
            got.push((r, seen));
        }
        assert_eq!(
            got[0], got[1],
            "{method} {path}: latchkey's own path (left) and hyper (right) differ"
        );
    }
}

/// An upstream that answers 413 as soon as it has a request head, and then neither reads the
/// body nor closes the connection.
async fn impatient_upstream() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = vec![];
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let _ = s
                    .write_all(&answer(
                        "413 Payload Too Large",
                        &["Connection: close"],
                        b"too large",
                    ))
                    .await;
                std::future::pending::<()>().await;
            });
        }
    });
    addr
}

/// Writes a request head and a body of `len` bytes in the background, and reads the answer's
/// status line meanwhile.
async fn post_while_reading(base: &str, head: Vec<u8>, len: usize) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(&head).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            if wr.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            left -= n;
        }
        std::future::pending::<()>().await;
    });
    let mut got = vec![];
    let r = tokio::time::timeout(ms(1500), async {
        let mut b = [0u8; 4096];
        while !got.windows(2).any(|w| w == b"\r\n") {
            let n = rd.read(&mut b).await.unwrap_or(0);
            if n == 0 {
                return Err(format!("closed, got {:?}", String::from_utf8_lossy(&got)));
            }
            got.extend_from_slice(&b[..n]);
        }
        Ok(String::from_utf8_lossy(&got)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned())
    })
    .await;
    writer.abort();
    r.map_err(|_| "no answer within 1.5 s".to_owned())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_reaches_the_client_while_the_body_is_still_coming() {
    let lk = Latchkey::spawn(Backend::Memory).await;
    let upstream = impatient_upstream().await;
    route(&lk, "", &format!("http://{upstream}")).await;
    let john = Caller::signed_in(&lk, "john").await;
    // 64 MiB: more than the socket buffers between latchkey and the upstream hold.
    let len = 64 * 1024 * 1024;
    let head = |fields: &[&str]| {
        let mut f = vec!["Content-Type: application/octet-stream"];
        f.extend_from_slice(fields);
        String::from_utf8(john.request("POST", "/user/john/upload", &f, b""))
            .unwrap()
            .replace("Content-Length: 0", &format!("Content-Length: {len}"))
            .into_bytes()
    };
    // Through hyper, the upstream's answer arrives at once.
    let r = post_while_reading(&john.base, head(&[VIA_HYPER]), len).await;
    assert_eq!(r.as_deref(), Ok("HTTP/1.1 413 Payload Too Large"));
    // The same through latchkey's own path.
    let r = post_while_reading(&john.base, head(&[]), len).await;
    assert_eq!(r.as_deref(), Ok("HTTP/1.1 413 Payload Too Large"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_trailer_cannot_set_latchkeys_session_cookie() {
    let (_up, _lk, john) = johns_raw_server(|_| {
        vec![Step::Write(
            b"HTTP/1.1 200 OK\r\nX-Up: raw\r\nTransfer-Encoding: chunked\r\nTrailer: Set-Cookie\r\n\r\n\
              5\r\nhello\r\n0\r\nSet-Cookie: latchkey-session=forged; Path=/\r\n\r\n"
                .to_vec(),
        )]
    })
    .await;
    let mut c = john.connect().await;
    c.send(john.request("GET", "/user/john/", &["TE: trailers"], b""))
        .await;
    let r = c.response().await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    for (name, value) in r.headers.iter().chain(&r.trailers) {
        assert!(
            !(name.eq_ignore_ascii_case("set-cookie") && value.contains("latchkey-session=")),
            "the upstream set latchkey's session cookie: {name}: {value} (trailers: {:?})",
            r.trailers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_host_is_refused_or_forwarded_with_one() {
    let (up, _lk, john) = johns_raw_server(echo).await;
    for via in [Some(VIA_HYPER), None] {
        let fields: Vec<&str> = via.into_iter().collect();
        let request = String::from_utf8(john.request("GET", "/user/john/no-host", &fields, b""))
            .unwrap()
            .replace(&format!("Host: {}\r\n", john.host), "");
        assert!(!request.contains("Host:"));
        let before = up.seen().len();
        let mut c = john.connect().await;
        c.send(&request).await;
        let r = c.response().await;
        let path = if via.is_some() {
            "hyper"
        } else {
            "latchkey's own path"
        };
        if r.status == 400 {
            continue;
        }
        assert_eq!(r.status, 200, "{path}");
        let seen = &up.seen()[before];
        assert!(
            seen.header("host").is_some(),
            "{path}: an HTTP/1.1 request without Host reached the upstream: {:?}",
            seen.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_header_cannot_take_the_length_off_a_body() {
    // `Connection: content-length` names the length as hop-by-hop. Were it dropped and the body
    // forwarded, the body would be read upstream as a second request that no access check saw.
    let (up, _lk, john) = johns_raw_server(digest_or_echo).await;
    let smuggled =
        b"GET /user/john/smuggled HTTP/1.1\r\nHost: x\r\nX-Latchkey-User: mallory\r\n\r\n".to_vec();
    for connection in [
        "Connection: content-length",
        "Connection: Content-Length, keep-alive",
    ] {
        let mut c = john.connect().await;
        c.send(john.request("POST", "/user/john/form", &[connection], &smuggled))
            .await;
        let r = c.response().await;
        assert_fast(&r);
        assert_eq!(
            (r.status, r.text()),
            (200, digest(&smuggled)),
            "{connection}"
        );
        c.send(john.get("/user/john/after")).await;
        let r = c.response().await;
        assert_eq!((r.status, r.text().as_str()), (200, "GET /user/john/after"));
    }
    let seen = up.seen();
    assert!(
        seen.iter().all(|r| r.target != "/user/john/smuggled"),
        "the body reached the upstream as a request"
    );
    assert_eq!(seen.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interim_answer_during_an_upload_does_not_stop_it() {
    // An upstream that sends 103 Early Hints as soon as it has the request's head, then reads
    // the whole body and answers with its digest.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the request head");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap();
        s.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
            .await
            .unwrap();
        let mut body = buf[end..].to_vec();
        while body.len() < length {
            let mut chunk = vec![0u8; 64 * 1024];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the rest of the body");
            body.extend_from_slice(&chunk[..n]);
        }
        let text = digest(&body);
        let answer = format!(
            "HTTP/1.1 200 OK\r\nX-Up: raw\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        s.write_all(answer.as_bytes()).await.unwrap();
    });
    let lk = Latchkey::spawn(Backend::Memory).await;
    route(&lk, "", &target).await;
    let john = Caller::signed_in(&lk, "john").await;

    // The head and a little of the body, then the rest once the 103 has had time to arrive.
    let body = noise(2 * 1024 * 1024);
    let request = john.request("POST", "/user/john/upload", &[], &body);
    let split = request.len() - body.len() + 1000;
    let mut c = john.connect().await;
    c.send(&request[..split]).await;
    tokio::time::sleep(ms(300)).await;
    c.send(&request[split..]).await;
    let r = c.response().await;
    assert_fast(&r);
    assert_eq!((r.status, r.text()), (200, digest(&body)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_whose_access_ends_while_it_opens_is_refused() {
    // The upstream takes 600 ms to accept the upgrade; nina is revoked in that time. Bytes she
    // sent behind her request (here an HTTP request, for the upstream to record) must not
    // reach it, and she is told no instead of 101.
    let (up, lk, _john) = johns_raw_server(|req| match req.target.as_str() {
        "/user/john/late-ws" => vec![
            Step::Sleep(ms(600)),
            Step::Write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                    .to_vec(),
            ),
        ],
        _ => echo(req),
    })
    .await;
    let (john, _, nina) = shared_with_nina(&lk).await;
    let mut c = nina.connect().await;
    let mut bytes = nina.request(
        "GET",
        "/user/john/late-ws",
        &[
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
        b"",
    );
    bytes.extend_from_slice(b"GET /user/john/after-revocation HTTP/1.1\r\nHost: x\r\n\r\n");
    c.send(bytes).await;
    tokio::time::sleep(ms(200)).await;
    john.revoke("john/", "nina").await;
    let (status, _, _) = c.response_head().await.unwrap();
    assert_eq!(status, 403);
    tokio::time::sleep(ms(300)).await;
    let seen: Vec<String> = up.seen().iter().map(|r| r.target.clone()).collect();
    assert_eq!(seen, ["/user/john/late-ws"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_its_sending_side_after_its_request_still_gets_the_answer() {
    // Some clients (nc -N, health checkers) shut down their side once the request is sent.
    let (_up, _lk, john) = johns_raw_server(echo).await;
    for path in ["/user/john/x", "/healthz", "/hub/api/user"] {
        let mut c = john.connect().await;
        c.send(john.get(path)).await;
        tokio::io::AsyncWriteExt::shutdown(&mut c.wire.stream)
            .await
            .unwrap();
        let r = c.response().await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_access_ends_a_long_download_over_http2() {
    // HTTP/2 requests take hyper's path, not latchkey's own: there too a download with a
    // Content-Length (150 KiB over 3 s) is cut off when access ends.
    let (_up, lk, _john) = johns_raw_server(ticking_answers).await;
    let (john, _, nina) = shared_with_nina(&lk).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut r = h2
        .get(lk.url("/user/john/length"))
        .header("cookie", &nina.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), StatusCode::OK);
    let mut got = r.chunk().await.unwrap().map_or(0, |c| c.len());
    assert!(got > 0, "the download flows");
    john.revoke("john/", "nina").await;
    let ended = tokio::time::timeout(ms(1500), async {
        loop {
            match r.chunk().await {
                Ok(Some(c)) => got += c.len(),
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the revoked download must end");
    assert!(ended.is_err(), "cut off, not finished");
    assert!(got < half_of("/user/john/length"), "{got} bytes");
}
