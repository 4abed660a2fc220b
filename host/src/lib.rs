//! The hmr host: runs the reactive pipelines of a plugin crate and hot-swaps their code on
//! every save, keeping subscriptions, sources and operator state alive.
//!
//! The pieces, in the order a save travels through them:
//! [`watch`] (file events, debounce) → [`cargo`] (build, find the cdylib) → [`loader`]
//! (private copy, `dlopen`, ABI header) → [`register`] (run the plugin's registration into
//! the tracking store, `hmr_track`) → [`reloader`] (reconcile by structural path) →
//! [`runtime`] (publish, migrate state at the next emission) → [`events`] (what is reported)
//! → [`output`] (printed on a thread of its own). [`session`] ties them together; [`testkit`]
//! drives them from tests.
//!
//! ```no_run
//! use host::events::Formatter;
//! use host::output::Printer;
//! use host::session::{Options, Session};
//!
//! let printer = Printer::stdout(Formatter::human(true), false, |_| {})?;
//! let session = Session::start(&Options::new("example-plugin"), printer.sink())?;
//! session.wait()?;
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod cargo;
pub mod clock;
pub mod code;
pub mod events;
pub mod feed;
pub(crate) mod inner;
pub mod inspect;
pub mod loader;
pub mod output;
pub mod record;
pub mod register;
pub mod reloader;
pub mod replay;
pub mod runtime;
pub mod session;
pub mod sources;
pub mod subjects;
pub mod testkit;
pub(crate) mod waits;
pub mod watch;
