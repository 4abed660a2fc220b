//! The inspector's marble lanes on a real fixture build, over real sockets: each track's recent
//! values with their time and the plugin version that produced them, sampled at a bounded
//! rate whatever the emission rate, capped in size, coloured by version across a reload, and
//! gone with their track.

use anyhow::Context;
use host::inspect::tally::{MARBLE_CAP, MARBLE_PERIOD, MARBLES_PER_TRACK};
use host::testkit::{EMISSION_TIMEOUT, Fixture};
use integration_tests::inspect::{emissions, snapshot_until_with, start};
use serde_json::Value;

/// `ticks` doubles and keeps multiples of 4; `fast` runs every millisecond (ten times the
/// marble rate); `long` emits texts far over the marble cap; `total` has a state, so each
/// snapshot waits for the state texts (the polling loops below do not spin); `bad`'s values
/// have a Debug impl that panics for multiples of 3.
const PLUGIN: &str = r#"
use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("ticks", interval_ms(5))
        .map(|n: u64| n * 2)
        .filter(|n: &u64| n % 4 == 0)
        .log();
    p.pipeline("fast", interval_ms(1))
        .map(|n: u64| n + 1);
    p.pipeline("long", interval_ms(5))
        .map(|n: u64| format!("{n}:{}", "é".repeat(400)));
    p.pipeline("total", interval_ms(5))
        .scan(0u64, |acc: u64, n: u64| acc + n);
    p.pipeline("bad", interval_ms(5)).map(|n: u64| Bad(n));
}

/// A value whose Debug text panics for multiples of 3.
struct Bad(u64);

impl std::fmt::Debug for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 % 3 == 0 {
            panic!("no text for {}", self.0);
        }
        write!(f, "Bad({})", self.0)
    }
}

plugin_api::export_plugin!(register);
"#;

/// Polls the snapshot, with every track's marbles, until `pred` holds.
fn snapshot_until(
    addr: std::net::SocketAddr,
    what: &str,
    pred: impl FnMut(&Value) -> bool,
) -> anyhow::Result<Value> {
    // Each snapshot waits for `total`'s state text: the loop does not spin.
    snapshot_until_with(addr, "?lanes=*", what, EMISSION_TIMEOUT, pred)
}

/// A marble: time, version, value.
type Marble = (u64, u64, String);

fn lane(s: &Value, path: &str) -> Option<Vec<Marble>> {
    let lane = s["marbles"]
        .as_array()?
        .iter()
        .find(|l| l["path"] == path)?;
    lane["marbles"]
        .as_array()?
        .iter()
        .map(|m| {
            Some((
                m["t_ms"].as_u64()?,
                m["version"].as_u64()?,
                m["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

fn lane_len(s: &Value, path: &str) -> usize {
    lane(s, path).map_or(0, |l| l.len())
}

fn numbers(lane: &[Marble], version: u64) -> Vec<u64> {
    lane.iter()
        .filter(|m| m.1 == version)
        .map(|m| {
            m.2.parse()
                .unwrap_or_else(|_| panic!("not a number: {m:?}"))
        })
        .collect()
}

#[test]
fn marbles_show_recent_values_by_version_at_a_bounded_rate() -> anyhow::Result<()> {
    let fixture = Fixture::new("inspector_marbles", PLUGIN);
    let (mut host, addr) = start(&fixture)?;
    host.wait_loaded()?;

    // Each track of `ticks` has a lane; the source's lane is the pipeline's own path.
    let paths = ["ticks", "ticks|0:map", "ticks|1:filter", "ticks|2:log"];
    let s = snapshot_until(addr, "marbles on every track of ticks", |s| {
        paths.iter().all(|p| lane_len(s, p) >= 5)
    })?;
    let now = s["now_ms"].as_u64().context("now_ms")?;
    for p in paths {
        let l = lane(&s, p).unwrap_or_default();
        assert!(l.len() <= MARBLES_PER_TRACK, "{p}: {l:?}");
        assert!(
            l.windows(2).all(|w| w[0].0 <= w[1].0),
            "{p} out of order: {l:?}"
        );
        assert!(l.iter().all(|m| m.0 <= now && m.1 == 1), "{p}: {l:?}");
    }
    // The values are the track's own: the source counts, the map doubles, the filter and
    // the log after it pass multiples of 4.
    let rule = [
        ("ticks|0:map", 2),
        ("ticks|1:filter", 4),
        ("ticks|2:log", 4),
    ];
    for (p, divisor) in rule {
        let got = numbers(&lane(&s, p).unwrap_or_default(), 1);
        assert!(got.iter().all(|&n| n % divisor == 0), "{p}: {got:?}");
    }

    // A long Debug text is capped, cut at a character boundary and marked.
    let long = lane(&s, "long|0:map").unwrap_or_default();
    assert!(!long.is_empty(), "{s:#}");
    for (_, _, v) in &long {
        assert!(
            v.len() <= MARBLE_CAP + '…'.len_utf8() && v.ends_with('…') && v.starts_with('"'),
            "{} bytes: {v:?}",
            v.len()
        );
    }

    // A Debug impl that panics costs its marble, nothing else: no error, the values flow on,
    // the lane holds the texts that could be written.
    let s = snapshot_until(addr, "bad's marbles", |s| lane_len(s, "bad|0:map") >= 3)?;
    let bad = lane(&s, "bad|0:map").unwrap_or_default();
    assert!(
        bad.iter().all(|m| m
            .2
            .strip_prefix("Bad(")
            .and_then(|x| x.strip_suffix(')'))
            .and_then(|x| x.parse::<u64>().ok())
            .is_some_and(|n| n % 3 != 0)),
        "{bad:?}"
    );
    host.drain();
    let errors = host.errors();
    assert!(errors.is_empty(), "{errors:?}");
    let before = emissions(&s, "bad|0:map");
    snapshot_until(addr, "bad's values flowing on", |s| {
        emissions(s, "bad|0:map") > before + 20
    })?;

    // The rate is bounded: `fast` emits a value a millisecond, its lane gets about one
    // marble per sampling period.
    let t0 = now;
    let n0 = emissions(&s, "fast|0:map");
    let s = snapshot_until(addr, "two seconds of fast values", |s| {
        s["now_ms"].as_u64().is_some_and(|t| t >= t0 + 2000)
    })?;
    let t1 = s["now_ms"].as_u64().context("now_ms")?;
    let n1 = emissions(&s, "fast|0:map");
    let fast = lane(&s, "fast|0:map").unwrap_or_default();
    let in_window = fast.iter().filter(|m| m.0 > t0 && m.0 <= t1).count() as u64;
    let periods = (t1 - t0) / MARBLE_PERIOD.as_millis() as u64;
    assert!(
        in_window >= 2 && in_window <= periods + 2,
        "{in_window} marbles in {} ms ({periods} sampling periods)",
        t1 - t0
    );
    assert!(
        n1 - n0 >= 5 * in_window,
        "{} values in the window, {in_window} marbles: not a sample",
        n1 - n0
    );

    // The page: the first pipeline's lanes at first (`bad`), then `ticks`' when chosen:
    // marbles on each of its tracks, their values in their titles.
    use integration_tests::cdp::{Browser, chromium, screenshot_dir};
    let mut page = Browser::open(&chromium()?, &format!("http://{addr}/"))?;
    let on_page = |path: &str| {
        format!(
            "[...document.querySelectorAll('[data-lane=\"{path}\"] circle.marble')].map(c => c.dataset.version + ':' + c.querySelector('title').textContent.split(': ').slice(1).join(': '))"
        )
    };
    let marbles = |v: &Value| -> Vec<(u64, String)> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let (version, value) = m.as_str()?.split_once(':')?;
                Some((version.parse().ok()?, value.to_owned()))
            })
            .collect()
    };
    page.eval_until(
        "bad's lanes",
        &on_page("bad|0:map"),
        EMISSION_TIMEOUT,
        |v| marbles(v).len() >= 3,
    )?;
    page.eval(
        "(() => { const s = document.getElementById('lanes-pipeline'); s.value = 'ticks'; \
         s.dispatchEvent(new Event('change')); })()",
    )?;
    let v = page.eval_until(
        "ticks' lanes",
        &on_page("ticks|1:filter"),
        EMISSION_TIMEOUT,
        |v| marbles(v).len() >= 3,
    )?;
    assert!(
        marbles(&v)
            .iter()
            .all(|(version, n)| *version == 1 && n.parse::<u64>().is_ok_and(|n| n % 4 == 0)),
        "{v}"
    );
    let lanes =
        page.eval("[...document.querySelectorAll('#lanes [data-lane]')].map(l => l.dataset.lane)")?;
    assert_eq!(
        lanes,
        serde_json::json!(["ticks", "ticks|0:map", "ticks|1:filter", "ticks|2:log"]),
        "the lanes of ticks, its source first"
    );

    // A reload: the map's new code gives multiples of 6 and its marbles say version 2; the
    // old code's marbles stay in the lane, marked version 1, before the new ones.
    fixture.edit("src/lib.rs", "n * 2)", "n * 6)");
    host.wait_reload()?;
    let s = snapshot_until(addr, "version 2 marbles", |s| {
        lane(s, "ticks|0:map").is_some_and(|l| l.iter().filter(|m| m.1 == 2).count() >= 3)
    })?;
    let map = lane(&s, "ticks|0:map").unwrap_or_default();
    let new = numbers(&map, 2);
    assert!(new.iter().all(|n| n % 6 == 0), "{map:?}");
    assert!(
        map.iter().any(|m| m.1 == 1) && map.windows(2).all(|w| w[0].1 <= w[1].1),
        "versions out of order: {map:?}"
    );
    assert!(map.iter().all(|m| m.1 == 1 || m.0 >= t1), "{map:?}");
    // The version's load time is on the same axis: after the edit, before now.
    let loaded = s["versions"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["version"] == 2))
        .and_then(|v| v["at_ms"].as_u64())
        .with_context(|| format!("no load time of version 2: {s:#}"))?;
    assert!(
        loaded >= t1 && loaded <= s["now_ms"].as_u64().unwrap_or(0),
        "loaded at {loaded}: {s:#}"
    );
    // On the page: version 2's marbles in the map's lane after version 1's, each version's
    // colour in the legend, the reload drawn across the lanes.
    let v = page.eval_until(
        "v2 marbles on the page",
        &on_page("ticks|0:map"),
        EMISSION_TIMEOUT,
        |v| marbles(v).iter().filter(|m| m.0 == 2).count() >= 2,
    )?;
    let got = marbles(&v);
    assert!(
        got.iter().any(|m| m.0 == 1)
            && got.windows(2).all(|w| w[0].0 <= w[1].0)
            && got
                .iter()
                .filter(|m| m.0 == 2)
                .all(|m| m.1.parse::<u64>().is_ok_and(|n| n % 6 == 0)),
        "{v}"
    );
    let reloads = page.eval(
        "[...document.querySelectorAll('[data-lane=\"ticks|0:map\"] line.reload')].map(l => l.dataset.version)",
    )?;
    assert_eq!(reloads, serde_json::json!(["2"]), "the reload line");
    let legend = page.eval("document.getElementById('lanes-legend').textContent")?;
    assert_eq!(legend, "v1v2", "the legend");
    page.screenshot(&screenshot_dir().join("marbles.png"))?;

    // A removed track's lane goes with it.
    fixture.edit("src/lib.rs", ".filter(|n: &u64| n % 4 == 0)", "");
    host.wait_reload()?;
    let s = snapshot_until(addr, "the log's lane at its new path", |s| {
        lane_len(s, "ticks|1:log") >= 1
    })?;
    assert!(lane(&s, "ticks|1:filter").is_none(), "{s:#}");
    assert!(lane(&s, "ticks|2:log").is_none(), "{s:#}");
    let lanes = "[...document.querySelectorAll('#lanes [data-lane]')].map(l => l.dataset.lane)";
    page.eval_until(
        "the page's lanes after the edit",
        lanes,
        EMISSION_TIMEOUT,
        |v| *v == serde_json::json!(["ticks", "ticks|0:map", "ticks|1:log"]),
    )?;
    host.stop();
    Ok(())
}
