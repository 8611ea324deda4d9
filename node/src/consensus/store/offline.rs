//! The store as a stopped node's offline commands see it (`drover-node inspect` and
//! `drover-node recover`): what it holds, and the one write a recovery makes.
//!
//! Nothing here runs beside a live node: opening the store takes redb's exclusive lock, so
//! while the node runs [`super::open`] fails with [`StoreError::AlreadyOpen`].

use openraft::{EntryPayload, Vote};
use redb::ReadableTable;

use super::log_store::decode_entry;
use super::{
    get_json, put_json, DbError, LogStore, StoreError, KEY_COMMITTED, KEY_GENERATION,
    KEY_LAST_APPLIED, KEY_LAST_MEMBERSHIP, KEY_LAST_PURGED, KEY_VOTE, LOG, LOG_META, SM_META,
};
use crate::consensus::types::{Entry, LogId, NodeId, Request, StoredMembership};

/// What a store holds, for choosing the survivor to recover from and for checking a recovery.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The vote this node last saved.
    pub vote: Option<Vote<NodeId>>,
    /// The newest log id this node knows to be committed (it may know less than the cluster).
    pub committed: Option<LogId>,
    /// The newest log id removed from the log because a snapshot covers it.
    pub last_purged: Option<LogId>,
    /// The newest log id in the log (or the last purged one, with an empty log).
    pub last_log_id: Option<LogId>,
    /// The newest log id applied to the state machine.
    pub last_applied: Option<LogId>,
    /// The membership in force: the newest membership entry in the log, applied or not
    /// (openraft makes a membership effective as soon as it is in the log), or else the one
    /// the state machine applied.
    pub membership: StoredMembership,
    /// The cluster's generation: the applied one, or that of a recovery still unapplied in
    /// the log, whichever is newer.
    pub generation: u64,
}

impl Summary {
    /// True when the store holds no Raft state at all.
    pub fn is_empty(&self) -> bool {
        self.vote.is_none() && self.last_log_id.is_none() && self.last_applied.is_none()
    }
}

/// Reads what `log`'s store holds.
pub fn summarize(log: &LogStore) -> Result<Summary, StoreError> {
    let read = || -> Result<Summary, DbError> {
        let txn = log.db().begin_read()?;
        let meta = txn.open_table(LOG_META)?;
        let vote: Option<Vote<NodeId>> = get_json(&meta, KEY_VOTE)?;
        let committed: Option<LogId> = get_json(&meta, KEY_COMMITTED)?;
        let last_purged: Option<LogId> = get_json(&meta, KEY_LAST_PURGED)?;
        let sm = txn.open_table(SM_META)?;
        let last_applied: Option<LogId> = get_json(&sm, KEY_LAST_APPLIED)?.flatten();
        let mut membership: StoredMembership =
            get_json(&sm, KEY_LAST_MEMBERSHIP)?.unwrap_or_default();
        let mut generation: u64 = get_json(&sm, KEY_GENERATION)?.unwrap_or(0);
        let table = txn.open_table(LOG)?;
        let mut last_log_id = last_purged;
        let after_applied = last_applied.map_or(0, |l| l.index + 1);
        for row in table.range(after_applied..)? {
            let (index, bytes) = row?;
            let entry = decode_entry(index.value(), bytes.value())?;
            match &entry.payload {
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m.clone());
                }
                EntryPayload::Normal(Request::Recovery(r)) => {
                    generation = generation.max(r.generation);
                }
                _ => {}
            }
        }
        if let Some((index, bytes)) = table.last()? {
            last_log_id = Some(decode_entry(index.value(), bytes.value())?.log_id);
        }
        if last_log_id.is_none() {
            last_log_id = last_applied;
        }
        Ok(Summary {
            vote,
            committed,
            last_purged,
            last_log_id,
            last_applied,
            membership,
            generation,
        })
    };
    read().map_err(|e| store_error(log, e))
}

/// Appends `entries` to the log and saves `vote`, in one transaction (synced on return): a
/// recovery's membership and history entries with the vote of the generation's leader, or
/// only the vote carried over into a survivor's fresh store.
pub fn write_recovery(
    log: &LogStore,
    entries: &[Entry],
    vote: &Vote<NodeId>,
) -> Result<(), StoreError> {
    let write = || -> Result<(), DbError> {
        let txn = log.db().begin_write()?;
        {
            let mut table = txn.open_table(LOG)?;
            for entry in entries {
                let bytes = super::encode(entry, format_args!("log entry {}", entry.log_id))?;
                table.insert(entry.log_id.index, bytes.as_slice())?;
            }
            let mut meta = txn.open_table(LOG_META)?;
            put_json(&mut meta, KEY_VOTE, vote)?;
        }
        txn.commit()?;
        Ok(())
    };
    write().map_err(|e| store_error(log, e))
}

fn store_error(log: &LogStore, e: DbError) -> StoreError {
    let path = log.path().to_path_buf();
    match e {
        DbError::Redb(source) => StoreError::Read { path, source },
        other => StoreError::Corrupt { path, detail: other.to_string() },
    }
}
