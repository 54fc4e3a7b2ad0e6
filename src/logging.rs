//! Log output: lines go to stdout through a buffer that is written out every 100 ms, when it
//! holds 32 KiB, at once for warnings and errors, and when the process ends. One access line
//! per request then costs no system call of its own (as nginx's `access_log ... buffer=`).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Written out when it holds this much.
const HIGH_WATER: usize = 32 * 1024;
/// Written out at least this often.
const INTERVAL: Duration = Duration::from_millis(100);

static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();

#[derive(Default)]
struct Shared {
    buf: Mutex<Vec<u8>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds to the buffer, and writes it out once it holds `HIGH_WATER`.
    fn append(&self, add: impl FnOnce(&mut Vec<u8>)) {
        let full = {
            let mut buf = self.lock();
            add(&mut buf);
            buf.len() >= HIGH_WATER
        };
        if full {
            self.write_out();
        }
    }

    fn write_out(&self) {
        // stdout first, then the buffer: two writers cannot put lines out of order.
        let mut out = std::io::stdout().lock();
        let pending = std::mem::take(&mut *self.lock());
        if !pending.is_empty() {
            let _ = out.write_all(&pending);
            let _ = out.flush();
        }
    }
}

/// The `MakeWriter` for tracing-subscriber's fmt layer.
pub struct Buffered(Arc<Shared>);

impl Buffered {
    /// The process's log buffer, with a thread that writes it out every 100 ms.
    pub fn stdout() -> Buffered {
        let shared = SHARED.get_or_init(|| {
            let shared = Arc::new(Shared::default());
            let flusher = shared.clone();
            let _ = std::thread::Builder::new()
                .name("log-flush".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(INTERVAL);
                        flusher.write_out();
                    }
                });
            shared
        });
        Buffered(shared.clone())
    }
}

/// Writes out what is buffered: call before the process exits.
pub fn flush() {
    if let Some(shared) = SHARED.get() {
        shared.write_out();
    }
}

/// One log line on its way into the buffer.
pub struct Line<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.shared.append(|buf| buf.extend_from_slice(bytes));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if self.urgent {
            self.shared.write_out();
        }
    }
}

impl<'a> MakeWriter<'a> for Buffered {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            shared: &self.0,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line<'a> {
        Line {
            shared: &self.0,
            // Warnings and errors are out at once: they may be the last lines before a crash.
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

/// The target of the access line, one per request.
pub const ACCESS: &str = "latchkey::access";

/// Set once logging writes through the buffer without colours: whether lines are JSON.
static DIRECT: OnceLock<bool> = OnceLock::new();

/// Sets up logging to stdout through the buffer: `json` or human-readable lines, colours only
/// for a person at a terminal.
pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Buffered::stdout())
        .with_ansi(ansi);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    if !ansi {
        let _ = DIRECT.set(json);
    }
    // What was logged before a panic is out before the panic message.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // Not if the panic came from inside the buffer's lock: waiting for it would hang.
        if let Some(shared) = SHARED.get()
            && let Ok(mut buf) = shared.buf.try_lock()
        {
            let pending = std::mem::take(&mut *buf);
            drop(buf);
            let _ = std::io::stdout().write_all(&pending);
        }
        report(info);
    }));
}

/// The access line of one request. Written straight into the log buffer in the layout
/// tracing-subscriber gives it (human or JSON): it is the one line per request, and going
/// through tracing's dispatch and general formatter took 8.4% of the CPU in one profile, about
/// as much as the request's access check (8.3%).
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub client: &'a str,
    pub method: &'a str,
    /// Never the query string, which may carry codes or upstream tokens.
    pub path: &'a str,
    pub status: u16,
    pub ms: f64,
}

impl AccessLine<'_> {
    /// Writes the line; false when it must go through tracing instead (colours, or logging
    /// not set up by [`init`]). Nothing is written when the filter leaves access lines out.
    pub fn write(&self) -> bool {
        let Some(&json) = DIRECT.get() else {
            return false;
        };
        if !tracing::enabled!(target: "latchkey::access", Level::INFO) {
            return true;
        }
        let Some(shared) = SHARED.get() else {
            return false;
        };
        shared.append(|buf| self.format(buf, json));
        true
    }

    fn format(&self, line: &mut Vec<u8>, json: bool) {
        if json {
            line.extend_from_slice(b"{\"timestamp\":\"");
            timestamp(line);
            line.extend_from_slice(b"\",\"level\":\"INFO\"");
        } else {
            timestamp(line);
            line.extend_from_slice(b"  INFO latchkey::access:");
        }
        let mut put = |name: &str, value: &str, quoted: bool| {
            if json {
                line.extend_from_slice(b",\"");
                line.extend_from_slice(name.as_bytes());
                line.extend_from_slice(b"\":");
                if quoted {
                    json_string(line, value);
                } else {
                    line.extend_from_slice(value.as_bytes());
                }
            } else {
                line.push(b' ');
                line.extend_from_slice(name.as_bytes());
                line.push(b'=');
                line.extend_from_slice(value.as_bytes());
            }
        };
        put("request_id", self.request_id, true);
        put("client", self.client, true);
        put("method", self.method, true);
        put("path", self.path, true);
        let mut number = String::with_capacity(24);
        push_u64(&mut number, u64::from(self.status));
        put("status", &number, false);
        // Milliseconds to the microsecond: enough, and no general float formatting.
        number.clear();
        let micros = (self.ms * 1000.0).round().max(0.0) as u64;
        push_u64(&mut number, micros / 1000);
        number.push('.');
        let frac = micros % 1000;
        if frac < 100 {
            number.push('0');
        }
        if frac < 10 {
            number.push('0');
        }
        push_u64(&mut number, frac);
        put("ms", &number, false);
        if json {
            line.extend_from_slice(b",\"target\":\"latchkey::access\"}");
        }
        line.push(b'\n');
    }
}

fn push_u64(line: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    line.push_str(std::str::from_utf8(&digits[i..]).unwrap_or("0"));
}

fn json_string(line: &mut Vec<u8>, s: &str) {
    line.push(b'"');
    for b in s.bytes() {
        match b {
            b'"' => line.extend_from_slice(b"\\\""),
            b'\\' => line.extend_from_slice(b"\\\\"),
            b if b < 0x20 => line.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            b => line.push(b),
        }
    }
    line.push(b'"');
}

/// The time now as RFC 3339 in UTC with microseconds, as tracing-subscriber writes it; the
/// date and time of day are worked out once a second.
fn timestamp(line: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
            let s = secs % 86_400;
            cached.1 = format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
                s / 3600,
                s % 3600 / 60,
                s % 60
            );
            cached.0 = secs;
        }
        line.extend_from_slice(cached.1.as_bytes());
    });
    let micros = now.subsec_micros();
    line.push(b'.');
    let mut digits = [b'0'; 6];
    let mut m = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    line.extend_from_slice(&digits);
    line.push(b'Z');
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of an RFC 3339 UTC timestamp with microseconds.
    fn timestamp_shaped(s: &str) -> Option<()> {
        let b = s.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        (b.len() == 27
            && digits(0..4)
            && b[4] == b'-'
            && b[10] == b'T'
            && b[19] == b'.'
            && digits(20..26)
            && b[26] == b'Z')
            .then_some(())
    }

    #[test]
    fn dates_are_worked_out_as_the_calendar_says() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_414), (2025, 11, 22));
    }

    #[test]
    fn the_access_line_is_what_the_general_formatter_would_write() {
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;
        let line = AccessLine {
            request_id: "abc123",
            client: "10.0.0.7",
            method: "GET",
            path: "/user/john/\"q\"",
            status: 200,
            ms: 1.235,
        };
        for json in [false, true] {
            let shared = Arc::new(Shared::default());
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(Buffered(shared.clone()));
            let layer = if json {
                layer.json().flatten_event(true).boxed()
            } else {
                layer.boxed()
            };
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!(
                    target: "latchkey::access",
                    request_id = %line.request_id,
                    client = %line.client,
                    method = %line.method,
                    path = %line.path,
                    status = line.status,
                    ms = line.ms,
                );
            });
            let theirs = String::from_utf8(std::mem::take(&mut *shared.lock())).unwrap();
            let mut ours = vec![];
            line.format(&mut ours, json);
            let ours = String::from_utf8(ours).unwrap();
            let stamp = "2026-11-22T22:31:28.123456Z".len();
            if json {
                let mut a: serde_json::Value = serde_json::from_str(&theirs).unwrap();
                let mut b: serde_json::Value = serde_json::from_str(&ours).unwrap();
                let stamp_b = b["timestamp"].as_str().unwrap().to_owned();
                assert!(timestamp_shaped(&stamp_b).is_some(), "{stamp_b}");
                a["timestamp"] = serde_json::Value::Null;
                b["timestamp"] = serde_json::Value::Null;
                assert_eq!(a, b);
            } else {
                assert!(timestamp_shaped(&ours[..stamp]).is_some(), "{ours}");
                assert_eq!(&ours[stamp..], &theirs[stamp..]);
            }
        }
    }
}
