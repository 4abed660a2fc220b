//! The inspector (`--inspect`) on real fixture builds, over real sockets: the snapshot's
//! fields and types, counts that rise and survive a reload, state texts, reloads and errors
//! listed, the event stream, the Host-header guard, a stuck client that costs the pipelines
//! nothing, run-time inner subscriptions as tracks (and their cap); and the page in a real
//! headless Chromium (`page_in_chromium`, and the inner rows in
//! `run_time_inner_subscriptions_are_tracks`).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use host::events::HostEvent;
use host::testkit::{BUILD_TIMEOUT, EMISSION_TIMEOUT, Fixture};
use integration_tests::inspect::{
    emissions, get, snapshot, snapshot_until, start, start_with, track,
};
use serde_json::Value;

/// `counter` ticks every 5 ms and keeps a running total; `faulty` panics on every third value;
/// `scoped` filters inside a keyed scope.
const PLUGIN: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("counter", interval_ms(5))
        .map(|_n: u64| 1u64)
        .scan(0u64, |acc: u64, n: u64| acc + n)
        .log();
    p.pipeline("faulty", interval_ms(5))
        .map(|n: u64| if n % 3 == 2 { panic!("boom at {n}") } else { n });
    p.pipeline("scoped", interval_ms(5))
        .scope("k", |c| c.map(|n: u64| n).filter(|n: &u64| n % 2 == 0))
        .map(|n: u64| n + 1);
}

plugin_api::export_plugin!(register);
"#;

#[test]
fn snapshot_counts_states_reloads_and_errors() -> anyhow::Result<()> {
    let fixture = Fixture::new("inspector_snapshot", PLUGIN);
    let (mut host, addr) = start(&fixture)?;
    host.wait_loaded()?;

    // Fields and their JSON types.
    let s = snapshot_until(addr, "counts and a state", EMISSION_TIMEOUT, |s| {
        emissions(s, "counter|1:scan") >= 5
            && track(s, "counter|1:scan").is_some_and(|t| t["state"].is_string())
    })?;
    assert_eq!(s["version"], 1, "{s:#}");
    for key in ["tracks", "reloads", "errors"] {
        assert!(s[key].is_array(), "{key} in {s:#}");
    }
    let paths: Vec<&str> = s["tracks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["path"].as_str())
        .collect();
    for p in [
        "counter",
        "counter|0:map",
        "counter|1:scan",
        "counter|2:log",
        "faulty",
        "faulty|0:map",
        "scoped|#k:scope",
        "scoped|#k:scope|0:map",
        "scoped|#k:scope|1:filter",
        "scoped|0:map",
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
    for t in s["tracks"].as_array().into_iter().flatten() {
        assert!(t["path"].is_string() && t["kind"].is_string(), "{t}");
        assert!(t["version"].is_u64() && t["emissions"].is_u64(), "{t}");
        assert!(t["state"].is_string() || t["state"].is_null(), "{t}");
    }
    // Only stateful operators have a state text; the scan's is its running total, which
    // counts the values the map emitted (each adds one).
    assert!(
        track(&s, "counter|0:map").is_some_and(|t| t["state"].is_null()),
        "{s:#}"
    );
    let total: u64 = track(&s, "counter|1:scan")
        .and_then(|t| t["state"].as_str())
        .unwrap_or("")
        .parse()?;
    assert!(
        total >= 1 && total <= emissions(&s, "counter|0:map"),
        "state {total} in {s:#}"
    );
    // The pipeline counts its source's values; a filterless chain emits all of them (a
    // count is read while the next value may be on its way, hence the slack of one).
    let source = emissions(&s, "counter");
    assert!(emissions(&s, "counter|0:map") + 1 >= source, "{s:#}");
    // The faulty map drops every third value: it emits about two thirds of its source.
    let (src, out) = (emissions(&s, "faulty"), emissions(&s, "faulty|0:map"));
    assert!(
        out < src && out + 1 >= src * 2 / 3,
        "faulty: {src} in, {out} out"
    );

    // A scope emits what its last operator emits; the filter inside passes the even values.
    let s = snapshot_until(addr, "the scope's count", EMISSION_TIMEOUT, |s| {
        emissions(s, "scoped|#k:scope|1:filter") > 1
    })?;
    let scope = emissions(&s, "scoped|#k:scope");
    assert_eq!(scope, emissions(&s, "scoped|#k:scope|1:filter"), "{s:#}");
    assert!(
        scope > 0 && scope <= emissions(&s, "scoped|#k:scope|0:map") / 2 + 1,
        "{s:#}"
    );

    // Counts rise.
    let before = emissions(&s, "counter|2:log");
    snapshot_until(addr, "the count to rise", EMISSION_TIMEOUT, |s| {
        emissions(s, "counter|2:log") >= before + 5
    })?;

    // Errors are listed with their path.
    let s = snapshot_until(addr, "an error", EMISSION_TIMEOUT, |s| {
        s["errors"].as_array().is_some_and(|e| !e.is_empty())
    })?;
    let e = &s["errors"][0];
    assert_eq!(e["event"], "error", "{e}");
    assert_eq!(e["path"], "faulty|0:map", "{e}");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("boom at")),
        "{e}"
    );

    // A reload appears with its outcome; counts carry over the swap.
    let counted = emissions(&snapshot(addr)?, "counter|1:scan");
    fixture.edit("src/lib.rs", "|_n: u64| 1u64", "|_n: u64| 2u64");
    host.wait_reload()?;
    let s = snapshot_until(addr, "the reload in the snapshot", EMISSION_TIMEOUT, |s| {
        s["version"] == 2 && s["reloads"].as_array().is_some_and(|r| r.len() == 1)
    })?;
    let r = &s["reloads"][0];
    assert_eq!(
        (r["event"].as_str(), r["version"].as_u64()),
        (Some("reload"), Some(2)),
        "{r}"
    );
    assert!(r["swapped"].as_u64().is_some_and(|n| n >= 4), "{r}");
    assert_eq!(r["reset"], 0, "{r}");
    // The replay: `counter`'s recent inputs all give other values (2 added, not 1).
    let replay = r["replay"].as_array().cloned().unwrap_or_default();
    let counter = replay
        .iter()
        .find(|x| x["pipeline"] == "counter")
        .unwrap_or_else(|| panic!("no replay of counter: {r}"));
    assert_eq!(counter["status"], "compared", "{counter}");
    assert!(
        counter["inputs"].as_u64().is_some_and(|n| n > 0)
            && counter["changed"] == counter["inputs"],
        "{counter}"
    );
    // Every value v1 logged was counted, whenever the swap came (a count restarted at the
    // swap would hold only the values since; the earlier reading alone could be outrun).
    // Once a v2 value is logged, every v1 value has been (one thread, in order), and each
    // was counted before it was logged: a snapshot taken then counts at least as many.
    host.wait_emission_from("counter", 2)?;
    host.drain();
    let v1_logged = host
        .emissions("counter")
        .iter()
        .filter(|(v, _)| *v == 1)
        .count() as u64;
    let after = snapshot(addr)?;
    assert!(
        emissions(&after, "counter|1:scan") >= counted.max(v1_logged),
        "counts restarted: {v1_logged} logged by v1, {after:#}"
    );
    // The swapped map's version moved on.
    assert!(
        track(&s, "counter|0:map").is_some_and(|t| t["version"].as_u64() >= Some(1)),
        "{s:#}"
    );

    // What the reload did to the scan's state, seen as the thread took the new code: kept,
    // the same text before and after. Then a seed change resets it: from the total to 100.
    let change = |s: &Value, version: u64| -> Option<Value> {
        s["state_changes"]
            .as_array()?
            .iter()
            .find(|c| c["version"] == version && c["path"] == "counter|1:scan")
            .cloned()
    };
    let s = snapshot_until(addr, "the v2 state change", EMISSION_TIMEOUT, |s| {
        change(s, 2).is_some()
    })?;
    let c = change(&s, 2).unwrap_or_default();
    assert_eq!(c["kept"], true, "{c}");
    assert!(c["before"].is_string() && c["before"] == c["after"], "{c}");
    fixture.edit("src/lib.rs", ".scan(0u64", ".scan(100u64");
    host.wait_reload()?;
    let s = snapshot_until(addr, "the v3 state change", EMISSION_TIMEOUT, |s| {
        change(s, 3).is_some()
    })?;
    let c = change(&s, 3).unwrap_or_default();
    assert_eq!(
        (&c["kept"], &c["after"]),
        (&Value::Bool(false), &Value::from("100")),
        "{c}"
    );
    let before: u64 = c["before"].as_str().unwrap_or("").parse()?;
    assert!(before >= 2, "{c}");
    host.stop();
    Ok(())
}

/// Reads server-sent events from `conn` until one's data satisfies `pred`.
fn read_event(
    reader: &mut BufReader<TcpStream>,
    what: &str,
    mut pred: impl FnMut(&Value) -> bool,
) -> anyhow::Result<Value> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader
            .read_line(&mut line)
            .with_context(|| format!("waiting for {what}"))?
            == 0
        {
            bail!("the event stream ended before {what}");
        }
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data)?;
            if pred(&v) {
                return Ok(v);
            }
        }
    }
}

fn open_stream(addr: SocketAddr) -> anyhow::Result<BufReader<TcpStream>> {
    open_sse(addr, "/api/events")
}

/// Opens a server-sent event stream at `path` and reads past its headers.
fn open_sse(addr: SocketAddr, path: &str) -> anyhow::Result<BufReader<TcpStream>> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(BUILD_TIMEOUT))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
        addr.port()
    )?;
    let mut reader = BufReader::new(conn);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    anyhow::ensure!(
        status.starts_with("HTTP/1.1 200"),
        "{path} answered {status:?}"
    );
    let mut header = String::new();
    let mut event_stream = false;
    loop {
        header.clear();
        reader.read_line(&mut header)?;
        if header.trim_end().is_empty() {
            break;
        }
        event_stream |= header.to_ascii_lowercase().contains("text/event-stream");
    }
    anyhow::ensure!(event_stream, "no text/event-stream content type");
    Ok(reader)
}

/// One `delta` of an updates stream: its data, its size in bytes and when it arrived.
#[derive(Debug)]
struct Delta {
    data: Value,
    bytes: usize,
    at: Instant,
}

/// Reads the next `delta` of an updates stream (skipping comments).
fn read_delta(reader: &mut BufReader<TcpStream>) -> anyhow::Result<Delta> {
    let mut line = String::new();
    let mut event = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).context("waiting for a delta")? == 0 {
            bail!("the updates stream ended");
        }
        let l = line.trim_end();
        if let Some(e) = l.strip_prefix("event: ") {
            event = e.to_owned();
        } else if let Some(data) = l.strip_prefix("data: ") {
            anyhow::ensure!(event == "delta", "a {event:?} message in the updates: {l}");
            return Ok(Delta {
                data: serde_json::from_str(data)?,
                bytes: data.len(),
                at: Instant::now(),
            });
        }
    }
}

/// Reads deltas until one satisfies `pred` (failing after `timeout`).
fn delta_until(
    reader: &mut BufReader<TcpStream>,
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let d = read_delta(reader)?;
        if pred(&d.data) {
            return Ok(d.data);
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {timeout:?} waiting for {what}; last delta {}",
                d.data
            );
        }
    }
}

#[test]
fn event_stream_guard_and_a_stuck_client() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "inspector_stream",
        r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("ticks", interval_ms(5)).map(|n: u64| n + 1).log();
}

plugin_api::export_plugin!(register);
"#,
    );
    let (mut host, addr) = start(&fixture)?;
    host.wait_loaded()?;

    // The Host-header guard: the inspector's own names pass, any other gets 403.
    let port = addr.port();
    let cases = [
        (Some(format!("127.0.0.1:{port}")), 200),
        (Some(format!("localhost:{port}")), 200),
        (Some(format!("evil.example:{port}")), 403),
        (Some(format!("localhost:{}", port.wrapping_add(1))), 403),
        (Some("localhost".to_owned()), 403),
        (None, 403),
    ];
    for (h, expected) in cases {
        for path in ["/", "/api/snapshot", "/api/events", "/api/updates"] {
            let status = if expected == 200 && matches!(path, "/api/events" | "/api/updates") {
                // A stream never ends: only its status line is read.
                let mut conn = TcpStream::connect(addr)?;
                write!(
                    conn,
                    "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n",
                    h.as_deref().unwrap_or("")
                )?;
                let mut line = String::new();
                BufReader::new(conn).read_line(&mut line)?;
                line.split_whitespace().nth(1).unwrap_or("0").parse()?
            } else {
                get(addr, path, h.as_deref())?.0
            };
            assert_eq!(status, expected, "{path} with Host {h:?}");
        }
    }
    let (status, page) = get(addr, "/", Some(&addr.to_string()))?;
    assert_eq!(status, 200);
    assert!(page.contains("<title>hmr inspector</title>"), "{page}");

    // A client that connects and never reads: emissions go on while a second client gets
    // them, then a reload, then the new version's emissions.
    let stuck = open_stream(addr)?;
    let mut live = open_stream(addr)?;
    let first = read_event(&mut live, "an emission", |v| v["event"] == "emission")?;
    let n: u64 = first["value"].as_str().unwrap_or("").parse()?;
    // More values than the stuck client's queue holds (`CLIENT_QUEUE`) pass meanwhile.
    let queue = host::inspect::CLIENT_QUEUE as u64;
    read_event(&mut live, "many more emissions", |v| {
        v["event"] == "emission"
            && v["value"].as_str().and_then(|x| x.parse::<u64>().ok()) > Some(n + queue + 100)
    })?;
    fixture.edit("src/lib.rs", "n + 1", "n + 1_000_000");
    let r = read_event(&mut live, "a reload", |v| v["event"] == "reload")?;
    assert_eq!(r["version"], 2, "{r}");
    read_event(&mut live, "an emission of v2", |v| {
        v["event"] == "emission" && v["version"] == 2
    })?;
    // The stuck client is still connected: nothing waited for it, nothing closed it. (Whether
    // its queue overflowed depends on the kernel's socket buffers, which absorb megabytes; the
    // hub's unit tests show the bounded queue dropping and counting.)
    drop(stuck);
    host.stop();
    Ok(())
}

/// `/api/updates`: batched deltas, a few a second whatever the rate of values: counts that
/// changed, state texts, the emissions of `log` operators as a count and the last few texts,
/// a reload with its new tracks after an edit, and a stream started from a snapshot's cursor
/// that sends what came after it.
#[test]
fn updates_are_batched_deltas() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "inspector_updates",
        r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("ticks", interval_ms(5))
        .map(|n: u64| n + 1)
        .scan(0u64, |acc: u64, n: u64| acc + n)
        .log();
    p.pipeline("fast", range(0, u64::MAX))
        .map(|n: u64| n ^ 1)
        .filter(|n: &u64| n % 7 != 0);
    p.pipeline("faulty", interval_ms(20))
        .map(|n: u64| if n % 2 == 1 { panic!("odd {n}") } else { n });
    p.pipeline("done", of(vec![1u64, 2, 3])).map(|n: u64| n * 2);
}

plugin_api::export_plugin!(register);
"#,
    );
    let (mut host, addr) = start(&fixture)?;
    host.wait_loaded()?;
    // A client that never reads its updates: nothing is queued for it, and it slows nobody
    // (the live client below sees the counts rise at full speed).
    // `done` has run its three values (before that, a delta could carry its count at 0, then
    // at 3).
    snapshot_until(addr, "done's three values", EMISSION_TIMEOUT, |s| {
        emissions(s, "done|0:map") == 3
    })?;
    let stuck = open_sse(addr, "/api/updates")?;
    let mut updates = open_sse(addr, "/api/updates")?;
    let count = |d: &Value, path: &str| d["counts"][path].as_u64();

    // Two seconds of deltas, under a source pushing as fast as it can.
    let window = Duration::from_secs(2);
    let first = read_delta(&mut updates)?;
    let mut deltas = vec![first];
    while deltas[deltas.len() - 1].at.duration_since(deltas[0].at) < window {
        deltas.push(read_delta(&mut updates)?);
    }
    let span = deltas[deltas.len() - 1].at.duration_since(deltas[0].at);
    // At most one every 250 ms (the first is sent at once; one more for arrival jitter).
    let allowed = (span.as_secs_f64() / 0.25).floor() as usize + 2;
    assert!(
        deltas.len() <= allowed,
        "{} deltas in {span:?}: more than 4 a second",
        deltas.len()
    );
    // The fast source pushed many more values than there were messages.
    let fast: Vec<u64> = deltas
        .iter()
        .filter_map(|d| count(&d.data, "fast"))
        .collect();
    let pushed = fast.last().copied().unwrap_or(0) - fast.first().copied().unwrap_or(0);
    assert!(
        fast.len() >= 3 && pushed > 1000 * deltas.len() as u64,
        "fast counts {fast:?} over {} deltas",
        deltas.len()
    );
    // A delta's size does not grow with the values: it carries counts, not values.
    let largest = deltas.iter().map(|d| d.bytes).max().unwrap_or(0);
    assert!(largest < 16 * 1024, "a delta of {largest} bytes");
    // Changed counts only: the map's count rises from delta to delta.
    let ticks: Vec<u64> = deltas
        .iter()
        .filter_map(|d| count(&d.data, "ticks|0:map"))
        .collect();
    assert!(
        ticks.len() >= 3 && ticks.windows(2).all(|w| w[0] < w[1]),
        "ticks|0:map counts {ticks:?}"
    );
    // A count that no longer changes (`done` completed at once) is sent once, then never.
    let done: Vec<Option<u64>> = deltas
        .iter()
        .map(|d| count(&d.data, "done|0:map"))
        .collect();
    assert!(
        done.iter().filter(|c| c.is_some()).count() <= 1,
        "done|0:map in the deltas: {done:?}"
    );
    // The log's values: per delta a count and at most the last 3 texts, never one per value.
    let logged: Vec<&Value> = deltas
        .iter()
        .filter_map(|d| d.data["emissions"].get("ticks"))
        .collect();
    let values: u64 = logged.iter().filter_map(|e| e["count"].as_u64()).sum();
    assert!(
        values >= 100 && values > 3 * logged.len() as u64,
        "{values} values in {} deltas",
        logged.len()
    );
    for e in &logged {
        let last = e["last"].as_array().map_or(0, Vec::len);
        assert!((1..=3).contains(&last), "{e}");
        assert_eq!(e["last"][0]["version"], 1, "{e}");
    }
    // The scan's state text comes (asked once a second), and errors with their version.
    delta_until(&mut updates, "the scan's state", EMISSION_TIMEOUT, |d| {
        d["states"]["ticks|1:scan"]
            .as_str()
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n > 0))
    })?;
    let d = delta_until(&mut updates, "errors", EMISSION_TIMEOUT, |d| {
        d["events"]["errors"].is_array()
    })?;
    let e = &d["events"]["errors"][0];
    assert_eq!(
        (&e["event"], &e["path"], &e["version"]),
        (
            &Value::from("error"),
            &Value::from("faulty|0:map"),
            &Value::from(1)
        ),
        "{e}"
    );

    // An edit: a delta carries the reload and the new version's tracks.
    fixture.edit("src/lib.rs", "n + 1", "n + 2");
    let d = delta_until(&mut updates, "the reload", BUILD_TIMEOUT, |d| {
        d["events"]["reloads"].is_array()
    })?;
    let r = &d["events"]["reloads"][0];
    assert_eq!(
        (&r["event"], &r["version"]),
        (&Value::from("reload"), &Value::from(2)),
        "{r}"
    );
    assert_eq!(d["tracks"]["version"], 2, "{d}");
    assert!(
        d["tracks"]["list"]
            .as_array()
            .is_some_and(|l| l.iter().any(|t| t["path"] == "ticks|1:scan")),
        "{d}"
    );
    // The v2 values come with their version.
    delta_until(&mut updates, "a v2 value", EMISSION_TIMEOUT, |d| {
        d["emissions"]["ticks"]["last"]
            .as_array()
            .is_some_and(|l| l.iter().any(|v| v["version"] == 2))
    })?;

    // A stream from a snapshot's cursor sends what came after the snapshot: the next reload,
    // not the one the snapshot holds.
    let s = snapshot(addr)?;
    let cursor = &s["cursor"];
    let query: Vec<String> = ["seq", "reloads", "errors", "changes"]
        .iter()
        .map(|k| format!("{k}={}", cursor[k]))
        .collect();
    let mut from = open_sse(addr, &format!("/api/updates?{}", query.join("&")))?;
    let first = read_delta(&mut from)?;
    assert!(first.data.get("tracks").is_none(), "{}", first.data);
    assert!(
        first.data["events"].get("reloads").is_none(),
        "{}",
        first.data
    );
    fixture.edit("src/lib.rs", "n + 2", "n + 3");
    let d = delta_until(&mut from, "the v3 reload", BUILD_TIMEOUT, |d| {
        d["events"]["reloads"].is_array()
    })?;
    let versions: Vec<&Value> = d["events"]["reloads"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| &r["version"])
        .collect();
    assert_eq!(versions, [&Value::from(3)], "{d}");
    drop(stuck);
    host.stop();
    Ok(())
}

use integration_tests::cdp::screenshot_dir;

#[test]
fn page_in_chromium() -> anyhow::Result<()> {
    use integration_tests::cdp::{Browser, chromium};
    let chromium = chromium()?;
    let fixture = Fixture::new("inspector_page", PLUGIN);
    let (mut host, addr) = start(&fixture)?;
    host.wait_loaded()?;
    // The page reads the snapshot and the updates, not the event stream (kept for tools).
    assert!(
        !host::inspect::PAGE.contains("/api/events")
            && host::inspect::PAGE.contains("/api/updates")
    );
    let mut page = Browser::open(&chromium, &format!("http://{addr}/"))?;
    let shots = screenshot_dir();

    // Track paths, then counts that rise.
    let rows = "[...document.querySelectorAll('tr.track')].map(r => r.dataset.path)";
    let paths = page.eval_until("the track rows", rows, EMISSION_TIMEOUT, |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|p| p == "counter|1:scan"))
    })?;
    for p in ["counter", "counter|0:map", "counter|2:log", "faulty|0:map"] {
        assert!(
            paths.as_array().is_some_and(|a| a.iter().any(|x| x == p)),
            "{p} not in {paths}"
        );
    }
    let count = r#"(() => { const c = document.querySelector('tr.track[data-path="counter|2:log"] td.emissions');
        return c ? Number(c.textContent.replace(/,/g, '')) : -1; })()"#;
    let first = page
        .eval_until("a count", count, EMISSION_TIMEOUT, |v| v.as_i64() > Some(0))?
        .as_i64()
        .unwrap_or(0);
    page.eval_until("the count to rise", count, EMISSION_TIMEOUT, |v| {
        v.as_i64() > Some(first + 10)
    })?;
    let state =
        r#"document.querySelector('tr.track[data-path="counter|1:scan"] td.state').textContent"#;
    page.eval_until("the scan's state", state, EMISSION_TIMEOUT, |v| {
        v.as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    })?;
    let errors = "[...document.querySelectorAll('#errors li.error')].map(e => e.dataset.path)";
    page.eval_until("the faulty map's error", errors, EMISSION_TIMEOUT, |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|p| p == "faulty|0:map"))
    })?;
    let pinned = r#"(() => { const b = document.querySelector('tr.track[data-path="faulty|0:map"] [data-errors]');
        return b ? Number(b.dataset.errors) : 0; })()"#;
    page.eval_until(
        "the errors pinned to the faulty map",
        pinned,
        EMISSION_TIMEOUT,
        |v| v.as_u64() > Some(0),
    )?;
    page.screenshot(&shots.join("1-running.png"))?;

    // The updates stream drops: the page loads the snapshot again and follows the updates
    // from there (its counts go on rising).
    let snapshots = "performance.getEntriesByType('resource').filter(e => e.name.includes('/api/snapshot')).length";
    let loaded = page.eval(snapshots)?.as_u64().unwrap_or(0);
    assert!(loaded >= 1, "the page loaded no snapshot");
    page.eval("stream.onerror()")?;
    page.eval_until(
        "the snapshot loaded again",
        snapshots,
        EMISSION_TIMEOUT,
        |v| v.as_u64() > Some(loaded),
    )?;
    let now = page.eval(count)?.as_i64().unwrap_or(0);
    page.eval_until(
        "the count to rise after reconnecting",
        count,
        EMISSION_TIMEOUT,
        |v| v.as_i64() > Some(now + 10),
    )?;

    // An edit: the new version, its tick on the rail, the swap marks, and the reload in the
    // live event log (which only the event stream fills).
    fixture.edit("src/lib.rs", "|_n: u64| 1u64", "|_n: u64| 2u64");
    host.wait_reload()?;
    page.eval_until(
        "v2 on the page",
        "document.getElementById('version').textContent",
        EMISSION_TIMEOUT,
        |v| v == "v2",
    )?;
    page.eval_until(
        "the v2 tick on the rail",
        "document.querySelectorAll('#rail li.reload[data-version=\"2\"]').length",
        EMISSION_TIMEOUT,
        |v| v == 1,
    )?;
    let marks = r#"[...document.querySelectorAll('tr.track [data-mark]')].map(b => b.closest('tr').dataset.path + '=' + b.dataset.mark)"#;
    let marked = page.eval_until("the swap marks", marks, EMISSION_TIMEOUT, |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|m| m == "counter|0:map=swapped"))
    })?;
    assert!(
        marked
            .as_array()
            .is_some_and(|a| a.iter().any(|m| m == "counter|1:scan=swapped")),
        "{marked}"
    );
    page.eval_until(
        "the scan's state kept across v2 on the rail",
        "document.querySelector('#rail li.reload[data-version=\"2\"] .details').textContent",
        EMISSION_TIMEOUT,
        |v| {
            v.as_str()
                .is_some_and(|t| t.contains("state counter|1:scan: ") && t.contains("(kept)"))
        },
    )?;
    // What the edit changed, replayed on the recent inputs: old and new side by side (the
    // map's 1 became 2, so each input adds 2 to its copy of the total instead of 1: after
    // the k-th input the new total is k more than the old).
    let replay = page.eval_until(
        "the replay of counter on the rail",
        r#"[...document.querySelectorAll('#rail li.reload[data-version="2"] table.replay[data-pipeline="counter"] tr')].map(tr => [...tr.children].map(c => c.textContent))"#,
        EMISSION_TIMEOUT,
        |v| v.as_array().is_some_and(|rows| rows.len() >= 2),
    )?;
    let rows = replay.as_array().cloned().unwrap_or_default();
    assert_eq!(
        rows[0],
        serde_json::json!(["input", "old code", "new code"]),
        "{replay}"
    );
    for (k, row) in rows.iter().enumerate().skip(1) {
        let cell = |i: usize| row[i].as_str().and_then(|t| t.parse::<u64>().ok());
        let (Some(_), Some(old), Some(new)) = (cell(0), cell(1), cell(2)) else {
            panic!("not three numbers: {row}");
        };
        assert_eq!(new, old + k as u64, "{replay}");
    }
    page.eval_until(
        "the reload in the event log",
        "document.getElementById('log').textContent",
        EMISSION_TIMEOUT,
        |v| v.as_str().is_some_and(|t| t.contains("reload v2")),
    )?;
    // Open the tick's details for the person looking at the screenshot.
    page.eval("document.querySelector('#rail li.reload[data-version=\"2\"]').click()")?;
    page.screenshot(&shots.join("2-reloaded.png"))?;

    // A broken build shows cargo's diagnostic over the page; the next good build clears it.
    let overlay = "document.getElementById('overlay').classList.contains('shown') ? document.getElementById('overlay-text').textContent : null";
    fixture.edit("src/lib.rs", "|_n: u64| 2u64", "|_n: u64| 2u64 + \"three\"");
    match host.wait_outcome()? {
        HostEvent::BuildFailed { .. } => {}
        other => bail!("expected a failed build, got {other:?}"),
    }
    let text = page.eval_until("the build-failed overlay", overlay, EMISSION_TIMEOUT, |v| {
        v.is_string()
    })?;
    assert!(
        text.as_str()
            .is_some_and(|t| t.contains("error[E0277]") && t.contains("src/lib.rs")),
        "{text}"
    );
    page.screenshot(&shots.join("3-build-failed.png"))?;
    fixture.edit("src/lib.rs", "|_n: u64| 2u64 + \"three\"", "|_n: u64| 3u64");
    host.wait_reload()?;
    page.eval_until(
        "the overlay to clear",
        overlay,
        EMISSION_TIMEOUT,
        Value::is_null,
    )?;
    page.eval_until(
        "v3 on the page",
        "document.getElementById('version').textContent",
        EMISSION_TIMEOUT,
        |v| v == "v3",
    )?;
    page.screenshot(&shots.join("4-fixed.png"))?;

    // Errors pinned to their track keep their history per version: the faulty map panicked
    // under v1 and under v3 (and v2). (The v2 tick clicked above selected v2: a second click
    // clears the selection.)
    page.eval("document.querySelector('#rail li.reload[data-version=\"2\"]').click()")?;
    let history = r#"(() => { const b = document.querySelector('tr.track[data-path="faulty|0:map"] [data-errors]');
        return b ? b.dataset.versions : ""; })()"#;
    page.eval_until(
        "the faulty map's errors under v1 and v3",
        history,
        EMISSION_TIMEOUT,
        |v| {
            v.as_str().is_some_and(|h| {
                h.split(',').any(|x| x.starts_with("1:"))
                    && h.split(',').any(|x| x.starts_with("3:"))
            })
        },
    )?;

    // Filter by version: v4 adds a filter to the faulty pipeline. With v4 selected the
    // tracks shown are those v4 swapped or added (marked so), the errors v4's only; with v1
    // selected, the tracks v1 added (not v4's filter).
    fixture.edit(
        "src/lib.rs",
        "else { n });",
        "else { n }).filter(|n: &u64| *n > 0);",
    );
    host.wait_reload()?;
    page.eval_until(
        "v4 on the page",
        "document.getElementById('version').textContent",
        EMISSION_TIMEOUT,
        |v| v == "v4",
    )?;
    let select = |v: &str| {
        format!(
            "(() => {{ const s = document.getElementById('filter-version'); s.value = '{v}'; \
             s.dispatchEvent(new Event('change')); return s.value; }})()"
        )
    };
    assert_eq!(page.eval(&select("4"))?, "4");
    let marked = page.eval_until("v4's marks", marks, EMISSION_TIMEOUT, |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|m| m == "faulty|1:filter=added"))
    })?;
    assert!(
        marked
            .as_array()
            .is_some_and(|a| a.iter().any(|m| m == "counter|1:scan=swapped")),
        "{marked}"
    );
    // The state column shows what v4 did to each state: the scan's total kept.
    page.eval_until(
        "v4's state change of the scan",
        r#"document.querySelector('tr.track[data-path="counter|1:scan"] td.state')?.textContent"#,
        EMISSION_TIMEOUT,
        |v| {
            v.as_str()
                .is_some_and(|t| t.contains(" → ") && t.ends_with("(kept)"))
        },
    )?;
    let error_versions =
        "[...document.querySelectorAll('#errors li.error')].map(e => e.dataset.version)";
    page.eval_until("v4's errors only", error_versions, EMISSION_TIMEOUT, |v| {
        v.as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|x| x == "4"))
    })?;
    page.screenshot(&shots.join("5-version-4.png"))?;
    assert_eq!(page.eval(&select("1"))?, "1");
    let rows = "[...document.querySelectorAll('tr.track')].map(r => r.dataset.path)";
    let shown = page.eval_until("v1's tracks", rows, EMISSION_TIMEOUT, |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|p| p == "counter|0:map"))
    })?;
    assert!(
        shown
            .as_array()
            .is_some_and(|a| !a.iter().any(|p| p == "faulty|1:filter")),
        "v4's filter shown under v1: {shown}"
    );
    page.eval_until("v1's errors only", error_versions, EMISSION_TIMEOUT, |v| {
        v.as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|x| x == "1"))
    })?;
    // Clicking a rail tick selects its version; clicking it again clears the selection.
    let tick = "(() => { document.querySelector('#rail li.reload[data-version=\"2\"]').click(); \
                return document.getElementById('filter-version').value; })()";
    assert_eq!(page.eval(tick)?, "2");
    assert_eq!(page.eval(tick)?, "");
    let all = page.eval_until("every track again", rows, EMISSION_TIMEOUT, |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|p| p == "faulty|1:filter"))
    })?;
    assert!(
        all.as_array().map_or(0, Vec::len) >= 12,
        "not every track: {all}"
    );
    page.screenshot(&shots.join("6-every-version.png"))?;
    host.stop();
    Ok(())
}

/// A user function stuck in one call shows as a lint on its track's path (issue: "show the
/// same as a lint in the inspector"), with the stuck event's fields; the lint stays while the
/// thread is stuck, through a reload that lists the pipeline as stuck.
#[test]
fn a_stuck_call_is_a_lint_on_its_track() -> anyhow::Result<()> {
    let fixture = Fixture::new("inspector_stuck", integration_tests::STUCK);
    let (mut host, addr) = start(&fixture)?;
    host.wait_for("a stuck event", EMISSION_TIMEOUT, |e| {
        matches!(e, HostEvent::Stuck { .. })
    })?;
    let lints = |s: &Value| s["lints"].as_array().cloned().unwrap_or_default();
    let s = snapshot_until(addr, "the stuck lint", EMISSION_TIMEOUT, |s| {
        !lints(s).is_empty()
    })?;
    let lint = &lints(&s)[0];
    assert_eq!(lint["event"], "stuck", "{lint}");
    assert_eq!(lint["pipeline"], "spin", "{lint}");
    assert_eq!(lint["path"], "spin|0:map", "{lint}");
    assert!(
        track(&s, "spin|0:map").is_some(),
        "the lint's path is a track"
    );
    // A reload while the thread is stuck keeps the lint (the reload lists it as stuck).
    fixture.edit("src/lib.rs", "n + 1", "n + 2");
    host.wait_reload()?;
    let s = snapshot(addr)?;
    assert_eq!(lints(&s).len(), 1, "{s}");
    host.stop();
    Ok(())
}

/// The tracks of `s` in the snapshot's order: (path, kind, version, emissions, inner) of
/// each, for the paths under `prefix`.
fn rows_under(s: &Value, prefix: &str) -> Vec<(String, String, u64, Option<u64>, bool)> {
    s["tracks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
        .map(|t| {
            (
                t["path"].as_str().unwrap_or("").to_owned(),
                t["kind"].as_str().unwrap_or("").to_owned(),
                t["version"].as_u64().unwrap_or(u64::MAX),
                t["emissions"].as_u64(),
                t["inner"] == true,
            )
        })
        .collect()
}

/// Run-time inner subscriptions in the snapshot, under a virtual clock (exact counts): a
/// `switch_map`'s live subscription and its inner stream's operators are listed under the
/// operator's path (`inner: true`, with their emission counts), the operator's row counts its
/// live subscriptions; a reload that edits the inner `map` keeps them (same paths, the
/// version moved on, the count carried over); the next outer value ends the subscription,
/// whose tracks leave the snapshot, and the new one's appear. The page shows them nested and
/// styled, with the live count on the operator's row.
#[test]
fn run_time_inner_subscriptions_are_tracks() -> anyhow::Result<()> {
    use integration_tests::{SETTLE, advance, plugin};
    let fixture = Fixture::new(
        "inspector_inner",
        &plugin(
            r#"    p.pipeline("s", interval_ms(1000).take(3))
        .switch_map(|n: u64| interval_ms(100).map(move |i: u64| n * 100 + i + 0))
        .log();"#,
        ),
    );
    let (options, time) = fixture.virtual_options();
    let (mut host, addr) = start_with(options)?;
    host.wait_loaded()?;
    assert!(time.settle(SETTLE));
    // t = 300: the outer value 0 at t = 0 started subscription #1, whose interval ticked at
    // 0, 100, 200 and 300.
    advance(&time, 300);
    let op = "s|1:switch_map";
    let sub1 = "s|1:switch_map|#1:inner";
    let map1 = "s|1:switch_map|#1:inner|0:map";
    let s = snapshot_until(addr, "subscription #1's tracks", EMISSION_TIMEOUT, |s| {
        emissions(s, map1) == 4
    })?;
    let row = |path: &str, kind: &str, version: u64, n: u64, inner: bool| {
        (path.to_owned(), kind.to_owned(), version, Some(n), inner)
    };
    // In path order: the subscription right under its operator, its `map` under it; the
    // subscription's track counts what its last operator emitted, as a scope does.
    assert_eq!(
        rows_under(&s, "s|"),
        [
            row("s|0:take", "take", 0, 1, false),
            row(op, "switch_map", 0, 4, false),
            row(sub1, "inner", 0, 4, true),
            row(map1, "map", 0, 4, true),
            row("s|2:log", "log", 0, 4, false),
        ],
        "{s:#}"
    );
    // The live count is on the operator's row only; registration tracks carry no `inner`.
    assert_eq!(
        track(&s, op).map(|t| &t["subscriptions"]),
        Some(&Value::from(1))
    );
    assert!(track(&s, "s|0:take").is_some_and(|t| t.get("subscriptions").is_none()));
    assert!(track(&s, "s").is_some_and(|t| t.get("inner").is_none()));
    assert_eq!(s["dropped"]["inner_tracks"], 0, "{s:#}");

    // The page: the inner rows nested and styled, the live count on the operator's row.
    // (It stays open: later subscriptions reach it through its updates stream.)
    use integration_tests::cdp::{Browser, chromium};
    let mut page = Browser::open(&chromium()?, &format!("http://{addr}/"))?;
    let inner_rows = "[...document.querySelectorAll('tr.track.inner')].map(r => r.dataset.path + '@' + parseInt(r.querySelector('td.path').style.paddingLeft))";
    {
        page.eval_until("the inner rows", inner_rows, EMISSION_TIMEOUT, |v| {
            *v == serde_json::json!([format!("{sub1}@38"), format!("{map1}@54")])
        })?;
        let live = format!(
            "(() => {{ const b = document.querySelector('tr.track[data-path=\"{op}\"] [data-subscriptions]'); return b ? b.dataset.subscriptions + ' ' + b.textContent : null; }})()"
        );
        page.eval_until(
            "the live count on the operator",
            &live,
            EMISSION_TIMEOUT,
            |v| v == "1 1 live",
        )?;
        page.screenshot(&screenshot_dir().join("5-inner-subscriptions.png"))?;
    }

    // A reload that edits the inner `map`: the same paths, re-projected and swapped (the
    // subscription's track and its `map` at version 1), the count carried over; the next
    // tick counts on.
    fixture.edit("src/lib.rs", "i + 0", "i + 50");
    host.wait_reload()?;
    assert!(time.settle(SETTLE));
    let s = snapshot_until(addr, "the re-projected map", EMISSION_TIMEOUT, |s| {
        track(s, map1).is_some_and(|t| t["version"] == 1)
    })?;
    assert_eq!(
        rows_under(&s, op),
        [
            row(op, "switch_map", 1, 4, false),
            row(sub1, "inner", 1, 4, true),
            row(map1, "map", 1, 4, true),
        ],
        "{s:#}"
    );
    advance(&time, 100); // t = 400
    snapshot_until(
        addr,
        "the re-projected map counting on",
        EMISSION_TIMEOUT,
        |s| emissions(s, map1) == 5,
    )?;

    // t = 1000: the outer value 1 ends subscription #1 and starts #2, whose interval ticks
    // at once.
    advance(&time, 600);
    let sub2 = "s|1:switch_map|#2:inner";
    let map2 = "s|1:switch_map|#2:inner|0:map";
    let s = snapshot_until(
        addr,
        "subscription #2 instead of #1",
        EMISSION_TIMEOUT,
        |s| track(s, sub1).is_none() && emissions(s, map2) == 1,
    )?;
    assert_eq!(
        rows_under(&s, op),
        [
            row(op, "switch_map", 1, 11, false),
            row(sub2, "inner", 0, 1, true),
            row(map2, "map", 0, 1, true),
        ],
        "{s:#}"
    );
    assert_eq!(
        track(&s, op).map(|t| &t["subscriptions"]),
        Some(&Value::from(1))
    );
    // The page learnt of it from its deltas (it loaded its one snapshot before): #1's rows
    // gone, #2's there with its count.
    page.eval_until(
        "subscription #2 on the page",
        inner_rows,
        EMISSION_TIMEOUT,
        |v| *v == serde_json::json!([format!("{sub2}@38"), format!("{map2}@54")]),
    )?;
    let count = format!(
        "(() => {{ const c = document.querySelector('tr.track[data-path=\"{map2}\"] td.emissions'); return c ? c.textContent : null; }})()"
    );
    page.eval_until(
        "#2's map count on the page",
        &count,
        EMISSION_TIMEOUT,
        |v| v == "1",
    )?;
    host.stop();
    Ok(())
}

/// A `merge_map` with more live inner subscriptions than the snapshot lists: it lists
/// `RUN_TIME_CAP` run-time tracks, whole subscriptions, oldest first, and counts the rest in
/// `dropped.inner_tracks`; the operator's row counts every live subscription.
#[test]
fn run_time_tracks_beyond_the_cap_are_counted_not_listed() -> anyhow::Result<()> {
    use host::inspect::inner::RUN_TIME_CAP;
    use integration_tests::{SETTLE, plugin};
    // Two run-time tracks per subscription (`#N:inner` and its `map`), all live (an
    // interval never completes).
    let subs = RUN_TIME_CAP / 2 + 1000;
    let fixture = Fixture::new(
        "inspector_inner_cap",
        &plugin(&format!(
            r#"    p.pipeline("m", range(0, {subs}))
        .merge_map(|n: u64| interval_ms(1000).map(move |i: u64| n + i));"#
        )),
    );
    let (options, time) = fixture.virtual_options();
    let (mut host, addr) = start_with(options)?;
    host.wait_loaded()?;
    assert!(time.settle(SETTLE));
    let op = "m|0:merge_map";
    let s = snapshot_until(addr, "every subscription live", EMISSION_TIMEOUT, |s| {
        track(s, op).is_some_and(|t| t["subscriptions"] == subs)
    })?;
    let inner: Vec<&Value> = s["tracks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["inner"] == true)
        .collect();
    assert_eq!(inner.len(), RUN_TIME_CAP);
    assert_eq!(
        s["dropped"]["inner_tracks"],
        (subs * 2 - RUN_TIME_CAP) as u64
    );
    // Whole subscriptions, the first ones.
    let mut listed: Vec<u64> = inner
        .iter()
        .filter(|t| t["kind"] == "inner")
        .filter_map(|t| {
            t["path"]
                .as_str()?
                .strip_prefix("m|0:merge_map|#")?
                .strip_suffix(":inner")?
                .parse()
                .ok()
        })
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, (1..=(RUN_TIME_CAP / 2) as u64).collect::<Vec<_>>());
    let paths: std::collections::HashSet<&str> =
        inner.iter().filter_map(|t| t["path"].as_str()).collect();
    for id in &listed {
        let map = format!("{op}|#{id}:inner|0:map");
        assert!(paths.contains(map.as_str()), "{map} not listed");
    }
    host.stop();
    Ok(())
}

/// 1,000 pipelines of 10 operators (one type, built in a loop) ticking every second, and one
/// pipeline pushing as fast as it can (a `range` batched through a `map` and a `filter`).
const SCALE: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("fast", range(0, u64::MAX))
        .map(|n: u64| n.wrapping_mul(3))
        .filter(|n: &u64| n & 1 == 0);
    for i in 0..1000 {
        p.pipeline(&format!("p{i:04}"), interval_ms(1000))
            .map(|n: u64| n + 1)
            .filter(|n: &u64| *n != u64::MAX)
            .map(|n: u64| n * 2)
            .scan(0u64, |acc: u64, n: u64| acc.wrapping_add(n))
            .map(|n: u64| n / 2)
            .filter(|n: &u64| *n != 1)
            .map(|n: u64| n + 3)
            .map(|n: u64| n ^ 5)
            .filter(|n: &u64| *n != u64::MAX)
            .map(|n: u64| n);
    }
}

plugin_api::export_plugin!(register);
"#;

/// The page at 10,000 tracks and 20 million values a second (issue 13: "it must stay
/// readable"): it shows the track count, keeps the DOM small (pipelines collapsed, only the
/// rows in view), shows the fast pipeline's rate, expands a pipeline to its tracks with
/// rising counts, scrolls to the last pipeline, stays responsive, and its deltas stay
/// bounded in size. Measures are printed.
#[test]
fn page_at_scale_in_chromium() -> anyhow::Result<()> {
    use integration_tests::cdp::{Browser, chromium};
    let chromium = chromium()?;
    let fixture = Fixture::new("inspector_scale", SCALE);
    let mut options = fixture.options();
    // The rate a person would see from an optimised build.
    options.release = true;
    let (mut host, addr) = start_with(options)?;
    host.wait_loaded()?;
    let tracks = snapshot(addr)?["tracks"].as_array().map_or(0, Vec::len);
    assert_eq!(tracks, 3 + 1000 * 11, "tracks in the snapshot");
    let mut page = Browser::open(&chromium, &format!("http://{addr}/"))?;
    let shots = screenshot_dir();

    // The track count, with the pipelines collapsed: a row per pipeline, and only those in
    // view (plus a margin) in the DOM.
    page.eval_until(
        "the track count",
        "Number(document.getElementById('summary')?.dataset.tracks || 0)",
        EMISSION_TIMEOUT,
        |v| v.as_u64() == Some(tracks as u64),
    )?;
    let dom_rows = "document.querySelectorAll('#tracks tr.track').length";
    let rows = page.eval(dom_rows)?.as_u64().unwrap_or(0);
    assert!(rows > 10 && rows <= 100, "{rows} rows in the DOM");
    assert_eq!(
        page.eval("document.querySelectorAll('tr.track[data-path^=\"p0001|\"]').length")?,
        0,
        "pipelines start collapsed"
    );

    // The fast pipeline's rate, as the page shows it.
    let rate = r#"(() => { const c = document.querySelector('tr.track[data-path="fast"] td.rate');
        return c ? Number(c.textContent.replace(/,/g, '')) : 0; })()"#;
    let mut best = 0u64;
    let shown = page.eval_until(
        "a rate of 20 million a second",
        rate,
        EMISSION_TIMEOUT,
        |v| {
            best = best.max(v.as_u64().unwrap_or(0));
            best >= 20_000_000
        },
    );
    println!("fast pipeline: the page showed at most {best} values/s");
    shown?;

    // A pipeline expanded shows its tracks, whose counts rise.
    page.eval("document.querySelector('[data-toggle=\"p0007\"]').click()")?;
    let count = r#"(() => { const c = document.querySelector('tr.track[data-path="p0007|9:map"] td.emissions');
        return c ? Number(c.textContent.replace(/,/g, '')) : -1; })()"#;
    let first = page
        .eval_until("p0007's last map", count, EMISSION_TIMEOUT, |v| {
            v.as_i64() > Some(0)
        })?
        .as_i64()
        .unwrap_or(0);
    let paths = page.eval(
        "[...document.querySelectorAll('tr.track[data-path^=\"p0007|\"]')].map(r => r.dataset.path)",
    )?;
    assert_eq!(paths.as_array().map_or(0, Vec::len), 10, "{paths}");
    page.eval_until("p0007's count to rise", count, EMISSION_TIMEOUT, |v| {
        v.as_i64() > Some(first)
    })?;
    page.screenshot(&shots.join("scale-1-expanded.png"))?;

    // Responsive while updates flow: DevTools round trips, each well under a second.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        page.eval("document.querySelectorAll('#tracks tr.track').length")?;
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("slowest Runtime.evaluate round trip: {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");

    // Scrolled to the end: the last pipeline, and still a bounded DOM.
    page.eval("(() => { const s = document.getElementById('scroller'); s.scrollTop = s.scrollHeight; })()")?;
    page.eval_until(
        "the last pipeline in view",
        "!!document.querySelector('tr.track[data-path=\"p0999\"]')",
        EMISSION_TIMEOUT,
        |v| v == true,
    )?;
    let rows = page.eval(dom_rows)?.as_u64().unwrap_or(0);
    assert!(rows > 10 && rows <= 100, "{rows} rows in the DOM");
    page.screenshot(&shots.join("scale-2-scrolled.png"))?;

    // What the updates cost the page: deltas bounded by the tracks (a count each at most),
    // whatever the values; the slowest one applied.
    let stats = page.eval(
        "(() => { const d = document.getElementById('status').dataset; \
         return [Number(d.deltas), Number(d.maxDeltaBytes), Number(d.maxApplyMs)]; })()",
    )?;
    println!("page updates: [deltas, largest bytes, slowest ms] = {stats}");
    let largest = stats[1].as_u64().unwrap_or(u64::MAX);
    assert!(largest <= 48 * tracks as u64, "a delta of {largest} bytes");
    host.stop();
    Ok(())
}
