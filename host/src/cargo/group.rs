//! Cargo in a process group of its own: killed with its children (rustc, build scripts) when
//! a build is stopped ([`Canceller::stop`], [`stop_all_builds`]) or abandoned by a panic.

use std::process::{Child, Command};
use std::sync::{Arc, Mutex, Weak};

use super::{BuildError, cargo_binary};

/// Stops a build: kills cargo's process group and refuses further builds. Cheap to clone;
/// every clone stops the same builds.
#[derive(Clone, Debug)]
pub struct Canceller(Arc<Mutex<CancelState>>);

#[derive(Debug, Default)]
struct CancelState {
    stopped: bool,
    /// The process group of the cargo running now; `None` once it is about to be reaped (a
    /// reaped group id may be reused by an unrelated process).
    group: Option<u32>,
}

/// Every canceller of the process, for [`stop_all_builds`].
static CANCELLERS: Mutex<Vec<Weak<Mutex<CancelState>>>> = Mutex::new(Vec::new());

impl Default for Canceller {
    fn default() -> Canceller {
        Canceller::new()
    }
}

impl Canceller {
    /// A canceller with no build yet.
    pub fn new() -> Canceller {
        let state = Arc::new(Mutex::new(CancelState::default()));
        let mut all = CANCELLERS.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&state));
        Canceller(state)
    }

    /// Kills the running build's process group, if any; every later build returns
    /// [`BuildError::Stopped`] at once.
    pub fn stop(&self) {
        stop_state(&self.0);
    }

    /// Whether [`Canceller::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).stopped
    }

    /// Starts `cmd` in a process group of its own and remembers the group, unless stopped.
    pub(super) fn spawn(&self, cmd: &mut Command) -> Result<Child, BuildError> {
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        // Held across the spawn, so a stop either comes first (no build) or sees the group.
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if state.stopped {
            return Err(BuildError::Stopped);
        }
        let child = cmd.spawn().map_err(|source| BuildError::Spawn {
            cargo: cargo_binary(),
            source,
        })?;
        state.group = Some(child.id());
        Ok(child)
    }

    /// Forgets the group before its leader is reaped.
    fn release(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).group = None;
    }
}

fn stop_state(state: &Mutex<CancelState>) {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    state.stopped = true;
    if let Some(group) = state.group {
        kill_group(group);
    }
}

/// Stops every build of this process (the signal handler's way out, [`crate::session`]).
pub fn stop_all_builds() {
    let all: Vec<_> = CANCELLERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for state in all {
        stop_state(&state);
    }
}

#[cfg(unix)]
fn kill_group(group: u32) {
    let Ok(group) = libc::pid_t::try_from(group) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours. `-group` addresses
    // the process group cargo was started in (`process_group(0)`: its id is cargo's pid).
    // The caller holds the canceller's lock and the group is still recorded, so cargo has
    // not been reaped and the id cannot belong to another process group.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
}

#[cfg(not(unix))]
fn kill_group(_group: u32) {}

/// Kills the group if the build is abandoned before it ends (an unwinding panic).
pub(super) struct ChildGuard<'a> {
    pub(super) child: Option<Child>,
    pub(super) cancel: &'a Canceller,
}

impl ChildGuard<'_> {
    /// Waits for cargo, once its output has ended.
    pub(super) fn wait(mut self) -> std::io::Result<std::process::ExitStatus> {
        self.cancel.release();
        match self.child.take() {
            Some(mut child) => child.wait(),
            None => Err(std::io::Error::other("cargo was already reaped")),
        }
    }
}

impl Drop for ChildGuard<'_> {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            {
                let state = self.cancel.0.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(group) = state.group {
                    kill_group(group);
                }
            }
            self.cancel.release();
            let _ = child.wait();
        }
    }
}
