//! Host-owned line sources on tokio: [`file::spawn_file_lines`] (like `tail -F`),
//! [`tcp::TcpLines`] (every line of every connection) and [`stdin::StdinLines`] (the host's
//! standard input, shared by all who subscribe).
//!
//! A source delivers [`SourceEvent`]s to an [`Outlet`], which the runtime implements (a
//! channel into the thread that runs the pipeline); [`ChannelOutlet`] is that channel over
//! crossbeam-channel. A source runs as tokio tasks and holds what it reads from (a file
//! position, a listener and its connections, stdin) for as long as its handle lives: a
//! [`SourceTask`], or a `TcpLines` / `StdinLines` that several outlets subscribe to.
//! Dropping the handle aborts the tasks and frees what they hold.
//!
//! Every source waits while an outlet's backlog is above [`BACKLOG_LIMIT`], so a source that
//! reads faster than its pipeline runs (a large file, a fast client) does not fill memory.
//!
//! The runtime handed to a source must have its I/O and time drivers enabled
//! (`Builder::enable_all`).
//!
//! ```
//! use host::sources::{file::spawn_file_lines, ChannelOutlet, SourceEvent};
//! use std::time::Duration;
//!
//! let dir = host::testkit::TempDir::new("sources-doc");
//! let path = dir.path().join("app.log");
//! std::fs::write(&path, "started\n")?;
//! let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
//! let (outlet, events) = ChannelOutlet::new();
//! let task = spawn_file_lines(rt.handle(), path, outlet);
//! let first = events.recv_timeout(Duration::from_secs(10))?;
//! assert_eq!(first, SourceEvent::Line("started".into()));
//! drop(task); // stops tailing, closes the file
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod file;
pub mod stdin;
pub mod tcp;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// What a source delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// One line, without its `\n` (or `\r\n`).
    Line(String),
    /// Something went wrong that the person should see (invalid UTF-8, a line too long);
    /// the source goes on.
    Error(String),
    /// Something the person should know (waiting for a file, a file rotated or truncated).
    Notice(String),
    /// The source has ended (stdin at end of input); nothing follows.
    Complete,
}

/// Where a source delivers; implemented by the runtime (a channel into the thread running
/// the pipeline).
pub trait Outlet: Send + Sync + 'static {
    /// Delivers one event; false when nobody reads any more (the source may stop delivering
    /// to it).
    fn send(&self, event: SourceEvent) -> bool;
    /// Events sent and not yet taken. A source that can produce faster than it is read
    /// waits while this is above [`BACKLOG_LIMIT`], looking again every [`BACKLOG_POLL`].
    fn backlog(&self) -> usize;
}

/// The backlog above which a source waits before delivering more (events sent, not taken).
pub const BACKLOG_LIMIT: usize = 64 * 1024;

/// How often a source waiting for room looks at the backlog again.
pub const BACKLOG_POLL: Duration = Duration::from_millis(1);

/// Waits while `outlet` has more than [`BACKLOG_LIMIT`] events not taken.
pub(crate) async fn wait_for_room(outlet: &dyn Outlet) {
    while outlet.backlog() > BACKLOG_LIMIT {
        tokio::time::sleep(BACKLOG_POLL).await;
    }
}

/// A running source task; dropping it stops the task (tokio abort) and frees what it holds.
#[derive(Debug)]
pub struct SourceTask {
    handle: JoinHandle<()>,
}

impl SourceTask {
    pub(crate) fn spawn(
        rt: &Handle,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> SourceTask {
        SourceTask {
            handle: rt.spawn(task),
        }
    }

    /// Whether the task has ended (its outlet stopped reading, or its input ended).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

impl Drop for SourceTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// An [`Outlet`] over an unbounded crossbeam channel; its backlog is the channel's length.
#[derive(Debug)]
pub struct ChannelOutlet {
    tx: crossbeam_channel::Sender<SourceEvent>,
}

impl ChannelOutlet {
    /// An outlet and the receiver that takes its events.
    pub fn new() -> (Arc<ChannelOutlet>, crossbeam_channel::Receiver<SourceEvent>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Arc::new(ChannelOutlet { tx }), rx)
    }
}

impl Outlet for ChannelOutlet {
    fn send(&self, event: SourceEvent) -> bool {
        self.tx.send(event).is_ok()
    }

    fn backlog(&self) -> usize {
        self.tx.len()
    }
}

/// The subscribers of a shared source (tcp, stdin): each event goes to every current
/// subscriber, in the order it is sent. A subscriber whose outlet stops reading is dropped.
#[derive(Default)]
pub(crate) struct Fanout {
    inner: Mutex<FanoutInner>,
}

#[derive(Default)]
struct FanoutInner {
    next_id: u64,
    outlets: Vec<(u64, Arc<dyn Outlet>)>,
    complete: bool,
}

impl Fanout {
    fn lock(&self) -> MutexGuard<'_, FanoutInner> {
        // An outlet that panicked in `send` leaves the list itself consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a subscriber; after [`Fanout::complete`] it gets `Complete` at once instead.
    pub(crate) fn subscribe(&self, outlet: Arc<dyn Outlet>) -> u64 {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        if inner.complete {
            outlet.send(SourceEvent::Complete);
        } else {
            inner.outlets.push((id, outlet));
        }
        id
    }

    /// Removes a subscriber; an unknown id (already removed) is ignored.
    pub(crate) fn unsubscribe(&self, id: u64) {
        self.lock().outlets.retain(|(i, _)| *i != id);
    }

    /// Sends `event` to every subscriber (a clone to each but the last).
    pub(crate) fn send(&self, event: SourceEvent) {
        let mut inner = self.lock();
        let mut left = inner.outlets.len();
        let mut event = Some(event);
        inner.outlets.retain(|(_, outlet)| {
            left -= 1;
            let e = if left == 0 {
                event.take()
            } else {
                event.clone()
            };
            e.is_some_and(|e| outlet.send(e))
        });
    }

    /// Sends `Complete` to every subscriber and drops them; later subscribers get `Complete`
    /// at once.
    pub(crate) fn complete(&self) {
        let mut inner = self.lock();
        inner.complete = true;
        for (_, outlet) in inner.outlets.drain(..) {
            outlet.send(SourceEvent::Complete);
        }
    }

    /// Waits while any subscriber has more than [`BACKLOG_LIMIT`] events not taken.
    pub(crate) async fn wait_for_room(&self) {
        loop {
            let full = self
                .lock()
                .outlets
                .iter()
                .any(|(_, o)| o.backlog() > BACKLOG_LIMIT);
            if !full {
                return;
            }
            tokio::time::sleep(BACKLOG_POLL).await;
        }
    }
}

/// The longest line a line source takes, in bytes without its ending: a longer one is an
/// error (a connection that sends one is closed; a file's is dropped and reading goes on
/// after it).
pub const MAX_LINE: usize = 1 << 20;

/// Splits bytes into numbered lines: `\n` ends a line, a `\r` just before it is dropped.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    pending: Vec<u8>,
    /// Lines completed so far.
    number: u64,
    /// The line not yet ended is being dropped ([`LineSplitter::skip_line`]): its bytes are
    /// not kept, up to its end.
    skipping: bool,
}

/// One line: its number (from 1) and its bytes, without the ending.
pub(crate) type RawLine = (u64, Vec<u8>);

impl LineSplitter {
    /// Appends `chunk`, pushing every line it completes onto `out`.
    pub(crate) fn push(&mut self, chunk: &[u8], out: &mut Vec<RawLine>) {
        let mut rest = chunk;
        if self.skipping {
            let Some(i) = rest.iter().position(|&b| b == b'\n') else {
                return;
            };
            // The dropped line ends here: it keeps its number.
            self.skipping = false;
            self.number += 1;
            rest = &rest[i + 1..];
        }
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.pending);
            line.extend_from_slice(&rest[..i]);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.number += 1;
            out.push((self.number, line));
            rest = &rest[i + 1..];
        }
        self.pending.extend_from_slice(rest);
    }

    /// Bytes of the line not yet ended.
    #[cfg(test)]
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether the line not yet ended is longer than [`MAX_LINE`] already: one byte more
    /// than the limit is, unless it is a `\r` that a `\n` may follow.
    pub(crate) fn held_over_limit(&self) -> bool {
        let n = self.pending.len();
        n > MAX_LINE + 1 || (n == MAX_LINE + 1 && self.pending.last() != Some(&b'\r'))
    }

    /// Drops the line not yet ended, and what comes of it up to its end; returns its
    /// number. The lines after it keep their numbers.
    pub(crate) fn skip_line(&mut self) -> u64 {
        self.pending = Vec::new();
        self.skipping = true;
        self.number + 1
    }

    /// The line not yet ended, if any, as a line of its own (the input has ended).
    pub(crate) fn finish(&mut self) -> Option<RawLine> {
        if std::mem::take(&mut self.skipping) {
            // Dropped already: it ends with the input.
            self.number += 1;
            return None;
        }
        if self.pending.is_empty() {
            return None;
        }
        self.number += 1;
        Some((self.number, std::mem::take(&mut self.pending)))
    }

    /// Forgets everything: the next line is line 1 again.
    pub(crate) fn reset(&mut self) {
        self.pending.clear();
        self.number = 0;
        self.skipping = false;
    }
}

/// The test helpers of the sources: a runtime, and waiting for events with a timeout.
#[cfg(test)]
pub(crate) mod test_support {
    use super::SourceEvent;
    use crossbeam_channel::{Receiver, RecvTimeoutError};
    use std::time::Duration;

    /// How long a test waits for an event that should come.
    pub(crate) const WAIT: Duration = Duration::from_secs(10);

    /// How long a test watches for an event that should not come (several polls of a file).
    pub(crate) const QUIET: Duration = Duration::from_millis(300);

    pub(crate) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("cannot build a tokio runtime")
    }

    pub(crate) fn line(s: &str) -> SourceEvent {
        SourceEvent::Line(s.to_owned())
    }

    /// The next event, or a panic naming what was expected.
    pub(crate) fn next(rx: &Receiver<SourceEvent>, expected: &SourceEvent) -> SourceEvent {
        rx.recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("no event within {WAIT:?} ({e}); expected {expected:?}"))
    }

    /// The next events are `expected`, in order.
    pub(crate) fn expect(rx: &Receiver<SourceEvent>, expected: &[SourceEvent]) {
        for (i, want) in expected.iter().enumerate() {
            let got = next(rx, want);
            assert_eq!(&got, want, "event {i} of {expected:?}");
        }
    }

    /// No event comes within [`QUIET`].
    pub(crate) fn expect_quiet(rx: &Receiver<SourceEvent>) {
        match rx.recv_timeout(QUIET) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(e) => panic!("unexpected event {e:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the source dropped its outlet"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_cuts_lines_across_chunks() {
        /// Chunks pushed, lines completed, what is still pending.
        type Case<'a> = (&'a [&'a [u8]], &'a [&'a [u8]], &'a [u8]);
        let cases: &[Case] = &[
            (&[b"a\nb\n"], &[b"a", b"b"], b""),
            (&[b"pa", b"rt", b"ial\n"], &[b"partial"], b""),
            (&[b"crlf\r\n", b"x\r", b"\n"], &[b"crlf", b"x"], b""),
            (&[b"\n\n"], &[b"", b""], b""),
            (&[b"a\rb\n"], &[b"a\rb"], b""),
            (&[b"held"], &[], b"held"),
            (&[b"one\ntw", b"o"], &[b"one"], b"two"),
        ];
        for (chunks, lines, pending) in cases {
            let mut s = LineSplitter::default();
            let mut out = Vec::new();
            for c in *chunks {
                s.push(c, &mut out);
            }
            let want: Vec<RawLine> = lines
                .iter()
                .enumerate()
                .map(|(i, l)| (i as u64 + 1, l.to_vec()))
                .collect();
            assert_eq!(out, want, "{chunks:?}");
            assert_eq!(s.pending_len(), pending.len(), "{chunks:?}");
            let rest = s.finish();
            let want_rest =
                (!pending.is_empty()).then(|| (lines.len() as u64 + 1, pending.to_vec()));
            assert_eq!(rest, want_rest, "{chunks:?}");
        }
    }

    #[test]
    fn a_held_line_is_over_the_limit_from_its_first_byte_past_it() {
        // (bytes held, over the limit)
        let x = |n: usize| vec![b'x'; n];
        let cases: Vec<(Vec<u8>, bool)> = vec![
            (x(MAX_LINE), false),
            // The `\r` of a `\r\n` ending may come next: not yet.
            ([x(MAX_LINE), b"\r".to_vec()].concat(), false),
            (x(MAX_LINE + 1), true),
            ([x(MAX_LINE), b"\r\r".to_vec()].concat(), true),
        ];
        for (held, over) in cases {
            let mut s = LineSplitter::default();
            s.push(&held, &mut Vec::new());
            assert_eq!(s.held_over_limit(), over, "{} bytes", held.len());
        }
    }

    #[test]
    fn a_skipped_line_is_dropped_to_its_end_and_keeps_its_number() {
        /// Chunks pushed before the skip, after it; lines completed (number, bytes); what
        /// `finish` gives.
        type Case<'a> = (
            &'a [&'a [u8]],
            &'a [&'a [u8]],
            &'a [(u64, &'a [u8])],
            Option<u64>,
        );
        let cases: &[Case] = &[
            // Skipped while held; its end comes in a later chunk, with the next line.
            (
                &[b"a\nlong"],
                &[b"more", b"end\nb\n"],
                &[(1, b"a"), (3, b"b")],
                None,
            ),
            // Its end comes alone; the next line is held.
            (&[b"long"], &[b"\n", b"c"], &[], Some(2)),
            // The input ends inside the skipped line: nothing of it, its number used up.
            (&[b"x\nlong"], &[b"still"], &[(1, b"x")], None),
            // A `\r\n` ending of a skipped line.
            (&[b"long\r"], &[b"\r\nd\r\n"], &[(2, b"d")], None),
        ];
        for (before, after, lines, rest) in cases {
            let mut s = LineSplitter::default();
            let mut out = Vec::new();
            for c in *before {
                s.push(c, &mut out);
            }
            let completed = out.len() as u64;
            assert_eq!(s.skip_line(), completed + 1, "{before:?}");
            assert_eq!(s.pending_len(), 0);
            for c in *after {
                s.push(c, &mut out);
            }
            let want: Vec<RawLine> = lines.iter().map(|(n, l)| (*n, l.to_vec())).collect();
            assert_eq!(out, want, "{before:?} {after:?}");
            assert_eq!(s.finish().map(|(n, _)| n), *rest, "{before:?} {after:?}");
        }
    }

    #[test]
    fn fanout_sends_to_every_subscriber_and_completes_late_ones() {
        let fanout = Fanout::default();
        let (a, ra) = ChannelOutlet::new();
        let (b, rb) = ChannelOutlet::new();
        let ida = fanout.subscribe(a);
        fanout.subscribe(b);
        fanout.send(SourceEvent::Line("x".into()));
        fanout.unsubscribe(ida);
        fanout.send(SourceEvent::Line("y".into()));
        fanout.complete();
        let (c, rc) = ChannelOutlet::new();
        fanout.subscribe(c);
        let all = |rx: crossbeam_channel::Receiver<SourceEvent>| rx.try_iter().collect::<Vec<_>>();
        use test_support::line;
        assert_eq!(all(ra), [line("x")]);
        assert_eq!(all(rb), [line("x"), line("y"), SourceEvent::Complete]);
        assert_eq!(all(rc), [SourceEvent::Complete]);
    }

    #[test]
    fn fanout_drops_a_subscriber_that_stopped_reading() {
        let fanout = Fanout::default();
        let (a, ra) = ChannelOutlet::new();
        let (b, rb) = ChannelOutlet::new();
        fanout.subscribe(a);
        fanout.subscribe(b);
        drop(ra);
        fanout.send(SourceEvent::Line("x".into()));
        assert_eq!(fanout.lock().outlets.len(), 1);
        fanout.send(SourceEvent::Line("y".into()));
        assert_eq!(rb.try_iter().count(), 2);
    }
}
