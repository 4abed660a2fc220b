//! The inspector's HTTP server: axum's router on hyper's HTTP/1.1 connections, on a small
//! tokio runtime of the inspector's own (one thread, `hmr-inspector`, plus a blocking pool
//! for what waits or computes: the snapshot, the deltas).
//!
//! Every request passes [`guard`] first: a `Host` header that does not name the inspector
//! gets 403, a method other than GET 405; every answer carries `Cache-Control: no-store` and
//! `X-Content-Type-Options: nosniff`. At most [`MAX_CONNECTIONS`] connections are served at
//! once (one request each: no keep-alive); the next ones are answered 503. A client that
//! does not take what is written for [`WRITE_TIMEOUT`] is dropped ([`Deadline`]), and one
//! that sends no request head within it too. Nothing a client does reaches the pipelines:
//! the event stream reads the hub's bounded queue, the updates stream builds its deltas
//! from counters the pipelines write anyway.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{Stream, StreamExt, future, stream};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Sleep;

use super::{Hub, Inspected, MAX_CONNECTIONS, PAGE, host_allowed, updates};

/// How long a write to a client may wait for the client to read (and a request head may
/// take to arrive) before the client is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often an idle event stream sends a comment.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// How long the connections get to end when the inspector stops (their streams end at
/// once; this bounds a client that does not take the rest).
const GRACE: Duration = Duration::from_secs(1);

/// The inspector's stop signal, as each stream and connection sees it: it fires when the
/// [`watch::Sender`] it was made from drops.
#[derive(Clone, Debug)]
pub(super) struct Stop(watch::Receiver<()>);

impl Stop {
    /// A signal and the sender whose drop fires it.
    pub(super) fn new() -> (watch::Sender<()>, Stop) {
        let (tx, rx) = watch::channel(());
        (tx, Stop(rx))
    }

    /// Resolves once the inspector stops (at once if it has).
    pub(super) async fn stopped(&mut self) {
        // Nothing is ever sent: `changed` returns only when the sender is gone.
        while self.0.changed().await.is_ok() {}
    }
}

/// What the handlers read.
struct Served {
    inspected: Arc<Inspected>,
    addr: SocketAddr,
    stop: Stop,
}

/// The routes, behind [`guard`].
fn router(inspected: Arc<Inspected>, addr: SocketAddr, stop: Stop) -> Router {
    let served = Arc::new(Served {
        inspected,
        addr,
        stop,
    });
    Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/api/snapshot", get(snapshot))
        .route("/api/events", get(events))
        .route("/api/updates", get(updates))
        .fallback(not_found)
        .layer(from_fn_with_state(served.clone(), guard))
        .with_state(served)
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// Every request: the Host-header guard, then GET only; every answer: the headers that keep
/// it out of caches and content sniffing.
async fn guard(State(s): State<Arc<Served>>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok());
    let mut res = if !host_allowed(host, s.addr) {
        plain(
            StatusCode::FORBIDDEN,
            "forbidden: the Host header must name the inspector (127.0.0.1:PORT or localhost:PORT)\n",
        )
    } else if req.method() != Method::GET {
        let mut res = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "the inspector only reads: GET\n",
        );
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        res
    } else {
        next.run(req).await
    };
    private(&mut res);
    res
}

/// The headers every answer carries: not to be cached, nor its type sniffed.
fn private(res: &mut Response) {
    let headers = res.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
}

async fn not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "not found\n")
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

/// The snapshot, taken on the blocking pool: it waits up to [`super::STATE_WAIT`] for the
/// state texts. No marbles unless asked for (`?lanes=NAME`, or `?lanes=*`: all): at 10,000
/// tracks every lane would be tens of megabytes.
async fn snapshot(State(s): State<Arc<Served>>, RawQuery(query): RawQuery) -> Response {
    let inspected = s.inspected.clone();
    let lanes = updates::query_value(query.as_deref().unwrap_or(""), "lanes").unwrap_or_default();
    let body = tokio::task::spawn_blocking(move || {
        let only = (lanes != "*").then_some(lanes.as_str());
        serde_json::to_vec(&inspected.snapshot_with(only))
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|r| r.map_err(anyhow::Error::from));
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot take the snapshot: {e:#}\n"),
        )
            .into_response(),
    }
}

/// A server-sent event stream of `body`.
fn event_stream(body: impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static) -> Response {
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

async fn events(State(s): State<Arc<Served>>) -> Response {
    event_stream(stream_events(&s.inspected.hub, s.stop.clone()))
}

async fn updates(State(s): State<Arc<Served>>, RawQuery(query): RawQuery) -> Response {
    event_stream(updates::stream(
        s.inspected.clone(),
        query.as_deref().unwrap_or(""),
        s.stop.clone(),
    ))
}

/// `/api/events`: each host event as `data:` (what the hub queued for this client, in one
/// write as far as it goes), `event: dropped` with the total when the hub dropped events
/// for it, a comment every [`KEEPALIVE`] of silence; until the client goes or the
/// inspector stops.
fn stream_events(
    hub: &Hub,
    stop: Stop,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let (rx, dropped) = hub.subscribe();
    let head = stream::once(future::ready(Ok(Bytes::from_static(
        b": hmr inspector events\n\n",
    ))));
    let rest = stream::unfold(
        (rx, dropped, 0u64, stop),
        |(mut rx, dropped, mut told, mut stop)| async move {
            let mut out = Vec::new();
            tokio::select! {
                biased;
                () = stop.stopped() => return None,
                next = tokio::time::timeout(KEEPALIVE, rx.recv()) => match next {
                    Ok(Some(json)) => {
                        write_data(&mut out, &json);
                        // Whatever else is queued goes in the same write.
                        for _ in 0..256 {
                            let Ok(json) = rx.try_recv() else { break };
                            write_data(&mut out, &json);
                        }
                    }
                    Ok(None) => return None,
                    Err(_) => out.extend_from_slice(b": keepalive\n\n"),
                },
            }
            let lost = dropped.load(Ordering::Relaxed);
            if lost != told {
                out.extend_from_slice(
                    format!("event: dropped\ndata: {{\"dropped\":{lost}}}\n\n").as_bytes(),
                );
                told = lost;
            }
            Some((Ok(Bytes::from(out)), (rx, dropped, told, stop)))
        },
    );
    head.chain(rest)
}

fn write_data(out: &mut Vec<u8>, json: &str) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// The HTTP/1.1 settings of every connection: one request each, [`WRITE_TIMEOUT`] for the
/// request head.
fn http1() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(WRITE_TIMEOUT)
        .keep_alive(false);
    b
}

/// Accepts and serves connections until `stop` fires, then gives them [`GRACE`] to end.
pub(super) async fn run(
    listener: TcpListener,
    inspected: Arc<Inspected>,
    addr: SocketAddr,
    mut stop: Stop,
) {
    let app = router(inspected, addr, stop.clone());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let conn = tokio::select! {
            biased;
            () = stop.stopped() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            conn = listener.accept() => conn,
        };
        let Ok((tcp, _)) = conn else {
            // Out of descriptors, say: do not spin until one frees up.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(Deadline::new(tcp, WRITE_TIMEOUT));
        let mut stop = stop.clone();
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let service = TowerToHyperService::new(app.clone());
                conns.spawn(async move {
                    let _slot = slot;
                    let conn = http1().serve_connection(io, service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        () = stop.stopped() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            Err(_) => {
                conns.spawn(async move {
                    let service = hyper::service::service_fn(|_| async {
                        let mut res =
                            plain(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n");
                        private(&mut res);
                        Ok::<_, Infallible>(res)
                    });
                    tokio::select! {
                        _ = http1().serve_connection(io, service) => {}
                        () = stop.stopped() => {}
                    }
                });
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(GRACE, async { while conns.join_next().await.is_some() {} }).await;
}

/// A connection whose writes may wait at most `timeout` for the peer to read: a write that
/// stays pending that long fails (`TimedOut`), which ends the connection.
#[derive(Debug)]
pub(super) struct Deadline<T> {
    io: T,
    timeout: Duration,
    /// Armed while a write is pending; disarmed by any write that goes through.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<T> Deadline<T> {
    pub(super) fn new(io: T, timeout: Duration) -> Deadline<T> {
        Deadline {
            io,
            timeout,
            waiting: None,
        }
    }

    fn watch<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.waiting = None;
            return r;
        }
        let timeout = self.timeout;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if waiting.as_mut().poll(cx).is_ready() {
            self.waiting = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {timeout:?}"),
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Deadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Deadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::events::{ChannelSink, EventSink, HostEvent};
    use crate::inspect::Inspector;

    fn inspector() -> Inspector {
        let sink = Arc::new(ChannelSink(std::sync::mpsc::channel().0));
        Inspector::start("127.0.0.1:0".parse().expect("address"), sink).expect("inspector")
    }

    /// One request (`head`: the request line and headers, without the blank line); the
    /// status, the headers (lowercase) and the body, read to the end.
    fn request(addr: SocketAddr, head: &str) -> (u16, String, String) {
        let mut conn = TcpStream::connect(addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        write!(conn, "{head}\r\n\r\n").expect("write");
        let mut text = String::new();
        conn.read_to_string(&mut text).expect("read");
        let (headers, body) = text.split_once("\r\n\r\n").expect("end of headers");
        let status = headers
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        (status, headers.to_ascii_lowercase(), body.to_owned())
    }

    /// Opens `path` as an event stream and reads its head; the connection, to read on.
    fn open_stream(addr: SocketAddr, path: &str) -> BufReader<TcpStream> {
        let mut conn = TcpStream::connect(addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        write!(conn, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("write");
        let mut reader = BufReader::new(conn);
        let mut line = String::new();
        reader.read_line(&mut line).expect("status line");
        assert!(line.starts_with("HTTP/1.1 200"), "{path}: {line:?}");
        loop {
            line.clear();
            reader.read_line(&mut line).expect("header");
            if line.trim_end().is_empty() {
                return reader;
            }
        }
    }

    #[test]
    fn every_answer_by_host_method_and_path() {
        let inspector = inspector();
        let addr = inspector.addr();
        let own = format!("Host: {addr}");
        let evil = format!("Host: evil.example:{}", addr.port());
        let cases = [
            ("GET /", own.as_str(), 200, "text/html"),
            ("GET /index.html", &own, 200, "text/html"),
            ("GET /api/snapshot", &own, 200, "application/json"),
            ("GET /api/snapshot?x=1", &own, 200, "application/json"),
            ("GET /nope", &own, 404, "text/plain"),
            ("GET /api", &own, 404, "text/plain"),
            ("POST /", &own, 405, "text/plain"),
            ("HEAD /", &own, 405, "text/plain"),
            ("PUT /api/snapshot", &own, 405, "text/plain"),
            ("DELETE /nope", &own, 405, "text/plain"),
            // The guard comes first, whatever the method or path.
            ("GET /", &evil, 403, "text/plain"),
            ("POST /nope", &evil, 403, "text/plain"),
            ("GET /api/snapshot", "X-No-Host: 1", 403, "text/plain"),
        ];
        for (line, host, status, content_type) in cases {
            let (got, headers, body) = request(
                addr,
                &format!("{line} HTTP/1.1\r\n{host}\r\nConnection: close"),
            );
            assert_eq!(got, status, "{line} with {host}: {headers}\n{body}");
            for h in [
                format!("content-type: {content_type}"),
                "cache-control: no-store".to_owned(),
                "x-content-type-options: nosniff".to_owned(),
            ] {
                assert!(
                    headers.contains(&h),
                    "{line} with {host}: no {h} in {headers}"
                );
            }
            if status == 405 {
                assert!(headers.contains("allow: get"), "{headers}");
                // (A HEAD answer has no body.)
                if !line.starts_with("HEAD") {
                    assert_eq!(body, "the inspector only reads: GET\n");
                }
            }
        }
        // The streams too (their head only: they never end by themselves).
        for path in ["/api/events", "/api/updates"] {
            let mut conn = TcpStream::connect(addr).expect("connect");
            conn.set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            write!(conn, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("write");
            let mut reader = BufReader::new(conn);
            let mut head = String::new();
            while !head.ends_with("\r\n\r\n") {
                reader.read_line(&mut head).expect("head");
            }
            let head = head.to_ascii_lowercase();
            for h in [
                "content-type: text/event-stream",
                "cache-control: no-store",
                "x-content-type-options: nosniff",
            ] {
                assert!(head.contains(h), "{path}: no {h} in {head}");
            }
        }
    }

    #[test]
    fn connections_over_the_limit_get_503_until_one_ends() {
        let inspector = inspector();
        let addr = inspector.addr();
        let own = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close");
        let mut streams: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| open_stream(addr, "/api/events"))
            .collect();
        let (status, headers, body) = request(addr, &own);
        let start: String = body.chars().take(80).collect();
        assert_eq!((status, start.as_str()), (503, "too many connections\n"));
        for h in ["cache-control: no-store", "x-content-type-options: nosniff"] {
            assert!(headers.contains(h), "no {h} in {headers}");
        }
        // A client that goes gives its slot back.
        drop(streams.pop());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, _, _) = request(addr, &own);
            if status == 200 {
                break;
            }
            assert_eq!(status, 503);
            assert!(
                Instant::now() < deadline,
                "the slot of a closed stream was not given back"
            );
        }
    }

    #[test]
    fn dropping_the_inspector_ends_every_stream_even_with_a_client_that_does_not_read() {
        let inspector = inspector();
        let addr = inspector.addr();
        // Clients that read everything, on threads of their own, to the end.
        let read_all = |path: &'static str| {
            let mut reader = open_stream(addr, path);
            std::thread::spawn(move || {
                let mut all = Vec::new();
                let read = reader.read_to_end(&mut all);
                (path, read.map(|_| all))
            })
        };
        let mut readers = vec![read_all("/api/updates")];
        // A client that reads nothing while events of 4 KiB come until the server can no
        // longer write to it: the hub then drops events for it.
        let _stuck = open_stream(addr, "/api/events");
        let hub = inspector.inspected.hub.clone();
        let value = "x".repeat(4 * 1024);
        let emit = || {
            hub.event(HostEvent::Emission {
                pipeline: "p".into(),
                version: 1,
                value: value.clone(),
            })
        };
        let stuck_queue = {
            let clients = crate::inspect::lock(&hub.clients);
            assert_eq!(clients.len(), 1, "one event-stream client");
            clients[0].dropped.clone()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while stuck_queue.load(Ordering::Relaxed) == 0 {
            assert!(
                Instant::now() < deadline,
                "the stuck client's queue never filled"
            );
            emit();
        }
        readers.push(read_all("/api/events"));
        emit();
        // Still served (not yet dropped for its write deadline): the stop has to end it.
        assert_eq!(hub.n_clients.load(Ordering::Relaxed), 2);
        let started = Instant::now();
        drop(inspector);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "the inspector took {took:?} to stop"
        );
        // The live streams ended cleanly: the last chunk (a zero-length one) came, so the
        // server ended them; it did not cut the connections.
        for reader in readers {
            let (path, all) = reader.join().expect("reader");
            let all = all.unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(
                all.ends_with(b"\r\n0\r\n\r\n"),
                "{path} did not end with the last chunk: {:?}",
                String::from_utf8_lossy(&all[all.len().saturating_sub(64)..])
            );
        }
    }

    #[test]
    fn a_write_the_peer_does_not_take_fails_after_the_deadline() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let timeout = Duration::from_millis(100);
        // (the peer reads, the write goes through)
        for reads in [true, false] {
            runtime.block_on(async {
                let (ours, mut theirs) = tokio::io::duplex(16);
                let mut conn = Deadline::new(ours, timeout);
                let reader = tokio::spawn(async move {
                    let mut got = Vec::new();
                    if reads {
                        // Slower than the deadline in all, but each read in time.
                        let mut b = [0u8; 16];
                        while got.len() < 256 {
                            tokio::time::sleep(timeout / 4).await;
                            let n = theirs.read(&mut b).await.expect("read");
                            got.extend_from_slice(&b[..n]);
                        }
                    }
                    (got.len(), theirs)
                });
                let wrote =
                    tokio::time::timeout(Duration::from_secs(10), conn.write_all(&[7u8; 256]))
                        .await
                        .expect("the write neither went through nor failed");
                if reads {
                    wrote.expect("a write the peer takes in time");
                    assert_eq!(reader.await.expect("reader").0, 256);
                } else {
                    let e = wrote.expect_err("a write nobody takes went through");
                    assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
                }
            });
        }
    }
}
