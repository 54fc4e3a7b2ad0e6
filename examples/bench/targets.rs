//! The proxies under test, each started on the proxy core in front of the same upstream, and
//! latchkey's sign-in flow that gives the benchmark a sharee's cookie.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::procs::{self, PROXY_CORE, Proc};
use crate::web::Browser;

pub const ROUTE_TOKEN: &str = "bench-route-api-token-0123456789";
pub const PASSWORD: &str = "bench password";

/// Where the pieces are.
pub struct Env {
    pub work: PathBuf,
    pub latchkey: PathBuf,
    pub chp: PathBuf,
    pub upstream_port: u16,
    /// An argon2 hash of `PASSWORD`, for every configured user.
    pub password_hash: String,
}

/// A running proxy, ready to serve `/user/john/...` from the upstream.
pub struct Running {
    pub name: String,
    pub proc: Proc,
    pub port: u16,
    /// Headers for plain requests (latchkey: the sharee's cookie).
    pub headers: Vec<String>,
    /// Headers for WebSocket handshakes (latchkey: the cookie and its own Origin).
    pub ws_headers: Vec<String>,
    /// From spawn until the health (or a proxied) request first answered 200.
    pub startup: Duration,
    pub idle_rss_kb: u64,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

pub async fn start(name: &str, env: &Env) -> Running {
    match name {
        "nginx" => nginx(env, "nginx"),
        // A second nginx, measured in its turn like any other proxy: its ratio to nginx is the
        // run's resolution, what a tie looks like on this machine.
        "nginx-again" => nginx(env, "nginx-again"),
        "haproxy" => haproxy(env),
        "chp" => chp(env),
        "latchkey" => latchkey(env).await,
        other => panic!("unknown target {other} (nginx, nginx-again, haproxy, chp, latchkey)"),
    }
}

fn ready(name: &str, proc: Proc, port: u16, health: &str, spawned: Instant) -> Running {
    let startup = procs::wait_http_ok(port, health, spawned, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{name} did not answer {health} within 30 s"));
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss_kb = proc.rss_kb();
    Running {
        name: name.to_owned(),
        proc,
        port,
        headers: vec![],
        ws_headers: vec![],
        startup,
        idle_rss_kb,
    }
}

fn dir(env: &Env, name: &str) -> PathBuf {
    let d = env.work.join(name);
    std::fs::create_dir_all(&d).expect("a work directory");
    d
}

/// nginx as JupyterHub's documentation configures it in front of a hub (HTTP/1.1 and WebSocket
/// headers, `proxy_buffering off`), plus upstream keep-alive, one worker.
fn nginx(env: &Env, name: &str) -> Running {
    let d = dir(env, name);
    let port = procs::free_port();
    let up = env.upstream_port;
    let w = d.display();
    let conf = format!(
        r#"
user root;
daemon off;
worker_processes 1;
worker_rlimit_nofile 40000;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 30000; }}
http {{
  access_log {w}/access.log;
  client_body_temp_path {w}/client_body;
  proxy_temp_path {w}/proxy;
  fastcgi_temp_path {w}/fastcgi;
  uwsgi_temp_path {w}/uwsgi;
  scgi_temp_path {w}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  upstream app {{ server 127.0.0.1:{up}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_buffering off;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }}
  }}
}}
"#
    );
    let conf_path = d.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let spawned = Instant::now();
    let proc = Proc::spawn(
        name,
        PROXY_CORE,
        Path::new("nginx"),
        &[
            "-p".into(),
            format!("{w}/"),
            "-e".into(),
            format!("{w}/error.log"),
            "-c".into(),
            conf_path.display().to_string(),
        ],
        &[],
        &d.join("stdout.log"),
    );
    ready(name, proc, port, "/user/john/small", spawned)
}

/// HAProxy in HTTP mode with keep-alive and connection reuse, one thread, no logging (its
/// default without a `log` line).
fn haproxy(env: &Env) -> Running {
    let d = dir(env, "haproxy");
    let port = procs::free_port();
    let up = env.upstream_port;
    let conf = format!(
        r#"
global
  nbthread 1
defaults
  mode http
  maxconn 9800
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
  option http-keep-alive
  http-reuse always
frontend public
  bind 127.0.0.1:{port}
  default_backend app
backend app
  server app 127.0.0.1:{up}
"#
    );
    let conf_path = d.join("haproxy.cfg");
    std::fs::write(&conf_path, conf).expect("write haproxy.cfg");
    let spawned = Instant::now();
    let proc = Proc::spawn(
        "haproxy",
        PROXY_CORE,
        Path::new("haproxy"),
        &["-db".into(), "-f".into(), conf_path.display().to_string()],
        &[],
        &d.join("haproxy.log"),
    );
    ready("haproxy", proc, port, "/user/john/small", spawned)
}

/// configurable-http-proxy with its defaults and the upstream as default target.
fn chp(env: &Env) -> Running {
    let d = dir(env, "chp");
    let port = procs::free_port();
    let api = procs::free_port();
    let spawned = Instant::now();
    let proc = Proc::spawn(
        "chp",
        PROXY_CORE,
        &env.chp,
        &[
            "--ip".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--api-ip".into(),
            "127.0.0.1".into(),
            "--api-port".into(),
            api.to_string(),
            "--default-target".into(),
            format!("http://127.0.0.1:{}", env.upstream_port),
        ],
        &[("CONFIGPROXY_AUTH_TOKEN", ROUTE_TOKEN)],
        &d.join("chp.log"),
    );
    ready("chp", proc, port, "/user/john/small", spawned)
}

/// The latchkey config: listeners, store, and john, nina and `extra_users` more users.
pub fn latchkey_config(env: &Env, port: u16, api: u16, store: &str, extra_users: usize) -> String {
    let mut text = format!(
        r#"[server]
listen = "127.0.0.1:{port}"
[api]
listen = "127.0.0.1:{api}"
token = "{ROUTE_TOKEN}"
[store]
url = "{store}"
[login]
max_failures = 1000000
"#
    );
    let users = ["john".to_owned(), "nina".to_owned()]
        .into_iter()
        .chain((0..extra_users).map(|i| format!("u{i:04}")));
    for u in users {
        text.push_str(&format!(
            "[[users]]\nname = \"{u}\"\npassword_hash = \"{}\"\n",
            env.password_hash
        ));
    }
    text
}

/// Starts `latchkey serve` with a config file; returns it once `/healthz` answers.
pub fn spawn_latchkey(env: &Env, label: &str, store: &str, extra_users: usize) -> (Running, u16) {
    let d = dir(env, label);
    let port = procs::free_port();
    let api = procs::free_port();
    let conf_path = d.join("latchkey.toml");
    std::fs::write(
        &conf_path,
        latchkey_config(env, port, api, store, extra_users),
    )
    .expect("write latchkey.toml");
    let spawned = Instant::now();
    let proc = Proc::spawn(
        label,
        PROXY_CORE,
        &env.latchkey,
        &[
            "serve".into(),
            "--config".into(),
            conf_path.display().to_string(),
        ],
        &[],
        &d.join("latchkey.log"),
    );
    (ready(label, proc, port, "/healthz", spawned), api)
}

/// Registers john's server through the route API, as JupyterHub does.
pub async fn register_route(api: u16, upstream_port: u16) {
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{api}/api/routes/user/john"))
        .header("authorization", format!("token {ROUTE_TOKEN}"))
        .body(
            serde_json::json!({
                "user": "john", "server_name": "",
                "target": format!("http://127.0.0.1:{upstream_port}"),
            })
            .to_string(),
        )
        .send()
        .await
        .expect("the route API answers");
    assert_eq!(r.status(), 201, "registering john's route");
}

/// latchkey on the memory store; nina is a sharee through an accepted invite, so each benchmark
/// request runs the whole access check (cookie, sign-in, grants of the server's session).
async fn latchkey(env: &Env) -> Running {
    let (mut run, api) = spawn_latchkey(env, "latchkey", "memory://", 0);
    register_route(api, env.upstream_port).await;
    let base = run.url("");
    let john = Browser::new(&base);
    john.login("john", PASSWORD).await;
    let code = john.invite("john/").await;
    let nina = Browser::new(&base);
    nina.login("nina", PASSWORD).await;
    nina.accept(&code).await;
    let cookie = format!("Cookie: latchkey-session={}", nina.session());
    // The proof that the cookie passes the access check: 200, and only with the cookie.
    let c = reqwest::Client::new();
    let with = c
        .get(run.url("/user/john/small"))
        .header("cookie", format!("latchkey-session={}", nina.session()))
        .header("accept", "application/json")
        .send()
        .await
        .expect("latchkey answers");
    assert_eq!(with.status(), 200, "nina reaches john's server");
    let without = c
        .get(run.url("/user/john/small"))
        .header("accept", "application/json")
        .send()
        .await
        .expect("latchkey answers");
    assert_eq!(without.status(), 401, "the anonymous are refused");
    run.ws_headers = vec![cookie.clone(), format!("Origin: {base}")];
    run.headers = vec![cookie];
    run.idle_rss_kb = run.proc.rss_kb();
    run
}
