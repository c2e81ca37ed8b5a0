//! kaniko-compatible log output: `INFO[0005] message` (seconds since start),
//! with `--log-format color|text|json` and `--log-timestamp`.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// How log lines are rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Text with colored levels when stderr is a terminal.
    Color,
    /// Plain text.
    Text,
    /// One JSON object per line.
    Json,
}

struct Logger {
    start: Instant,
    format: Format,
    color: bool,
    timestamp: bool,
    level: log::LevelFilter,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Installs the logger; later calls are ignored.
pub fn init(level: log::LevelFilter, format: Format, timestamp: bool) {
    let color = format == Format::Color && std::io::stderr().is_terminal();
    let logger = LOGGER.get_or_init(|| Logger {
        start: Instant::now(),
        format,
        color,
        timestamp,
        level,
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
        crate::progress::configure(format == Format::Json);
    }
}

/// Parses kaniko's `-v` levels (`trace`, `debug`, `info`, `warn`, `error`, `fatal`, `panic`).
pub fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    match s.to_ascii_lowercase().as_str() {
        "trace" => Ok(log::LevelFilter::Trace),
        "debug" => Ok(log::LevelFilter::Debug),
        "info" => Ok(log::LevelFilter::Info),
        "warn" | "warning" => Ok(log::LevelFilter::Warn),
        "error" | "fatal" | "panic" => Ok(log::LevelFilter::Error),
        other => Err(format!(
            "unknown verbosity {other:?}: use one of trace, debug, info, warn, error, fatal, panic"
        )),
    }
}

fn level_name(l: log::Level) -> &'static str {
    match l {
        log::Level::Error => "ERRO",
        log::Level::Warn => "WARN",
        log::Level::Info => "INFO",
        log::Level::Debug => "DEBU",
        log::Level::Trace => "TRAC",
    }
}

fn level_color(l: log::Level) -> &'static str {
    match l {
        log::Level::Error => "31",
        log::Level::Warn => "33",
        log::Level::Info => "36",
        log::Level::Debug | log::Level::Trace => "37",
    }
}

/// Renders one text line the way logrus' text formatter does for kaniko.
fn render_text(
    level: log::Level,
    elapsed_secs: u64,
    wall: Option<&str>,
    color: bool,
    msg: &str,
) -> String {
    let name = level_name(level);
    let stamp = match wall {
        Some(w) => w.to_owned(),
        None => format!("{elapsed_secs:04}"),
    };
    if color {
        format!("\x1b[{}m{name}\x1b[0m[{stamp}] {msg}\n", level_color(level))
    } else {
        format!("{name}[{stamp}] {msg}\n")
    }
}

fn wall_clock() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    crate::image::config::rfc3339(secs)
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        // Libraries (cranelift, wasmtime) are chatty at debug; -v debug is
        // about kiln's own work, as kaniko's is.
        let level = if m.target().starts_with("kiln") {
            self.level
        } else {
            self.level.min(log::LevelFilter::Warn)
        };
        m.level() <= level
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let msg = record.args().to_string();
        let line = match self.format {
            Format::Json => {
                let mut obj = serde_json::json!({"level": record.level().as_str().to_ascii_lowercase(), "msg": msg});
                if self.timestamp {
                    obj["time"] = serde_json::json!(wall_clock());
                }
                format!("{obj}\n")
            }
            Format::Color | Format::Text => {
                let wall = self.timestamp.then(wall_clock);
                render_text(
                    record.level(),
                    self.start.elapsed().as_secs(),
                    wall.as_deref(),
                    self.color,
                    &msg,
                )
            }
        };
        // One write per line keeps lines whole when threads log concurrently;
        // progress bars, if any, are lifted around it.
        crate::progress::write_stderr(line.as_bytes());
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_match_kaniko() {
        assert_eq!(
            render_text(log::Level::Info, 5, None, false, "Pushed x"),
            "INFO[0005] Pushed x\n"
        );
        assert_eq!(
            render_text(log::Level::Warn, 12345, None, false, "w"),
            "WARN[12345] w\n"
        );
        assert_eq!(
            render_text(
                log::Level::Error,
                0,
                Some("2026-01-01T00:00:00Z"),
                false,
                "e"
            ),
            "ERRO[2026-01-01T00:00:00Z] e\n"
        );
        assert_eq!(
            render_text(log::Level::Info, 0, None, true, "c"),
            "\x1b[36mINFO\x1b[0m[0000] c\n"
        );
    }

    #[test]
    fn levels_parse() {
        assert_eq!(parse_level("PANIC").unwrap(), log::LevelFilter::Error);
        assert_eq!(parse_level("debug").unwrap(), log::LevelFilter::Debug);
        assert!(parse_level("loud").is_err());
    }
}
