//! The example plugin: edit a closure below and save while `cargo run -p host` runs.

use plugin_api::prelude::*;

plugin_api::state! {
    /// Requests per kind of status code; kept by the host across reloads.
    #[derive(Clone, Debug, Default)]
    pub struct ByStatus { pub ok: u64, pub redirect: u64, pub client_error: u64, pub server_error: u64 }
}

/// The status code of an access-log line (`... "GET / HTTP/1.1" 200 512`).
fn status(line: &str) -> Option<u16> {
    line.split('"')
        .nth(2)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn register(p: &mut Plugin) {
    p.pipeline("counter", interval_ms(500)) // u64: 0, 1, 2, ... every 500 ms
        .map(|n: u64| n * 2)
        .filter(|n: &u64| n % 3 != 1)
        .scan(0u64, |acc: u64, n: u64| acc + n) // a running total, kept across reloads
        .log();
    p.pipeline("total", range(0, 1_000)) // 0..1000, then completes
        .reduce(0u64, |acc: u64, n: u64| acc + n)
        .log();
    // Every line of access.log (beside Cargo.toml), then each line appended, like `tail -F`.
    p.pipeline("requests", file_lines("access.log"))
        .filter_map(|line: String| status(&line))
        .publish("status"); // to the host-owned subject "status"
    p.pipeline("by_status", subject::<u16>("status"))
        .scan(ByStatus::default(), |mut c: ByStatus, code: u16| {
            match code {
                200..=299 => c.ok += 1,
                300..=399 => c.redirect += 1,
                400..=499 => c.client_error += 1,
                _ => c.server_error += 1,
            }
            c
        })
        .log();
}

plugin_api::export_plugin!(register);
