//! Storage tests: openraft's conformance suite, then what drover relies on beyond it
//! (restart durability, snapshot install, damaged data reported as errors).
#![allow(
    clippy::result_large_err,
    reason = "tests return openraft's StorageError to use `?` on the storage traits"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, EntryPayload, ErrorSubject, ErrorVerb, Membership, RaftLogReader,
    RaftSnapshotBuilder, StorageIOError, Vote,
};
use tempfile::TempDir;

use super::*;
use crate::consensus::state::{ClusterState, HISTORY_CAP};
use crate::consensus::types::{
    Entry, LogId, Member, Request, Response, StoredMembership, TypeConfig,
};

struct TempStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for TempStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir()
            .map_err(|e| StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let (log, sm) = open(dir.path(), StoreOptions::default())
            .map_err(|e| StorageIOError::new(ErrorSubject::Store, ErrorVerb::Read, &e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn passes_openraft_storage_conformance_suite() {
    if let Err(e) = Suite::test_all(TempStoreBuilder) {
        panic!("conformance suite failed: {e}");
    }
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn blank(term: u64, index: u64) -> Entry {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Blank }
}

fn note(term: u64, index: u64, text: &str) -> Entry {
    let req = Request::Note { author: "op".into(), text: text.into(), at_unix_ms: index as i64 };
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(req) }
}

fn members() -> Membership<u64, Member> {
    let member = Member {
        name: "prod-1".into(),
        site: "prod".into(),
        role: Default::default(),
        address: "10.0.0.1:7400".into(),
    };
    Membership::new(vec![BTreeSet::from([1])], BTreeMap::from([(1, member)]))
}

fn membership(term: u64, index: u64) -> Entry {
    Entry { log_id: log_id(term, index), payload: EntryPayload::Membership(members()) }
}

/// The state a correct store must hold after applying `entries`.
fn expected_state(entries: &[Entry]) -> ClusterState {
    let mut state = ClusterState::default();
    for e in entries {
        if let EntryPayload::Normal(req) = &e.payload {
            state.apply(e.log_id.index, req);
        }
    }
    state
}

fn open_dir(dir: &TempDir) -> (LogStore, StateMachine) {
    open(dir.path(), StoreOptions::default()).expect("open store")
}

fn sample_entries() -> Vec<Entry> {
    vec![blank(1, 1), membership(1, 2), note(1, 3, "a"), note(1, 4, "b"), note(2, 5, "c")]
}

#[tokio::test]
async fn everything_survives_a_restart() -> Result<(), StorageError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let entries = sample_entries();
    let vote = Vote::new_committed(2, 1);
    let first_snapshot = {
        let (mut log, mut sm) = open_dir(&dir);
        log.blocking_append(entries.clone()).await?;
        log.save_vote(&vote).await?;
        log.save_committed(Some(log_id(2, 5))).await?;
        let responses = sm.apply(entries.clone()).await?;
        let seqs: Vec<_> = responses.iter().map(|r| r.history_seq).collect();
        assert_eq!(seqs, [None, None, Some(1), Some(2), Some(3)]);
        let snapshot = sm.get_snapshot_builder().await.build_snapshot().await?;
        log.purge(log_id(1, 2)).await?;
        snapshot
    };

    let (mut log, mut sm) = open_dir(&dir);
    assert_eq!(log.read_vote().await?, Some(vote));
    assert_eq!(log.read_committed().await?, Some(log_id(2, 5)));
    let state = log.get_log_state().await?;
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(2, 5)));
    assert_eq!(log.try_get_log_entries(..).await?, entries[2..]);
    let mut reader = log.get_log_reader().await;
    assert_eq!(reader.try_get_log_entries(4..5).await?, entries[3..4]);

    let (last_applied, last_membership) = sm.applied_state().await?;
    assert_eq!(last_applied, Some(log_id(2, 5)));
    assert_eq!(last_membership, StoredMembership::new(Some(log_id(1, 2)), members()));
    let handle = sm.state_handle();
    assert_eq!(handle.read(|s| s.clone()), expected_state(&entries));

    let current = sm.get_current_snapshot().await?.expect("snapshot kept");
    assert_eq!(current.meta, first_snapshot.meta);
    assert_eq!(current.meta.snapshot_id, "2-5-1");
    assert_eq!(current.snapshot.into_inner(), first_snapshot.snapshot.into_inner());

    // Applying continues the sequence, and the snapshot counter was persisted.
    let responses = sm.apply([note(2, 6, "d")]).await?;
    assert_eq!(responses, [Response { history_seq: Some(4), ..Default::default() }]);
    assert_eq!(handle.read(|s| s.last_seq), 4);
    let second = sm.get_snapshot_builder().await.build_snapshot().await?;
    assert_eq!(second.meta.snapshot_id, "2-6-2");
    Ok(())
}

#[tokio::test]
async fn history_cap_drops_rows_on_disk_too() -> Result<(), StorageError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let entries: Vec<Entry> = (1..=HISTORY_CAP as u64 + 3).map(|i| note(1, i, "x")).collect();
    {
        let (_log, mut sm) = open_dir(&dir);
        sm.apply(entries[..10].to_vec()).await?;
        sm.apply(entries[10..].to_vec()).await?;
        assert_eq!(sm.state_handle().read(|s| (s.history.len(), s.first_seq())), (HISTORY_CAP, 4));
    }
    let (_log, sm) = open_dir(&dir);
    assert_eq!(sm.state_handle().read(|s| s.clone()), expected_state(&entries));
    Ok(())
}

#[tokio::test]
async fn installed_snapshot_reproduces_the_source_state() -> Result<(), StorageError> {
    let src_dir = tempfile::tempdir().expect("tempdir");
    let dst_dir = tempfile::tempdir().expect("tempdir");
    let (_src_log, mut src) = open_dir(&src_dir);
    let entries = sample_entries();
    src.apply(entries.clone()).await?;
    let snapshot = src.get_snapshot_builder().await.build_snapshot().await?;

    {
        let (_dst_log, mut dst) = open_dir(&dst_dir);
        // The receiver already applied something the snapshot replaces.
        dst.apply([note(1, 1, "stale"), note(1, 2, "stale")]).await?;
        let mut received = dst.begin_receiving_snapshot().await?;
        assert!(received.get_ref().is_empty());
        *received = Cursor::new(snapshot.snapshot.get_ref().clone());
        dst.install_snapshot(&snapshot.meta, received).await?;

        assert_eq!(dst.applied_state().await?, src.applied_state().await?);
        let src_state = src.state_handle().read(|s| s.clone());
        assert_eq!(dst.state_handle().read(|s| s.clone()), src_state);
        let current = dst.get_current_snapshot().await?.expect("installed snapshot kept");
        assert_eq!(current.meta, snapshot.meta);
    }

    // Durable: a restart sees the installed state, and applying continues from it.
    let (_dst_log, mut dst) = open_dir(&dst_dir);
    assert_eq!(dst.applied_state().await?, src.applied_state().await?);
    assert_eq!(dst.state_handle().read(|s| s.clone()), expected_state(&entries));
    let responses = dst.apply([note(2, 6, "d")]).await?;
    assert_eq!(responses, [Response { history_seq: Some(4), ..Default::default() }]);
    Ok(())
}

#[tokio::test]
async fn undecodable_snapshot_is_an_error_and_changes_nothing() -> Result<(), StorageError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, mut sm) = open_dir(&dir);
    sm.apply(sample_entries()).await?;
    let before = sm.applied_state().await?;
    let meta = sm.get_snapshot_builder().await.build_snapshot().await?.meta;

    let garbage = Box::new(Cursor::new(b"{\"not\": \"a snapshot\"".to_vec()));
    assert!(sm.install_snapshot(&meta, garbage).await.is_err());

    // Decodes, but does not match its metadata.
    let other = SnapshotPayload {
        last_applied: Some(log_id(9, 90)),
        last_membership: before.1.clone(),
        state: ClusterState::default(),
    };
    let data = Box::new(Cursor::new(serde_json::to_vec(&other).expect("encode")));
    assert!(sm.install_snapshot(&meta, data).await.is_err());

    assert_eq!(sm.applied_state().await?, before);
    assert_eq!(sm.state_handle().read(|s| s.last_seq), 3);
    Ok(())
}

#[tokio::test]
async fn corrupt_log_entry_is_an_error_not_a_panic() -> Result<(), StorageError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _sm) = open_dir(&dir);
    log.blocking_append([blank(1, 1), blank(1, 2), blank(1, 3)]).await?;
    {
        let txn = log.db().begin_write().expect("begin");
        txn.open_table(LOG).expect("table").insert(2, b"\xffgarbage".as_slice()).expect("insert");
        txn.commit().expect("commit");
    }
    assert!(log.try_get_log_entries(0..10).await.is_err());
    assert_eq!(log.try_get_log_entries(3..).await?, [blank(1, 3)]);

    // An entry stored under the wrong index is caught too.
    {
        let bytes = frame::seal(&serde_json::to_vec(&blank(1, 7)).expect("encode"));
        let txn = log.db().begin_write().expect("begin");
        txn.open_table(LOG).expect("table").insert(3, bytes.as_slice()).expect("insert");
        txn.commit().expect("commit");
    }
    assert!(log.get_log_state().await.is_err());
    Ok(())
}

#[tokio::test]
async fn corrupt_history_row_fails_open_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (_log, mut sm) = open_dir(&dir);
        sm.apply(sample_entries()).await.expect("apply");
        let txn = sm.db().begin_write().expect("begin");
        txn.open_table(HISTORY).expect("table").insert(2, b"nope".as_slice()).expect("insert");
        txn.commit().expect("commit");
    }
    match open(dir.path(), StoreOptions::default()) {
        Err(e @ StoreError::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("history row 2"), "{msg}");
            assert!(msg.contains(DB_FILE_NAME), "{msg}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a store with a damaged history"),
    }
}

#[test]
fn second_open_of_the_same_store_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open_dir(&dir);
    match open(dir.path(), StoreOptions::default()) {
        Err(e @ StoreError::AlreadyOpen { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&dir.path().join(DB_FILE_NAME).display().to_string()), "{msg}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened the same store twice"),
    }
    drop(first);
    open_dir(&dir);
}

#[test]
fn missing_data_dir_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nested = dir.path().join("a/b");
    open(&nested, StoreOptions::default()).expect("open");
    assert!(nested.join(DB_FILE_NAME).is_file());
}

/// Writes a store holding a note whose text is `marker`, and returns the file's path.
async fn store_with_note(dir: &TempDir, marker: &str) -> std::path::PathBuf {
    let (mut log, mut sm) = open_dir(dir);
    let entries = vec![blank(1, 1), membership(1, 2), note(1, 3, marker)];
    log.blocking_append(entries.clone()).await.expect("append");
    log.save_vote(&Vote::new_committed(1, 1)).await.expect("vote");
    sm.apply(entries).await.expect("apply");
    dir.path().join(DB_FILE_NAME)
}

/// Replaces every occurrence of `from` in the file by `to` (same length); returns how many.
fn patch_file(path: &std::path::Path, from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(path).expect("read store file");
    let mut hits = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            hits += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(path, bytes).expect("write store file");
    hits
}

fn expect_corrupt(dir: &TempDir, what: &str) -> String {
    match open(dir.path(), StoreOptions::default()) {
        Err(e @ StoreError::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(DB_FILE_NAME), "{what}: the error should name the file: {msg}");
            assert!(msg.contains("--rejoin"), "{what}: the error should say how to re-sync: {msg}");
            msg
        }
        Err(e) => panic!("{what}: wrong error: {e}"),
        Ok(_) => panic!("{what}: the damaged store was opened"),
    }
}

#[tokio::test]
async fn one_changed_byte_in_a_stored_value_fails_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_with_note(&dir, "epoch=1;").await;
    // The note lives in the log entry and in the history row; redb checks neither.
    assert!(patch_file(&path, b"epoch=1;", b"epoch=7;") >= 2, "marker not found in the file");
    let msg = expect_corrupt(&dir, "changed byte");
    assert!(msg.contains("checksum mismatch"), "{msg}");
}

#[tokio::test]
async fn a_value_without_a_checksum_frame_fails_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (log, _sm) = open_dir(&dir);
        let txn = log.db().begin_write().expect("begin");
        let json = serde_json::to_vec(&Vote::<u64>::new_committed(9, 2)).expect("encode");
        txn.open_table(LOG_META).expect("table").insert("vote", json.as_slice()).expect("insert");
        txn.commit().expect("commit");
    }
    let msg = expect_corrupt(&dir, "unframed vote");
    assert!(msg.contains("log_meta value 'vote'"), "{msg}");
}

#[tokio::test]
async fn a_truncated_file_is_an_error_never_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_with_note(&dir, "truncate me").await;
    let full = std::fs::read(&path).expect("read");
    for keep in [full.len() / 2, full.len() / 4, 4096 + 17, 512, 9] {
        std::fs::write(&path, &full[..keep]).expect("truncate");
        match open(dir.path(), StoreOptions::default()) {
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(DB_FILE_NAME), "kept {keep} bytes: {msg}");
            }
            // Only acceptable if redb recovered an earlier, consistent commit: then every
            // value still passed its checksum.
            Ok((mut log, _)) => {
                log.get_log_state().await.expect("a store that opens must be readable");
            }
        }
    }
}

#[tokio::test]
async fn a_damaged_header_is_a_damaged_store_not_a_permission_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_with_note(&dir, "header").await;
    let full = std::fs::read(&path).expect("read");
    // Byte 0 (the magic number), byte 64 (the format version), a file cut inside its header.
    for (what, bytes) in [
        ("byte 0 changed", {
            let mut b = full.clone();
            b[0] ^= 0xff;
            b
        }),
        ("byte 64 changed", {
            let mut b = full.clone();
            b[64] = 90;
            b
        }),
        ("100 bytes kept", full[..100].to_vec()),
    ] {
        std::fs::write(&path, &bytes).expect("write");
        let msg = expect_corrupt(&dir, what);
        assert!(!msg.contains("permissions"), "{what}: {msg}");
    }
}

#[test]
fn self_fence_marks_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (log, _sm) = open_dir(&dir);
        let marks = log.fence_marks();
        assert!(marks.load().expect("load").is_empty());
        marks.record("app", 3).expect("record");
        marks.record("db", 1).expect("record");
        marks.record("app", 5).expect("a newer epoch replaces the mark");
    }
    let (log, _sm) = open_dir(&dir);
    let loaded = log.fence_marks().load().expect("load");
    assert_eq!(loaded, [("app".to_string(), 5), ("db".to_string(), 1)].into_iter().collect());
    assert!(is_pristine(&log).expect("read"), "marks are not Raft state");
}

#[tokio::test]
async fn a_store_is_pristine_until_it_holds_raft_state() -> Result<(), StorageError> {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, _sm) = open_dir(&dir);
        assert!(is_pristine(&log).expect("read"));
        log.save_vote(&Vote::new(1, 1)).await?;
        assert!(!is_pristine(&log).expect("read"));
    }
    let (log, _sm) = open_dir(&dir);
    assert!(!is_pristine(&log).expect("read"), "the vote survives a restart");
    Ok(())
}

fn recovery(term: u64, index: u64, generation: u64) -> Entry {
    let record = crate::consensus::state::Recovery {
        generation,
        term,
        by: "op".into(),
        node: "prod-1".into(),
        from_log: "1-4".into(),
        survivors: vec!["prod-1".into()],
        lost: vec!["dr-1".into()],
        at_unix_ms: 1,
    };
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(Request::Recovery(record)) }
}

#[tokio::test]
async fn the_offline_summary_sees_what_the_log_holds_beyond_what_was_applied(
) -> Result<(), StorageError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let entries = sample_entries();
    {
        let (mut log, mut sm) = open_dir(&dir);
        log.blocking_append(entries.clone()).await?;
        log.save_vote(&Vote::new_committed(2, 1)).await?;
        sm.apply(entries[..4].to_vec()).await?;
        let s = offline::summarize(&log).expect("summary");
        assert_eq!(s.last_log_id, Some(log_id(2, 5)));
        assert_eq!(s.last_applied, Some(log_id(1, 4)));
        assert_eq!(s.vote, Some(Vote::new_committed(2, 1)));
        assert_eq!(s.membership, StoredMembership::new(Some(log_id(1, 2)), members()));
        assert_eq!(s.generation, 0);
        // A recovery written offline: the new membership and the record count before they
        // are applied, as openraft counts an unapplied membership entry.
        let written = [membership(2002, 6), recovery(2002, 7, 1)];
        offline::write_recovery(&log, &written, &Vote::new_committed(2002, 1)).expect("write");
        let s = offline::summarize(&log).expect("summary");
        assert_eq!(s.last_log_id, Some(log_id(2002, 7)));
        assert_eq!(s.membership.log_id(), &Some(log_id(2002, 6)));
        assert_eq!(s.generation, 1);
        assert_eq!(log.read_vote().await?, Some(Vote::new_committed(2002, 1)));
        let rest = log.try_get_log_entries(5..).await?;
        assert_eq!(rest.len(), 3);
        sm.apply(rest).await?;
        assert_eq!(sm.state_handle().read(|s| s.generation), 1);
    }
    // Applied, the generation is persisted with the state.
    let (log, sm) = open_dir(&dir);
    assert_eq!(
        sm.state_handle().read(|s| (s.generation, s.history.back().map(|r| r.kind.clone()))),
        (1, Some("recovery".to_string()))
    );
    assert_eq!(offline::summarize(&log).expect("summary").generation, 1);
    Ok(())
}
