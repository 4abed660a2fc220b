//! Higher-order operators on real builds, under a virtual clock: inner subscriptions created
//! at run time keep running through reloads (re-projected, swapped in place: an inner
//! interval continues its count through new code), a changed inner source restarts the
//! subscription with the reason told, a `concat_map` queue survives a reload, a panic in a
//! projection is reported at the operator, and an inner type change resets the operator.

use host::events::HostEvent;
use host::testkit::{EMISSION_TIMEOUT, Fixture, Harness};
use integration_tests::{SETTLE, advance, numbers, plugin, reload_fields, reload_version, value};

fn notices(host: &mut Harness) -> Vec<String> {
    host.drain();
    host.history()
        .iter()
        .filter_map(|e| match e {
            HostEvent::Notice { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// A live inner interval keeps its count through a reload that edits the inner `map` (the
/// subscription is re-projected and swapped, not restarted), and a reload that edits the
/// inner source restarts it from the new projection, saying why.
#[test]
fn a_live_inner_subscription_is_swapped_not_restarted() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "higher_switch",
        &plugin(
            r#"    p.pipeline("s", interval_ms(1000).take(3))
        .switch_map(|n: u64| interval_ms(100).map(move |i: u64| n * 100 + i + 0))
        .log();"#,
        ),
    );
    let (options, time) = fixture.virtual_options();
    let mut host = Harness::start(&options)?;
    let (v1, _) = host.wait_loaded()?;
    assert!(time.settle(SETTLE));
    advance(&time, 350);
    assert_eq!(
        numbers(&mut host, "s"),
        [(v1, 0), (v1, 1), (v1, 2), (v1, 3)]
    );

    fixture.edit("src/lib.rs", "i + 0", "i + 50");
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let (swapped, reset, added, removed) = reload_fields(&reload);
    // The pipeline's four tracks and the live subscription's `map`, re-projected before the
    // reload was reported.
    assert_eq!(swapped, 5, "{reload:?}");
    assert!(
        reset.is_empty() && added.is_empty() && removed.is_empty(),
        "{reload:?}"
    );
    assert!(time.settle(SETTLE));
    advance(&time, 100); // t = 450: the inner interval's 5th value, through v2
    assert_eq!(
        numbers(&mut host, "s"),
        [(v1, 0), (v1, 1), (v1, 2), (v1, 3), (v2, 54)]
    );
    // Reported in the reload, not again in a notice.
    assert_eq!(notices(&mut host), Vec::<String>::new());

    // t = 500 to 900: the swapped inner interval goes on through v2. t = 1000: the outer value
    // 1 ends subscription #1 and starts #2 (#1's tick due at the same instant may come first).
    advance(&time, 550);
    let got = numbers(&mut host, "s");
    let swapped_on: Vec<(u64, i64)> = (55..60).map(|x| (v2, x)).collect();
    assert_eq!(got.get(5..10), Some(&swapped_on[..]), "{got:?}");
    assert!(
        got[10..] == [(v2, 150)] || got[10..] == [(v2, 60), (v2, 150)],
        "{got:?}"
    );

    fixture.edit("src/lib.rs", "interval_ms(100)", "interval_ms(40)");
    let reload = host.wait_reload()?;
    let v3 = reload_version(&reload);
    let (_, reset, _, _) = reload_fields(&reload);
    assert_eq!(
        reset,
        [
            "s|1:switch_map|#2:inner: its source changed (interval_ms(100) -> interval_ms(40)); \
             restarted from the new projection"
        ],
        "{reload:?}"
    );
    assert!(time.settle(SETTLE));
    // Restarted at t = 1000 from the new projection: 0 at once, then every 40 ms.
    let before = numbers(&mut host, "s").len();
    advance(&time, 80);
    let got = numbers(&mut host, "s");
    assert_eq!(
        got[before - 1..],
        [(v3, 150), (v3, 151), (v3, 152)],
        "{got:?}"
    );
    host.stop();
    Ok(())
}

/// `concat_map`'s queue of outer values is state: a reload in the middle keeps it, and the
/// queued values run through the new code, in order, then the pipeline completes.
#[test]
fn a_concat_map_queue_survives_a_reload() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "higher_concat",
        &plugin(
            r#"    p.pipeline("c", range(0, 3))
        .concat_map(|n: u64| interval_ms(100).take(3).map(move |i: u64| n * 10 + i + 0))
        .log();"#,
        ),
    );
    let (options, time) = fixture.virtual_options();
    let mut host = Harness::start(&options)?;
    let (v1, _) = host.wait_loaded()?;
    assert!(time.settle(SETTLE));
    advance(&time, 100);
    assert_eq!(numbers(&mut host, "c"), [(v1, 0), (v1, 1)]);
    fixture.edit("src/lib.rs", "i + 0", "i + 1000");
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    assert!(time.settle(SETTLE));
    for _ in 0..8 {
        advance(&time, 100);
    }
    let done = host.wait_for(
        "completed",
        EMISSION_TIMEOUT,
        |e| matches!(e, HostEvent::Completed { pipeline, .. } if pipeline == "c"),
    )?;
    assert!(
        matches!(done, HostEvent::Completed { emissions: 3, .. }),
        "{done:?}"
    );
    assert_eq!(
        numbers(&mut host, "c"),
        [
            (v1, 0),
            (v1, 1),
            (v2, 1002),
            (v2, 1010),
            (v2, 1011),
            (v2, 1012),
            (v2, 1020),
            (v2, 1021),
            (v2, 1022)
        ]
    );
    host.stop();
    Ok(())
}

/// A reloader driven from the test (no watcher: the test reloads after each edit) whose
/// `stdin_lines` read what the test writes, under a virtual clock.
struct StdinHost {
    reloader: host::reloader::Reloader,
    rx: std::sync::mpsc::Receiver<HostEvent>,
    history: Vec<HostEvent>,
    stdin: tokio::io::DuplexStream,
    io: tokio::runtime::Runtime,
    time: std::sync::Arc<host::clock::VirtualClock>,
}

impl StdinHost {
    fn start(fixture: &Fixture) -> anyhow::Result<StdinHost> {
        let (mut reloader, rx) = integration_tests::channel_reloader(fixture.build_config(false)?)?;
        let (clock, time) = host::clock::Clock::virtual_clock();
        let (stdin, reader) = tokio::io::duplex(1 << 16);
        reloader.runtime().set_clock(clock);
        reloader.runtime().set_stdin(Box::new(reader));
        let io = tokio::runtime::Builder::new_current_thread().build()?;
        Ok(StdinHost {
            reloader,
            rx,
            history: Vec::new(),
            stdin,
            io,
            time,
        })
    }

    /// Builds and loads (or reloads) the fixture as it is now; returns the version.
    fn reload(&mut self) -> anyhow::Result<u64> {
        match self.reloader.reload() {
            host::reloader::Outcome::Loaded { version } => {
                assert!(self.time.settle(SETTLE), "the pipelines settled");
                self.drain();
                Ok(version)
            }
            other => {
                self.drain();
                anyhow::bail!("no reload ({other:?}): {:?}", self.history)
            }
        }
    }

    /// Writes `line` and a newline to the host's stdin.
    fn write_line(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt as _;
        let text = format!("{line}\n");
        let stdin = &mut self.stdin;
        self.io
            .block_on(stdin.write_all(text.as_bytes()))
            .expect("write to the host's stdin");
    }

    fn drain(&mut self) {
        self.history.extend(self.rx.try_iter());
    }

    /// Waits until `pipeline` has emitted `n` values in all (a line from stdin arrives on
    /// its own time: the virtual clock does not know of it).
    fn wait_emissions(&mut self, pipeline: &str, n: usize) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + EMISSION_TIMEOUT;
        while self.emissions(pipeline).len() < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => self.history.push(e),
                Err(_) => anyhow::bail!(
                    "fewer than {n} emissions of {pipeline} within {EMISSION_TIMEOUT:?}: {:?}",
                    self.history
                ),
            }
        }
        Ok(())
    }

    fn emissions(&self, pipeline: &str) -> Vec<(u64, i64)> {
        self.history
            .iter()
            .filter_map(|e| match e {
                HostEvent::Emission {
                    pipeline: p,
                    version,
                    value: v,
                } if p == pipeline => Some((*version, value(v))),
                _ => None,
            })
            .collect()
    }

    fn advance(&mut self, ms: u64) {
        advance(&self.time, ms);
        self.drain();
    }

    /// The last reload event and the notices since it.
    fn last_reload(&self) -> (&HostEvent, Vec<&HostEvent>) {
        let at = self
            .history
            .iter()
            .rposition(|e| matches!(e, HostEvent::Reload { .. } | HostEvent::Loaded { .. }))
            .expect("a load");
        let notices = self.history[at..]
            .iter()
            .filter(|e| matches!(e, HostEvent::Notice { .. }))
            .collect();
        (&self.history[at], notices)
    }

    fn errors(&self) -> Vec<&HostEvent> {
        self.history
            .iter()
            .filter(|e| matches!(e, HostEvent::Error { .. }))
            .collect()
    }
}

/// What a person reads for `event` (the binary's text output).
fn printed(event: &HostEvent) -> String {
    let mut f = host::events::Formatter::human(true);
    f.line(event).unwrap_or_default()
}

/// The issue's headline case: a `switch_map` over `stdin_lines` with an inner interval. Each
/// line starts an inner subscription (ending the previous one). An edit of the inner `map`
/// swaps the live subscription in place: its count goes on (n, n + 1) through the new code,
/// no restart. An edit of the inner source resets it: the notice (as printed) says which
/// subscription and why, and the count starts again from the new projection, at the new
/// period only.
#[test]
fn a_switch_map_over_stdin_swaps_its_live_inner_interval_and_resets_it_on_a_source_change()
-> anyhow::Result<()> {
    let fixture = Fixture::new(
        "higher_stdin",
        &plugin(
            r#"    p.pipeline("s", stdin_lines())
        .switch_map(|line: String| {
            let base: u64 = line.trim().parse().unwrap_or(0);
            interval_ms(100).map(move |i: u64| base * 1000 + i + 0)
        })
        .log();"#,
        ),
    );
    let mut host = StdinHost::start(&fixture)?;
    let v1 = host.reload()?;
    host.write_line("1");
    host.wait_emissions("s", 1)?; // the inner interval's first value comes at once
    for _ in 0..3 {
        host.advance(100);
    }
    assert_eq!(
        host.emissions("s"),
        [(v1, 1000), (v1, 1001), (v1, 1002), (v1, 1003)]
    );

    // An edit of the inner `map`: swapped, the count goes on through the new code.
    fixture.edit("src/lib.rs", "i + 0", "i + 500");
    let v2 = host.reload()?;
    let (reload, notices) = host.last_reload();
    let (swapped, reset, added, removed) = reload_fields(reload);
    assert!(
        reset.is_empty() && added.is_empty() && removed.is_empty(),
        "{reload:?}"
    );
    // The pipeline's three tracks and the live subscription's `map`, re-projected before
    // the reload was reported (so no notice after it).
    assert_eq!(swapped, 4, "{reload:?}");
    assert!(notices.is_empty(), "{notices:?}");
    host.advance(100);
    host.advance(100);
    assert_eq!(
        host.emissions("s")[4..],
        [(v2, 1504), (v2, 1505)],
        "the count went on (4, 5) through v2's code"
    );

    // A second line switches to a new inner subscription (#2), from its start.
    host.write_line("2");
    host.wait_emissions("s", 7)?;
    host.advance(100);
    assert_eq!(host.emissions("s")[6..], [(v2, 2500), (v2, 2501)]);

    // An edit of the inner source: reset, restarted from the new projection, reason printed.
    fixture.edit("src/lib.rs", "interval_ms(100)", "interval_ms(40)");
    let v3 = host.reload()?;
    let (reload, notices) = host.last_reload();
    let (_, reset, _, _) = reload_fields(reload);
    let why = "s|0:switch_map|#2:inner: its source changed (interval_ms(100) -> \
               interval_ms(40)); restarted from the new projection";
    assert_eq!(reset, [why], "{reload:?}");
    // As a person reads it.
    let line = printed(reload);
    assert!(
        line.contains("its source changed (interval_ms(100) -> interval_ms(40))"),
        "{line}"
    );
    assert!(notices.is_empty(), "{notices:?}");
    for _ in 0..6 {
        host.advance(40);
    }
    // The old interval's timer, still due at its own deadline, does nothing: the port ticks
    // once every 40 ms (its count would run at twice the rate otherwise).
    assert_eq!(
        host.emissions("s")[8..],
        (2500..2507).map(|x| (v3, x)).collect::<Vec<_>>(),
        "restarted at 0 through v3, then every 40 ms"
    );
    assert!(host.errors().is_empty(), "{:?}", host.errors());
    Ok(())
}

/// A panic in a projection is an `error` at the higher-order operator's path; that outer
/// value is dropped. Under `--on-panic drop` (the default) the later outer values are
/// projected as before and the pipeline completes; under `--on-panic error` the pipeline
/// ends there. On the batch path (`range`) and the one-value path (an interval) alike. The
/// batch path feeds a chain with a higher-order operator a few values a call: the second
/// panic (19) is in a later call than the first, and what follows it is pushed again from
/// the value after it, not from the start of its call.
#[test]
fn a_panic_in_a_projection_is_an_error_at_the_operator_and_drops_that_value() -> anyhow::Result<()>
{
    use host::runtime::PanicPolicy;
    let fixture = Fixture::new(
        "higher_panic",
        &plugin(
            r#"    p.pipeline("batch", range(0, 25))
        .switch_map(|n: u64| {
            if n == 2 || n == 19 {
                panic!("no inner stream for {n}");
            }
            of(vec![n * 10, n * 10 + 1])
        })
        .log();
    p.pipeline("ticks", interval_ms(100).take(5))
        .switch_map(|n: u64| {
            if n == 2 {
                panic!("no inner stream for {n}");
            }
            interval_ms(30).take(2).map(move |i: u64| n * 10 + i)
        })
        .log();"#,
        ),
    );
    // Under `drop`, each pipeline's values and panics; under `error`, both end at 2.
    let batch: Vec<i64> = (0..25)
        .filter(|n| ![2, 19].contains(n))
        .flat_map(|n| [n * 10, n * 10 + 1])
        .collect();
    let ticks: Vec<i64> = vec![0, 1, 10, 11, 30, 31, 40, 41];
    // Per pipeline: its values, and the outer values whose projection panicked.
    type Outcome<'a> = (&'a [i64], &'a [u64]);
    let cases: [(PanicPolicy, [Outcome; 2], bool); 2] = [
        (
            PanicPolicy::Drop,
            [(&batch, &[2, 19]), (&ticks, &[2])],
            true,
        ),
        (
            PanicPolicy::Error,
            [(&[0, 1, 10, 11], &[2]), (&[0, 1, 10, 11], &[2])],
            false,
        ),
    ];
    for (policy, wants, completes) in cases {
        let (mut options, time) = fixture.virtual_options();
        options.on_panic = policy;
        let mut host = Harness::start(&options)?;
        host.wait_loaded()?;
        assert!(time.settle(SETTLE));
        for _ in 0..10 {
            advance(&time, 50);
        }
        host.drain();
        for ((pipeline, path), (want, panics)) in [
            ("batch", "batch|0:switch_map"),
            ("ticks", "ticks|1:switch_map"),
        ]
        .into_iter()
        .zip(wants)
        {
            let got: Vec<i64> = numbers(&mut host, pipeline)
                .iter()
                .map(|(_, x)| *x)
                .collect();
            assert_eq!(got, want, "{pipeline} under {policy:?}");
            let errors: Vec<(String, String)> = host
                .history()
                .iter()
                .filter_map(|e| match e {
                    HostEvent::Error {
                        pipeline: p,
                        path,
                        message,
                    } if p == pipeline => Some((path.clone(), message.clone())),
                    _ => None,
                })
                .collect();
            assert_eq!(
                errors.len(),
                panics.len(),
                "{pipeline} under {policy:?}: {errors:?}"
            );
            for ((at, message), n) in errors.iter().zip(panics) {
                assert_eq!(at, path, "{errors:?}");
                assert!(
                    message.contains(&format!("no inner stream for {n}")),
                    "{errors:?}"
                );
            }
            let completed = host
                .history()
                .iter()
                .any(|e| matches!(e, HostEvent::Completed { pipeline: p, .. } if p == pipeline));
            assert_eq!(completed, completes, "{pipeline} under {policy:?}");
        }
        host.stop();
    }
    Ok(())
}

/// An inner type change (the inner stream's values go from `u64` to `String`, the
/// downstream adjusted) changes the higher-order operator's signature: the reload resets
/// it, saying why, its live subscription ends (a notice says so), and the next outer
/// value's inner stream runs the new code, with the new type.
#[test]
fn an_inner_type_change_resets_the_operator_and_ends_its_subscriptions() -> anyhow::Result<()> {
    let v1 = r#"    p.pipeline("t", interval_ms(1000).take(3))
        .switch_map(|n: u64| interval_ms(100).map(move |i: u64| n * 100 + i))
        .map(|x: u64| x + 0)
        .log();"#;
    let v2 = r#"    p.pipeline("t", interval_ms(1000).take(3))
        .switch_map(|n: u64| interval_ms(100).map(move |i: u64| format!("{}", n * 100 + i)))
        .map(|x: String| x + "s")
        .log();"#;
    let fixture = Fixture::new("higher_type", &plugin(v1));
    let (options, time) = fixture.virtual_options();
    let mut host = Harness::start(&options)?;
    let (first, _) = host.wait_loaded()?;
    assert!(time.settle(SETTLE));
    advance(&time, 350);
    host.drain();
    let raw = |host: &Harness| host.emissions("t");
    let at = |v: u64, xs: &[&str]| -> Vec<(u64, String)> {
        xs.iter().map(|x| (v, (*x).to_owned())).collect()
    };
    assert_eq!(raw(&host), at(first, &["0", "1", "2", "3"]));

    fixture.write("src/lib.rs", &plugin(v2));
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let (_, reset, _, _) = reload_fields(&reload);
    assert_eq!(
        reset,
        [
            "t|1:switch_map: output type changed from u64 to alloc::string::String",
            "t|2:map: input type changed from u64 to alloc::string::String",
            "t|3:log: input type changed from u64 to alloc::string::String"
        ],
        "{reload:?}"
    );
    assert!(time.settle(SETTLE));
    let told = notices(&mut host);
    assert_eq!(
        told,
        [format!(
            "re-projected 1 inner subscription(s) with version {v2}: t|1:switch_map|#1:inner: \
             ended (its higher-order operator was reset or removed)"
        )]
    );
    // The subscription ended: nothing until the next outer value (t = 1000), whose inner
    // stream runs v2's code.
    advance(&time, 550); // t = 900
    assert_eq!(raw(&host).len(), 4, "{:?}", raw(&host));
    advance(&time, 100);
    advance(&time, 100);
    host.drain();
    assert_eq!(
        raw(&host)[4..],
        at(v2, &["\"100s\"", "\"101s\""]),
        "{:?}",
        host.history()
    );
    host.drain();
    let errors = host.errors();
    assert!(errors.is_empty(), "{errors:?}");
    host.stop();
    Ok(())
}

/// The four operators side by side on one outer stream (values 0, 1, 2 at t = 0, 100, 200)
/// and one inner stream (`n * 10 + i` for i in 0..4, every 70 ms from its start), with a
/// reload at t = 150 that adds 1000 to what the inner streams emit: `switch_map` ends the
/// live inner stream at each outer value, `merge_map` interleaves all of them, `concat_map`
/// queues, `exhaust_map` ignores the outer values that come while one is live. Each live
/// inner subscription is swapped in place by the reload (a value at t > 150 is v2's, with
/// its +1000; a value queued before the reload is projected by v2). Each completes when the
/// outer stream and every inner stream (and `concat_map`'s queue) have, not before.
#[test]
fn the_four_operators_on_a_virtual_clock_across_a_reload() -> anyhow::Result<()> {
    let body = |op: &str| {
        format!(
            "    p.pipeline(\"{op}\", interval_ms(100).take(3))\n        \
             .{op}_map(|n: u64| interval_ms(70).take(4).map(move |i: u64| n * 10 + i + K))\n        \
             .log();\n"
        )
    };
    let ops = ["switch", "merge", "concat", "exhaust"];
    let text: String = std::iter::once("    const K: u64 = 0;\n".to_owned())
        .chain(ops.iter().map(|op| body(op)))
        .collect();
    let fixture = Fixture::new("higher_four", &plugin(&text));
    // (operator, [(t, value)], t of its completion, inner subscriptions live at t = 150).
    type Case = (&'static str, &'static [(u64, i64)], u64, usize);
    let cases: [Case; 4] = [
        (
            "switch",
            &[
                (0, 0),
                (70, 1),
                (100, 10),
                (170, 1011),
                (200, 1020),
                (270, 1021),
                (340, 1022),
                (410, 1023),
            ],
            410,
            1,
        ),
        (
            "merge",
            &[
                (0, 0),
                (70, 1),
                (100, 10),
                (140, 2),
                (170, 1011),
                (200, 1020),
                (210, 1003),
                (240, 1012),
                (270, 1021),
                (310, 1013),
                (340, 1022),
                (410, 1023),
            ],
            410,
            2,
        ),
        (
            "concat",
            &[
                (0, 0),
                (70, 1),
                (140, 2),
                (210, 1003),
                (210, 1010),
                (280, 1011),
                (350, 1012),
                (420, 1013),
                (420, 1020),
                (490, 1021),
                (560, 1022),
                (630, 1023),
            ],
            630,
            1,
        ),
        ("exhaust", &[(0, 0), (70, 1), (140, 2), (210, 1003)], 210, 1),
    ];
    let run = run_schedule(&fixture, 700, 150, || {
        fixture.edit("src/lib.rs", "K: u64 = 0", "K: u64 = 1000");
    })?;
    let (v1, v2) = (run.v1, run.v2);
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    // Each live subscription's `take` and `map` count in the reload with the pipelines'
    // tracks: they were re-projected before the reload was reported (so no notice follows).
    let Some(HostEvent::Reload {
        swapped, tracks, ..
    }) = &run.reload
    else {
        panic!("no reload: {:?}", run.reload);
    };
    let live: usize = cases.iter().map(|c| c.3).sum();
    let registered = tracks.iter().filter(|t| !t.path.contains(":inner")).count();
    assert_eq!(*swapped, registered + 2 * live, "{:?}", run.reload);
    // The tracking store holds the live subscriptions' run-time tracks, under their
    // operators: the reload's track list shows them.
    let inner: Vec<&str> = tracks
        .iter()
        .filter(|t| t.path.starts_with("switch|") && t.path.contains(":inner"))
        .map(|t| t.path.as_str())
        .collect();
    assert_eq!(
        inner,
        [
            "switch|1:switch_map|#2:inner",
            "switch|1:switch_map|#2:inner|0:take",
            "switch|1:switch_map|#2:inner|1:map"
        ]
    );
    assert!(run.notices.is_empty(), "{:?}", run.notices);
    for (op, want, done, _) in cases {
        let want: Vec<(u64, u64, i64)> = want
            .iter()
            .map(|&(t, x)| (t, if t <= 150 { v1 } else { v2 }, x))
            .collect();
        let (got, completed) = &run.seen[op];
        assert_eq!(got, &want, "{op}_map");
        assert_eq!(*completed, Some(done), "{op}_map's completion");
    }
    Ok(())
}

/// (t, version, value) of a pipeline's emissions, and the time it completed.
type Timeline = (Vec<(u64, u64, i64)>, Option<u64>);

/// What [`run_schedule`] saw.
struct Schedule {
    v1: u64,
    v2: u64,
    /// Per pipeline: (t, version, value) of its emissions, and the time it completed.
    seen: std::collections::BTreeMap<String, Timeline>,
    notices: Vec<String>,
    /// (path, message) of each error.
    errors: Vec<(String, String)>,
    /// The reload event.
    reload: Option<HostEvent>,
}

/// Runs `fixture` under a virtual clock in steps of 10 ms until `until`, with `edit` made
/// at `reload_at` (the reload waited for before the clock moves on). Times are to the step.
fn run_schedule(
    fixture: &Fixture,
    until: u64,
    reload_at: u64,
    edit: impl FnOnce(),
) -> anyhow::Result<Schedule> {
    let (options, time) = fixture.virtual_options();
    let mut host = Harness::start(&options)?;
    let (v1, _) = host.wait_loaded()?;
    assert!(time.settle(SETTLE));
    let mut out = Schedule {
        v1,
        v2: v1,
        seen: Default::default(),
        notices: Vec::new(),
        errors: Vec::new(),
        reload: None,
    };
    let mut taken = 0;
    let mut record = |host: &mut Harness, out: &mut Schedule, t: u64| {
        host.drain();
        for e in &host.history()[taken..] {
            match e {
                HostEvent::Emission {
                    pipeline,
                    version,
                    value: v,
                } => {
                    let entry = out.seen.entry(pipeline.clone()).or_default();
                    entry.0.push((t, *version, value(v)));
                }
                HostEvent::Completed { pipeline, .. } => {
                    out.seen
                        .entry(pipeline.clone())
                        .or_default()
                        .1
                        .get_or_insert(t);
                }
                HostEvent::Notice { message, .. } => out.notices.push(message.clone()),
                HostEvent::Error { path, message, .. } => {
                    out.errors.push((path.clone(), message.clone()));
                }
                _ => {}
            }
        }
        taken = host.history().len();
    };
    record(&mut host, &mut out, 0);
    let mut edit = Some(edit);
    let mut t = 0;
    while t < until {
        advance(&time, 10);
        t += 10;
        record(&mut host, &mut out, t);
        if t == reload_at
            && let Some(edit) = edit.take()
        {
            edit();
            let reload = host.wait_reload()?;
            out.v2 = reload_version(&reload);
            let (_, reset, _, _) = reload_fields(&reload);
            assert!(reset.is_empty(), "{reload:?}");
            out.reload = Some(reload);
            assert!(time.settle(SETTLE));
            record(&mut host, &mut out, t);
        }
    }
    host.stop();
    Ok(out)
}

/// A panic in the new projection when a reload re-projects a live subscription (the new code
/// cannot project the held outer value): an `error` at the higher-order operator's path, the
/// subscription ends (told in the notice) and the operator knows it did, as if that inner
/// stream had completed: `merge_map` and `switch_map` complete once the others have,
/// `concat_map` and `exhaust_map` take the next outer value instead of waiting for ever.
/// Outer values 0, 1, 2 at t = 0, 100, 200; inner `n * 10 + i` for i in 0..4 every 40 ms; the
/// reload at t = 50 makes the projection of 0 panic.
#[test]
fn a_panic_in_a_re_projection_ends_that_subscription_and_the_operator_goes_on() -> anyhow::Result<()>
{
    let ops = ["switch", "merge", "concat", "exhaust"];
    let mut text = "    const FAIL: bool = false;\n".to_owned();
    for op in ops {
        text += &format!(
            "    p.pipeline(\"{op}\", interval_ms(100).take(3))\n        \
             .{op}_map(|n: u64| {{\n            \
             if FAIL && n == 0 {{\n                panic!(\"cannot project {{n}} again\");\n            }}\n            \
             interval_ms(40).take(4).map(move |i: u64| n * 10 + i)\n        }})\n        \
             .log();\n"
        );
    }
    let fixture = Fixture::new("higher_reproject_panic", &plugin(&text));
    let run = run_schedule(&fixture, 500, 50, || {
        fixture.edit("src/lib.rs", "FAIL: bool = false", "FAIL: bool = true");
    })?;
    type Case = (&'static str, &'static [(u64, i64)], u64);
    let cases: [Case; 4] = [
        (
            "switch",
            &[
                (0, 0),
                (40, 1),
                (100, 10),
                (140, 11),
                (180, 12),
                (200, 20),
                (240, 21),
                (280, 22),
                (320, 23),
            ],
            320,
        ),
        (
            "merge",
            &[
                (0, 0),
                (40, 1),
                (100, 10),
                (140, 11),
                (180, 12),
                (200, 20),
                (220, 13),
                (240, 21),
                (280, 22),
                (320, 23),
            ],
            320,
        ),
        (
            "concat",
            &[
                (0, 0),
                (40, 1),
                (100, 10),
                (140, 11),
                (180, 12),
                (220, 13),
                (220, 20),
                (260, 21),
                (300, 22),
                (340, 23),
            ],
            340,
        ),
        (
            "exhaust",
            &[(0, 0), (40, 1), (100, 10), (140, 11), (180, 12), (220, 13)],
            220,
        ),
    ];
    for (op, want, done) in cases {
        let want: Vec<(u64, u64, i64)> = want
            .iter()
            .map(|&(t, x)| (t, if t <= 50 { run.v1 } else { run.v2 }, x))
            .collect();
        let (got, completed) = &run.seen[op];
        assert_eq!(got, &want, "{op}_map");
        assert_eq!(*completed, Some(done), "{op}_map's completion");
        let path = format!("{op}|1:{op}_map");
        let errors: Vec<&(String, String)> =
            run.errors.iter().filter(|(p, _)| *p == path).collect();
        assert!(
            errors.len() == 1 && errors[0].1.contains("cannot project 0 again"),
            "{op}_map: {:?}",
            run.errors
        );
        let ended = format!(
            "re-projected 1 inner subscription(s) with version {}: {path}|#1:inner: ended (the \
             new projection of 0 failed)",
            run.v2
        );
        assert!(run.notices.contains(&ended), "{op}_map: {:?}", run.notices);
    }
    assert_eq!(run.errors.len(), 4, "{:?}", run.errors);
    Ok(())
}

/// A reload whose new projection builds an inner stream the host refuses (one that reads a
/// subject, or publishes to one, as another type than the pipelines' code declared) is refused at
/// the re-projection as at a subscription: an `error` at the operator, the live subscription
/// ends (not restarted on a source that never emits), and the next outer value's
/// subscription is refused the same way.
#[test]
fn a_re_projection_to_a_refused_inner_stream_ends_the_subscription_with_an_error()
-> anyhow::Result<()> {
    let inner = "interval_ms(100).map(move |i: u64| n * 100 + i)";
    let cases = [
        (
            "subject",
            "subject::<String>(\"t\").map(move |x: String| n * 100 + x.len() as u64)",
            ":inner reads `alloc::string::String`: publisher and subscribers must agree",
        ),
        (
            "publish",
            "interval_ms(100).map(move |i: u64| format!(\"{n}{i}\")).publish(\"t\")\
             .map(|s: String| s.len() as u64)",
            ":inner publishes `alloc::string::String`: publisher and subscribers must agree",
        ),
    ];
    for (name, edited, refusal) in cases {
        let fixture = Fixture::new(
            &format!("higher_refused_{name}"),
            &plugin(&format!(
                "    p.pipeline(\"r\", interval_ms(1000).take(2))\n        \
                 .switch_map(|n: u64| {inner})\n        .log();\n    \
                 p.pipeline(\"q\", interval_ms(3_600_000)).publish(\"t\");"
            )),
        );
        let run = run_schedule(&fixture, 1100, 150, || {
            fixture.edit("src/lib.rs", inner, edited);
        })?;
        let (got, completed) = &run.seen["r"];
        assert_eq!(got, &[(0, run.v1, 0), (100, run.v1, 1)], "{name}");
        assert_eq!(*completed, Some(1000), "{name}");
        assert_eq!(run.errors.len(), 2, "{name}: {:?}", run.errors);
        for ((path, message), id) in run.errors.iter().zip(1..) {
            assert_eq!(path, "r|1:switch_map", "{name}");
            let named = format!("subject \"t\": q publishes `u64` but r|1:switch_map|#{id}");
            assert!(message.starts_with(&named), "{name}: {message}");
            assert!(message.contains(refusal), "{name}: {message}");
        }
        assert!(
            run.notices
                .iter()
                .any(|m| m
                    .ends_with("r|1:switch_map|#1:inner: ended (the new projection of 0 failed)")),
            "{name}: {:?}",
            run.notices
        );
    }
    Ok(())
}

/// An inner stream may read a subject: each subscription is a subscriber of its own (the hub
/// delivers on the publisher's thread into the subscription's port); a reload that swaps
/// the subscription keeps it subscribed (the next value runs through the new code); a
/// subscription that ends is unsubscribed (the previous inner of a `switch_map` gets nothing
/// more). The publisher sends 1, 2, ... every 300 ms; the outer values 0 and 1 come at t = 0
/// and 1000; the reload at t = 650 edits the inner `map`.
#[test]
fn an_inner_stream_reads_a_subject_across_a_reload_and_a_switch() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "higher_inner_subject",
        &plugin(
            r#"    p.pipeline("prices", interval_ms(300).take(6)).map(|i: u64| i + 1).publish("t");
    p.pipeline("w", interval_ms(1000).take(2))
        .switch_map(|k: u64| subject::<u64>("t").map(move |x: u64| k * 100 + x + 0))
        .log();"#,
        ),
    );
    let run = run_schedule(&fixture, 1600, 650, || {
        fixture.edit("src/lib.rs", "x + 0", "x + 50");
    })?;
    let (v1, v2) = (run.v1, run.v2);
    let (got, _) = &run.seen["w"];
    // The value published at t = 0 races the first subscription: left out.
    let got: Vec<(u64, u64, i64)> = got.iter().filter(|(t, ..)| *t > 0).copied().collect();
    assert_eq!(
        got,
        [
            (300, v1, 2),
            (600, v1, 3),
            (900, v2, 54),
            (1200, v2, 155),
            (1500, v2, 156)
        ],
        "{:?}",
        run.errors
    );
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    // Swapped: the pipelines' tracks and the live subscription's `map`.
    let reload = run.reload.as_ref().expect("a reload");
    let (swapped, ..) = reload_fields(reload);
    assert_eq!(swapped, 9, "{reload:?}");
    Ok(())
}

/// A reload that changes a publisher's value type while an inner subscription reads the
/// subject as the old type (no pipeline reads it as its source, so the reload's own check has
/// nothing to compare): the re-projection of the live subscription is refused (an error at
/// the operator naming the subject and both types) and the subscription ends, before any
/// value of the new type reaches it; the next outer value's subscription is refused the same
/// way.
#[test]
fn a_publisher_type_change_ends_a_live_inner_reader_with_an_error() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "higher_inner_subject_type",
        &plugin(
            r#"    p.pipeline("prices", interval_ms(300)).map(|i: u64| i + 1).publish("t");
    p.pipeline("w", interval_ms(1000).take(2))
        .switch_map(|k: u64| subject::<u64>("t").map(move |x: u64| k * 100 + x))
        .log();"#,
        ),
    );
    let (options, time) = fixture.virtual_options();
    let mut host = Harness::start(&options)?;
    let (v1, _) = host.wait_loaded()?;
    assert!(time.settle(SETTLE));
    advance(&time, 300);
    advance(&time, 300);
    fixture.edit(
        "src/lib.rs",
        ".map(|i: u64| i + 1)",
        ".map(|i: u64| format!(\"{i}\"))",
    );
    host.wait_reload()?;
    assert!(time.settle(SETTLE));
    for _ in 0..4 {
        advance(&time, 300);
    }
    host.drain();
    let got: Vec<(u64, i64)> = host
        .emissions("w")
        .iter()
        .map(|(v, x)| (*v, value(x)))
        .filter(|(_, x)| *x > 1)
        .collect();
    assert_eq!(got, [(v1, 2), (v1, 3)]);
    let errors: Vec<String> = host
        .errors()
        .iter()
        .map(|e| match e {
            HostEvent::Error { path, message, .. } => format!("{path}: {message}"),
            _ => unreachable!(),
        })
        .collect();
    let refused = |id: u64| {
        format!(
            "w|1:switch_map: subject \"t\": prices publishes `alloc::string::String` but \
             w|1:switch_map|#{id}:inner reads `u64`: publisher and subscribers must agree on \
             the value type"
        )
    };
    assert_eq!(errors, [refused(1), refused(2)]);
    host.stop();
    Ok(())
}

/// Each inner subscription that reads a subject is one subscriber of its hub while it lives:
/// a `switch_map` that switched four times leaves one (the ended ones are unsubscribed, not
/// merely ignored), whether its outer values come from its own thread (an interval) or from
/// a publisher's (a subject); and none is left once the pipeline's thread has ended (a hub's
/// subscriber holds the driver, which holds the hub: nothing keeps the other alive).
#[test]
fn inner_subject_subscribers_leave_with_their_subscriptions_and_their_thread() -> anyhow::Result<()>
{
    let cases = [
        (
            "interval",
            r#"p.pipeline("q", interval_ms(100).take(5))
        .switch_map(|k: u64| subject::<u64>("t").map(move |x: u64| k + x))
        .log();"#,
        ),
        (
            "subject",
            r#"p.pipeline("o", interval_ms(100).take(5)).publish("outer");
    p.pipeline("q", subject::<u64>("outer"))
        .switch_map(|k: u64| subject::<u64>("t").map(move |x: u64| k + x))
        .log();"#,
        ),
    ];
    for (name, body) in cases {
        let fixture = Fixture::new(
            &format!("higher_inner_subject_leave_{name}"),
            &plugin(&format!(
                "    {body}\n    p.pipeline(\"src\", interval_ms(3_600_000)).publish(\"t\");"
            )),
        );
        let mut host = StdinHost::start(&fixture)?;
        host.reload()?;
        for _ in 0..4 {
            host.advance(100);
        }
        let hub = host.reloader.runtime().subjects().hub("t");
        assert_eq!(hub.subscribers(), 1, "{name}: the live subscription's only");
        host.reloader.runtime().stop_all();
        assert_eq!(hub.subscribers(), 0, "{name}: none once the thread ended");
        assert!(host.errors().is_empty(), "{name}: {:?}", host.errors());
    }
    Ok(())
}

/// A loop through subjects that an inner stream would close (so registration cannot see it)
/// is refused when the inner subscription starts, with an error at its operator naming the
/// loop: `loop`'s inner stream reads `t` and `loop` publishes to `t` (the value would come
/// back on the same thread); `loop` reads `t` and its inner stream publishes to it; or, across
/// two pipelines on two threads, `a` publishes its interval's values to `y` and its inner
/// stream reads `x`, while `b` publishes to `x` and its inner stream reads `y` (when both
/// intervals tick, each thread would hold its own pipeline's lock and wait for the other's: a
/// deadlock). Whichever inner subscription comes second is refused, at each outer value.
/// Nothing deadlocks, the pipelines go on.
#[test]
fn a_cycle_through_an_inner_subject_is_refused_not_deadlocked() -> anyhow::Result<()> {
    let cases = [
        (
            "reads",
            r#"p.pipeline("loop", interval_ms(100).take(1))
        .switch_map(|_k: u64| subject::<u64>("t").map(|x: u64| x + 10))
        .publish("t");"#,
            &["loop publishes \"t\" read by loop"][..],
        ),
        (
            "publishes",
            r#"p.pipeline("loop", subject::<u64>("t"))
        .switch_map(|x: u64| of(vec![x + 10]).publish("t"));"#,
            &["loop publishes \"t\" read by loop"][..],
        ),
        (
            "two_threads",
            r#"p.pipeline("a", interval_ms(100).take(3))
        .publish("y")
        .switch_map(|_k: u64| subject::<u64>("x"))
        .log();
    p.pipeline("b", interval_ms(100).take(3))
        .publish("x")
        .switch_map(|_k: u64| subject::<u64>("y"))
        .log();"#,
            &[
                "a publishes \"y\" read by b, b publishes \"x\" read by a",
                "b publishes \"x\" read by a, a publishes \"y\" read by b",
            ][..],
        ),
    ];
    for (name, body, loops) in cases {
        let fixture = Fixture::new(
            &format!("higher_inner_subject_cycle_{name}"),
            &plugin(&format!(
                "    p.pipeline(\"seed\", interval_ms(300).take(3)).publish(\"t\");\n    \
                 p.pipeline(\"seed2\", interval_ms(300).take(3)).publish(\"x\");\n    {body}"
            )),
        );
        let mut host = StdinHost::start(&fixture)?;
        host.reload()?;
        host.advance(300);
        host.advance(300);
        let errors: Vec<(String, String)> = host
            .errors()
            .iter()
            .map(|e| match e {
                HostEvent::Error { path, message, .. } => (path.clone(), message.clone()),
                _ => unreachable!(),
            })
            .collect();
        assert!(!errors.is_empty(), "{name}");
        for (path, message) in &errors {
            assert!(path.ends_with(":switch_map"), "{name}: {path}: {message}");
            let named = loops.iter().any(|l| {
                message.starts_with(&format!(
                    "subjects would form a cycle ({l}): delivery is synchronous"
                ))
            });
            assert!(named, "{name}: {message}");
        }
        // `loop`'s one outer value; each of `seed`'s values that `loop` was subscribed for
        // (at t = 300 and 600, and t = 0 unless it came before the subscription); the three
        // of whichever of `a` and `b` came second.
        match name {
            "reads" => assert_eq!(errors.len(), 1, "{errors:?}"),
            "publishes" => assert!((2..=3).contains(&errors.len()), "{errors:?}"),
            "two_threads" => {
                assert_eq!(errors.len(), 3, "{errors:?}");
                assert!(errors.iter().all(|(p, _)| *p == errors[0].0), "{errors:?}");
            }
            _ => {}
        }
    }
    Ok(())
}

/// An inner stream may publish: each value its `publish` operator sees is delivered to the
/// subject's subscribers (here a pipeline reading it) on the inner subscription's thread,
/// before it goes on downstream; a reload that swaps the subscription keeps publishing
/// through the new code, and the next subscription publishes too. The inner interval counts
/// every 300 ms; the outer values 0 and 1 come at t = 0 and 1000; the reload at t = 650 edits
/// the inner `map`.
#[test]
fn an_inner_stream_publishes_across_a_reload_and_a_switch() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "higher_inner_publish",
        &plugin(
            r#"    p.pipeline("w", interval_ms(1000).take(2))
        .switch_map(|k: u64| interval_ms(300).map(move |i: u64| k * 100 + i + 0).publish("t"))
        .log();
    p.pipeline("r", subject::<u64>("t")).map(|x: u64| x + 1000).log();"#,
        ),
    );
    let run = run_schedule(&fixture, 1600, 650, || {
        fixture.edit("src/lib.rs", "i + 0", "i + 50");
    })?;
    let (v1, v2) = (run.v1, run.v2);
    let expected = [
        (300, v1, 1),
        (600, v1, 2),
        (900, v2, 53),
        (1000, v2, 150),
        (1300, v2, 151),
        (1600, v2, 152),
    ];
    // The value of t = 0 races `r`'s subscription: left out.
    let after_0 = |p: &str| -> Vec<(u64, u64, i64)> {
        run.seen[p]
            .0
            .iter()
            .filter(|(t, ..)| *t > 0)
            .copied()
            .collect()
    };
    assert_eq!(after_0("w"), expected, "{:?}", run.errors);
    let read: Vec<(u64, u64, i64)> = expected.iter().map(|&(t, v, x)| (t, v, x + 1000)).collect();
    assert_eq!(after_0("r"), read, "{:?}", run.errors);
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    Ok(())
}

/// A fast outer stream whose inner streams wait long (a `switch_map` every millisecond onto
/// an hourly interval) ends a subscription each millisecond, each leaving its interval's
/// next tick an hour away: the pipeline's thread drops those from its deadlines instead of
/// holding them for the hour (1,000 after a second otherwise, one more each millisecond).
#[test]
fn ended_inner_subscriptions_leave_no_timers_behind() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "higher_inner_timers_swept",
        &plugin(
            r#"    p.pipeline("s", interval_ms(1))
        .switch_map(|k: u64| interval_ms(3_600_000).map(move |i: u64| k + i))
        .log();"#,
        ),
    );
    let mut host = StdinHost::start(&fixture)?;
    host.reload()?;
    for _ in 0..4 {
        host.advance(1000);
        let held = host.reloader.runtime().timers_held("s");
        // The outer interval's tick, the live subscription's, and at most one sweep's worth
        // of ended ones (the heap is swept each time it doubles, from 256).
        assert!(held.is_some_and(|n| n <= 512), "{held:?}");
    }
    // Every millisecond switched: the last value is the 4,000th outer value's first.
    let last = host.emissions("s").last().copied();
    assert_eq!(last.map(|(_, x)| x), Some(4000));
    assert!(host.errors().is_empty(), "{:?}", host.errors());
    Ok(())
}

/// A pipeline fed only by a subject has nothing to run on its own thread (no timers, no
/// inbox: it sleeps), so the subscriptions its `switch_map` ends are freed by the deliveries
/// themselves, their hub subscribers with them: after ten switches made on the publisher's
/// thread, one subscriber is left (on the system clock, where nothing wakes the pipeline's
/// thread).
#[test]
fn a_pipeline_fed_only_by_subjects_frees_the_inner_subscriptions_it_ends() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "higher_inner_subject_reap",
        &plugin(
            r#"    p.pipeline("o", interval_ms(10).take(10)).publish("outer");
    p.pipeline("q", subject::<u64>("outer"))
        .switch_map(|k: u64| subject::<u64>("t").map(move |x: u64| k + x))
        .log();
    p.pipeline("src", interval_ms(3_600_000)).publish("t");"#,
        ),
    );
    let (mut reloader, rx) = integration_tests::channel_reloader(fixture.build_config(false)?)?;
    let loaded = reloader.reload();
    assert!(
        matches!(loaded, host::reloader::Outcome::Loaded { .. }),
        "{loaded:?}"
    );
    // `o`'s last value was delivered (and its switch made) before `o` completed.
    integration_tests::next_matching(
        &rx,
        EMISSION_TIMEOUT,
        |e| matches!(e, HostEvent::Completed { pipeline, .. } if pipeline == "o"),
    )?;
    let hub = reloader.runtime().subjects().hub("t");
    assert_eq!(hub.subscribers(), 1, "the live subscription's only");
    reloader.runtime().stop_all();
    assert_eq!(hub.subscribers(), 0);
    Ok(())
}
