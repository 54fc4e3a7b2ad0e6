//! Runs wrk on the load core and reads its report.

use std::process::Command;

use crate::procs::LOAD_CORE;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    /// Bytes per second read by wrk (headers and bodies).
    pub bytes_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Answers that were not 2xx or 3xx.
    pub non_2xx: u64,
    /// wrk's socket error counts: connect, read, write, timeout.
    pub socket_errors: [u64; 4],
}

/// `wrk -t1 -c CONNS -d SECONDS --latency [-H h]... URL`, on the load core.
pub fn run(url: &str, conns: usize, seconds: u64, headers: &[String]) -> WrkResult {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", LOAD_CORE, "wrk", "-t1"])
        .arg(format!("-c{conns}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg("--timeout")
        .arg("10s");
    for h in headers {
        cmd.arg("-H").arg(h);
    }
    cmd.arg(url);
    let out = cmd.output().expect("wrk runs (bench/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&text)
}

pub fn parse(text: &str) -> WrkResult {
    let mut r = WrkResult::default();
    let mut in_distribution = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some(v) = t.strip_prefix("50%") {
                r.p50_us = duration_us(v.trim());
                continue;
            }
            if let Some(v) = t.strip_prefix("99%") {
                r.p99_us = duration_us(v.trim());
                continue;
            }
            if t.starts_with("75%") || t.starts_with("90%") {
                continue;
            }
            in_distribution = false;
        }
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("Transfer/sec:") {
            r.bytes_per_sec = size_bytes(v.trim());
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for (i, part) in v.split(',').enumerate().take(4) {
                r.socket_errors[i] = part
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
            }
        } else if t.contains(" requests in ") {
            // "123456 requests in 10.00s, 15.43MB read"
            let mut words = t.split_whitespace();
            r.requests = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            r.seconds = t
                .split(" requests in ")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .map(|s| duration_us(s.trim()) / 1e6)
                .unwrap_or(0.0);
        }
    }
    r
}

fn split_unit(s: &str) -> (f64, &str) {
    let i = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (s[..i].parse().unwrap_or(0.0), &s[i..])
}

fn duration_us(s: &str) -> f64 {
    let (n, unit) = split_unit(s);
    match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        "m" => n * 60e6,
        "h" => n * 3600e6,
        _ => n,
    }
}

fn size_bytes(s: &str) -> f64 {
    let (n, unit) = split_unit(s);
    match unit {
        "KB" => n * 1024.0,
        "MB" => n * 1024.0 * 1024.0,
        "GB" => n * 1024.0 * 1024.0 * 1024.0,
        "TB" => n * 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => n,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_wrk_report_is_read() {
        let text = "Running 10s test @ http://127.0.0.1:8000/small
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.27ms  210.35us   9.95ms   88.64%
    Req/Sec    50.61k     1.39k   52.96k    79.00%
  Latency Distribution
     50%    1.25ms
     75%    1.33ms
     90%    1.46ms
     99%    1.98ms
  503493 requests in 10.00s, 124.12MB read
  Socket errors: connect 0, read 7, write 0, timeout 0
  Non-2xx or 3xx responses: 3
Requests/sec:  50345.30
Transfer/sec:     12.41MB
";
        let r = super::parse(text);
        assert_eq!(r.requests, 503493);
        assert_eq!(r.seconds, 10.0);
        assert_eq!(r.rps, 50345.30);
        assert_eq!(r.p50_us, 1250.0);
        assert_eq!(r.p99_us, 1980.0);
        assert_eq!(r.non_2xx, 3);
        assert_eq!(r.socket_errors, [0, 7, 0, 0]);
        assert!((r.bytes_per_sec - 12.41 * 1048576.0).abs() < 1.0);
    }
}
