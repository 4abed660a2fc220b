//! Loading one plugin version: copy the built library, open it, check its ABI header.
//!
//! 1. **Copy** the library cargo built to a private, unique path beside it, under the
//!    build's target directory (`<target>/debug/hmr-host/<pid>-<n>-v{N}-{attempt}-{file}`,
//!    never reused, unlinked once mapped), so the next build can overwrite cargo's output
//!    while this version stays mapped, and so the dynamic loader never hands back an
//!    already-open copy of an older build under the same name. Not the system temp dir: a
//!    `noexec` `/tmp` refuses to map code, and on a tmpfs `/tmp` every unlinked but mapped
//!    copy keeps its pages in memory. A copy left by a host that died between the copy and
//!    the unlink (a `SIGKILL`) is removed by the next host to use the directory, once no
//!    process of that pid is alive; a host stopped by a signal removes its own
//!    ([`remove_own_copies`]).
//!    Before the copy is opened, its ELF headers are checked against its length: `dlopen`
//!    maps segments straight from the file, so a half-written library (cargo still linking,
//!    a copy cut short) would otherwise crash the host with `SIGBUS` instead of failing.
//! 2. **Open** it with `RTLD_NOW | RTLD_LOCAL`: every symbol resolves now (a broken library
//!    fails here, not at its first call) and none of its symbols leak into the global scope
//!    where the next version would bind to them.
//! 3. **Read the header** through `hmr_plugin_header`: first the frozen fields (magic, ABI
//!    version, header size), then, only if they match, the plugin-api version, the rustc
//!    version, the target and the panic strategy (which must be `unwind`).
//! 4. **Keep it mapped forever.** A [`LibVersion`] never calls `dlclose`: closures, drop glue
//!    and thread-local destructors of the version may still run, and on glibc unloading a Rust
//!    library with thread-local destructors is unsound (see ARCHITECTURE.md, hazards).

use std::collections::BTreeSet;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use plugin_api::abi::{self, PluginHeader, RStr};

/// Why a library could not be loaded. Each variant names the library.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The private copy could not be made.
    #[error("cannot copy {from} to {to}: {source}")]
    Copy {
        /// Cargo's output.
        from: PathBuf,
        /// The private copy.
        to: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is cut short or is not a shared library for this machine.
    #[error("{path} is not a complete shared library: {reason}")]
    Incomplete {
        /// The library.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// Cargo's library could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The library.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `dlopen` refused the file (truncated, half-written, not a library, missing symbols).
    #[error("cannot open {path}: {source}")]
    Open {
        /// The library.
        path: PathBuf,
        /// The loader's message.
        source: libloading::Error,
    },
    /// The library does not export the entry symbol: not a plugin crate.
    #[error(
        "{path} does not export `{symbol}`: is it a plugin crate ending in `plugin_api::export_plugin!(register);`?"
    )]
    MissingSymbol {
        /// The library.
        path: PathBuf,
        /// The symbol looked up.
        symbol: String,
    },
    /// `hmr_plugin_header` returned a null pointer.
    #[error("{path}: `hmr_plugin_header` returned a null pointer")]
    NullHeader {
        /// The library.
        path: PathBuf,
    },
    /// The header's magic bytes are wrong: not a header of ours.
    #[error(
        "{path}: the plugin header starts with \"{}\", expected \"{}\": not a header written by plugin-api",
        found.escape_ascii(),
        expected.escape_ascii()
    )]
    BadMagic {
        /// The library.
        path: PathBuf,
        /// What we expect.
        expected: [u8; 8],
        /// What the library has.
        found: [u8; 8],
    },
    /// The plugin was built with a panic strategy other than `unwind`: a panic in its code
    /// could not be caught and would end the host's process.
    #[error(
        "{path} was built with panic strategy `{found}` (`panic = \"abort\"` in the plugin's profile, or `-C panic=abort`): a panic in its code would abort the host; build it with `panic = \"unwind\"`, the default"
    )]
    PanicStrategy {
        /// The library.
        path: PathBuf,
        /// The plugin's strategy.
        found: String,
    },
    /// A header field does not match this host.
    #[error(
        "{path} was built with {field} {found}, this host has {expected}: rebuild the plugin against this host's plugin-api"
    )]
    Mismatch {
        /// The library.
        path: PathBuf,
        /// Which field (`ABI version`, `plugin-api version`, `rustc`, `target`, `header size`).
        field: &'static str,
        /// This host's value.
        expected: String,
        /// The plugin's value.
        found: String,
    },
}

/// A loaded, checked plugin library. Never unmapped.
pub struct LibVersion {
    version: u64,
    /// The private copy that was mapped (unlinked once open).
    path: PathBuf,
    /// The file cargo built, which the copy was made from.
    built: PathBuf,
    header: *const PluginHeader,
    _lib: ManuallyDrop<libloading::Library>,
}

impl std::fmt::Debug for LibVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibVersion")
            .field("version", &self.version)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

// SAFETY: `header` points at immutable `'static` data in a library that is never unmapped
// (`_lib` is never dropped), so the pointer may be shared and sent between threads.
unsafe impl Send for LibVersion {}
// SAFETY: as above; nothing in a `LibVersion` is mutated after construction.
unsafe impl Sync for LibVersion {}

impl LibVersion {
    /// The plugin version number.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The private copy that is mapped (its name; the file itself is unlinked once open).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The library cargo built, which this version is a copy of.
    pub fn built(&self) -> &Path {
        &self.built
    }

    /// The checked header.
    pub fn header(&self) -> &PluginHeader {
        // SAFETY: checked in `Loader::load` (magic, ABI version and size match this build of
        // plugin-api) and the library stays mapped for the life of the process.
        unsafe { &*self.header }
    }
}

/// The directory beside cargo's library that holds the private copies.
pub const COPY_DIR: &str = "hmr-host";

/// Copies and opens plugin libraries under private names.
#[derive(Debug)]
pub struct Loader {
    /// `<pid>-<n>`: every copy's file name starts with it.
    prefix: String,
    attempts: AtomicU64,
    /// The copy directories this loader has used (cleaned of dead hosts' copies first).
    dirs: Mutex<BTreeSet<PathBuf>>,
}

static LOADER_SEQ: AtomicU64 = AtomicU64::new(0);

/// The copy directories this process has used, for [`remove_own_copies`].
static COPY_DIRS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

impl Loader {
    /// A loader whose copies are made in [`COPY_DIR`] beside each library it loads. Each
    /// copy is unlinked as soon as it is mapped.
    pub fn new() -> std::io::Result<Loader> {
        let prefix = format!(
            "{}-{}",
            std::process::id(),
            LOADER_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Ok(Loader {
            prefix,
            attempts: AtomicU64::new(0),
            dirs: Mutex::new(BTreeSet::new()),
        })
    }

    /// Where copies of `built` go: [`COPY_DIR`] beside it, created (and cleaned of the copies
    /// of dead hosts) on first use.
    fn copy_dir(&self, built: &Path) -> std::io::Result<PathBuf> {
        let dir = built.parent().unwrap_or(Path::new(".")).join(COPY_DIR);
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        if !dirs.contains(&dir) || !dir.is_dir() {
            std::fs::create_dir_all(&dir)?;
            remove_stale_copies(&dir);
            dirs.insert(dir.clone());
            COPY_DIRS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(dir.clone());
        }
        Ok(dir)
    }

    /// Loads the library cargo built at `built` as plugin version `version`; also returns
    /// how long the header check took.
    pub fn load(
        &self,
        built: &Path,
        version: u64,
    ) -> Result<(Arc<LibVersion>, std::time::Duration), LoadError> {
        let bytes = read(built)?;
        self.load_bytes(built, &bytes, version)
    }

    /// [`Loader::load`] of `bytes`, already read from `built` (by [`read`]): what is checked,
    /// copied and mapped is exactly those bytes, whatever happens to cargo's file meanwhile.
    pub fn load_bytes(
        &self,
        built: &Path,
        bytes: &[u8],
        version: u64,
    ) -> Result<(Arc<LibVersion>, std::time::Duration), LoadError> {
        let file = built
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".to_owned());
        // One name per attempt, never reused: a library that failed its checks stays mapped,
        // and writing new bytes over its file (or opening the same name again, which the
        // dynamic loader answers with the old, still-open handle) would corrupt it.
        let attempt = self.attempts.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-v{version}-{attempt}-{file}", self.prefix);
        check_complete(bytes).map_err(|reason| LoadError::Incomplete {
            path: built.to_owned(),
            reason,
        })?;
        let dir = self.copy_dir(built).map_err(|source| LoadError::Copy {
            from: built.to_owned(),
            to: built.with_file_name(COPY_DIR).join(&name),
            source,
        })?;
        let path = dir.join(name);
        write_new(&path, bytes).map_err(|source| {
            // A copy cut short (a full disk) must not stay behind.
            let _ = std::fs::remove_file(&path);
            LoadError::Copy {
                from: built.to_owned(),
                to: path.clone(),
                source,
            }
        })?;
        let opened = open(&path);
        // The mapping outlives the file: nothing of ours is left in the target dir, however
        // many versions a session loads.
        let _ = std::fs::remove_file(&path);
        let lib = opened?;
        let validate = std::time::Instant::now();
        let header = match read_header(&lib, built) {
            Ok(h) => h,
            Err(e) => {
                // Its code ran (initialisers, the header function): like every library we
                // opened, it stays mapped.
                std::mem::forget(lib);
                return Err(e);
            }
        };
        let lib = Arc::new(LibVersion {
            version,
            path,
            built: built.to_owned(),
            header,
            _lib: ManuallyDrop::new(lib),
        });
        Ok((lib, validate.elapsed()))
    }
}

/// Reads the library cargo built, once: the reloader hashes these bytes to skip an unchanged
/// build and then loads the same bytes ([`Loader::load_bytes`]).
pub fn read(built: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(built).map_err(|source| LoadError::Read {
        path: built.to_owned(),
        source,
    })
}

/// The pid a copy's file name starts with (`<pid>-<n>-v...`).
fn owner_pid(name: &str) -> Option<u32> {
    name.split('-').next()?.parse().ok()
}

/// Whether a process with this pid is alive (or may be: a pid we may not signal).
#[cfg(unix)]
fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return true;
    };
    // SAFETY: kill(2) with signal 0 sends nothing; it only checks that the pid exists and
    // may be signalled. It takes plain integers and touches no memory of ours.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(not(unix))]
fn alive(_pid: u32) -> bool {
    true
}

/// Removes the copies in `dir` whose host is no longer alive (it died between copying and
/// unlinking: killed by `SIGKILL`, say).
fn remove_stale_copies(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if let Some(pid) = owner_pid(&name.to_string_lossy())
            && pid != std::process::id()
            && !alive(pid)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Removes every copy this process has made that is still on disk (a load interrupted between
/// copy and unlink). For a host stopped by a signal, just before it exits.
pub fn remove_own_copies() {
    let own = std::process::id();
    let dirs = COPY_DIRS.lock().unwrap_or_else(|e| e.into_inner());
    for dir in dirs.iter() {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if owner_pid(&entry.file_name().to_string_lossy()) == Some(own) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Writes `bytes` to a file that must not exist yet.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(bytes)
}

/// Checks that an ELF file holds every byte its headers point at (the program headers'
/// segments and the section header table). Other formats pass unchecked.
fn check_complete(bytes: &[u8]) -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        // Mach-O and PE are not checked here (untested platforms); the loader decides.
        return Ok(());
    }
    let len = bytes.len() as u64;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err(format!("{len} bytes without an ELF header"));
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".to_owned());
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]) as u64;
    let u32_at = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&bytes[at..at + 4]);
        u32::from_le_bytes(b)
    };
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (phoff, shoff) = (u64_at(0x20), u64_at(0x28));
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    let (shentsize, shnum) = (u16_at(0x3a), u16_at(0x3c));
    let table_end = |off: u64, size: u64, n: u64| off.checked_add(size.checked_mul(n)?);
    match table_end(phoff, phentsize, phnum) {
        Some(end) if end <= len && phentsize >= 56 => {}
        _ => {
            return Err(format!(
                "program headers run past the end of its {len} bytes"
            ));
        }
    }
    match table_end(shoff, shentsize, shnum) {
        Some(end) if end <= len => {}
        _ => {
            return Err(format!(
                "section headers run past the end of its {len} bytes"
            ));
        }
    }
    for i in 0..phnum {
        let at = (phoff + i * phentsize) as usize;
        let (kind, offset, filesz) = (u32_at(at), u64_at(at + 8), u64_at(at + 32));
        const PT_LOAD: u32 = 1;
        const PT_DYNAMIC: u32 = 2;
        if (kind == PT_LOAD || kind == PT_DYNAMIC)
            && offset.checked_add(filesz).is_none_or(|end| end > len)
        {
            return Err(format!(
                "segment {i} needs bytes up to {} but the file has {len}: written only in part?",
                offset.saturating_add(filesz)
            ));
        }
    }
    Ok(())
}

#[cfg(unix)]
fn open(path: &Path) -> Result<libloading::Library, LoadError> {
    use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
    // SAFETY: opening a library runs its initialisers (std's, and those of crates such as
    // `ctor` or `inventory` if the plugin uses them). The file is a copy of what cargo built
    // from the plugin crate the user pointed us at: running its code is the purpose of this
    // tool, and its initialisers are its author's responsibility like the rest of its code.
    unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
        .map(libloading::Library::from)
        .map_err(|source| LoadError::Open {
            path: path.to_owned(),
            source,
        })
}

#[cfg(not(unix))]
fn open(path: &Path) -> Result<libloading::Library, LoadError> {
    // SAFETY: as on unix: running the plugin's initialisers is the purpose of the tool.
    unsafe { libloading::Library::new(path) }.map_err(|source| LoadError::Open {
        path: path.to_owned(),
        source,
    })
}

fn read_header(lib: &libloading::Library, path: &Path) -> Result<*const PluginHeader, LoadError> {
    let symbol = String::from_utf8_lossy(abi::HEADER_SYMBOL).into_owned();
    // SAFETY: every plugin built with plugin-api exports `hmr_plugin_header` with exactly
    // this signature (`export_plugin!`). A foreign library exporting the name with another
    // signature cannot be told apart here; the magic check below catches most such cases.
    let get_header: libloading::Symbol<'_, extern "C" fn() -> *const PluginHeader> =
        unsafe { lib.get(abi::HEADER_SYMBOL) }.map_err(|_| LoadError::MissingSymbol {
            path: path.to_owned(),
            symbol,
        })?;
    let header = get_header();
    if header.is_null() {
        return Err(LoadError::NullHeader {
            path: path.to_owned(),
        });
    }
    // SAFETY: the first 16 bytes of every header version are `magic`, `abi_version` and
    // `header_size` (frozen fields, `#[repr(C)]`), so reading them is valid whatever
    // version of plugin-api built the library.
    let (magic, abi_version, header_size) = unsafe {
        let base = header.cast::<u8>();
        (
            base.cast::<[u8; 8]>().read_unaligned(),
            base.add(8).cast::<u32>().read_unaligned(),
            base.add(12).cast::<u32>().read_unaligned(),
        )
    };
    if magic != abi::MAGIC {
        return Err(LoadError::BadMagic {
            path: path.to_owned(),
            expected: abi::MAGIC,
            found: magic,
        });
    }
    if abi_version != abi::ABI_VERSION {
        return Err(mismatch(path, "ABI version", abi::ABI_VERSION, abi_version));
    }
    let size = std::mem::size_of::<PluginHeader>();
    if header_size as usize != size {
        return Err(mismatch(path, "header size", size, header_size));
    }
    // SAFETY: magic, ABI version and size match, so the whole struct has our layout; it is
    // static data in a library we never unmap.
    let h = unsafe { &*header };
    let fields: [(&'static str, RStr, &str); 3] = [
        ("plugin-api version", h.api_version, abi::API_VERSION),
        ("rustc", h.rustc_version, abi::RUSTC_VERSION),
        ("target", h.target, abi::TARGET),
    ];
    for (field, theirs, ours) in fields {
        // SAFETY: header strings point at string constants in the library image.
        let theirs = unsafe { theirs.to_string_lossy() }.unwrap_or_default();
        if theirs != ours {
            return Err(mismatch(path, field, ours, theirs));
        }
    }
    // Whatever the host's own strategy: plugin panics must unwind to be caught.
    // SAFETY: as above, a string constant in the library image.
    let panic = unsafe { h.panic_strategy.to_string_lossy() }.unwrap_or_default();
    if panic != "unwind" {
        return Err(LoadError::PanicStrategy {
            path: path.to_owned(),
            found: panic.into_owned(),
        });
    }
    Ok(header)
}

fn mismatch(
    path: &Path,
    field: &'static str,
    expected: impl ToString,
    found: impl ToString,
) -> LoadError {
    LoadError::Mismatch {
        path: path.to_owned(),
        field,
        expected: expected.to_string(),
        found: found.to_string(),
    }
}
