//! The outage spool: a bounded FIFO of encoded batches between the scrape loop and the publisher.
//!
//! Every batch goes through the spool; while NATS is up it holds zero or one entry. While NATS is
//! unreachable or slow, it grows, and after the reconnect the publisher drains it in order.
//!
//! # Layout
//!
//! The queue has two tiers. The *memory* tier holds the newest entries, at most
//! `memory_capacity`. With a spool directory, the *disk* tier holds older entries, one file each,
//! at most `disk_max_bytes` in total: when the memory tier is full, its oldest entry spills to the
//! disk tier. The publisher always takes the oldest entry, from disk first.
//!
//! # Invariants
//!
//! - Order: entries leave in the order they were pushed (spool indexes are strictly increasing,
//!   and every disk index is lower than every memory index).
//! - Bound: `memory_len() <= memory_capacity` and `disk_bytes() <= disk_max_bytes` after every
//!   operation. When both are full, the *oldest* entry is dropped and counted
//!   ([`OutageSpool::dropped_total`]); pushing never fails and never waits on the network.
//! - No loss besides counted drops: an entry leaves the spool only through [`OutageSpool::ack`]
//!   of its index (after the publish ack) or as a counted drop. A disk entry that cannot be read
//!   back (corrupt or truncated) is a counted drop too.
//! - Crash recovery: the disk tier is a directory of self-checking files named by spool index;
//!   [`OutageSpool::open`] picks them up again after a restart. [`OutageSpool::persist_memory`]
//!   moves the memory tier to disk before a shutdown that could not drain.
//!
//! File access goes through [`SpoolIo`] so that a model test can drive the spool with a fake
//! file system that fails on demand (like Vector's `disk_v2` buffer and its `Filesystem` trait).

use bytes::Bytes;
use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;

/// One encoded batch ready to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub subject: String,
    /// JetStream message id (`Nats-Msg-Id`): `<run_id>-<seq>`.
    pub msg_id: String,
    pub seq: u64,
    pub payload: Bytes,
}

/// File operations of the disk tier.
pub trait SpoolIo {
    /// The indexes and sizes of the stored entries, in any order.
    fn list(&mut self) -> io::Result<Vec<(u64, u64)>>;
    /// Stores `data` under `index` atomically (a reader sees all of it or nothing).
    fn write(&mut self, index: u64, data: &[u8]) -> io::Result<()>;
    fn read(&mut self, index: u64) -> io::Result<Vec<u8>>;
    fn remove(&mut self, index: u64) -> io::Result<()>;
}

/// The disk tier in a directory: one file `<index>.spool` per entry, written through a temporary
/// file and a rename.
#[derive(Debug)]
pub struct DirIo {
    dir: PathBuf,
}

impl DirIo {
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(DirIo { dir })
    }

    fn path(&self, index: u64) -> PathBuf {
        self.dir.join(format!("{index:020}.spool"))
    }
}

impl SpoolIo for DirIo {
    fn list(&mut self) -> io::Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(idx) = name.strip_suffix(".spool").and_then(|n| n.parse::<u64>().ok()) {
                out.push((idx, e.metadata()?.len()));
            } else if name.ends_with(".tmp") {
                // A write that a crash interrupted.
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(out)
    }

    fn write(&mut self, index: u64, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let tmp = self.dir.join(format!("{index:020}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_data()?;
        std::fs::rename(&tmp, self.path(index))
    }

    fn read(&mut self, index: u64) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(index))
    }

    fn remove(&mut self, index: u64) -> io::Result<()> {
        match std::fs::remove_file(self.path(index)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

/// Bounds of the spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Entries kept in memory.
    pub memory_capacity: usize,
    /// Bytes kept on disk (ignored without a disk tier).
    pub disk_max_bytes: u64,
}

/// What [`OutageSpool::push`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushOutcome {
    /// Entries dropped to make room (oldest first).
    pub dropped: u64,
    /// Disk writes that failed (their entries were dropped and counted in `dropped`).
    pub io_errors: u64,
}

struct Disk<I> {
    io: I,
    /// (index, size in bytes), oldest first.
    entries: VecDeque<(u64, u64)>,
    bytes: u64,
}

/// The bounded two-tier FIFO; see the module doc.
pub struct OutageSpool<I: SpoolIo> {
    limits: SpoolLimits,
    memory: VecDeque<(u64, Entry)>,
    disk: Option<Disk<I>>,
    next_index: u64,
    dropped_total: u64,
    io_errors_total: u64,
    /// The disk entry last read by `front`, so that a retried publish does not read it again.
    cached_front: Option<(u64, Entry)>,
}

impl<I: SpoolIo> std::fmt::Debug for OutageSpool<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutageSpool")
            .field("limits", &self.limits)
            .field("memory_len", &self.memory.len())
            .field("disk_len", &self.disk_len())
            .field("disk_bytes", &self.disk_bytes())
            .field("dropped_total", &self.dropped_total)
            .finish()
    }
}

impl OutageSpool<DirIo> {
    /// A memory-only spool.
    pub fn memory_only(memory_capacity: usize) -> Self {
        OutageSpool::new(SpoolLimits { memory_capacity, disk_max_bytes: 0 }, None)
    }
}

impl<I: SpoolIo> OutageSpool<I> {
    fn new(limits: SpoolLimits, disk: Option<Disk<I>>) -> Self {
        assert!(limits.memory_capacity >= 1, "the spool needs room for at least one entry");
        let next_index = disk.as_ref().and_then(|d| d.entries.back()).map_or(0, |(i, _)| i + 1);
        OutageSpool {
            limits,
            memory: VecDeque::new(),
            disk,
            next_index,
            dropped_total: 0,
            io_errors_total: 0,
            cached_front: None,
        }
    }

    /// A spool with a disk tier, recovering the entries that `io` already holds (oldest
    /// first). If they exceed `disk_max_bytes`, the oldest are dropped and counted.
    pub fn open(limits: SpoolLimits, mut io: I) -> io::Result<Self> {
        let mut entries = io.list()?;
        entries.sort_unstable();
        let bytes = entries.iter().map(|(_, s)| s).sum();
        let mut spool = OutageSpool::new(limits, Some(Disk { io, entries: entries.into(), bytes }));
        spool.trim_disk(0);
        Ok(spool)
    }

    /// Entries waiting, in memory and on disk.
    pub fn len(&self) -> usize {
        self.memory.len() + self.disk_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn memory_len(&self) -> usize {
        self.memory.len()
    }

    pub fn disk_len(&self) -> usize {
        self.disk.as_ref().map_or(0, |d| d.entries.len())
    }

    pub fn disk_bytes(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.bytes)
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    pub fn io_errors_total(&self) -> u64 {
        self.io_errors_total
    }

    /// Appends `entry`, making room by spilling or dropping the oldest entries. Never fails.
    pub fn push(&mut self, entry: Entry) -> PushOutcome {
        let (d0, e0) = (self.dropped_total, self.io_errors_total);
        let index = self.next_index;
        self.next_index += 1;
        self.memory.push_back((index, entry));
        while self.memory.len() > self.limits.memory_capacity {
            let Some((idx, oldest)) = self.memory.pop_front() else { break };
            self.spill(idx, oldest);
        }
        PushOutcome { dropped: self.dropped_total - d0, io_errors: self.io_errors_total - e0 }
    }

    /// Moves one entry to the disk tier, or drops it (counted) when there is none, it is larger
    /// than the whole tier, or the write fails. Returns whether it was stored.
    fn spill(&mut self, idx: u64, entry: Entry) -> bool {
        let data = encode_entry(&entry);
        let size = data.len() as u64;
        if self.disk.is_none() || size > self.limits.disk_max_bytes {
            self.dropped_total += 1;
            return false;
        }
        self.trim_disk(size);
        let Some(disk) = self.disk.as_mut() else { return false };
        match disk.io.write(idx, &data) {
            Ok(()) => {
                disk.entries.push_back((idx, size));
                disk.bytes += size;
                true
            }
            Err(_) => {
                self.io_errors_total += 1;
                self.dropped_total += 1;
                false
            }
        }
    }

    /// Drops the oldest disk entries until `extra` more bytes fit.
    fn trim_disk(&mut self, extra: u64) {
        let max = self.limits.disk_max_bytes;
        let Some(disk) = self.disk.as_mut() else { return };
        while disk.bytes + extra > max {
            let Some((idx, size)) = disk.entries.pop_front() else { break };
            disk.bytes -= size;
            self.dropped_total += 1;
            if disk.io.remove(idx).is_err() {
                self.io_errors_total += 1;
            }
            if self.cached_front.as_ref().is_some_and(|(i, _)| *i == idx) {
                self.cached_front = None;
            }
        }
    }

    /// The oldest entry and its spool index, reading it from disk if needed. A disk entry that
    /// cannot be read back is dropped (and counted), and the next one is tried.
    pub fn front(&mut self) -> Option<(u64, Entry)> {
        while let Some(disk) = self.disk.as_mut() {
            let Some(&(idx, size)) = disk.entries.front() else { break };
            if let Some((ci, ce)) = &self.cached_front
                && *ci == idx
            {
                return Some((idx, ce.clone()));
            }
            match disk.io.read(idx).ok().and_then(|d| decode_entry(&d)) {
                Some(e) => {
                    self.cached_front = Some((idx, e.clone()));
                    return Some((idx, e));
                }
                None => {
                    disk.entries.pop_front();
                    disk.bytes -= size;
                    let _ = disk.io.remove(idx);
                    self.dropped_total += 1;
                    self.io_errors_total += 1;
                }
            }
        }
        self.memory.front().cloned()
    }

    /// Removes the entry `index` if it is still the oldest (it may have been dropped while it
    /// was being published). Returns whether it was removed.
    pub fn ack(&mut self, index: u64) -> bool {
        if let Some(disk) = self.disk.as_mut()
            && let Some(&(idx, size)) = disk.entries.front()
        {
            if idx != index {
                return false;
            }
            disk.entries.pop_front();
            disk.bytes -= size;
            if self.cached_front.as_ref().is_some_and(|(i, _)| *i == idx) {
                self.cached_front = None;
            }
            if disk.io.remove(idx).is_err() {
                // The file stays behind; a restart would publish it again, and the server's
                // duplicate window or the receiver's seq check absorbs it.
                self.io_errors_total += 1;
            }
            return true;
        }
        if self.memory.front().is_some_and(|(i, _)| *i == index) {
            self.memory.pop_front();
            return true;
        }
        false
    }

    /// Writes the memory tier to disk (oldest first), so that a restart can publish it. Entries
    /// that do not fit push out older ones, as [`OutageSpool::push`] does. Returns how many
    /// entries were written. Without a disk tier, nothing happens.
    pub fn persist_memory(&mut self) -> usize {
        if self.disk.is_none() {
            return 0;
        }
        let mut written = 0;
        while let Some((idx, e)) = self.memory.pop_front() {
            if self.spill(idx, e) {
                written += 1;
            }
        }
        written
    }
}

const MAGIC: &[u8; 4] = b"DMS1";
const HEADER: usize = 4 + 4 + 8 + 2 + 2 + 4;

/// `DMS1 | crc32 | seq u64 | subject_len u16 | msg_id_len u16 | payload_len u32 | subject |
/// msg_id | payload`, little endian; the CRC covers everything after itself.
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    let subject = &e.subject.as_bytes()[..e.subject.len().min(u16::MAX as usize)];
    let msg_id = &e.msg_id.as_bytes()[..e.msg_id.len().min(u16::MAX as usize)];
    let mut out = Vec::with_capacity(HEADER + subject.len() + msg_id.len() + e.payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&e.seq.to_le_bytes());
    out.extend_from_slice(&(subject.len() as u16).to_le_bytes());
    out.extend_from_slice(&(msg_id.len() as u16).to_le_bytes());
    out.extend_from_slice(&(e.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(subject);
    out.extend_from_slice(msg_id);
    out.extend_from_slice(&e.payload);
    let crc = crc32(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes what [`encode_entry`] wrote; `None` for anything else.
pub fn decode_entry(d: &[u8]) -> Option<Entry> {
    if d.len() < HEADER || &d[..4] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(d[4..8].try_into().ok()?);
    if crc32(&d[8..]) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(d[8..16].try_into().ok()?);
    let sl = u16::from_le_bytes(d[16..18].try_into().ok()?) as usize;
    let ml = u16::from_le_bytes(d[18..20].try_into().ok()?) as usize;
    let pl = u32::from_le_bytes(d[20..24].try_into().ok()?) as usize;
    if d.len() != HEADER + sl + ml + pl {
        return None;
    }
    let subject = std::str::from_utf8(&d[HEADER..HEADER + sl]).ok()?.to_string();
    let msg_id = std::str::from_utf8(&d[HEADER + sl..HEADER + sl + ml]).ok()?.to_string();
    let payload = Bytes::copy_from_slice(&d[HEADER + sl + ml..]);
    Some(Entry { subject, msg_id, seq, payload })
}

/// CRC-32 (IEEE 802.3), bitwise with a table built at compile time.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// An in-memory file system whose writes and reads fail on demand, and that can corrupt a
    /// stored file.
    #[derive(Clone, Debug, Default)]
    struct FakeIo {
        files: BTreeMap<u64, Vec<u8>>,
        fail_writes: u32,
        fail_reads: u32,
    }

    impl SpoolIo for FakeIo {
        fn list(&mut self) -> io::Result<Vec<(u64, u64)>> {
            Ok(self.files.iter().map(|(i, d)| (*i, d.len() as u64)).collect())
        }
        fn write(&mut self, index: u64, data: &[u8]) -> io::Result<()> {
            if self.fail_writes > 0 {
                self.fail_writes -= 1;
                return Err(io::Error::other("injected write failure"));
            }
            self.files.insert(index, data.to_vec());
            Ok(())
        }
        fn read(&mut self, index: u64) -> io::Result<Vec<u8>> {
            if self.fail_reads > 0 {
                self.fail_reads -= 1;
                return Err(io::Error::other("injected read failure"));
            }
            self.files.get(&index).cloned().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
        fn remove(&mut self, index: u64) -> io::Result<()> {
            self.files.remove(&index);
            Ok(())
        }
    }

    fn entry(seq: u64, payload_len: usize) -> Entry {
        Entry {
            subject: "demeter.metrics.ns.d.tm".into(),
            msg_id: format!("run-{seq}"),
            seq,
            payload: Bytes::from(vec![(seq % 251) as u8; payload_len]),
        }
    }

    #[test]
    fn entries_round_trip_and_corruption_is_detected() {
        let e = entry(7, 300);
        let d = encode_entry(&e);
        assert_eq!(decode_entry(&d), Some(e));
        for i in 0..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 0x40;
            assert_eq!(decode_entry(&bad), None, "flip at byte {i} undetected");
        }
        for n in 0..d.len() {
            assert_eq!(decode_entry(&d[..n]), None);
        }
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn memory_only_drops_the_oldest_and_counts() {
        let mut s = OutageSpool::memory_only(3);
        for i in 0..5 {
            s.push(entry(i, 10));
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.dropped_total(), 2);
        let (idx, e) = s.front().unwrap();
        assert_eq!(e.seq, 2);
        assert!(!s.ack(idx + 1), "only the front can be acked");
        assert!(s.ack(idx));
        assert_eq!(s.front().unwrap().1.seq, 3);
    }

    #[test]
    fn spills_to_a_real_directory_and_recovers_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let limits = SpoolLimits { memory_capacity: 2, disk_max_bytes: 1 << 20 };
        let mut s = OutageSpool::open(limits, DirIo::new(dir.path()).unwrap()).unwrap();
        for i in 0..6 {
            s.push(entry(i, 100));
        }
        assert_eq!((s.memory_len(), s.disk_len()), (2, 4));
        let (idx, e) = s.front().unwrap();
        assert_eq!(e.seq, 0);
        assert!(s.ack(idx));
        assert_eq!(s.persist_memory(), 2);
        drop(s);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 5);

        let mut s = OutageSpool::open(limits, DirIo::new(dir.path()).unwrap()).unwrap();
        let mut seqs = Vec::new();
        while let Some((idx, e)) = s.front() {
            seqs.push(e.seq);
            assert!(s.ack(idx));
        }
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        s.push(entry(100, 1));
        assert_eq!(s.front().unwrap().0, 6, "indexes continue after the recovered ones");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push(usize),
        /// Publish the front entry successfully.
        PopAck,
        /// Take the front, then push `n` more before its ack (it may be dropped meanwhile).
        SlowAck(u8),
        FailWrites(u32),
        FailRead,
        CorruptOldestFile,
        /// Persist the memory tier and reopen from the files.
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0usize..200).prop_map(Op::Push),
            3 => Just(Op::PopAck),
            1 => (0u8..4).prop_map(Op::SlowAck),
            1 => (1u32..3).prop_map(Op::FailWrites),
            1 => Just(Op::FailRead),
            1 => Just(Op::CorruptOldestFile),
            1 => Just(Op::Restart),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(500)))]

        /// The spool against a model: whatever the operations and injected failures, entries
        /// come out in push order, the bounds hold, and every entry pushed is either published
        /// or counted as dropped.
        #[test]
        fn spool_matches_the_model(
            memory_capacity in 1usize..6,
            disk_max_bytes in prop_oneof![Just(0u64), 0u64..2_000],
            with_disk in any::<bool>(),
            ops in proptest::collection::vec(op(), 0..120),
        ) {
            let limits = SpoolLimits { memory_capacity, disk_max_bytes };
            let mut io = FakeIo::default();
            let mut spool = if with_disk {
                OutageSpool::open(limits, io.clone()).unwrap()
            } else {
                OutageSpool::new(limits, None)
            };
            let mut next_seq = 0u64;
            let mut published: Vec<u64> = Vec::new();
            let mut dropped_before_restarts = 0u64;
            let mut seq_of_push = 0u64;
            for op in ops {
                match op {
                    Op::Push(n) => {
                        spool.push(entry(next_seq, n));
                        next_seq += 1;
                        seq_of_push += 1;
                    }
                    Op::PopAck => {
                        if let Some((idx, e)) = spool.front() {
                            prop_assert!(spool.ack(idx));
                            published.push(e.seq);
                        }
                    }
                    Op::SlowAck(k) => {
                        if let Some((idx, e)) = spool.front() {
                            for _ in 0..k {
                                spool.push(entry(next_seq, 50));
                                next_seq += 1;
                                seq_of_push += 1;
                            }
                            if spool.ack(idx) {
                                published.push(e.seq);
                            }
                        }
                    }
                    Op::FailWrites(n) => {
                        if let Some(d) = spool.disk.as_mut() { d.io.fail_writes += n; }
                    }
                    Op::FailRead => {
                        if let Some(d) = spool.disk.as_mut() { d.io.fail_reads += 1; }
                    }
                    Op::CorruptOldestFile => {
                        if let Some(d) = spool.disk.as_mut()
                            && let Some((_, f)) = d.io.files.iter_mut().next()
                        {
                            let last = f.len() - 1;
                            f[last] ^= 1;
                            // The cached copy would hide the corruption, as it would on a real
                            // disk for an entry already read; forget it as a restart would.
                            spool.cached_front = None;
                        }
                    }
                    Op::Restart => {
                        if with_disk {
                            spool.persist_memory();
                            dropped_before_restarts += spool.dropped_total();
                            io = spool.disk.take().unwrap().io;
                            io.fail_writes = 0;
                            io.fail_reads = 0;
                            spool = OutageSpool::open(limits, io.clone()).unwrap();
                        }
                    }
                }
                // Bounds.
                prop_assert!(spool.memory_len() <= memory_capacity);
                prop_assert!(spool.disk_bytes() <= disk_max_bytes);
                if let Some(d) = spool.disk.as_ref() {
                    prop_assert_eq!(d.bytes, d.io.files.iter().filter(|(i, _)| d.entries.iter().any(|(j, _)| j == *i)).map(|(_, f)| f.len() as u64).sum::<u64>());
                    // Order: disk indexes increase and precede memory indexes.
                    let idx: Vec<u64> = d.entries.iter().map(|e| e.0).chain(spool.memory.iter().map(|e| e.0)).collect();
                    prop_assert!(idx.windows(2).all(|w| w[0] < w[1]), "{:?}", idx);
                }
            }
            // Drain what is left.
            while let Some((idx, e)) = spool.front() {
                prop_assert!(spool.ack(idx));
                published.push(e.seq);
            }
            // Published in push order, no duplicates.
            prop_assert!(published.windows(2).all(|w| w[0] < w[1]), "{:?}", published);
            // Everything pushed was published or counted as dropped.
            let dropped = dropped_before_restarts + spool.dropped_total();
            prop_assert_eq!(published.len() as u64 + dropped, seq_of_push);
        }
    }
}
