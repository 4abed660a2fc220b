//! Printing: events become lines on stdout through a bounded queue drained by a printer
//! thread, so no emission and no reload ever waits on a terminal or a pipe.
//!
//! 1. **Queue.** A sink call formats nothing and writes nothing: it appends the event to the
//!    queue (a mutex held for the push) and wakes the printer only if the printer is idle,
//!    so a busy stream costs no system call per value.
//! 2. **Bound.** Per-value events ([`HostEvent::is_per_value`]: emissions, and user-function
//!    panics, which can come once per value) are admitted while less than
//!    [`OUTPUT_QUEUE_BYTES`] of them wait; beyond that they are dropped and counted
//!    ([`WhenFull::Drop`], for a terminal or a pipe, whose reader may stall for good). For a
//!    regular file or `/dev/null`, which never stall for long, the emission waits for room
//!    instead ([`WhenFull::Wait`]): `host --no-watch --json > out.jsonl` keeps every value.
//!    Every other event (loaded, reload, build and load failures, completions, host errors)
//!    is always admitted: there are a handful per reload, and a person needs each one.
//! 3. **Print.** The printer takes the whole queue at once, formats each event
//!    ([`Formatter`]) and writes it through a [`BufWriter`]; it flushes as soon as the queue
//!    is empty, and at least every [`FLUSH_INTERVAL`] while it is not, so output stays live.
//! 4. **Report drops.** Where per-value events were dropped, a [`HostEvent::Dropped`] with
//!    the counts is printed in their place: before the next admitted event, or as soon as
//!    the printer has caught up.
//! 5. **Closed output.** A write error (the reader went away: `EPIPE`) ends printing: the
//!    queue is emptied, later events are discarded at once, and `on_closed` is called once
//!    with the error (the binary then shuts down, see `main.rs`).
//!
//! Order: events are printed in the order they were queued, so a reload is printed before
//! any emission of its version (the reloader queues its report before it commits the code).
//! Memory: per-value events held are at most twice [`OUTPUT_QUEUE_BYTES`] (the queue, and
//! the batch being printed), plus one event larger than the whole budget. An emission costs
//! no allocation: its texts are copied into the queue's text arena, and the queue's entry is
//! a few words. The queue and the printer's batch each reserve room for a full budget of
//! emissions when the printer starts (its text, and an entry of 40 bytes for each of the
//! at most `budget / 64` events: about 13 MB each at the default budget, 26 MB of address
//! space in all, which Linux backs with memory only as it is written), and swap their
//! buffers, so no emission grows one; room grown past that (one value larger than the
//! budget, a burst of other events) is given back after it is printed. Every other event is
//! boxed in the queue (one allocation, besides its own strings). (Before: a `String` pair per emission,
//! recycled through a bounded pool, which allocated 0.006 to 0.2 times per emission in
//! `make bench`'s scenario 6, depending on how far the producer ran ahead of the printer.)

use std::collections::VecDeque;
use std::io::{self, BufWriter, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::events::{EventSink, Formatter, HostEvent, Sink};

/// How many bytes of per-value events (their text, plus a fixed overhead each) may wait to
/// be printed before new ones are dropped: about 10,000 short emissions.
pub const OUTPUT_QUEUE_BYTES: usize = 8 << 20;

/// The longest a printed line waits in the printer's buffer while more keep coming.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(5);

/// The printer's write buffer: one `write` system call per this many bytes under load.
const WRITE_BUFFER: usize = 64 * 1024;

/// What a per-value event does when the queue's budget is spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Drop it and count it (a terminal or a pipe: the reader may stall for good).
    Drop,
    /// Wait for room (a regular file or `/dev/null`: writes finish).
    Wait,
}

impl WhenFull {
    /// What suits the process's stdout: [`WhenFull::Wait`] for a regular file or a
    /// character device that is not a terminal (`/dev/null`), else [`WhenFull::Drop`].
    pub fn for_stdout() -> WhenFull {
        use std::io::IsTerminal;
        use std::os::fd::AsFd;
        use std::os::unix::fs::FileTypeExt;
        let stdout = io::stdout();
        let Ok(fd) = stdout.as_fd().try_clone_to_owned() else {
            return WhenFull::Drop;
        };
        match std::fs::File::from(fd).metadata().map(|m| m.file_type()) {
            Ok(t) if t.is_file() || (t.is_char_device() && !stdout.is_terminal()) => WhenFull::Wait,
            _ => WhenFull::Drop,
        }
    }
}

/// What a queued event is counted as, besides its text.
const EVENT_OVERHEAD: usize = 64;

/// A queued event: an emission's texts are in the queue's arena (`Queue::text`), anything
/// else is boxed (those allocate their strings anyway).
enum Item {
    /// An emission: the pipeline's name at `text[at..at + pipeline]`, then the value's text
    /// (`value` bytes).
    Emission {
        at: usize,
        pipeline: usize,
        value: usize,
        version: u64,
    },
    Event(Box<HostEvent>),
}

// The entry the docs count (40 bytes) for the room reserved per event.
const _: () = assert!(std::mem::size_of::<Item>() <= 40);

/// Queued events in order, and the texts of the queued emissions.
struct Items {
    items: VecDeque<Item>,
    text: String,
}

impl Items {
    /// Room for a budget's worth of per-value events, reserved now so no emission grows it.
    fn with_room(budget: usize) -> Items {
        Items {
            items: VecDeque::with_capacity(budget / EVENT_OVERHEAD + 16),
            text: String::with_capacity(budget),
        }
    }

    fn clear(&mut self, budget: usize) {
        self.items.clear();
        self.text.clear();
        // One huge value grew the arena (or a burst of other events the entries): give the
        // room back to what was reserved rather than hold it for good.
        if self.text.capacity() > budget {
            self.text.shrink_to(budget);
        }
        let entries = budget / EVENT_OVERHEAD + 16;
        if self.items.capacity() > entries {
            self.items.shrink_to(entries);
        }
    }
}

struct Queue {
    events: Items,
    /// Bytes of per-value events in `events`.
    per_value_bytes: usize,
    dropped_emissions: u64,
    dropped_errors: u64,
    /// The printer waits for a push.
    idle: bool,
    /// Pushes waiting for room ([`WhenFull::Wait`]).
    waiting: usize,
    /// [`Printer::finish`] asked the printer to print what is queued and end.
    closing: bool,
    /// Writing failed; everything is discarded.
    failed: Option<(io::ErrorKind, String)>,
}

impl Queue {
    /// The drops since the last report, as an event to print in their place.
    fn take_dropped(&mut self) -> Option<HostEvent> {
        if self.dropped_emissions == 0 && self.dropped_errors == 0 {
            return None;
        }
        Some(HostEvent::Dropped {
            emissions: std::mem::take(&mut self.dropped_emissions),
            errors: std::mem::take(&mut self.dropped_errors),
        })
    }

    /// Queues `item`, after the report of what was dropped before it, if anything was.
    fn push_back(&mut self, item: Item) {
        if let Some(dropped) = self.take_dropped() {
            self.events.items.push_back(Item::Event(Box::new(dropped)));
        }
        self.events.items.push_back(item);
    }
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Signalled when the printer has taken the queue, or failed.
    room: Condvar,
    budget: usize,
    when_full: WhenFull,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue stays consistent whatever panicked while holding it (a push or a take).
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, event: HostEvent) {
        if let HostEvent::Emission {
            pipeline,
            version,
            value,
        } = &event
        {
            return self.push_emission(pipeline, *version, value);
        }
        let mut q = self.lock();
        if event.is_per_value() {
            let Some(g) = self.admit(q, weight(&event), false) else {
                return;
            };
            q = g;
        } else if q.failed.is_some() {
            return;
        }
        q.push_back(Item::Event(Box::new(event)));
        self.wake_printer(q);
    }

    /// An emission, its texts copied into the queue's arena: no allocation.
    fn push_emission(&self, pipeline: &str, version: u64, value: &str) {
        let q = self.lock();
        let Some(mut q) = self.admit(q, EVENT_OVERHEAD + pipeline.len() + value.len(), true) else {
            return;
        };
        let at = q.events.text.len();
        q.events.text.push_str(pipeline);
        q.events.text.push_str(value);
        q.push_back(Item::Emission {
            at,
            pipeline: pipeline.len(),
            value: value.len(),
            version,
        });
        self.wake_printer(q);
    }

    /// Room for a per-value event of `weight` (an `emission`, or a per-value error): the
    /// queue's lock when it is admitted (its weight counted), `None` when it is dropped (and
    /// counted) or printing failed. Waits for room under [`WhenFull::Wait`].
    fn admit<'a>(
        &'a self,
        mut q: MutexGuard<'a, Queue>,
        weight: usize,
        emission: bool,
    ) -> Option<MutexGuard<'a, Queue>> {
        loop {
            if q.failed.is_some() {
                return None;
            }
            if q.per_value_bytes == 0 || q.per_value_bytes + weight <= self.budget {
                q.per_value_bytes += weight;
                return Some(q);
            }
            if self.when_full == WhenFull::Wait && !q.closing {
                q.waiting += 1;
                q = self.room.wait(q).unwrap_or_else(PoisonError::into_inner);
                q.waiting -= 1;
                continue;
            }
            if emission {
                q.dropped_emissions += 1;
            } else {
                q.dropped_errors += 1;
            }
            return None;
        }
    }

    fn wake_printer(&self, mut q: MutexGuard<'_, Queue>) {
        if std::mem::take(&mut q.idle) {
            drop(q);
            self.wake.notify_one();
        }
    }
}

/// What a queued per-value event is counted as: its text and a fixed overhead.
fn weight(event: &HostEvent) -> usize {
    EVENT_OVERHEAD
        + match event {
            HostEvent::Emission {
                pipeline, value, ..
            } => pipeline.len() + value.len(),
            HostEvent::Error {
                pipeline,
                path,
                message,
            } => pipeline.len() + path.len() + message.len(),
            _ => 0,
        }
}

/// The sink side of a [`Printer`]: queues events, never waits for the output.
struct PrinterSink(Arc<Shared>);

impl EventSink for PrinterSink {
    fn event(&self, event: HostEvent) {
        self.0.push(event);
    }

    fn emission(&self, pipeline: &str, version: u64, value: &str) {
        self.0.push_emission(pipeline, version, value);
    }
}

/// Prints events on a thread of its own (see the module doc).
pub struct Printer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Printer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Printer").finish_non_exhaustive()
    }
}

impl Printer {
    /// A printer writing to stdout with the default budget, dropping or waiting as suits
    /// what stdout is ([`WhenFull::for_stdout`]); always waiting when `lossless` (a
    /// `--no-watch` run: no reloader to keep responsive, and its output is the result).
    pub fn stdout(
        formatter: Formatter,
        lossless: bool,
        on_closed: impl FnOnce(&io::Error) + Send + 'static,
    ) -> io::Result<Printer> {
        let when_full = if lossless {
            WhenFull::Wait
        } else {
            WhenFull::for_stdout()
        };
        Printer::start(
            formatter,
            io::stdout(),
            OUTPUT_QUEUE_BYTES,
            when_full,
            on_closed,
        )
    }

    /// A printer writing to `out`, holding at most `budget` bytes of per-value events;
    /// `on_closed` is called once if writing fails.
    pub fn start<W: Write + Send + 'static>(
        formatter: Formatter,
        out: W,
        budget: usize,
        when_full: WhenFull,
        on_closed: impl FnOnce(&io::Error) + Send + 'static,
    ) -> io::Result<Printer> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                events: Items::with_room(budget),
                per_value_bytes: 0,
                dropped_emissions: 0,
                dropped_errors: 0,
                idle: false,
                waiting: 0,
                closing: false,
                failed: None,
            }),
            wake: Condvar::new(),
            room: Condvar::new(),
            budget,
            when_full,
        });
        let printing = shared.clone();
        let thread = std::thread::Builder::new()
            .name("hmr-printer".to_owned())
            .spawn(move || {
                // A panic while printing (a formatter or writer bug) ends printing as a write
                // error does: nothing may wait for room that will never come.
                let printed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    print(&printing, formatter, out)
                }))
                .unwrap_or_else(|_| Err(io::Error::other("the printer thread panicked")));
                if let Err(e) = printed {
                    {
                        let mut q = printing.lock();
                        q.failed = Some((e.kind(), e.to_string()));
                        let budget = printing.budget;
                        q.events.clear(budget);
                        q.per_value_bytes = 0;
                    }
                    printing.room.notify_all();
                    on_closed(&e);
                }
            })?;
        Ok(Printer {
            shared,
            thread: Some(thread),
        })
    }

    /// The sink that queues events for this printer.
    pub fn sink(&self) -> Sink {
        Arc::new(PrinterSink(self.shared.clone()))
    }

    /// Why printing stopped, if writing failed (`BrokenPipe` when the reader went away).
    pub fn failure(&self) -> Option<(io::ErrorKind, String)> {
        self.shared.lock().failed.clone()
    }

    /// Prints everything queued (and the count of anything dropped), flushes, and ends the
    /// printer thread. Waits for the output as long as it takes to accept the lines.
    pub fn finish(mut self) {
        self.close();
    }

    fn close(&mut self) {
        {
            let mut q = self.shared.lock();
            q.closing = true;
            if std::mem::take(&mut q.idle) {
                self.shared.wake.notify_one();
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Printer {
    fn drop(&mut self) {
        self.close();
    }
}

/// The printer thread: takes the queue in batches and writes it until closed.
fn print<W: Write>(shared: &Shared, mut formatter: Formatter, out: W) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, out);
    let mut batch = Items::with_room(shared.budget);
    let mut line: Vec<u8> = Vec::new();
    let mut flushed = Instant::now();
    loop {
        let closing = {
            let mut q = shared.lock();
            loop {
                if q.events.items.is_empty() {
                    // Caught up: say what was dropped since the last line.
                    if let Some(dropped) = q.take_dropped() {
                        q.events.items.push_back(Item::Event(Box::new(dropped)));
                    }
                }
                // Flush what is buffered before sleeping (outside the lock, below).
                if !q.events.items.is_empty() || q.closing || !out.buffer().is_empty() {
                    break;
                }
                q.idle = true;
                q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
            // The printed batch's buffers (cleared, their room kept) become the queue's.
            std::mem::swap(&mut batch, &mut q.events);
            q.per_value_bytes = 0;
            if q.waiting > 0 {
                shared.room.notify_all();
            }
            q.closing
        };
        if batch.items.is_empty() {
            out.flush()?;
            flushed = Instant::now();
            if closing {
                return Ok(());
            }
            continue;
        }
        for item in batch.items.drain(..) {
            line.clear();
            let printable = match item {
                Item::Emission {
                    at,
                    pipeline,
                    value,
                    version,
                } => {
                    let texts = &batch.text[at..at + pipeline + value];
                    let (pipeline, value) = texts.split_at(pipeline);
                    formatter.emission_into(pipeline, version, value, &mut line)
                }
                Item::Event(event) => formatter.line_into(&event, &mut line),
            };
            if printable {
                line.push(b'\n');
                out.write_all(&line)?;
            }
            if flushed.elapsed() >= FLUSH_INTERVAL {
                out.flush()?;
                flushed = Instant::now();
            }
        }
        batch.clear(shared.budget);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{Receiver, Sender, channel};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// A writer that reports each write, blocks the first one until the test opens the
    /// gate, and keeps what it was given.
    struct Gated {
        entered: Sender<()>,
        gate: Option<Receiver<()>>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.entered.send(());
            if let Some(gate) = self.gate.take() {
                let _ = gate.recv();
            }
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn emission(version: u64, n: u64) -> HostEvent {
        HostEvent::Emission {
            pipeline: "p".into(),
            version,
            value: n.to_string(),
        }
    }

    fn reload(version: u64) -> HostEvent {
        HostEvent::Reload {
            version,
            swapped: 1,
            reset: 0,
            added: 0,
            removed: 0,
            restarted: 0,
            resets: vec![],
            added_paths: vec![],
            removed_paths: vec![],
            restarts: vec![],
            stuck: vec![],
            build_ms: 1,
            load_ms: 1,
            swap_us: 1,
            mapped_versions: 2,
            live_versions: 1,
            tracks: vec![],
            replay: vec![],
        }
    }

    /// A writer that sends each write to the test.
    struct Sent(Sender<Vec<u8>>);

    impl Write for Sent {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` on a thread and fails if it does not return within [`WAIT`]: a sink call
    /// that waited on the output would hang here.
    fn within(f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        rx.recv_timeout(WAIT)
            .expect("the sink waited for a blocked output");
    }

    /// A writer that panics ends printing as a failed write does: a sink that waits for room
    /// (`WhenFull::Wait`) is released instead of waiting for good, and the failure is said.
    #[test]
    fn a_panicking_writer_ends_printing_and_blocks_nobody() {
        struct Panics;
        impl Write for Panics {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                panic!("planted: a writer that panics")
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (closed_tx, closed) = channel();
        let printer = Printer::start(Formatter::json(), Panics, 256, WhenFull::Wait, move |e| {
            let _ = closed_tx.send(e.to_string());
        })
        .expect("a printer");
        let sink = printer.sink();
        within(move || {
            for i in 0..10_000u64 {
                sink.emission("p", 1, &i.to_string());
            }
        });
        let said = closed.recv_timeout(WAIT).expect("the failure is reported");
        assert!(said.contains("panicked"), "{said}");
        assert!(printer.failure().is_some());
    }

    /// With the output blocked, pushing never waits; per-value events beyond the budget
    /// are dropped and counted, reload and error-of-the-host events never are; once the
    /// output moves, every line is printed in order with the drop count where the gap is.
    #[test]
    fn a_blocked_output_drops_values_not_reports_and_says_how_many() {
        // (events pushed while blocked: emissions of v1, then a reload, then v2 emissions)
        let cases: [(u64, u64); 3] = [(10, 10), (500, 500), (0, 3000)];
        for (before, after) in cases {
            let (entered_tx, entered) = channel();
            let (open, gate) = channel();
            let written = Arc::new(Mutex::new(Vec::new()));
            let out = Gated {
                entered: entered_tx,
                gate: Some(gate),
                written: written.clone(),
            };
            let budget = 100 * (EVENT_OVERHEAD + 5);
            let printer =
                Printer::start(Formatter::json(), out, budget, WhenFull::Drop, |_| {}).unwrap();
            // Dropped before the printer, so a failing case never leaves its writer blocked.
            let open = open;
            let sink = printer.sink();
            // The first line reaches the writer (flushed: the queue is empty) and blocks it.
            sink.event(emission(1, 0));
            entered
                .recv_timeout(WAIT)
                .expect("the first line is flushed");
            let s = sink.clone();
            within(move || {
                for n in 1..=before {
                    s.event(emission(1, n));
                }
                s.event(reload(2));
                s.event(HostEvent::Error {
                    pipeline: String::new(),
                    path: String::new(),
                    message: "host failure".into(),
                });
                for n in 0..after {
                    s.event(emission(2, n));
                }
            });
            open.send(()).unwrap();
            printer.finish();
            let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
            let events: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let printed = events.iter().filter(|e| e["event"] == "emission").count() as u64;
            let dropped: u64 = events
                .iter()
                .filter(|e| e["event"] == "dropped")
                .map(|e| e["emissions"].as_u64().unwrap())
                .sum();
            let case = (before, after);
            assert_eq!(printed + dropped, 1 + before + after, "{case:?}: {text}");
            let bound = (budget / (EVENT_OVERHEAD + 1)) as u64 + 1;
            assert!(
                printed <= bound,
                "{case:?}: {printed} printed, bound {bound}"
            );
            assert_eq!(dropped > 0, before + after >= bound, "{case:?}: {text}");
            let at = |name: &str| events.iter().position(|e| e["event"] == name);
            let reload_at = at("reload").expect("the reload is never dropped");
            assert!(
                at("error").is_some(),
                "{case:?}: host errors are never dropped"
            );
            let first_v2 = events
                .iter()
                .position(|e| e["event"] == "emission" && e["version"] == 2);
            if let Some(first_v2) = first_v2 {
                assert!(reload_at < first_v2, "{case:?}: {text}");
            }
            // Each drop report stands where the gap is: right after the last line admitted
            // before it, and it never repeats a count.
            for w in events.windows(2) {
                assert!(
                    !(w[0]["event"] == "dropped" && w[1]["event"] == "dropped"),
                    "{case:?}: {text}"
                );
            }
        }
    }

    /// Waiting for room instead of dropping (a file): every value is printed, in order,
    /// and nothing is reported dropped, however small the budget.
    #[test]
    fn waiting_for_room_loses_nothing() {
        let (entered_tx, entered) = channel();
        let (open, gate) = channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let out = Gated {
            entered: entered_tx,
            gate: Some(gate),
            written: written.clone(),
        };
        let printer = Printer::start(Formatter::json(), out, 300, WhenFull::Wait, |_| {}).unwrap();
        let open = open;
        let sink = printer.sink();
        sink.event(emission(1, 0));
        entered
            .recv_timeout(WAIT)
            .expect("the first line is flushed");
        let s = sink.clone();
        let (done_tx, done) = channel();
        std::thread::spawn(move || {
            for n in 1..10_000 {
                s.event(emission(1, n));
            }
            let _ = done_tx.send(());
        });
        open.send(()).unwrap();
        done.recv_timeout(WAIT)
            .expect("the pushes end once the output moves");
        printer.finish();
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        let values: Vec<u64> = text
            .lines()
            .map(|l| {
                let e: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(e["event"], "emission", "{l}");
                e["value"].as_str().unwrap().parse().unwrap()
            })
            .collect();
        assert_eq!(values, (0..10_000).collect::<Vec<_>>());
    }

    /// A line reaches the output without waiting for more lines or for the end.
    #[test]
    fn a_lone_line_is_flushed_at_once() {
        let (tx, written) = channel();
        let printer = Printer::start(
            Formatter::human(true),
            Sent(tx),
            1024,
            WhenFull::Drop,
            |_| {},
        )
        .unwrap();
        printer.sink().event(emission(1, 7));
        let line = written.recv_timeout(WAIT).expect("the line is written");
        assert_eq!(line, b"p v1: 7\n");
        drop(printer);
    }

    /// Output memory is bounded: a value larger than the whole budget is printed whole, and
    /// the room it took is given back once it is printed (the queue's text arena and entries
    /// are back within their reserve for the values after it).
    #[test]
    fn a_huge_value_is_printed_and_its_room_given_back() {
        const BUDGET: usize = 1024;
        let (tx, written) = channel();
        let printer = Printer::start(
            Formatter::human(true),
            Sent(tx),
            BUDGET,
            WhenFull::Wait,
            |_| {},
        )
        .unwrap();
        let sink = printer.sink();
        let huge = "x".repeat(20 * BUDGET);
        let values = [huge.as_str(), "7", "8"];
        for (i, value) in values.into_iter().enumerate() {
            sink.emission("p", 1, value);
            let line = written.recv_timeout(WAIT).expect("the line is written");
            assert_eq!(line, format!("p v1: {value}\n").as_bytes(), "value {i}");
            // Whatever the queue holds now was cleared by the printer after its last use.
            let q = printer.shared.lock();
            assert!(
                q.events.text.capacity() <= BUDGET,
                "after value {i}: the queue's arena holds {} bytes of room, budget {BUDGET}",
                q.events.text.capacity()
            );
            assert!(q.events.items.capacity() <= BUDGET / EVENT_OVERHEAD + 16);
        }
        drop(printer);
    }

    /// A reader that went away: the printer says so once, and later events are discarded
    /// without waiting.
    #[test]
    fn a_closed_output_is_reported_once_and_then_ignored() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (tx, rx) = channel();
        let printer = Printer::start(Formatter::json(), Closed, 1024, WhenFull::Wait, move |e| {
            tx.send(e.kind()).unwrap();
        })
        .unwrap();
        let sink = printer.sink();
        sink.event(emission(1, 1));
        assert_eq!(rx.recv_timeout(WAIT), Ok(io::ErrorKind::BrokenPipe));
        within(move || {
            for n in 0..100_000 {
                sink.event(emission(1, n));
            }
            sink.event(reload(2));
        });
        assert_eq!(
            printer.failure().map(|f| f.0),
            Some(io::ErrorKind::BrokenPipe)
        );
        printer.finish();
        assert!(rx.try_recv().is_err(), "reported once");
    }
}
