//! The function the per-call benchmark calls through hot-lib-reloader: the same work as the
//! host's `call` pipeline (`n * 3 ^ 7`).

/// One step.
#[unsafe(no_mangle)]
pub fn step(n: u64) -> u64 {
    n.wrapping_mul(3) ^ 7
}
