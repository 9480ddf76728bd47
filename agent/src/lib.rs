//! The Demeter agent: a sidecar that scrapes a Flink TaskManager's Prometheus reporter, maps the
//! exposition to Demeter's wire schema and publishes the batches to NATS JetStream.
//!
//! The pure parts are separate modules that do no I/O: [`prom_text`] (exposition parser),
//! [`select`] (Flink families → typed samples), [`batch`] (batches and sequence numbers) and the
//! bounded [`spool`] (behind an I/O trait).

pub mod prom_text;
pub mod select;
pub mod spool;
pub mod config;
pub mod container;
pub mod batch;
pub mod telemetry;
pub mod scrape;
pub mod publish;
pub mod agent;
