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

    fn write_out(&self) {
        let pending = std::mem::take(&mut *self.lock());
        if !pending.is_empty() {
            let mut out = std::io::stdout().lock();
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
        let full = {
            let mut buf = self.shared.lock();
            buf.extend_from_slice(bytes);
            buf.len() >= HIGH_WATER
        };
        if full {
            self.shared.write_out();
        }
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

/// The event format: tracing-subscriber's (human or JSON), except for the access line without
/// colours, which is written here directly with the same layout. It is the one line per
/// request, and the general formatter spent as much time on it as latchkey on the request's
/// access check.
pub struct Format<F> {
    inner: F,
    json: bool,
}

impl<F> Format<F> {
    pub fn new(inner: F, json: bool) -> Format<F> {
        Format { inner, json }
    }
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Format<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        if writer.has_ansi_escapes() || meta.target() != ACCESS {
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::with_capacity(256);
        if self.json {
            line.push_str("{\"timestamp\":\"");
            timestamp(&mut line);
            line.push_str("\",\"level\":\"");
            line.push_str(meta.level().as_str());
            line.push('"');
        } else {
            timestamp(&mut line);
            let level = meta.level().as_str();
            line.push_str(&"      "[..6usize.saturating_sub(level.len())]);
            line.push_str(level);
            line.push(' ');
            line.push_str(ACCESS);
            line.push(':');
        }
        event.record(&mut Fields {
            line: &mut line,
            json: self.json,
        });
        if self.json {
            line.push_str(",\"target\":\"");
            line.push_str(ACCESS);
            line.push_str("\"}");
        }
        line.push('\n');
        writer.write_str(&line)
    }
}

/// Writes an event's fields as `name=value` (or JSON members), values as `%` shows them.
struct Fields<'a> {
    line: &'a mut String,
    json: bool,
}

impl Fields<'_> {
    fn name(&mut self, name: &str) {
        if self.json {
            self.line.push_str(",\"");
            self.line.push_str(name);
            self.line.push_str("\":");
        } else {
            self.line.push(' ');
            self.line.push_str(name);
            self.line.push('=');
        }
    }
}

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        self.name(field.name());
        if self.json {
            let mut text = String::new();
            let _ = write!(text, "{value:?}");
            json_string(self.line, &text);
        } else {
            let _ = write!(self.line, "{value:?}");
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.name(field.name());
        if self.json {
            json_string(self.line, value);
        } else {
            self.line.push_str(value);
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.name(field.name());
        push_u64(self.line, value);
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        // Milliseconds to the microsecond: enough, and no general float formatting.
        self.name(field.name());
        let micros = (value * 1000.0).round().max(0.0) as u64;
        push_u64(self.line, micros / 1000);
        self.line.push('.');
        let frac = micros % 1000;
        if frac < 100 {
            self.line.push('0');
        }
        if frac < 10 {
            self.line.push('0');
        }
        push_u64(self.line, frac);
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

fn json_string(line: &mut String, s: &str) {
    line.push('"');
    for c in s.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            c if (c as u32) < 0x20 => line.push_str(&format!("\\u{:04x}", c as u32)),
            c => line.push(c),
        }
    }
    line.push('"');
}

/// The time now as RFC 3339 in UTC with microseconds, as tracing-subscriber writes it; the
/// date and time of day are worked out once a second.
fn timestamp(line: &mut String) {
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
        line.push_str(&cached.1);
    });
    let micros = now.subsec_micros();
    line.push('.');
    let mut digits = [b'0'; 6];
    let mut m = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    line.push_str(std::str::from_utf8(&digits).unwrap_or("000000"));
    line.push('Z');
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
    fn the_access_line_looks_as_the_general_formatter_writes_it() {
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;
        let shared = Arc::new(Shared::default());
        for json in [false, true] {
            let base = tracing_subscriber::fmt::format().with_ansi(false);
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(Buffered(shared.clone()));
            let subscriber = if json {
                tracing_subscriber::registry().with(
                    layer
                        .json()
                        .flatten_event(true)
                        .event_format(Format::new(base.json().flatten_event(true), true))
                        .boxed(),
                )
            } else {
                tracing_subscriber::registry()
                    .with(layer.event_format(Format::new(base, false)).boxed())
            };
            tracing::subscriber::with_default(subscriber, || {
                tracing::info!(
                    target: "latchkey::access",
                    request_id = %"abc123",
                    client = %std::net::IpAddr::from([10, 0, 0, 7]),
                    method = %"GET",
                    path = %"/user/john/\"q\"",
                    status = 200u64,
                    ms = 1.2346,
                );
            });
        }
        let out = String::from_utf8(std::mem::take(&mut *shared.lock())).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        let (stamp, rest) = lines[0].split_at("2026-11-22T22:31:28.123456Z".len());
        assert_eq!(
            rest,
            "  INFO latchkey::access: request_id=abc123 client=10.0.0.7 method=GET \
             path=/user/john/\"q\" status=200 ms=1.235"
        );
        assert!(timestamp_shaped(stamp).is_some(), "{stamp}");
        let v: serde_json::Value = serde_json::from_str(lines[1]).expect("JSON");
        assert_eq!(v["target"], "latchkey::access");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["request_id"], "abc123");
        assert_eq!(v["path"], "/user/john/\"q\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["ms"], 1.235);
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
