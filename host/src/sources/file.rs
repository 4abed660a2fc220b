//! `file_lines`: the lines of a file, like `tail -F`.
//!
//! The task, in a loop:
//! 1. While the file is missing, it tries to open it every [`POLL`]; it says so once
//!    (`Notice("waiting for <path> to exist")`), and once per other kind of failure (an
//!    `Error`). An opened file is read from its start.
//! 2. It reads what the file has (chunks of [`CHUNK`] bytes, at once while there is more),
//!    delivering each ended line; a last line without its newline is held until it comes.
//! 3. At the end of what is there, it looks at the path:
//!    - another file (device and inode differ): rotation. It reads the old file to its end
//!      (a held last line is delivered as it is, since nothing more will be read from that
//!      file), says so (`Notice`) and goes to 1 for the new file, read from its start;
//!    - the same file, shorter than what was read: truncation. The held line is delivered,
//!      it says so (`Notice`) and reads again from the start (line numbers from 1);
//!    - otherwise (the same file, or no file at the path: removed, not yet replaced) it
//!      waits [`POLL`] and goes to 2.
//!
//! A line that is not UTF-8 is an `Error("invalid utf-8 in <path> line <n>")` and is
//! dropped; so is a line longer than [`MAX_LINE`] (1 MiB), an `Error("<path> line <n> is
//! over 1 MiB: dropped")` said as soon as its held bytes pass the limit (they are let go,
//! and the rest of that line is skipped as it comes); `n` counts the lines of that file
//! (since its last truncation) from 1. The task
//! never completes; it ends only when its outlet stops reading or its [`SourceTask`] is
//! dropped. The position (file, byte offset, line number) lives in the task.
//!
//! Known limits (as with `tail -F`): a truncation followed by writes past the old size before
//! the next look is not seen as a truncation (reading goes on from the old offset); lines
//! appended to a rotated file after the new file was noticed are not read.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::runtime::Handle;

use super::{LineSplitter, MAX_LINE, Outlet, RawLine, SourceEvent, SourceTask, wait_for_room};

/// How often the file is looked at once everything in it was read (and retried while it is
/// missing).
pub const POLL: Duration = Duration::from_millis(50);

/// The most bytes read at once.
pub const CHUNK: usize = 64 * 1024;

/// Starts tailing `path` into `outlet` on `rt` (see the module doc).
pub fn spawn_file_lines(rt: &Handle, path: PathBuf, outlet: Arc<dyn Outlet>) -> SourceTask {
    spawn_tail(rt, Tail::new(path, outlet))
}

fn spawn_tail(rt: &Handle, mut tail: Tail) -> SourceTask {
    SourceTask::spawn(rt, async move {
        // `Err(Closed)`: nobody reads any more.
        let _ = tail.run().await;
    })
}

/// The outlet does not take events any more.
struct Closed;

/// A file being read.
struct Open {
    file: tokio::fs::File,
    id: FileId,
    /// Bytes read from its start.
    pos: u64,
    splitter: LineSplitter,
}

/// What tells one file from another at the same path.
type FileId = (u64, u64);

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn file_id(_meta: &std::fs::Metadata) -> FileId {
    // No inode to compare: rotation by rename is not seen on these platforms.
    (0, 0)
}

struct Tail {
    path: PathBuf,
    outlet: Arc<dyn Outlet>,
    open: Option<Open>,
    /// The last failure said (to say it once, not on every poll); cleared by a good read.
    problem: Option<SourceEvent>,
    buf: Vec<u8>,
    lines: Vec<RawLine>,
    /// Runs after each read to the end of the file, before the path is looked at: lets a
    /// test change the files in that window.
    #[cfg(test)]
    at_end: Option<Box<dyn FnMut() + Send>>,
}

impl Tail {
    fn new(path: PathBuf, outlet: Arc<dyn Outlet>) -> Tail {
        Tail {
            path,
            outlet,
            open: None,
            problem: None,
            buf: vec![0; CHUNK],
            lines: Vec::new(),
            #[cfg(test)]
            at_end: None,
        }
    }

    async fn run(&mut self) -> Result<(), Closed> {
        loop {
            if self.open.is_none() {
                self.open = self.try_open().await?;
                if self.open.is_none() {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            }
            if !self.read_available().await? {
                // A read failed (said once): the file is opened again after a pause.
                tokio::time::sleep(POLL).await;
                continue;
            }
            #[cfg(test)]
            if let Some(at_end) = self.at_end.as_mut() {
                at_end();
            }
            let Some(open) = self.open.as_ref() else {
                continue;
            };
            match tokio::fs::metadata(&self.path).await {
                Ok(meta) if file_id(&meta) != open.id => {
                    // Rotated: finish the old file, then the new one from its start.
                    if self.read_available().await? {
                        self.finish_held_line().await?;
                    }
                    self.open = None;
                    let msg = format!(
                        "{} was replaced (rotated); reading the new file from its start",
                        self.path.display()
                    );
                    self.deliver(SourceEvent::Notice(msg))?;
                }
                Ok(meta) if meta.len() < open.pos => {
                    self.finish_held_line().await?;
                    let msg = format!(
                        "{} was truncated; reading it from its start",
                        self.path.display()
                    );
                    self.deliver(SourceEvent::Notice(msg))?;
                    if let Some(open) = self.open.as_mut() {
                        if let Err(e) = open.file.seek(std::io::SeekFrom::Start(0)).await {
                            self.open = None;
                            let msg = format!("cannot read {}: {e}", self.path.display());
                            self.say_once(SourceEvent::Error(msg))?;
                            tokio::time::sleep(POLL).await;
                            continue;
                        }
                        open.pos = 0;
                        open.splitter.reset();
                    }
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Opens the file at the path, or says once why not.
    async fn try_open(&mut self) -> Result<Option<Open>, Closed> {
        let opened = match tokio::fs::File::open(&self.path).await {
            Ok(file) => match file.metadata().await {
                Ok(meta) => Ok((file, file_id(&meta))),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match opened {
            Ok((file, id)) => Ok(Some(Open {
                file,
                id,
                pos: 0,
                splitter: LineSplitter::default(),
            })),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let msg = format!("waiting for {} to exist", self.path.display());
                self.say_once(SourceEvent::Notice(msg))?;
                Ok(None)
            }
            Err(e) => {
                let msg = format!("cannot open {}: {e}", self.path.display());
                self.say_once(SourceEvent::Error(msg))?;
                Ok(None)
            }
        }
    }

    /// Reads and delivers what the open file has up to its current end; false (the file
    /// closed, the failure said once) when a read failed.
    async fn read_available(&mut self) -> Result<bool, Closed> {
        loop {
            let Some(open) = self.open.as_mut() else {
                return Ok(false);
            };
            let n = match open.file.read(&mut self.buf).await {
                Ok(0) => {
                    self.problem = None;
                    return Ok(true);
                }
                Ok(n) => n,
                Err(e) => {
                    self.open = None;
                    let msg = format!("cannot read {}: {e}", self.path.display());
                    self.say_once(SourceEvent::Error(msg))?;
                    return Ok(false);
                }
            };
            self.problem = None;
            open.pos += n as u64;
            open.splitter.push(&self.buf[..n], &mut self.lines);
            let overlong = open
                .splitter
                .held_over_limit()
                .then(|| open.splitter.skip_line());
            // Taken out of `self` while delivering, kept for the next chunk.
            let mut lines = std::mem::take(&mut self.lines);
            let mut result = Ok(());
            for line in lines.drain(..) {
                result = self.deliver_line(line).await;
                if result.is_err() {
                    break;
                }
            }
            self.lines = lines;
            result?;
            if let Some(number) = overlong {
                self.deliver(self.too_long(number))?;
            }
        }
    }

    fn too_long(&self, number: u64) -> SourceEvent {
        SourceEvent::Error(format!(
            "{} line {number} is over 1 MiB: dropped",
            self.path.display()
        ))
    }

    /// Delivers the held last line of the open file, if any, as a line of its own.
    async fn finish_held_line(&mut self) -> Result<(), Closed> {
        match self.open.as_mut().and_then(|o| o.splitter.finish()) {
            Some(line) => self.deliver_line(line).await,
            None => Ok(()),
        }
    }

    async fn deliver_line(&mut self, (number, bytes): RawLine) -> Result<(), Closed> {
        wait_for_room(&*self.outlet).await;
        // A line that went past the limit within the chunk that ended it.
        if bytes.len() > MAX_LINE {
            return self.deliver(self.too_long(number));
        }
        let event = match String::from_utf8(bytes) {
            Ok(s) => SourceEvent::Line(s),
            Err(_) => SourceEvent::Error(format!(
                "invalid utf-8 in {} line {number}",
                self.path.display()
            )),
        };
        self.deliver(event)
    }

    fn deliver(&self, event: SourceEvent) -> Result<(), Closed> {
        if self.outlet.send(event) {
            Ok(())
        } else {
            Err(Closed)
        }
    }

    /// Delivers `event` unless it is the failure said last.
    fn say_once(&mut self, event: SourceEvent) -> Result<(), Closed> {
        if self.problem.as_ref() == Some(&event) {
            return Ok(());
        }
        self.problem = Some(event.clone());
        self.deliver(event)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{WAIT, expect, expect_quiet, line, next, runtime};
    use super::super::{BACKLOG_LIMIT, ChannelOutlet};
    use super::*;
    use crate::testkit::TempDir;
    use std::io::Write;
    use std::path::Path;

    fn append(path: &Path, text: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        f.write_all(text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    fn notice(s: String) -> SourceEvent {
        SourceEvent::Notice(s)
    }

    #[test]
    fn lines_already_there_then_appended() {
        let dir = TempDir::new("file-lines-append");
        let path = dir.path().join("app.log");
        std::fs::write(&path, "one\ntwo\n").unwrap();
        let rt = runtime();
        let (outlet, rx) = ChannelOutlet::new();
        let _task = spawn_file_lines(rt.handle(), path.clone(), outlet);
        expect(&rx, &[line("one"), line("two")]);
        append(&path, b"three\nfour\n");
        expect(&rx, &[line("three"), line("four")]);
        append(&path, b"five\n");
        expect(&rx, &[line("five")]);
    }

    #[test]
    fn a_missing_file_is_waited_for_with_one_notice() {
        let dir = TempDir::new("file-lines-missing");
        let path = dir.path().join("later.log");
        let rt = runtime();
        let (outlet, rx) = ChannelOutlet::new();
        let _task = spawn_file_lines(rt.handle(), path.clone(), outlet);
        expect(
            &rx,
            &[notice(format!("waiting for {} to exist", path.display()))],
        );
        // Several polls pass without another notice.
        expect_quiet(&rx);
        append(&path, b"first\n");
        expect(&rx, &[line("first")]);
        append(&path, b"second\n");
        expect(&rx, &[line("second")]);
    }

    #[test]
    fn truncation_reads_again_from_the_start() {
        let dir = TempDir::new("file-lines-truncate");
        let path = dir.path().join("app.log");
        std::fs::write(&path, "one\ntwo\nheld").unwrap();
        let rt = runtime();
        let (outlet, rx) = ChannelOutlet::new();
        let _task = spawn_file_lines(rt.handle(), path.clone(), outlet);
        expect(&rx, &[line("one"), line("two")]);
        // Truncated in place (same inode), then shorter content than was read. The line held
        // (never ended) is delivered as it was.
        std::fs::write(&path, "new\n").unwrap();
        let msg = format!(
            "{} was truncated; reading it from its start",
            path.display()
        );
        expect(&rx, &[line("held"), notice(msg), line("new")]);
        append(&path, b"\xff\n");
        // Line numbers count from the truncation.
        let err = format!("invalid utf-8 in {} line 2", path.display());
        expect(&rx, &[SourceEvent::Error(err)]);
    }

    #[test]
    fn rotation_by_rename_finishes_the_old_file_then_reads_the_new() {
        let dir = TempDir::new("file-lines-rotate");
        let path = dir.path().join("app.log");
        let old = dir.path().join("app.log.1");
        std::fs::write(&path, "old 1\n").unwrap();
        let rt = runtime();
        let (outlet, rx) = ChannelOutlet::new();
        let _task = spawn_file_lines(rt.handle(), path.clone(), outlet);
        expect(&rx, &[line("old 1")]);
        std::fs::rename(&path, &old).unwrap();
        append(&old, b"old 2\nold 3\n");
        append(&path, b"new 1\n");
        let msg = format!(
            "{} was replaced (rotated); reading the new file from its start",
            path.display()
        );
        expect(
            &rx,
            &[line("old 2"), line("old 3"), notice(msg), line("new 1")],
        );
        append(&path, b"new 2\n");
        expect(&rx, &[line("new 2")]);
    }

    #[test]
    fn rotation_between_the_last_read_and_the_look_loses_nothing() {
        // The old file grows and is replaced after its end was read and before the path is
        // looked at: its new lines are read before the new file's, and its last line (never
        // ended) is delivered as it is.
        let dir = TempDir::new("file-lines-rotate-window");
        let path = dir.path().join("app.log");
        let old = dir.path().join("app.log.1");
        std::fs::write(&path, "old 1\n").unwrap();
        let rt = runtime();
        let (outlet, rx) = ChannelOutlet::new();
        let mut tail = Tail::new(path.clone(), outlet);
        let (p, o) = (path.clone(), old.clone());
        let mut rotated = false;
        tail.at_end = Some(Box::new(move || {
            if !rotated && std::fs::read(&p).is_ok_and(|b| b == b"old 1\n") {
                rotated = true;
                std::fs::rename(&p, &o).unwrap();
                append(&o, b"old 2\nold 3");
                append(&p, b"new 1\n");
            }
        }));
        let _task = spawn_tail(rt.handle(), tail);
        let msg = format!(
            "{} was replaced (rotated); reading the new file from its start",
            path.display()
        );
        expect(
            &rx,
            &[
                line("old 1"),
                line("old 2"),
                line("old 3"),
                notice(msg),
                line("new 1"),
            ],
        );
    }

    #[test]
    fn a_partial_last_line_is_held_until_its_newline() {
        let dir = TempDir::new("file-lines-partial");
        let path = dir.path().join("app.log");
        std::fs::write(&path, "whole\npar").unwrap();
        let rt = runtime();
        let (outlet, rx) = ChannelOutlet::new();
        let _task = spawn_file_lines(rt.handle(), path.clone(), outlet);
        expect(&rx, &[line("whole")]);
        expect_quiet(&rx);
        append(&path, b"tial\r\n");
        expect(&rx, &[line("partial")]);
    }

    #[test]
    fn invalid_utf8_is_an_error_naming_the_line_and_reading_goes_on() {
        let dir = TempDir::new("file-lines-utf8");
        let path = dir.path().join("app.log");
        std::fs::write(&path, b"ok\nbad \xff\xfe\nnext\n").unwrap();
        let rt = runtime();
        let (outlet, rx) = ChannelOutlet::new();
        let _task = spawn_file_lines(rt.handle(), path.clone(), outlet);
        let err = format!("invalid utf-8 in {} line 2", path.display());
        expect(&rx, &[line("ok"), SourceEvent::Error(err), line("next")]);
        append(&path, b"\xc3\n");
        let err = format!("invalid utf-8 in {} line 4", path.display());
        expect(&rx, &[SourceEvent::Error(err)]);
        append(&path, "caf\u{e9}\n".as_bytes());
        expect(&rx, &[line("caf\u{e9}")]);
    }

    #[test]
    fn a_line_over_the_limit_is_an_error_naming_it_and_reading_goes_on() {
        let long = |n: usize| vec![b'x'; n];
        // (name, the file's bytes, then bytes appended)
        let cases: &[(&str, Vec<u8>, Vec<u8>)] = &[
            // Past the limit while its newline has not come (held bytes let go).
            (
                "held past the limit",
                [b"a\n".to_vec(), long(MAX_LINE + 200_000)].concat(),
                [long(1000), b"\nb\n".to_vec()].concat(),
            ),
            // Past the limit within the chunk that ends it.
            (
                "ended past the limit",
                [b"a\n".to_vec(), long(MAX_LINE + 10), b"\n".to_vec()].concat(),
                b"b\n".to_vec(),
            ),
            // At the limit, with a `\r\n` ending: a line.
            (
                "at the limit",
                [b"a\n".to_vec(), long(MAX_LINE), b"\r\n".to_vec()].concat(),
                b"b\n".to_vec(),
            ),
        ];
        for (name, first, then) in cases {
            let dir = TempDir::new("file-lines-long");
            let path = dir.path().join("app.log");
            std::fs::write(&path, first).unwrap();
            let rt = runtime();
            let (outlet, rx) = ChannelOutlet::new();
            let _task = spawn_file_lines(rt.handle(), path.clone(), outlet);
            let second = if *name == "at the limit" {
                SourceEvent::Line(String::from_utf8(long(MAX_LINE)).unwrap())
            } else {
                SourceEvent::Error(format!("{} line 2 is over 1 MiB: dropped", path.display()))
            };
            let got = [next(&rx, &line("a")), next(&rx, &second)];
            // Described cut short: a wrong long line would fill the screen.
            let cut = |e: &SourceEvent| format!("{e:?}").chars().take(120).collect::<String>();
            assert!(
                got[0] == line("a") && got[1] == second,
                "{name}: {} then {}",
                cut(&got[0]),
                cut(&got[1])
            );
            append(&path, then);
            // The line after it, numbered 3 (an invalid one names its number).
            append(&path, b"\xff\n");
            let bad = format!("invalid utf-8 in {} line 4", path.display());
            expect(&rx, &[line("b"), SourceEvent::Error(bad)]);
        }
    }

    #[test]
    fn a_line_ended_past_the_limit_within_one_read_is_an_error() {
        // The check of a completed line, which a read that carries a long line's last bytes
        // and its newline reaches (the held bytes were at the limit before it).
        let rt = runtime();
        let (outlet, rx) = ChannelOutlet::new();
        let mut tail = Tail::new(PathBuf::from("some.log"), outlet);
        rt.block_on(async {
            let _ = tail.deliver_line((7, vec![b'x'; MAX_LINE + 1])).await;
            let _ = tail.deliver_line((8, b"ok".to_vec())).await;
        });
        let err = SourceEvent::Error("some.log line 7 is over 1 MiB: dropped".into());
        expect(&rx, &[err, line("ok")]);
    }

    #[test]
    fn a_large_file_waits_for_its_reader() {
        let dir = TempDir::new("file-lines-backlog");
        let path = dir.path().join("big.log");
        let total = BACKLOG_LIMIT * 3;
        let text: String = (0..total).map(|i| format!("{i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let rt = runtime();
        let (outlet, rx) = ChannelOutlet::new();
        let _task = spawn_file_lines(rt.handle(), path.clone(), outlet);
        // The source sends while the backlog is at most the limit: it stops one above it.
        let deadline = std::time::Instant::now() + WAIT;
        while rx.len() <= BACKLOG_LIMIT {
            assert!(std::time::Instant::now() < deadline, "backlog {}", rx.len());
            std::thread::sleep(Duration::from_millis(1));
        }
        expect_quiet_len(&rx, BACKLOG_LIMIT + 1);
        for i in 0..total {
            let want = line(&i.to_string());
            let got = rx
                .recv_timeout(WAIT)
                .unwrap_or_else(|e| panic!("line {i}: {e}"));
            assert_eq!(got, want);
        }
    }

    /// The channel stays at `len` while the test watches.
    fn expect_quiet_len(rx: &crossbeam_channel::Receiver<SourceEvent>, len: usize) {
        let until = std::time::Instant::now() + super::super::test_support::QUIET;
        while std::time::Instant::now() < until {
            assert_eq!(rx.len(), len);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn dropping_the_task_stops_it_and_frees_its_outlet() {
        let dir = TempDir::new("file-lines-drop");
        let path = dir.path().join("app.log");
        std::fs::write(&path, "one\n").unwrap();
        let rt = runtime();
        let (outlet, rx) = ChannelOutlet::new();
        let task = spawn_file_lines(rt.handle(), path.clone(), outlet);
        expect(&rx, &[line("one")]);
        drop(task);
        // The abort takes effect at the task's next await (it may be polling on another
        // worker right now): then it drops the only other sender, and the channel
        // disconnects with nothing delivered in between.
        match rx.recv_timeout(WAIT) {
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {}
            other => panic!("expected a disconnected channel, got {other:?}"),
        }
        // Stopped: a line appended now reaches nobody (no task reads the file any more).
        append(&path, b"two\n");
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(50)),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        ));
    }
}
