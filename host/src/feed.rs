//! Host sources that feed a pipeline thread's inbox: `file_lines`, `tcp_lines` and
//! `stdin_lines` (see [`crate::sources`]), opened for a pipeline's port when it starts.

use std::path::{Path, PathBuf};

use crossbeam_channel::Sender;
use plugin_api::abi::source_kind;

use crate::code::SourceSpec;
use crate::runtime::Msg;

/// What a running host source holds for a pipeline (a task, a subscription); dropping it
/// stops the delivery.
pub struct Held {
    _inner: Box<dyn Send>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held")
    }
}

/// Where host sources come from: the directory relative paths resolve against, and the
/// shared ones (listeners, stdin).
#[derive(Debug, Default)]
pub struct Feeds {
    base: Option<PathBuf>,
}

impl Feeds {
    /// No base directory yet (relative paths resolve against the working directory).
    pub fn new() -> Feeds {
        Feeds::default()
    }

    /// Relative paths resolve against `dir`.
    pub fn set_base_dir(&mut self, dir: &Path) {
        self.base = Some(dir.to_path_buf());
    }

    /// Opens the host source of `spec` for `port`, delivering into `tx`: `Ok(None)` for a
    /// source the pipeline thread runs itself, an error message naming the cause when the
    /// source cannot be opened (an address in use).
    pub fn open(
        &mut self,
        spec: &SourceSpec,
        port: u32,
        tx: &Sender<Msg>,
    ) -> Result<Option<Held>, String> {
        let _ = (port, tx);
        match spec.kind {
            source_kind::STDIN_LINES | source_kind::FILE_LINES | source_kind::TCP_LINES => {
                Err(format!("{}: line sources are being wired", spec.label))
            }
            _ => Ok(None),
        }
    }
}
