//! Processes under test: spawned on a given core, measured through /proc, stopped when dropped.

use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The core of the proxy under test, and the core of everything else (load, upstream, Redis).
pub const PROXY_CORE: &str = "0";
pub const LOAD_CORE: &str = "1";

/// A child process pinned to one core with `taskset`, its output in a log file.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn spawn(
        name: &str,
        core: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        log: &Path,
    ) -> Proc {
        let out = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = out.try_clone().expect("a second handle on the log");
        let mut cmd = command(core, program, args, envs);
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        Proc::start(name, cmd, program)
    }

    /// Like `spawn`, with the child's standard input and output piped to us (`pipes`); its
    /// errors go to the log.
    pub fn spawn_piped(
        name: &str,
        core: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Proc {
        let err = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let mut cmd = command(core, program, args, &[]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(err);
        Proc::start(name, cmd, program)
    }

    fn start(name: &str, mut cmd: Command, program: &Path) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Proc {
            name: name.to_owned(),
            child,
        }
    }

    /// The standard input and output of a child started with `spawn_piped` (once).
    pub fn pipes(&mut self) -> (ChildStdin, ChildStdout) {
        let input = self.child.stdin.take().expect("a piped standard input");
        let output = self.child.stdout.take().expect("a piped standard output");
        (input, output)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process and all its descendants (nginx's workers, for instance).
    pub fn tree(&self) -> Vec<u32> {
        tree(self.pid())
    }

    /// User and system CPU time of the whole tree, in clock ticks.
    pub fn cpu_ticks_split(&self) -> (u64, u64) {
        self.tree()
            .iter()
            .filter_map(|p| stat_ticks(*p))
            .fold((0, 0), |(u, s), (pu, ps)| (u + pu, s + ps))
    }

    /// Resident memory of the whole tree, in kB.
    pub fn rss_kb(&self) -> u64 {
        self.tree()
            .iter()
            .filter_map(|p| status_kb(*p, "VmRSS:"))
            .sum()
    }

    /// Peak resident memory (VmHWM) of the whole tree, in kB.
    pub fn hwm_kb(&self) -> u64 {
        self.tree()
            .iter()
            .filter_map(|p| status_kb(*p, "VmHWM:"))
            .sum()
    }

    /// Open file descriptors of the whole tree.
    pub fn fds(&self) -> usize {
        self.tree()
            .iter()
            .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok())
            .map(|d| d.count())
            .sum()
    }

    /// SIGTERM, then SIGKILL after three seconds.
    pub fn stop(&mut self) {
        if !self.alive() {
            return;
        }
        eprintln!("  stopping {}", self.name);
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// (utime, stime): fields 14 and 15 of /proc/PID/stat.
fn stat_ticks(pid: u32) -> Option<(u64, u64)> {
    let f = stat_fields(pid)?;
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// `program args` under `taskset -c core`, with `envs` and without our RUST_LOG.
fn command(core: &str, program: &Path, args: &[String], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(core).arg(program).args(args);
    cmd.env_remove("RUST_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

fn tree(root: u32) -> Vec<u32> {
    let mut parents = vec![];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                && let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok())
            {
                parents.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out
}

/// Clock ticks one core spent running processes so far (user, nice, system, steal), from
/// /proc/stat. Interrupt and softirq time is left out: on loopback much of it is the proxy's own
/// networking, accounted to no process.
pub fn core_busy_ticks(core: &str) -> u64 {
    core_ticks(core, &[0, 1, 2, 7])
}

/// Clock ticks one core was not idle so far (everything but idle and I/O wait).
pub fn core_nonidle_ticks(core: &str) -> u64 {
    core_ticks(core, &[0, 1, 2, 5, 6, 7])
}

/// The sum of these columns of the core's line in /proc/stat (0: user, 1: nice, 2: system,
/// 3: idle, 4: iowait, 5: irq, 6: softirq, 7: steal).
fn core_ticks(core: &str, columns: &[usize]) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let prefix = format!("cpu{core} ");
    stat.lines()
        .find(|l| l.starts_with(&prefix))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .enumerate()
                .filter(|(i, _)| columns.contains(i))
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits until something accepts TCP connections on the port.
pub fn wait_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Polls an HTTP GET (a raw HTTP/1.1 request, no client library) until it answers 200; returns
/// how long that took from `since`.
pub fn wait_http_ok(port: u16, path: &str, since: Instant, within: Duration) -> Option<Duration> {
    use std::io::{Read, Write};
    let deadline = since + within;
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            );
            if s.write_all(req.as_bytes()).is_ok() {
                let mut buf = [0u8; 32];
                if let Ok(n) = s.read(&mut buf)
                    && buf[..n].starts_with(b"HTTP/1.1 200")
                {
                    return Some(since.elapsed());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}
