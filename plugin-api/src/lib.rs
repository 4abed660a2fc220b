//! The contract between the hmr host and the plugin crates it hot-reloads.
//!
//! A plugin crate is a `cdylib` that depends on this crate, writes its pipelines in a
//! `register` function with the DSL ([`Plugin::pipeline`](dsl::Plugin::pipeline), sources
//! [`interval_ms`](dsl::interval_ms) and [`range`](dsl::range), operators `map`, `filter`,
//! `scan`, `scan_map`, `reduce`, `take`, `tap`, `log`, keyed `scope`s, and the rest of the
//! rxRust set in [`ops`]: `distinct`, `skip`, `take_while`, `buffer_count`, `flat_map`,
//! ...) and exports it with [`export_plugin!`]:
//!
//! ```
//! use plugin_api::prelude::*;
//!
//! fn register(p: &mut Plugin) {
//!     p.pipeline("counter", interval_ms(20))
//!         .map(|n: u64| n * 2)
//!         .filter(|n: &u64| n % 3 != 1)
//!         .scan(0u64, |acc: u64, n: u64| acc + n)
//!         .log();
//! }
//!
//! plugin_api::export_plugin!(register);
//! ```
//!
//! The crate has three parts: [`abi`], the `#[repr(C)]` types and `extern "C"` signatures
//! that are all that crosses the library boundary; [`dsl`], which compiles each pipeline
//! into one monomorphised entry point while the host keeps its operators' state; and
//! [`fingerprint`] and [`shape`], the type fingerprints and layout descriptions the host
//! compares before it lets a new version touch old state (declare state structs in
//! [`state!`]). It has no dependencies, so a clean plugin build stays short.

pub mod abi;
pub mod dsl;
pub mod fanin;
pub mod fingerprint;
pub mod higher;
pub mod ops;
pub mod shape;
pub mod source;
pub mod time;

/// What a plugin crate needs: `use plugin_api::prelude::*;`.
pub mod prelude {
    pub use crate::dsl::{
        Chain, Pipe, Plugin, Source, Stream, file_lines, interval_ms, of, range, stdin_lines,
        subject, tcp_lines,
    };
    pub use crate::higher::HigherOrderOperators;
    pub use crate::ops::Operators;
    pub use crate::shape::Shape;
    pub use crate::state;
    pub use crate::time::TimeOperators;
}

/// Exports `register` (a `fn(&mut Plugin)`) as this library's plugin entry point, together
/// with the ABI header the host checks before calling anything else.
#[macro_export]
macro_rules! export_plugin {
    ($register:path) => {
        #[doc(hidden)]
        #[unsafe(no_mangle)]
        pub extern "C" fn hmr_plugin_header() -> *const $crate::abi::PluginHeader {
            unsafe extern "C" fn __hmr_register(host: *const $crate::abi::HostApi) -> bool {
                // SAFETY: the host passes a `HostApi` valid for the duration of this call.
                unsafe { $crate::dsl::run_register(host, $register) }
            }
            static HEADER: $crate::abi::PluginHeader =
                $crate::abi::PluginHeader::new(__hmr_register);
            &HEADER
        }
    };
}
