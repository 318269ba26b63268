//! Tests of the file backends against real files: crash recovery (torn
//! tails, interrupted renames), corruption detection, bad input and the data
//! directory lock. The model-based property tests shared with the memory
//! backends are in `storage_props.rs`.
//!
//! Several tests write files byte by byte, so they spell out the on-disk
//! formats documented in `storage::file`; a format change must update both.

use std::fs;
use std::path::{Path, PathBuf};

use kvapp_c::storage::file::{DataDir, FileKv, FileLog, FileState, Identity};
use kvapp_c::storage::{Entry, HardState, KvStorage, KvWrite, LogStorage, StateStorage};
use kvapp_c::{Error, LogIndex, Result, Term};
use proptest::prelude::*;
use tempfile::TempDir;

/// Length of the log file header.
const LOG_HEADER: u64 = 36;
/// Length of a log record's length + checksum fields.
const RECORD_HEADER: u64 = 8;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn tempdir() -> TempDir {
    tempfile::tempdir().expect("create temp dir")
}

fn open_log(dir: &Path) -> Result<FileLog> {
    DataDir::open(dir)?.log()
}

fn open_state(dir: &Path) -> Result<FileState> {
    DataDir::open(dir)?.state()
}

fn open_kv(dir: &Path) -> Result<FileKv> {
    DataDir::open(dir)?.kv()
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join(DataDir::LOG_FILE)
}

fn entry(index: LogIndex, term: Term, len: usize) -> Entry {
    Entry {
        index,
        term,
        data: (0..len).map(|j| (index as usize * 31 + j) as u8).collect(),
    }
}

/// Deterministic pseudo-random bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Byte length of the record of `e`.
fn record_len(e: &Entry) -> u64 {
    RECORD_HEADER + 16 + e.data.len() as u64
}

/// Start offset of each entry's record in a log that discarded nothing,
/// followed by the end of the last record.
fn record_bounds(entries: &[Entry]) -> Vec<u64> {
    let mut bounds = vec![LOG_HEADER];
    for e in entries {
        bounds.push(bounds.last().unwrap() + record_len(e));
    }
    bounds
}

/// Writes a log holding `entries` (synced) and returns the file's bytes.
fn build_log(dir: &Path, entries: &[Entry]) -> Vec<u8> {
    let mut log = open_log(dir).unwrap();
    log.append(entries).unwrap();
    log.sync().unwrap();
    drop(log);
    fs::read(log_path(dir)).unwrap()
}

/// The log's entries, checked against its index range.
fn all_entries(log: &FileLog) -> Vec<Entry> {
    log.entries(log.first_index(), log.last_index() + 1)
        .unwrap()
}

fn assert_corrupt_at(result: Result<impl std::fmt::Debug>, path: &Path, offset: u64) {
    match result {
        Err(Error::Corrupt {
            path: p, offset: o, ..
        }) => {
            assert_eq!(p, path);
            assert_eq!(o, offset, "wrong corruption offset");
        }
        other => panic!("expected corruption at {offset} in {path:?}, got {other:?}"),
    }
}

fn assert_corrupt(result: Result<impl std::fmt::Debug>, path: &Path) {
    match result {
        Err(Error::Corrupt { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected corruption of {path:?}, got {other:?}"),
    }
}

/// The record of `e` as the log writes it, with the checksum computed over
/// `salt`.
fn forge_record(salt: u32, e: &Entry) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&e.index.to_le_bytes());
    body.extend_from_slice(&e.term.to_le_bytes());
    body.extend_from_slice(&e.data);
    let len = (body.len() as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(&len);
    h.update(&body);
    let mut rec = len.to_vec();
    rec.extend_from_slice(&h.finalize().to_le_bytes());
    rec.extend_from_slice(&body);
    rec
}

/// The log format's data keystream (splitmix64 seeded from the salt and
/// the entry's index), written out from the format description: XORing an
/// entry's data with it gives the bytes the file stores, and back.
fn scramble(salt: u32, index: LogIndex, data: &mut [u8]) {
    let mut state = (u64::from(salt) << 32) ^ index.wrapping_mul(0xd1b5_4a32_d192_ed03);
    for chunk in data.chunks_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        for (b, k) in chunk.iter_mut().zip(z.to_le_bytes()) {
            *b ^= k;
        }
    }
}

fn salt_of(log_bytes: &[u8]) -> u32 {
    u32::from_le_bytes(log_bytes[12..16].try_into().unwrap())
}

// ------------------------------------------------------------------ log

#[test]
fn log_round_trip_through_reopen() {
    let dir = tempdir();
    let mut log = open_log(dir.path()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (1, 0));
    assert_eq!(log.term(0).unwrap(), Some(0));
    assert_eq!(log.term(1).unwrap(), None);
    let entries = vec![entry(1, 1, 0), entry(2, 1, 5), entry(3, 2, 100)];
    log.append(&entries).unwrap();
    log.sync().unwrap();
    drop(log);

    let mut log = open_log(dir.path()).unwrap();
    assert_eq!(all_entries(&log), entries);
    assert_eq!(log.term(3).unwrap(), Some(2));
    assert_eq!(
        fs::metadata(log_path(dir.path())).unwrap().len(),
        *record_bounds(&entries).last().unwrap()
    );
    // Appending must continue the index sequence.
    assert!(matches!(
        log.append(&[entry(5, 2, 1)]),
        Err(Error::InvalidInput(_))
    ));
    assert!(log.append(&[entry(4, 2, 1), entry(6, 2, 1)]).is_err());
    assert_eq!(log.last_index(), 3);
}

#[test]
fn unsynced_appends_survive_a_clean_drop() {
    let dir = tempdir();
    let mut log = open_log(dir.path()).unwrap();
    log.append(&[entry(1, 1, 10), entry(2, 1, 10)]).unwrap();
    drop(log);
    let log = open_log(dir.path()).unwrap();
    assert_eq!(all_entries(&log), vec![entry(1, 1, 10), entry(2, 1, 10)]);
}

#[test]
fn large_unsynced_appends_are_written_out_without_syncing() {
    let dir = tempdir();
    let mut log = open_log(dir.path()).unwrap();
    let entries: Vec<Entry> = (1..=40).map(|i| entry(i, 1, 10_000)).collect();
    log.append(&entries).unwrap();
    // Past the write threshold the records are handed to the OS.
    assert!(fs::metadata(log_path(dir.path())).unwrap().len() > LOG_HEADER);
    log.append(&[entry(41, 1, 3)]).unwrap();
    // Reads span the file and the buffer.
    assert_eq!(log.entries(39, 42).unwrap()[2], entry(41, 1, 3));
    assert_eq!(all_entries(&log)[..40], entries[..]);
}

#[test]
fn a_sync_job_runs_on_another_thread_while_the_log_changes() {
    let dir = tempdir();
    let mut log = open_log(dir.path()).unwrap();
    let mut expected: Vec<Entry> = (1..=50).map(|i| entry(i, 1, 1000)).collect();
    log.append(&expected).unwrap();
    let job = log.start_sync().unwrap();
    let syncer = std::thread::spawn(move || job.run());
    // Meanwhile: enough appends to be written out past the buffer, then a
    // truncation and appends of a later term, as a follower would make.
    let more: Vec<Entry> = (51..=400).map(|i| entry(i, 1, 1000)).collect();
    log.append(&more).unwrap();
    log.truncate_after(300).unwrap();
    let newer: Vec<Entry> = (301..=320).map(|i| entry(i, 2, 500)).collect();
    log.append(&newer).unwrap();
    syncer.join().unwrap().unwrap();
    log.sync().unwrap();
    expected.extend(more.into_iter().take(250));
    expected.extend(newer);
    assert_eq!(all_entries(&log), expected);
    drop(log);
    let log = open_log(dir.path()).unwrap();
    assert_eq!(all_entries(&log), expected);
}

#[test]
fn truncate_and_discard_persist() {
    let dir = tempdir();
    let mut log = open_log(dir.path()).unwrap();
    let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1 + i / 4, 20)).collect();
    log.append(&entries).unwrap();
    log.sync().unwrap();
    log.truncate_after(8).unwrap();
    log.append(&[entry(9, 7, 3)]).unwrap();
    log.sync().unwrap();
    log.discard_through(5, entries[4].term).unwrap();
    assert!(dir.path().join("raft.log.start").exists());
    assert!(
        !dir.path().join("raft.log.start.tmp").exists(),
        "compaction left its tmp file"
    );
    assert_eq!(log.term(5).unwrap(), Some(entries[4].term));
    assert_eq!(log.term(4).unwrap(), None);
    assert!(log.truncate_after(4).is_err());
    drop(log);

    let mut log = open_log(dir.path()).unwrap();
    let mut expected = entries[5..8].to_vec();
    expected.push(entry(9, 7, 3));
    assert_eq!((log.first_index(), log.last_index()), (6, 9));
    assert_eq!(all_entries(&log), expected);
    assert_eq!(log.term(5).unwrap(), Some(entries[4].term));
    assert_eq!(log.term(9).unwrap(), Some(7));

    assert!(log.discard_through(u64::MAX, 9).is_err());
    // Discarding past the end leaves an empty log that continues there.
    log.discard_through(20, 9).unwrap();
    drop(log);
    continues_empty_after(dir.path(), open_log(dir.path()).unwrap(), 20, 9, 1);
}

/// Checks that `log` (open on `dir`) is empty after `(index, term)`, then
/// that an entry of `len` bytes appended there is read back after a reopen.
fn continues_empty_after(dir: &Path, mut log: FileLog, index: LogIndex, term: Term, len: usize) {
    assert_eq!((log.first_index(), log.last_index()), (index + 1, index));
    assert_eq!(log.term(index).unwrap(), Some(term));
    log.append(&[entry(index + 1, term, len)]).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = open_log(dir).unwrap();
    assert_eq!(all_entries(&log), vec![entry(index + 1, term, len)]);
}

#[test]
fn torn_tail_at_every_byte_is_cut_off() {
    let dir = tempdir();
    let entries: Vec<Entry> = [0usize, 1, 17, 3, 40]
        .iter()
        .enumerate()
        .map(|(i, &len)| entry(i as u64 + 1, 1 + i as u64 / 2, len))
        .collect();
    let bytes = build_log(dir.path(), &entries);
    let bounds = record_bounds(&entries);
    assert_eq!(bytes.len() as u64, *bounds.last().unwrap());
    let path = log_path(dir.path());

    for cut in LOG_HEADER..bytes.len() as u64 {
        fs::write(&path, &bytes[..cut as usize]).unwrap();
        // The records wholly before the cut survive.
        let kept = bounds.iter().filter(|&&b| b <= cut).count() - 1;
        let mut log = open_log(dir.path()).unwrap();
        assert_eq!(all_entries(&log), entries[..kept], "cut at {cut}");
        assert_eq!(log.last_index(), kept as u64);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            bounds[kept],
            "file not cut to the last good record (cut at {cut})"
        );
        // The repaired log takes appends where it left off.
        log.append(&entries[kept..]).unwrap();
        log.sync().unwrap();
        drop(log);
        assert_eq!(fs::read(&path).unwrap(), bytes, "cut at {cut}");
    }
}

#[test]
fn torn_header_is_an_error_not_a_repair() {
    let dir = tempdir();
    let bytes = build_log(dir.path(), &[entry(1, 1, 4)]);
    let path = log_path(dir.path());
    for cut in 0..LOG_HEADER as usize {
        fs::write(&path, &bytes[..cut]).unwrap();
        assert_corrupt(open_log(dir.path()), &path);
        assert_eq!(fs::read(&path).unwrap(), &bytes[..cut]);
    }
}

#[test]
fn garbage_tail_is_a_torn_write() {
    let dir = tempdir();
    let entries: Vec<Entry> = (1..=4).map(|i| entry(i, 1, 30)).collect();
    let bytes = build_log(dir.path(), &entries);
    let path = log_path(dir.path());
    let mut torn_record = vec![0u8; 4096];
    torn_record[..20].copy_from_slice(&noise(9, 20));
    for tail in [noise(7, 3000), noise(8, 5), torn_record] {
        let mut damaged = bytes.clone();
        damaged.extend_from_slice(&tail);
        fs::write(&path, &damaged).unwrap();
        let log = open_log(dir.path()).unwrap();
        assert_eq!(all_entries(&log), entries);
        drop(log);
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }
}

/// Zeros after the last record are space written ahead of the log, not
/// damage: opening keeps them, and appends go over them.
#[test]
fn zero_tail_is_room_ahead_of_the_log() {
    let dir = tempdir();
    let entries: Vec<Entry> = (1..=4).map(|i| entry(i, 1, 30)).collect();
    let bytes = build_log(dir.path(), &entries);
    let path = log_path(dir.path());
    let mut padded = bytes.clone();
    padded.resize(bytes.len() + 8192, 0);
    fs::write(&path, &padded).unwrap();
    let mut log = open_log(dir.path()).unwrap();
    assert_eq!(all_entries(&log), entries);
    assert_eq!(fs::read(&path).unwrap(), padded, "the zeros were cut");
    let more = entry(5, 2, 100);
    log.append(std::slice::from_ref(&more)).unwrap();
    log.sync().unwrap();
    drop(log);
    let after = fs::read(&path).unwrap();
    assert_eq!(after.len(), padded.len(), "the append grew the file");
    let end = bytes.len() + record_len(&more) as usize;
    assert!(after[end..].iter().all(|&b| b == 0));
    let log = open_log(dir.path()).unwrap();
    let mut all = entries.clone();
    all.push(more);
    assert_eq!(all_entries(&log), all);
}

/// A sync interrupted by a crash may leave later pages written and earlier
/// ones not (zeros in preallocated space). Records after such a hole were
/// never synced (a sync covers every byte before it), so they are cut with
/// the torn record rather than reported as corruption.
#[test]
fn unsynced_records_after_a_zeroed_sector_are_a_torn_tail() {
    let dir = tempdir();
    let entries: Vec<Entry> = (1..=8).map(|i| entry(i, 1, 700)).collect();
    let bytes = build_log(dir.path(), &entries);
    let bounds = record_bounds(&entries);
    let path = log_path(dir.path());
    // Zero two 512-byte sectors from the first one inside record 4: they
    // reach into record 5, and records 6 to 8 stay intact after the hole.
    let start = bounds[3].div_ceil(512) * 512;
    let hole = start as usize..start as usize + 1024;
    assert!(start < bounds[4] && hole.end as u64 > bounds[4] && hole.end as u64 <= bounds[5]);
    let mut damaged = bytes.clone();
    damaged[hole.clone()].fill(0);
    damaged.resize(bytes.len() + 4096, 0);
    fs::write(&path, &damaged).unwrap();
    let log = open_log(dir.path()).unwrap();
    assert_eq!(log.last_index(), 3);
    assert!(all_entries(&log) == entries[..3]);
    drop(log);
    assert_eq!(fs::metadata(&path).unwrap().len(), bounds[3]);

    // The same damage without a zeroed sector (garbage instead) is still
    // corruption: good records follow bad ones.
    let mut garbage = bytes.clone();
    garbage[hole.clone()].copy_from_slice(&noise(3, hole.len()));
    fs::write(&path, &garbage).unwrap();
    assert_corrupt(open_log(dir.path()), &path);
    assert_eq!(fs::read(&path).unwrap(), garbage, "the file was changed");
}

/// A crash in the middle of a zero run leaves zeros and then a hole (the
/// part not written yet) after the last record: both read as zeros, so the
/// log opens whole, keeps the space and appends over it.
#[test]
fn zeros_then_a_hole_after_the_records_are_room_ahead() {
    let dir = tempdir();
    let entries: Vec<Entry> = (1..=6).map(|i| entry(i, 1, 300)).collect();
    let bytes = build_log(dir.path(), &entries);
    let path = log_path(dir.path());
    let mut padded = bytes.clone();
    padded.resize(bytes.len() + (128 << 10), 0);
    fs::write(&path, &padded).unwrap();
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(padded.len() as u64 + (1 << 20)).unwrap();
    drop(file);
    let len = fs::metadata(&path).unwrap().len();
    let mut log = open_log(dir.path()).unwrap();
    assert!(all_entries(&log) == entries, "entries changed on the way");
    assert_eq!(fs::metadata(&path).unwrap().len(), len, "the room was cut");
    let more = entry(7, 2, 300);
    log.append(std::slice::from_ref(&more)).unwrap();
    log.sync().unwrap();
    drop(log);
    let log = open_log(dir.path()).unwrap();
    let mut all = entries.clone();
    all.push(more);
    assert!(all_entries(&log) == all, "entries changed on the way");
}

/// Entry data is stored scrambled, so entries full of zeros leave no zero
/// sector in the file, and a bit flip in such a record (followed by good
/// records) is corruption, not a torn sync.
#[test]
fn zero_filled_entries_leave_no_zero_sector() {
    let dir = tempdir();
    let entries: Vec<Entry> = (1..=8)
        .map(|index| Entry {
            index,
            term: 1,
            data: vec![0; 2048],
        })
        .collect();
    let bytes = build_log(dir.path(), &entries);
    let bounds = record_bounds(&entries);
    let end = *bounds.last().unwrap() as usize;
    let first = (LOG_HEADER as usize).div_ceil(512) * 512;
    for sector in bytes[first..end - end % 512].chunks(512) {
        assert!(sector.iter().any(|&b| b != 0), "a zero sector was written");
    }
    let log = open_log(dir.path()).unwrap();
    assert!(all_entries(&log) == entries, "entries changed on the way");
    drop(log);

    let path = log_path(dir.path());
    let mut damaged = bytes.clone();
    damaged[bounds[2] as usize + 4] ^= 1;
    fs::write(&path, &damaged).unwrap();
    assert_corrupt_at(open_log(dir.path()), &path, bounds[2]);
    assert_eq!(fs::read(&path).unwrap(), damaged, "the file was changed");
}

/// A log that grows past a megabyte gets zeros written ahead of its end;
/// what it holds reads back the same, through a reopen and more appends.
#[test]
fn a_growing_log_writes_zeros_ahead_and_reads_back_whole() {
    let dir = tempdir();
    let path = log_path(dir.path());
    let mut log = open_log(dir.path()).unwrap();
    let mut all = Vec::new();
    let append = |log: &mut FileLog, all: &mut Vec<Entry>, count: u64| {
        for _ in 0..count {
            let index = log.last_index() + 1;
            let batch: Vec<Entry> = (index..index + 16).map(|i| entry(i, 1, 900)).collect();
            log.append(&batch).unwrap();
            log.sync().unwrap();
            all.extend(batch);
        }
    };
    append(&mut log, &mut all, 200);
    let end = *record_bounds(&all).last().unwrap();
    drop(log);
    let len = fs::metadata(&path).unwrap().len();
    assert!(len > end, "no zeros ahead: file {len} bytes, log {end}");
    let bytes = fs::read(&path).unwrap();
    assert!(bytes[end as usize..].iter().all(|&b| b == 0));

    let mut log = open_log(dir.path()).unwrap();
    assert_eq!(all_entries(&log), all);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        len,
        "the zeros were cut"
    );
    append(&mut log, &mut all, 100);
    // A truncation inside the written part drops the zeros ahead with it.
    log.truncate_after(10).unwrap();
    log.sync().unwrap();
    drop(log);
    let cut = record_bounds(&all[..10]).last().copied().unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), cut);
    let mut log = open_log(dir.path()).unwrap();
    assert!(all_entries(&log) == all[..10]);
    // Compaction writes a new file of the kept records alone; the zeros come
    // back as it grows again, and everything reads back.
    all.truncate(10);
    append(&mut log, &mut all, 150);
    log.discard_through(5, 1).unwrap();
    append(&mut log, &mut all, 150);
    drop(log);
    let log = open_log(dir.path()).unwrap();
    assert!(all_entries(&log) == all[5..], "entries changed on the way");
}

#[test]
fn damaged_middle_record_is_corruption_at_its_offset() {
    let dir = tempdir();
    let entries: Vec<Entry> = (1..=5).map(|i| entry(i, 1, 12)).collect();
    let bytes = build_log(dir.path(), &entries);
    let bounds = record_bounds(&entries);
    let path = log_path(dir.path());
    // Every byte of the third record: length, checksum, index, term, data.
    for at in bounds[2]..bounds[3] {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut damaged = bytes.clone();
            damaged[at as usize] ^= mask;
            fs::write(&path, &damaged).unwrap();
            assert_corrupt_at(open_log(dir.path()), &path, bounds[2]);
            assert_eq!(
                fs::read(&path).unwrap(),
                damaged,
                "the file was changed (byte {at})"
            );
        }
    }
    // The message names the file and the offset.
    let mut damaged = bytes.clone();
    damaged[bounds[1] as usize + 20] ^= 1;
    fs::write(&path, &damaged).unwrap();
    let msg = open_log(dir.path()).unwrap_err().to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains(&bounds[1].to_string()), "{msg}");
}

/// Three entries whose last record (1484..2208) reaches into three sectors:
/// part of 1024..1536, all of 1536..2048 and part of 2048..2560. Returns
/// the entries, the synced file's bytes and the record bounds.
fn log_ending_across_sectors(dir: &Path) -> (Vec<Entry>, Vec<u8>, Vec<u64>) {
    let entries: Vec<Entry> = (1..=3).map(|i| entry(i, 1, 700)).collect();
    let bytes = build_log(dir, &entries);
    let bounds = record_bounds(&entries);
    assert_eq!(bounds[2..], [1484, 2208]);
    (entries, bytes, bounds)
}

/// A last record that fails its checksum although every sector of it holds
/// written bytes was not torn by a crash: it was written whole and damaged
/// since, and this node may have acknowledged it. Opening refuses it rather
/// than cutting it, with or without zeros written ahead after it.
#[test]
fn damaged_last_record_written_whole_is_corruption_not_a_torn_write() {
    let dir = tempdir();
    let (_, bytes, bounds) = log_ending_across_sectors(dir.path());
    let path = log_path(dir.path());
    for room in [0, 4096] {
        // Every byte after the length field: checksum, index, term, data.
        for at in bounds[2] + 4..bounds[3] {
            for mask in [0x01u8, 0xff] {
                let mut damaged = bytes.clone();
                damaged[at as usize] ^= mask;
                damaged.resize(bytes.len() + room, 0);
                fs::write(&path, &damaged).unwrap();
                assert_corrupt_at(open_log(dir.path()), &path, bounds[2]);
                assert_eq!(
                    fs::read(&path).unwrap(),
                    damaged,
                    "the file was changed (byte {at}, room {room})"
                );
            }
        }
    }
    // The message names the file, the offset and the entry, and says what
    // to do.
    let mut damaged = bytes.clone();
    damaged[(bounds[2] + bounds[3]) as usize / 2] ^= 0x10;
    fs::write(&path, &damaged).unwrap();
    let msg = open_log(dir.path()).unwrap_err().to_string();
    for part in [
        &path.display().to_string(),
        &bounds[2].to_string(),
        "entry 3",
        "written whole",
        "may have acknowledged",
        "backup",
    ] {
        assert!(msg.contains(part), "{part:?} missing: {msg}");
    }
}

/// An append cut short by a crash leaves some sector of its record
/// unwritten: zeros, from the space written ahead or a hole. Whichever
/// sector that is (the record's first, a middle one or its last), the
/// record is a torn tail: it is cut, and the log opens with the records
/// before it.
#[test]
fn last_record_with_an_unwritten_sector_is_a_torn_tail() {
    let dir = tempdir();
    let (entries, bytes, bounds) = log_ending_across_sectors(dir.path());
    let path = log_path(dir.path());
    for sector in [1024u64, 1536, 2048] {
        for room in [0, 4096] {
            let part = sector.max(bounds[2]) as usize..(sector + 512).min(bounds[3]) as usize;
            let mut torn = bytes.clone();
            torn[part].fill(0);
            torn.resize(bytes.len() + room, 0);
            fs::write(&path, &torn).unwrap();
            let log = open_log(dir.path()).unwrap();
            assert_eq!(all_entries(&log), entries[..2], "sector {sector}");
            drop(log);
            assert_eq!(
                fs::read(&path).unwrap(),
                bytes[..bounds[2] as usize],
                "not cut to the last good record (sector {sector}, room {room})"
            );
        }
    }
}

/// A last record whose end is past the end of the file is a torn tail,
/// wherever the file ends in it.
#[test]
fn last_record_cut_off_by_the_end_of_the_file_is_a_torn_tail() {
    let dir = tempdir();
    let (entries, bytes, bounds) = log_ending_across_sectors(dir.path());
    let path = log_path(dir.path());
    for end in [bounds[2] + 3, bounds[2] + 30, 1536, 2048, bounds[3] - 1] {
        fs::write(&path, &bytes[..end as usize]).unwrap();
        let log = open_log(dir.path()).unwrap();
        assert_eq!(all_entries(&log), entries[..2], "file ending at {end}");
        drop(log);
        assert_eq!(fs::metadata(&path).unwrap().len(), bounds[2]);
    }
}

#[test]
fn valid_record_with_wrong_index_is_corruption() {
    let dir = tempdir();
    let entries: Vec<Entry> = (1..=2).map(|i| entry(i, 1, 8)).collect();
    let mut bytes = build_log(dir.path(), &entries);
    let end = bytes.len() as u64;
    bytes.extend(forge_record(salt_of(&bytes), &entry(7, 1, 8)));
    let path = log_path(dir.path());
    fs::write(&path, &bytes).unwrap();
    assert_corrupt_at(open_log(dir.path()), &path, end);
    assert_eq!(fs::read(&path).unwrap(), bytes);
}

#[test]
fn records_forged_inside_entry_data_do_not_fool_recovery() {
    let dir = tempdir();
    let path = log_path(dir.path());
    let first = vec![entry(1, 1, 8)];
    // Entry 2 carries what looks like record 3 in its data. Cutting the file
    // after that look-alike (a torn write of entry 2) must still be a torn
    // tail, because the look-alike's checksum lacks the file's salt.
    for torn in [true, false] {
        let _ = fs::remove_file(&path);
        let fresh = build_log(dir.path(), &first);
        let salt = salt_of(&fresh);
        let forge_salt = if torn { salt.wrapping_add(1) } else { salt };
        let mut data = vec![0xAB; 10];
        data.extend(forge_record(forge_salt, &entry(3, 1, 8)));
        data.extend([0xCD; 10]);
        // Entry data is stored scrambled; scramble it beforehand so that the
        // file holds the look-alike as is.
        scramble(salt, 2, &mut data);
        let second = Entry {
            index: 2,
            term: 1,
            data,
        };
        let mut log = open_log(dir.path()).unwrap();
        log.append(std::slice::from_ref(&second)).unwrap();
        log.sync().unwrap();
        drop(log);
        let bytes = fs::read(&path).unwrap();
        let cut = bytes.len() - 5;
        fs::write(&path, &bytes[..cut]).unwrap();
        if torn {
            let log = open_log(dir.path()).unwrap();
            assert_eq!(all_entries(&log), first);
        } else {
            // Knowing the salt, a look-alike is a valid record following a
            // damaged one: the search really looks at every offset.
            assert_corrupt_at(open_log(dir.path()), &path, fresh.len() as u64);
        }
    }
}

#[test]
fn damage_found_on_read_is_reported() {
    let dir = tempdir();
    let entries: Vec<Entry> = (1..=3).map(|i| entry(i, 1, 12)).collect();
    let bounds = record_bounds(&entries);
    let path = log_path(dir.path());
    let mut log = open_log(dir.path()).unwrap();
    log.append(&entries).unwrap();
    log.sync().unwrap();
    // Damage the file under the open log (bit rot after open).
    let mut bytes = fs::read(&path).unwrap();
    bytes[bounds[1] as usize + 25] ^= 4;
    fs::write(&path, &bytes).unwrap();
    assert_corrupt_at(log.entries(1, 4), &path, bounds[1]);
    assert_eq!(log.entries(1, 2).unwrap(), entries[..1]);
}

#[test]
fn stale_compaction_tmp_is_removed() {
    let dir = tempdir();
    let entries: Vec<Entry> = (1..=3).map(|i| entry(i, 1, 12)).collect();
    build_log(dir.path(), &entries);
    let tmp = dir.path().join("raft.log.tmp");
    fs::write(&tmp, noise(3, 50)).unwrap();
    let log = open_log(dir.path()).unwrap();
    assert_eq!(all_entries(&log), entries);
    assert!(!tmp.exists());
}

#[test]
fn bad_log_files_are_errors() {
    let dir = tempdir();
    let path = log_path(dir.path());
    let valid = build_log(dir.path(), &[entry(1, 1, 4)]);

    let with_version = |version: u32| {
        let mut bytes = valid.clone();
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..32]);
        bytes[32..36].copy_from_slice(&crc.to_le_bytes());
        bytes
    };
    let mut bad_header_crc = valid.clone();
    bad_header_crc[20] ^= 1;
    let mut huge_prefix = valid[..LOG_HEADER as usize].to_vec();
    huge_prefix[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let crc = crc32fast::hash(&huge_prefix[..32]);
    huge_prefix[32..36].copy_from_slice(&crc.to_le_bytes());
    let mut other_magic = valid.clone();
    other_magic[0] = b'X';

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("short header", valid[..20].to_vec()),
        ("garbage", noise(1, 500)),
        ("future version", with_version(4)),
        // Version 1 stored entry data unscrambled.
        ("old version", with_version(1)),
        ("header checksum", bad_header_crc),
        ("magic", other_magic),
        ("prefix index", huge_prefix),
    ];
    for (what, bytes) in cases {
        fs::write(&path, &bytes).unwrap();
        let err = open_log(dir.path()).expect_err(what);
        assert!(matches!(err, Error::Corrupt { .. }), "{what}: {err}");
        if what == "future version" {
            assert!(err.to_string().contains("version 4"), "{err}");
        }
        if what == "old version" {
            assert!(err.to_string().contains("version 1"), "{err}");
        }
        assert_eq!(fs::read(&path).unwrap(), bytes, "{what}: file changed");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(64)))]

    /// Any bytes at all as the log file: open returns, never panics.
    #[test]
    fn random_log_file_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let dir = tempdir();
        fs::write(log_path(dir.path()), &bytes).unwrap();
        let _ = open_log(dir.path());
    }

    /// A valid header followed by random bytes: open returns, and a log it
    /// accepts is readable and consistent.
    #[test]
    fn random_records_never_panic(
        tail in prop::collection::vec(any::<u8>(), 0..400),
        prefix in prop::collection::vec(any::<u8>(), 0..3),
    ) {
        let dir = tempdir();
        let mut bytes = build_log(dir.path(), &[]);
        // Sometimes start with a plausible record length.
        bytes.extend(&prefix);
        bytes.extend(&tail);
        fs::write(log_path(dir.path()), &bytes).unwrap();
        if let Ok(log) = open_log(dir.path()) {
            prop_assert_eq!(log.first_index(), 1);
            let got = log.entries(1, log.last_index() + 1).unwrap();
            prop_assert_eq!(got.len() as u64, log.last_index());
        }
    }

    /// A crash after some synced and some unsynced appends leaves the file
    /// holding the synced bytes plus any prefix of the rest. Reopening
    /// yields every synced entry, then exactly the later entries whose
    /// records are complete, and nothing else.
    #[test]
    fn crash_during_appends_keeps_a_prefix(
        synced in prop::collection::vec(0usize..300, 0..8),
        unsynced in prop::collection::vec(
            prop_oneof![9 => 0usize..300, 1 => 100_000usize..200_000], 1..8),
        keep in 0.0f64..=1.0,
    ) {
        let dir = tempdir();
        let path = log_path(dir.path());
        let all: Vec<Entry> = synced.iter().chain(&unsynced).enumerate()
            .map(|(i, &len)| entry(i as u64 + 1, 1 + i as u64 / 3, len))
            .collect();
        let durable = build_log(dir.path(), &all[..synced.len()]);
        let mut log = open_log(dir.path()).unwrap();
        for e in &all[synced.len()..] {
            log.append(std::slice::from_ref(e)).unwrap();
        }
        drop(log);
        let full = fs::read(&path).unwrap();
        prop_assert_eq!(&full[..durable.len()], &durable[..]);
        let cut = durable.len() + ((full.len() - durable.len()) as f64 * keep) as usize;
        fs::write(&path, &full[..cut]).unwrap();

        let log = open_log(dir.path()).unwrap();
        let complete = record_bounds(&all).iter().filter(|&&b| b <= cut as u64).count() - 1;
        prop_assert!(complete >= synced.len());
        prop_assert_eq!(all_entries(&log), all[..complete].to_vec());
    }
}

// ------------------------------------------------------------------ state

fn state_path(dir: &Path) -> PathBuf {
    dir.join(DataDir::STATE_FILE)
}

/// A valid state file, as `FileState` writes it.
fn state_bytes(dir: &Path, state: HardState) -> Vec<u8> {
    let sub = dir.join("scratch");
    let mut st = open_state(&sub).unwrap();
    st.save(&state).unwrap();
    drop(st);
    let bytes = fs::read(state_path(&sub)).unwrap();
    fs::remove_dir_all(&sub).unwrap();
    bytes
}

#[test]
fn state_round_trip() {
    let dir = tempdir();
    let mut st = open_state(dir.path()).unwrap();
    assert_eq!(st.load().unwrap(), HardState::default());
    assert!(!state_path(dir.path()).exists());
    for hs in [
        HardState {
            term: 1,
            vote: Some(3),
        },
        HardState {
            term: 2,
            vote: None,
        },
        HardState {
            term: u64::MAX,
            vote: Some(u64::MAX),
        },
        HardState {
            term: 5,
            vote: Some(0),
        },
    ] {
        st.save(&hs).unwrap();
        assert_eq!(st.load().unwrap(), hs);
        drop(st);
        st = open_state(dir.path()).unwrap();
        assert_eq!(st.load().unwrap(), hs);
        assert_eq!(fs::metadata(state_path(dir.path())).unwrap().len(), 33);
    }
}

#[test]
fn interrupted_state_save_leaves_the_old_state() {
    let dir = tempdir();
    let old = HardState {
        term: 4,
        vote: Some(1),
    };
    let new = HardState {
        term: 5,
        vote: Some(2),
    };
    let new_bytes = state_bytes(dir.path(), new);
    let tmp = dir.path().join("raft.state.tmp");

    // No state saved yet: a crash before the first rename leaves the default.
    fs::write(&tmp, &new_bytes).unwrap();
    let st = open_state(dir.path()).unwrap();
    assert_eq!(st.load().unwrap(), HardState::default());
    assert!(!tmp.exists());
    drop(st);

    let mut st = open_state(dir.path()).unwrap();
    st.save(&old).unwrap();
    drop(st);
    // The tmp file fully written, or cut anywhere, but never renamed.
    for cut in 0..=new_bytes.len() {
        fs::write(&tmp, &new_bytes[..cut]).unwrap();
        let st = open_state(dir.path()).unwrap();
        assert_eq!(st.load().unwrap(), old, "tmp of {cut} bytes");
        assert!(!tmp.exists());
    }
    // Once renamed, the new state is what counts.
    fs::write(state_path(dir.path()), &new_bytes).unwrap();
    assert_eq!(open_state(dir.path()).unwrap().load().unwrap(), new);
}

#[test]
fn bad_state_files_are_errors() {
    let dir = tempdir();
    let path = state_path(dir.path());
    let valid = state_bytes(
        dir.path(),
        HardState {
            term: 9,
            vote: Some(2),
        },
    );
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("garbage".into(), noise(2, 33)),
        ("long garbage".into(), noise(3, 10_000)),
        ("trailing byte".into(), [valid.clone(), vec![0]].concat()),
    ];
    let mut future = valid.clone();
    future[8] = 2;
    let crc = crc32fast::hash(&future[..29]);
    future[29..].copy_from_slice(&crc.to_le_bytes());
    cases.push(("future version".into(), future));
    let mut bad_flag = valid.clone();
    bad_flag[20] = 2;
    let crc = crc32fast::hash(&bad_flag[..29]);
    bad_flag[29..].copy_from_slice(&crc.to_le_bytes());
    cases.push(("vote flag".into(), bad_flag));
    for cut in 0..valid.len() {
        cases.push((format!("cut at {cut}"), valid[..cut].to_vec()));
    }
    for at in 0..valid.len() {
        let mut flipped = valid.clone();
        flipped[at] ^= 0x10;
        cases.push((format!("flip at {at}"), flipped));
    }
    for (what, bytes) in cases {
        fs::write(&path, &bytes).unwrap();
        let err = open_state(dir.path()).expect_err(&what);
        assert!(
            matches!(err, Error::Corrupt { ref path, .. } if path.ends_with("raft.state")),
            "{what}: {err}"
        );
        assert_eq!(fs::read(&path).unwrap(), bytes, "{what}: file changed");
    }
}

// ------------------------------------------------------------------ kv

fn kv_path(dir: &Path) -> PathBuf {
    dir.join(DataDir::KV_FILE)
}

fn put(k: &[u8], v: &[u8]) -> KvWrite {
    KvWrite::Put(k.to_vec(), v.to_vec())
}

#[test]
fn kv_flush_reopen_and_lost_writes() {
    let dir = tempdir();
    let mut kv = open_kv(dir.path()).unwrap();
    assert_eq!(kv.applied_index(), 0);
    kv.write(1, vec![put(b"a", b"1"), put(b"ab", b"2"), put(b"b", b"3")])
        .unwrap();
    kv.write(
        2,
        vec![KvWrite::Delete(b"b".to_vec()), put(b"c", &[7; 100_000])],
    )
    .unwrap();
    kv.flush().unwrap();
    kv.write(3, vec![put(b"a", b"changed"), put(b"d", b"4")])
        .unwrap();
    assert_eq!(kv.get(b"a").unwrap(), Some(b"changed".to_vec()));
    drop(kv);

    // The unflushed write 3 is gone; data and applied index agree at 2.
    let mut kv = open_kv(dir.path()).unwrap();
    assert_eq!(kv.applied_index(), 2);
    assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(kv.get(b"b").unwrap(), None);
    assert_eq!(kv.get(b"d").unwrap(), None);
    assert_eq!(kv.get(b"c").unwrap(), Some(vec![7; 100_000]));
    assert_eq!(
        kv.scan_prefix(b"a").unwrap(),
        vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"ab".to_vec(), b"2".to_vec())
        ]
    );
    kv.write(3, vec![KvWrite::Delete(b"a".to_vec())]).unwrap();
    kv.flush().unwrap();
    drop(kv);
    let kv = open_kv(dir.path()).unwrap();
    assert_eq!(kv.applied_index(), 3);
    assert_eq!(kv.scan_prefix(b"").unwrap().len(), 2);
}

/// A background flush persists the state as of the moment it started;
/// writes after it stay in memory until the next flush, and dropping the
/// store waits for the background writer.
#[test]
fn kv_background_flush_keeps_the_state_it_started_from() {
    let dir = tempdir();
    let mut kv = open_kv(dir.path()).unwrap();
    kv.write(1, vec![put(b"a", b"1"), put(b"big", &[9; 300_000])])
        .unwrap();
    assert!(kv.flush_background().unwrap(), "no flush was running");
    kv.write(2, vec![put(b"a", b"2")]).unwrap();
    drop(kv);
    let mut kv = open_kv(dir.path()).unwrap();
    assert_eq!(kv.applied_index(), 1);
    assert_eq!(kv.get(b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(kv.get(b"big").unwrap(), Some(vec![9; 300_000]));

    // A foreground flush after a background one waits for it, then writes
    // the newer state.
    kv.write(2, vec![put(b"a", b"2")]).unwrap();
    assert!(kv.flush_background().unwrap(), "no flush was running");
    kv.write(3, vec![put(b"a", b"3")]).unwrap();
    kv.flush().unwrap();
    drop(kv);
    let kv = open_kv(dir.path()).unwrap();
    assert_eq!(kv.applied_index(), 3);
    assert_eq!(kv.get(b"a").unwrap(), Some(b"3".to_vec()));
    assert!(!dir.path().join("kv.snapshot.tmp").exists());
}

/// The background flush sorts the keys itself: its file is byte for byte
/// the one a foreground flush writes for the same state, and
/// `snapshot_bytes` predicts its length.
#[test]
fn kv_background_and_foreground_snapshots_are_identical() {
    let fill = |kv: &mut FileKv| {
        // Keys in a scrambled order, some overwritten, some deleted.
        for i in 0..5_000u64 {
            let k = (i * 7_919) % 5_000;
            kv.write(
                i + 1,
                vec![put(format!("key-{k:05}").as_bytes(), &k.to_le_bytes())],
            )
            .unwrap();
        }
        let mut batch = Vec::new();
        for k in (0..5_000u64).step_by(3) {
            batch.push(KvWrite::Delete(format!("key-{k:05}").into_bytes()));
        }
        for k in (1..5_000u64).step_by(5) {
            batch.push(put(format!("key-{k:05}").as_bytes(), b"again"));
        }
        kv.write(5_001, batch).unwrap();
    };
    let background = tempdir();
    let mut kv = open_kv(background.path()).unwrap();
    fill(&mut kv);
    let predicted = kv.snapshot_bytes();
    assert!(kv.flush_background().unwrap(), "no flush was running");
    drop(kv);
    let foreground = tempdir();
    let mut kv = open_kv(foreground.path()).unwrap();
    fill(&mut kv);
    kv.flush().unwrap();
    drop(kv);

    let a = fs::read(kv_path(background.path())).unwrap();
    let b = fs::read(kv_path(foreground.path())).unwrap();
    assert_eq!(a.len() as u64, predicted);
    assert!(
        a == b,
        "the background snapshot differs from the foreground one"
    );
    let kv = open_kv(background.path()).unwrap();
    let keys: Vec<Vec<u8>> = kv
        .scan_prefix(b"")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(
        keys.len(),
        5_000 - 5_000usize.div_ceil(3) + (1..5_000).step_by(5).filter(|k| k % 3 == 0).count()
    );
}

fn kv_bytes(dir: &Path) -> Vec<u8> {
    let sub = dir.join("scratch");
    let mut kv = open_kv(&sub).unwrap();
    kv.write(
        7,
        vec![put(b"k1", b"v1"), put(b"k2", b""), put(b"", b"empty key")],
    )
    .unwrap();
    kv.flush().unwrap();
    drop(kv);
    let bytes = fs::read(kv_path(&sub)).unwrap();
    fs::remove_dir_all(&sub).unwrap();
    bytes
}

#[test]
fn interrupted_kv_flush_leaves_the_old_snapshot() {
    let dir = tempdir();
    let new_bytes = kv_bytes(dir.path());
    let mut kv = open_kv(dir.path()).unwrap();
    kv.write(3, vec![put(b"old", b"yes")]).unwrap();
    kv.flush().unwrap();
    drop(kv);
    let tmp = dir.path().join("kv.snapshot.tmp");
    for cut in [0, 10, new_bytes.len() - 1, new_bytes.len()] {
        fs::write(&tmp, &new_bytes[..cut]).unwrap();
        let kv = open_kv(dir.path()).unwrap();
        assert_eq!(kv.applied_index(), 3);
        assert_eq!(kv.get(b"old").unwrap(), Some(b"yes".to_vec()));
        assert_eq!(kv.get(b"k1").unwrap(), None);
        assert!(!tmp.exists());
    }
}

#[test]
fn bad_kv_files_are_errors() {
    let dir = tempdir();
    let path = kv_path(dir.path());
    let valid = kv_bytes(dir.path());
    fs::write(&path, &valid).unwrap();
    assert_eq!(open_kv(dir.path()).unwrap().applied_index(), 7);

    let mut future = valid.clone();
    future[8] = 9;
    let end = future.len() - 4;
    let crc = crc32fast::hash(&future[..end]);
    future[end..].copy_from_slice(&crc.to_le_bytes());
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("garbage".into(), noise(4, 300)),
        ("future version".into(), future),
        ("trailing byte".into(), [valid.clone(), vec![0]].concat()),
    ];
    for cut in 0..valid.len() {
        cases.push((format!("cut at {cut}"), valid[..cut].to_vec()));
    }
    for at in 0..valid.len() {
        let mut flipped = valid.clone();
        flipped[at] ^= 0x04;
        cases.push((format!("flip at {at}"), flipped));
    }
    for (what, bytes) in cases {
        fs::write(&path, &bytes).unwrap();
        let err = open_kv(dir.path()).expect_err(&what);
        assert!(
            matches!(err, Error::Corrupt { ref path, .. } if path.ends_with("kv.snapshot")),
            "{what}: {err}"
        );
        assert_eq!(fs::read(&path).unwrap(), bytes, "{what}: file changed");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(64)))]

    /// Any bytes as the state or KV file: open returns, never panics.
    #[test]
    fn random_state_and_kv_files_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        magic in any::<bool>(),
    ) {
        let dir = tempdir();
        let mut state = bytes.clone();
        let mut kv = bytes;
        if magic {
            // Get past the magic check to reach the deeper parsing.
            state.splice(0..0, b"KVAPPHST\x01\0\0\0".iter().copied());
            kv.splice(0..0, b"KVAPPKVS\x01\0\0\0".iter().copied());
        }
        fs::write(state_path(dir.path()), &state).unwrap();
        fs::write(kv_path(dir.path()), &kv).unwrap();
        let _ = open_state(dir.path());
        let _ = open_kv(dir.path());
    }
}

// ------------------------------------------------------------------ data dir

#[test]
fn data_dir_is_created_and_locked() {
    let root = tempdir();
    let path = root.path().join("a/b/node1");
    let first = DataDir::open(&path).unwrap();
    assert!(path.join(DataDir::LOCK_FILE).exists());
    match DataDir::open(&path) {
        Err(Error::Locked(p)) => assert_eq!(p, path),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(first);
    let again = DataDir::open(&path).unwrap();
    assert_eq!(again.path(), path);
}

#[test]
fn a_file_in_place_of_the_data_dir_is_a_clear_error() {
    let root = tempdir();
    let path = root.path().join("file");
    fs::write(&path, b"not a directory").unwrap();
    match DataDir::open(&path) {
        Err(Error::Config(msg)) => {
            assert!(msg.contains("exists and is not a directory"), "{msg}")
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    assert_eq!(fs::read(&path).unwrap(), b"not a directory");
}

#[test]
fn backends_keep_the_directory_locked() {
    let dir = tempdir();
    let data = DataDir::open(dir.path()).unwrap();
    let log = data.log().unwrap();
    let state = data.state().unwrap();
    drop(data);
    assert!(matches!(DataDir::open(dir.path()), Err(Error::Locked(_))));
    drop(log);
    assert!(matches!(DataDir::open(dir.path()), Err(Error::Locked(_))));
    drop(state);
    DataDir::open(dir.path()).unwrap();
}

#[test]
fn each_backend_opens_once_at_a_time() {
    let dir = tempdir();
    let data = DataDir::open(dir.path()).unwrap();
    let log = data.log().unwrap();
    let kv = data.kv().unwrap();
    let state = data.state().unwrap();
    assert!(data.log().is_err());
    assert!(data.kv().is_err());
    assert!(data.state().is_err());
    drop((log, kv, state));
    data.log().unwrap();
    data.kv().unwrap();
    data.state().unwrap();
}

#[test]
fn failed_open_releases_its_claim() {
    let dir = tempdir();
    fs::write(log_path(dir.path()), b"junk").unwrap();
    let data = DataDir::open(dir.path()).unwrap();
    assert!(data.log().is_err());
    fs::remove_file(log_path(dir.path())).unwrap();
    data.log().unwrap();
}

// ------------------------------------------------------------------ identity

fn me(node: u64, members: u64, cluster: &str) -> Identity {
    Identity {
        node,
        members,
        cluster: cluster.into(),
    }
}

#[test]
fn a_data_directory_belongs_to_one_node() {
    let dir = tempdir();
    let path = dir.path().join(DataDir::IDENTITY_FILE);
    let data = DataDir::open(dir.path()).unwrap();
    data.claim_identity(&me(1, 3, "a:1,b:2,c:3")).unwrap();
    // The same node again, also after its members moved.
    data.claim_identity(&me(1, 3, "a:1,b:2,c:3")).unwrap();
    data.claim_identity(&me(1, 3, "x:1,y:2,z:3")).unwrap();
    let recorded = fs::read(&path).unwrap();
    assert!(recorded.windows(11).any(|w| w == b"x:1,y:2,z:3"));

    for other in [me(2, 3, "x:1,y:2,z:3"), me(1, 5, "x:1,y:2,z:3,v:4,w:5")] {
        match data.claim_identity(&other) {
            Err(Error::Config(msg)) => {
                assert!(
                    msg.contains("belongs to node 1 of a 3-node cluster"),
                    "{msg}"
                );
                assert!(
                    msg.contains(&format!("not to node {}", other.node)),
                    "{msg}"
                );
            }
            r => panic!("{other:?} was let in: {r:?}"),
        }
        assert_eq!(fs::read(&path).unwrap(), recorded, "the file changed");
    }
}

#[test]
fn a_missing_identity_file_is_an_error_once_the_node_wrote_anything() {
    for name in [
        DataDir::LOG_FILE,
        DataDir::STATE_FILE,
        DataDir::KV_FILE,
        "raft.log.start",
    ] {
        let dir = tempdir();
        let data = DataDir::open(dir.path()).unwrap();
        fs::write(dir.path().join(name), b"").unwrap();
        match data.claim_identity(&me(1, 3, "a:1,b:2,c:3")) {
            Err(Error::Config(msg)) => {
                assert!(msg.contains(DataDir::IDENTITY_FILE), "{name}: {msg}");
                assert!(msg.contains(name), "{name}: {msg}");
            }
            r => panic!("{name}: claimed a used directory: {r:?}"),
        }
        assert!(!dir.path().join(DataDir::IDENTITY_FILE).exists(), "{name}");
    }
    // An empty directory (the lock file aside) is claimed.
    let dir = tempdir();
    let data = DataDir::open(dir.path()).unwrap();
    data.claim_identity(&me(1, 3, "a:1,b:2,c:3")).unwrap();
    // Once claimed, the node's files are its own.
    drop(data.log().unwrap());
    data.claim_identity(&me(1, 3, "a:1,b:2,c:3")).unwrap();
}

#[test]
fn a_missing_state_file_is_an_error_once_the_log_or_store_holds_anything() {
    // A fresh directory, and one whose log was created but got no entry.
    let dir = tempdir();
    let data = DataDir::open(dir.path()).unwrap();
    let (log, kv) = (data.log().unwrap(), data.kv().unwrap());
    data.check_state_file(&log, &kv).unwrap();
    drop((log, kv));

    // Entries in the log, no state file.
    let mut log = data.log().unwrap();
    log.append(&[entry(1, 8, 10), entry(2, 8, 10)]).unwrap();
    log.sync().unwrap();
    drop(log);
    let (log, kv) = (data.log().unwrap(), data.kv().unwrap());
    match data.check_state_file(&log, &kv) {
        Err(Error::Config(msg)) => assert!(msg.contains(DataDir::STATE_FILE), "{msg}"),
        r => panic!("started without the state file: {r:?}"),
    }
    // With the state file, all is well.
    let mut state = data.state().unwrap();
    state
        .save(&HardState {
            term: 8,
            vote: Some(2),
        })
        .unwrap();
    data.check_state_file(&log, &kv).unwrap();
    drop((log, kv, state));

    // A store applied through some entry, with an empty log.
    let dir = tempdir();
    let data = DataDir::open(dir.path()).unwrap();
    let mut kv = data.kv().unwrap();
    kv.write(5, vec![put(b"k", b"v")]).unwrap();
    kv.flush().unwrap();
    let log = data.log().unwrap();
    match data.check_state_file(&log, &kv) {
        Err(Error::Config(msg)) => assert!(msg.contains(DataDir::STATE_FILE), "{msg}"),
        r => panic!("started without the state file: {r:?}"),
    }
}

#[test]
fn bad_identity_files_are_errors() {
    let dir = tempdir();
    let path = dir.path().join(DataDir::IDENTITY_FILE);
    let data = DataDir::open(dir.path()).unwrap();
    data.claim_identity(&me(2, 3, "a:1,b:2,c:3")).unwrap();
    let valid = fs::read(&path).unwrap();
    let mut flipped = valid.clone();
    flipped[14] ^= 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", valid[..valid.len() - 3].to_vec()),
        ("flipped", flipped),
        ("garbage", noise(5, 64)),
    ];
    for (what, bytes) in cases {
        fs::write(&path, &bytes).unwrap();
        let err = data
            .claim_identity(&me(2, 3, "a:1,b:2,c:3"))
            .expect_err(what);
        assert!(matches!(err, Error::Corrupt { .. }), "{what}: {err}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "{what}: file changed");
    }
}

// ------------------------------------------------------------ compaction

/// Disk blocks (512 bytes each) allocated to `path`.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks()
}

/// The offset of the first data (not a hole) in `path` at or after `from`.
fn next_data(path: &Path, from: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let file = fs::File::open(path).unwrap();
    // SAFETY: a plain syscall on an open descriptor.
    let at = unsafe { libc::lseek(file.as_raw_fd(), from as libc::off_t, libc::SEEK_DATA) };
    assert!(at >= 0, "SEEK_DATA: {}", std::io::Error::last_os_error());
    at as u64
}

/// Whether the file system under `dir` frees blocks for
/// `FALLOC_FL_PUNCH_HOLE` (the log works without, keeping the space).
fn punches_holes(dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let path = dir.join("punch-probe");
    fs::write(&path, vec![1u8; 64 << 10]).unwrap();
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.sync_all().unwrap();
    let before = allocated(&path);
    // SAFETY: a plain syscall on an open descriptor.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            64 << 10,
        )
    };
    let freed = rc == 0 && allocated(&path) < before;
    fs::remove_file(&path).unwrap();
    freed
}

#[test]
fn discarding_frees_the_prefix_in_place_and_reopens_from_the_start_file() {
    let dir = tempdir();
    let mut log = open_log(dir.path()).unwrap();
    let entries: Vec<Entry> = (1..=2_000).map(|i| entry(i, 1 + i / 700, 1_000)).collect();
    log.append(&entries).unwrap();
    log.sync().unwrap();
    drop(log);
    let before = allocated(&log_path(dir.path()));
    let mut log = open_log(dir.path()).unwrap();
    let len = fs::metadata(log_path(dir.path())).unwrap().len();
    log.discard_through(1_900, entries[1_899].term).unwrap();
    // The log no longer holds them at once; appends and a sync go on while
    // a thread moves the start on disk.
    assert_eq!(log.first_index(), 1_901);
    log.append(&[entry(2_001, 3, 10)]).unwrap();
    log.sync().unwrap();
    log.wait_for_discard();
    // The file keeps its length (it is not rewritten) but gives back the
    // blocks of about 1 900 records of 1 KB: the file holds no data from its
    // first block to past 1.5 MB. (Its total allocation is no measure: the
    // zeros written ahead of the end, by another thread, come and go.)
    assert!(fs::metadata(log_path(dir.path())).unwrap().len() >= len);
    if punches_holes(dir.path()) {
        let data_from = next_data(&log_path(dir.path()), 4096);
        assert!(
            data_from > 1_500_000,
            "data from offset {data_from} on (blocks allocated before {before}, after {})",
            allocated(&log_path(dir.path()))
        );
    } else {
        eprintln!("this file system does not punch holes: space not checked");
    }
    drop(log);

    let log = open_log(dir.path()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (1_901, 2_001));
    assert_eq!(log.term(1_900).unwrap(), Some(entries[1_899].term));
    assert_eq!(log.term(1_899).unwrap(), None);
    let mut expected = entries[1_900..].to_vec();
    expected.push(entry(2_001, 3, 10));
    assert_eq!(all_entries(&log), expected);
}

/// A discard moves the start on disk from a thread; the next discard and
/// dropping the log wait for it, so a reopen finds the last start.
#[test]
fn discarding_again_or_dropping_the_log_waits_for_the_discard_on_disk() {
    let dir = tempdir();
    let mut log = open_log(dir.path()).unwrap();
    let entries: Vec<Entry> = (1..=300).map(|i| entry(i, 1 + i / 150, 100)).collect();
    log.append(&entries).unwrap();
    log.discard_through(100, 1).unwrap();
    log.discard_through(200, 2).unwrap();
    drop(log);
    let log = open_log(dir.path()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (201, 300));
    assert_eq!(log.term(200).unwrap(), Some(2));
    assert_eq!(all_entries(&log), entries[200..].to_vec());
}

#[test]
fn a_discard_names_the_term_of_the_entry_it_keeps_as_prefix() {
    let dir = tempdir();
    let mut log = open_log(dir.path()).unwrap();
    log.append(&(1..=10).map(|i| entry(i, 2, 10)).collect::<Vec<_>>())
        .unwrap();
    let start = fs::read(dir.path().join("raft.log.start")).unwrap();
    assert!(log.discard_through(5, 3).is_err());
    assert_eq!(log.first_index(), 1);
    assert_eq!(fs::read(dir.path().join("raft.log.start")).unwrap(), start);
}

#[test]
fn a_damaged_or_misplaced_start_file_is_an_error_and_changes_nothing() {
    let dir = tempdir();
    let mut log = open_log(dir.path()).unwrap();
    log.append(&(1..=20).map(|i| entry(i, 1, 100)).collect::<Vec<_>>())
        .unwrap();
    log.discard_through(10, 1).unwrap();
    drop(log);
    let start = dir.path().join("raft.log.start");
    let valid = fs::read(&start).unwrap();
    let log_bytes = fs::read(log_path(dir.path())).unwrap();
    let with_crc = |mut b: Vec<u8>| {
        let crc = crc32fast::hash(&b[..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    };
    let mut flipped = valid.clone();
    flipped[20] ^= 1;
    let mut past_end = valid.clone();
    past_end[32..40].copy_from_slice(&(log_bytes.len() as u64 + 1).to_le_bytes());
    let mut wrong_record = valid.clone();
    // The start of the record of entry 10, not 11.
    let at = u64::from_le_bytes(valid[32..40].try_into().unwrap()) - record_len(&entry(10, 1, 100));
    wrong_record[32..40].copy_from_slice(&at.to_le_bytes());
    let mut future = valid.clone();
    future[8] = 9;
    for (what, bytes) in [
        ("checksum", flipped),
        ("start past the end", with_crc(past_end)),
        ("start at another entry", with_crc(wrong_record)),
        ("future version", future),
        ("truncated", valid[..30].to_vec()),
    ] {
        fs::write(&start, &bytes).unwrap();
        let err = open_log(dir.path()).expect_err(what);
        assert!(matches!(err, Error::Corrupt { .. }), "{what}: {err}");
        assert_eq!(
            fs::read(&start).unwrap(),
            bytes,
            "{what}: start file changed"
        );
        assert_eq!(
            fs::read(log_path(dir.path())).unwrap(),
            log_bytes,
            "{what}: log changed"
        );
    }
    fs::write(&start, &valid).unwrap();
    let log = open_log(dir.path()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (11, 20));
}

#[test]
fn discarding_past_the_end_starts_a_fresh_file_and_replaces_a_stale_start_file() {
    let dir = tempdir();
    let mut log = open_log(dir.path()).unwrap();
    log.append(&(1..=20).map(|i| entry(i, 1, 100)).collect::<Vec<_>>())
        .unwrap();
    log.discard_through(10, 1).unwrap();
    log.wait_for_discard();
    let stale = fs::read(dir.path().join("raft.log.start")).unwrap();
    log.discard_through(50, 4).unwrap();
    let fresh = fs::read(dir.path().join("raft.log.start")).unwrap();
    assert_ne!(fresh, stale);
    drop(log);
    // A crash between the new file's rename and its start file leaves the
    // old start file: it names the old file's salt, so opening replaces it.
    fs::write(dir.path().join("raft.log.start"), &stale).unwrap();
    let log = open_log(dir.path()).unwrap();
    assert_eq!(fs::read(dir.path().join("raft.log.start")).unwrap(), fresh);
    continues_empty_after(dir.path(), log, 50, 4, 5);
}

#[test]
fn a_kv_snapshot_installs_elsewhere_durably_until_the_next_write() {
    let a = tempdir();
    let mut kv = open_kv(a.path()).unwrap();
    kv.write(
        7,
        vec![
            KvWrite::Put(b"k1".to_vec(), b"v1".to_vec()),
            KvWrite::Put(b"k2".to_vec(), vec![0; 300]),
        ],
    )
    .unwrap();
    let snapshot = kv.snapshot().unwrap();
    assert_eq!(kv.installed(), None);

    let b = tempdir();
    let mut other = open_kv(b.path()).unwrap();
    other
        .write(3, vec![KvWrite::Put(b"old".to_vec(), b"x".to_vec())])
        .unwrap();
    // A damaged snapshot is refused and changes nothing.
    let mut bad = snapshot.clone();
    bad[40] ^= 1;
    assert!(other.install(&bad, 7, 2).is_err());
    // So is one that is not of the index it is said to hold.
    assert!(other.install(&snapshot, 6, 2).is_err());
    assert_eq!(other.applied_index(), 3);
    assert_eq!(other.get(b"old").unwrap(), Some(b"x".to_vec()));

    other.install(&snapshot, 7, 2).unwrap();
    assert_eq!(other.get(b"old").unwrap(), None);
    assert_eq!(other.get(b"k1").unwrap(), Some(b"v1".to_vec()));
    assert_eq!(other.installed(), Some((7, 2)));
    assert_eq!(other.durable_index(), 7);
    drop(other);
    // Durable without a flush, and still marked as installed.
    let mut other = open_kv(b.path()).unwrap();
    assert_eq!(other.installed(), Some((7, 2)));
    assert_eq!(other.scan_prefix(b"k").unwrap().len(), 2);
    other.write(8, Vec::new()).unwrap();
    assert_eq!(other.installed(), None);
    other.flush().unwrap();
    drop(other);
    assert_eq!(open_kv(b.path()).unwrap().installed(), None);
}

#[test]
fn a_kv_snapshot_job_encodes_the_state_it_captured() {
    let dir = tempdir();
    let mut kv = open_kv(dir.path()).unwrap();
    let batch = (0..500u32)
        .map(|i| KvWrite::Put(format!("key-{i:04}").into_bytes(), vec![i as u8; 40]))
        .collect();
    kv.write(12, batch).unwrap();
    let now = kv.snapshot().unwrap();
    let job = kv.snapshot_job().unwrap();
    // Changes after the capture do not reach the job's snapshot.
    kv.write(
        13,
        vec![
            KvWrite::Delete(b"key-0001".to_vec()),
            KvWrite::Put(b"key-0002".to_vec(), b"new".to_vec()),
        ],
    )
    .unwrap();
    let encoded = std::thread::spawn(job).join().unwrap().unwrap();
    assert_eq!(encoded, now);
    assert_ne!(kv.snapshot().unwrap(), now);
}

/// A job holds the store's hash map while writes go on beside it: with
/// thousands of keys, overwrites, deletes and new keys after the capture
/// (the job running meanwhile) neither reach the job's snapshot nor go
/// missing from the store, before, while and after they move back into
/// the map.
#[test]
fn a_kv_snapshot_job_and_later_writes_do_not_see_each_other() {
    let dir = tempdir();
    let mut kv = open_kv(dir.path()).unwrap();
    let key = |i: u32| format!("key-{i:06}").into_bytes();
    let batch = (0..20_000u32)
        .map(|i| KvWrite::Put(key(i), i.to_le_bytes().to_vec()))
        .collect();
    kv.write(1, batch).unwrap();
    let before = kv.snapshot().unwrap();
    let job = std::thread::spawn(kv.snapshot_job().unwrap());
    for round in 0..4u32 {
        let batch = (0..20_000u32)
            .filter(|i| i % 4 == round)
            .map(|i| match i % 3 {
                0 => KvWrite::Delete(key(i)),
                _ => KvWrite::Put(key(i), b"later".to_vec()),
            })
            .chain((0..500).map(|i| KvWrite::Put(key(100_000 + round * 500 + i), b"new".to_vec())))
            .collect();
        kv.write(2 + u64::from(round), batch).unwrap();
    }
    assert_eq!(job.join().unwrap().unwrap(), before);
    // The writes made meanwhile move back a few per write: a job taken
    // half-way encodes the same state as the store's own snapshot.
    for i in 0..50u32 {
        let k = key(100_000 + i);
        kv.write(6 + u64::from(i), vec![KvWrite::Put(k, b"new".to_vec())])
            .unwrap();
    }
    let half_way = kv.snapshot_job().unwrap();
    assert_eq!(half_way().unwrap(), kv.snapshot().unwrap());

    let pairs = kv.scan_prefix(b"key-").unwrap();
    let deleted = (0..20_000u32).filter(|i| i % 3 == 0).count();
    assert_eq!(pairs.len(), 20_000 - deleted + 2_000);
    for (k, v) in &pairs {
        let i: u32 = std::str::from_utf8(&k[4..]).unwrap().parse().unwrap();
        let want: &[u8] = if i >= 100_000 { b"new" } else { b"later" };
        assert_eq!(v, want, "key {i}");
        assert_eq!(kv.get(k).unwrap().as_deref(), Some(want));
    }
    assert_eq!(kv.get(&key(3)).unwrap(), None);
}

#[test]
fn a_version_1_kv_snapshot_is_still_read() {
    let dir = tempdir();
    let pairs: &[(&[u8], &[u8])] = &[(b"a", b"1"), (b"b", b"22")];
    let mut v1 = Vec::new();
    v1.extend_from_slice(b"KVAPPKVS");
    v1.extend_from_slice(&1u32.to_le_bytes());
    v1.extend_from_slice(&9u64.to_le_bytes());
    v1.extend_from_slice(&(pairs.len() as u64).to_le_bytes());
    for (k, v) in pairs {
        v1.extend_from_slice(&(k.len() as u32).to_le_bytes());
        v1.extend_from_slice(k);
        v1.extend_from_slice(&(v.len() as u32).to_le_bytes());
        v1.extend_from_slice(v);
    }
    let crc = crc32fast::hash(&v1);
    v1.extend_from_slice(&crc.to_le_bytes());
    fs::write(dir.path().join("kv.snapshot"), &v1).unwrap();
    let kv = open_kv(dir.path()).unwrap();
    assert_eq!(kv.applied_index(), 9);
    assert_eq!(kv.installed(), None);
    assert_eq!(kv.get(b"b").unwrap(), Some(b"22".to_vec()));
}

#[test]
fn a_restart_finishes_an_install_that_a_crash_cut_short() {
    // The store holds a snapshot through 30 (term 3); the log still holds
    // entries 1..=12 of term 1 and 2, which disagree with it.
    let dir = tempdir();
    let mut log = open_log(dir.path()).unwrap();
    log.append(
        &(1..=12)
            .map(|i| entry(i, 1 + i / 10, 10))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    log.sync().unwrap();
    kvapp_c::raft::align_log(&mut log, 30, 3).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (31, 30));
    assert_eq!(log.term(30).unwrap(), Some(3));
    drop(log);
    let mut log = open_log(dir.path()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (31, 30));
    // A log that agrees with the snapshot keeps the entries after it.
    log.append(&(31..=40).map(|i| entry(i, 3, 10)).collect::<Vec<_>>())
        .unwrap();
    kvapp_c::raft::align_log(&mut log, 35, 3).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (36, 40));
    // Already aligned: nothing changes.
    kvapp_c::raft::align_log(&mut log, 33, 3).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (36, 40));
}

#[test]
fn a_punched_log_without_its_start_file_is_an_error_not_a_cut() {
    let dir = tempdir();
    if !punches_holes(dir.path()) {
        eprintln!("this file system does not punch holes: nothing to check");
        return;
    }
    let mut log = open_log(dir.path()).unwrap();
    log.append(&(1..=100).map(|i| entry(i, 1, 500)).collect::<Vec<_>>())
        .unwrap();
    log.discard_through(90, 1).unwrap();
    drop(log);
    let bytes = fs::read(log_path(dir.path())).unwrap();
    fs::remove_file(dir.path().join("raft.log.start")).unwrap();
    let err = open_log(dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. }) && err.to_string().contains("raft.log.start"),
        "{err}"
    );
    assert_eq!(
        fs::read(log_path(dir.path())).unwrap(),
        bytes,
        "log changed"
    );
}

#[test]
fn a_fresh_log_gets_back_a_start_file_a_crash_left_out() {
    let dir = tempdir();
    drop(open_log(dir.path()).unwrap());
    let start = dir.path().join("raft.log.start");
    let written = fs::read(&start).unwrap();
    fs::remove_file(&start).unwrap();
    let mut log = open_log(dir.path()).unwrap();
    assert_eq!(fs::read(&start).unwrap(), written);
    log.append(&[entry(1, 1, 3)]).unwrap();
    log.sync().unwrap();
    drop(log);
    assert_eq!(
        all_entries(&open_log(dir.path()).unwrap()),
        vec![entry(1, 1, 3)]
    );
}

#[test]
fn a_version_2_log_still_opens_and_discards_without_punching() {
    let dir = tempdir();
    let entries: Vec<Entry> = (1..=50).map(|i| entry(i, 1, 200)).collect();
    let mut bytes = build_log(dir.path(), &entries);
    // Version 2: the same records, no start file.
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..32]);
    bytes[32..36].copy_from_slice(&crc.to_le_bytes());
    fs::write(log_path(dir.path()), &bytes).unwrap();
    fs::remove_file(dir.path().join("raft.log.start")).unwrap();
    let mut log = open_log(dir.path()).unwrap();
    assert_eq!(all_entries(&log), entries);
    assert!(!dir.path().join("raft.log.start").exists());
    log.discard_through(40, 1).unwrap();
    drop(log);
    // Nothing was punched out, so without its start file a build that
    // reads version 2 would still find every entry.
    assert_eq!(
        fs::read(log_path(dir.path())).unwrap()[..bytes.len()],
        bytes[..]
    );
    let log = open_log(dir.path()).unwrap();
    assert_eq!(all_entries(&log), entries[40..].to_vec());
}

#[test]
fn a_log_far_past_its_start_is_copied_to_a_fresh_file() {
    let dir = tempdir();
    let mut log = open_log(dir.path()).unwrap();
    log.set_rewrite_threshold(64 << 10);
    let entries: Vec<Entry> = (1..=400).map(|i| entry(i, 1 + i / 100, 300)).collect();
    log.append(&entries).unwrap();
    log.sync().unwrap();
    // The start passes 64 KiB while keeping little: the kept records move.
    log.discard_through(390, entries[389].term).unwrap();
    let len = fs::metadata(log_path(dir.path())).unwrap().len();
    assert!(len < 64 << 10, "the log is {len} bytes");
    log.append(&[entry(401, 5, 7)]).unwrap();
    log.sync().unwrap();
    let mut expected = entries[390..].to_vec();
    expected.push(entry(401, 5, 7));
    assert_eq!(all_entries(&log), expected);
    drop(log);
    let log = open_log(dir.path()).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (391, 401));
    assert_eq!(log.term(390).unwrap(), Some(entries[389].term));
    assert_eq!(all_entries(&log), expected);
}
