//! `stdin_lines`: the lines of the host's standard input, shared by every subscriber.
//!
//! One task reads the input (the host passes `tokio::io::stdin()`, tests an in-memory pipe)
//! and sends each line to every current subscriber: a subscriber gets the lines read after it
//! subscribed. At the end of input (a last line without newline counts as a line) every
//! subscriber gets `Complete`, and so does any subscriber that comes later, at once. A read
//! error is an `Error` followed by `Complete`. A line that is not UTF-8, or longer than
//! [`MAX_LINE`] (1 MiB: said once its held bytes pass the limit, the rest of it skipped as it
//! comes), is an `Error` naming its number (from 1); the line is dropped.
//!
//! Tokio reads stdin on a blocking thread of its runtime: dropping the [`StdinLines`] stops
//! the task, but a read already waiting on the terminal returns only with the next input or
//! its end, so a runtime that holds one must be shut down with `shutdown_timeout` or
//! `shutdown_background`.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::runtime::Handle;

use super::{Fanout, LineSplitter, MAX_LINE, Outlet, RawLine, SourceEvent, SourceTask};

/// The most bytes read at once.
pub const CHUNK: usize = 64 * 1024;

/// A `stdin_lines` source (see the module doc).
pub struct StdinLines {
    fanout: Arc<Fanout>,
    _task: SourceTask,
}

impl std::fmt::Debug for StdinLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdinLines").finish_non_exhaustive()
    }
}

impl StdinLines {
    /// Starts reading `reader` on `rt`.
    pub fn start<R: AsyncRead + Send + Unpin + 'static>(rt: &Handle, reader: R) -> StdinLines {
        let fanout = Arc::new(Fanout::default());
        let task = SourceTask::spawn(rt, read_lines(reader, fanout.clone()));
        StdinLines {
            fanout,
            _task: task,
        }
    }

    /// Delivers every line read from now on to `outlet`, then `Complete`; after the end of
    /// input, `Complete` at once. The id is for [`StdinLines::unsubscribe`].
    pub fn subscribe(&self, outlet: Arc<dyn Outlet>) -> u64 {
        self.fanout.subscribe(outlet)
    }

    /// Stops delivering to a subscriber; an unknown id is ignored.
    pub fn unsubscribe(&self, id: u64) {
        self.fanout.unsubscribe(id);
    }
}

async fn read_lines<R: AsyncRead + Unpin>(mut reader: R, fanout: Arc<Fanout>) {
    let mut buf = vec![0; CHUNK];
    let mut splitter = LineSplitter::default();
    let mut lines = Vec::new();
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                splitter.push(&buf[..n], &mut lines);
                for line in lines.drain(..) {
                    deliver(&fanout, line).await;
                }
                if splitter.held_over_limit() {
                    fanout.send(too_long(splitter.skip_line()));
                }
            }
            Err(e) => {
                fanout.send(SourceEvent::Error(format!("stdin_lines: cannot read: {e}")));
                fanout.complete();
                return;
            }
        }
    }
    if let Some(line) = splitter.finish() {
        deliver(&fanout, line).await;
    }
    fanout.complete();
}

fn too_long(number: u64) -> SourceEvent {
    SourceEvent::Error(format!("stdin_lines: line {number} is over 1 MiB: dropped"))
}

async fn deliver(fanout: &Fanout, (number, bytes): RawLine) {
    fanout.wait_for_room().await;
    // A line that went past the limit within the chunk that ended it.
    if bytes.len() > MAX_LINE {
        fanout.send(too_long(number));
        return;
    }
    fanout.send(match String::from_utf8(bytes) {
        Ok(s) => SourceEvent::Line(s),
        Err(_) => SourceEvent::Error(format!("stdin_lines: invalid utf-8 in line {number}")),
    });
}

#[cfg(test)]
mod tests {
    use super::super::ChannelOutlet;
    use super::super::test_support::{expect, line, runtime};
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Two subscribers get every line then `Complete`, and a late one `Complete` at once.
    fn every_subscriber_gets_every_line_then_complete<W, R>(
        rt: &tokio::runtime::Runtime,
        mut input: W,
        reader: R,
    ) where
        W: tokio::io::AsyncWrite + Unpin,
        R: AsyncRead + Send + Unpin + 'static,
    {
        let src = StdinLines::start(rt.handle(), reader);
        let (a, ra) = ChannelOutlet::new();
        let (b, rb) = ChannelOutlet::new();
        src.subscribe(a);
        src.subscribe(b);
        rt.block_on(async {
            input.write_all(b"one\ntwo\r\n\xff\nthree").await.unwrap();
            input.shutdown().await.unwrap();
        });
        drop(input);
        let all = [
            line("one"),
            line("two"),
            SourceEvent::Error("stdin_lines: invalid utf-8 in line 3".into()),
            line("three"),
            SourceEvent::Complete,
        ];
        expect(&ra, &all);
        expect(&rb, &all);
        // After the end of input, a subscriber gets Complete at once.
        let (late, rl) = ChannelOutlet::new();
        src.subscribe(late);
        assert_eq!(rl.try_iter().collect::<Vec<_>>(), [SourceEvent::Complete]);
    }

    #[test]
    fn every_subscriber_gets_every_line_of_a_duplex_then_complete() {
        let rt = runtime();
        let (input, reader) = tokio::io::duplex(64);
        every_subscriber_gets_every_line_then_complete(&rt, input, reader);
    }

    #[cfg(unix)]
    #[test]
    fn every_subscriber_gets_every_line_of_a_pipe_then_complete() {
        let rt = runtime();
        let (input, reader) = {
            let _entered = rt.enter();
            tokio::net::unix::pipe::pipe().expect("cannot make a pipe")
        };
        every_subscriber_gets_every_line_then_complete(&rt, input, reader);
    }

    #[test]
    fn a_line_over_the_limit_is_an_error_and_reading_goes_on() {
        let rt = runtime();
        let (mut input, reader) = tokio::io::duplex(64 * 1024);
        let src = StdinLines::start(rt.handle(), reader);
        let (a, ra) = ChannelOutlet::new();
        src.subscribe(a);
        let long = |n: usize| vec![b'x'; n];
        let over =
            |n: u64| SourceEvent::Error(format!("stdin_lines: line {n} is over 1 MiB: dropped"));
        let at_limit = SourceEvent::Line(String::from_utf8(long(MAX_LINE)).unwrap());
        // (bytes written, then the events they must give, before anything more is written:
        // a line past the limit is said while its newline has not come)
        let steps = [
            (
                [b"a\n".to_vec(), long(MAX_LINE + 200_000)].concat(),
                vec![line("a"), over(2)],
            ),
            (
                [
                    long(1000),
                    b"\nb\n".to_vec(),
                    long(MAX_LINE),
                    b"\r\n".to_vec(),
                ]
                .concat(),
                vec![line("b"), at_limit],
            ),
            (long(MAX_LINE + 2), vec![over(5)]),
            (b"\nc".to_vec(), vec![]),
        ];
        // Described cut short: a wrong long line would fill the screen.
        let cut = |e: &SourceEvent| format!("{e:?}").chars().take(120).collect::<String>();
        for (i, (bytes, events)) in steps.into_iter().enumerate() {
            // The duplex holds 64 KiB: once the write returns, the reader has all but that.
            rt.block_on(input.write_all(&bytes)).unwrap();
            for w in &events {
                let got = super::super::test_support::next(&ra, w);
                assert!(got == *w, "step {i}: {} instead of {}", cut(&got), cut(w));
            }
        }
        rt.block_on(input.shutdown()).unwrap();
        expect(&ra, &[line("c"), SourceEvent::Complete]);
    }

    #[test]
    fn a_line_ended_past_the_limit_within_one_read_is_an_error() {
        // The check of a completed line, which a read that carries a long line's last bytes
        // and its newline reaches (the held bytes were at the limit before it).
        let rt = runtime();
        let fanout = Fanout::default();
        let (a, ra) = ChannelOutlet::new();
        fanout.subscribe(a);
        rt.block_on(deliver(&fanout, (7, vec![b'x'; MAX_LINE + 1])));
        rt.block_on(deliver(&fanout, (8, b"ok".to_vec())));
        expect(
            &ra,
            &[
                SourceEvent::Error("stdin_lines: line 7 is over 1 MiB: dropped".into()),
                line("ok"),
            ],
        );
    }

    #[test]
    fn a_subscriber_gets_the_lines_read_after_it_subscribed() {
        let rt = runtime();
        let (mut input, reader) = tokio::io::duplex(64);
        let src = StdinLines::start(rt.handle(), reader);
        let (a, ra) = ChannelOutlet::new();
        src.subscribe(a);
        let write = |input: &mut tokio::io::DuplexStream, b: &'static [u8]| {
            rt.block_on(async { input.write_all(b).await.unwrap() })
        };
        write(&mut input, b"first\n");
        expect(&ra, &[line("first")]);
        let (b, rb) = ChannelOutlet::new();
        let idb = src.subscribe(b);
        write(&mut input, b"second\n");
        expect(&ra, &[line("second")]);
        expect(&rb, &[line("second")]);
        src.unsubscribe(idb);
        write(&mut input, b"third\n");
        drop(input);
        expect(&ra, &[line("third"), SourceEvent::Complete]);
        assert_eq!(rb.try_iter().collect::<Vec<_>>(), []);
    }
}
