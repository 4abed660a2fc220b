//! Why a pipeline's intervals tick on its own thread (a heap of deadlines) and not on tokio's
//! timer wheel: the same 10,000 intervals (10 ms, staggered over the period) run for the same
//! time both ways, and each tick does the same observable work (it bumps its interval's
//! count, which is checked equal between the contenders, within one tick an interval).
//!
//! - **thread heap**: one thread pops due deadlines from a `BinaryHeap` and runs each tick in
//!   place (the runtime's `run_pipeline` design);
//! - **tokio + channel**: 10,000 `tokio::time::interval` tasks on a runtime of 2 workers
//!   (the host's i/o runtime), each tick sent over a crossbeam channel to the thread that
//!   would run the pipeline's code (the hop a pipeline thread needs to take a tick from
//!   tokio's wheel).
//!
//! Reported: CPU time per tick (the process's user + system time over the run, divided by
//! the ticks), and how late ticks ran (median, p99: when the tick's work ran minus its
//! deadline). Run: `cargo bench -p hmr-bench --bench timers`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

const TIMERS: usize = 10_000;
const PERIOD: Duration = Duration::from_millis(10);
const RUN: Duration = Duration::from_secs(2);

/// User + system CPU time of this process so far.
fn cpu() -> Duration {
    // SAFETY: `getrusage` writes one `rusage` into the zeroed value it is given.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `r` is a valid, writable `rusage`.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) } == 0;
    assert!(ok, "getrusage failed");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(r.ru_utime) + tv(r.ru_stime)
}

struct Outcome {
    counts: Vec<u64>,
    cpu: Duration,
    late: Vec<Duration>,
}

fn offset(i: usize) -> Duration {
    PERIOD * i as u32 / TIMERS as u32
}

fn thread_heap(start: Instant) -> Outcome {
    let cpu0 = cpu();
    let end = start + RUN;
    let mut counts = vec![0u64; TIMERS];
    let mut late = Vec::with_capacity(TIMERS * (RUN.as_millis() / PERIOD.as_millis()) as usize);
    let mut heap: BinaryHeap<Reverse<(Instant, usize)>> = (0..TIMERS)
        .map(|i| Reverse((start + offset(i), i)))
        .collect();
    while let Some(&Reverse((due, i))) = heap.peek() {
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
            continue;
        }
        heap.pop();
        counts[i] += 1;
        late.push(Instant::now().saturating_duration_since(due));
        heap.push(Reverse((due + PERIOD, i)));
    }
    Outcome {
        counts,
        cpu: cpu() - cpu0,
        late,
    }
}

fn tokio_channel(start: Instant) -> Outcome {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (tx, rx) = crossbeam_channel::unbounded::<(usize, Instant)>();
    let end = start + RUN;
    let cpu0 = cpu();
    for i in 0..TIMERS {
        let tx = tx.clone();
        let first = tokio::time::Instant::from_std(start + offset(i));
        rt.spawn(async move {
            let mut every = tokio::time::interval_at(first, PERIOD);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                let due = every.tick().await.into_std();
                if due >= end || tx.send((i, due)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut counts = vec![0u64; TIMERS];
    let mut late = Vec::new();
    let deadline = end + Duration::from_millis(500);
    while let Ok((i, due)) = rx.recv_deadline(deadline) {
        counts[i] += 1;
        late.push(Instant::now().saturating_duration_since(due));
    }
    let cpu = cpu() - cpu0;
    rt.shutdown_background();
    Outcome { counts, cpu, late }
}

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * q) as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut rows = Vec::new();
    for round in 0..3 {
        let start = Instant::now() + Duration::from_millis(50);
        let mut a = thread_heap(start);
        let start = Instant::now() + Duration::from_millis(50);
        let mut b = tokio_channel(start);
        // The same work: every interval ticked the same number of times, within one.
        for (i, (x, y)) in a.counts.iter().zip(&b.counts).enumerate() {
            assert!(
                x.abs_diff(*y) <= 1 && *x >= 190,
                "round {round}: interval {i} ticked {x} times on the thread, {y} on tokio"
            );
        }
        let ticks = |o: &Outcome| o.counts.iter().sum::<u64>();
        let (ta, tb) = (ticks(&a), ticks(&b));
        let row = (
            a.cpu.as_nanos() as f64 / ta as f64,
            b.cpu.as_nanos() as f64 / tb as f64,
            quantile(&mut a.late, 0.5),
            quantile(&mut a.late, 0.99),
            quantile(&mut b.late, 0.5),
            quantile(&mut b.late, 0.99),
            ta,
            tb,
        );
        println!(
            "round {round}: thread heap {:.0} ns CPU a tick, late median {:?} p99 {:?} ({} ticks); \
             tokio + channel {:.0} ns CPU a tick, late median {:?} p99 {:?} ({} ticks)",
            row.0, row.2, row.3, row.6, row.1, row.4, row.5, row.7
        );
        rows.push(row);
    }
    let mut cpu_a: Vec<f64> = rows.iter().map(|r| r.0).collect();
    let mut cpu_b: Vec<f64> = rows.iter().map(|r| r.1).collect();
    cpu_a.sort_by(f64::total_cmp);
    cpu_b.sort_by(f64::total_cmp);
    println!(
        "10,000 intervals of 10 ms for 2 s, medians of 3 rounds: thread heap {:.0} ns CPU a \
         tick, tokio + channel {:.0} ns ({:.1}x)",
        cpu_a[1],
        cpu_b[1],
        cpu_b[1] / cpu_a[1]
    );
}
