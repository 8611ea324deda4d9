//! A node's disk under simulation: a redb storage backend that keeps what was synced apart
//! from what was only written, so a crash loses exactly the unsynced writes.
//!
//! ```text
//!   write/set_len ──▶ current image (what reads see) + pending ops
//!   sync_data     ──▶ pending ops applied to the durable image
//!   crash         ──▶ current image := durable image, pending ops dropped
//! ```
//!
//! The disk outlives the node's software: the simulator keeps one per node and reopens the
//! store on it when the node restarts.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// Largest image a simulated disk may grow to; a store that grows past it is a bug worth a
/// loud error rather than a machine out of memory.
const MAX_IMAGE_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, Default)]
struct Images {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Op>,
    /// Writes lost to crashes so far, for the run's report.
    lost_writes: u64,
    /// Syncs are acknowledged but do nothing (the `lying-disk` mutation).
    lying: bool,
    /// The disk is full: writes, growth and syncs fail (ENOSPC).
    full: bool,
}

#[derive(Debug)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

fn apply(image: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[*offset as usize..end].copy_from_slice(data);
        }
        Op::SetLen(len) => image.resize(*len as usize, 0),
    }
}

fn no_space() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

/// One node's simulated disk; clones share it.
#[derive(Debug, Clone, Default)]
pub struct SimDisk(Arc<Mutex<Images>>);

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, Images> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A disk that acknowledges syncs without making anything durable: a crash loses every
    /// write since the disk was made (the `lying-disk` mutation).
    pub fn lying() -> SimDisk {
        SimDisk(Arc::new(Mutex::new(Images { lying: true, ..Images::default() })))
    }

    /// The node lost power: everything written since the last sync is gone.
    pub fn crash(&self) {
        let mut images = self.lock();
        images.lost_writes += images.pending.len() as u64;
        images.pending.clear();
        images.current = images.durable.clone();
    }

    /// Fills the disk (every write, growth and sync fails with ENOSPC) or frees it.
    pub fn set_full(&self, full: bool) {
        self.lock().full = full;
    }

    /// True while the disk is full.
    pub fn is_full(&self) -> bool {
        self.lock().full
    }

    /// Writes dropped by crashes so far.
    pub fn lost_writes(&self) -> u64 {
        self.lock().lost_writes
    }

    /// A backend for redb on this disk.
    pub fn backend(&self) -> SimBackend {
        SimBackend(self.clone())
    }
}

/// The redb storage backend of a [`SimDisk`].
#[derive(Debug)]
pub struct SimBackend(SimDisk);

impl redb::StorageBackend for SimBackend {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.0.lock().current.len() as u64)
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, io::Error> {
        let images = self.0.lock();
        let end = offset as usize + len;
        if end > images.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read of {len} bytes at {offset} past the end ({})", images.current.len()),
            ));
        }
        Ok(images.current[offset as usize..end].to_vec())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        if len > MAX_IMAGE_BYTES {
            return Err(io::Error::other(format!("simulated disk full at {len} bytes")));
        }
        let mut images = self.0.lock();
        if images.full && len > images.current.len() as u64 {
            return Err(no_space());
        }
        let op = Op::SetLen(len);
        apply(&mut images.current, &op);
        images.pending.push(op);
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> Result<(), io::Error> {
        let mut images = self.0.lock();
        if images.full && !images.pending.is_empty() {
            return Err(no_space());
        }
        if images.lying {
            return Ok(());
        }
        let Images { durable, pending, .. } = &mut *images;
        for op in pending.drain(..) {
            apply(durable, &op);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        if offset + data.len() as u64 > MAX_IMAGE_BYTES {
            return Err(io::Error::other("simulated disk full"));
        }
        let mut images = self.0.lock();
        if images.full {
            return Err(no_space());
        }
        let op = Op::Write { offset, data: data.to_vec() };
        apply(&mut images.current, &op);
        images.pending.push(op);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use redb::StorageBackend;

    use super::*;

    #[test]
    fn a_crash_keeps_synced_writes_and_drops_the_rest() {
        let disk = SimDisk::new();
        let b = disk.backend();
        b.write(0, b"synced").unwrap();
        b.sync_data(false).unwrap();
        b.write(0, b"SYN").unwrap();
        b.write(6, b"-later").unwrap();
        assert_eq!(b.read(0, 12).unwrap(), b"SYNced-later");
        disk.crash();
        assert_eq!(b.len().unwrap(), 6);
        assert_eq!(b.read(0, 6).unwrap(), b"synced");
        assert_eq!(disk.lost_writes(), 2);
        assert!(b.read(0, 7).is_err());
    }

    #[test]
    fn a_full_disk_refuses_writes_until_freed() {
        let disk = SimDisk::new();
        let b = disk.backend();
        b.write(0, b"kept").unwrap();
        b.sync_data(false).unwrap();
        disk.set_full(true);
        assert!(b.write(0, b"lost").is_err());
        assert!(b.set_len(64).is_err());
        assert_eq!(b.read(0, 4).unwrap(), b"kept");
        disk.set_full(false);
        b.write(0, b"new!").unwrap();
        b.sync_data(false).unwrap();
        assert_eq!(b.read(0, 4).unwrap(), b"new!");
    }

    #[test]
    fn a_store_reopens_from_what_was_synced() {
        let disk = SimDisk::new();
        {
            let db = redb::Builder::new().create_with_backend(disk.backend()).unwrap();
            let t: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("t");
            let txn = db.begin_write().unwrap();
            txn.open_table(t).unwrap().insert(1, 10).unwrap();
            txn.commit().unwrap();
            let mut txn = db.begin_write().unwrap();
            txn.set_durability(redb::Durability::None);
            txn.open_table(t).unwrap().insert(2, 20).unwrap();
            txn.commit().unwrap();
            // The process dies: the database is never closed (closing would sync).
            std::mem::forget(db);
        }
        disk.crash();
        let db = redb::Builder::new().create_with_backend(disk.backend()).unwrap();
        let t: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("t");
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(t).unwrap();
        assert_eq!(table.get(1).unwrap().map(|v| v.value()), Some(10));
        assert_eq!(table.get(2).unwrap().map(|v| v.value()), None);
    }

    #[test]
    fn the_durability_probe_fails_on_a_store_whose_disk_is_full() {
        let disk = SimDisk::new();
        let (log, _sm) = drover::consensus::store::open_backend(
            disk.backend(),
            "sim-disk",
            drover::consensus::store::StoreOptions::default(),
        )
        .unwrap();
        let probe = log.durability_probe();
        probe.write(1).expect("a disk with room takes the probe");
        disk.set_full(true);
        let err = probe.write(2).expect_err("a full disk took the probe");
        let text = err.to_string();
        assert!(text.contains("sim-disk"), "{text}");
        assert!(text.contains("No space left on device"), "{text}");
    }
}
