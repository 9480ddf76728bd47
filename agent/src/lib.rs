//! The Demeter agent: a sidecar that scrapes a Flink TaskManager's Prometheus reporter, maps the
//! exposition to Demeter's wire schema and publishes the batches to NATS JetStream.
//!
//! The pure parts are separate modules that do no I/O: [`prom_text`] (exposition parser),
//! [`select`] (Flink families → typed samples), [`batch`] (batches and sequence numbers) and the
//! bounded [`spool`] (behind an I/O trait).

pub mod agent;
pub mod batch;
pub mod config;
pub mod container;
pub mod prom_text;
pub mod publish;
pub mod scrape;
pub mod select;
pub mod spool;
pub mod telemetry;
