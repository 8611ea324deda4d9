//! Durable Raft storage: the log store and the state machine, both kept in one redb file,
//! `<data_dir>/drover.redb`, shared by the two halves through an `Arc<Database>`.
//!
//! ```text
//!        openraft core                       openraft state-machine worker
//!   append/truncate/purge/vote                 apply / snapshot
//!              │                                     │
//!          LogStore                             StateMachine ──publish──▶ StateHandle
//!              │                                     │                (admin API reads)
//!    tables: log, log_meta             tables: sm_meta, history, snapshot
//!              └───────────── Arc<redb::Database> ───┘
//!                                 │
//!              DurabilityProbe (table durability_probe: one record, rewritten each second
//!              by runtime::durability to learn whether the disk still takes writes)
//! ```
//!
//! Every mutation is a single redb write transaction committed with redb's default
//! `Durability::Immediate` (fsync) before the call returns, or before the append callback
//! fires, so whatever openraft has been told is persisted survives a crash. Values are JSON
//! framed with a CRC-32 ([`frame`]), checked on every read; opening the store reads and checks
//! every row once, so a damaged file is refused at startup with an error naming it, never
//! believed and never a panic.
//!
//! redb calls block. They are made directly from the async trait methods: the transactions
//! are small (a batch of entries, a vote, a few history rows) and none spans an `.await`, so
//! no task on the same thread can be holding redb's single writer slot while another waits
//! for it. This also keeps the store usable from a current-thread runtime, where
//! `tokio::task::block_in_place` would panic.

mod frame;
mod log_store;
pub mod offline;
mod state_machine;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{AnyError, StorageIOError};
use redb::{Database, DatabaseError, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use self::log_store::{LogReader, LogStore};
pub use self::state_machine::{SnapshotBuilder, SnapshotPayload, StateHandle, StateMachine};
use super::types::{NodeId, StorageError};

/// Name of the database file inside the node's data directory.
pub const DB_FILE_NAME: &str = "drover.redb";

/// Log entries: log index -> JSON `Entry`.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Log-side metadata: [`KEY_VOTE`], [`KEY_COMMITTED`], [`KEY_LAST_PURGED`].
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("log_meta");
/// State-machine metadata: [`KEY_LAST_APPLIED`], [`KEY_LAST_MEMBERSHIP`], [`KEY_LAST_SEQ`],
/// [`KEY_CONTROL`], [`KEY_GENERATION`].
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
/// Replicated history: seq -> JSON `HistoryRecord`.
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
/// The current snapshot: [`KEY_SNAPSHOT_META`], [`KEY_SNAPSHOT_DATA`],
/// [`KEY_SNAPSHOT_COUNTER`].
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
/// The durability probe's one record ([`KEY_PROBE`] -> a counter), overwritten by every probe.
/// Nothing reads it: it exists to be written (see [`DurabilityProbe`]).
const PROBE: TableDefinition<&str, u64> = TableDefinition::new("durability_probe");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged_log_id";
const KEY_LAST_APPLIED: &str = "last_applied";
const KEY_LAST_MEMBERSHIP: &str = "last_membership";
const KEY_LAST_SEQ: &str = "last_seq";
/// The failover control state (spec, services), persisted whole: it is small.
const KEY_CONTROL: &str = "control";
/// The cluster's generation (how many recoveries without quorum it went through).
const KEY_GENERATION: &str = "generation";
const KEY_SNAPSHOT_META: &str = "meta";
const KEY_SNAPSHOT_DATA: &str = "data";
const KEY_SNAPSHOT_COUNTER: &str = "counter";
const KEY_PROBE: &str = "probe";
/// This node's self-fence marks (service -> the epoch it self-fenced at): a local record, never
/// replicated, so a node restarted after it self-fenced still knows it did (see [`FenceMarks`]).
const SELF_FENCED: TableDefinition<&str, u64> = TableDefinition::new("self_fenced");

/// Tuning for the data store. Log purge thresholds are not here: openraft's `Config`
/// (`snapshot_policy`, `max_in_snapshot_log_to_keep`) decides when to snapshot and purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Most memory redb may use for its page cache, in bytes.
    pub cache_size_bytes: usize,
}

impl Default for StoreOptions {
    /// 32 MiB: the log between snapshots plus at most 10,000 history records fit easily.
    fn default() -> Self {
        StoreOptions { cache_size_bytes: 32 * 1024 * 1024 }
    }
}

/// Why the data store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory does not exist and could not be created.
    #[error(
        "cannot create the data directory {}: {source}; check that the parent directory exists \
         and is writable by the drover user",
        dir.display()
    )]
    CreateDir {
        /// The data directory.
        dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another process, or another store in this process, holds the file open.
    #[error(
        "the data store {} is already in use by another drover process (or opened twice by \
         this one); stop the other process, or give this node its own data_dir",
        path.display()
    )]
    AlreadyOpen {
        /// The database file.
        path: PathBuf,
    },
    /// redb could not open or create the file.
    #[error(
        "cannot open the data store {}: {source}; check the data_dir permissions and free disk \
         space, or that no other drover process uses it",
        path.display()
    )]
    Open {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        source: DatabaseError,
    },
    /// The file opened but reading or initializing it failed.
    #[error(
        "cannot read the data store {}: {source}; check free disk space and the file's \
         permissions, or restore it from a backup",
        path.display()
    )]
    Read {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        source: Box<redb::Error>,
    },
    /// The file holds data drover cannot decode, or a value fails its checksum.
    #[error(
        "the data store {} is damaged: {detail}; do not edit or reuse it: re-sync this node from \
         the cluster (stop it, move its data_dir aside, then start it with `run --rejoin`; see \
         docs/operations.md, \"Recovering a node's data\")",
        path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What could not be decoded, and why.
        detail: String,
    },
}

/// Opens (creating if needed) `dir/drover.redb` and returns the two halves openraft needs.
///
/// Creates `dir` if it is missing. The state machine's in-memory mirror (at most
/// `HISTORY_CAP` history records) is loaded here, so a damaged file is reported at startup
/// rather than on the first read.
///
/// A file so damaged that redb panics while reading it (a truncated file can do this) is
/// reported as [`StoreError::Corrupt`]: the panic is caught, and its message kept out of the
/// log, so the operator sees one error naming the file.
pub fn open(dir: &Path, opts: StoreOptions) -> Result<(LogStore, StateMachine), StoreError> {
    std::fs::create_dir_all(dir)
        .map_err(|source| StoreError::CreateDir { dir: dir.to_path_buf(), source })?;
    let path = dir.join(DB_FILE_NAME);
    let panic_message = Arc::new(std::sync::Mutex::new(None::<String>));
    let previous_hook = std::panic::take_hook();
    {
        let slot = Arc::clone(&panic_message);
        std::panic::set_hook(Box::new(move |info| {
            let text = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            let at = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(format!("{text}{at}"));
            }
        }));
    }
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open_file(&path, opts)));
    std::panic::set_hook(previous_hook);
    opened.unwrap_or_else(|_| {
        let detail = panic_message
            .lock()
            .ok()
            .and_then(|mut m| m.take())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Err(StoreError::Corrupt {
            path: path.clone(),
            detail: format!("the storage engine failed reading it ({detail})"),
        })
    })
}

fn open_file(path: &Path, opts: StoreOptions) -> Result<(LogStore, StateMachine), StoreError> {
    let path = path.to_path_buf();
    let db =
        redb::Builder::new().set_cache_size(opts.cache_size_bytes).create(&path).map_err(|e| {
            match e {
                DatabaseError::DatabaseAlreadyOpen => {
                    StoreError::AlreadyOpen { path: path.clone() }
                }
                source if damaged_file(&source) => StoreError::Corrupt {
                    path: path.clone(),
                    detail: format!("the storage engine cannot read its header ({source})"),
                },
                source => StoreError::Open { path: path.clone(), source },
            }
        })?;
    finish_open(db, path)
}

/// Whether redb refused to open an existing file because of its content (a damaged or
/// truncated header, an unknown format version) rather than because of the file system
/// (permissions, a full disk, a lock): the first needs a re-sync, the second a fix of the
/// data dir.
fn damaged_file(e: &DatabaseError) -> bool {
    use std::io::ErrorKind;
    match e {
        DatabaseError::UpgradeRequired(_) => true,
        DatabaseError::Storage(redb::StorageError::Corrupted(_)) => true,
        DatabaseError::Storage(redb::StorageError::Io(io)) => {
            matches!(io.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof)
        }
        _ => false,
    }
}

/// Opens the store on a redb storage backend other than a file: the simulator's disk, which
/// loses unsynced writes when its node crashes. `label` names it in errors.
pub fn open_backend(
    backend: impl redb::StorageBackend,
    label: &str,
    opts: StoreOptions,
) -> Result<(LogStore, StateMachine), StoreError> {
    let path = PathBuf::from(label);
    let db = redb::Builder::new()
        .set_cache_size(opts.cache_size_bytes)
        .create_with_backend(backend)
        .map_err(|source| StoreError::Open { path: path.clone(), source })?;
    finish_open(db, path)
}

fn finish_open(db: Database, path: PathBuf) -> Result<(LogStore, StateMachine), StoreError> {
    let db = Arc::new(db);
    let loaded = create_tables(&db)
        .and_then(|()| verify_frames(&db))
        .and_then(|()| state_machine::load(&db));
    let sm_state = loaded.map_err(|e| match e {
        DbError::Redb(source) => StoreError::Read { path: path.clone(), source },
        other => StoreError::Corrupt { path: path.clone(), detail: other.to_string() },
    })?;
    Ok((LogStore::new(Arc::clone(&db), path), StateMachine::new(db, sm_state)))
}

/// Checks the frame (format tag and checksum) of every stored value, so damage anywhere in the
/// file is found at startup, before openraft or the admin API reads it.
fn verify_frames(db: &Database) -> Result<(), DbError> {
    let txn = db.begin_read()?;
    for (name, table) in [("log", LOG), ("history", HISTORY)] {
        for row in txn.open_table(table)?.iter()? {
            let (index, bytes) = row?;
            unframe(bytes.value(), format_args!("{name} row {}", index.value()))?;
        }
    }
    for (name, table) in [("log_meta", LOG_META), ("sm_meta", SM_META), ("snapshot", SNAPSHOT)] {
        for row in txn.open_table(table)?.iter()? {
            let (key, bytes) = row?;
            unframe(bytes.value(), format_args!("{name} value '{}'", key.value()))?;
        }
    }
    Ok(())
}

/// True when the store has never held Raft state: no vote, no log entry, nothing applied.
/// A node that was a member has at least a vote or a log entry, so an empty store on a
/// configured node means its data was lost or it never ran.
pub fn is_pristine(log: &LogStore) -> Result<bool, StoreError> {
    let check = || -> Result<bool, DbError> {
        let txn = log.db().begin_read()?;
        Ok(txn.open_table(LOG)?.is_empty()?
            && txn.open_table(LOG_META)?.is_empty()?
            && txn.open_table(SM_META)?.is_empty()?
            && txn.open_table(SNAPSHOT)?.is_empty()?)
    };
    check().map_err(|e| match e {
        DbError::Redb(source) => StoreError::Read { path: log.path().to_path_buf(), source },
        other => StoreError::Corrupt { path: log.path().to_path_buf(), detail: other.to_string() },
    })
}

/// Creates every table, so later read transactions never meet a missing one.
fn create_tables(db: &Database) -> Result<(), DbError> {
    let txn = db.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(LOG_META)?;
    txn.open_table(SM_META)?;
    txn.open_table(HISTORY)?;
    txn.open_table(SNAPSHOT)?;
    txn.open_table(PROBE)?;
    txn.open_table(SELF_FENCED)?;
    txn.commit()?;
    Ok(())
}

/// Writes one tiny record in the store, the way every store write is made (one redb write
/// transaction, committed with `Durability::Immediate`, so fsynced), to learn whether the disk
/// still takes writes while Raft has nothing to write. Cheap to clone; see
/// `decide::durability` for why and `runtime::durability` for the schedule.
#[derive(Clone)]
pub struct DurabilityProbe {
    db: Arc<Database>,
    path: PathBuf,
}

/// A write of one of this node's local records (the durability probe, a self-fence mark) that
/// failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to the data store {}: {cause}", path.display())]
pub struct LocalWriteError {
    /// The database file (or the simulator's label).
    pub path: PathBuf,
    /// What the storage engine said.
    pub cause: String,
}

impl DurabilityProbe {
    /// Overwrites the probe record with `counter` and commits it; returns once it is synced.
    /// Blocks the calling thread for the write (a few milliseconds on a healthy disk, as long
    /// as the disk takes on a failing one): callers that must bound it run it off the async
    /// threads.
    pub fn write(&self, counter: u64) -> Result<(), LocalWriteError> {
        commit_local(&self.db, &self.path, |txn| {
            txn.open_table(PROBE)?.insert(KEY_PROBE, counter)?;
            Ok(())
        })
    }

    /// The database file this probe writes to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The services this node self-fenced, with the epoch, kept in its store: without them a node
/// restarted after it self-fenced (its application stopped by on_lease_lost) would renew its
/// site's lease at that epoch again, answer `/active` 200 for an application it stopped, and
/// never tell the leader, which reactivates a self-fenced active site only when told. Cheap to
/// clone.
#[derive(Clone)]
pub struct FenceMarks {
    db: Arc<Database>,
    path: PathBuf,
}

impl FenceMarks {
    /// Every mark: service -> the epoch this node self-fenced it at.
    pub fn load(&self) -> Result<BTreeMap<String, u64>, LocalWriteError> {
        let read = || -> Result<BTreeMap<String, u64>, DbError> {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(SELF_FENCED)?;
            let mut marks = BTreeMap::new();
            for row in table.iter()? {
                let (service, epoch) = row?;
                marks.insert(service.value().to_string(), epoch.value());
            }
            Ok(marks)
        };
        read().map_err(|e| LocalWriteError { path: self.path.clone(), cause: e.to_string() })
    }

    /// Marks `service` self-fenced at `epoch` (replacing an older mark) and commits it; returns
    /// once it is synced. Blocks the calling thread for the write, like
    /// [`DurabilityProbe::write`].
    pub fn record(&self, service: &str, epoch: u64) -> Result<(), LocalWriteError> {
        commit_local(&self.db, &self.path, |txn| {
            txn.open_table(SELF_FENCED)?.insert(service, epoch)?;
            Ok(())
        })
    }
}

/// One write transaction of this node's local records, committed (and so synced).
fn commit_local(
    db: &Database,
    path: &Path,
    write: impl FnOnce(&redb::WriteTransaction) -> Result<(), DbError>,
) -> Result<(), LocalWriteError> {
    let run = || -> Result<(), DbError> {
        let txn = db.begin_write()?;
        write(&txn)?;
        txn.commit()?;
        Ok(())
    };
    run().map_err(|e| LocalWriteError { path: path.to_path_buf(), cause: e.to_string() })
}

impl LogStore {
    /// This node's self-fence marks.
    pub fn fence_marks(&self) -> FenceMarks {
        FenceMarks { db: self.reader_db(), path: self.path().to_path_buf() }
    }

    /// A probe of this store's disk.
    pub fn durability_probe(&self) -> DurabilityProbe {
        DurabilityProbe { db: self.reader_db(), path: self.path().to_path_buf() }
    }
}

/// What went wrong inside the store; converted to openraft's [`StorageError`] at the trait
/// boundary and to [`StoreError`] at open.
#[derive(Debug, thiserror::Error)]
enum DbError {
    // Boxed: redb's error is large and this travels through every store call.
    #[error(transparent)]
    Redb(Box<redb::Error>),
    #[error("cannot decode the {what}: {source}")]
    Decode { what: String, source: serde_json::Error },
    #[error("the {what} is damaged: {source}")]
    Damaged { what: String, source: frame::FrameError },
    #[error("cannot encode the {what}: {source}")]
    Encode { what: String, source: serde_json::Error },
    #[error("{0}")]
    Invalid(String),
}

macro_rules! db_error_from_redb {
    ($($t:ty),*) => {
        $(impl From<$t> for DbError {
            fn from(e: $t) -> Self {
                DbError::Redb(Box::new(e.into()))
            }
        })*
    };
}
db_error_from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Converts a store-internal error to openraft's error, naming the operation that failed.
#[allow(
    clippy::result_large_err,
    reason = "openraft's StorageError is what its storage traits return"
)]
trait ToStorageError<T> {
    fn or_storage(
        self,
        f: impl FnOnce(AnyError) -> StorageIOError<NodeId>,
    ) -> Result<T, StorageError>;
}

#[allow(
    clippy::result_large_err,
    reason = "openraft's StorageError is what its storage traits return"
)]
impl<T> ToStorageError<T> for Result<T, DbError> {
    fn or_storage(
        self,
        f: impl FnOnce(AnyError) -> StorageIOError<NodeId>,
    ) -> Result<T, StorageError> {
        self.map_err(|e| f(AnyError::new(&e)).into())
    }
}

/// Encodes a value as JSON, framed with its checksum, ready to store.
fn encode<T: Serialize>(value: &T, what: impl fmt::Display) -> Result<Vec<u8>, DbError> {
    let json = serde_json::to_vec(value)
        .map_err(|source| DbError::Encode { what: what.to_string(), source })?;
    Ok(frame::seal(&json))
}

/// Checks a stored value's frame and returns its payload.
fn unframe(bytes: &[u8], what: impl fmt::Display) -> Result<&[u8], DbError> {
    frame::open(bytes).map_err(|source| DbError::Damaged { what: what.to_string(), source })
}

/// Decodes a stored value: checks its frame, then parses its JSON.
fn decode<T: DeserializeOwned>(bytes: &[u8], what: impl fmt::Display) -> Result<T, DbError> {
    let what = what.to_string();
    decode_json(unframe(bytes, &what)?, what)
}

/// Parses unframed JSON (a snapshot received from the leader).
fn decode_json<T: DeserializeOwned>(bytes: &[u8], what: impl fmt::Display) -> Result<T, DbError> {
    serde_json::from_slice(bytes)
        .map_err(|source| DbError::Decode { what: what.to_string(), source })
}

/// Reads and decodes one value of a metadata table.
fn get_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, DbError> {
    match table.get(key)? {
        Some(v) => decode(v.value(), key).map(Some),
        None => Ok(None),
    }
}

/// Encodes and writes one value of a metadata table.
fn put_json<T: Serialize>(
    table: &mut redb::Table<&'static str, &'static [u8]>,
    key: &str,
    value: &T,
) -> Result<(), DbError> {
    table.insert(key, encode(value, key)?.as_slice())?;
    Ok(())
}
