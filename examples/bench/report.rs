//! The results as JSON and as a Markdown table, each figure also as a ratio to nginx.

use std::process::Command;

use serde_json::{Map, Value, json};

use crate::Opts;

/// (JSON path, label, unit, scale applied for display, decimals)
const ROWS: &[(&str, &str, &str, f64, usize)] = &[
    ("small.rps", "small GET throughput", "req/s", 1.0, 0),
    (
        "small.p50_us",
        "small GET latency p50 (at full load)",
        "µs",
        1.0,
        0,
    ),
    (
        "small.p99_us",
        "small GET latency p99 (at full load)",
        "µs",
        1.0,
        0,
    ),
    (
        "small.proxy_cpu_us_per_request",
        "proxy CPU per small GET",
        "µs",
        1.0,
        1,
    ),
    (
        "big.bytes_per_sec",
        "1 MiB GET bandwidth",
        "MiB/s",
        1.0 / 1048576.0,
        0,
    ),
    ("close.rps", "new connection per request", "req/s", 1.0, 0),
    (
        "close.proxy_cpu_us_per_request",
        "proxy CPU per new-connection request",
        "µs",
        1.0,
        1,
    ),
    (
        "ws_echo.rate",
        "WebSocket echo, 100 connections",
        "msg/s",
        1.0,
        0,
    ),
    ("ws_echo.p50_us", "WebSocket echo latency p50", "µs", 1.0, 0),
    ("ws_echo.p99_us", "WebSocket echo latency p99", "µs", 1.0, 0),
    (
        "ws_echo.proxy_cpu_us_per_message",
        "proxy CPU per echoed message",
        "µs",
        1.0,
        1,
    ),
    (
        "idle_ws.kb_per_connection",
        "memory per idle WebSocket",
        "kB",
        1.0,
        1,
    ),
    ("startup_ms", "startup time", "ms", 1.0, 1),
    ("idle_rss_kb", "idle RSS", "MiB", 1.0 / 1024.0, 1),
    ("peak_rss_kb", "peak RSS (VmHWM)", "MiB", 1.0 / 1024.0, 1),
    (
        "small.others_on_proxy_core",
        "other processes' use of the proxy core, small GET",
        "%",
        100.0,
        0,
    ),
    (
        "ws_echo.others_on_proxy_core",
        "other processes' use of the proxy core, WebSocket echo",
        "%",
        100.0,
        0,
    ),
];

fn get<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn num(v: &Value, path: &str) -> Option<f64> {
    get(v, path)
        .and_then(Value::as_f64)
        .filter(|x| x.is_finite())
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_default()
}

fn chp_version(o: &Opts) -> String {
    let pkg = o
        .chp
        .parent()
        .and_then(|p| p.parent())
        .map(|nm| nm.join("configurable-http-proxy/package.json"));
    pkg.and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn document(
    o: &Opts,
    results: Map<String, Value>,
    sharing: Value,
    soak: Value,
    load_before: &str,
    load_after: &str,
) -> Value {
    let now = time::OffsetDateTime::now_utc();
    let date = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let nginx = results.get("nginx").cloned();
    let mut ratios = Map::new();
    if let Some(nginx) = &nginx {
        for (name, r) in &results {
            let mut row = Map::new();
            for (path, _, unit, ..) in ROWS {
                if *unit == "%" {
                    continue;
                }
                if let (Some(a), Some(b)) = (num(r, path), num(nginx, path))
                    && b != 0.0
                {
                    row.insert(path.to_string(), json!(a / b));
                }
            }
            ratios.insert(name.clone(), Value::Object(row));
        }
    }
    let paired = paired_ratios(&results);
    let goals = goals(&results);
    let dirty = !sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    json!({
        "date": date,
        "note": o.note,
        "machine": {
            "cores": sh("nproc", &["--all"]).parse::<u32>().unwrap_or(0),
            "kernel": sh("uname", &["-r"]),
            "cpu": std::fs::read_to_string("/proc/cpuinfo").ok()
                .and_then(|s| s.lines().find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_owned())),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "versions": {
            "latchkey": format!("{} ({}{})", sh(&o.latchkey.display().to_string(), &["--version"]),
                sh("git", &["rev-parse", "--short", "HEAD"]), if dirty { ", uncommitted changes" } else { "" }),
            "nginx": sh("nginx", &["-v"]),
            "haproxy": sh("haproxy", &["-v"]),
            "configurable-http-proxy": chp_version(o),
            "node": sh("node", &["--version"]),
            "wrk": sh("wrk", &["-v"]),
        },
        "method": {
            "targets": o.targets,
            "proxy_core": crate::procs::PROXY_CORE,
            "load_core": crate::procs::LOAD_CORE,
            "seconds_per_measurement": o.duration,
            "rounds": o.rounds,
            "small_get": format!("wrk -t1 -c{} (128-byte answer)", crate::SMALL_CONNS),
            "big_get": format!("wrk -t1 -c{} (1 MiB answer)", crate::BIG_CONNS),
            "new_connection": format!("wrk -t1 -c{} -H 'Connection: close'", crate::CLOSE_CONNS),
            "websocket_echo": format!(
                "{} connections, {} 32-byte message(s) in flight each; client and echo upstream on one thread of one process",
                crate::WS_CONNS,
                o.ws_window
            ),
            "idle_websockets": o.hold,
            "latchkey_caller": "nina, signed in with the login form, with a grant from an accepted invite to john's server (memory store)",
        },
        "results": results,
        "ratio_to_nginx": ratios,
        "round_ratio_to_nginx": paired,
        "goals": goals,
        "sharing": sharing,
        "soak": soak,
    })
}

/// For each proxy and rate figure, its rate in each round over nginx's in the same round, and
/// the median of those. Rounds measure the proxies minutes apart at most, so this ratio moves
/// less with the machine's slow spells than one of two medians taken from different rounds;
/// beside `nginx-again` (nginx against itself) it shows what a tie looks like in the run.
fn paired_ratios(results: &Map<String, Value>) -> Value {
    let Some(nginx) = results.get("nginx") else {
        return json!({});
    };
    let rounds = |r: &Value, figure: &str| -> Vec<f64> {
        r[figure]["rounds"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    };
    let mut out = Map::new();
    for (name, r) in results.iter().filter(|(n, _)| n.as_str() != "nginx") {
        let mut row = Map::new();
        for (figure, _) in crate::RATES {
            let theirs = rounds(nginx, figure);
            let mut each: Vec<f64> = rounds(r, figure)
                .iter()
                .zip(&theirs)
                .filter(|(_, b)| **b > 0.0)
                .map(|(a, b)| a / b)
                .collect();
            if each.is_empty() {
                continue;
            }
            let in_order = each.clone();
            each.sort_by(f64::total_cmp);
            let median = if each.len() % 2 == 1 {
                each[each.len() / 2]
            } else {
                (each[each.len() / 2 - 1] + each[each.len() / 2]) / 2.0
            };
            row.insert(
                figure.to_string(),
                json!({"rounds": in_order, "median": median, "min": each[0], "max": each[each.len() - 1]}),
            );
        }
        out.insert(name.clone(), Value::Object(row));
    }
    Value::Object(out)
}

/// The round-by-round ratios under the table: one line per rate figure.
fn paired_list(doc: &Value) -> String {
    let Some(paired) = doc["round_ratio_to_nginx"].as_object() else {
        return String::new();
    };
    let mut s = String::from(
        "\nRound by round, each proxy's rate over nginx's in the same round (median, then every round):\n\n",
    );
    for (key, label) in [
        ("small", "small GET"),
        ("big", "1 MiB GET"),
        ("close", "new connection"),
        ("ws_echo", "WebSocket echo"),
    ] {
        let per: Vec<String> = paired
            .iter()
            .filter_map(|(name, row)| {
                let f = row.get(key)?;
                let each: Vec<String> = f["rounds"]
                    .as_array()?
                    .iter()
                    .filter_map(Value::as_f64)
                    .map(|x| format!("{x:.2}"))
                    .collect();
                Some(format!(
                    "{name} {:.2}x ({})",
                    f["median"].as_f64()?,
                    each.join(", ")
                ))
            })
            .collect();
        if !per.is_empty() {
            s.push_str(&format!("- {label}: {}\n", per.join("; ")));
        }
    }
    s
}

fn goals(results: &Map<String, Value>) -> Value {
    let (Some(l), Some(n)) = (results.get("latchkey"), results.get("nginx")) else {
        return json!([]);
    };
    let ratio = |p: &str| match (num(l, p), num(n, p)) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    };
    let mut out = vec![];
    let mut goal = |text: &str, value: Option<f64>, met: bool, shown: String| {
        out.push(
            json!({"goal": text, "value": value, "shown": shown, "met": met && value.is_some()}),
        );
    };
    for (text, path) in [
        (
            "small GET throughput >= 1.0x nginx, with the full access check",
            "small.rps",
        ),
        ("1 MiB GET bandwidth >= 1.0x nginx", "big.bytes_per_sec"),
        ("new-connection rate >= 1.0x nginx", "close.rps"),
        ("WebSocket echo maximum >= 1.0x nginx", "ws_echo.rate"),
    ] {
        let r = ratio(path);
        goal(text, r, r.is_some_and(|r| r >= 1.0), fmt_ratio(r));
    }
    let r = ratio("small.proxy_cpu_us_per_request");
    goal(
        "CPU per request <= nginx's",
        r,
        r.is_some_and(|r| r <= 1.0),
        fmt_ratio(r),
    );
    let kb = num(l, "idle_ws.kb_per_connection");
    goal(
        "idle WebSocket memory <= 8 kB per connection",
        kb,
        kb.is_some_and(|k| k <= 8.0),
        kb.map(|k| format!("{k:.1} kB")).unwrap_or_default(),
    );
    json!(out)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}x"))
        .unwrap_or_else(|| "n/a".into())
}

fn fmt_num(x: f64, decimals: usize) -> String {
    let s = format!("{x:.decimals$}");
    // Thousands separators for the integer part.
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(a, b)| (a, Some(b)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// The comparison table: one row per figure, one column per proxy, "value (ratio to nginx)".
pub fn table(doc: &Value) -> String {
    let results = doc["results"].as_object().cloned().unwrap_or_default();
    // The order of the run, not the alphabet.
    let order: Vec<String> = doc["method"]["targets"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let names: Vec<&String> = order.iter().filter(|n| results.contains_key(*n)).collect();
    let mut t = String::from("| figure |");
    for n in &names {
        t.push_str(&format!(" {n} |"));
    }
    t.push_str("\n|---|");
    for _ in &names {
        t.push_str("---:|");
    }
    t.push('\n');
    for (path, label, unit, scale, decimals) in ROWS {
        t.push_str(&format!("| {label} ({unit}) |"));
        for n in &names {
            let cell = match num(&results[n.as_str()], path) {
                Some(x) => {
                    let ratio = doc["ratio_to_nginx"][n.as_str()][*path]
                        .as_f64()
                        .filter(|_| n.as_str() != "nginx")
                        .map(|r| format!(" ({r:.2}x)"))
                        .unwrap_or_default();
                    format!("{}{ratio}", fmt_num(x * scale, *decimals))
                }
                None => "—".into(),
            };
            t.push_str(&format!(" {cell} |"));
        }
        t.push('\n');
    }
    t
}

/// Every round's rates, per proxy, under the table.
fn rounds_list(doc: &Value) -> String {
    let mut s = String::from("\nEach round (in order):\n\n");
    for (key, label, scale) in [
        ("small", "small GET req/s", 1.0),
        ("big", "1 MiB GET MiB/s", 1048576.0),
        ("close", "new connection req/s", 1.0),
        ("ws_echo", "WebSocket echo msg/s", 1.0),
    ] {
        let mut per: Vec<String> = vec![];
        for (name, r) in doc["results"].as_object().cloned().unwrap_or_default() {
            let Some(each) = r[key]["rounds"].as_array().cloned() else {
                continue;
            };
            let each: Vec<String> = each
                .iter()
                .filter_map(Value::as_f64)
                .map(|x| fmt_num(x / scale, 0))
                .collect();
            per.push(format!("{name} {}", each.join(" / ")));
        }
        if !per.is_empty() {
            s.push_str(&format!("- {label}: {}\n", per.join("; ")));
        }
    }
    s
}

pub fn markdown(doc: &Value) -> String {
    let mut s = format!(
        "# latchkey benchmark, {}\n\n",
        doc["date"].as_str().unwrap_or("")
    );
    if let Some(note) = doc["note"].as_str().filter(|n| !n.is_empty()) {
        s.push_str(&format!("{note}\n\n"));
    }
    let m = &doc["machine"];
    s.push_str(&format!(
        "{} cores ({}), Linux {}; load average before {}, after {}. Proxy on core {}, wrk, WebSocket client, upstream and Redis on core {}; {} s per measurement.\n\n",
        m["cores"], m["cpu"].as_str().unwrap_or("?"), m["kernel"].as_str().unwrap_or("?"),
        m["load_average_before"].as_str().unwrap_or("?"), m["load_average_after"].as_str().unwrap_or("?"),
        doc["method"]["proxy_core"].as_str().unwrap_or("?"), doc["method"]["load_core"].as_str().unwrap_or("?"),
        doc["method"]["seconds_per_measurement"],
    ));
    let rounds = doc["method"]["rounds"].as_u64().unwrap_or(1);
    if rounds > 1 {
        s.push_str(&format!(
            "The rate figures were measured in {rounds} rounds, the proxies taking turns in each; \
             each proxy's row shows its median round (with that round's latency and CPU).\n\n"
        ));
    }
    s.push_str("Ratios in parentheses are to nginx in the same run.\n\n");
    s.push_str(&table(doc));
    if rounds > 1 {
        s.push_str(&rounds_list(doc));
        s.push_str(&paired_list(doc));
    }
    s.push_str("\nGoals (latchkey against nginx, same run):\n\n");
    for g in doc["goals"].as_array().cloned().unwrap_or_default() {
        s.push_str(&format!(
            "- {} {}: {}\n",
            if g["met"].as_bool() == Some(true) {
                "met"
            } else {
                "**missed**"
            },
            g["goal"].as_str().unwrap_or(""),
            g["shown"].as_str().unwrap_or("")
        ));
    }
    let sh = &doc["sharing"];
    if sh.is_object() {
        let a = &sh["accepts"];
        let r = &sh["revoke"];
        s.push_str(&format!(
            "\nSharing path (latchkey on Redis):\n\n\
             - invite accepts: {} per second ({} concurrent sharees, p50 {:.1} ms, p99 {:.1} ms)\n\
             - revoke all users to WebSocket closed, {} sockets over {} instances, after the revoke call returned: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
               (same instance p99 {:.1} ms, other instances p99 {:.1} ms; {} closed before it returned; {} not closed within 10 s); \
               after the call was sent: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; the calls took {} ms\n\
             - startup {:.1} ms, idle RSS {:.1} MiB, sign-in {:.1} ms (argon2id)\n",
            fmt_num(a["rate"].as_f64().unwrap_or(0.0), 0),
            a["concurrency"],
            a["p50_ms"].as_f64().unwrap_or(f64::NAN),
            a["p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["sockets"], r["instances"],
            r["p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["max_ms"].as_f64().unwrap_or(f64::NAN),
            r["same_instance_p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["other_instances_p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["closed_before_the_call_returned"],
            r["not_closed_within_10s"],
            r["from_call_sent_p50_ms"].as_f64().unwrap_or(f64::NAN),
            r["from_call_sent_p99_ms"].as_f64().unwrap_or(f64::NAN),
            r["from_call_sent_max_ms"].as_f64().unwrap_or(f64::NAN),
            r["revoke_call_ms"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_f64)
                    .map(|x| format!("{x:.1}"))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            sh["startup_ms"].as_f64().unwrap_or(f64::NAN),
            sh["idle_rss_kb"].as_f64().unwrap_or(f64::NAN) / 1024.0,
            sh["sign_in_ms"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    let soak = &doc["soak"];
    if soak.is_object() {
        s.push_str(&format!(
            "\nSoak (latchkey, {:.0} s of small GETs and WebSocket churn, {} requests, {} errors): RSS {:.1} MiB after the first minute, {:.1} MiB at the end (max {:.1} MiB); open files {} at the first sample, {} at the end.\n",
            soak["seconds"].as_f64().unwrap_or(0.0),
            soak["requests"],
            soak["errors"],
            soak["rss_after_first_minute_kb"].as_f64().unwrap_or(0.0) / 1024.0,
            soak["rss_last_kb"].as_f64().unwrap_or(0.0) / 1024.0,
            soak["rss_max_kb"].as_f64().unwrap_or(0.0) / 1024.0,
            soak["fds_first"],
            soak["fds_last"],
        ));
    }
    let mut errors = vec![];
    for (name, r) in doc["results"].as_object().cloned().unwrap_or_default() {
        for e in r["errors"].as_array().cloned().unwrap_or_default() {
            errors.push(format!("- {name}: {}", e.as_str().unwrap_or("")));
        }
    }
    let premature = doc["sharing"]["revoke"]["closed_before_the_call_was_sent"]
        .as_u64()
        .unwrap_or(0);
    if premature > 0 {
        errors.push(format!(
            "- revoke: {premature} sockets closed before the revoke call was sent"
        ));
    }
    if !errors.is_empty() {
        s.push_str("\nErrors during the run (figures next to them are suspect):\n\n");
        s.push_str(&errors.join("\n"));
        s.push('\n');
    }
    let v = &doc["versions"];
    s.push_str(&format!(
        "\nVersions: latchkey {}; {}; {}; configurable-http-proxy {} on node {}; {}.\n",
        v["latchkey"].as_str().unwrap_or(""),
        v["nginx"].as_str().unwrap_or(""),
        v["haproxy"].as_str().unwrap_or(""),
        v["configurable-http-proxy"].as_str().unwrap_or(""),
        v["node"].as_str().unwrap_or(""),
        v["wrk"].as_str().unwrap_or(""),
    ));
    s
}

pub fn write(o: &Opts, doc: &Value) {
    std::fs::create_dir_all(&o.out).expect("the results directory");
    let stamp = doc["date"]
        .as_str()
        .unwrap_or("undated")
        .get(..16)
        .unwrap_or("undated")
        .replace(':', "");
    let json_path = o.out.join(format!("{stamp}Z.json"));
    let md_path = o.out.join(format!("{stamp}Z.md"));
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(doc).expect("JSON") + "\n",
    )
    .expect("write the JSON results");
    let md = markdown(doc);
    std::fs::write(&md_path, &md).expect("write the table");
    println!("{md}");
    eprintln!("results: {} and {}", json_path.display(), md_path.display());
}
