//! What the replicas and the verifier of a simulation log, kept in memory so that a run can
//! look for alarms and panics in it as the chaos run does in its processes' log files: every
//! warning and error of this process, and every panic (a panicking task does not log).

use std::io::Write;
use std::sync::{Mutex, MutexGuard, Once};

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn lines() -> MutexGuard<'static, Vec<String>> {
    LINES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Appends what the subscriber writes, a line at a time.
struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        lines().extend(text.lines().map(str::to_owned));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing (once per process): warnings and errors of every crate, or, with
/// `KEYRAFT_SIM_LOG` set to a tracing filter, that filter's lines printed to stderr and
/// captured alike. Panics are captured too, then reported as before.
pub fn capture() {
    static START: Once = Once::new();
    START.call_once(|| {
        let filter = std::env::var("KEYRAFT_SIM_LOG").ok();
        let print = filter.is_some();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter.unwrap_or_else(|| "warn".into())))
            .with_ansi(false)
            .with_writer(move || -> Box<dyn Write> {
                if print {
                    Box::new(Tee)
                } else {
                    Box::new(Capture)
                }
            })
            .try_init();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            lines().push(format!("panicked: {info}"));
            previous(info);
        }));
    });
}

/// Prints to stderr and captures.
struct Tee;

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write_all(buf)?;
        Capture.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Where the captured lines end now: a run looks at what comes after.
pub fn mark() -> usize {
    lines().len()
}

/// The captured lines since `mark` that hold one of `alarms`.
pub fn alarms_since(mark: usize, alarms: &[&str]) -> Vec<String> {
    lines()
        .iter()
        .skip(mark)
        .filter(|l| alarms.iter().any(|a| l.contains(a)))
        .map(|l| l.chars().take(600).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_anywhere_in_the_process_is_found_after_the_mark() {
        capture();
        let mark = mark();
        let ours = |found: Vec<String>| found.into_iter().filter(|l| l.contains("a task gave up")).count();
        assert_eq!(ours(alarms_since(mark, &["panicked"])), 0);
        let _ = std::thread::spawn(|| panic!("a task gave up")).join();
        // Other tests of this process may panic meanwhile: only this one's line is counted.
        assert_eq!(ours(alarms_since(mark, &["panicked"])), 1);
    }
}
