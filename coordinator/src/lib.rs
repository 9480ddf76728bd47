//! Demeter's coordinator: the runtime around the decision core (`demeter-core`).
//!
//! - [`runtime`]: NATS JetStream ingest, one driver task per job, the SQLite store, the HTTP API
//!   and metrics (`demeter-coordinator run`).
//! - [`backend`]: the [`backend::Backend`] trait through which decisions are carried out, with
//!   the `none` and `file` backends.
//! - [`cmd`]: the subcommands of the `demeter-coordinator` binary.
//! - [`plot`]: PNG plots of a simulator comparison.

pub mod backend;
pub mod cmd;
pub mod plot;
pub mod runtime;
