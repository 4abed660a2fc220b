//! The host's line sources on real builds: `file_lines` keeps its position across a reload
//! and follows a file like `tail -F` (waiting for it, a held last line, invalid UTF-8,
//! truncation, rotation), relative paths resolving against the plugin crate; `tcp_lines`
//! keeps its connections open across a reload (their next lines run the new code), reports
//! an address in use and tries it again at the next reload, and closes a connection that
//! sends a line over 1 MiB. `stdin_lines` runs through the binary: `host/tests/stdin_lines.rs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Instant;

use host::events::HostEvent;
use host::testkit::{EMISSION_TIMEOUT, Fixture, Harness};
use integration_tests::{connect, free_port, plugin, reload_fields, reload_version, value};

fn append(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    f.write_all(bytes)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// The emission text of a `String` value (its Debug form).
fn text(s: &str) -> String {
    format!("{s:?}")
}

/// What `pipeline` was told and emitted, in order: `emit <value>`, `notice <message>`,
/// `error <message>` (an error's path must be the pipeline: it is the source's, not an
/// operator's).
fn story(history: &[HostEvent], pipeline: &str) -> Vec<String> {
    history
        .iter()
        .filter_map(|e| match e {
            HostEvent::Emission {
                pipeline: p, value, ..
            } if p == pipeline => Some(format!("emit {value}")),
            HostEvent::Notice {
                pipeline: p,
                message,
            } if p == pipeline => Some(format!("notice {message}")),
            HostEvent::Error {
                pipeline: p,
                path,
                message,
            } if p == pipeline => {
                assert_eq!(path, pipeline, "a source's error is the pipeline's: {e:?}");
                Some(format!("error {message}"))
            }
            _ => None,
        })
        .collect()
}

/// The `n`th emission (from 1) of `pipeline`, seen or to come, as (version, value).
fn nth_emission(host: &mut Harness, pipeline: &str, n: usize) -> anyhow::Result<(u64, String)> {
    if let Some(e) = host.emissions(pipeline).into_iter().nth(n - 1) {
        return Ok(e);
    }
    let mut seen = host.emissions(pipeline).len();
    let e = host.wait_for(
        &format!("emission {n} of {pipeline}"),
        EMISSION_TIMEOUT,
        |e| {
            if matches!(e, HostEvent::Emission { pipeline: p, .. } if p == pipeline) {
                seen += 1;
            }
            seen == n
        },
    )?;
    let HostEvent::Emission { version, value, .. } = e else {
        unreachable!("counted emissions only")
    };
    Ok((version, value))
}

/// Waits until the `tick` pipeline (an `interval_ms(10)`) has emitted `n` more values: time
/// for the file source (which looks every 50 ms) to have looked several times.
fn let_ticks_pass(host: &mut Harness, n: i64) -> anyhow::Result<()> {
    let now = host.emissions("tick").last().map_or(0, |(_, v)| value(v));
    host.wait_emission("tick", |v| value(v) >= now + n)?;
    Ok(())
}

/// A `file_lines` pipeline keeps its place in the file across a reload that edits its
/// `map`: lines appended before, during and after the reload are each emitted once, in
/// order, each through the code of the version that ran it (the file is not read again
/// from its start). The path is relative: it resolves against the plugin crate.
#[test]
fn file_lines_keeps_its_position_across_a_reload() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "lines_file_reload",
        &plugin(
            r#"    p.pipeline("log", file_lines("in.log"))
        .map(|l: String| l.len() as u64 + 0)
        .log();"#,
        ),
    );
    let log = fixture.path().join("in.log");
    let mut lines: Vec<String> = vec!["a".into(), "bb".into()];
    std::fs::write(&log, "a\nbb\n")?;
    let mut write = |line: String| {
        append(&log, format!("{line}\n").as_bytes());
        lines.push(line);
        lines.len()
    };
    let mut host = Harness::start(&fixture.options())?;
    let (v1, _) = host.wait_loaded()?;
    nth_emission(&mut host, "log", 2)?;
    let n = write("c".repeat(3));
    nth_emission(&mut host, "log", n)?;
    fixture.edit("src/lib.rs", "l.len() as u64 + 0", "l.len() as u64 + 1000");
    // Appended while the new version builds.
    write("d".repeat(4));
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let HostEvent::Reload { restarts, .. } = &reload else {
        unreachable!()
    };
    assert!(restarts.is_empty(), "{reload:?}");
    // The report comes just before the new code is committed: a line read in between runs
    // v1. Lines until one runs v2; then every later line does. Every line has a length of its
    // own (1 to 4, 5, 6 on), so a line read twice where another is lost shows as a length.
    let probing = Instant::now();
    for k in 0.. {
        assert!(
            probing.elapsed() < EMISSION_TIMEOUT,
            "no line ran v2 within {EMISSION_TIMEOUT:?} ({k} lines)"
        );
        let n = write(format!("probe {}", "p".repeat(k)));
        if nth_emission(&mut host, "log", n)?.0 == v2 {
            break;
        }
    }
    let n = write("f".repeat(5));
    assert_eq!(nth_emission(&mut host, "log", n)?, (v2, "1005".to_owned()));
    host.stop();
    let got = host.emissions("log");
    assert_eq!(got.len(), lines.len(), "{got:?}");
    let want: Vec<(u64, String)> = got
        .iter()
        .zip(&lines)
        .map(|((v, _), line)| {
            let extra = if *v == v1 { 0 } else { 1000 };
            (*v, (line.len() + extra).to_string())
        })
        .collect();
    assert_eq!(got, want);
    assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "{got:?}");
    assert!(got.iter().all(|(v, _)| *v == v1 || *v == v2), "{got:?}");
    assert!(got[..3].iter().all(|(v, _)| *v == v1), "{got:?}");
    assert!(
        host.history()
            .iter()
            .all(|e| !matches!(e, HostEvent::Notice { .. } | HostEvent::Error { .. })),
        "nothing to tell: {:?}",
        host.history()
    );
    Ok(())
}

/// `file_lines` through the host, like `tail -F`, on one file followed from before it
/// exists: a missing file is waited for with exactly one notice, a last line without its
/// newline is held until the newline comes, a line of invalid UTF-8 is an `error` naming the
/// pipeline, the file and the line number (and the next line is emitted), a truncation and
/// a rotation by rename are each told and followed. The path is relative to the plugin
/// crate's directory.
#[test]
fn file_lines_follows_a_file_like_tail_f() -> anyhow::Result<()> {
    let fixture = Fixture::new(
        "lines_file_tail",
        &plugin(
            r#"    p.pipeline("grow", file_lines("logs/grow.log"))
        .map(|l: String| l)
        .log();
    p.pipeline("tick", interval_ms(10)).log();"#,
        ),
    );
    let dir = fixture.path().join("logs");
    std::fs::create_dir(&dir)?;
    let log = dir.join("grow.log");
    let shown = log.display().to_string();
    let mut host = Harness::start(&fixture.options())?;
    host.wait_loaded()?;
    let waiting = format!("waiting for {shown} to exist");
    host.wait_for(
        "the waiting notice",
        EMISSION_TIMEOUT,
        |e| matches!(e, HostEvent::Notice { pipeline, .. } if pipeline == "grow"),
    )?;
    // Several looks at the missing file (every 50 ms) tell nothing more.
    let_ticks_pass(&mut host, 25)?;
    std::fs::write(&log, "one\ntwo\n")?;
    grow_emits(&mut host, "two")?;
    // A last line without its newline is held, however many looks pass.
    append(&log, b"par");
    let_ticks_pass(&mut host, 25)?;
    append(&log, b"tial\n");
    grow_emits(&mut host, "partial")?;
    // Line 4 is not UTF-8: an error, and line 5 is still emitted.
    append(&log, b"\xffbad\xfe\nafter\n");
    grow_emits(&mut host, "after")?;
    // Truncated and written shorter: read again from the start.
    std::fs::write(&log, "t\n")?;
    grow_emits(&mut host, "t")?;
    // Rotated: the old file is read to its end, then the new one from its start (its line
    // numbers from 1).
    append(&log, b"last old\n");
    std::fs::rename(&log, dir.join("grow.log.1"))?;
    std::fs::write(&log, b"new 1\n\xff\nnew 3\n")?;
    grow_emits(&mut host, "new 3")?;
    host.stop();
    let want = [
        format!("notice {waiting}"),
        format!("emit {}", text("one")),
        format!("emit {}", text("two")),
        format!("emit {}", text("partial")),
        format!("error invalid utf-8 in {shown} line 4"),
        format!("emit {}", text("after")),
        format!("notice {shown} was truncated; reading it from its start"),
        format!("emit {}", text("t")),
        format!("emit {}", text("last old")),
        format!("notice {shown} was replaced (rotated); reading the new file from its start"),
        format!("emit {}", text("new 1")),
        format!("error invalid utf-8 in {shown} line 2"),
        format!("emit {}", text("new 3")),
    ];
    assert_eq!(story(host.history(), "grow"), want);
    Ok(())
}

/// Waits for `grow` to emit `line`; on a timeout, says what `grow` did so far.
fn grow_emits(host: &mut Harness, line: &str) -> anyhow::Result<()> {
    match host.wait_emission("grow", |v| v == text(line)) {
        Ok(_) => Ok(()),
        Err(e) => Err(e.context(format!(
            "grow never emitted {line:?}; what it did: {:#?}",
            story(host.history(), "grow")
        ))),
    }
}

fn send(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes)
        .unwrap_or_else(|e| panic!("cannot send to the host: {e}"));
}

/// `tcp_lines` across a reload: two client connections opened under v1 stay open, and their
/// next lines run v2's code. Another pipeline of the plugin listens on an address already in
/// use: an `error` names it and its address while `net` runs on; once the address is free,
/// the next reload listens again and that pipeline receives lines. A line over 1 MiB closes
/// its connection with an error; the other connection goes on.
#[test]
fn tcp_lines_keeps_connections_across_a_reload() -> anyhow::Result<()> {
    let net: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let busy = TcpListener::bind("127.0.0.1:0")?;
    let taken = busy.local_addr()?;
    let in_use = TcpListener::bind(taken).expect_err("the port is taken");
    let fixture = Fixture::new(
        "lines_tcp",
        &plugin(&format!(
            r#"    p.pipeline("net", tcp_lines("{net}"))
        .map(|l: String| l + "/one")
        .log();
    p.pipeline("taken", tcp_lines("{taken}"))
        .map(|l: String| l + "/taken")
        .log();"#
        )),
    );
    let mut host = Harness::start(&fixture.options())?;
    let (v1, _) = host.wait_loaded()?;
    let error = host.wait_for(
        "the error of taken",
        EMISSION_TIMEOUT,
        |e| matches!(e, HostEvent::Error { pipeline, .. } if pipeline == "taken"),
    )?;
    let HostEvent::Error { path, message, .. } = &error else {
        unreachable!()
    };
    assert_eq!(path, "taken");
    assert_eq!(
        message,
        &format!("tcp_lines(\"{taken}\"): cannot listen: {in_use}; the next reload tries again")
    );
    // `net` runs: two connections, each line emitted.
    let mut sent: Vec<String> = Vec::new();
    let mut say = |c: &mut TcpStream, line: &str| {
        send(c, format!("{line}\n").as_bytes());
        sent.push(line.to_owned());
        sent.len()
    };
    let mut c1 = connect(net);
    let mut c2 = connect(net);
    let n = say(&mut c1, "a1");
    assert_eq!(nth_emission(&mut host, "net", n)?, (v1, text("a1/one")));
    let n = say(&mut c2, "b1\r");
    assert_eq!(nth_emission(&mut host, "net", n)?, (v1, text("b1/one")));
    // Free the address; the reload that edits `net` tries `taken` again.
    drop(busy);
    fixture.edit("src/lib.rs", "l + \"/one\"", "l + \"/two\"");
    let reload = host.wait_reload()?;
    let v2 = reload_version(&reload);
    let (_, reset, added, removed) = reload_fields(&reload);
    assert!(
        reset.is_empty() && added.is_empty() && removed.is_empty(),
        "{reload:?}"
    );
    let HostEvent::Reload { restarts, .. } = &reload else {
        unreachable!()
    };
    let restarted: Vec<&str> = restarts.iter().map(|r| r.pipeline.as_str()).collect();
    assert_eq!(restarted, ["taken"], "{reload:?}");
    // The connections opened under v1 deliver through v2. (The report comes just before
    // the new code is committed: a line read in between runs v1. Lines on c2 until one
    // runs v2; then every later line does.)
    let probing = Instant::now();
    for k in 0.. {
        assert!(
            probing.elapsed() < EMISSION_TIMEOUT,
            "no line ran v2 within {EMISSION_TIMEOUT:?} ({k} lines)"
        );
        let n = say(&mut c2, &format!("b2 {k}"));
        if nth_emission(&mut host, "net", n)?.0 == v2 {
            break;
        }
    }
    let n = say(&mut c1, "a2");
    assert_eq!(nth_emission(&mut host, "net", n)?, (v2, text("a2/two")));
    // `taken` listens now.
    let mut t = connect(taken);
    send(&mut t, b"t1\n");
    host.wait_emission("taken", |v| v == text("t1/taken"))?;
    // A line over 1 MiB closes c2, with an error naming the address and the client; c1
    // goes on.
    let peer = c2.local_addr()?;
    let long = vec![b'x'; (1 << 20) + 2];
    // The host may close the connection before it has read everything: a failed write is
    // the point.
    let _ = c2.write_all(&long);
    let error = host.wait_for(
        "the error of the long line",
        EMISSION_TIMEOUT,
        |e| matches!(e, HostEvent::Error { pipeline, .. } if pipeline == "net"),
    )?;
    let HostEvent::Error { path, message, .. } = &error else {
        unreachable!()
    };
    assert_eq!(path, "net");
    assert_eq!(
        message,
        &format!("tcp_lines {net}: a line over 1 MiB from {peer}; connection closed")
    );
    let mut b = [0u8; 16];
    match c2.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected c2 closed by the host, got {other:?}"),
    }
    let n = say(&mut c1, "a3");
    assert_eq!(nth_emission(&mut host, "net", n)?, (v2, text("a3/two")));
    host.stop();
    let got = host.emissions("net");
    assert_eq!(got.len(), sent.len(), "{got:?}");
    let want: Vec<(u64, String)> = got
        .iter()
        .zip(&sent)
        .map(|((v, _), line)| {
            let line = line.trim_end_matches('\r');
            (
                *v,
                text(&format!("{line}/{}", if *v == v1 { "one" } else { "two" })),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "{got:?}");
    assert!(got.iter().all(|(v, _)| *v == v1 || *v == v2), "{got:?}");
    assert_eq!(host.emissions("taken"), [(v2, text("t1/taken"))]);
    Ok(())
}
