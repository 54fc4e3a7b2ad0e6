//! HTTP/2 from clients, and large bodies streamed both ways with flat memory.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::StatusCode;

use crate::helpers::*;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// A client that speaks HTTP/2 to latchkey (cleartext, prior knowledge): hyper's path.
fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_reach_http1_upstreams() {
    let (upstream, lk) = johns_server(Backend::Memory).await;
    let john = lk.signed_in("john").await;
    let cookie = john.cookie_header("/user/john/");
    let h2 = h2_client();
    let r = h2
        .get(lk.url("/user/john/h2"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), StatusCode::OK);
    let seen = upstream.last();
    assert_eq!(seen.path, "/user/john/h2");
    assert_eq!(seen.headers["x-latchkey-user"], "john");
    assert!(
        seen.headers.contains_key("host"),
        "the authority becomes Host upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_many_header_fields_arrives_whole_on_both_paths() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_upstream, lk) = johns_server(Backend::Memory).await;
    let john = lk.signed_in("john").await;
    let cookie = john.cookie_header("/user/john/");
    let fields_of = |head: &str| {
        (0..MANY_HEADERS)
            .filter(|i| head.contains(&format!("x-field-{i}: {i}\r\n")))
            .count()
    };

    // HTTP/1.1 takes latchkey's own path. Read by hand: reqwest's own client stops at 100.
    let mut s = tokio::net::TcpStream::connect(lk.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let request = format!(
        "GET /user/john/many-headers HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n",
        lk.base.trim_start_matches("http://")
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![];
    s.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(fields_of(&answer), MANY_HEADERS);
    assert!(answer.ends_with("many headers"));

    // HTTP/2 is forwarded by hyper's client, which allowed 100 fields and answered 502.
    let h2 = h2_client();
    let r = h2
        .get(lk.url("/user/john/many-headers"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), StatusCode::OK);
    for i in 0..MANY_HEADERS {
        assert_eq!(r.headers()[format!("x-field-{i}").as_str()], i.to_string());
    }
    assert_eq!(r.text().await.unwrap(), "many headers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_uploads_and_downloads_stream_with_flat_memory() {
    const MIB: usize = 1024 * 1024;
    const TOTAL_MIB: usize = 256;
    let (upstream, lk) = johns_server(Backend::Memory).await;
    let john = lk.signed_in("john").await;
    let before = rss_kib();

    // Upload: the upstream counts the bytes it receives.
    let chunk = Bytes::from(vec![7u8; MIB]);
    let body = futures_util::stream::iter(
        (0..TOTAL_MIB).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let r = john
        .client
        .post(john.url("/user/john/upload"))
        .body(reqwest::Body::wrap_stream(body))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(upstream.last().body_len, TOTAL_MIB * MIB);

    // Download: 256 MiB produced by the upstream, read as it arrives.
    let r = john.get("/user/john/big").await;
    assert_eq!(r.status(), StatusCode::OK);
    let mut s = r.bytes_stream();
    let mut n = 0;
    while let Some(c) = s.next().await {
        n += c.unwrap().len();
    }
    assert_eq!(n, TOTAL_MIB * MIB);
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "memory grew by {grown_mib} MiB while streaming {TOTAL_MIB} MiB"
    );
}
