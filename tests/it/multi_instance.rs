//! Several instances on one Redis: a change made through any instance holds on all of them,
//! revocation closes connections everywhere, and Redis faults are survived.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use http::StatusCode;
use reqwest::Method;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_posted_to_one_instance_is_served_by_the_others_within_a_second() {
    let upstream = Upstream::spawn().await;
    let rig = Rig::start(3).await;
    let john_on_b = rig.instances[1].signed_in("john").await;
    assert_eq!(
        john_on_b.get("/user/john/").await.status(),
        StatusCode::NOT_FOUND
    );
    rig.instances[0].register_john(&upstream).await;
    let served = eventually(Duration::from_secs(1), async || {
        john_on_b.get("/user/john/").await.status() == StatusCode::OK
    })
    .await;
    assert!(served, "instance B serves the route posted to A within 1 s");
    // A sign-in made on one instance is valid on every other (same cookie).
    let cookie = john_on_b.cookie_header("/user/john/");
    let on_c = reqwest::Client::new()
        .get(rig.instances[2].url("/user/john/"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(on_c.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_on_one_instance_closes_websockets_on_every_instance() {
    let upstream = Upstream::spawn().await;
    let rig = Rig::start(3).await;
    rig.instances[0].register_john(&upstream).await;
    let john = rig.instances[0].signed_in("john").await;
    let (code, _) = john.invite("john/", json!({})).await;
    // nina accepts on A and holds sockets on B and C.
    let nina_a = rig.instances[0].signed_in("nina").await;
    assert_eq!(nina_a.accept(&code).await.status(), StatusCode::SEE_OTHER);
    let cookie = nina_a.cookie_header("/user/john/");
    let mut sockets = vec![];
    for lk in &rig.instances[1..] {
        let b = Browser::new(&lk.base);
        let url: reqwest::Url = lk.url("/").parse().unwrap();
        for c in cookie.split("; ") {
            b.jar.add_cookie_str(c, &url);
        }
        let ok = eventually(Duration::from_secs(2), async || {
            b.get("/user/john/").await.status() == StatusCode::OK
        })
        .await;
        assert!(ok, "the grant made on A is honoured on {}", lk.base);
        let mut ws = b.websocket("/user/john/ws").await.unwrap();
        ws.send(Message::text("hi")).await.unwrap();
        sockets.push((b, ws));
    }
    let revoked = Instant::now();
    john.revoke("john/", "nina").await;
    let returned = revoked.elapsed();
    for (b, ws) in &mut sockets {
        let took = closed_within(ws, Duration::from_secs(2)).await;
        assert!(took.is_some(), "socket on {} closed", b.base);
        assert_eq!(b.get("/user/john/").await.status(), StatusCode::FORBIDDEN);
    }
    eprintln!(
        "revoke call returned in {returned:?}; all sockets closed by {:?}",
        revoked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_announcement_still_closes_sockets_within_seconds() {
    let upstream = Upstream::spawn().await;
    let rig = Rig::start(2).await;
    rig.instances[0].register_john(&upstream).await;
    let john = rig.instances[0].signed_in("john").await;
    let (code, _) = john.invite("john/", json!({})).await;
    let nina = rig.instances[1].signed_in("nina").await;
    assert_eq!(nina.accept(&code).await.status(), StatusCode::SEE_OTHER);
    let mut ws = nina.websocket("/user/john/ws").await.unwrap();
    // Kill every subscriber connection, then revoke at once: the announcement is lost for
    // whichever instance had not re-subscribed yet.
    rig.redis_cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let r = john
        .api(Method::DELETE, "/hub/api/shares/john/", None)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let took = closed_within(&mut ws, Duration::from_secs(3)).await;
    assert!(
        took.is_some(),
        "closed within 3 s although the announcement was lost"
    );
    assert_eq!(
        nina.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_on_one_instance_closes_the_sessions_sockets_on_another() {
    let upstream = Upstream::spawn().await;
    let rig = Rig::start(2).await;
    rig.instances[0].register_john(&upstream).await;
    let john_a = rig.instances[0].signed_in("john").await;
    let john_b = Browser::new(&rig.instances[1].base);
    let url: reqwest::Url = rig.instances[1].url("/").parse().unwrap();
    for c in john_a.cookie_header("/user/john/").split("; ") {
        john_b.jar.add_cookie_str(c, &url);
    }
    assert!(
        eventually(Duration::from_secs(2), async || {
            john_b.get("/user/john/").await.status() == StatusCode::OK
        })
        .await
    );
    let mut ws = john_b.websocket("/user/john/ws").await.unwrap();
    let xsrf = john_a.xsrf().await;
    let r = john_a
        .client
        .post(john_a.url("/hub/logout"))
        .form(&[("_xsrf", xsrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        closed_within(&mut ws, Duration::from_secs(2))
            .await
            .is_some()
    );
    assert_eq!(john_b.get("/user/john/").await.status(), StatusCode::FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_means_fast_503s_and_nobody_is_signed_out() {
    let upstream = Upstream::spawn().await;
    let mut rig = Rig::start_with(1, "").await;
    let lk = &rig.instances[0];
    lk.register_john(&upstream).await;
    let john = lk.signed_in("john").await;
    assert_eq!(john.get("/user/john/").await.status(), StatusCode::OK);
    let hits = upstream.hits();
    rig.redis.kill();
    // Within the staleness window cached decisions may serve; after it, requests that need the
    // store get a quick 503 and never reach the upstream.
    let refused = eventually(Duration::from_secs(8), async || {
        john.get("/user/john/").await.status() == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(refused, "requests fail with 503 once the cache is stale");
    let served_while_down = upstream.hits() - hits;
    let started = Instant::now();
    let r = john.get("/user/john/").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "503 comes quickly"
    );
    assert!(
        r.headers().get("set-cookie").is_none(),
        "no cookie is cleared"
    );
    assert!(r.text().await.unwrap().contains("you stay signed in"));
    let anon = lk.browser();
    let r = anon.get("/user/john/").await;
    assert_ne!(r.status(), StatusCode::OK);
    let hits_down = upstream.hits();

    rig.redis.restart().await;
    let back = Instant::now();
    let ok = eventually(Duration::from_secs(2), async || {
        john.get("/user/john/").await.status() == StatusCode::OK
    })
    .await;
    assert!(
        ok,
        "within 2 s of Redis returning, the same cookie works again"
    );
    assert_eq!(upstream.hits(), hits_down + 1);
    eprintln!(
        "served from cache while down: {served_while_down}; back after {:?}",
        back.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_causes_timeouts_not_pile_ups() {
    let upstream = Upstream::spawn().await;
    let rig = Rig::start_with(1, "").await;
    let lk = &rig.instances[0];
    lk.register_john(&upstream).await;
    let nina = lk.signed_in("nina").await;
    let pid: i32 = rig
        .redis_cli(&["INFO", "server"])
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("redis pid");
    let _ = Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status();
    // 20 concurrent requests that need the store (an unknown code): each gets a 503 after the
    // store timeout, none waits for Redis to come back.
    let started = Instant::now();
    let mut tasks = vec![];
    for _ in 0..20 {
        let client = nina.client.clone();
        let url = nina.url("/hub/accept-share?code=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        tasks.push(tokio::spawn(async move {
            client.get(url).send().await.unwrap().status()
        }));
    }
    let mut statuses = vec![];
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let took = started.elapsed();
    let _ = Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status();
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "all answered in {took:?}, before Redis resumed"
    );
    let ok = eventually(Duration::from_secs(3), async || {
        nina.get("/hub/home").await.status() == StatusCode::OK
    })
    .await;
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_latchkey_and_redis_loses_nothing_acknowledged() {
    let upstream = Upstream::spawn().await;
    let mut redis = Redis::start().await;
    let lk = Latchkey::start(Some(&redis.url()), "").await;
    lk.register_john(&upstream).await;
    let john = lk.signed_in("john").await;
    let nina = lk.signed_in("nina").await;
    let (code, _) = john.invite("john/", json!({})).await;
    let (spare, _) = john.invite("john/", json!({})).await;
    assert_eq!(nina.accept(&code).await.status(), StatusCode::SEE_OTHER);
    let john_cookie = john.cookie_header("/user/john/");
    let nina_cookie = nina.cookie_header("/user/john/");
    lk.stop().await;
    redis.restart().await;
    let lk = Latchkey::start(Some(&redis.url()), "").await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |cookie: &str| {
        client
            .get(lk.url("/user/john/"))
            .header("cookie", cookie.to_owned())
            .send()
    };
    assert_eq!(get(&john_cookie).await.unwrap().status(), StatusCode::OK);
    assert_eq!(get(&nina_cookie).await.unwrap().status(), StatusCode::OK);
    let otto = lk.signed_in("otto").await;
    assert_eq!(otto.accept(&spare).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(otto.get("/user/john/").await.status(), StatusCode::OK);
}

/// A process killed when dropped.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_port(port: u16) {
    let up = eventually(Duration::from_secs(5), async || {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "port {port} did not open");
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sentinel_failover_latchkey_follows_the_new_master() {
    let dir = std::env::temp_dir().join(format!(
        "latchkey-sentinel-{}",
        latchkey::secret::random_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut master = Redis::start().await;
    let replica_port = free_port();
    let _replica = Proc(
        Command::new("redis-server")
            .args([
                "--port",
                &replica_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--replicaof", "127.0.0.1", &master.port.to_string()])
            .args(["--dir", dir.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(replica_port).await;
    let sentinel_port = free_port();
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor lk 127.0.0.1 {} 1\n\
             sentinel down-after-milliseconds lk 1000\n\
             sentinel failover-timeout lk 5000\n",
            dir.display(),
            master.port
        ),
    )
    .unwrap();
    let _sentinel = Proc(
        Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(sentinel_port).await;
    // The replica must be in sync before the master dies.
    assert!(
        eventually(Duration::from_secs(10), async || {
            cli(replica_port, &["INFO", "replication"]).contains("master_link_status:up")
        })
        .await
    );

    let upstream = Upstream::spawn().await;
    let url = format!("redis+sentinel://127.0.0.1:{sentinel_port}/lk/0");
    let lk = Latchkey::start(Some(&url), "").await;
    lk.register_john(&upstream).await;
    let john = lk.signed_in("john").await;
    let nina = lk.signed_in("nina").await;
    let (code, _) = john.invite("john/", json!({})).await;
    assert_eq!(nina.accept(&code).await.status(), StatusCode::SEE_OTHER);
    cli(master.port, &["WAIT", "1", "2000"]);

    master.kill();
    let killed = Instant::now();
    let resumed = eventually(Duration::from_secs(15), async || {
        let r = john
            .api(Method::POST, "/hub/api/share-codes/john/", Some(json!({})))
            .await;
        r.status() == StatusCode::CREATED
    })
    .await;
    let took = killed.elapsed();
    assert!(resumed, "writes resume after the failover");
    assert!(
        took < Duration::from_secs(10),
        "writes resumed after {took:?}"
    );
    eprintln!("writes resumed {took:?} after the master was killed");
    // What was acknowledged before the failover is still there, on the new master.
    assert_eq!(nina.get("/user/john/").await.status(), StatusCode::OK);
    john.revoke("john/", "nina").await;
    assert_eq!(
        nina.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A latchkey process (the real binary), for tests that kill or signal it.
struct Instance {
    proc: Option<Proc>,
    base: String,
}

impl Instance {
    async fn start(redis_url: &str, dir: &std::path::Path) -> Instance {
        let (port, api_port) = (free_port(), free_port());
        let hash = latchkey::auth::password::hash(PASSWORD).unwrap();
        let conf = dir.join(format!("latchkey-{port}.toml"));
        std::fs::write(
            &conf,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n\
                 token = \"{API_TOKEN}\"\n[store]\nurl = \"{redis_url}\"\n\
                 [[users]]\nname = \"john\"\npassword_hash = \"{hash}\"\n\
                 [[users]]\nname = \"nina\"\npassword_hash = \"{hash}\"\n"
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
            .args(["serve", "--config", conf.to_str().unwrap(), "--drain", "5"])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_port(port).await;
        Instance {
            proc: Some(Proc(child)),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn signal(&mut self, sig: &str) {
        if let Some(p) = &self.proc {
            let _ = Command::new("kill")
                .args([sig, &p.0.id().to_string()])
                .status();
        }
    }

    /// A browser on this instance carrying another browser's cookies.
    fn browser_as(&self, other: &Browser) -> Browser {
        let b = Browser::new(&self.base);
        let url: reqwest::Url = format!("{}/", self.base).parse().unwrap();
        for c in other.cookie_header("/user/john/").split("; ") {
            b.jar.add_cookie_str(c, &url);
        }
        b
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_an_instance_dies_clients_carry_on_through_another_and_revoked_users_stay_out() {
    let dir = std::env::temp_dir().join(format!("latchkey-kill-{}", latchkey::secret::random_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let redis = Redis::start().await;
    let upstream = Upstream::spawn().await;
    let mut a = Instance::start(&redis.url(), &dir).await;
    let b = Instance::start(&redis.url(), &dir).await;
    let c = Instance::start(&redis.url(), &dir).await;

    // Register john's server through the store shared by all three (via an in-process instance).
    let registrar = Latchkey::start(Some(&redis.url()), "").await;
    registrar.register_john(&upstream).await;

    let john = Browser::new(&c.base);
    john.login("john").await;
    let (code, _) = john.invite("john/", json!({})).await;
    let nina_a = Browser::new(&a.base);
    nina_a.login("nina").await;
    assert_eq!(nina_a.accept(&code).await.status(), StatusCode::SEE_OTHER);
    let mut ws = nina_a.websocket("/user/john/ws").await.unwrap();
    ws.send(Message::text("before")).await.unwrap();

    // A dies without warning: her socket drops; she reconnects through B and carries on,
    // signed in with the same cookie.
    a.signal("-KILL");
    assert!(
        closed_within(&mut ws, Duration::from_secs(3))
            .await
            .is_some()
    );
    let nina_b = b.browser_as(&nina_a);
    assert_eq!(nina_b.get("/user/john/").await.status(), StatusCode::OK);
    let mut ws = nina_b.websocket("/user/john/ws").await.unwrap();
    ws.send(Message::text("after")).await.unwrap();

    // john revokes through C: B closes her socket, and she stays refused everywhere alive.
    john.revoke("john/", "nina").await;
    assert!(
        closed_within(&mut ws, Duration::from_secs(2))
            .await
            .is_some()
    );
    assert_eq!(
        nina_b.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );
    let nina_c = c.browser_as(&nina_a);
    assert_eq!(
        nina_c.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish() {
    let dir = std::env::temp_dir().join(format!("latchkey-term-{}", latchkey::secret::random_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let redis = Redis::start().await;
    let upstream = Upstream::spawn().await;
    let mut a = Instance::start(&redis.url(), &dir).await;
    let registrar = Latchkey::start(Some(&redis.url()), "").await;
    registrar.register_john(&upstream).await;
    let john = Browser::new(&a.base);
    john.login("john").await;
    assert!(
        eventually(Duration::from_secs(2), async || {
            john.get("/user/john/").await.status() == StatusCode::OK
        })
        .await
    );
    // Three slow requests in flight when SIGTERM arrives all complete.
    let before = upstream.hits();
    let mut in_flight = vec![];
    for _ in 0..3 {
        let client = john.client.clone();
        let url = john.url("/user/john/slow");
        in_flight.push(tokio::spawn(async move {
            client.get(url).send().await.map(|r| r.status())
        }));
    }
    // All three have reached the upstream (which holds them 700 ms) before the signal.
    assert!(
        eventually(Duration::from_secs(2), async || upstream.hits()
            == before + 3)
        .await
    );
    a.signal("-TERM");
    for t in in_flight {
        assert_eq!(t.await.unwrap().unwrap(), StatusCode::OK);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A three-master Redis Cluster on loopback, built with `redis-cli --cluster create`.
struct Cluster {
    _nodes: Vec<Proc>,
    ports: Vec<u16>,
    dir: std::path::PathBuf,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "latchkey-cluster-{}",
            latchkey::secret::random_id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = vec![];
        for p in &ports {
            nodes.push(Proc(
                Command::new("redis-server")
                    .args(["--port", &p.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", &format!("nodes-{p}.conf")])
                    .args(["--dir", dir.to_str().unwrap(), "--save", ""])
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap(),
            ));
        }
        for p in &ports {
            wait_port(*p).await;
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        for p in &ports {
            let ok = eventually(Duration::from_secs(10), async || {
                cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
            })
            .await;
            assert!(ok, "cluster node {p} is ready");
        }
        Cluster {
            _nodes: nodes,
            ports,
            dir,
        }
    }

    fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_story_holds_on_a_redis_cluster_across_instances() {
    let cluster = Cluster::start().await;
    let upstream = Upstream::spawn().await;
    let a = Latchkey::start(Some(&cluster.url()), "").await;
    let b = Latchkey::start(Some(&cluster.url()), "").await;
    a.register_john(&upstream).await;
    let john = a.signed_in("john").await;
    let (code, _) = john.invite("john/", json!({})).await;
    let nina = b.signed_in("nina").await;
    assert_eq!(nina.accept(&code).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(nina.get("/user/john/").await.status(), StatusCode::OK);
    let shared: serde_json::Value = nina
        .get("/hub/api/users/nina/shared")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shared["_pagination"]["total"], 1);
    let mut ws = nina.websocket("/user/john/ws").await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    let shares: serde_json::Value = john
        .get("/hub/api/shares/john/")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shares["items"][0]["user"]["name"], "nina");

    john.revoke("john/", "nina").await;
    assert!(
        closed_within(&mut ws, Duration::from_secs(2))
            .await
            .is_some()
    );
    assert_eq!(
        nina.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );

    // Restart voids links; logout and the rest work as on a single Redis.
    let (code, _) = john.invite("john/", json!({})).await;
    let restarted = Upstream::spawn().await;
    a.register_john(&restarted).await;
    assert_eq!(nina.accept(&code).await.status(), StatusCode::NOT_FOUND);
    let (code, _) = john.invite("john/", json!({})).await;
    assert_eq!(nina.accept(&code).await.status(), StatusCode::SEE_OTHER);
    assert!(
        eventually(Duration::from_secs(2), async || {
            nina.get("/user/john/").await.status() == StatusCode::OK
        })
        .await
    );
    let r = john
        .api(Method::DELETE, "/hub/api/shares/john/", None)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // nina is on the other instance: it hears of the revocation through pub/sub, within
    // milliseconds, not before the call returns.
    assert!(
        eventually(Duration::from_secs(1), async || {
            nina.get("/user/john/").await.status() == StatusCode::FORBIDDEN
        })
        .await,
        "the revocation reached the other instance"
    );

    // API tokens: made, listed and deleted across slots, refused on the other instance.
    let (token, id) = new_api_token(&john, "john", json!({"note": "cluster"})).await;
    let listed: serde_json::Value = john
        .get("/hub/api/users/john/tokens")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"][0]["id"], id.as_str());
    let on_b = b.url("/hub/api/user");
    let status_on_b = async || status_with_token(&on_b, &token).await;
    assert_eq!(status_on_b().await, StatusCode::OK);
    assert_eq!(
        delete_api_token(&john, "john", &id).await,
        StatusCode::NO_CONTENT
    );
    assert!(
        eventually(Duration::from_secs(1), async || {
            status_on_b().await == StatusCode::UNAUTHORIZED
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_read_from_before_a_sign_out_is_not_kept_in_the_cache() {
    use latchkey::secret::TokenHash;
    use latchkey::store::LoginRecord;
    let redis = Redis::start().await;
    let store = latchkey::store::open_with_timeout(&redis.url(), Duration::from_secs(10))
        .await
        .unwrap();
    let cache = std::sync::Arc::new(latchkey::cache::Cache::new(Duration::from_secs(30)));
    let id = TokenHash::of("nina's session cookie");
    let now = latchkey::clock::now();
    let record = LoginRecord {
        user: latchkey::ids::UserName::parse("nina").unwrap(),
        created_at: now,
        expires_at: now + 3600,
        on_host: None,
    };
    store.put_login(&id, &record).await.unwrap();

    // A request reads nina's sign-in; Redis is slow to answer, and she signs out meanwhile
    // (the instance forgets the sign-in at once, the store deletes it after).
    redis.pause();
    let reading = tokio::spawn({
        let (cache, store) = (cache.clone(), store.clone());
        async move { cache.login(store.as_ref(), &id).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    cache.forget_login(&id);
    redis.resume();
    let read = reading.await.unwrap().unwrap();
    assert!(read.is_some(), "the read is from before the sign-out");
    store.delete_login(&id).await.unwrap();

    // What that read found must not be served from the cache now.
    assert!(cache.login(store.as_ref(), &id).await.unwrap().is_none());
}

/// An API token deleted through one instance is refused at once by another that had it cached,
/// and a WebSocket opened with it there is closed.
#[tokio::test]
async fn a_token_deleted_on_one_instance_is_refused_and_closed_on_another() {
    let rig = Rig::start(2).await;
    let upstream = Upstream::spawn().await;
    rig.instances[0].register_john(&upstream).await;
    let john = rig.instances[0].signed_in("john").await;
    let (token, id) = new_api_token(&john, "john", json!({"note": "laptop"})).await;
    let on_b = rig.instances[1].url("/hub/api/user");
    let status_on_b = async || status_with_token(&on_b, &token).await;
    assert_eq!(status_on_b().await, StatusCode::OK);
    let mut ws = token_websocket(&rig.instances[1].base, "/user/john/ws", &token).await;

    assert_eq!(
        delete_api_token(&john, "john", &id).await,
        StatusCode::NO_CONTENT
    );
    let deleted = Instant::now();
    assert!(
        eventually(Duration::from_secs(1), async || {
            status_on_b().await == StatusCode::UNAUTHORIZED
        })
        .await,
        "the other instance still takes the deleted token"
    );
    assert!(
        closed_within(&mut ws, Duration::from_secs(2))
            .await
            .is_some(),
        "the WebSocket on the other instance is closed"
    );
    assert!(deleted.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_on_one_instance_count_on_the_others() {
    let rig = Rig::start_with(3, "[login]\nmax_failures = 4\nfailure_window = 60\n").await;
    let attempt = async |lk: &Latchkey, password: &str| {
        lk.browser().try_login("john", password).await.status()
    };
    // Four wrong passwords, spread over three instances, use up the client's attempts on all.
    for lk in [
        &rig.instances[0],
        &rig.instances[1],
        &rig.instances[2],
        &rig.instances[0],
    ] {
        assert_eq!(attempt(lk, "wrong").await, StatusCode::FORBIDDEN);
    }
    for lk in &rig.instances {
        assert_eq!(
            attempt(lk, PASSWORD).await,
            StatusCode::TOO_MANY_REQUESTS,
            "even the right password waits until the window ends"
        );
    }
}
