//! What the command-line tools (`rwkv`, `rwkv-train`) share about their process: standard
//! output whose failures end the command the way Unix tools do, error reports with one cause
//! each, and the removal of half-written temporary files on SIGINT/SIGTERM.
//!
//! - A closed standard output (`rwkv generate ... | head -c 1`) ends the command quietly
//!   with status 141, what a shell reports for a writer killed by SIGPIPE; Rust ignores the
//!   signal, so the write fails with `BrokenPipe` instead and [`exit_code`] maps it.
//! - Any other write error (`> /dev/full`) is reported, status 1.
//! - Messages on standard error never panic: a full or closed stderr loses the message only.

use std::io::Write;
use std::process::ExitCode;

/// Exit status for a closed standard output (128 + SIGPIPE).
pub const EXIT_CLOSED_PIPE: u8 = 141;
/// Exit status after SIGINT or SIGTERM (128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Writing to standard output failed.
#[derive(Debug, thiserror::Error)]
#[error("writing to standard output: {0}")]
pub struct StdoutError(#[source] pub std::io::Error);

/// Writes `bytes` to standard output and flushes, so that a failure shows here and not, lost,
/// at exit.
pub fn emit(bytes: &[u8]) -> Result<(), StdoutError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(StdoutError)
}

/// [`emit`] of formatted text.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::tool::emit(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}

/// A line on standard error that cannot panic (`eprintln!` does when stderr is closed or full).
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// The error and its causes, each once: `context: cause: cause`. A cause whose text its
/// parent already shows (an error type that prints its source and also returns it, as most
/// `{path}: {source}` errors do) is not repeated.
pub fn report(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

/// The exit status of a failed command, after reporting it (except a closed stdout, which
/// ends the command quietly).
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    let closed = err.chain().any(|cause| {
        cause
            .downcast_ref::<StdoutError>()
            .is_some_and(|e| e.0.kind() == std::io::ErrorKind::BrokenPipe)
    });
    if closed {
        return ExitCode::from(EXIT_CLOSED_PIPE);
    }
    note!("error: {}", report(err));
    ExitCode::FAILURE
}

/// On SIGINT and SIGTERM: removes the temporary files of writes in progress (so an
/// interrupted save leaves neither a half-written output nor its hidden temporary file) and
/// exits with [`EXIT_INTERRUPTED`].
pub fn remove_temporaries_on_signal() {
    // A second handler cannot be installed; the first one stays, which is what we want.
    let _ = ctrlc::set_handler(|| {
        rwkv_burn::files::remove_temporaries();
        std::process::exit(EXIT_INTERRUPTED);
    });
}

/// Checks a `--threads` value: at least 1 and at most eight per core (more only adds
/// contention; a typo like 100000 would start that many threads).
pub fn check_threads(threads: usize) -> Result<(), String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let max = 8 * cores;
    if threads == 0 {
        Err("--threads must be at least 1".into())
    } else if threads > max {
        Err(format!(
            "--threads is {threads}; at most {max} (eight per core on this machine)"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_cause_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let file = rwkv_burn::files::FileError::Io {
            path: "x.txt".into(),
            source: io,
        };
        let text = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
        let err = anyhow::Error::new(file).context("reading the prompt");
        let message = report(&err);
        assert_eq!(message.matches(&text).count(), 1, "{message}");
        assert!(
            message.starts_with("reading the prompt: x.txt"),
            "{message}"
        );
    }

    #[test]
    fn a_closed_pipe_is_quiet_and_other_errors_are_not() {
        let closed = anyhow::Error::new(StdoutError(std::io::ErrorKind::BrokenPipe.into()));
        assert_eq!(exit_code(&closed), ExitCode::from(EXIT_CLOSED_PIPE));
        let full = anyhow::Error::new(StdoutError(std::io::Error::other("no space")));
        assert_eq!(exit_code(&full), ExitCode::FAILURE);
    }

    #[test]
    fn threads_are_bounded_by_the_cores() {
        assert!(check_threads(0).is_err());
        assert!(check_threads(1).is_ok());
        assert!(check_threads(100_000).is_err());
    }
}
