//! Recording a session's source values (`--record FILE`) and feeding them to the current
//! code again (`--replay-from FILE`).
//!
//! **The file** is JSON lines. The first is a header:
//! `{"format":"hmr-record","version":2,"host":"0.1.0","plugin":"/path/to/plugin","start":<unix ms>}`.
//! Then one line per source value a pipeline's own sources produced (interval ticks, `range`
//! values, `of` indices, lines of `file_lines` / `tcp_lines` / `stdin_lines`) and per source
//! completion, in the order each pipeline took them:
//! `{"pipeline":"counter","port":0,"source":"interval_ms(500)","t":1500000000,"u64":3,"debug":"3"}`
//! where `t` is nanoseconds since the recording started, read from the runtime's clock (a
//! virtual clock records virtual time), and the value is one of `"u64"` (an interval's or a
//! `range`'s number), `"index"` (an `of` item: its index into the plugin's items), `"line"`
//! (a line's text) or `"complete":true`. `debug` is the value's Debug text where the host knows
//! it (an `of` item's through the plugin: [`describe_input`]; a `u64`'s is its number).
//!
//! **Runs** (version 2). Regular values make one line: a `u64` or `index` line with `"n":N`
//! and `"dt":DT` stands for the `N` values `u64 + k` (or indices `index + k`) at times
//! `t + k * DT`, `k` in `0..N`: an interval's ticks (`dt` its period, the ticks' deadlines being
//! exactly one period apart), or a `range`/`of` batch at one instant (`dt` 0):
//! `{"pipeline":"counter","port":0,"source":"interval_ms(500)","t":500000000,"u64":1,"n":8,"dt":500000000}`.
//! A `u64` run has no `debug` (each value's Debug text is its number); an `of` run has
//! `"debug":[...]`, each item's text in order (`null` for an item the plugin has none for; no
//! field if it has none at all). A run of one value is written as a plain value line. A
//! reader checks `n` >= 1, both `n` and `dt` present, and that neither the last value nor the
//! last time overflows a `u64`. A host that ends normally writes a last line `{"end":<t>}`.
//! Subject values are not recorded (their publishers produce them again), nor the sources of
//! inner subscriptions. This host reads versions 1 (no runs) and 2.
//!
//! **Off the emission path.** A pipeline thread appends a compact record to its own
//! [`Tape`] (no formatting; a `range` batch is one record, a line's `String` moves in). Its
//! last values are its open run (`Run`): a value on the same port, continuing it by the next
//! number at the next time step, extends it (without a lock from its second value on: one
//! store of its length, `TapeShared::open_n`); the writer writes what the open run holds when
//! it takes the tape, and the rest on a later line (`TapeOut::done`). A full chunk of
//! [`CHUNK`] records goes to the writer thread through a bounded channel (the thread
//! waits while the writer lags: no value is dropped), and the writer takes what each tape
//! holds every [`STEAL_EVERY`], so a quiet or busy pipeline's values reach the file within
//! that. The writer formats and writes whole lines only, at least every [`STEAL_EVERY`], so a
//! host that dies leaves a file readable up to its last whole line. [`Recorder::finish`] (the
//! host's end, and [`finish_all`] on SIGINT/SIGTERM) writes everything the tapes hold.
//!
//! **Replay** ([`read`], [`ReplayPlan`]): each pipeline of the code gets the recorded values
//! of the pipeline of the same name, source by source (same port and label, or else the port
//! with the same label), as a [`Script`] its own thread runs on its deadline heap under a
//! virtual clock: a value at its recorded time, ordered with the operators' timers as the
//! recorded run ordered them (an interval tick before the timers due at the same instant, a
//! batch after them).

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use plugin_api::abi::source_kind;

use crate::clock::Clock;
use crate::code::{PipelineCode, SourceSpec};
use crate::events::{HostEvent, Sink};

/// The header's `format`.
pub const FORMAT: &str = "hmr-record";

/// The format version this host writes, and the newest it reads. Version 2 added runs (a
/// value line with `n` and `dt`); a host of version 1 would read a run as its first value
/// only, so it is refused there as a newer version. Version 1 files (no runs) are read too.
pub const VERSION: u64 = 2;

/// Records a pipeline thread appends before it hands the chunk to the writer.
pub const CHUNK: usize = 4096;

/// Full chunks that may wait for the writer before a pipeline thread waits.
const QUEUED_CHUNKS: usize = 8;

/// How often the writer takes what the tapes hold and writes it out.
pub const STEAL_EVERY: Duration = Duration::from_millis(100);

/// Formatted bytes the writer keeps before it writes them (always whole lines).
const WRITE_AT: usize = 256 << 10;

/// How long the end of a recording waits for a chunk a pipeline thread is handing over.
const FINISH_GRACE: Duration = Duration::from_millis(100);

/// An `of` item's Debug text, written by the plugin (the items live there:
/// `PipelineDesc::describe`), on the writer's thread (formatting an item reads it only).
pub fn describe_input(code: &PipelineCode, port: u32, index: u64) -> Option<String> {
    // SAFETY: an `of` port's wire value is a `u64` index, and `index` lives for the call.
    unsafe { code.describe(port, (&raw const index).cast(), 200) }
}

/// `n` consecutive `u64` values `first..first + n` of a port (interval ticks, `range` values,
/// `of` indices), value `first + i` at time `t + i * dt`: an interval's ticks (`dt` its
/// period), a batch at one instant (`dt` 0), or one value (`n` 1, `dt` 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    port: u32,
    t: u64,
    first: u64,
    n: u64,
    dt: u64,
}

impl Run {
    /// Extends this run by the `k` values `first..first + k` of `port` at time `t`, if they
    /// continue it: the same port, the next values, and the next time of its step (after one
    /// value, the step is the time since it: an interval's period, or 0 for the same
    /// instant; `k` values at one instant need a step of 0). Returns whether it did. Nothing
    /// overflows: a run's last value and last time are values appended.
    #[inline]
    fn extend(&mut self, port: u32, t: u64, first: u64, k: u64) -> bool {
        if self.port != port || self.first.checked_add(self.n) != Some(first) {
            return false;
        }
        let step = if self.n == 1 {
            match t.checked_sub(self.t) {
                Some(d) => d,
                None => return false,
            }
        } else {
            self.dt
        };
        if (k > 1 && step != 0)
            || self.n.checked_mul(step).and_then(|d| self.t.checked_add(d)) != Some(t)
        {
            return false;
        }
        let Some(total) = self.n.checked_add(k) else {
            return false;
        };
        self.n = total;
        self.dt = step;
        true
    }
}

/// One recorded source event, as a tape holds it for the writer: no formatting, no
/// allocation.
#[derive(Debug)]
enum Rec {
    /// A run the pipeline thread has stopped extending: its tape's open run number `open`
    /// (the writer may have written its first values already: [`TapeOut::done`]).
    Run { run: Run, open: u64 },
    /// A line.
    Line { port: u32, t: u64, line: String },
    /// The source completed.
    Complete { port: u32, t: u64 },
}

/// Records of one tape, in the order it appended them (`seq`).
struct Chunk {
    tape: u64,
    seq: u64,
    recs: Vec<Rec>,
}

/// A tape's records not yet taken by the writer.
struct TapeBuf {
    /// The sequence number of the next chunk taken from this tape.
    seq: u64,
    recs: Vec<Rec>,
    /// The pipeline thread has ended: nothing more comes.
    closed: bool,
    /// The run the pipeline thread is extending (after every record in `recs`), numbered
    /// (from 1); its `n` is [`TapeShared::open_n`]: the thread grows it without this lock.
    open: Option<(u64, Run)>,
    /// The last open run's number.
    opened: u64,
}

/// What the writer knows of a tape.
struct TapeShared {
    id: u64,
    pipeline: String,
    sources: Vec<SourceSpec>,
    /// Formats an `of` item (none in the unit tests: no `debug` then).
    code: Option<Arc<PipelineCode>>,
    buf: Mutex<TapeBuf>,
    /// The open run's length. Only its pipeline thread stores it: without the lock while the
    /// run's step is known (from its second value on), under it otherwise; the writer reads
    /// it under the lock, so it reads a length of the open run it sees there.
    open_n: AtomicU64,
}

/// The writer's side of one tape: its chunks put back in order, and each port's line prefix.
struct TapeOut {
    tape: Arc<TapeShared>,
    next: u64,
    pending: BTreeMap<u64, Vec<Rec>>,
    prefixes: Vec<Vec<u8>>,
    /// (open run's number, values of it written): the writer writes what an open run holds
    /// when it takes the tape, and the rest later (the rest of the run's record, or of the
    /// open run it sees next time).
    done: (u64, u64),
}

/// The file and what is being written to it.
struct Out {
    file: File,
    buf: Vec<u8>,
    tapes: BTreeMap<u64, TapeOut>,
    /// The first write error (nothing more is written after one).
    failed: Option<String>,
    /// Reused for an `of` item's and a line's Debug text.
    scratch: String,
}

/// A recording in progress, shared by the runtime, the pipeline threads' tapes and the
/// writer thread.
pub struct Recording {
    path: PathBuf,
    /// Where the times are read, and the instant they count from.
    clock: Clock,
    start: Instant,
    chunks: (Sender<Chunk>, Receiver<Chunk>),
    /// Emptied chunk vectors, for the next full chunk.
    pool: (Sender<Vec<Rec>>, Receiver<Vec<Rec>>),
    tapes: Mutex<Vec<Arc<TapeShared>>>,
    next_tape: AtomicU64,
    out: Mutex<Out>,
    finished: AtomicBool,
    /// Nanoseconds pipeline threads waited for the writer (a full channel).
    waited_ns: AtomicU64,
    sink: Sink,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Recordings in progress, for [`finish_all`] (the signal path).
fn live() -> &'static Mutex<Vec<Weak<Recording>>> {
    static LIVE: Mutex<Vec<Weak<Recording>>> = Mutex::new(Vec::new());
    &LIVE
}

/// Writes out every recording in progress (the host ends on a signal).
pub fn finish_all() {
    let all: Vec<Arc<Recording>> = lock(live()).iter().filter_map(Weak::upgrade).collect();
    for r in all {
        if let Err(e) = r.finish() {
            eprintln!("error: {e:#}");
        }
    }
}

/// Owns a recording: [`Recorder::finish`] ends it (also when dropped).
#[derive(Debug)]
pub struct Recorder {
    recording: Arc<Recording>,
}

impl Recorder {
    /// Creates `path` (replacing it) and writes the header; times are read from `clock`
    /// from now on. `plugin` is the plugin crate's directory, as the header names it.
    pub fn create(path: &Path, plugin: &Path, clock: Clock, sink: Sink) -> anyhow::Result<Self> {
        let mut file = File::create(path)
            .with_context(|| format!("cannot create the recording {}", path.display()))?;
        let plugin = plugin.canonicalize().unwrap_or_else(|_| plugin.to_owned());
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // Written by hand: the fields in this order.
        let mut header = format!(
            "{{\"format\":\"{FORMAT}\",\"version\":{VERSION},\"host\":\"{}\",\"plugin\":",
            env!("CARGO_PKG_VERSION")
        )
        .into_bytes();
        push_json_str(&mut header, &plugin.to_string_lossy());
        header.extend_from_slice(b",\"start\":");
        push_u64(&mut header, unix_ms);
        header.extend_from_slice(b"}\n");
        file.write_all(&header)
            .with_context(|| format!("cannot write the recording {}", path.display()))?;
        let start = clock.now();
        let recording = Arc::new(Recording {
            path: path.to_owned(),
            clock,
            start,
            chunks: crossbeam_channel::bounded(QUEUED_CHUNKS),
            pool: crossbeam_channel::unbounded(),
            tapes: Mutex::new(Vec::new()),
            next_tape: AtomicU64::new(0),
            out: Mutex::new(Out {
                file,
                buf: Vec::with_capacity(WRITE_AT + 4096),
                tapes: BTreeMap::new(),
                failed: None,
                scratch: String::new(),
            }),
            finished: AtomicBool::new(false),
            waited_ns: AtomicU64::new(0),
            sink,
        });
        let weak = Arc::downgrade(&recording);
        std::thread::Builder::new()
            .name("hmr-record".to_owned())
            .spawn(move || writer(weak))
            .context("cannot start the recording's writer thread")?;
        let mut all = lock(live());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&recording));
        Ok(Recorder { recording })
    }

    /// The recording, for the runtime ([`crate::runtime::Runtime::set_record_mode`] with
    /// [`Mode::Record`]).
    pub fn recording(&self) -> Arc<Recording> {
        self.recording.clone()
    }

    /// Writes everything recorded so far and the end line, and ends the recording (values
    /// appended later are not recorded).
    pub fn finish(&self) -> anyhow::Result<()> {
        self.recording.finish()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.recording.finish();
    }
}

impl Recording {
    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long pipeline threads have waited for the writer so far (it lagged).
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }

    /// A tape for one run of a pipeline thread whose first code is `code` (its name and
    /// sources name the records; it formats an `of` item, see [`describe_input`]).
    pub fn tape(self: &Arc<Self>, code: Arc<PipelineCode>) -> Tape {
        self.tape_of(code.name.clone(), code.sources.clone(), Some(code))
    }

    /// A tape of the pipeline `pipeline` with `sources`, formatting `of` items with `code`.
    fn tape_of(
        self: &Arc<Self>,
        pipeline: String,
        sources: Vec<SourceSpec>,
        code: Option<Arc<PipelineCode>>,
    ) -> Tape {
        let shared = Arc::new(TapeShared {
            id: self.next_tape.fetch_add(1, Ordering::Relaxed),
            pipeline,
            sources,
            code,
            buf: Mutex::new(TapeBuf {
                seq: 0,
                recs: Vec::with_capacity(CHUNK),
                closed: false,
                open: None,
                opened: 0,
            }),
            open_n: AtomicU64::new(0),
        });
        lock(&self.tapes).push(shared.clone());
        Tape {
            shared,
            recording: self.clone(),
            open: Cell::new(None),
            hot: Hot::default(),
        }
    }

    /// Nanoseconds from the recording's start to `at`.
    #[inline]
    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Puts chunk `c` with its tape's others.
    fn accept(&self, out: &mut Out, c: Chunk) {
        let t = match out.tapes.entry(c.tape) {
            std::collections::btree_map::Entry::Occupied(t) => t.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let Some(tape) = lock(&self.tapes).iter().find(|t| t.id == c.tape).cloned() else {
                    let _ = self.pool.0.send(c.recs);
                    return;
                };
                v.insert(TapeOut::new(tape))
            }
        };
        t.pending.insert(c.seq, c.recs);
    }

    fn fresh_chunk(&self) -> Vec<Rec> {
        self.pool
            .1
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK))
    }

    /// Takes what the channel and the tapes hold into `out`, in each tape's order, and
    /// formats what is in order; at the end (`last`), everything it has, gaps or not.
    fn collect(&self, out: &mut Out, last: bool) {
        while let Ok(c) = self.chunks.1.try_recv() {
            self.accept(out, c);
        }
        let tapes: Vec<Arc<TapeShared>> = lock(&self.tapes).clone();
        // Per tape: its open run as it is now, after the chunks before `seq`.
        let mut opens = Vec::new();
        for tape in &tapes {
            out.tapes
                .entry(tape.id)
                .or_insert_with(|| TapeOut::new(tape.clone()));
            let mut b = lock(&tape.buf);
            let taken = (!b.recs.is_empty()).then(|| {
                let recs = std::mem::replace(&mut b.recs, self.fresh_chunk());
                b.seq += 1;
                (b.seq - 1, recs)
            });
            if let Some((number, mut run)) = b.open {
                run.n = tape.open_n.load(Ordering::Acquire);
                opens.push((tape.id, b.seq, number, run));
            }
            drop(b);
            if let Some((seq, recs)) = taken {
                self.accept(
                    out,
                    Chunk {
                        tape: tape.id,
                        seq,
                        recs,
                    },
                );
            }
        }
        out.write_ready(&self.pool.0, last);
        // What the open runs hold so far, once every record before them is written (at the
        // end, whatever is missing).
        let Out {
            buf, tapes: outs, ..
        } = out;
        for (id, seq, number, run) in opens {
            if let Some(t) = outs.get_mut(&id)
                && (last || t.next == seq)
            {
                format_run(buf, t, number, run);
            }
        }
        // Tapes whose thread ended and whose records are all written are done.
        let mut gone = Vec::new();
        for (id, t) in &out.tapes {
            let b = lock(&t.tape.buf);
            if b.closed && b.recs.is_empty() && t.pending.is_empty() && t.next == b.seq {
                gone.push(*id);
            }
        }
        if !gone.is_empty() {
            for id in &gone {
                out.tapes.remove(id);
            }
            lock(&self.tapes).retain(|t| !gone.contains(&t.id));
        }
    }

    /// Writes the formatted lines to the file.
    fn write_out(&self, out: &mut Out) {
        if out.buf.is_empty() {
            return;
        }
        if out.failed.is_none()
            && let Err(e) = out.file.write_all(&out.buf)
        {
            let message = format!("cannot write the recording {}: {e}", self.path.display());
            self.sink.event(HostEvent::Error {
                pipeline: String::new(),
                path: String::new(),
                message: message.clone(),
            });
            out.failed = Some(message);
        }
        out.buf.clear();
    }

    fn finish(&self) -> anyhow::Result<()> {
        // A chunk a thread is handing over (sent, or taken by the writer thread and not yet
        // put with the others) leaves a gap in its tape's order: wait for it, without
        // holding the lock the writer thread needs to put it, for FINISH_GRACE at most.
        let deadline = Instant::now() + FINISH_GRACE;
        let mut out = loop {
            let mut out = lock(&self.out);
            if self.finished.load(Ordering::Acquire) {
                return Ok(());
            }
            self.collect(&mut out, false);
            let gaps = out.tapes.values().any(|t| !t.pending.is_empty());
            if !gaps || Instant::now() >= deadline {
                break out;
            }
            drop(out);
            std::thread::park_timeout(Duration::from_millis(1));
        };
        self.finished.store(true, Ordering::Release);
        self.collect(&mut out, true);
        let end = self.ns(self.clock.now());
        out.buf.extend_from_slice(b"{\"end\":");
        push_u64(&mut out.buf, end);
        out.buf.extend_from_slice(b"}\n");
        self.write_out(&mut out);
        if let Some(e) = &out.failed {
            bail!("{e}");
        }
        out.file
            .flush()
            .with_context(|| format!("cannot write the recording {}", self.path.display()))
    }
}

/// The writer thread: takes full chunks as they come and what the tapes hold every
/// [`STEAL_EVERY`], formats and writes them; ends with the recording.
fn writer(recording: Weak<Recording>) {
    let mut last_steal = Instant::now();
    loop {
        let Some(r) = recording.upgrade() else {
            return;
        };
        let got = r.chunks.1.recv_timeout(STEAL_EVERY);
        // Under the lock `finish` holds while it looks for gaps: a chunk taken here is put
        // with the others before the recording ends.
        let mut out = lock(&r.out);
        if r.finished.load(Ordering::Acquire) {
            // Nothing more is written; senders are not left waiting.
            let idle = matches!(got, Err(RecvTimeoutError::Timeout));
            if let Ok(c) = got {
                let _ = r.pool.0.send(c.recs);
            }
            while let Ok(c) = r.chunks.1.try_recv() {
                let _ = r.pool.0.send(c.recs);
            }
            drop(out);
            if idle && Arc::strong_count(&r) == 1 {
                return;
            }
            continue;
        }
        match got {
            Ok(c) => {
                r.accept(&mut out, c);
                while let Ok(c) = r.chunks.1.try_recv() {
                    r.accept(&mut out, c);
                }
                out.write_ready(&r.pool.0, false);
                if out.buf.len() >= WRITE_AT {
                    r.write_out(&mut out);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if last_steal.elapsed() >= STEAL_EVERY {
            r.collect(&mut out, false);
            r.write_out(&mut out);
            last_steal = Instant::now();
        }
    }
}

impl TapeOut {
    fn new(tape: Arc<TapeShared>) -> TapeOut {
        let prefixes = tape
            .sources
            .iter()
            .enumerate()
            .map(|(port, s)| {
                let mut p = b"{\"pipeline\":".to_vec();
                push_json_str(&mut p, &tape.pipeline);
                p.extend_from_slice(b",\"port\":");
                push_u64(&mut p, port as u64);
                p.extend_from_slice(b",\"source\":");
                push_json_str(&mut p, &s.label);
                p.extend_from_slice(b",\"t\":");
                p
            })
            .collect();
        TapeOut {
            tape,
            next: 0,
            pending: BTreeMap::new(),
            prefixes,
            done: (0, 0),
        }
    }
}

impl Out {
    /// Formats each tape's chunks that are next in its order (every one at the end).
    fn write_ready(&mut self, pool: &Sender<Vec<Rec>>, all: bool) {
        let Out {
            buf,
            tapes,
            scratch,
            ..
        } = self;
        for t in tapes.values_mut() {
            loop {
                let key = match t.pending.first_key_value() {
                    Some((k, _)) if *k == t.next || all => *k,
                    _ => break,
                };
                let mut recs = t.pending.remove(&key).expect("just seen");
                t.next = key + 1;
                for r in recs.drain(..) {
                    format_rec(buf, scratch, t, r);
                }
                let _ = pool.send(recs);
            }
        }
    }
}

/// Appends the JSON line of `r` to `buf`.
fn format_rec(buf: &mut Vec<u8>, scratch: &mut String, t: &mut TapeOut, r: Rec) {
    let (port, at, line) = match r {
        Rec::Run { open, run } => return format_run(buf, t, open, run),
        Rec::Line { port, t, line } => (port, t, Some(line)),
        Rec::Complete { port, t } => (port, t, None),
    };
    let Some(prefix) = t.prefixes.get(port as usize) else {
        return;
    };
    buf.extend_from_slice(prefix);
    push_u64(buf, at);
    match line {
        Some(line) => {
            buf.extend_from_slice(b",\"line\":");
            push_json_str(buf, &line);
            buf.extend_from_slice(b",\"debug\":");
            scratch.clear();
            use std::fmt::Write as _;
            let _ = write!(scratch, "{line:?}");
            push_json_str(buf, scratch);
            buf.extend_from_slice(b"}\n");
        }
        None => buf.extend_from_slice(b",\"complete\":true}\n"),
    }
}

/// Appends the line of the values of `run` (the open run number `number` of `t`'s tape) not
/// written yet ([`TapeOut::done`]): a run of one value as a value line, a longer run as one
/// line with its length `n` and time step `dt`.
fn format_run(buf: &mut Vec<u8>, t: &mut TapeOut, number: u64, run: Run) {
    let done = if t.done.0 == number { t.done.1 } else { 0 };
    t.done = (number, run.n.max(done));
    if run.n <= done {
        return;
    }
    // No overflow: the first value and time not written are those of a value appended.
    let (first, at, n, dt) = (
        run.first + done,
        run.t + done * run.dt,
        run.n - done,
        run.dt,
    );
    let port = run.port;
    let Some(prefix) = t.prefixes.get(port as usize) else {
        return;
    };
    let of = t.tape.sources[port as usize].kind == source_kind::OF;
    buf.extend_from_slice(prefix);
    push_u64(buf, at);
    if of {
        buf.extend_from_slice(b",\"index\":");
        push_u64(buf, first);
        if n > 1 {
            buf.extend_from_slice(b",\"n\":");
            push_u64(buf, n);
            buf.extend_from_slice(b",\"dt\":");
            push_u64(buf, dt);
            // Each item's Debug text (`null` where the plugin has none); left out when it
            // has none for any.
            let mark = buf.len();
            buf.extend_from_slice(b",\"debug\":[");
            let mut any = false;
            for (i, v) in (first..first.saturating_add(n)).enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                match t
                    .tape
                    .code
                    .as_ref()
                    .and_then(|c| describe_input(c, port, v))
                {
                    Some(d) => {
                        push_json_str(buf, &d);
                        any = true;
                    }
                    None => buf.extend_from_slice(b"null"),
                }
            }
            if any {
                buf.push(b']');
            } else {
                buf.truncate(mark);
            }
        } else if let Some(d) = t
            .tape
            .code
            .as_ref()
            .and_then(|c| describe_input(c, port, first))
        {
            buf.extend_from_slice(b",\"debug\":");
            push_json_str(buf, &d);
        }
    } else {
        // A `u64`'s Debug text is its digits: a run's are not written again.
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(first).as_bytes();
        buf.extend_from_slice(b",\"u64\":");
        buf.extend_from_slice(digits);
        if n > 1 {
            buf.extend_from_slice(b",\"n\":");
            push_u64(buf, n);
            buf.extend_from_slice(b",\"dt\":");
            push_u64(buf, dt);
        } else {
            buf.extend_from_slice(b",\"debug\":\"");
            buf.extend_from_slice(digits);
            buf.push(b'"');
        }
    }
    buf.extend_from_slice(b"}\n");
}

/// Appends `v` in decimal.
#[inline]
fn push_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Appends `s` as a JSON string.
fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut from = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[from..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            buf.extend_from_slice(b"\\u00");
            buf.push(HEX[(b >> 4) as usize]);
            buf.push(HEX[(b & 15) as usize]);
        } else {
            buf.extend_from_slice(esc);
        }
        from = i + 1;
    }
    buf.extend_from_slice(&bytes[from..]);
    buf.push(b'"');
}

/// A pipeline thread's side of a recording. A value continuing the open run (an interval's
/// next tick, a batch at the same instant) costs a few compares and one store, without a
/// lock; anything else takes a lock nobody else holds but the writer every [`STEAL_EVERY`]
/// and pushes a record into a reused vector.
pub struct Tape {
    shared: Arc<TapeShared>,
    recording: Arc<Recording>,
    /// The open run as this thread knows it, but for the fields in `hot` (`n` too:
    /// [`TapeShared::open_n`] is its copy for the writer).
    open: Cell<Option<Open>>,
    /// The fields of the open run a value continuing it reads and writes, each in its own
    /// `Cell`: the path without the lock loads and stores a few words, not the whole run.
    hot: Hot,
}

/// The open run's fields that change with each value ([`Tape::values`]' path without the
/// lock); [`Tape::open_now`] puts them back together with the rest.
#[derive(Debug, Default)]
struct Hot {
    /// [`Open::next`]: none when no run is open, so nothing continues one.
    next: Cell<Option<Instant>>,
    /// The open run's port.
    port: Cell<u32>,
    /// The value that continues it (`first + n`).
    end: Cell<u64>,
    /// [`Run::n`].
    n: Cell<u64>,
    /// [`Open::room`].
    room: Cell<u64>,
    /// [`Open::step`].
    step: Cell<Duration>,
}

/// The open run as its pipeline thread knows it.
#[derive(Clone, Copy, Debug)]
struct Open {
    run: Run,
    /// When its next value is due (its last value's instant plus its step), for
    /// [`Tape::values`]' path without the lock: none while its step is not known yet (one
    /// value), or when its times are not exact nanoseconds since the start.
    next: Option<Instant>,
    /// Its step.
    step: Duration,
    /// Values it may still grow by before its last value or its last time would pass a `u64`.
    room: u64,
}

impl Open {
    /// The open run `run` whose last value is due at `at`, on `recording`.
    fn new(run: Run, at: Instant, recording: &Recording) -> Open {
        let step = Duration::from_nanos(run.dt);
        let by_value = u64::MAX - run.first;
        let by_time = (u64::MAX - run.t).checked_div(run.dt).unwrap_or(u64::MAX);
        Open {
            run,
            next: (run.n >= 2 && at >= recording.start)
                .then(|| at.checked_add(step))
                .flatten(),
            step,
            room: by_value.min(by_time) - (run.n - 1),
        }
    }
}

impl std::fmt::Debug for Tape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tape")
            .field("pipeline", &self.shared.pipeline)
            .finish_non_exhaustive()
    }
}

impl Tape {
    /// One `u64` value of `port` (an interval's tick) due at `at`. It extends the open run
    /// when it continues it (see `Run::extend`).
    #[inline]
    pub fn value(&self, port: u32, at: Instant, v: u64) {
        self.values(port, at, v, 1);
    }

    /// An interval's tick: the value `v` of `port` due at `at`, whose next tick is due at
    /// `next` (`at + period`, which the caller has computed for its own timer). A tick
    /// continuing the open run at the run's step takes the caller's `next` instead of
    /// computing it again: one `Instant` addition less per value. Otherwise as
    /// [`Tape::value`].
    #[inline]
    pub fn tick(&self, port: u32, at: Instant, period: Duration, next: Instant, v: u64) {
        let h = &self.hot;
        if h.next.get() == Some(at)
            && h.port.get() == port
            && h.end.get() == v
            && h.step.get() == period
            && !period.is_zero()
            && h.room.get() >= 1
        {
            self.grow_open(1);
            h.next.set(Some(next));
            return;
        }
        self.values(port, at, v, 1);
    }

    /// The values `first..first + n` of `port` (a `range` batch, `of` indices) at `at`. A
    /// batch continuing the open run at the same instant extends it.
    #[inline]
    pub fn run(&self, port: u32, at: Instant, first: u64, n: u64) {
        if n > 0 {
            self.values(port, at, first, n);
        }
    }

    /// A line of `port` at `at`.
    pub fn line(&self, port: u32, at: Instant, line: String) {
        let t = self.recording.ns(at);
        self.append(Rec::Line { port, t, line });
    }

    /// `port`'s source completed at `at`.
    pub fn complete(&self, port: u32, at: Instant) {
        let t = self.recording.ns(at);
        self.append(Rec::Complete { port, t });
    }

    /// The recording's clock's time now.
    pub fn now(&self) -> Instant {
        self.recording.clock.now()
    }

    #[inline]
    fn values(&self, port: u32, at: Instant, first: u64, k: u64) {
        // The values continue the open run, whose step is known (and seen by the writer): only
        // its length grows. (`Run::extend`'s rule, on instants: `next` is exact.)
        let h = &self.hot;
        if h.next.get() == Some(at) && h.port.get() == port && h.end.get() == first {
            let (step, room) = (h.step.get(), h.room.get());
            if k <= room && (k == 1 || step.is_zero()) {
                self.grow_open(k);
                if !step.is_zero() {
                    h.next.set(at.checked_add(step));
                }
                return;
            }
        }
        self.values_locked(port, at, first, k);
    }

    /// Grows the open run by `k` values (which continue it, within its room), without the
    /// lock: its length published to the writer with one `Release` store. The caller sets
    /// when its next value is due.
    #[inline(always)]
    fn grow_open(&self, k: u64) {
        let h = &self.hot;
        let n = h.n.get() + k;
        h.n.set(n);
        h.end.set(h.end.get().wrapping_add(k));
        h.room.set(h.room.get() - k);
        self.shared.open_n.store(n, Ordering::Release);
    }

    /// The open run, with the fields the path without the lock keeps in [`Hot`].
    fn open_now(&self) -> Option<Open> {
        let mut o = self.open.get()?;
        let h = &self.hot;
        o.run.n = h.n.get();
        o.next = h.next.get();
        o.room = h.room.get();
        Some(o)
    }

    /// Sets the open run (and its fields in [`Hot`]).
    fn set_open(&self, o: Option<Open>) {
        let h = &self.hot;
        match &o {
            Some(o) => {
                h.next.set(o.next);
                h.port.set(o.run.port);
                h.end.set(o.run.first.wrapping_add(o.run.n));
                h.n.set(o.run.n);
                h.room.set(o.room);
                h.step.set(o.step);
            }
            None => h.next.set(None),
        }
        self.open.set(o);
    }

    /// [`Tape::values`] when the open run's step is set or a run starts: under the lock.
    /// (An open run growing after the recording ended is not written.)
    #[inline(never)]
    fn values_locked(&self, port: u32, at: Instant, first: u64, k: u64) {
        if self.recording.finished.load(Ordering::Relaxed) {
            return;
        }
        let t = self.recording.ns(at);
        let full = {
            let mut b = lock(&self.shared.buf);
            if let Some(o) = self.open_now() {
                let mut run = o.run;
                if run.extend(port, t, first, k) {
                    // Its second value: the step, seen with the length by the writer.
                    if let Some((_, o)) = &mut b.open {
                        o.dt = run.dt;
                    }
                    self.set_open(Some(Open::new(run, at, &self.recording)));
                    self.shared.open_n.store(run.n, Ordering::Release);
                    return;
                }
            }
            self.close_open(&mut b);
            let run = Run {
                port,
                t,
                first,
                n: k,
                dt: 0,
            };
            b.opened += 1;
            b.open = Some((b.opened, run));
            self.shared.open_n.store(k, Ordering::Release);
            self.set_open(Some(Open::new(run, at, &self.recording)));
            self.full_chunk(&mut b)
        };
        if let Some(c) = full {
            self.send(c);
        }
    }

    /// Ends the open run: a record after the others.
    fn close_open(&self, b: &mut TapeBuf) {
        if let Some((number, _)) = b.open.take()
            && let Some(o) = self.open_now()
        {
            b.recs.push(Rec::Run {
                run: o.run,
                open: number,
            });
        }
        self.set_open(None);
    }

    fn append(&self, r: Rec) {
        if self.recording.finished.load(Ordering::Relaxed) {
            return;
        }
        let full = {
            let mut b = lock(&self.shared.buf);
            self.close_open(&mut b);
            b.recs.push(r);
            self.full_chunk(&mut b)
        };
        if let Some(c) = full {
            self.send(c);
        }
    }

    /// A full chunk, taken from the tape, for the writer.
    fn full_chunk(&self, b: &mut TapeBuf) -> Option<Chunk> {
        if b.recs.len() < CHUNK {
            return None;
        }
        let recs = std::mem::replace(&mut b.recs, self.recording.fresh_chunk());
        b.seq += 1;
        Some(Chunk {
            tape: self.shared.id,
            seq: b.seq - 1,
            recs,
        })
    }

    /// Hands `c` to the writer (outside the lock: the writer takes from this tape under it),
    /// waiting while the writer lags.
    fn send(&self, c: Chunk) {
        match self.recording.chunks.0.try_send(c) {
            Ok(()) => {}
            Err(TrySendError::Full(c)) => {
                let waiting = Instant::now();
                let _ = self.recording.chunks.0.send(c);
                self.recording
                    .waited_ns
                    .fetch_add(waiting.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Drop for Tape {
    fn drop(&mut self) {
        // What is left is taken by the writer within `STEAL_EVERY`, or by `finish`.
        let mut b = lock(&self.shared.buf);
        self.close_open(&mut b);
        b.closed = true;
    }
}

/// The header of a recording.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Header {
    /// [`FORMAT`].
    pub format: String,
    /// The format version.
    pub version: u64,
    /// The version of the host that wrote it.
    #[serde(default)]
    pub host: String,
    /// The plugin crate's directory.
    #[serde(default)]
    pub plugin: String,
    /// When the recording started, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub start: u64,
}

/// A recorded value, as the file says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// An interval's or a `range`'s number.
    U64(u64),
    /// An `of` item's index.
    Index(u64),
    /// A line.
    Line(String),
    /// The source completed.
    Complete,
}

/// One source of a recorded pipeline: what its values were recorded under.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stream {
    /// The pipeline's name.
    pub pipeline: String,
    /// The source's port.
    pub port: u32,
    /// The source's label (`interval_ms(500)`).
    pub source: String,
}

/// One recorded value: its source ([`Recorded::streams`]' index), time and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Index into [`Recorded::streams`].
    pub stream: usize,
    /// Nanoseconds since the recording started.
    pub t: u64,
    /// The value.
    pub value: Value,
}

/// A recording read from its file.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The file.
    pub path: PathBuf,
    /// Its header.
    pub header: Header,
    /// The sources values were recorded from.
    pub streams: Vec<Stream>,
    /// The values, in the file's order.
    pub entries: Vec<Entry>,
    /// The end line's time, if the recording ended normally.
    pub end: Option<u64>,
    /// What is odd about the file but does not stop a replay (a last line cut short).
    pub warnings: Vec<String>,
}

/// A record line; every field optional, checked by [`read`].
#[derive(serde::Deserialize)]
struct RawLine<'a> {
    #[serde(borrow)]
    pipeline: Option<Cow<'a, str>>,
    port: Option<u32>,
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    t: Option<u64>,
    u64: Option<u64>,
    index: Option<u64>,
    line: Option<String>,
    complete: Option<bool>,
    end: Option<u64>,
    n: Option<u64>,
    dt: Option<u64>,
}

/// Reads the recording at `path`. A file that is not a recording, or a line that is not a
/// record, is an error naming the file and the line; so is a newer format version. A last
/// line cut short (a host that died while writing it) is left out with a warning.
pub fn read(path: &Path) -> anyhow::Result<Recorded> {
    let file = File::open(path)
        .with_context(|| format!("cannot open the recording {}", path.display()))?;
    let name = path.display();
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    let mut n = 0usize;
    let mut header: Option<Header> = None;
    let mut streams: Vec<Stream> = Vec::new();
    let mut index: BTreeMap<Stream, usize> = BTreeMap::new();
    let mut entries = Vec::new();
    let mut end = None;
    let mut warnings = Vec::new();
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .with_context(|| format!("cannot read the recording {name}"))?;
        if read == 0 {
            break;
        }
        n += 1;
        let whole = line.ends_with('\n');
        let text = line.trim_end_matches(['\n', '\r']);
        let Some(h) = &header else {
            let parsed: Option<Header> = serde_json::from_str(text).ok();
            match parsed {
                Some(h) if h.format == FORMAT => {
                    if h.version > VERSION {
                        bail!(
                            "{name}:{n}: recording format version {} is newer than this host \
                             reads (version {VERSION}); replay it with a newer host",
                            h.version
                        );
                    }
                    if h.version == 0 {
                        bail!("{name}:{n}: not a recording: format version 0 does not exist");
                    }
                    header = Some(h);
                    continue;
                }
                _ => {
                    bail!("{name}:{n}: not a recording: the first line is not an `{FORMAT}` header")
                }
            }
        };
        let _ = h;
        if text.trim().is_empty() {
            continue;
        }
        let entry = match parse_record(text) {
            Ok(e) => e,
            Err(why) if !whole => {
                // Nothing follows a line without its newline: the writer was cut short.
                warnings.push(format!(
                    "{name}:{n}: the last line is cut short ({why}); it is left out"
                ));
                break;
            }
            Err(why) => bail!("{name}:{n}: not a record: {why}"),
        };
        match entry {
            Parsed::End(t) => end = Some(t),
            Parsed::Value(stream, t, value) => {
                let i = *index.entry(stream.clone()).or_insert_with(|| {
                    streams.push(stream);
                    streams.len() - 1
                });
                entries.push(Entry {
                    stream: i,
                    t,
                    value,
                });
            }
            Parsed::Run {
                stream,
                t,
                first,
                index: of,
                n: count,
                dt,
            } => {
                let i = *index.entry(stream.clone()).or_insert_with(|| {
                    streams.push(stream);
                    streams.len() - 1
                });
                let fits = usize::try_from(count)
                    .ok()
                    .filter(|&c| entries.try_reserve(c).is_ok());
                if fits.is_none() {
                    bail!("{name}:{n}: a run of {count} values does not fit in memory");
                }
                // Checked by `parse_record`: the last value and time do not overflow.
                entries.extend((0..count).map(|k| Entry {
                    stream: i,
                    t: t + k * dt,
                    value: if of {
                        Value::Index(first + k)
                    } else {
                        Value::U64(first + k)
                    },
                }));
            }
        }
    }
    let Some(header) = header else {
        bail!("{name}:1: not a recording: the file is empty");
    };
    Ok(Recorded {
        path: path.to_owned(),
        header,
        streams,
        entries,
        end,
        warnings,
    })
}

enum Parsed {
    End(u64),
    Value(Stream, u64, Value),
    /// `n` values `first + k` (indices of an `of` if `index`) at times `t + k * dt`.
    Run {
        stream: Stream,
        t: u64,
        first: u64,
        index: bool,
        n: u64,
        dt: u64,
    },
}

/// One record line, or why it is not one.
fn parse_record(text: &str) -> Result<Parsed, String> {
    let raw: RawLine = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if let Some(t) = raw.end {
        return Ok(Parsed::End(t));
    }
    let field = |name: &str| format!("it has no `{name}`");
    let pipeline = raw.pipeline.ok_or_else(|| field("pipeline"))?;
    let port = raw.port.ok_or_else(|| field("port"))?;
    let source = raw.source.ok_or_else(|| field("source"))?;
    let t = raw.t.ok_or_else(|| field("t"))?;
    let mut values = Vec::new();
    if let Some(v) = raw.u64 {
        values.push(Value::U64(v));
    }
    if let Some(i) = raw.index {
        values.push(Value::Index(i));
    }
    if let Some(l) = raw.line {
        values.push(Value::Line(l));
    }
    if raw.complete == Some(true) {
        values.push(Value::Complete);
    }
    if values.len() != 1 {
        return Err("it needs exactly one of `u64`, `index`, `line` or `complete`".to_owned());
    }
    let value = values.pop().expect("one");
    let stream = Stream {
        pipeline: pipeline.into_owned(),
        port,
        source: source.into_owned(),
    };
    let (n, dt) = match (raw.n, raw.dt) {
        (None, None) => return Ok(Parsed::Value(stream, t, value)),
        (Some(_), None) => return Err("a run (`n`) needs its time step `dt`".to_owned()),
        (None, Some(_)) => return Err("a time step `dt` needs a run length `n`".to_owned()),
        (Some(n), Some(dt)) => (n, dt),
    };
    let (first, index) = match value {
        Value::U64(v) => (v, false),
        Value::Index(i) => (i, true),
        _ => return Err("a run (`n`) is of `u64` or `index` values".to_owned()),
    };
    if n == 0 {
        return Err("a run of 0 values (`n` is at least 1)".to_owned());
    }
    if first.checked_add(n - 1).is_none() {
        return Err(format!(
            "the run's last value overflows: {first} + {} is past {}",
            n - 1,
            u64::MAX
        ));
    }
    if (n - 1)
        .checked_mul(dt)
        .and_then(|d| t.checked_add(d))
        .is_none()
    {
        return Err(format!(
            "the run's last time overflows: {t} + {} * {dt} is past {}",
            n - 1,
            u64::MAX
        ));
    }
    Ok(Parsed::Run {
        stream,
        t,
        first,
        index,
        n,
        dt,
    })
}

/// What a pipeline thread runs instead of its own sources in a replay.
#[derive(Debug, Default)]
pub struct Script {
    items: VecDeque<Item>,
}

/// One thing a replaying pipeline thread does at its time.
#[derive(Debug)]
pub struct Item {
    /// When: on the replay's (virtual) clock.
    pub at: Instant,
    /// The port of the current code.
    pub port: u32,
    /// What.
    pub what: What,
}

/// What a replayed item delivers.
#[derive(Debug)]
pub enum What {
    /// An interval's tick (ordered before the operators' timers due at the same instant).
    Tick(u64),
    /// A batch of values (`range`, `of` indices), taken as the recorded batch was.
    Values(Vec<u64>),
    /// A line.
    Line(String),
    /// The source completed.
    Complete,
}

impl Item {
    /// Whether it runs before the operators' timers due at the same instant (an interval's
    /// tick, as a live interval does); a batch, a line and a completion run after them.
    pub fn before_timers(&self) -> bool {
        matches!(self.what, What::Tick(_))
    }
}

impl Script {
    /// The next item's time and order (see [`Item::before_timers`]), if any.
    pub fn next_due(&self) -> Option<(Instant, bool, u32)> {
        self.items
            .front()
            .map(|i| (i.at, i.before_timers(), i.port))
    }

    /// Takes the next item.
    pub fn take(&mut self) -> Option<Item> {
        self.items.pop_front()
    }

    /// Items left.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is left.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// A replay's recorded values, handed out to the pipelines by name as they start.
#[derive(Debug)]
pub struct ReplayPlan {
    base: Instant,
    streams: Vec<Stream>,
    /// Per pipeline name, its entries (stream, t, value) in the file's order.
    by_pipeline: Mutex<BTreeMap<String, Vec<Entry>>>,
}

impl ReplayPlan {
    /// The plan for `recorded`, whose time 0 is `base` on the replay's clock.
    pub fn new(recorded: &Recorded, base: Instant) -> ReplayPlan {
        let mut by_pipeline: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for e in &recorded.entries {
            let p = &recorded.streams[e.stream].pipeline;
            by_pipeline.entry(p.clone()).or_default().push(e.clone());
        }
        ReplayPlan {
            base,
            streams: recorded.streams.clone(),
            by_pipeline: Mutex::new(by_pipeline),
        }
    }

    /// The script of the pipeline `name` whose sources are `sources`: its recorded values
    /// fed to the port with the recorded port and label, or else to the first other port
    /// with that label. Notices go to `sink`: a pipeline with sources of its own and no
    /// recorded values stays silent; a recorded source the code no longer has is not fed.
    pub fn script(&self, name: &str, sources: &[SourceSpec], sink: &Sink) -> Script {
        let entries = lock(&self.by_pipeline).remove(name).unwrap_or_default();
        let own = |s: &SourceSpec| s.kind != source_kind::SUBJECT;
        let notice = |message: String| {
            sink.event(HostEvent::Notice {
                pipeline: name.to_owned(),
                message,
            })
        };
        if entries.is_empty() {
            if sources.iter().any(own) {
                notice("no recorded values for this pipeline: its sources stay silent".to_owned());
            }
            return Script::default();
        }
        // Recorded stream -> port of the code.
        let mut ports: BTreeMap<usize, Option<u32>> = BTreeMap::new();
        let mut claimed = vec![false; sources.len()];
        for e in &entries {
            if ports.contains_key(&e.stream) {
                continue;
            }
            let s = &self.streams[e.stream];
            let same = sources
                .get(s.port as usize)
                .filter(|c| own(c) && c.label == s.source && !claimed[s.port as usize])
                .map(|_| s.port);
            let port = same.or_else(|| {
                sources
                    .iter()
                    .enumerate()
                    .position(|(i, c)| own(c) && c.label == s.source && !claimed[i])
                    .map(|i| i as u32)
            });
            if let Some(p) = port {
                claimed[p as usize] = true;
            } else {
                let count = entries.iter().filter(|x| x.stream == e.stream).count();
                notice(format!(
                    "the recorded source {} (port {}) is not in the code: its {count} recorded \
                     values are not replayed",
                    s.source, s.port
                ));
            }
            ports.insert(e.stream, port);
        }
        let mut items: VecDeque<Item> = VecDeque::new();
        for e in entries {
            let Some(Some(port)) = ports.get(&e.stream).copied() else {
                continue;
            };
            let at = self.base + Duration::from_nanos(e.t);
            let interval = sources[port as usize].kind == source_kind::INTERVAL;
            match e.value {
                Value::U64(v) | Value::Index(v) if interval => items.push_back(Item {
                    at,
                    port,
                    what: What::Tick(v),
                }),
                Value::U64(v) | Value::Index(v) => {
                    // Values of one batch share their port and time.
                    if let Some(Item {
                        at: last_at,
                        port: last_port,
                        what: What::Values(vs),
                    }) = items.back_mut()
                        && *last_at == at
                        && *last_port == port
                        && vs.len() < crate::runtime::BATCH
                    {
                        vs.push(v);
                    } else {
                        items.push_back(Item {
                            at,
                            port,
                            what: What::Values(vec![v]),
                        });
                    }
                }
                Value::Line(l) => items.push_back(Item {
                    at,
                    port,
                    what: What::Line(l),
                }),
                Value::Complete => items.push_back(Item {
                    at,
                    port,
                    what: What::Complete,
                }),
            }
        }
        let unlisted: Vec<&str> = sources
            .iter()
            .enumerate()
            .filter(|(i, s)| own(s) && !claimed[*i])
            .map(|(_, s)| s.label.as_str())
            .collect();
        if !unlisted.is_empty() {
            notice(format!(
                "no recorded values for {}: silent",
                unlisted.join(", ")
            ));
        }
        Script { items }
    }

    /// The recorded pipelines no pipeline of the code took ([`ReplayPlan::script`]).
    pub fn untaken(&self) -> Vec<String> {
        lock(&self.by_pipeline).keys().cloned().collect()
    }
}

/// Where a runtime's pipelines take their source values from.
#[derive(Clone, Debug, Default)]
pub enum Mode {
    /// Their own sources.
    #[default]
    Live,
    /// Their own sources, recorded.
    Record(Arc<Recording>),
    /// A recording's values instead of their own sources (`--replay-from`).
    Replay(Arc<ReplayPlan>),
}

/// What one pipeline thread does with source values.
#[derive(Debug, Default)]
pub enum Hook {
    /// Nothing.
    #[default]
    Off,
    /// Records what its own sources produce.
    Record(Tape),
    /// Runs this instead of its own sources.
    Replay(Script),
}

impl Mode {
    /// The hook of a pipeline thread starting with `code` (notices of a replay to `sink`).
    pub fn hook(&self, code: &Arc<PipelineCode>, sink: &Sink) -> Hook {
        match self {
            Mode::Live => Hook::Off,
            Mode::Record(r) => Hook::Record(r.tape(code.clone())),
            Mode::Replay(p) => Hook::Replay(p.script(&code.name, &code.sources, sink)),
        }
    }

    /// Whether the pipelines' own host sources (files, sockets, stdin) are opened.
    pub fn opens_sources(&self) -> bool {
        !matches!(self, Mode::Replay(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends `(port, t, first, k)` (the values `first..first + k` of `port` at `t`) as a tape
    /// does (extending the open run, or starting one); returns the runs as
    /// `(port, t, first, n, dt)`.
    fn taped(appends: &[(u32, u64, u64, u64)]) -> Vec<(u32, u64, u64, u64, u64)> {
        let mut runs: Vec<Run> = Vec::new();
        for &(port, t, first, n) in appends {
            if let Some(last) = runs.last_mut()
                && last.extend(port, t, first, n)
            {
                continue;
            }
            runs.push(Run {
                port,
                t,
                first,
                n,
                dt: 0,
            });
        }
        runs.into_iter()
            .map(|r| (r.port, r.t, r.first, r.n, r.dt))
            .collect()
    }

    #[test]
    fn regular_values_extend_the_last_record_into_a_run() {
        const M: u64 = u64::MAX;
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, &[(u32, u64, u64, u64)], &[(u32, u64, u64, u64, u64)])] = &[
            (
                "an interval's ticks",
                &[
                    (0, 500, 1, 1),
                    (0, 1000, 2, 1),
                    (0, 1500, 3, 1),
                    (0, 2000, 4, 1),
                ],
                &[(0, 500, 1, 4, 500)],
            ),
            (
                "a late deadline",
                &[
                    (0, 500, 1, 1),
                    (0, 1000, 2, 1),
                    (0, 1600, 3, 1),
                    (0, 2200, 4, 1),
                ],
                &[(0, 500, 1, 2, 500), (0, 1600, 3, 2, 600)],
            ),
            (
                "a value skipped",
                &[(0, 500, 1, 1), (0, 1000, 2, 1), (0, 1500, 4, 1)],
                &[(0, 500, 1, 2, 500), (0, 1500, 4, 1, 0)],
            ),
            (
                "another port between",
                &[(0, 500, 1, 1), (1, 700, 2, 1), (0, 1000, 2, 1)],
                &[(0, 500, 1, 1, 0), (1, 700, 2, 1, 0), (0, 1000, 2, 1, 0)],
            ),
            (
                "ticks at one instant",
                &[(0, 5, 0, 1), (0, 5, 1, 1), (0, 5, 2, 1), (0, 6, 3, 1)],
                &[(0, 5, 0, 3, 0), (0, 6, 3, 1, 0)],
            ),
            (
                "time going back",
                &[(0, 5, 0, 1), (0, 4, 1, 1)],
                &[(0, 5, 0, 1, 0), (0, 4, 1, 1, 0)],
            ),
            (
                "batches at one instant",
                &[(0, 7, 0, 1024), (0, 7, 1024, 1024), (0, 7, 2048, 1)],
                &[(0, 7, 0, 2049, 0)],
            ),
            (
                "batches at two instants",
                &[(0, 7, 0, 1024), (0, 9, 1024, 1024)],
                &[(0, 7, 0, 1024, 0), (0, 9, 1024, 1024, 0)],
            ),
            (
                "a batch after one value, later",
                &[(0, 7, 0, 1), (0, 9, 1, 5)],
                &[(0, 7, 0, 1, 0), (0, 9, 1, 5, 0)],
            ),
            (
                "one-value batches a step apart",
                &[(0, 7, 0, 1), (0, 9, 1, 1), (0, 11, 2, 1)],
                &[(0, 7, 0, 3, 2)],
            ),
            (
                "the next time past u64",
                &[(0, 0, 0, 1), (0, M, 1, 1), (0, M, 2, 1)],
                &[(0, 0, 0, 2, M), (0, M, 2, 1, 0)],
            ),
            (
                "the last value",
                &[(0, 0, M - 1, 1), (0, 0, M, 1)],
                &[(0, 0, M - 1, 2, 0)],
            ),
        ];
        for (what, appends, want) in cases {
            assert_eq!(taped(appends), *want, "{what}");
        }
    }

    fn spec(kind: u32, label: &str) -> SourceSpec {
        SourceSpec {
            kind,
            a: 0,
            b: 0,
            text: String::new(),
            label: label.to_owned(),
            item: None,
        }
    }

    /// The same lines whether an interval's values come through `Tape::value` or through
    /// `Tape::tick` (the runtime's, with the next deadline it computed).
    #[test]
    fn runs_are_one_line_each_and_read_back_as_every_value() -> anyhow::Result<()> {
        for ticks in [false, true] {
            runs_read_back(ticks)?;
        }
        Ok(())
    }

    fn runs_read_back(ticks: bool) -> anyhow::Result<()> {
        let (_dir, file, recorder) = recorder_in("record_runs")?;
        let recording = recorder.recording();
        let tape = recording.tape_of(
            "counter".to_owned(),
            vec![
                spec(source_kind::INTERVAL, "interval_ms(500)"),
                spec(source_kind::RANGE, "range(0, 3000)"),
                spec(source_kind::OF, "of([1, 2])"),
            ],
            None,
        );
        let ms = |k: u64| recording.start + Duration::from_millis(k);
        let value = |at: Instant, v: u64| put_500(&tape, ticks, at, v);
        {
            // The writer takes nothing from the tape meanwhile (a steal would cut a run).
            let _writer = lock(&recording.out);
            for k in 1..=8 {
                value(ms(500 * k), k);
            }
            // A tick late by 100 ms (a deadline the runtime never gives: one more run).
            value(ms(4600), 9);
            value(ms(5100), 10);
            // `range` batches at one instant, then the completion.
            tape.run(1, ms(5100), 0, 1024);
            tape.run(1, ms(5100), 1024, 1024);
            tape.run(1, ms(5100), 2048, 952);
            tape.complete(1, ms(5100));
            tape.run(2, ms(6000), 0, 2);
            value(ms(7000), 11);
        }
        drop(tape);
        recorder.finish()?;
        let text = std::fs::read_to_string(&file)?;
        let lines: Vec<&str> = text.lines().collect();
        let p = r#"{"pipeline":"counter","port":"#;
        let want = [
            format!(
                r#"{p}0,"source":"interval_ms(500)","t":500000000,"u64":1,"n":8,"dt":500000000}}"#
            ),
            format!(
                r#"{p}0,"source":"interval_ms(500)","t":4600000000,"u64":9,"n":2,"dt":500000000}}"#
            ),
            format!(r#"{p}1,"source":"range(0, 3000)","t":5100000000,"u64":0,"n":3000,"dt":0}}"#),
            format!(r#"{p}1,"source":"range(0, 3000)","t":5100000000,"complete":true}}"#),
            format!(r#"{p}2,"source":"of([1, 2])","t":6000000000,"index":0,"n":2,"dt":0}}"#),
            format!(r#"{p}0,"source":"interval_ms(500)","t":7000000000,"u64":11,"debug":"11"}}"#),
        ];
        assert!(lines[0].starts_with(r#"{"format":"hmr-record","version":2,"#));
        assert_eq!(lines[1..lines.len() - 1], want);
        assert!(lines[lines.len() - 1].starts_with(r#"{"end":"#));

        let read = read(&file)?;
        let got: Vec<(u32, u64, Value)> = read
            .entries
            .iter()
            .map(|e| (read.streams[e.stream].port, e.t, e.value.clone()))
            .collect();
        let ns = |ms: u64| ms * 1_000_000;
        let mut expected: Vec<(u32, u64, Value)> =
            (1..=8).map(|k| (0, ns(500 * k), Value::U64(k))).collect();
        expected.push((0, ns(4600), Value::U64(9)));
        expected.push((0, ns(5100), Value::U64(10)));
        expected.extend((0..3000).map(|v| (1, ns(5100), Value::U64(v))));
        expected.push((1, ns(5100), Value::Complete));
        expected.push((2, ns(6000), Value::Index(0)));
        expected.push((2, ns(6000), Value::Index(1)));
        expected.push((0, ns(7000), Value::U64(11)));
        assert_eq!(got, expected);
        Ok(())
    }

    /// A recording into `NAME.jsonl` in a temp dir of its own (kept alive by the caller).
    fn recorder_in(
        name: &str,
    ) -> anyhow::Result<(crate::testkit::TempDir, std::path::PathBuf, Recorder)> {
        let dir = crate::testkit::TempDir::new(name);
        let file = dir.path().join(format!("{name}.jsonl"));
        let (tx, _rx) = std::sync::mpsc::channel();
        let sink: Sink = Arc::new(crate::events::ChannelSink(tx));
        let recorder = Recorder::create(&file, dir.path(), Clock::System, sink)?;
        Ok((dir, file, recorder))
    }

    /// A value of port 0, due at `at`, of a 500 ms interval: through `Tape::tick` (as the
    /// runtime records a tick) or `Tape::value`.
    fn put_500(tape: &Tape, ticks: bool, at: Instant, v: u64) {
        let period = Duration::from_millis(500);
        if ticks {
            tape.tick(0, at, period, at + period, v);
        } else {
            tape.value(0, at, v);
        }
    }

    /// The tape of a pipeline `counter` with one source, `interval_ms(500)`.
    fn interval_500(recording: &Arc<Recording>) -> Tape {
        recording.tape_of(
            "counter".to_owned(),
            vec![spec(source_kind::INTERVAL, "interval_ms(500)")],
            None,
        )
    }

    /// A tick due when the open run expects its next value, but at another period (a
    /// reload changed the interval): the run is not extended at the old step past it, so
    /// every value reads back at its own time.
    #[test]
    fn a_tick_at_another_period_keeps_its_own_times() -> anyhow::Result<()> {
        let (_dir, file, recorder) = recorder_in("record_period")?;
        let recording = recorder.recording();
        let tape = interval_500(&recording);
        let ms = |k: u64| recording.start + Duration::from_millis(k);
        let ticks = [
            (500, 500),
            (1000, 500),
            (1500, 500),
            (2000, 1000),
            (3000, 1000),
            (4000, 1000),
        ];
        {
            let _writer = lock(&recording.out);
            for (v, &(at, period)) in ticks.iter().enumerate() {
                let period = Duration::from_millis(period);
                tape.tick(0, ms(at), period, ms(at) + period, v as u64);
            }
        }
        drop(tape);
        recorder.finish()?;
        let read = read(&file)?;
        let got: Vec<(u64, Value)> = read
            .entries
            .iter()
            .map(|e| (e.t, e.value.clone()))
            .collect();
        let expected: Vec<(u64, Value)> = ticks
            .iter()
            .enumerate()
            .map(|(v, &(at, _))| (at * 1_000_000, Value::U64(v as u64)))
            .collect();
        assert_eq!(got, expected);
        Ok(())
    }

    #[test]
    fn a_run_the_writer_takes_while_it_grows_goes_on_in_the_next_line() -> anyhow::Result<()> {
        // Through `Tape::value`, and through the runtime's `Tape::tick`.
        for ticks in [false, true] {
            run_taken_while_it_grows(ticks)?;
        }
        Ok(())
    }

    fn run_taken_while_it_grows(ticks: bool) -> anyhow::Result<()> {
        let (_dir, file, recorder) = recorder_in("record_cut")?;
        let recording = recorder.recording();
        let tape = interval_500(&recording);
        let ms = |k: u64| recording.start + Duration::from_millis(k);
        let value = |at: Instant, v: u64| put_500(&tape, ticks, at, v);
        {
            // The writer thread takes nothing meanwhile; the test takes the tape (as the
            // writer does every 100 ms) where it says.
            let mut out = lock(&recording.out);
            for k in 1..=4 {
                value(ms(500 * k), k);
            }
            recording.collect(&mut out, false);
            for k in 5..=8 {
                value(ms(500 * k), k);
            }
            recording.collect(&mut out, false);
            value(ms(4500), 9);
            // Late: the run of 1..=9 ends (its last value not yet written), another starts.
            value(ms(5200), 10);
            value(ms(5700), 11);
            recording.collect(&mut out, false);
            // Nothing new: nothing written.
            recording.collect(&mut out, false);
            value(ms(6200), 12);
        }
        drop(tape);
        recorder.finish()?;
        let text = std::fs::read_to_string(&file)?;
        let lines: Vec<&str> = text.lines().collect();
        let p = r#"{"pipeline":"counter","port":0,"source":"interval_ms(500)","t":"#;
        let want = [
            format!(r#"{p}500000000,"u64":1,"n":4,"dt":500000000}}"#),
            format!(r#"{p}2500000000,"u64":5,"n":4,"dt":500000000}}"#),
            format!(r#"{p}4500000000,"u64":9,"debug":"9"}}"#),
            format!(r#"{p}5200000000,"u64":10,"n":2,"dt":500000000}}"#),
            format!(r#"{p}6200000000,"u64":12,"debug":"12"}}"#),
        ];
        assert_eq!(lines[1..lines.len() - 1], want);
        let read = read(&file)?;
        let got: Vec<(u64, Value)> = read
            .entries
            .iter()
            .map(|e| (e.t, e.value.clone()))
            .collect();
        let mut expected: Vec<(u64, Value)> =
            (1..=9).map(|k| (k * 500_000_000, Value::U64(k))).collect();
        expected.push((5_200_000_000, Value::U64(10)));
        expected.push((5_700_000_000, Value::U64(11)));
        expected.push((6_200_000_000, Value::U64(12)));
        assert_eq!(got, expected);
        Ok(())
    }
}
