//! `tcp_lines`: every line of every connection to a listening address.
//!
//! [`TcpLines::bind`] binds at once (so "address already in use" is the caller's error to
//! report) and starts the accept task; each accepted connection is a tokio task of its own
//! that reads lines (a client that sends nothing costs a parked task and its socket, no
//! thread; its read buffer is allocated when it first sends). Every line goes to every
//! current subscriber, in order per connection; lines of different connections interleave as
//! they arrive.
//!
//! - A line over [`MAX_LINE`] bytes (its ending not counted) is an `Error` naming the address
//!   and the peer, and that connection is closed; the bytes of a line are never held beyond
//!   that limit.
//! - A line that is not UTF-8 is an `Error` naming the address, the peer and the line number
//!   (from 1 on that connection); the line is dropped and reading goes on.
//! - A last line without a newline is delivered when its client closes the connection.
//! - A connection that fails (reset by its client) is a `Notice`.
//!
//! Dropping the [`TcpLines`] aborts the accept task, which owns the listener and the
//! connection tasks (a `JoinSet`): all are closed.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::task::JoinSet;

pub use super::MAX_LINE;
use super::{Fanout, LineSplitter, Outlet, SourceEvent, SourceTask};

/// The most bytes read from a connection at once.
pub const CHUNK: usize = 16 * 1024;

/// Connections the kernel queues before the accept task takes them (std's listeners queue
/// 128: a burst of 200 connections then waits a second for SYN retransmits).
pub const LISTEN_BACKLOG: u32 = 1024;

/// How long the accept task pauses after a failed accept (out of file descriptors), so it
/// does not spin.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A listening `tcp_lines` source (see the module doc).
pub struct TcpLines {
    addr: SocketAddr,
    fanout: Arc<Fanout>,
    _accept: SourceTask,
}

impl std::fmt::Debug for TcpLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpLines")
            .field("addr", &self.addr)
            .finish()
    }
}

impl TcpLines {
    /// Binds `addr` now (its error is returned as is) and accepts connections on `rt`.
    pub fn bind(rt: &Handle, addr: &str) -> std::io::Result<TcpLines> {
        let listener = {
            let _entered = rt.enter();
            listen(addr)?
        };
        let local = listener.local_addr()?;
        let fanout = Arc::new(Fanout::default());
        let accept = SourceTask::spawn(rt, accept_loop(listener, local, fanout.clone()));
        Ok(TcpLines {
            addr: local,
            fanout,
            _accept: accept,
        })
    }

    /// The address it listens on (the port chosen when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Delivers every line from now on to `outlet`; the id is for [`TcpLines::unsubscribe`].
    pub fn subscribe(&self, outlet: Arc<dyn Outlet>) -> u64 {
        self.fanout.subscribe(outlet)
    }

    /// Stops delivering to a subscriber; an unknown id is ignored.
    pub fn unsubscribe(&self, id: u64) {
        self.fanout.unsubscribe(id);
    }
}

/// Listens on the first address `addr` resolves to that can be bound (as
/// `std::net::TcpListener::bind` does), with a [`LISTEN_BACKLOG`]; the last error if none.
fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        let socket = if a.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As std does: a port whose last connections are in TIME_WAIT can be bound again.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "could not resolve to any address",
        )
    }))
}

async fn accept_loop(listener: TcpListener, addr: SocketAddr, fanout: Arc<Fanout>) {
    // Dropped with this task: aborts every connection task.
    let mut connections: JoinSet<()> = JoinSet::new();
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    last_error = None;
                    connections.spawn(connection(stream, addr, peer, fanout.clone()));
                }
                Err(e) => {
                    let msg = format!("tcp_lines {addr}: cannot accept a connection: {e}");
                    if last_error.as_ref() != Some(&msg) {
                        fanout.send(SourceEvent::Error(msg.clone()));
                        last_error = Some(msg);
                    }
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            // Reaps finished connections.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(
    mut stream: TcpStream,
    addr: SocketAddr,
    peer: SocketAddr,
    fanout: Arc<Fanout>,
) {
    let too_long = || {
        SourceEvent::Error(format!(
            "tcp_lines {addr}: a line over 1 MiB from {peer}; connection closed"
        ))
    };
    // An idle client holds no buffer.
    if stream.readable().await.is_err() {
        return;
    }
    let mut buf = vec![0; CHUNK];
    let mut splitter = LineSplitter::default();
    let mut lines = Vec::new();
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let msg = format!("tcp_lines {addr}: connection from {peer} failed: {e}");
                fanout.send(SourceEvent::Notice(msg));
                return;
            }
        };
        splitter.push(&buf[..n], &mut lines);
        for (number, bytes) in lines.drain(..) {
            if bytes.len() > MAX_LINE {
                fanout.send(too_long());
                return;
            }
            deliver(&fanout, addr, peer, number, bytes).await;
        }
        if splitter.held_over_limit() {
            fanout.send(too_long());
            return;
        }
    }
    if let Some((number, bytes)) = splitter.finish() {
        if bytes.len() > MAX_LINE {
            fanout.send(too_long());
            return;
        }
        deliver(&fanout, addr, peer, number, bytes).await;
    }
}

async fn deliver(fanout: &Fanout, addr: SocketAddr, peer: SocketAddr, number: u64, bytes: Vec<u8>) {
    fanout.wait_for_room().await;
    fanout.send(match String::from_utf8(bytes) {
        Ok(s) => SourceEvent::Line(s),
        Err(_) => SourceEvent::Error(format!(
            "tcp_lines {addr}: invalid utf-8 from {peer} line {number}"
        )),
    });
}

#[cfg(test)]
mod tests {
    use super::super::ChannelOutlet;
    use super::super::test_support::{WAIT, expect, line, next, runtime};
    use super::*;
    use std::io::{Read, Write};

    fn connect(addr: SocketAddr) -> std::net::TcpStream {
        let s = std::net::TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    }

    fn send(s: &mut std::net::TcpStream, bytes: &[u8]) {
        s.write_all(bytes)
            .unwrap_or_else(|e| panic!("cannot send to the source: {e}"));
    }

    /// The connection was closed by the source (end of stream, or a reset).
    fn expect_closed(s: &mut std::net::TcpStream) {
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the connection closed, got {other:?}"),
        }
    }

    #[test]
    fn lines_of_two_connections_reach_every_subscriber() {
        let rt = runtime();
        let src = TcpLines::bind(rt.handle(), "127.0.0.1:0").unwrap();
        let (a, ra) = ChannelOutlet::new();
        let (b, rb) = ChannelOutlet::new();
        src.subscribe(a);
        let idb = src.subscribe(b);
        let mut c1 = connect(src.local_addr());
        let mut c2 = connect(src.local_addr());
        send(&mut c1, b"one 1\n");
        expect(&ra, &[line("one 1")]);
        send(&mut c2, b"two 1\r\ntwo ");
        expect(&ra, &[line("two 1")]);
        send(&mut c1, b"one 2\n");
        expect(&ra, &[line("one 2")]);
        expect(&rb, &[line("one 1"), line("two 1"), line("one 2")]);
        src.unsubscribe(idb);
        send(&mut c2, b"2\n");
        expect(&ra, &[line("two 2")]);
        // A last line without newline counts when its client closes.
        send(&mut c1, b"one 3");
        drop(c1);
        expect(&ra, &[line("one 3")]);
        assert_eq!(rb.try_iter().collect::<Vec<_>>(), []);
    }

    #[test]
    fn an_address_in_use_is_an_error_at_bind() {
        let rt = runtime();
        let first = TcpLines::bind(rt.handle(), "127.0.0.1:0").unwrap();
        let err = TcpLines::bind(rt.handle(), &first.local_addr().to_string()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    }

    #[test]
    fn a_line_over_1_mib_closes_its_connection_and_others_go_on() {
        // (line length, ending, delivered)
        let cases: &[(usize, &[u8], bool)] = &[
            (MAX_LINE, b"\n", true),
            (MAX_LINE, b"\r\n", true),
            (MAX_LINE + 1, b"\n", false),
            (MAX_LINE + 1, b"\r\n", false),
            (3 * MAX_LINE, b"\n", false),
            // Never ended: closed once the bytes held pass the limit.
            (2 * MAX_LINE, b"", false),
        ];
        let rt = runtime();
        let src = TcpLines::bind(rt.handle(), "127.0.0.1:0").unwrap();
        let addr = src.local_addr();
        let (outlet, rx) = ChannelOutlet::new();
        src.subscribe(outlet);
        let mut other = connect(addr);
        for (i, &(len, ending, delivered)) in cases.iter().enumerate() {
            let mut long = connect(addr);
            let peer = long.local_addr().unwrap();
            let mut bytes = vec![b'x'; len];
            bytes.extend_from_slice(ending);
            // The source may close before everything is sent (3 MiB).
            let _ = long.write_all(&bytes);
            let got = next(&rx, &line("a long line, or its error"));
            if delivered {
                match got {
                    SourceEvent::Line(s) => assert!(
                        s.len() == len && s.bytes().all(|b| b == b'x'),
                        "case {i}: a line of {} bytes",
                        s.len()
                    ),
                    other => panic!("case {i}: expected a line of {len} bytes, got {other:?}"),
                }
                send(&mut long, b"same connection\n");
                expect(&rx, &[line("same connection")]);
            } else {
                let msg =
                    format!("tcp_lines {addr}: a line over 1 MiB from {peer}; connection closed");
                assert_eq!(got, SourceEvent::Error(msg), "case {i}");
                expect_closed(&mut long);
            }
            let still = format!("still {i}\n");
            send(&mut other, still.as_bytes());
            expect(&rx, &[line(still.trim_end())]);
        }
    }

    #[test]
    fn invalid_utf8_is_an_error_naming_the_peer_and_line() {
        let rt = runtime();
        let src = TcpLines::bind(rt.handle(), "127.0.0.1:0").unwrap();
        let addr = src.local_addr();
        let (outlet, rx) = ChannelOutlet::new();
        src.subscribe(outlet);
        let mut c = connect(addr);
        let peer = c.local_addr().unwrap();
        send(&mut c, b"ok\n\xff\xfe\nnext\n");
        let msg = format!("tcp_lines {addr}: invalid utf-8 from {peer} line 2");
        expect(&rx, &[line("ok"), SourceEvent::Error(msg), line("next")]);
    }

    #[test]
    fn dropping_it_closes_the_listener_and_every_connection() {
        let rt = runtime();
        let src = TcpLines::bind(rt.handle(), "127.0.0.1:0").unwrap();
        let addr = src.local_addr();
        let (outlet, rx) = ChannelOutlet::new();
        src.subscribe(outlet);
        let mut c = connect(addr);
        send(&mut c, b"hello\n");
        expect(&rx, &[line("hello")]);
        drop(src);
        expect_closed(&mut c);
        // The listener is gone: connecting is refused, and the port can be bound again.
        let refused = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{refused}"
        );
        let again = TcpLines::bind(rt.handle(), &addr.to_string()).unwrap();
        assert_eq!(again.local_addr(), addr);
    }
}
