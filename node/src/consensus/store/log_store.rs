//! The Raft log half: entries in the `log` table, and the vote, the committed log id and the
//! last purged log id in `log_meta`.
//!
//! openraft appends, truncates conflicting suffixes and purges prefixes covered by a snapshot;
//! replication streams read through cloned [`LogReader`]s.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableTable};

use super::{
    decode, encode, get_json, put_json, DbError, ToStorageError, KEY_COMMITTED, KEY_LAST_PURGED,
    KEY_VOTE, LOG, LOG_META,
};
use crate::consensus::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// Read access to the Raft log; cheap to clone, one per replication stream.
#[derive(Clone)]
pub struct LogReader {
    db: Arc<Database>,
}

impl LogReader {
    /// Entries whose index is in `range`, in index order; missing indexes are skipped.
    fn read_range(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, DbError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOG)?;
        let mut entries = Vec::new();
        for row in table.range::<u64>(range)? {
            let (index, bytes) = row?;
            entries.push(decode_entry(index.value(), bytes.value())?);
        }
        Ok(entries)
    }
}

/// Decodes the entry stored at `index`, checking it is the entry for that index.
pub(super) fn decode_entry(index: u64, bytes: &[u8]) -> Result<Entry, DbError> {
    let entry: Entry = decode(bytes, format_args!("log entry at index {index}"))?;
    if entry.log_id.index != index {
        return Err(DbError::Invalid(format!(
            "the log row at index {index} holds the entry for {}",
            entry.log_id
        )));
    }
    Ok(entry)
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_range(range).or_storage(StorageIOError::read_logs)
    }
}

/// The durable Raft log (openraft's `RaftLogStorage`).
pub struct LogStore {
    reader: LogReader,
    /// The database file (or the simulator's label), for error messages.
    path: PathBuf,
}

impl LogStore {
    pub(super) fn new(db: Arc<Database>, path: PathBuf) -> Self {
        LogStore { reader: LogReader { db }, path }
    }

    /// The database file this log lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn db(&self) -> &Database {
        &self.reader.db
    }

    pub(super) fn reader_db(&self) -> Arc<Database> {
        Arc::clone(&self.reader.db)
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, DbError> {
        let txn = self.db().begin_read()?;
        let meta = txn.open_table(LOG_META)?;
        let last_purged_log_id: Option<LogId> = get_json(&meta, KEY_LAST_PURGED)?;
        let log = txn.open_table(LOG)?;
        let last_log_id = match log.last()? {
            Some((index, bytes)) => Some(decode_entry(index.value(), bytes.value())?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, DbError> {
        let txn = self.db().begin_read()?;
        let meta = txn.open_table(LOG_META)?;
        get_json(&meta, key)
    }

    /// Writes `value` under `key`, or removes the key for `None`; durable on return.
    fn write_meta<T: serde::Serialize>(&self, key: &str, value: Option<&T>) -> Result<(), DbError> {
        let txn = self.db().begin_write()?;
        {
            let mut meta = txn.open_table(LOG_META)?;
            match value {
                Some(v) => put_json(&mut meta, key, v)?,
                None => {
                    meta.remove(key)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn write_entries(&self, entries: impl IntoIterator<Item = Entry>) -> Result<(), DbError> {
        let txn = self.db().begin_write()?;
        {
            let mut log = txn.open_table(LOG)?;
            for entry in entries {
                let bytes = encode(&entry, format_args!("log entry {}", entry.log_id))?;
                log.insert(entry.log_id.index, bytes.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes every entry at or after `index`.
    fn truncate_from(&self, index: u64) -> Result<(), DbError> {
        let txn = self.db().begin_write()?;
        txn.open_table(LOG)?.retain_in(index.., |_, _| false)?;
        txn.commit()?;
        Ok(())
    }

    /// Records `upto` as last purged and removes every entry up to it, atomically.
    fn purge_upto(&self, upto: LogId) -> Result<(), DbError> {
        let txn = self.db().begin_write()?;
        {
            let mut meta = txn.open_table(LOG_META)?;
            put_json(&mut meta, KEY_LAST_PURGED, &upto)?;
            txn.open_table(LOG)?.retain_in(..=upto.index, |_, _| false)?;
        }
        txn.commit()?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.reader.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.log_state().or_storage(StorageIOError::read_logs)
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta(KEY_VOTE, Some(vote)).or_storage(StorageIOError::write_vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(KEY_VOTE).or_storage(StorageIOError::read_vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_meta(KEY_COMMITTED, committed.as_ref()).or_storage(StorageIOError::write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(KEY_COMMITTED).or_storage(StorageIOError::read)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.write_entries(entries).or_storage(StorageIOError::write_logs)?;
        // Committed with Durability::Immediate: the entries are on disk.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.truncate_from(log_id.index).or_storage(StorageIOError::write_logs)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.purge_upto(log_id).or_storage(StorageIOError::write_logs)
    }
}
