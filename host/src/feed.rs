//! Host sources that feed a pipeline thread's inbox: `file_lines`, `tcp_lines` and
//! `stdin_lines` (see [`crate::sources`]), opened for a pipeline's port when its thread
//! starts, on one small tokio runtime shared by all of them.
//!
//! What a source holds lives as long as the pipeline that reads it: a file position in
//! its task, a listener and its connections in a [`TcpLines`] shared by every pipeline on
//! that address, stdin in one [`StdinLines`] for the whole host. A pipeline that is swapped
//! by a reload keeps them; one that is restarted (its sources changed) opens them again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use crossbeam_channel::Sender;
use plugin_api::abi::source_kind;

use crate::code::SourceSpec;
use crate::runtime::Msg;
use crate::sources::stdin::StdinLines;
use crate::sources::tcp::TcpLines;
use crate::sources::{Outlet, SourceEvent, SourceTask, file::spawn_file_lines};

/// How many threads run the host's sources, timers and I/O: a fixed number, whatever the
/// number of sources.
pub const IO_THREADS: usize = 2;

/// What a running host source holds for a pipeline (a task, a subscription) and where it
/// delivers; dropping it stops the delivery. A pipeline restarted by a reload (another of
/// its sources changed) takes over the ones whose source is unchanged, pointed at its own
/// inbox: a file keeps its position, a connection stays open.
pub struct Held {
    spec: SourceSpec,
    outlet: Arc<InboxOutlet>,
    what: What,
}

enum What {
    /// A `file_lines` task (its position).
    File(#[allow(dead_code, reason = "held: dropping it stops the task")] SourceTask),
    /// A subscription to a shared listener.
    Tcp(Arc<TcpLines>, u64),
    /// A subscription to the host's stdin.
    Stdin(Arc<StdinLines>, u64),
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("source", &self.spec.label)
            .finish_non_exhaustive()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        match &self.what {
            What::File(_) => {}
            What::Tcp(t, id) => t.unsubscribe(*id),
            What::Stdin(s, id) => s.unsubscribe(*id),
        }
    }
}

/// Delivers a source's events into a pipeline thread's inbox, as messages for its port;
/// the inbox and port can be changed (a restarted pipeline taking the source over).
/// Delivers a source's events to a pipeline thread's inbox: for port `.1` of the pipeline
/// (`.2` = 0), or of its inner subscription `.2`.
struct InboxOutlet {
    target: ArcSwap<(Sender<Msg>, u32, u64)>,
}

impl Outlet for InboxOutlet {
    fn send(&self, event: SourceEvent) -> bool {
        let target = self.target.load();
        let (tx, port, inner) = (&target.0, target.1, target.2);
        let msg = match (event, inner) {
            (SourceEvent::Line(l), 0) => Msg::Line(port, l),
            (SourceEvent::Line(l), id) => Msg::InnerLine(id, port, l),
            (SourceEvent::Complete, 0) => Msg::Complete(port),
            (SourceEvent::Complete, id) => Msg::InnerComplete(id, port),
            (SourceEvent::Error(e), _) => Msg::Error(port, e),
            (SourceEvent::Notice(n), _) => Msg::Notice(port, n),
        };
        tx.send(msg).is_ok()
    }

    fn backlog(&self) -> usize {
        self.target.load().0.len()
    }
}

/// A reader the host's `stdin_lines` reads instead of the process's standard input.
pub type StdinReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// Reads nothing until its gate opens (or its sender is gone): stdin is read only once every
/// pipeline of the launch that opened it has subscribed, so each gets the first lines too
/// (lines already waiting in a pipe would otherwise reach the first subscriber alone).
struct Gated {
    gate: Option<tokio::sync::oneshot::Receiver<()>>,
    inner: StdinReader,
}

impl tokio::io::AsyncRead for Gated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(gate) = self.gate.as_mut() {
            // Opened, or the feeds are gone: read either way.
            let _ = std::task::ready!(Pin::new(gate).poll(cx));
            self.gate = None;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// Where host sources come from: the directory relative paths resolve against, the I/O
/// runtime, and the shared sources (listeners, stdin).
#[derive(Default)]
pub struct Feeds {
    base: Option<PathBuf>,
    rt: Option<tokio::runtime::Runtime>,
    tcp: HashMap<String, Weak<TcpLines>>,
    stdin: Option<Arc<StdinLines>>,
    stdin_from: Option<StdinReader>,
    /// Opens the gate of stdin once the launch that started it has subscribed everyone.
    stdin_gate: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for Feeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeds")
            .field("base", &self.base)
            .field("listeners", &self.tcp.len())
            .finish_non_exhaustive()
    }
}

impl Feeds {
    /// No base directory yet (relative paths resolve against the working directory).
    pub fn new() -> Feeds {
        Feeds::default()
    }

    /// Relative paths resolve against `dir`.
    pub fn set_base_dir(&mut self, dir: &Path) {
        self.base = Some(std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()));
    }

    /// `stdin_lines` reads `reader` instead of the process's standard input (tests).
    pub fn set_stdin(&mut self, reader: StdinReader) {
        self.stdin_from = Some(reader);
    }

    fn rt(&mut self) -> Result<tokio::runtime::Handle, String> {
        if self.rt.is_none() {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(IO_THREADS)
                .thread_name("hmr-io")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the i/o runtime: {e}"))?;
            self.rt = Some(rt);
        }
        Ok(self.rt.as_ref().expect("just set").handle().clone())
    }

    /// Where `file_lines(path)` reads: `path` itself when absolute, else under the plugin
    /// crate's directory.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        match &self.base {
            Some(base) if p.is_relative() => base.join(p),
            _ => p.to_path_buf(),
        }
    }

    /// Opens the host source of `spec` for `port`, delivering into `tx`: `Ok(None)` for a
    /// source the pipeline thread runs itself, an error message naming the cause when the
    /// source cannot be opened (an address in use). A source of the same spec in `reuse`
    /// (what the pipeline held before a restart) is taken over instead of opened again; the
    /// port it delivered to then comes with it.
    pub fn open(
        &mut self,
        spec: &SourceSpec,
        port: u32,
        tx: &Sender<Msg>,
        reuse: &mut Vec<Held>,
    ) -> Result<Option<(Held, Option<u32>)>, String> {
        self.open_for(spec, port, 0, tx, reuse)
    }

    /// [`Feeds::open`] for port `port` of inner subscription `inner` (0: of the pipeline).
    pub fn open_for(
        &mut self,
        spec: &SourceSpec,
        port: u32,
        inner: u64,
        tx: &Sender<Msg>,
        reuse: &mut Vec<Held>,
    ) -> Result<Option<(Held, Option<u32>)>, String> {
        if let Some(i) = reuse.iter().position(|h| h.spec == *spec) {
            let held = reuse.swap_remove(i);
            let old = held
                .outlet
                .target
                .swap(Arc::new((tx.clone(), port, inner)))
                .1;
            return Ok(Some((held, Some(old))));
        }
        let outlet = Arc::new(InboxOutlet {
            target: ArcSwap::from_pointee((tx.clone(), port, inner)),
        });
        let dyn_outlet = || -> Arc<dyn Outlet> { outlet.clone() };
        let what = match spec.kind {
            source_kind::FILE_LINES => {
                let rt = self.rt()?;
                let path = self.resolve(&spec.text);
                What::File(spawn_file_lines(&rt, path, dyn_outlet()))
            }
            source_kind::TCP_LINES => {
                let listener = match self.tcp.get(&spec.text).and_then(Weak::upgrade) {
                    Some(l) => l,
                    None => {
                        let rt = self.rt()?;
                        let l = TcpLines::bind(&rt, &spec.text).map_err(|e| {
                            format!("tcp_lines({:?}): cannot listen: {e}", spec.text)
                        })?;
                        let l = Arc::new(l);
                        self.tcp.retain(|_, w| w.strong_count() > 0);
                        self.tcp.insert(spec.text.clone(), Arc::downgrade(&l));
                        l
                    }
                };
                let id = listener.subscribe(dyn_outlet());
                What::Tcp(listener, id)
            }
            source_kind::STDIN_LINES => {
                let stdin = match &self.stdin {
                    Some(s) => s.clone(),
                    None => {
                        let rt = self.rt()?;
                        let inner = self
                            .stdin_from
                            .take()
                            .unwrap_or_else(|| Box::new(tokio::io::stdin()));
                        let (open, gate) = tokio::sync::oneshot::channel();
                        self.stdin_gate = Some(open);
                        let s = StdinLines::start(
                            &rt,
                            Gated {
                                gate: Some(gate),
                                inner,
                            },
                        );
                        let s = Arc::new(s);
                        self.stdin = Some(s.clone());
                        s
                    }
                };
                let id = stdin.subscribe(dyn_outlet());
                What::Stdin(stdin, id)
            }
            _ => return Ok(None),
        };
        Ok(Some((
            Held {
                spec: spec.clone(),
                outlet,
                what,
            },
            None,
        )))
    }

    /// Every pipeline being started has opened its sources: the host's stdin, if one of
    /// them opened it, may be read now.
    pub fn opened(&mut self) {
        if let Some(open) = self.stdin_gate.take() {
            let _ = open.send(());
        }
    }
}

impl Drop for Feeds {
    fn drop(&mut self) {
        self.stdin = None;
        self.tcp.clear();
        if let Some(rt) = self.rt.take() {
            // Tokio reads stdin on a blocking thread that cannot be cancelled: do not wait.
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stdin_spec() -> SourceSpec {
        SourceSpec {
            kind: source_kind::STDIN_LINES,
            a: 0,
            b: 0,
            text: String::new(),
            label: "stdin_lines()".into(),
            item: None,
        }
    }

    /// What a pipeline's inbox received, as text.
    fn next(rx: &crossbeam_channel::Receiver<Msg>) -> String {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Msg::Line(port, l)) => format!("{port}: {l}"),
            Ok(Msg::Complete(port)) => format!("{port}: complete"),
            Ok(other) => format!("{other:?}"),
            Err(e) => panic!("nothing in the inbox: {e}"),
        }
    }

    /// Lines already waiting on stdin are read only once the launch has opened every
    /// pipeline's sources: the first subscriber gets nothing before, and both get them all.
    #[test]
    fn stdin_is_read_once_every_pipeline_of_the_launch_subscribed() {
        let mut feeds = Feeds::new();
        feeds.set_stdin(Box::new(&b"one\ntwo\n"[..]));
        let (tx1, rx1) = crossbeam_channel::unbounded();
        let (tx2, rx2) = crossbeam_channel::unbounded();
        let held1 = feeds
            .open(&stdin_spec(), 0, &tx1, &mut Vec::new())
            .expect("opened");
        // The input is there at once; nothing is read while the launch goes on.
        assert!(
            rx1.recv_timeout(Duration::from_millis(300)).is_err(),
            "read before the launch ended"
        );
        let held2 = feeds
            .open(&stdin_spec(), 1, &tx2, &mut Vec::new())
            .expect("opened");
        feeds.opened();
        for (rx, port) in [(&rx1, 0), (&rx2, 1)] {
            let got: Vec<String> = (0..3).map(|_| next(rx)).collect();
            assert_eq!(
                got,
                [
                    format!("{port}: one"),
                    format!("{port}: two"),
                    format!("{port}: complete")
                ]
            );
        }
        drop((held1, held2));
    }
}
