//! The CLI's logging: tracing to stderr, as escaped text (colours only on a
//! terminal) or as JSON lines.

use celeriac::escape::Escaped;

use crate::cli::telemetry;

/// Installs the log subscriber: `level` (or `RUST_LOG`), text or JSON.
pub(crate) fn init(level: &str, json: bool) {
    use tracing_subscriber::field::MakeExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    if json {
        // JSON escapes every string itself: a message cannot forge a line.
        let sub = tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_current_span(false)
            .finish();
        telemetry::install_subscriber(sub);
        return;
    }
    // Every field and message escaped: text from a message (a task name,
    // an error) can neither forge a log line nor reach the terminal as
    // escape sequences, whichever crate logs it.
    let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        if field.name() == "message" {
            write!(w, "{}", Escaped(format_args!("{value:?}")))
        } else {
            write!(w, "{field}={}", Escaped(format_args!("{value:?}")))
        }
    })
    .delimited(" ");
    // Colours only on a terminal: a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .fmt_fields(fields)
        .finish();
    telemetry::install_subscriber(sub);
}
