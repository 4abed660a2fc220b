//! The example plugin: edit a closure below and save while `cargo run -p host` runs.

use plugin_api::prelude::*;

fn register(p: &mut Plugin) {
    p.pipeline("counter", interval_ms(500)) // u64: 0, 1, 2, ... every 500 ms
        .map(|n: u64| n * 2)
        .filter(|n: &u64| n % 3 != 1)
        .scan(0u64, |acc: u64, n: u64| acc + n) // a running total, kept across reloads
        .log();
    p.pipeline("total", range(0, 1_000)) // 0..1000, then completes
        .reduce(0u64, |acc: u64, n: u64| acc + n)
        .log();
}

plugin_api::export_plugin!(register);
