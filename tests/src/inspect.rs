//! The inspector's API as the tests read it: a host with `--inspect` on a free port, GETs
//! with a chosen Host header, snapshots polled until a condition holds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use host::events::HostEvent;
use host::testkit::{BUILD_TIMEOUT, Fixture, Harness};
use serde_json::Value;

/// A host with the inspector on a free port; returns it and the inspector's address.
pub fn start(fixture: &Fixture) -> anyhow::Result<(Harness, SocketAddr)> {
    start_with(fixture.options())
}

/// [`start`] with `options` (a virtual clock, say).
pub fn start_with(mut options: host::session::Options) -> anyhow::Result<(Harness, SocketAddr)> {
    options.inspect = Some("127.0.0.1:0".parse()?);
    let mut host = Harness::start(&options)?;
    let url = match host.wait_for("the inspector event", BUILD_TIMEOUT, |e| {
        matches!(e, HostEvent::Inspector { .. })
    })? {
        HostEvent::Inspector { url } => url,
        _ => unreachable!("wait_for returns a matching event"),
    };
    let addr = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix('/'))
        .with_context(|| format!("the url {url:?} is not http://ADDR/"))?
        .parse()?;
    Ok((host, addr))
}

/// One GET with `host` as the Host header (`None`: no Host header); status and body.
pub fn get(addr: SocketAddr, path: &str, host: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\n{host}Connection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// `GET /api/snapshot` (with no marbles).
pub fn snapshot(addr: SocketAddr) -> anyhow::Result<Value> {
    snapshot_with(addr, "")
}

/// `GET /api/snapshot` with `query` (`?lanes=*`: every track's marbles).
pub fn snapshot_with(addr: SocketAddr, query: &str) -> anyhow::Result<Value> {
    let (status, body) = get(
        addr,
        &format!("/api/snapshot{query}"),
        Some(&addr.to_string()),
    )?;
    anyhow::ensure!(status == 200, "snapshot answered {status}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// Polls the snapshot until `pred` holds; fails after `timeout` with the last snapshot.
pub fn snapshot_until(
    addr: SocketAddr,
    what: &str,
    timeout: Duration,
    pred: impl FnMut(&Value) -> bool,
) -> anyhow::Result<Value> {
    snapshot_until_with(addr, "", what, timeout, pred)
}

/// [`snapshot_until`] with `query` (see [`snapshot_with`]).
pub fn snapshot_until_with(
    addr: SocketAddr,
    query: &str,
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = snapshot_with(addr, query)?;
        if pred(&s) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last snapshot: {s:#}");
        }
        // The snapshot itself waits (for state texts), so this loop does not spin.
    }
}

pub fn track<'a>(s: &'a Value, path: &str) -> Option<&'a Value> {
    s["tracks"].as_array()?.iter().find(|t| t["path"] == path)
}

pub fn emissions(s: &Value, path: &str) -> u64 {
    track(s, path)
        .and_then(|t| t["emissions"].as_u64())
        .unwrap_or(0)
}
