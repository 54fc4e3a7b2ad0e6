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
