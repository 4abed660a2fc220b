//! Running one plugin version's registration inside a `module-call`.
//!
//! The host lends the plugin a [`HostApi`] whose callbacks turn each DSL call into events of
//! the tracking store (`track-call`, `pipeline-call`, `operator-call`, their returns) and
//! collect the compiled pipelines. The run is all or nothing: the first error (a panic in
//! `register`, a key the store refuses, a state layout the host cannot allocate) makes the
//! whole run fail, the store rolls it back (`module-call-return` with `failed`), and every
//! pipeline collected so far is dropped.

use std::alloc::Layout;
use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use hmr_track::{Fingerprint, Id, ModuleId, ModuleOutcome, Recorder, Signature};
use plugin_api::abi::{self, HostApi, PipelineDesc, RFingerprint, RSignature, RStr};

use crate::code::{OpCode, PipelineCode};
use crate::loader::LibVersion;

/// A registration that did not run to its end.
#[derive(Debug, thiserror::Error)]
#[error("registration of {library} failed: {reason}")]
pub struct RegisterError {
    /// The library.
    pub library: String,
    /// The first error.
    pub reason: String,
}

struct Ctx<'a> {
    recorder: &'a mut Recorder,
    lib: Arc<LibVersion>,
    version: u64,
    signatures: HashMap<Id, Signature>,
    pipelines: Vec<PipelineCode>,
    error: Option<String>,
}

/// Handles are track ids + 1, so that 0 can mean "refused".
fn handle(id: Id) -> u64 {
    id + 1
}

fn track_of(handle: u64) -> Option<Id> {
    handle.checked_sub(1)
}

impl Ctx<'_> {
    fn fail(&mut self, reason: String) {
        if self.error.is_none() {
            self.error = Some(reason);
        }
    }

    fn track_call(&mut self, kind: &str, key: Option<&str>, sig: Signature) -> u64 {
        if self.error.is_some() {
            return 0;
        }
        let result = (|| {
            // Operators' signatures are kept for their state slots; other scopes need none.
            let (given, kept) = if matches!(kind, "pipeline" | "scope") {
                (sig, None)
            } else {
                (sig.clone(), Some(sig))
            };
            let track = self.recorder.track_call(kind, key, given)?;
            match kind {
                "pipeline" => {
                    let e = self.recorder.pipeline_call(key.unwrap_or_default())?;
                    self.recorder.pipeline_call_return(e)?;
                }
                "scope" => {}
                _ => {
                    let e = self.recorder.operator_call(kind)?;
                    self.recorder.operator_call_return(e)?;
                }
            }
            Ok::<(Id, Option<Signature>), hmr_track::ApplyError>((track, kept))
        })();
        match result {
            Ok((track, sig)) => {
                if let Some(sig) = sig {
                    self.signatures.insert(track, sig);
                }
                handle(track)
            }
            Err(e) => {
                self.fail(in_person_terms(kind, key, e));
                0
            }
        }
    }

    fn track_call_return(&mut self, handle: u64) {
        if self.error.is_some() {
            return;
        }
        let Some(track) = track_of(handle) else {
            return self.fail("track-call-return for a refused track".to_owned());
        };
        if let Err(e) = self.recorder.track_call_return(track) {
            self.fail(e.to_string());
        }
    }

    fn add_pipeline(&mut self, desc: &PipelineDesc) {
        // Take ownership of `env` first, so it is freed even if the run fails.
        let mut code = PipelineCode {
            // SAFETY: the plugin passes a name valid for the call.
            name: unsafe { desc.name.to_string_lossy() }
                .unwrap_or_default()
                .into_owned(),
            track: track_of(desc.track).unwrap_or(Id::MAX),
            version: self.version,
            source: desc.source,
            ops: Vec::new(),
            env: desc.env,
            push: desc.push,
            push_one: desc.push_one,
            complete: desc.complete,
            drop_env: desc.drop_env,
            lib: self.lib.clone(),
        };
        if self.error.is_some() {
            return;
        }
        let ops = if desc.n_ops == 0 {
            &[][..]
        } else {
            // SAFETY: the plugin passes `n_ops` descriptions valid for the call.
            unsafe { std::slice::from_raw_parts(desc.ops, desc.n_ops) }
        };
        for (i, op) in ops.iter().enumerate() {
            match self.op_code(op) {
                Ok(o) => code.ops.push(o),
                Err(e) => {
                    // SAFETY: the plugin passes a kind valid for the call.
                    let kind = unsafe { op.kind.to_string_lossy() }.unwrap_or_default();
                    return self.fail(format!(
                        "pipeline {}, operator {i} ({kind}): {e}",
                        code.name
                    ));
                }
            }
        }
        self.pipelines.push(code);
    }

    fn op_code(&self, op: &abi::OpDesc) -> Result<OpCode, String> {
        let track = track_of(op.track).ok_or("its track was refused")?;
        let sig = self.signatures.get(&track).ok_or_else(|| {
            format!(
                "track handle {} was not returned by a track-call of this run",
                op.track
            )
        })?;
        let fp = &op.state.fingerprint;
        let layout = Layout::from_size_align(fp.size, fp.align.max(1)).map_err(|_| {
            format!(
                "state of size {} and alignment {} is not a valid layout",
                fp.size, fp.align
            )
        })?;
        Ok(OpCode {
            track,
            path: String::new(),
            // SAFETY: the plugin passes a kind valid for the call.
            kind: unsafe { op.kind.to_string_lossy() }
                .unwrap_or_default()
                .into_owned(),
            signature: sig.clone(),
            layout,
            init: op.state.init,
            drop: op.state.drop,
        })
    }
}

fn fingerprint(fp: &RFingerprint) -> Option<Fingerprint> {
    // SAFETY: fingerprint names point at `'static` type names in the plugin image, valid for
    // the call (we copy them).
    let name = unsafe { fp.name.to_string_lossy() }?;
    Some(Fingerprint {
        name: name.into_owned(),
        size: fp.size as u64,
        align: fp.align as u64,
        hash: fp.hash,
    })
}

fn signature(kind: &str, sig: &RSignature) -> Signature {
    Signature {
        kind: kind.to_owned(),
        input: fingerprint(&sig.input),
        output: fingerprint(&sig.output),
        state: fingerprint(&sig.state),
        // SAFETY: the plugin passes a seed valid for the call.
        seed: unsafe { sig.seed.to_string_lossy() }.map(|s| s.into_owned()),
        children: Vec::new(),
    }
}

/// Runs `f` on the context behind `ctx`, never letting a host panic unwind into the plugin.
///
/// # Safety
/// `ctx` must be the `Ctx` that `register` put in the `HostApi`, alive and not otherwise
/// borrowed for the duration of the call.
unsafe fn with_ctx<R>(ctx: *mut c_void, fallback: R, f: impl FnOnce(&mut Ctx<'_>) -> R) -> R {
    // SAFETY: guaranteed by the caller.
    let ctx = unsafe { &mut *ctx.cast::<Ctx<'_>>() };
    match catch_unwind(AssertUnwindSafe(|| f(ctx))) {
        Ok(r) => r,
        Err(_) => {
            ctx.fail("the host panicked in a registration callback".to_owned());
            fallback
        }
    }
}

unsafe extern "C" fn cb_track_call(
    ctx: *mut c_void,
    kind: RStr,
    key: RStr,
    sig: *const RSignature,
) -> u64 {
    // SAFETY: `ctx` is ours (see `register`); the plugin passes strings and a signature
    // valid for the call.
    unsafe {
        with_ctx(ctx, 0, |c| {
            let kind = kind.to_string_lossy().unwrap_or_default();
            let key = key.to_string_lossy();
            let sig = signature(&kind, &*sig);
            c.track_call(&kind, key.as_deref(), sig)
        })
    }
}

unsafe extern "C" fn cb_track_call_return(ctx: *mut c_void, track: u64) {
    // SAFETY: `ctx` is ours (see `register`).
    unsafe { with_ctx(ctx, (), |c| c.track_call_return(track)) }
}

unsafe extern "C" fn cb_add_pipeline(ctx: *mut c_void, desc: *const PipelineDesc) {
    // SAFETY: `ctx` is ours; the plugin passes a description valid for the call.
    unsafe { with_ctx(ctx, (), |c| c.add_pipeline(&*desc)) }
}

unsafe extern "C" fn cb_fail(ctx: *mut c_void, message: RStr) {
    // SAFETY: `ctx` is ours; the plugin passes a message valid for the call.
    unsafe {
        with_ctx(ctx, (), |c| {
            let m = message.to_string_lossy().unwrap_or_default();
            c.fail(format!("register panicked: {m}"));
        })
    }
}

/// Runs the registration of `lib` as module `version` of `recorder`. On success returns the
/// compiled pipelines, operator paths filled in; on failure the run is rolled back in the
/// store and nothing of it remains.
pub fn register(
    lib: &Arc<LibVersion>,
    recorder: &mut Recorder,
) -> Result<(ModuleId, Vec<PipelineCode>), RegisterError> {
    let library = lib.built().display().to_string();
    let fail = |reason: String| RegisterError {
        library: library.clone(),
        reason,
    };
    let module = recorder
        .module_call(&library)
        .map_err(|e| fail(e.to_string()))?;
    let mut ctx = Ctx {
        recorder,
        lib: lib.clone(),
        version: module,
        signatures: HashMap::new(),
        pipelines: Vec::new(),
        error: None,
    };
    let api = HostApi {
        abi_version: abi::ABI_VERSION,
        ctx: (&raw mut ctx).cast::<c_void>(),
        track_call: cb_track_call,
        track_call_return: cb_track_call_return,
        add_pipeline: cb_add_pipeline,
        fail: cb_fail,
    };
    // SAFETY: the header was checked by the loader (same ABI), `api` and the `ctx` it points
    // at live across the call, and the plugin catches its own panics.
    let ran = unsafe { (lib.header().register)(&api) };
    let Ctx {
        recorder,
        pipelines,
        error,
        ..
    } = ctx;
    let error = match (ran, error) {
        (_, Some(e)) => Some(e),
        (false, None) => Some("register panicked".to_owned()),
        (true, None) => None,
    };
    if let Some(reason) = error {
        // Roll back the run; the collected pipelines drop (freeing their closures) on return.
        recorder
            .module_call_return(
                module,
                ModuleOutcome::Failed {
                    reason: reason.clone(),
                },
            )
            .map_err(|e| fail(format!("{reason}; rolling back failed too: {e}")))?;
        drop(pipelines);
        return Err(fail(reason));
    }
    if let Err(e) = recorder.module_call_return(module, ModuleOutcome::Ok) {
        let reason = e.to_string();
        // Roll back: the run is still open after a refused return.
        let _ = recorder.module_call_return(
            module,
            ModuleOutcome::Failed {
                reason: reason.clone(),
            },
        );
        return Err(fail(reason));
    }
    let mut pipelines = pipelines;
    for p in &mut pipelines {
        for op in &mut p.ops {
            op.path = recorder
                .state
                .track(op.track)
                .map(|t| t.path.clone())
                .unwrap_or_default();
        }
    }
    Ok((module, pipelines))
}

/// A refused `track-call` in the terms of the person who wrote the DSL call: pipelines have
/// names, scopes have keys (the store's own text speaks of paths and modules).
fn in_person_terms(kind: &str, key: Option<&str>, e: hmr_track::ApplyError) -> String {
    use hmr_track::ApplyError::{DuplicatePath, InvalidKey};
    let what = if kind == "pipeline" { "name" } else { "key" };
    match (e, key) {
        (DuplicatePath { .. }, Some(key)) if kind == "pipeline" => {
            format!("two pipelines are named `{key}`")
        }
        (DuplicatePath { path, .. }, Some(key)) => {
            format!("two {kind}s side by side are keyed `{key}` (at {path})")
        }
        (InvalidKey { key, .. }, _) => format!(
            "{kind} {what} {key:?} is not allowed: a {what} is non-empty and holds none of \
             '|', ':', '#' and no control character"
        ),
        (e, _) => e.to_string(),
    }
}
