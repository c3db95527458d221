//! Logs of a starting server, held back until it has started: a start that
//! fails then prints only its one-line reason, never log lines before it.

/// The most log bytes held back while a server starts; more are dropped
/// (and counted) rather than kept.
const HELD_LOG_BYTES: usize = 64 * 1024;

/// Logs of a starting process, kept until it has started (then written) or
/// failed (then dropped), so that a failed start prints only its reason.
struct HeldLogger {
    inner: env_logger::Logger,
    held: std::sync::Mutex<Held>,
}

#[derive(Default)]
struct Held {
    holding: bool,
    records: Vec<(log::Level, String, String)>,
    bytes: usize,
    dropped: usize,
}

static LOGGER: std::sync::OnceLock<HeldLogger> = std::sync::OnceLock::new();

impl log::Log for HeldLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.inner.matches(record) {
            return;
        }
        if let Ok(mut held) = self.held.lock() {
            if held.holding {
                let text = record.args().to_string();
                let size = text.len() + record.target().len();
                if held.bytes + size > HELD_LOG_BYTES {
                    held.dropped += 1;
                } else {
                    held.bytes += size;
                    let target = record.target().to_owned();
                    held.records.push((record.level(), target, text));
                }
                return;
            }
        }
        self.inner.log(record);
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Sets up `env_logger` logging on stderr (`RUST_LOG`, default `info`),
/// holding every record back until [`release_logs`] is called.
pub fn init_held_logging() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = inner.filter();
    let logger = LOGGER.get_or_init(|| HeldLogger {
        inner,
        held: std::sync::Mutex::new(Held {
            holding: true,
            ..Held::default()
        }),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(max);
    }
}

/// Writes the logs held back so far and lets later ones through at once.
/// Does nothing when logging was not set up by [`init_held_logging`].
pub fn release_logs() {
    let Some(logger) = LOGGER.get() else { return };
    let held = match logger.held.lock() {
        Ok(mut held) => std::mem::take(&mut *held),
        Err(_) => return,
    };
    for (level, target, text) in &held.records {
        log::Log::log(
            &logger.inner,
            &log::Record::builder()
                .level(*level)
                .target(target)
                .args(format_args!("{text}"))
                .build(),
        );
    }
    if held.dropped > 0 {
        log::warn!("{} log line(s) from the start were dropped", held.dropped);
    }
}
