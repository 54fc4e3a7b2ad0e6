//! The benchmark driver behind `bench/run`: starts the upstream, then each proxy in turn on the
//! proxy core, measures it with wrk and the WebSocket client on the load core, then latchkey's
//! sharing path on Redis, and writes a JSON file and a Markdown table. See bench/README.md.

mod procs;
mod report;
mod sharing;
mod targets;
mod upstream;
mod web;
mod wrk;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Map, Value, json};

use procs::LOAD_CORE;

pub struct Opts {
    pub latchkey: PathBuf,
    pub upstream: PathBuf,
    pub ws_client: PathBuf,
    pub chp: PathBuf,
    pub work: PathBuf,
    pub out: PathBuf,
    pub duration: u64,
    pub targets: Vec<String>,
    /// Which measurements to make: small, big, close, ws, hold (all by default).
    pub figures: Vec<String>,
    pub hold: usize,
    /// Messages each echo WebSocket keeps on their way (1: one, then wait for its echo).
    pub ws_window: usize,
    pub sharing: bool,
    pub note: String,
    /// Record a `perf` profile of each proxy during the small GET, new-connection and WebSocket
    /// echo runs, into this directory.
    pub perf: Option<PathBuf>,
    /// Seconds of mixed load on a fresh latchkey, sampling its memory (0: no soak).
    pub soak: u64,
    /// How often the rate figures are measured, the targets taking turns; each figure is the
    /// median of its rounds.
    pub rounds: usize,
}

const SMALL_CONNS: usize = 64;
const BIG_CONNS: usize = 8;
const CLOSE_CONNS: usize = 32;
const WS_CONNS: usize = 100;

fn parse_opts() -> Opts {
    let mut o = Opts {
        latchkey: "target/release/latchkey".into(),
        upstream: "target/release/examples/bench_upstream".into(),
        ws_client: "target/release/examples/bench_ws".into(),
        chp: "bench/node_modules/.bin/configurable-http-proxy".into(),
        work: std::env::temp_dir().join("latchkey-bench"),
        out: "bench/results".into(),
        duration: 10,
        targets: ["nginx", "haproxy", "chp", "latchkey"]
            .map(String::from)
            .to_vec(),
        figures: ["small", "big", "close", "ws", "hold"]
            .map(String::from)
            .to_vec(),
        hold: 9000,
        ws_window: 1,
        sharing: true,
        note: String::new(),
        perf: None,
        soak: 0,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--latchkey" => o.latchkey = value().into(),
            "--upstream" => o.upstream = value().into(),
            "--ws-client" => o.ws_client = value().into(),
            "--chp" => o.chp = value().into(),
            "--work" => o.work = value().into(),
            "--out" => o.out = value().into(),
            "--duration" => o.duration = value().parse().expect("--duration SECONDS"),
            "--targets" => {
                o.targets = value()
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(String::from)
                    .collect()
            }
            "--figures" => o.figures = value().split(',').map(String::from).collect(),
            "--hold" => o.hold = value().parse().expect("--hold CONNECTIONS"),
            "--ws-window" => {
                o.ws_window = value()
                    .parse()
                    .ok()
                    .filter(|&w| w > 0)
                    .expect("--ws-window MESSAGES (1 or more)")
            }
            "--no-sharing" => o.sharing = false,
            "--note" => o.note = value(),
            "--perf" => o.perf = Some(value().into()),
            "--soak" => o.soak = value().parse().expect("--soak SECONDS"),
            "--rounds" => {
                o.rounds = value()
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .expect("--rounds N (1 or more)")
            }
            other => panic!("unknown option {other}; see bench/README.md"),
        }
    }
    o
}

fn main() {
    let opts = parse_opts();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(run(opts));
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn hash_password(latchkey: &PathBuf) -> String {
    let mut child = Command::new(latchkey)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("latchkey hash-password runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(targets::PASSWORD.as_bytes())
        .expect("write the password");
    let out = child.wait_with_output().expect("a hash");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn run(o: Opts) {
    let _ = std::fs::remove_dir_all(&o.work);
    std::fs::create_dir_all(&o.work).expect("a work directory");
    let ticks = procs::clock_ticks();
    let load_before = loadavg();
    eprintln!("load average before: {load_before}");

    let upstream = upstream::Upstream::start(&o);
    let env = targets::Env {
        work: o.work.clone(),
        latchkey: o.latchkey.clone(),
        chp: o.chp.clone(),
        upstream_port: upstream.port,
        password_hash: hash_password(&o.latchkey),
    };

    // The targets take turns, round after round, so that a slow spell of the machine falls on
    // all of them rather than on one.
    let mut rounds: Vec<Vec<Value>> = vec![vec![]; o.targets.len()];
    for round in 0..o.rounds {
        for (i, name) in o.targets.iter().enumerate() {
            eprintln!("== {name} (round {} of {})", round + 1, o.rounds);
            let mut running = targets::start(name, &env).await;
            let m = measure(&mut running, &o, &upstream, ticks, round == 0);
            drop(running);
            rounds[i].push(m);
            // Let sockets in TIME_WAIT and the like settle between proxies.
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    let mut results = Map::new();
    for (name, r) in o.targets.iter().zip(rounds) {
        results.insert(name.clone(), median_of_rounds(r));
    }

    let soak = if o.soak > 0 {
        eprintln!("== latchkey soak, {} s", o.soak);
        let running = targets::start("latchkey", &env).await;
        let v = soak(&running, &o, &upstream);
        drop(running);
        v
    } else {
        Value::Null
    };

    let sharing = if o.sharing {
        eprintln!("== latchkey sharing path (Redis)");
        sharing::run(&env, o.duration.min(10)).await
    } else {
        Value::Null
    };
    let load_after = loadavg();
    eprintln!("load average after: {load_after}");

    let doc = report::document(&o, results, sharing, soak, &load_before, &load_after);
    report::write(&o, &doc);
}

/// CPU used during one measurement: by the proxy, and by anything else on the proxy's core
/// (other work on a shared machine, which the figures then suffer from).
struct Meter {
    proxy: (u64, u64),
    core: u64,
    /// Ticks the proxy core and the load core were not idle.
    nonidle: (u64, u64),
    at: std::time::Instant,
}

/// What a [`Meter`] read.
#[derive(Clone, Copy)]
struct Used {
    /// The proxy's user plus system CPU time, in clock ticks.
    ticks: u64,
    /// Of which in the kernel.
    system: u64,
    /// The share of the proxy core used by other processes.
    others: f64,
    /// The share of time the proxy core and the load core were not idle: the one near 1.0
    /// bounds the figure.
    busy: (f64, f64),
}

impl Meter {
    fn start(run: &targets::Running) -> Meter {
        Meter {
            proxy: run.proc.cpu_ticks_split(),
            core: procs::core_busy_ticks(procs::PROXY_CORE),
            nonidle: (
                procs::core_nonidle_ticks(procs::PROXY_CORE),
                procs::core_nonidle_ticks(LOAD_CORE),
            ),
            at: std::time::Instant::now(),
        }
    }

    fn stop(self, run: &targets::Running, ticks: f64) -> Used {
        let (user, system) = run.proc.cpu_ticks_split();
        let (user, system) = (user - self.proxy.0, system - self.proxy.1);
        let core = procs::core_busy_ticks(procs::PROXY_CORE) - self.core;
        let elapsed = self.at.elapsed().as_secs_f64();
        let others = core.saturating_sub(user + system) as f64 / ticks / elapsed;
        let share = |now: u64, then: u64| now.saturating_sub(then) as f64 / ticks / elapsed;
        Used {
            ticks: user + system,
            system,
            others,
            busy: (
                share(procs::core_nonidle_ticks(procs::PROXY_CORE), self.nonidle.0),
                share(procs::core_nonidle_ticks(LOAD_CORE), self.nonidle.1),
            ),
        }
    }
}

/// With `--perf DIR`, in the first round: a `perf record` of the proxy's processes for the
/// next `seconds`, into DIR/PROXY.FIGURE.perf.data (perf itself on the load core).
fn record_perf(
    o: &Opts,
    run: &targets::Running,
    first: bool,
    figure: &str,
    seconds: u64,
) -> Option<std::process::Child> {
    let dir = o.perf.as_ref().filter(|_| first)?;
    std::fs::create_dir_all(dir).expect("the perf directory");
    let pids: Vec<String> = run.proc.tree().iter().map(u32::to_string).collect();
    let child = Command::new("taskset")
        .args([
            "-c",
            LOAD_CORE,
            "perf",
            "record",
            "-q",
            "-F",
            "999",
            "--call-graph",
            "dwarf,8192",
            "-p",
        ])
        .arg(pids.join(","))
        .arg("-o")
        .arg(dir.join(format!("{}.{figure}.perf.data", run.name)))
        .arg("--")
        .args(["sleep", &seconds.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("perf runs");
    Some(child)
}

fn wrk_value(r: &wrk::WrkResult, used: Used, ticks: f64) -> Value {
    let cpu_us = used.ticks as f64 / ticks * 1e6;
    let per_request = |us: f64| {
        if r.requests > 0 {
            us / r.requests as f64
        } else {
            f64::NAN
        }
    };
    let mut v = serde_json::to_value(r).expect("serialisable");
    v["others_on_proxy_core"] = json!(used.others);
    v["proxy_core_busy"] = json!(used.busy.0);
    v["load_core_busy"] = json!(used.busy.1);
    v["proxy_cpu_us_per_request"] = json!(per_request(cpu_us));
    v["proxy_system_cpu_us_per_request"] = json!(per_request(used.system as f64 / ticks * 1e6));
    v["proxy_cpu_share"] = json!(cpu_us / 1e6 / r.seconds.max(1e-9));
    v
}

/// The rate figures measured in every round, and the number each is ranked by.
pub const RATES: &[(&str, &str)] = &[
    ("small", "rps"),
    ("big", "bytes_per_sec"),
    ("close", "rps"),
    ("ws_echo", "rate"),
];

/// One proxy's figures over the rounds: everything from the first round, and for each rate
/// figure the round with the median rate (all of that round's numbers, so that throughput,
/// latency and CPU belong together), with every round's rate under `rounds`.
fn median_of_rounds(mut rounds: Vec<Value>) -> Value {
    let mut out = rounds[0].clone();
    for (key, rate) in RATES {
        let mut measured: Vec<Value> = rounds
            .iter()
            .filter_map(|r| r.get(*key).filter(|v| v[rate].is_number()).cloned())
            .collect();
        if measured.is_empty() {
            continue;
        }
        let each: Vec<Value> = measured.iter().map(|v| v[rate].clone()).collect();
        let by = |v: &Value| v[rate].as_f64().unwrap_or(0.0);
        measured.sort_by(|a, b| by(a).total_cmp(&by(b)));
        let mut median = measured.swap_remove((measured.len() - 1) / 2);
        median["rounds"] = json!(each);
        out[*key] = median;
    }
    let errors: Vec<Value> = rounds
        .iter_mut()
        .enumerate()
        .flat_map(|(i, r)| {
            let list = r["errors"].as_array().cloned().unwrap_or_default();
            list.into_iter()
                .map(move |e| json!(format!("round {}: {}", i + 1, e.as_str().unwrap_or(""))))
        })
        .collect();
    out["errors"] = json!(errors);
    out
}

/// Every figure of one proxy, in a fixed order; after the first round, only the rates.
fn measure(
    run: &mut targets::Running,
    o: &Opts,
    upstream: &upstream::Upstream,
    ticks: f64,
    first: bool,
) -> Value {
    let d = o.duration;
    let mut errors: Vec<String> = vec![];
    let mut m = Map::new();
    m.insert("startup_ms".into(), json!(run.startup.as_secs_f64() * 1e3));
    m.insert("idle_rss_kb".into(), json!(run.idle_rss_kb));
    m.insert("load_before".into(), json!(loadavg()));

    let small = run.url("/user/john/small");
    let big = run.url("/user/john/big");
    let mut check = |what: &str, r: &wrk::WrkResult| {
        if r.non_2xx > 0 || r.requests == 0 {
            errors.push(format!(
                "{what}: {} of {} answers not 2xx/3xx",
                r.non_2xx, r.requests
            ));
        }
        let [connect, read, write, timeout] = r.socket_errors;
        if connect + write + timeout > 0 {
            errors.push(format!(
                "{what}: socket errors connect {connect}, read {read}, write {write}, timeout {timeout}"
            ));
        }
    };

    let want = |figure: &str| o.figures.iter().any(|f| f == figure);
    if want("small") {
        wrk::run(&small, SMALL_CONNS, 2, &run.headers); // warm-up
        let perf = record_perf(o, run, first, "small", d);
        let meter = Meter::start(run);
        let r = wrk::run(&small, SMALL_CONNS, d, &run.headers);
        let used = meter.stop(run, ticks);
        if let Some(mut p) = perf {
            let _ = p.wait();
        }
        check("small GET", &r);
        eprintln!(
            "  small GET: {:.0} req/s, p50 {:.0} us, p99 {:.0} us, {:.1} us CPU/request, {:.1} of it system (others used {:.0}% of the proxy core; cores busy: proxy {:.0}%, load {:.0}%)",
            r.rps,
            r.p50_us,
            r.p99_us,
            used.ticks as f64 / ticks * 1e6 / r.requests.max(1) as f64,
            used.system as f64 / ticks * 1e6 / r.requests.max(1) as f64,
            used.others * 100.0,
            used.busy.0 * 100.0,
            used.busy.1 * 100.0
        );
        m.insert("small".into(), wrk_value(&r, used, ticks));
    }
    if want("big") {
        let meter = Meter::start(run);
        let r = wrk::run(&big, BIG_CONNS, d, &run.headers);
        let used = meter.stop(run, ticks);
        check("1 MiB GET", &r);
        eprintln!(
            "  1 MiB GET: {:.0} MiB/s (others {:.0}%)",
            r.bytes_per_sec / 1048576.0,
            used.others * 100.0
        );
        m.insert("big".into(), wrk_value(&r, used, ticks));
    }
    if want("close") {
        let mut close_headers = run.headers.clone();
        close_headers.push("Connection: close".into());
        let perf = record_perf(o, run, first, "close", d);
        let meter = Meter::start(run);
        let r = wrk::run(&small, CLOSE_CONNS, d, &close_headers);
        let used = meter.stop(run, ticks);
        if let Some(mut p) = perf {
            let _ = p.wait();
        }
        check("new connection per request", &r);
        eprintln!(
            "  new connection per request: {:.0} req/s (others {:.0}%)",
            r.rps,
            used.others * 100.0
        );
        m.insert("close".into(), wrk_value(&r, used, ticks));
    }
    let ws_url = run.url("/user/john/ws").replacen("http://", "ws://", 1);
    if want("ws") {
        // Warm-up, as for wrk: the first WebSockets after start cost more on every proxy.
        let _ = upstream.echo(&ws_url, &run.ws_headers, (WS_CONNS, o.ws_window), 2);
        let perf = record_perf(o, run, first, "ws", d);
        let meter = Meter::start(run);
        let echo = upstream.echo(&ws_url, &run.ws_headers, (WS_CONNS, o.ws_window), d);
        if let Some(mut p) = perf {
            let _ = p.wait();
        }
        let Used {
            ticks: c,
            others,
            busy,
            ..
        } = meter.stop(run, ticks);
        let mut echo = echo.unwrap_or_else(|e| {
            errors.push(format!("WebSocket echo: {e}"));
            json!({})
        });
        if let Some(n) = echo["messages"].as_f64()
            && n > 0.0
        {
            echo["proxy_cpu_us_per_message"] = json!(c as f64 / ticks * 1e6 / n);
            echo["others_on_proxy_core"] = json!(others);
            echo["proxy_core_busy"] = json!(busy.0);
            echo["load_core_busy"] = json!(busy.1);
        }
        if echo["errors"].as_u64().unwrap_or(0) > 0 {
            errors.push(format!("WebSocket echo: {} errors", echo["errors"]));
        }
        eprintln!(
            "  WebSocket echo: {:.0} msg/s, p50 {} us, p99 {} us (others {:.0}%; cores busy: proxy {:.0}%, load {:.0}%)",
            echo["rate"].as_f64().unwrap_or(0.0),
            echo["p50_us"],
            echo["p99_us"],
            others * 100.0,
            busy.0 * 100.0,
            busy.1 * 100.0
        );
        m.insert("ws_echo".into(), echo);
    }
    if want("hold") && first {
        match ws_hold(o, run, &ws_url) {
            Ok(v) => {
                if v["failed"].as_u64().unwrap_or(0) > 0 {
                    errors.push(format!("idle WebSockets: {} failed to open", v["failed"]));
                }
                eprintln!(
                    "  {} idle WebSockets: {:.1} kB each",
                    v["open"],
                    v["kb_per_connection"].as_f64().unwrap_or(0.0)
                );
                m.insert("idle_ws".into(), v);
            }
            Err(e) => {
                errors.push(format!("idle WebSockets: {e}"));
                m.insert("idle_ws".into(), json!({}));
            }
        }
    }
    m.insert("peak_rss_kb".into(), json!(run.proc.hwm_kb()));
    m.insert("load_after".into(), json!(loadavg()));
    if !run.proc.alive() {
        errors.push("the proxy exited during the run".into());
    }
    for e in &errors {
        eprintln!("  ERROR {e}");
    }
    m.insert("errors".into(), json!(errors));
    Value::Object(m)
}

/// Opens `o.hold` idle WebSockets through the proxy and reads how much its resident memory grew.
fn ws_hold(o: &Opts, run: &targets::Running, url: &str) -> Result<Value, String> {
    std::thread::sleep(Duration::from_secs(1));
    let before = run.proc.rss_kb();
    let fds_before = run.proc.fds();
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", LOAD_CORE])
        .arg(&o.ws_client)
        .arg("hold")
        .arg(url)
        .arg(o.hold.to_string());
    for h in &run.ws_headers {
        cmd.arg("-H").arg(h);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines
        .next()
        .ok_or("the WebSocket client said nothing")?
        .map_err(|e| e.to_string())?;
    // "open N failed M"
    let words: Vec<&str> = first.split_whitespace().collect();
    let open: u64 = words.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
    let failed: u64 = words.get(3).and_then(|n| n.parse().ok()).unwrap_or(0);
    std::thread::sleep(Duration::from_secs(2));
    let after = run.proc.rss_kb();
    let fds_after = run.proc.fds();
    let _ = child.stdin.take().map(|mut s| s.write_all(b"go\n"));
    let _ = child.wait();
    if open == 0 {
        return Err(format!("no WebSocket opened ({failed} failed)"));
    }
    Ok(json!({
        "open": open,
        "failed": failed,
        "rss_before_kb": before,
        "rss_after_kb": after,
        "kb_per_connection": (after as f64 - before as f64) / open as f64,
        "fds_per_connection": (fds_after as f64 - fds_before as f64) / open as f64,
    }))
}

/// Mixed load for `o.soak` seconds in slices of 10: 8 s of small GETs (64 connections), then 2 s
/// of WebSocket echo on 100 new WebSockets (opened and closed each slice). Memory and open files
/// are sampled after every slice.
fn soak(run: &targets::Running, o: &Opts, upstream: &upstream::Upstream) -> Value {
    let small = run.url("/user/john/small");
    let ws_url = run.url("/user/john/ws").replacen("http://", "ws://", 1);
    let started = std::time::Instant::now();
    let mut samples = vec![];
    let mut requests = 0u64;
    let mut errors = 0u64;
    while started.elapsed().as_secs() < o.soak {
        let r = wrk::run(&small, SMALL_CONNS, 8, &run.headers);
        requests += r.requests;
        errors += r.non_2xx;
        match upstream.echo(&ws_url, &run.ws_headers, (WS_CONNS, o.ws_window), 2) {
            Ok(v) => errors += v["errors"].as_u64().unwrap_or(0),
            Err(_) => errors += 1,
        }
        let s = json!({
            "s": started.elapsed().as_secs(),
            "rss_kb": run.proc.rss_kb(),
            "fds": run.proc.fds(),
        });
        eprintln!("  {s}");
        samples.push(s);
    }
    let rss = |i: usize| samples[i]["rss_kb"].as_f64().unwrap_or(0.0);
    let n = samples.len();
    let max = samples
        .iter()
        .filter_map(|s| s["rss_kb"].as_f64())
        .fold(0.0, f64::max);
    // From the end of the first minute (caches and pools warm) to the end.
    let from = n.min(6).saturating_sub(1);
    json!({
        "seconds": started.elapsed().as_secs_f64(),
        "requests": requests,
        "errors": errors,
        "rss_after_first_minute_kb": rss(from),
        "rss_last_kb": rss(n - 1),
        "rss_max_kb": max,
        "rss_growth_after_first_minute_kb": rss(n - 1) - rss(from),
        "fds_first": samples[0]["fds"],
        "fds_last": samples[n - 1]["fds"],
        "samples": samples,
    })
}
