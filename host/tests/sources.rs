//! The `tcp_lines` source on idle clients: they cost no thread. Alone in its test binary,
//! since it counts the process's threads (other tests would start and stop their own).

use std::io::Write;
use std::time::Duration;

use host::sources::tcp::TcpLines;
use host::sources::{ChannelOutlet, SourceEvent};

const WAIT: Duration = Duration::from_secs(20);
const IDLE_CLIENTS: usize = 200;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("cannot list /proc/self/task")
        .count()
}

#[test]
fn idle_tcp_clients_cost_no_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime");
    let src = TcpLines::bind(rt.handle(), "127.0.0.1:0").expect("cannot bind");
    let addr = src.local_addr();
    let (outlet, rx) = ChannelOutlet::new();
    src.subscribe(outlet);
    let marker = |label: &str| {
        let mut c = std::net::TcpStream::connect(addr).expect("cannot connect");
        c.write_all(format!("{label}\n").as_bytes())
            .expect("cannot send");
        let got = rx
            .recv_timeout(WAIT)
            .expect("no line from the marker client");
        assert_eq!(got, SourceEvent::Line(label.to_owned()));
        c
    };
    // One connection first, so whatever the runtime starts on first use is running.
    let _warm = marker("warm");
    let before = threads();
    let idle: Vec<_> = (0..IDLE_CLIENTS)
        .map(|i| {
            std::net::TcpStream::connect(addr)
                .unwrap_or_else(|e| panic!("cannot connect client {i}: {e}"))
        })
        .collect();
    // Connections are accepted in order: once a client connected after the idle ones is
    // read, every idle one has its connection task.
    let _last = marker("after the idle ones");
    let after = threads();
    assert!(
        after <= before + 2,
        "{IDLE_CLIENTS} idle clients: {before} threads before, {after} after"
    );
    drop(idle);
}
