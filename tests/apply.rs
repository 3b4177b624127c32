//! qdb-apply and qdb-ckpt as child processes against the QuiverDB 1.2.5
//! fixtures: byte-for-byte conformance, resume, errors, locking, and crashes.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fs2::FileExt;

fn apply(db: &Path, stream: &[u8]) -> std::process::Output {
    run("qdb-apply", &["--path", db.to_str().unwrap()], stream)
}

#[test]
fn every_complete_fixture_applies_byte_identical() {
    for name in COMPLETE_CASES {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("f");
        let o = apply(&db, &stream(name));
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{name}: quiet by default");
        assert_matches_expected(&db, name);
        // The other files are exactly what `quiverdb init` creates (spec §11.5), plus LOCK.
        assert_eq!(
            fs::read(db.join("wal-000001.log")).unwrap(),
            b"P1WAL001\0\0\0\0\0\0\0\0"
        );
        let mut free = b"P1FREE01".to_vec();
        free.extend_from_slice(&[1, 0, 0, 0]);
        free.extend_from_slice(&[0; 12]);
        assert_eq!(fs::read(db.join("free")).unwrap(), free);
        assert!(!db.join("dir").exists(), "apply must not create dir");
        assert!(!db.join("meta.tmp").exists());
    }
}

#[test]
fn partial_tail_is_a_clean_end() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("f");
    let o = run_env(
        "qdb-apply",
        &["--path", db.to_str().unwrap()],
        &stream("c07-partial-tail"),
        &[("RUST_LOG", "info")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("partial tail"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("records=238 applied=238 skipped=0"),
        "{}",
        stderr(&o)
    );
    assert_matches_expected(&db, "c07-partial-tail");
}

#[test]
fn bad_crc_keeps_the_good_prefix_durable() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("f");
    let o = apply(&db, &stream("c08-bad-crc"));
    assert_one_line_error(
        &o,
        1,
        "WAL record CRC mismatch at stream offset 2453796 (type 1, lsn 596, page 143)",
    );
    // Segments are byte-identical to QuiverDB's; meta differs only in
    // last_lsn: we persist the good prefix (595) where 1.x leaves 0.
    let want = expected_files("c08-bad-crc");
    assert_eq!(segment_files(&db), want[1..].to_vec());
    let mut want_meta = want[0].1.clone();
    assert_eq!(read_last_lsn(&case("c08-bad-crc").join("expected")), 0);
    want_meta[32..40].copy_from_slice(&595u64.to_le_bytes());
    assert_eq!(fs::read(db.join("meta")).unwrap(), want_meta);
}

#[test]
fn resume_with_overlap_ends_identical() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("f");
    let c = case("c09-resume");
    let o = apply(&db, &fs::read(c.join("part1.wal")).unwrap());
    assert!(o.status.success(), "{}", stderr(&o));
    let meta = fs::read(db.join("meta")).unwrap();
    assert_eq!(read_last_lsn(&db), 595);
    assert_eq!(u64::from_le_bytes(meta[20..28].try_into().unwrap()), 223);
    let o = run_env(
        "qdb-apply",
        &["--path", db.to_str().unwrap()],
        &fs::read(c.join("part2.wal")).unwrap(),
        &[("RUST_LOG", "info")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // Records 571..=595 arrive twice: the second copy is gated out.
    assert!(
        stderr(&o).contains("records=621 applied=596 skipped=25"),
        "{}",
        stderr(&o)
    );
    assert_matches_expected(&db, "c09-resume");
    assert_matches_expected(&db, "c03-churn");
}

#[test]
fn applying_twice_is_idempotent() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("f");
    let s = stream("c02-overflow");
    assert!(apply(&db, &s).status.success());
    let o = run_env(
        "qdb-apply",
        &["--path", db.to_str().unwrap()],
        &s,
        &[("RUST_LOG", "info")],
    );
    assert!(o.status.success());
    assert!(
        stderr(&o).contains("records=78 applied=0 skipped=78"),
        "{}",
        stderr(&o)
    );
    assert_matches_expected(&db, "c02-overflow");
}

#[test]
fn truncate_records_and_mid_stream_headers_are_tolerated() {
    // Spec §11.7: a stream across a leader truncation. Build it from c03:
    // records 1..=10, TRUNCATE, a repeated header, then the rest.
    let s = stream("c03-churn");
    let recs = records(&s);
    let split = recs[9].3;
    let mut t = s[..split].to_vec();
    let mut trunc = Vec::new();
    quiverdb_follower::format::wal::encode_truncate(&mut trunc);
    assert_eq!(&trunc[24..], &[0x2f, 0x06, 0xfa, 0x7a]);
    t.extend_from_slice(&trunc);
    t.extend_from_slice(&s[..16]);
    t.extend_from_slice(&s[split..]);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("f");
    let o = run_env(
        "qdb-apply",
        &["--path", db.to_str().unwrap()],
        &t,
        &[("RUST_LOG", "info")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("ignored=1 "), "{}", stderr(&o));
    assert_matches_expected(&db, "c03-churn");
}

#[test]
fn existing_follower_created_by_init_is_used() {
    // A follower made by `quiverdb init` (here: the spec §11.5 bytes).
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("f");
    fs::create_dir(&db).unwrap();
    let meta: [u8; 41] = [
        0x50, 0x31, 0x44, 0x42, 0x4d, 0x45, 0x54, 0x41, 3, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    ];
    fs::write(db.join("meta"), meta).unwrap();
    fs::write(db.join("data-000001.p1seg"), b"").unwrap();
    let o = run(
        "qdb-apply",
        &["--path", db.to_str().unwrap(), "--no-create"],
        &stream("c11-chains"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_matches_expected(&db, "c11-chains");
    assert!(
        !db.join("free").exists(),
        "an existing DB's files are left alone"
    );
}

#[test]
fn no_create_refuses_a_missing_database() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("nothing");
    let o = run(
        "qdb-apply",
        &["--path", db.to_str().unwrap(), "--no-create"],
        &stream("c01-one-put"),
    );
    assert_one_line_error(&o, 3, "no QuiverDB database at");
    assert!(!db.join("meta").exists());
}

#[test]
fn page_size_mismatch_is_refused_before_writing() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("f");
    assert!(apply(&db, &stream("c01-one-put")).status.success());
    let before = segment_files(&db);
    let meta_before = fs::read(db.join("meta")).unwrap();
    // A 16 KiB stream into a 4 KiB follower.
    let o = apply(&db, &stream("c04-ps16k"));
    assert_one_line_error(&o, 1, "has len 16384, but the follower's page size is 4096");
    assert_eq!(segment_files(&db), before);
    assert_eq!(fs::read(db.join("meta")).unwrap(), meta_before);
    // An explicit --page-size that disagrees with the DB.
    let o = run(
        "qdb-apply",
        &["--path", db.to_str().unwrap(), "--page-size", "8192"],
        &[],
    );
    assert_one_line_error(&o, 3, "has page size 4096, but 8192 was requested");
    // Page sizes QuiverDB does not allow.
    for bad in ["2048", "65536", "12288"] {
        let o = run(
            "qdb-apply",
            &[
                "--path",
                t.path().join(bad).to_str().unwrap(),
                "--page-size",
                bad,
            ],
            &[],
        );
        assert_one_line_error(&o, 3, &format!("page size {bad} is not allowed"));
        assert!(!t.path().join(bad).join("meta").exists());
    }
}

#[test]
fn page_size_option_creates_the_database_up_front() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("f");
    // Only a header: nothing to take the page size from, but --page-size says it.
    let o = run(
        "qdb-apply",
        &["--path", db.to_str().unwrap(), "--page-size", "8192"],
        b"P1WAL001\0\0\0\0\0\0\0\0",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let m = fs::read(db.join("meta")).unwrap();
    assert_eq!(u32::from_le_bytes(m[12..16].try_into().unwrap()), 8192);
    assert_eq!(fs::read(db.join("data-000001.p1seg")).unwrap().len(), 0);
    // Without it, a header-only stream creates nothing and says so.
    let db2 = t.path().join("g");
    let o = run_env(
        "qdb-apply",
        &["--path", db2.to_str().unwrap()],
        b"P1WAL001\0\0\0\0\0\0\0\0",
        &[("RUST_LOG", "warn")],
    );
    assert!(o.status.success());
    assert!(stderr(&o).contains("was not created"), "{}", stderr(&o));
    assert!(!db2.join("meta").exists());
}

#[test]
fn stream_header_errors_say_what_was_seen() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("f");
    let p = db.to_str().unwrap();
    let gz = fs::read(case("c01-one-put").join("stream.wal.gz")).unwrap();
    assert_one_line_error(&run("qdb-apply", &["--path", p], &gz), 1, "looks like gzip");
    let zst = fs::read(case("c01-one-put").join("stream.wal.zst")).unwrap();
    assert_one_line_error(
        &run("qdb-apply", &["--path", p], &zst),
        1,
        "looks like zstd",
    );
    assert_one_line_error(
        &run("qdb-apply", &["--path", p], b"P2WAL001\0\0\0\0\0\0\0\0"),
        1,
        "QuiverDB 2.x WAL stream",
    );
    assert_one_line_error(
        &run("qdb-apply", &["--path", p], b""),
        1,
        "input ended after 0 bytes",
    );
    assert_one_line_error(
        &run("qdb-apply", &["--path", p], b"P1WAL0"),
        1,
        "input ended after 6 bytes",
    );
    assert_one_line_error(
        &run("qdb-apply", &["--path", p], b"GET / HTTP/1.1\r\n\r\n"),
        1,
        "not a QuiverDB 1.x WAL stream",
    );
    // None of that created or touched a database.
    assert!(!db.join("meta").exists());
}

#[test]
fn errors_stay_one_line_with_backtraces_enabled() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("f");
    let o = run_env(
        "qdb-apply",
        &["--path", db.to_str().unwrap()],
        &stream("c08-bad-crc"),
        &[("RUST_BACKTRACE", "full")],
    );
    assert_one_line_error(&o, 1, "CRC mismatch");
}

#[test]
fn a_locked_database_is_refused_at_once_or_waited_for() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("f");
    fs::create_dir(&db).unwrap();
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(db.join("LOCK"))
        .unwrap();
    lock.lock_exclusive().unwrap();
    let o = apply(&db, &stream("c01-one-put"));
    assert_one_line_error(&o, 3, "is locked by another process");
    assert!(stderr(&o).contains(db.to_str().unwrap()));
    assert!(!db.join("meta").exists());

    // --wait-lock waits for the holder, then applies.
    let mut child = Command::new(bin("qdb-apply"))
        .args(["--path", db.to_str().unwrap(), "--wait-lock"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&stream("c01-one-put"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "must still be waiting for the lock"
    );
    fs2::FileExt::unlock(&lock).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_matches_expected(&db, "c01-one-put");
}

#[test]
fn last_lsn_advances_while_the_stream_stays_open() {
    // A long-running stream (wal-ship --follow) must not keep last_lsn at its
    // old value until the connection ends: when the sender pauses, apply commits.
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("f");
    let s = stream("c03-churn");
    let recs = records(&s);
    let mut child = Command::new(bin("qdb-apply"))
        .args(["--path", db.to_str().unwrap()])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sin = child.stdin.take().unwrap();
    let mut from = 0;
    for upto in [100usize, 700, 1191] {
        let to = recs[upto - 1].3;
        sin.write_all(&s[from..to]).unwrap();
        from = to;
        sin.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !db.join("meta").exists() || read_last_lsn(&db) != upto as u64 {
            assert!(Instant::now() < deadline, "last_lsn never reached {upto}");
            std::thread::sleep(Duration::from_millis(10));
        }
        // qdb-ckpt reads it without the lock the applier holds; the
        // complete LSN is written just after meta, so it may trail briefly.
        loop {
            let o = run("qdb-ckpt", &["--path", db.to_str().unwrap()], b"");
            if stdout(&o) == format!("{upto}\n") {
                break;
            }
            assert!(Instant::now() < deadline, "qdb-ckpt never said {upto}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    drop(sin);
    assert!(child.wait().unwrap().success());
    assert_matches_expected(&db, "c03-churn");
}

#[test]
fn ckpt_prints_writes_and_describes_meta() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("f");
    assert!(apply(&db, &stream("c03-churn")).status.success());
    let p = db.to_str().unwrap();
    let o = run("qdb-ckpt", &["--path", p], b"");
    assert!(o.status.success());
    assert_eq!(stdout(&o), "1191\n");
    let o = run("qdb-ckpt", &["--path", p, "--json"], b"");
    assert_eq!(
        stdout(&o),
        "{\"page_size\":4096,\"next_page_id\":298,\"last_lsn\":1191,\"complete_lsn\":1191,\"clean_shutdown\":true}\n"
    );
    let file = t.path().join("ck").join("last_lsn");
    fs::create_dir(t.path().join("ck")).unwrap();
    fs::write(&file, "17").unwrap();
    let o = run(
        "qdb-ckpt",
        &["--path", p, "--write", file.to_str().unwrap()],
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        fs::read(&file).unwrap(),
        b"1191",
        "decimal, no newline, like the 1.x daemon"
    );
    assert!(!t.path().join("ck/last_lsn.tmp").exists());
    // Errors.
    let o = run(
        "qdb-ckpt",
        &["--path", t.path().join("none").to_str().unwrap()],
        b"",
    );
    assert_one_line_error(&o, 3, "no QuiverDB database at");
    fs::create_dir(t.path().join("bad")).unwrap();
    fs::write(
        t.path().join("bad/meta"),
        b"P2DBMETA\x04\0\0\0 and more bytes here......",
    )
    .unwrap();
    let o = run(
        "qdb-ckpt",
        &["--path", t.path().join("bad").to_str().unwrap()],
        b"",
    );
    assert_one_line_error(&o, 3, "is not a QuiverDB 1.x meta v3 file: bad magic");
}

#[test]
fn sigkill_at_random_points_then_resume_ends_identical() {
    // Thousands of frames: c03, then c03 again on the same pages with the
    // LSNs that follow (2,382 frames, every page rewritten).
    let c03 = stream("c03-churn");
    let mut s = c03.clone();
    s.extend_from_slice(&restamp(&c03, 1191)[16..]);
    let t = tempfile::tempdir().unwrap();
    // The reference: the same stream applied in one uninterrupted run.
    let reference = t.path().join("ref");
    assert!(apply(&reference, &s).status.success());
    let db = t.path().join("f");
    let mut rng = testkit::rng::Rng::new(0x9E37_79B9_7F4A_7C15);
    let mut next = move |n: u64| rng.below(n);
    let mut kills = 0;
    let mut resumes_from = Vec::new();
    for _ in 0..25 {
        // Resume the way an operator would: checkpoint, then the stream after it.
        let ckpt = assert_last_lsn_not_ahead(&db, &s);
        resumes_from.push(ckpt);
        let slice = since_lsn(&s, ckpt);
        let mut child = Command::new(bin("qdb-apply"))
            .args(["--path", db.to_str().unwrap(), "--batch-ms", "3"])
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut sin = child.stdin.take().unwrap();
        let cut = (16 + next(slice.len() as u64) as usize).min(slice.len());
        let mut pos = 0;
        while pos < cut {
            let n = (1 + next(96 * 1024) as usize).min(cut - pos);
            if sin.write_all(&slice[pos..pos + n]).is_err() {
                break;
            }
            pos += n;
            if next(4) == 0 {
                std::thread::sleep(Duration::from_micros(next(3000)));
            }
        }
        let first_written = records(&slice[..pos]).first().map(|r| r.0);
        if let (Some(target), 0) = (first_written, next(2)) {
            // Half the kills land after the child has visibly made progress
            // (so the resume point moves even on a loaded machine), the
            // other half wherever the child happens to be.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline
                && (!db.join("meta").exists() || read_last_lsn(&db) < target)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        std::thread::sleep(Duration::from_micros(next(20_000)));
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    let ckpt = assert_last_lsn_not_ahead(&db, &s);
    let o = apply(&db, &since_lsn(&s, ckpt));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        fs::read(db.join("meta")).unwrap(),
        fs::read(reference.join("meta")).unwrap()
    );
    assert_eq!(segment_files(&db), segment_files(&reference));
    assert_eq!(read_last_lsn(&db), 2382);
    assert_eq!(kills, 25);
    // The kills really landed at different points of the stream.
    resumes_from.dedup();
    assert!(resumes_from.len() > 5, "resume points: {resumes_from:?}");
}
