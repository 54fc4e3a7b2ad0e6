//! Sharing-path figures on Redis: invite accepts per second, and how long after a revoke-all
//! call returns the sharees' WebSockets are closed, across three latchkey instances.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::procs::{self, LOAD_CORE, Proc};
use crate::targets::{self, Env, PASSWORD, Running};
use crate::web::Browser;

/// Sharees in the revoke test (and users signed in for the accept test).
const SHAREES: usize = 120;
const ROUNDS: usize = 3;
const ACCEPT_CONCURRENCY: usize = 32;

fn redis(env: &Env) -> (Proc, u16) {
    let d = env.work.join("redis");
    std::fs::create_dir_all(&d).expect("a redis directory");
    let port = procs::free_port();
    let proc = Proc::spawn(
        "redis-server",
        LOAD_CORE,
        Path::new("redis-server"),
        &[
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "yes".into(),
            "--appendfsync".into(),
            "everysec".into(),
            "--dir".into(),
            d.display().to_string(),
        ],
        &[],
        &d.join("redis.log"),
    );
    assert!(
        procs::wait_port(port, Duration::from_secs(10)),
        "redis-server did not start"
    );
    (proc, port)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

pub async fn run(env: &Env, seconds: u64) -> Value {
    let (_redis, redis_port) = redis(env);
    let store = format!("redis://127.0.0.1:{redis_port}/0");
    let (a, api) = targets::spawn_latchkey(env, "latchkey-redis-a", &store, SHAREES);
    eprintln!(
        "  latchkey on Redis: started in {:.1} ms, idle RSS {} kB",
        a.startup.as_secs_f64() * 1e3,
        a.idle_rss_kb
    );
    targets::register_route(api, env.upstream_port).await;
    let base = a.url("");
    let john = Browser::new(&base);
    john.login("john", PASSWORD).await;
    let code = john.invite("john/").await;

    let started = Instant::now();
    let mut users = vec![];
    for i in 0..SHAREES {
        let b = Browser::new(&base);
        b.login(&format!("u{i:04}"), PASSWORD).await;
        b.xsrf().await;
        users.push(Arc::new(b));
    }
    let login_s = started.elapsed().as_secs_f64() / SHAREES as f64;
    eprintln!("  {SHAREES} sign-ins: {:.1} ms each", login_s * 1e3);

    let accepts = accept_rate(&users, &code, seconds).await;
    eprintln!(
        "  invite accepts: {:.0}/s (p50 {:.2} ms, p99 {:.2} ms)",
        accepts["rate"].as_f64().unwrap_or(0.0),
        accepts["p50_ms"].as_f64().unwrap_or(0.0),
        accepts["p99_ms"].as_f64().unwrap_or(0.0)
    );

    let (b, _) = targets::spawn_latchkey(env, "latchkey-redis-b", &store, SHAREES);
    let (c, _) = targets::spawn_latchkey(env, "latchkey-redis-c", &store, SHAREES);
    let instances = [&a, &b, &c];
    let mut same = vec![];
    let mut other = vec![];
    let mut early = 0;
    let mut premature = 0;
    let mut from_start = vec![];
    let mut unclosed = 0;
    let mut revoke_call_ms = vec![];
    for round in 0..ROUNDS {
        let r = revoke_round(&john, &users, &code, &instances).await;
        eprintln!(
            "  revoke round {}: call {:.1} ms, {} sockets, {} not closed within 10 s",
            round + 1,
            r.call_ms,
            r.same.len() + r.other.len() + r.unclosed,
            r.unclosed
        );
        same.extend(r.same);
        other.extend(r.other);
        early += r.early;
        premature += r.premature;
        from_start.extend(r.from_start);
        unclosed += r.unclosed;
        revoke_call_ms.push(r.call_ms);
    }
    let mut all: Vec<f64> = same.iter().chain(other.iter()).copied().collect();
    all.sort_by(f64::total_cmp);
    same.sort_by(f64::total_cmp);
    from_start.sort_by(f64::total_cmp);
    other.sort_by(f64::total_cmp);
    json!({
        "store": "redis-server (appendonly yes, appendfsync everysec), on the load core",
        "startup_ms": a.startup.as_secs_f64() * 1e3,
        "idle_rss_kb": a.idle_rss_kb,
        "sign_in_ms": login_s * 1e3,
        "accepts": accepts,
        "revoke": {
            "instances": 3,
            "sharees": SHAREES,
            "rounds": ROUNDS,
            "sockets": all.len() + unclosed,
            "not_closed_within_10s": unclosed,
            "closed_before_the_call_returned": early,
            "closed_before_the_call_was_sent": premature,
            "from_call_sent_p50_ms": percentile(&from_start, 0.5),
            "from_call_sent_p99_ms": percentile(&from_start, 0.99),
            "from_call_sent_max_ms": from_start.last().copied().unwrap_or(f64::NAN),
            "revoke_call_ms": revoke_call_ms,
            "p50_ms": percentile(&all, 0.5),
            "p99_ms": percentile(&all, 0.99),
            "max_ms": all.last().copied().unwrap_or(f64::NAN),
            "same_instance_p50_ms": percentile(&same, 0.5),
            "same_instance_p99_ms": percentile(&same, 0.99),
            "other_instances_p50_ms": percentile(&other, 0.5),
            "other_instances_p99_ms": percentile(&other, 0.99),
        },
    })
}

async fn accept_rate(users: &[Arc<Browser>], code: &str, seconds: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = vec![];
    for w in 0..ACCEPT_CONCURRENCY {
        let mine: Vec<Arc<Browser>> = users
            .iter()
            .skip(w)
            .step_by(ACCEPT_CONCURRENCY)
            .cloned()
            .collect();
        let code = code.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0u64;
            let mut failed = 0u64;
            let mut lat = vec![];
            let mut i = 0;
            while Instant::now() < deadline {
                let b = &mine[i % mine.len()];
                i += 1;
                let t = Instant::now();
                if b.try_accept(&code).await == 303 {
                    ok += 1;
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                } else {
                    failed += 1;
                }
            }
            (ok, failed, lat)
        }));
    }
    let (mut ok, mut failed, mut lat) = (0, 0, vec![]);
    for t in tasks {
        let (o, f, l) = t.await.expect("an accept task");
        ok += o;
        failed += f;
        lat.extend(l);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    json!({
        "concurrency": ACCEPT_CONCURRENCY,
        "users": users.len(),
        "accepted": ok,
        "failed": failed,
        "seconds": secs,
        "rate": ok as f64 / secs,
        "p50_ms": percentile(&lat, 0.5),
        "p99_ms": percentile(&lat, 0.99),
    })
}

struct Round {
    call_ms: f64,
    same: Vec<f64>,
    other: Vec<f64>,
    /// From the moment the revoke call was sent, every socket.
    from_start: Vec<f64>,
    early: usize,
    /// Closed before the revoke call was even sent: the measurement is broken.
    premature: usize,
    unclosed: usize,
}

/// Every sharee accepts the invite, opens a WebSocket (sharee i on instance i mod 3) and checks
/// the echo; then john revokes all users through the first instance. Each socket's close is
/// timed from the moment the revoke call returned.
async fn revoke_round(
    john: &Browser,
    users: &[Arc<Browser>],
    code: &str,
    instances: &[&Running],
) -> Round {
    for u in users {
        u.accept(code).await;
    }
    let mut watchers = vec![];
    for (i, u) in users.iter().enumerate() {
        let inst = instances[i % instances.len()];
        let url = inst.url("/user/john/ws").replacen("http://", "ws://", 1);
        let mut req = url.into_client_request().expect("a WebSocket request");
        let h = req.headers_mut();
        h.insert(
            "cookie",
            format!("latchkey-session={}", u.session())
                .parse()
                .expect("a cookie"),
        );
        h.insert("origin", inst.url("").parse().expect("an origin"));
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .unwrap_or_else(|e| panic!("sharee {i} opens a WebSocket: {e}"));
        ws.send(Message::text("hello")).await.expect("send");
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == "hello" => {}
            other => panic!("no echo through {}: {other:?}", inst.name),
        }
        let same = i % instances.len() == 0;
        watchers.push(tokio::spawn(async move {
            let closed = tokio::time::timeout(Duration::from_secs(12), async {
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
            .map(|_| Instant::now());
            (same, closed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let called = Instant::now();
    let status = john
        .api(reqwest::Method::DELETE, "/hub/api/shares/john/")
        .await;
    let returned = Instant::now();
    assert_eq!(status, 204, "revoke all users");
    let mut r = Round {
        call_ms: (returned - called).as_secs_f64() * 1e3,
        same: vec![],
        other: vec![],
        from_start: vec![],
        early: 0,
        premature: 0,
        unclosed: 0,
    };
    let limit = returned + Duration::from_secs(10);
    for w in watchers {
        let (same, closed) = w.await.expect("a watcher");
        match closed {
            Some(t) if t <= limit => {
                if t < called {
                    r.premature += 1;
                }
                if t < returned {
                    r.early += 1;
                }
                r.from_start
                    .push(t.saturating_duration_since(called).as_secs_f64() * 1e3);
                let ms = t.saturating_duration_since(returned).as_secs_f64() * 1e3;
                if same {
                    r.same.push(ms);
                } else {
                    r.other.push(ms);
                }
            }
            _ => r.unclosed += 1,
        }
    }
    r
}
