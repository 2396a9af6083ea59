//! Lines on stderr while progress bars are drawn there: a log line or a notice printed
//! straight to stderr lands at the end of the bar's line (`… ETA 12s WARN shutting down`).
//! While bars are shown, every such line goes through their [`MultiProgress`], which clears
//! the bars, prints the line and draws them again below it.
//!
//! Also the log's default filter and its one-line form of a SQL statement (sqlx logs a slow
//! statement whole, over many lines).

use std::io::Write;
use std::sync::Mutex;

use indicatif::MultiProgress;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::FormatFields;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The bars being drawn, if any.
static BARS: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// From now on, lines on stderr go through `bars` (`None`: straight to stderr again).
pub fn set_bars(bars: Option<MultiProgress>) {
    *BARS.lock().unwrap_or_else(|e| e.into_inner()) = bars;
}

/// Writes `bytes` to stderr, above the bars when some are drawn.
pub fn write_stderr(bytes: &[u8]) {
    let bars = BARS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let write = || {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(bytes);
        let _ = err.flush();
    };
    match bars {
        Some(bars) => bars.suspend(write),
        None => write(),
    }
}

/// `eprintln!`, above the bars when some are drawn.
pub fn say(line: &str) {
    write_stderr(format!("{line}\n").as_bytes());
}

/// The log's writer: each event whole, through [`write_stderr`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

/// One event's text, written when the event is done.
pub struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            write_stderr(&self.0);
        }
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

/// The log filter when `SLUICEGATE_LOG` is not set: warnings of our own, and of the libraries
/// below only errors (sqlx warns of every slow statement, printing it whole).
pub const DEFAULT_LOG_FILTER: &str = "warn,sqlx=error";

/// The log's filter: `SLUICEGATE_LOG` when set (the user's filter wins, `sqlx=warn` brings
/// sqlx's warnings back), else [`DEFAULT_LOG_FILTER`].
pub fn log_filter() -> EnvFilter {
    EnvFilter::try_from_env("SLUICEGATE_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER))
}

/// How a log line shows an event's fields: as tracing's default does (`message`, then
/// `name=value`), but a SQL statement (`db.statement`, as sqlx records it) on one short line.
pub fn log_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| match field.name() {
        "message" => write!(w, "{value:?}"),
        "db.statement" => {
            let text = format!("{value:?}");
            // A `&str` field arrives quoted, its line ends escaped.
            let text = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                Some(inner) => inner
                    .replace("\\n", " ")
                    .replace("\\t", " ")
                    .replace("\\\"", "\""),
                None => text,
            };
            write!(w, "db.statement={:?}", one_line(&text))
        }
        name => write!(w, "{name}={value:?}"),
    })
    .delimited(" ")
}

/// The longest a statement in a log line gets, in characters.
pub const STATEMENT_CHARS: usize = 200;

/// A SQL statement as a log line shows it: on one line, runs of whitespace made one space,
/// cut to [`STATEMENT_CHARS`] with `…`.
pub fn one_line(statement: &str) -> String {
    let flat = statement.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= STATEMENT_CHARS {
        return flat;
    }
    let mut cut: String = flat.chars().take(STATEMENT_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Log lines written under `filter`, while `emit` runs.
    fn logged(filter: &str, emit: impl FnOnce()) -> String {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(filter))
            .fmt_fields(log_fields())
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        text
    }

    fn slow_statement() {
        let sql = format!(
            "WITH finished AS (\n  UPDATE sluicegate.jobs\n  SET status = 'succeeded'\n){}",
            "\n  , x AS (SELECT 1)".repeat(200)
        );
        tracing::warn!(
            target: "sqlx::query",
            summary = "with finished as …",
            db.statement = sql.as_str(),
            elapsed_secs = 1.2,
            "slow statement: execution time exceeded alert threshold"
        );
        tracing::warn!(target: "sluicegate::engine", "ours");
        tracing::error!(target: "sqlx::pool", "a pool error");
    }

    #[test]
    fn the_default_filter_silences_sqlx_below_errors() {
        let text = logged(DEFAULT_LOG_FILTER, slow_statement);
        assert!(!text.contains("slow statement"), "{text}");
        assert!(text.contains("ours"), "{text}");
        assert!(text.contains("a pool error"), "{text}");
    }

    #[test]
    fn a_statement_asked_for_is_logged_on_one_line() {
        let text = logged("warn", slow_statement);
        let line = text
            .lines()
            .find(|l| l.contains("slow statement"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            line.contains("db.statement=\"WITH finished AS ( UPDATE"),
            "{line}"
        );
        assert!(line.len() < 600, "{line}");
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    #[test]
    fn a_statement_is_one_short_line() {
        let sql = "WITH finished AS (\n    UPDATE sluicegate.jobs\n       SET status = 'succeeded'\n)\nSELECT 1";
        assert_eq!(
            one_line(sql),
            "WITH finished AS ( UPDATE sluicegate.jobs SET status = 'succeeded' ) SELECT 1"
        );
        let long = format!("SELECT {}", "x, ".repeat(2_000));
        let line = one_line(&long);
        assert_eq!(line.chars().count(), STATEMENT_CHARS);
        assert!(line.ends_with('…') && !line.contains('\n'));
    }
}
