//! Batch building: one [`MetricBatch`] per scrape, numbered without gaps per agent run, wrapped
//! into a spool [`Entry`] with its subject and JetStream message id.

use crate::spool::Entry;
use bytes::Bytes;
use demeter_common::wire::{MetricBatch, SCHEMA_VERSION, Sample, Source};
use demeter_common::{UnixMillis, subject};

/// Numbers batches for one agent run.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    source: Source,
    run_id: String,
    subject: String,
    next_seq: u64,
}

impl BatchBuilder {
    /// `source.job_id` is filled per batch from the exposition.
    pub fn new(source: Source, run_id: impl Into<String>) -> Self {
        let subject = subject::metrics(&source.namespace, &source.deployment, &source.taskmanager_id);
        BatchBuilder { source, run_id: run_id.into(), subject, next_seq: 0 }
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The `agent_seq` of the last batch built, if any.
    pub fn last_seq(&self) -> Option<u64> {
        self.next_seq.checked_sub(1)
    }

    /// Builds the next batch.
    pub fn build(
        &mut self,
        job_id: Option<String>,
        samples: Vec<Sample>,
        collected_at: UnixMillis,
    ) -> MetricBatch {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut source = self.source.clone();
        source.job_id = job_id;
        MetricBatch {
            schema_version: SCHEMA_VERSION,
            source,
            agent_run_id: self.run_id.clone(),
            agent_seq: seq,
            collected_at,
            samples,
        }
    }

    /// Encodes `batch` into a spool entry with subject and message id `<run_id>-<seq>`.
    pub fn entry(&self, batch: &MetricBatch) -> Entry {
        Entry {
            subject: self.subject.clone(),
            msg_id: msg_id(&batch.agent_run_id, batch.agent_seq),
            seq: batch.agent_seq,
            payload: Bytes::from(batch.encode()),
        }
    }
}

/// The JetStream message id of a batch: `<run_id>-<seq>`.
pub fn msg_id(run_id: &str, seq: u64) -> String {
    format!("{run_id}-{seq}")
}

/// A random 16-hex-digit run id.
pub fn new_run_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_numbered_without_gaps_and_carry_their_message_id() {
        let source = Source {
            namespace: "flink".into(),
            deployment: "cars".into(),
            job_id: None,
            taskmanager_id: "cars-tm-1.x".into(),
            pod: "cars-tm-1".into(),
            host: "node".into(),
        };
        let mut b = BatchBuilder::new(source, "abc");
        assert_eq!(b.subject(), "demeter.metrics.flink.cars.cars-tm-1_x");
        assert_eq!(b.last_seq(), None);
        for want in 0..3 {
            let batch = b.build(Some("job".into()), vec![], UnixMillis(1_700_000_000_000));
            assert_eq!(batch.agent_seq, want);
            let e = b.entry(&batch);
            assert_eq!(e.msg_id, format!("abc-{want}"));
            assert_eq!(e.seq, want);
            let back = MetricBatch::decode(&e.payload).unwrap();
            assert_eq!(back.source.job_id.as_deref(), Some("job"));
        }
        assert_eq!(b.last_seq(), Some(2));
        assert_eq!(new_run_id().len(), 16);
    }
}
