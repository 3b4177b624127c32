//! Hostile input against the real `qdb-apply` binary: one test per row of
//! `docs/bad-inputs.md`. Every input is built with the library's encoders.
//! Each test asserts the exit status, the exact one-line error (with
//! RUST_BACKTRACE=1 set, so a panic or a Debug-printed error would show),
//! and what the follower looks like afterwards, byte for byte.
//!
//! The last tests bound memory (a hostile len under an address-space limit,
//! peak RSS over a long stream) and replay the fuzz target's seed corpus and
//! deterministic mutations of it on stable.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use quiverdb_follower::format::layout::*;
use quiverdb_follower::format::page::{commit_stamp, overflow_page};
use quiverdb_follower::format::wal::{
    encode_record, encode_truncate, record_crc, stream_header, RecordHeader,
};
use quiverdb_follower::DbLock;
use quiverdb_follower::Meta;
use testkit::fuzz::{fuzz_apply_stream_in, fuzz_parse_stream};
use testkit::rng::Rng;
use testkit::stream::StreamIndex;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/quiverdb-1.2.5");

fn fixture(case: &str, file: &str) -> Vec<u8> {
    std::fs::read(Path::new(FIXTURES).join(case).join(file)).unwrap()
}

fn expected(case: &str) -> BTreeMap<String, Vec<u8>> {
    common::expected_map(case)
}

struct Out {
    code: i32,
    stderr: String,
}

fn command(db: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qdb-apply"));
    c.arg("--path")
        .arg(db)
        .args(args)
        // A panic would print a backtrace; an error printed with Debug would
        // span lines. Neither may happen.
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn run_cmd(c: Command, input: Vec<u8>) -> Out {
    // qdb-apply may stop reading before the end (that is often the point):
    // the harness feeds stdin on a thread and ignores a closed pipe.
    let out = testkit::child::run_with_input(c, &input);
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8(out.stderr).unwrap(),
    };
    // For docs/bad-inputs.md: `cargo test --test hostile -- --nocapture`.
    eprintln!("qdb-apply exit {}: {}", out.code, out.stderr.trim_end());
    out
}

fn run(db: &Path, args: &[&str], input: Vec<u8>) -> Out {
    run_cmd(command(db, args), input)
}

/// The run failed with `code` and exactly one stderr line: `error: ` + `msg`.
#[track_caller]
fn assert_error(out: &Out, code: i32, msg: &str) {
    assert_eq!(out.code, code, "stderr: {}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "one line: {:?}", out.stderr);
    let line = out.stderr.trim_end_matches('\n');
    assert!(line.starts_with("error: "), "{line}");
    assert_eq!(&line["error: ".len()..], msg);
}

#[track_caller]
fn assert_ok(out: &Out) {
    assert_eq!((out.code, out.stderr.as_str()), (0, ""));
}

/// Every file of the follower, by name (the lock file included).
fn files(db: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(db) {
        for e in rd {
            let p = e.unwrap().path();
            out.insert(
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            );
        }
    }
    out
}

fn meta_of(db: &Path) -> Meta {
    Meta::parse(&std::fs::read(db.join("meta")).unwrap()).unwrap()
}

/// Only the lock file: the follower was not created.
#[track_caller]
fn assert_not_created(db: &Path) {
    let names: Vec<String> = files(db).into_keys().collect();
    assert_eq!(names, vec!["LOCK"]);
}

struct Db {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

fn new_db() -> Db {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("db");
    Db { _tmp: tmp, path }
}

/// A follower holding c01 (page 0 at lsn 1), built by qdb-apply itself.
fn c01_db() -> Db {
    let db = new_db();
    assert_ok(&run(&db.path, &[], fixture("c01-one-put", "stream.wal")));
    db
}

fn page(id: u64, lsn: u64) -> Vec<u8> {
    overflow_page(
        4096,
        id,
        NO_PAGE,
        lsn,
        format!("page {id} lsn {lsn}").as_bytes(),
    )
}

fn stream(records: &[(u8, u64, u64, Vec<u8>)]) -> Vec<u8> {
    let mut s = stream_header().to_vec();
    for (t, lsn, id, payload) in records {
        encode_record(&mut s, *t, *lsn, *id, payload);
    }
    s
}

/// A record header whose len says `len` but whose payload is not sent (the
/// follower must reject it from the header alone). The CRC covers the
/// header only, so a reader that read the payload first would wait forever
/// or run out of input: both would show.
fn bare_header(rtype: u8, lsn: u64, page_id: u64, len: u32) -> Vec<u8> {
    quiverdb_follower::format::wal::record_header(rtype, lsn, page_id, len, &[]).to_vec()
}

/// `n` seeded garbage bytes.
fn garbage(seed: u64, n: usize) -> Vec<u8> {
    Rng::new(seed).bytes(n)
}

const SHORT_HEADER: &str = "before the 16-byte WAL stream header was complete: the sender sent nothing usable (is the leader running wal-ship, and did it start from the beginning of its stream?)";

// ---- the stream header ----------------------------------------------------------

#[test]
fn empty_stdin() {
    let db = new_db();
    let out = run(&db.path, &[], Vec::new());
    assert_error(
        &out,
        1,
        &format!("input ended after 0 bytes, {SHORT_HEADER}"),
    );
    assert_not_created(&db.path);
}

#[test]
fn truncated_header_1_to_15_bytes() {
    let db = new_db();
    let h = stream_header();
    for n in 1..16 {
        let out = run(&db.path, &[], h[..n].to_vec());
        assert_error(
            &out,
            1,
            &format!("input ended after {n} bytes, {SHORT_HEADER}"),
        );
    }
    // Short input that is not a prefix of the magic is named for what it is.
    let out = run(&db.path, &[], b"hello".to_vec());
    assert_error(&out, 1, "input is not a QuiverDB 1.x WAL stream: expected the magic P1WAL001, got bytes 68 65 6c 6c 6f \"hello\"; check that the sender is `quiverdb wal-ship` and that --decompress matches its --compress");
    assert_not_created(&db.path);
}

#[test]
fn quiverdb_2x_stream() {
    let db = new_db();
    let mut s = b"P2WAL001\0\0\0\0\0\0\0\0".to_vec();
    encode_record(&mut s, WAL_TYPE_PAGE_IMAGE, 1, 0, &page(0, 1));
    let out = run(&db.path, &[], s);
    assert_error(&out, 1, "input is a QuiverDB 2.x WAL stream (magic P2WAL001), which is not supported: quiverdb-follower applies QuiverDB 1.x streams (P1WAL001) only");
    assert_not_created(&db.path);
}

#[test]
fn gzip_and_zstd_fed_raw() {
    let db = new_db();
    let out = run(&db.path, &[], fixture("c01-one-put", "stream.wal.gz"));
    assert_error(&out, 1, "input looks like gzip (bytes 1f 8b 08 00 00 00 00 00 \"........\"), not a raw WAL stream: decompress it first, e.g. `qdb-unzip | qdb-apply`, or match the leader's --compress");
    let out = run(&db.path, &[], fixture("c01-one-put", "stream.wal.zst"));
    assert_error(&out, 1, "input looks like zstd (bytes 28 b5 2f fd 00 58 80 00 \"(./..X..\"), not a raw WAL stream: decompress it first, e.g. `qdb-unzip | qdb-apply`, or match the leader's --compress");
    assert_not_created(&db.path);
}

#[test]
fn random_garbage() {
    let db = new_db();
    let out = run(&db.path, &[], garbage(1, 65536));
    assert_error(&out, 1, "input is not a QuiverDB 1.x WAL stream: expected the magic P1WAL001, got bytes c1 5c 02 89 ec 2d 0a 91 \".\\...-..\"; check that the sender is `quiverdb wal-ship` and that --decompress matches its --compress");
    assert_not_created(&db.path);
}

#[test]
fn only_stream_headers() {
    let db = new_db();
    let mut s = stream_header().to_vec();
    s.extend_from_slice(&stream_header());
    s.extend_from_slice(&stream_header());
    let out = run(&db.path, &[], s);
    assert_eq!(out.code, 0);
    // The one warning (env_logger's default level for the tools is warn).
    let want = format!(
        "the stream carried no page image, so the follower at {} was not created",
        db.path.display()
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.trim_end().ends_with(&want), "{}", out.stderr);
    assert_not_created(&db.path);
}

// ---- records that are not what they claim ------------------------------------------

#[test]
fn valid_header_then_garbage() {
    let db = new_db();
    let mut s = stream_header().to_vec();
    s.extend_from_slice(&garbage(7, 65536));
    let out = run(&db.path, &[], s);
    assert_error(&out, 1, "record of type 215 at stream offset 16 has len 3868737664, more than the 1048576-byte limit for non-page records: the stream is corrupt");
    assert_not_created(&db.path);
}

#[test]
fn garbage_after_a_valid_prefix() {
    let db = new_db();
    let mut s = fixture("c01-one-put", "stream.wal");
    s.extend_from_slice(&garbage(99, 65536));
    let out = run(&db.path, &[], s);
    assert_error(&out, 1, "record of type 227 at stream offset 4140 has len 3585265716, more than the 1048576-byte limit for non-page records: the stream is corrupt");
    // The good prefix is durable and covered.
    assert_eq!(without_lock(files(&db.path)), c01_expected_files());
}

fn without_lock(mut m: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    m.remove("LOCK");
    // Ours, not in the 1.x fixtures; the good prefix is complete.
    if let Some(c) = m.remove("complete-lsn") {
        let last = m
            .get("meta")
            .map(|b| u64::from_le_bytes(b[32..40].try_into().unwrap()));
        assert_eq!(
            Some(String::from_utf8_lossy(&c).trim().parse().unwrap()),
            last
        );
    }
    m
}

fn c01_expected_files() -> BTreeMap<String, Vec<u8>> {
    let mut m = expected("c01-one-put");
    m.insert("wal-000001.log".into(), stream_header().to_vec());
    let mut free = FREE_MAGIC.to_vec();
    free.extend_from_slice(&1u32.to_le_bytes());
    free.resize(FREE_HEADER_LEN, 0);
    m.insert("free".into(), free);
    m
}

#[test]
fn page_image_with_len_0xffffffff() {
    // On a new follower the len is not a page size at all.
    let db = new_db();
    let mut s = stream_header().to_vec();
    s.extend_from_slice(&bare_header(WAL_TYPE_PAGE_IMAGE, 1, 0, u32::MAX));
    let out = run(&db.path, &[], s.clone());
    assert_error(&out, 1, "page image at stream offset 16 has len 4294967295, which is not a QuiverDB page size (4096, 8192, 16384 or 32768): the stream is corrupt");
    assert_not_created(&db.path);
    // On an existing follower it is not its page size; nothing changes.
    let db = c01_db();
    let before = files(&db.path);
    let out = run(&db.path, &[], s);
    assert_error(&out, 1, "page image for page 0 (lsn 1) at stream offset 16 has len 4294967295, but the follower's page size is 4096: the leader and follower page sizes differ (recreate the follower with the leader's page size) or the stream is corrupt");
    assert_eq!(files(&db.path), before);
}

#[test]
fn page_image_len_not_the_page_size() {
    let db = new_db();
    let s = stream(&[(WAL_TYPE_PAGE_IMAGE, 1, 0, vec![7u8; 100])]);
    let out = run(&db.path, &[], s);
    assert_error(&out, 1, "page image at stream offset 16 has len 100, which is not a QuiverDB page size (4096, 8192, 16384 or 32768): the stream is corrupt");
    assert_not_created(&db.path);
}

#[test]
fn stream_with_another_page_size_than_the_follower() {
    let db = c01_db();
    let before = files(&db.path);
    // c05 is a real 8 KiB-page stream.
    let out = run(&db.path, &[], fixture("c05-ps8k", "stream.wal"));
    assert_error(&out, 1, "page image for page 0 (lsn 1) at stream offset 16 has len 8192, but the follower's page size is 4096: the leader and follower page sizes differ (recreate the follower with the leader's page size) or the stream is corrupt");
    assert_eq!(files(&db.path), before);
    // Asking for another page size than the follower has is refused up front.
    let out = run(
        &db.path,
        &["--page-size", "8192"],
        fixture("c05-ps8k", "stream.wal"),
    );
    assert_error(&out, 3, &format!("the follower database {} has page size 4096, but 8192 was requested: a follower must have its leader's page size", db.path.display()));
    assert_eq!(files(&db.path), before);
}

#[test]
fn page_id_u64_max_and_at_max_pages() {
    let db = c01_db();
    let before = files(&db.path);
    for id in [u64::MAX, u64::MAX - 1] {
        let s = stream(&[(WAL_TYPE_PAGE_IMAGE, 2, id, page(id, 2))]);
        let out = run(&db.path, &[], s);
        assert_error(&out, 1, &format!("page image at stream offset 16 targets page {id}, beyond the --max-pages limit of 268435456 pages: refusing to grow the follower that far (raise --max-pages if the leader really is that large)"));
        assert_eq!(files(&db.path), before);
    }
    // --max-pages 10: page 9 is the last one allowed.
    let s = stream(&[(WAL_TYPE_PAGE_IMAGE, 2, 10, page(10, 2))]);
    let out = run(&db.path, &["--max-pages", "10"], s);
    assert_error(&out, 1, "page image at stream offset 16 targets page 10, beyond the --max-pages limit of 10 pages: refusing to grow the follower that far (raise --max-pages if the leader really is that large)");
    assert_eq!(files(&db.path), before);
    let s = stream(&[(WAL_TYPE_PAGE_IMAGE, 2, 9, page(9, 2))]);
    assert_ok(&run(&db.path, &["--max-pages", "10"], s));
    assert_eq!(meta_of(&db.path).next_page_id, 10);
    let seg = std::fs::read(db.path.join("data-000001.p1seg")).unwrap();
    assert_eq!(seg.len(), 10 * 4096);
    assert_eq!(&seg[9 * 4096..], &page(9, 2)[..]);
}

/// 1.x gates only v2 pages; any other payload is written as it is (§6.2,
/// §12.2). Ours does the same: this is accepted, not rejected.
#[test]
fn payload_that_is_not_a_page_is_written_like_1x() {
    let db = c01_db();
    let s = stream(&[
        (WAL_TYPE_PAGE_IMAGE, 2, 0, vec![0xAB; 4096]),
        (WAL_TYPE_PAGE_IMAGE, 3, 2, vec![0xAB; 4096]),
    ]);
    assert_ok(&run(&db.path, &[], s));
    let seg = std::fs::read(db.path.join("data-000001.p1seg")).unwrap();
    assert_eq!(seg.len(), 3 * 4096);
    assert!(
        seg[..4096].iter().all(|&b| b == 0xAB),
        "page 0 overwritten, ungated"
    );
    assert!(
        seg[4096..8192].iter().all(|&b| b == 0),
        "page 1 is a zero gap"
    );
    assert!(seg[8192..].iter().all(|&b| b == 0xAB));
    let m = meta_of(&db.path);
    assert_eq!((m.last_lsn, m.next_page_id), (3, 3));
    // And a later v2 image is not gated by the non-v2 page: it applies.
    assert_ok(&run(
        &db.path,
        &[],
        stream(&[(WAL_TYPE_PAGE_IMAGE, 4, 0, page(0, 4))]),
    ));
    let seg = std::fs::read(db.path.join("data-000001.p1seg")).unwrap();
    assert_eq!(&seg[..4096], &page(0, 4)[..]);
}

#[test]
fn v2_page_with_a_wrong_page_crc_is_rejected() {
    let db = c01_db();
    let before = files(&db.path);
    let mut p = page(0, 2);
    p[100] ^= 0xFF; // the record CRC is computed over the damaged page
    let s = stream(&[(WAL_TYPE_PAGE_IMAGE, 2, 0, p.clone())]);
    let out = run(&db.path, &[], s);
    let stored = le_u32(&p, PAGE_OFF_CRC);
    let computed = quiverdb_follower::format::page::compute_page_crc(&p);
    assert_error(&out, 1, &format!("page image for page 0 (lsn 2) at stream offset 16 carries a corrupt page: page CRC stored {stored:#010x}, computed {computed:#010x}; nothing of it was written"));
    assert_eq!(files(&db.path), before);
    // On a new follower it is not even created.
    let db = new_db();
    let out = run(&db.path, &[], stream(&[(WAL_TYPE_PAGE_IMAGE, 2, 0, p)]));
    assert_eq!(out.code, 1);
    assert_not_created(&db.path);
}

#[test]
fn unknown_record_types_big_len_is_an_error_small_len_is_ignored() {
    let db = c01_db();
    let before = files(&db.path);
    let mut s = stream_header().to_vec();
    s.extend_from_slice(&bare_header(9, 2, 0, (1 << 20) + 1));
    let out = run(&db.path, &[], s);
    assert_error(&out, 1, "record of type 9 at stream offset 16 has len 1048577, more than the 1048576-byte limit for non-page records: the stream is corrupt");
    assert_eq!(files(&db.path), before);
    // Exactly at the cap, and small: CRC-checked, ignored, LSN counted.
    let s = stream(&[
        (9, 2, 5, vec![1u8; 1 << 20]),
        (200, 3, 0, b"future record".to_vec()),
        (0, 4, 0, Vec::new()),
    ]);
    assert_ok(&run(&db.path, &[], s));
    let mut after = files(&db.path);
    let m = Meta::parse(&after["meta"]).unwrap();
    assert_eq!((m.last_lsn, m.next_page_id), (4, 1));
    after.remove("meta");
    let mut was = before;
    was.remove("meta");
    assert_eq!(after, was, "nothing but last_lsn changed");
}

#[test]
fn truncate_and_mid_stream_headers_are_tolerated() {
    let db = new_db();
    let mut s = stream_header().to_vec();
    encode_record(&mut s, WAL_TYPE_PAGE_IMAGE, 1, 0, &page(0, 1));
    for _ in 0..3 {
        encode_truncate(&mut s);
        s.extend_from_slice(&stream_header());
    }
    encode_record(&mut s, WAL_TYPE_PAGE_IMAGE, 2, 1, &page(1, 2));
    assert_ok(&run(&db.path, &[], s));
    let seg = std::fs::read(db.path.join("data-000001.p1seg")).unwrap();
    assert_eq!(seg, [page(0, 1), page(1, 2)].concat());
    assert_eq!(meta_of(&db.path).last_lsn, 2);
}

/// Type 0x50 is 'P'. A record is read as a mid-stream header when its first
/// 8 bytes are `P1WAL001`, whatever its CRC says: the format cannot tell
/// them apart (1.x has the same ambiguity). A valid record of type 0x50,
/// flags '1', reserved "WA" and an lsn starting "L001" is therefore skipped
/// as a header, and the reader resynchronises 16 bytes into it.
#[test]
fn record_of_type_0x50_that_spells_the_magic() {
    let lsn = u64::from_le_bytes(*b"L001\0\0\0\0");
    let mut h = RecordHeader {
        rtype: b'P',
        flags: b'1',
        reserved: u16::from_le_bytes(*b"WA"),
        lsn,
        page_id: 0,
        len: 0,
        crc: 0,
    }
    .encode();
    let crc = record_crc(&h, &[]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(&h[..8], WAL_MAGIC);
    let db = c01_db();
    let before = files(&db.path);
    let mut next = Vec::new();
    encode_record(&mut next, WAL_TYPE_PAGE_IMAGE, 2, 0, &page(0, 2));
    let mut s = stream_header().to_vec();
    s.extend_from_slice(&h);
    s.extend_from_slice(&next);
    // After the false header, bytes 16..28 of the type-0x50 record (page_id
    // high half, len, crc) and the first 16 bytes of the next record are
    // read as a record header: type 0, lsn = len | crc << 32, page_id = the
    // next record's type..lsn bytes; its "CRC" (0) cannot match. Nothing of
    // either record is written.
    let out = run(&db.path, &[], s);
    let false_lsn = u64::from(crc) << 32;
    let false_page = u64::from_le_bytes([1, 0, 0, 0, 2, 0, 0, 0]);
    let computed = {
        let mut fake = [0u8; 28];
        fake[..12].copy_from_slice(&h[16..28]);
        fake[12..28].copy_from_slice(&next[..16]);
        record_crc(&fake, &[])
    };
    assert_error(&out, 1, &format!("WAL record CRC mismatch at stream offset 32 (type 0, lsn {false_lsn}, page {false_page}): stored 0x00000000, computed {computed:#010x}; the stream is corrupt: nothing of this record was written, everything before it is durable"));
    assert_eq!(files(&db.path), before, "nothing written");
}

#[test]
fn record_of_type_0x50_that_does_not_spell_the_magic_is_ignored() {
    let db = c01_db();
    let s = stream(&[
        (b'P', 2, 0, b"not a header".to_vec()),
        (WAL_TYPE_PAGE_IMAGE, 3, 0, page(0, 3)),
    ]);
    assert_ok(&run(&db.path, &[], s));
    let seg = std::fs::read(db.path.join("data-000001.p1seg")).unwrap();
    assert_eq!(seg, page(0, 3));
    assert_eq!(meta_of(&db.path).last_lsn, 3);
}

#[test]
fn lsn_going_backwards() {
    let db = new_db();
    let s = stream(&[
        (WAL_TYPE_PAGE_IMAGE, 1, 0, page(0, 1)),
        (WAL_TYPE_PAGE_IMAGE, 2, 0, page(0, 2)),
        (WAL_TYPE_PAGE_IMAGE, 3, 1, page(1, 3)),
        (WAL_TYPE_PAGE_IMAGE, 1, 0, page(0, 1)), // older image of page 0: skipped
        (WAL_TYPE_PAGE_IMAGE, 2, 2, page(2, 2)), // a page it has not seen: applied
    ]);
    assert_ok(&run(&db.path, &[], s));
    let seg = std::fs::read(db.path.join("data-000001.p1seg")).unwrap();
    assert_eq!(seg, [page(0, 2), page(1, 3), page(2, 2)].concat());
    let m = meta_of(&db.path);
    assert_eq!(
        (m.last_lsn, m.next_page_id),
        (3, 3),
        "last_lsn never decreases"
    );
    // A whole session behind the follower changes nothing at all, and says
    // so once (issue 12, defect 11): it usually means the wrong leader.
    let before = files(&db.path);
    let out = run(
        &db.path,
        &[],
        stream(&[(WAL_TYPE_PAGE_IMAGE, 1, 0, page(0, 1))]),
    );
    assert_eq!(out.code, 0);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.ends_with(
            "stream LSN 1 is below the follower's last_lsn 3: every record is older than the follower; is this the right leader? (a re-initialised leader needs a re-seeded follower)\n"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(files(&db.path), before);
}

/// c08: c03 with one payload byte flipped in the record with lsn 596. The
/// 595 records before it are applied and durable, and (unlike 1.x, which
/// leaves 0) meta.last_lsn says so.
#[test]
fn valid_prefix_then_a_corrupt_record() {
    let db = new_db();
    let out = run(&db.path, &[], fixture("c08-bad-crc", "stream.wal"));
    let line = out.stderr.trim_end();
    assert_eq!(out.code, 1);
    assert!(
        line.starts_with("error: WAL record CRC mismatch at stream offset 2453796 (type 1, lsn 596, page 143): stored ")
            && line.ends_with("; the stream is corrupt: nothing of this record was written, everything before it is durable"),
        "{line}"
    );
    let mut want = expected("c08-bad-crc");
    let mut m = Meta::parse(&want["meta"]).unwrap();
    assert_eq!(m.last_lsn, 0, "what 1.x leaves");
    m.last_lsn = 595;
    want.insert("meta".into(), m.encode().to_vec());
    let got = without_lock(files(&db.path));
    for (name, bytes) in &want {
        assert!(got[name] == *bytes, "{name}");
    }
}

#[test]
fn locked_database() {
    let db = c01_db();
    let before = files(&db.path);
    let _held = DbLock::acquire(&db.path, false).unwrap();
    let out = run(&db.path, &[], fixture("c02-overflow", "stream.wal"));
    assert_error(&out, 3, &format!("the follower database {0} is locked by another process (flock on {0}/LOCK): another qdb-apply or quiverdb-follower is running on it; stop it, or pass --wait-lock to wait", db.path.display()));
    assert_eq!(files(&db.path), before);
}

// ---- bounds ---------------------------------------------------------------------

/// Run qdb-apply with its address space capped at `limit` bytes: an
/// allocation by a hostile len (4 GiB) would abort it.
fn run_capped(db: &Path, input: Vec<u8>, limit: u64) -> Out {
    let mut c = command(db, &[]);
    // SAFETY: setrlimit is async-signal-safe and touches no shared state.
    unsafe {
        c.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    run_cmd(c, input)
}

const AS_LIMIT: u64 = 512 << 20;

#[test]
fn hostile_len_and_page_id_fail_at_once_without_allocating_or_growing() {
    let db = new_db();
    // The cap does not get in the way of real work...
    let out = run_capped(&db.path, fixture("c02-overflow", "stream.wal"), AS_LIMIT);
    assert_ok(&out);
    let before = files(&db.path);
    // ...but a 4 GiB buffer or a follower grown to page u64::MAX-1 would.
    let cases = [
        (bare_header(WAL_TYPE_PAGE_IMAGE, 79, 0, u32::MAX), "page image for page 0 (lsn 79) at stream offset 16 has len 4294967295, but the follower's page size is 4096: the leader and follower page sizes differ (recreate the follower with the leader's page size) or the stream is corrupt".to_string()),
        (bare_header(WAL_TYPE_PAGE_IMAGE, 79, u64::MAX - 1, 4096), format!("page image at stream offset 16 targets page {}, beyond the --max-pages limit of 268435456 pages: refusing to grow the follower that far (raise --max-pages if the leader really is that large)", u64::MAX - 1)),
        (bare_header(7, 79, 0, u32::MAX), "record of type 7 at stream offset 16 has len 4294967295, more than the 1048576-byte limit for non-page records: the stream is corrupt".to_string()),
    ];
    for (rec, msg) in cases {
        let mut s = stream_header().to_vec();
        s.extend_from_slice(&rec);
        // The rest of the "payload" never comes: the error must not wait for it.
        let out = run_capped(&db.path, s, AS_LIMIT);
        assert_error(&out, 1, &msg);
        assert_eq!(files(&db.path), before, "segment sizes and meta unchanged");
    }
}

/// Peak RSS of qdb-apply over a synthetic stream of `frames` page images
/// cycling over 1,024 pages: its VmHWM (from /proc/PID/status), read once
/// the whole stream is applied and committed while qdb-apply waits for more
/// input. (wait4's ru_maxrss would be wrong here: it also counts the test
/// process's own memory, which the child shares until it execs.)
fn peak_rss_kib(frames: u64) -> u64 {
    let db = new_db();
    let mut child = command(&db.path, &[]).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let mut buf = stream_header().to_vec();
        let mut p = page(0, 1);
        for lsn in 1..=frames {
            let id = lsn % 1024;
            p[PAGE_OFF_PAGE_ID..PAGE_OFF_PAGE_ID + 8].copy_from_slice(&id.to_le_bytes());
            commit_stamp(&mut p, lsn);
            encode_record(&mut buf, WAL_TYPE_PAGE_IMAGE, lsn, id, &p);
            if buf.len() > 1 << 20 {
                stdin.write_all(&buf).unwrap();
                buf.clear();
            }
        }
        stdin.write_all(&buf).unwrap();
        // Keep stdin open: the caller closes it after measuring.
        stdin
    });
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let status_path = format!("/proc/{}/status", child.id());
    let started = std::time::Instant::now();
    let hwm = loop {
        // The idle commit makes last_lsn reach `frames` once all is applied.
        let done = std::fs::read(db.path.join("meta"))
            .ok()
            .and_then(|b| Meta::parse(&b).ok())
            .is_some_and(|m| m.last_lsn == frames);
        if done {
            let status = std::fs::read_to_string(&status_path).unwrap();
            let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
            let kib = line.split_whitespace().nth(1).unwrap();
            break kib.parse::<u64>().unwrap();
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(300),
            "qdb-apply did not finish the stream"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    drop(feeder.join().unwrap());
    let status = child.wait().unwrap();
    let err = reader.join().unwrap();
    assert!(status.success(), "{err}");
    assert_eq!(err, "");
    let m = meta_of(&db.path);
    assert_eq!((m.last_lsn, m.next_page_id), (frames, 1024.min(frames + 1)));
    hwm
}

#[test]
fn memory_does_not_grow_with_stream_length() {
    let short = peak_rss_kib(2_000);
    let long = peak_rss_kib(20_000);
    eprintln!("qdb-apply peak RSS: {short} KiB over 2,000 frames (8 MiB), {long} KiB over 20,000 frames (82 MiB)");
    assert!(long < 64 << 10, "{long} KiB");
    assert!(long < short + (8 << 10), "{short} KiB -> {long} KiB");
}

// ---- the fuzz target's corpus, on stable -----------------------------------------------

fn seeds() -> Vec<(String, Vec<u8>)> {
    common::read_corpus(&["fuzz/seeds/apply_stream", "fuzz/regressions/apply_stream"])
}

/// Structured mutations a byte-level fuzzer rarely reaches because of the
/// record CRC: change one header field or payload byte and fix the CRC.
fn crc_fixed_mutations(seed: &[u8]) -> Vec<Vec<u8>> {
    let idx = StreamIndex::new(seed);
    let mut out = Vec::new();
    for (i, r) in idx.records.iter().enumerate().take(8) {
        let edits: [fn(&mut [u8]); 9] = [
            |h: &mut [u8]| h[0] = 0x50,
            |h: &mut [u8]| h[0] = 2,
            |h: &mut [u8]| h[4..12].copy_from_slice(&0u64.to_le_bytes()),
            |h: &mut [u8]| h[4..12].copy_from_slice(&u64::MAX.to_le_bytes()),
            |h: &mut [u8]| h[12..20].copy_from_slice(&8192u64.to_le_bytes()),
            |h: &mut [u8]| h[12..20].copy_from_slice(&(u64::MAX - 1).to_le_bytes()),
            |h: &mut [u8]| h[12..20].copy_from_slice(&((1u64 << 16) - 1).to_le_bytes()),
            // Payload: damage the page (CRC now wrong) or make it non-v2.
            |h: &mut [u8]| {
                if h.len() > 200 {
                    h[200] ^= 0x55
                }
            },
            |h: &mut [u8]| {
                if h.len() > 40 {
                    h[28 + PAGE_OFF_VERSION] = 3
                }
            },
        ];
        for (j, edit) in edits.iter().enumerate() {
            let mut rec = seed[r.offset..r.end].to_vec();
            edit(&mut rec[..]);
            let hdr: [u8; 28] = rec[..28].try_into().unwrap();
            let crc = record_crc(&hdr, &rec[28..]);
            rec[24..28].copy_from_slice(&crc.to_le_bytes());
            let mut m = seed[..r.offset].to_vec();
            m.extend_from_slice(&rec);
            m.extend_from_slice(&seed[r.end..]);
            out.push(m);
            // Also the record moved to the front, after a copy of itself.
            if (i + j) % 3 == 0 {
                let mut m = stream_header().to_vec();
                m.extend_from_slice(&rec);
                m.extend_from_slice(&seed[WAL_HEADER_LEN..]);
                out.push(m);
            }
        }
    }
    out
}

#[test]
fn fuzz_target_replays_seeds_and_mutations() {
    let seeds = seeds();
    assert!(seeds.len() >= 4, "the seed corpus is missing: {seeds:?}");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("db");
    let mut runs = 0;
    for (name, seed) in &seeds {
        let mut inputs = vec![seed.clone()];
        let n = seed.len();
        // Cuts, byte flips and insertions at spread offsets.
        for k in 0..64 {
            let at = (k * 7919 + 13) % n.max(1);
            inputs.push(seed[..at].to_vec());
            let mut flip = seed.clone();
            if !flip.is_empty() {
                flip[at] ^= 1 << (k % 8);
            }
            inputs.push(flip);
            let mut ins = seed.clone();
            ins.splice(at..at, stream_header());
            inputs.push(ins);
        }
        inputs.extend(crc_fixed_mutations(seed));
        // A seed twice in a row, and with its header repeated inside.
        inputs.push([seed.clone(), seed[WAL_HEADER_LEN.min(n)..].to_vec()].concat());
        for input in inputs {
            let r = std::panic::catch_unwind(|| {
                fuzz_parse_stream(&input);
                fuzz_apply_stream_in(&root, &input);
            });
            if r.is_err() {
                let path = tmp.path().join("crash.bin");
                std::fs::write(&path, &input).unwrap();
                panic!(
                    "fuzz target failed on a mutation of {name}; input saved to {}",
                    path.display()
                );
            }
            runs += 1;
        }
    }
    eprintln!("fuzz replay: {runs} inputs from {} seeds", seeds.len());
}
