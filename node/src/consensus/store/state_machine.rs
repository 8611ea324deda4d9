//! The state-machine half: applies committed entries to [`ClusterState`], persists the
//! result (`sm_meta`, `history`), builds and installs snapshots (`snapshot`), and publishes
//! the applied state to readers through a [`StateHandle`].
//!
//! ```text
//!  apply(batch) ─▶ working copy ─▶ one redb txn ─commit─▶ replay the diff into StateHandle
//!                                        │ error
//!                                        └──────────▶ working copy reset from StateHandle
//! ```
//!
//! The state machine keeps a private working copy so the shared state only ever shows
//! committed data; the shared copy is updated by replaying the same appends and drops, not by
//! cloning the whole history.

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::{Arc, PoisonError, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};
use redb::{Database, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{
    decode, decode_json, encode, frame, get_json, put_json, unframe, DbError, ToStorageError,
    HISTORY, KEY_CONTROL, KEY_GENERATION, KEY_LAST_APPLIED, KEY_LAST_MEMBERSHIP, KEY_LAST_SEQ,
    KEY_SNAPSHOT_COUNTER, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META, SM_META, SNAPSHOT,
};
use crate::consensus::state::{ClusterState, HistoryRecord};
use crate::consensus::types::{
    Entry, LogId, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// What a snapshot's data holds: everything applying the log up to `last_applied` produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotPayload {
    /// The last entry the snapshot covers.
    pub last_applied: Option<LogId>,
    /// The membership in force at `last_applied`.
    pub last_membership: StoredMembership,
    /// The application state.
    pub state: ClusterState,
}

/// Everything the state machine holds.
#[derive(Debug, Clone, Default)]
pub(super) struct SmState {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    cluster: ClusterState,
}

/// Loads the persisted state-machine state (the whole history, at most `HISTORY_CAP` rows).
pub(super) fn load(db: &Database) -> Result<SmState, DbError> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(SM_META)?;
    let last_applied = get_json(&meta, KEY_LAST_APPLIED)?.flatten();
    let last_membership = get_json(&meta, KEY_LAST_MEMBERSHIP)?.unwrap_or_default();
    let last_seq: u64 = get_json(&meta, KEY_LAST_SEQ)?.unwrap_or(0);
    let mut history = VecDeque::new();
    for row in txn.open_table(HISTORY)?.iter()? {
        let (seq, bytes) = row?;
        let seq = seq.value();
        let record: HistoryRecord = decode(bytes.value(), format_args!("history record {seq}"))?;
        if record.seq != seq || seq > last_seq {
            return Err(DbError::Invalid(format!(
                "the history row {seq} holds record {} (last seq {last_seq})",
                record.seq
            )));
        }
        history.push_back(record);
    }
    let control = get_json(&meta, KEY_CONTROL)?.unwrap_or_default();
    let generation = get_json(&meta, KEY_GENERATION)?.unwrap_or(0);
    Ok(SmState {
        last_applied,
        last_membership,
        cluster: ClusterState { history, last_seq, control, generation },
    })
}

/// A cheap, cloneable read handle on the applied state, for the admin API. It shows only
/// committed data: it is updated after each apply's redb transaction committed.
#[derive(Debug, Clone)]
pub struct StateHandle {
    inner: Arc<RwLock<SmState>>,
}

impl StateHandle {
    /// Runs `f` on the current applied state; keep `f` short, applies wait for it.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.lock_read().cluster)
    }

    /// Runs `f` on the current applied state and the log id it was applied up to (published
    /// together, so the pair is consistent).
    pub fn read_applied<R>(&self, f: impl FnOnce(Option<LogId>, &ClusterState) -> R) -> R {
        let shared = self.lock_read();
        f(shared.last_applied, &shared.cluster)
    }

    // A poisoned lock means an invariant assertion fired while publishing; the node is going
    // down with that panic, and readers may still look at what is there.
    fn lock_read(&self) -> std::sync::RwLockReadGuard<'_, SmState> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut SmState)) {
        f(&mut self.inner.write().unwrap_or_else(PoisonError::into_inner));
    }

    fn cloned(&self) -> SmState {
        self.lock_read().clone()
    }
}

/// One change to the history, in the order it was made.
enum HistoryChange {
    Append(HistoryRecord),
    Drop(u64),
    /// The control state changed; publish the working copy's.
    Control,
    /// The generation changed; publish the working copy's.
    Generation,
}

/// The durable state machine (openraft's `RaftStateMachine`).
pub struct StateMachine {
    db: Arc<Database>,
    /// Ahead of `shared` only while an apply is in progress.
    working: SmState,
    shared: StateHandle,
}

impl StateMachine {
    pub(super) fn new(db: Arc<Database>, state: SmState) -> Self {
        let shared = StateHandle { inner: Arc::new(RwLock::new(state.clone())) };
        StateMachine { db, working: state, shared }
    }

    #[cfg(test)]
    pub(super) fn db(&self) -> &Database {
        &self.db
    }

    /// A read handle on the applied state; clones share it.
    pub fn state_handle(&self) -> StateHandle {
        self.shared.clone()
    }

    /// Applies and persists a batch in one transaction; returns the responses and the history
    /// changes to publish. Leaves `working` ahead of disk on error (the caller resets it).
    fn apply_batch(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<(Vec<Response>, Vec<HistoryChange>), DbError> {
        let txn = self.db.begin_write()?;
        let mut responses = Vec::new();
        let mut changes = Vec::new();
        {
            let mut history = txn.open_table(HISTORY)?;
            for entry in entries {
                let response = match entry.payload {
                    EntryPayload::Blank => Response::default(),
                    EntryPayload::Normal(req) => {
                        let applied = self.working.cluster.apply(entry.log_id.index, &req);
                        if let Some(record) = applied.appended {
                            let bytes = encode(&record, "history record")?;
                            history.insert(record.seq, bytes.as_slice())?;
                            changes.push(HistoryChange::Append(record));
                        }
                        for seq in applied.dropped_seqs {
                            history.remove(seq)?;
                            changes.push(HistoryChange::Drop(seq));
                        }
                        if applied.control_changed {
                            changes.push(HistoryChange::Control);
                        }
                        if applied.generation_changed {
                            changes.push(HistoryChange::Generation);
                        }
                        applied.response
                    }
                    EntryPayload::Membership(m) => {
                        self.working.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        Response::default()
                    }
                };
                self.working.last_applied = Some(entry.log_id);
                responses.push(response);
            }
            let mut meta = txn.open_table(SM_META)?;
            put_json(&mut meta, KEY_LAST_APPLIED, &self.working.last_applied)?;
            put_json(&mut meta, KEY_LAST_MEMBERSHIP, &self.working.last_membership)?;
            put_json(&mut meta, KEY_LAST_SEQ, &self.working.cluster.last_seq)?;
            if changes.iter().any(|c| matches!(c, HistoryChange::Control)) {
                put_json(&mut meta, KEY_CONTROL, &self.working.cluster.control)?;
            }
            if changes.iter().any(|c| matches!(c, HistoryChange::Generation)) {
                put_json(&mut meta, KEY_GENERATION, &self.working.cluster.generation)?;
            }
        }
        txn.commit()?;
        Ok((responses, changes))
    }

    /// Makes a committed batch visible to readers.
    fn publish(&self, changes: Vec<HistoryChange>) {
        let working = &self.working;
        self.shared.update(|shared| {
            for change in changes {
                match change {
                    HistoryChange::Append(record) => shared.cluster.history.push_back(record),
                    HistoryChange::Control => {
                        shared.cluster.control = working.cluster.control.clone();
                    }
                    HistoryChange::Generation => {
                        shared.cluster.generation = working.cluster.generation;
                    }
                    HistoryChange::Drop(seq) => {
                        let dropped = shared.cluster.history.pop_front().map(|r| r.seq);
                        assert_eq!(
                            dropped,
                            Some(seq),
                            "shared history diverged from the working copy"
                        );
                    }
                }
            }
            shared.cluster.last_seq = working.cluster.last_seq;
            shared.last_applied = working.last_applied;
            shared.last_membership = working.last_membership.clone();
        });
    }

    fn install(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), DbError> {
        let payload: SnapshotPayload =
            decode_json(data, format_args!("snapshot {}", meta.snapshot_id))?;
        if payload.last_applied != meta.last_log_id
            || payload.last_membership != meta.last_membership
        {
            return Err(DbError::Invalid(format!(
                "snapshot {} covers {:?} but its metadata says {:?}",
                meta.snapshot_id, payload.last_applied, meta.last_log_id
            )));
        }
        let txn = self.db.begin_write()?;
        {
            let mut history = txn.open_table(HISTORY)?;
            history.retain(|_, _| false)?;
            for record in &payload.state.history {
                history.insert(record.seq, encode(record, "history record")?.as_slice())?;
            }
            let mut sm_meta = txn.open_table(SM_META)?;
            put_json(&mut sm_meta, KEY_LAST_APPLIED, &payload.last_applied)?;
            put_json(&mut sm_meta, KEY_LAST_MEMBERSHIP, &payload.last_membership)?;
            put_json(&mut sm_meta, KEY_LAST_SEQ, &payload.state.last_seq)?;
            put_json(&mut sm_meta, KEY_CONTROL, &payload.state.control)?;
            put_json(&mut sm_meta, KEY_GENERATION, &payload.state.generation)?;
            let mut snapshot = txn.open_table(SNAPSHOT)?;
            put_json(&mut snapshot, KEY_SNAPSHOT_META, meta)?;
            snapshot.insert(KEY_SNAPSHOT_DATA, frame::seal(data).as_slice())?;
        }
        txn.commit()?;
        let state = SmState {
            last_applied: payload.last_applied,
            last_membership: payload.last_membership,
            cluster: payload.state,
        };
        self.shared.update(|shared| *shared = state.clone());
        self.working = state;
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, DbError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SNAPSHOT)?;
        let Some(meta) = get_json::<SnapshotMeta>(&table, KEY_SNAPSHOT_META)? else {
            return Ok(None);
        };
        let Some(data) = table.get(KEY_SNAPSHOT_DATA)? else {
            return Err(DbError::Invalid(format!(
                "snapshot {} has metadata but no data",
                meta.snapshot_id
            )));
        };
        let data =
            unframe(data.value(), format_args!("snapshot {} data", meta.snapshot_id))?.to_vec();
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.working.last_applied, self.working.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        match self.apply_batch(entries) {
            Ok((responses, changes)) => {
                self.publish(changes);
                Ok(responses)
            }
            Err(e) => {
                // The transaction was rolled back: forget what the batch did in memory too.
                self.working = self.shared.cloned();
                Err(e).or_storage(StorageIOError::write_state_machine)
            }
        }
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { db: Arc::clone(&self.db), shared: self.shared.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        self.install(meta, &data)
            .or_storage(|e| StorageIOError::write_snapshot(Some(meta.signature()), e))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.current_snapshot().or_storage(|e| StorageIOError::read_snapshot(None, e))
    }
}

/// Builds snapshots from the published (committed) state, off the apply path.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    shared: StateHandle,
}

impl SnapshotBuilder {
    fn build(&self) -> Result<Snapshot<TypeConfig>, DbError> {
        let SmState { last_applied, last_membership, cluster } = self.shared.cloned();
        let payload = SnapshotPayload { last_applied, last_membership, state: cluster };
        let data = serde_json::to_vec(&payload)
            .map_err(|source| DbError::Encode { what: "snapshot".into(), source })?;
        let txn = self.db.begin_write()?;
        let meta = {
            let mut table = txn.open_table(SNAPSHOT)?;
            let counter = get_json::<u64>(&table, KEY_SNAPSHOT_COUNTER)?.unwrap_or(0) + 1;
            put_json(&mut table, KEY_SNAPSHOT_COUNTER, &counter)?;
            let snapshot_id = match last_applied {
                Some(id) => format!("{}-{}-{counter}", id.leader_id.term, id.index),
                None => format!("none-{counter}"),
            };
            let meta = SnapshotMeta {
                last_log_id: payload.last_applied,
                last_membership: payload.last_membership,
                snapshot_id,
            };
            // A snapshot installed from the leader while this one was being built is newer:
            // keep it as the current one.
            let current: Option<SnapshotMeta> = get_json(&table, KEY_SNAPSHOT_META)?;
            if current.is_none_or(|c| c.last_log_id <= meta.last_log_id) {
                put_json(&mut table, KEY_SNAPSHOT_META, &meta)?;
                table.insert(KEY_SNAPSHOT_DATA, frame::seal(&data).as_slice())?;
            }
            meta
        };
        txn.commit()?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.build().or_storage(|e| StorageIOError::write_snapshot(None, e))
    }
}
