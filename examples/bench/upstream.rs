//! The upstream every proxy forwards to, on the load core, and the WebSocket echo load it runs on
//! its own thread (examples/bench_upstream/echo.rs).

use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, ChildStdout};
use std::sync::Mutex;

use serde_json::Value;

use crate::Opts;
use crate::procs::{LOAD_CORE, Proc};

pub struct Upstream {
    pub port: u16,
    control: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    _proc: Proc,
}

impl Upstream {
    pub fn start(o: &Opts) -> Upstream {
        let port = crate::procs::free_port();
        let mut proc = Proc::spawn_piped(
            "upstream",
            LOAD_CORE,
            &o.upstream,
            &[format!("127.0.0.1:{port}")],
            &o.work.join("upstream.log"),
        );
        assert!(
            crate::procs::wait_port(port, std::time::Duration::from_secs(10)),
            "the upstream did not start (see {})",
            o.work.join("upstream.log").display()
        );
        let (input, output) = proc.pipes();
        let mut output = BufReader::new(output);
        let mut ready = String::new();
        let _ = output.read_line(&mut ready);
        assert!(
            ready.starts_with("listening "),
            "the upstream did not start (see {})",
            o.work.join("upstream.log").display()
        );
        Upstream {
            port,
            control: Mutex::new((input, output)),
            _proc: proc,
        }
    }

    /// `conns` WebSockets to `url` through a proxy, each with `window` messages on their way
    /// (the next sent as an echo comes back) for `seconds`: messages, rate, p50_us, p99_us,
    /// errors.
    pub fn echo(
        &self,
        url: &str,
        headers: &[String],
        (conns, window): (usize, usize),
        seconds: u64,
    ) -> Result<Value, String> {
        let mut command = format!("echo\t{url}\t{conns}\t{window}\t{seconds}");
        for h in headers {
            command.push('\t');
            command.push_str(h);
        }
        let mut control = self.control.lock().expect("the upstream's control");
        let (input, output) = &mut *control;
        writeln!(input, "{command}").map_err(|e| format!("the upstream's input: {e}"))?;
        input.flush().map_err(|e| e.to_string())?;
        let mut answer = String::new();
        match output.read_line(&mut answer) {
            Ok(0) => return Err("the upstream exited".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("the upstream's output: {e}")),
        }
        let v: Value = serde_json::from_str(&answer).map_err(|e| e.to_string())?;
        match v["error"].as_str() {
            Some(e) => Err(e.to_owned()),
            None => Ok(v),
        }
    }
}
