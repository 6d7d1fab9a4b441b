//! Logging that never blocks the thread that logs: env_logger formats each line on the caller's
//! thread and hands it to a bounded queue; the `log-writer` thread writes the queue to stderr.
//! When stderr stalls (a full pipe, a stuck journal) lines are dropped and counted, and
//! [`health`] says so for `/healthz` and `/metrics`, instead of a worker or the relay waiting.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

/// Lines waiting for the `log-writer` thread; more are dropped and counted.
const QUEUE_LINES: usize = 1024;
/// A write to stderr taking longer than this means logging has stalled.
const STALL_AFTER: Duration = Duration::from_secs(2);

/// The state of logging, for `/healthz` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHealth {
    /// Lines dropped so far because the queue was full.
    pub dropped_lines: u64,
    /// The writer has been stuck in one write for longer than the stall limit, or the queue is full.
    pub stalled: bool,
}

impl LogHealth {
    /// `"ok"` or `"stalled"`.
    pub fn as_str(&self) -> &'static str {
        if self.stalled {
            "stalled"
        } else {
            "ok"
        }
    }
}

/// Shared between the loggers' side of the queue and the writer thread.
#[derive(Debug)]
struct PipeState {
    epoch: Instant,
    stall_after: Duration,
    dropped: AtomicU64,
    /// Milliseconds since `epoch` at which the current write started, plus one; 0 when idle.
    writing_since: AtomicU64,
}

/// The logging side of the queue: what env_logger writes each formatted line into.
#[derive(Clone)]
struct LinePipe {
    lines: Sender<Vec<u8>>,
    state: Arc<PipeState>,
}

impl LinePipe {
    /// Starts the `log-writer` thread draining into `sink`.
    fn start(
        sink: impl Write + Send + 'static,
        capacity: usize,
        stall_after: Duration,
    ) -> std::io::Result<LinePipe> {
        let (lines, queue) = crossbeam_channel::bounded(capacity);
        let state = Arc::new(PipeState {
            epoch: Instant::now(),
            stall_after,
            dropped: AtomicU64::new(0),
            writing_since: AtomicU64::new(0),
        });
        let writer_state = Arc::clone(&state);
        thread::Builder::new()
            .name("log-writer".to_owned())
            .spawn(move || drain(queue, sink, &writer_state))?;
        Ok(LinePipe { lines, state })
    }

    fn health(&self) -> LogHealth {
        let since = self.state.writing_since.load(Ordering::SeqCst);
        let now = self.state.epoch.elapsed().as_millis() as u64 + 1;
        let stuck =
            since != 0 && now.saturating_sub(since) > self.state.stall_after.as_millis() as u64;
        LogHealth {
            dropped_lines: self.state.dropped.load(Ordering::Relaxed),
            stalled: stuck || self.lines.is_full(),
        }
    }

    /// Waits until every queued line is written, at most `limit`.
    fn flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while (!self.lines.is_empty() || self.state.writing_since.load(Ordering::SeqCst) != 0)
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Write for LinePipe {
    /// Queues one formatted line (env_logger writes each record with one call); never blocks.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.lines.try_send(line.to_vec())
        {
            self.state.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `log-writer` thread: writes each line, marking how long the write is taking.
fn drain(queue: Receiver<Vec<u8>>, mut sink: impl Write, state: &PipeState) {
    for line in queue {
        let started = state.epoch.elapsed().as_millis() as u64 + 1;
        state.writing_since.store(started, Ordering::SeqCst);
        // Nowhere to report a failing stderr; the line is lost either way.
        let _ = sink.write_all(&line).and_then(|()| sink.flush());
        state.writing_since.store(0, Ordering::SeqCst);
    }
}

static PIPE: OnceLock<LinePipe> = OnceLock::new();

/// Installs the process's logger: `RUST_LOG` filtering (default `info`), millisecond timestamps,
/// lines queued to the `log-writer` thread. If that thread cannot start, logs go straight to stderr.
pub fn init() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.format_timestamp_millis();
    let colour = if std::io::stderr().is_terminal() {
        env_logger::WriteStyle::Always
    } else {
        env_logger::WriteStyle::Never
    };
    builder.write_style(colour);
    match LinePipe::start(std::io::stderr(), QUEUE_LINES, STALL_AFTER) {
        Ok(pipe) => {
            builder.target(env_logger::Target::Pipe(Box::new(pipe.clone())));
            let _ = PIPE.set(pipe);
            builder.init();
        }
        Err(error) => {
            builder.init();
            log::warn!("log-writer thread not started ({error}); logging straight to stderr");
        }
    }
}

/// Whether [`init`] installed the non-blocking logger.
pub(crate) fn installed() -> bool {
    PIPE.get().is_some()
}

/// The state of logging; all clear when [`init`] was not called (or fell back to stderr).
pub fn health() -> LogHealth {
    PIPE.get().map_or(
        LogHealth {
            dropped_lines: 0,
            stalled: false,
        },
        LinePipe::health,
    )
}

/// Gives the `log-writer` thread up to `limit` to write what is queued; call before the process
/// exits so its last lines are not lost.
pub fn flush(limit: Duration) {
    if let Some(pipe) = PIPE.get() {
        pipe.flush(limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink whose writes block until the test lets them through.
    struct Gate {
        open: Receiver<()>,
        written: Sender<Vec<u8>>,
    }

    impl Write for Gate {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let _ = self.open.recv();
            let _ = self.written.send(bytes.to_vec());
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_sink_never_blocks_the_logger_and_the_stall_shows() {
        let (open_tx, open) = crossbeam_channel::unbounded();
        let (written, written_rx) = crossbeam_channel::unbounded();
        let stall_after = Duration::from_millis(50);
        let mut pipe = LinePipe::start(Gate { open, written }, 4, stall_after).unwrap();
        let started = Instant::now();
        pipe.write_all(b"line 0\n").unwrap();
        while pipe.state.writing_since.load(Ordering::SeqCst) == 0 {
            thread::sleep(Duration::from_millis(1));
        }
        for n in 1..100 {
            pipe.write_all(format!("line {n}\n").as_bytes()).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the logger waited"
        );
        thread::sleep(stall_after * 3);
        let health = pipe.health();
        assert!(health.stalled, "{health:?}");
        assert_eq!(health.as_str(), "stalled");
        // One line is in the writer's hands, four wait in the queue; the rest were dropped.
        assert_eq!(health.dropped_lines, 95);
        for _ in 0..5 {
            open_tx.send(()).unwrap();
        }
        pipe.flush(Duration::from_secs(10));
        let health = pipe.health();
        assert!(!health.stalled, "{health:?}");
        let lines: Vec<Vec<u8>> = written_rx.try_iter().collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0], b"line 0\n");
    }

    #[test]
    fn a_healthy_sink_gets_every_line_in_order() {
        let (open_tx, open) = crossbeam_channel::unbounded();
        let (written, written_rx) = crossbeam_channel::unbounded();
        for _ in 0..10 {
            open_tx.send(()).unwrap();
        }
        let mut pipe =
            LinePipe::start(Gate { open, written }, 16, Duration::from_secs(60)).unwrap();
        for n in 0..10 {
            pipe.write_all(format!("{n}\n").as_bytes()).unwrap();
        }
        pipe.flush(Duration::from_secs(10));
        let lines: Vec<String> = written_rx
            .try_iter()
            .map(|line| String::from_utf8(line).unwrap())
            .collect();
        let expected: Vec<String> = (0..10).map(|n| format!("{n}\n")).collect();
        assert_eq!(lines, expected);
        assert_eq!(pipe.health().dropped_lines, 0);
    }
}
