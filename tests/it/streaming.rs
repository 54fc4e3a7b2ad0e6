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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_reach_http1_upstreams() {
    let (upstream, lk) = johns_server(Backend::Memory).await;
    let john = lk.signed_in("john").await;
    let cookie = john.cookie_header("/user/john/");
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
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
