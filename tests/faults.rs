//! Injected storage faults through the `Fs` seam (ENOSPC, short writes, EIO
//! on fsync, failing renames, failing file creation), and a real full disk
//! on a small tmpfs when this machine lets the test mount one.
//!
//! Every fault must: stop the session with a local error (never a stream
//! error, so a daemon stops instead of reconnecting); never be retried or
//! ignored (after a failed fsync the follower never claims the LSNs it
//! covered); leave a durable image whose meta.last_lsn claims only durable
//! pages; and let the operator resume, once the fault is gone, from that
//! meta.last_lsn to exactly the state QuiverDB 1.2.5 produces.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use quiverdb_follower::format::layout::{NO_PAGE, WAL_TYPE_PAGE_IMAGE};
use quiverdb_follower::format::{page, wal};
use quiverdb_follower::{ApplyOptions, Follower, Plain, SessionStats};
use quiverdb_follower::{Fs, FsyncPolicy};
use testkit::fault::{CrashMode, Fault, FaultAction, OpKind, SimFs};
use testkit::stream::{check_claims, StreamBuilder, StreamIndex};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/quiverdb-1.2.5");

fn fixture_stream(case: &str) -> StreamIndex {
    StreamIndex::new(&std::fs::read(Path::new(FIXTURES).join(case).join("stream.wal")).unwrap())
}

/// The fixture's expected follower files (meta and segments).
fn expected(case: &str) -> BTreeMap<String, Vec<u8>> {
    common::expected_map(case)
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    ckpt: PathBuf,
    fs: SimFs,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("db");
    let ckpt = tmp.path().join("last_lsn");
    let fs = SimFs::new();
    fs.create_dir_all(&root).unwrap();
    Env {
        _tmp: tmp,
        root,
        ckpt,
        fs,
    }
}

fn opts(fsync: FsyncPolicy) -> ApplyOptions {
    ApplyOptions {
        fsync,
        batch_bytes: 16 * 4096,
        batch_interval: Duration::from_secs(3600),
        // Another test's child process, forked while we held the DB lock,
        // can hold that flock for a moment after we drop it (until its exec
        // closes the copied fd): wait for it rather than fail.
        wait_lock: true,
        ..ApplyOptions::default()
    }
}

fn open(e: &Env, fsync: FsyncPolicy) -> Follower {
    let mut f = Follower::open(Arc::new(e.fs.clone()), &e.root, opts(fsync)).unwrap();
    let (fs, ckpt) = (e.fs.clone(), e.ckpt.clone());
    f.set_commit_hook(move |m| {
        quiverdb_follower::write_checkpoint(&fs, &ckpt, m.last_lsn).expect("checkpoint");
    });
    f
}

/// Apply `stream` with `faults` armed. Returns the error and what the
/// follower last reported as durable (its in-memory meta.last_lsn).
fn fail_with(
    e: &Env,
    fsync: FsyncPolicy,
    stream: &StreamIndex,
    faults: &[Fault],
) -> (quiverdb_follower::Error, u64) {
    for f in faults {
        e.fs.inject(f.clone());
    }
    let mut f = open(e, fsync);
    let mut stats = SessionStats::default();
    let err = f
        .apply(Plain(&stream.bytes[..]), &mut stats)
        .expect_err("the fault must stop the session");
    assert!(e.fs.faults_fired() > 0, "the fault never fired");
    assert!(
        !err.is_stream_error(),
        "a disk fault is a local error: {err}"
    );
    let reported = f.meta().map_or(0, |m| m.last_lsn);
    assert_eq!(stats.last_lsn, reported);
    (err, reported)
}

/// The LSN of the record whose payload the `nth` page write carried
/// (every record of c02/c03 is applied, once each, in stream order).
fn lsn_of_nth_page_write(stream: &StreamIndex, nth: usize) -> u64 {
    stream
        .records
        .iter()
        .filter(|r| r.rtype == WAL_TYPE_PAGE_IMAGE)
        .nth(nth - 1)
        .unwrap()
        .lsn
}

/// After the fault: the durable image claims nothing it lacks (also after a
/// power loss in each mode), then the operator removes the fault and
/// resumes from meta.last_lsn, ending at the expected state.
fn check_and_resume(
    e: &Env,
    stream: &StreamIndex,
    case: &str,
    fsync: FsyncPolicy,
    mode: CrashMode,
) {
    e.fs.clear_faults();
    let durable = check_claims(&e.fs, &e.root, stream, Some(&e.ckpt)).unwrap();
    e.fs.crash(mode);
    let after_crash = check_claims(&e.fs, &e.root, stream, Some(&e.ckpt)).unwrap();
    if mode == CrashMode::LoseUnsynced {
        assert_eq!(durable, after_crash);
    }
    let since = after_crash.map_or(0, |m| m.last_lsn);
    let mut f = open(e, fsync);
    let mut stats = SessionStats::default();
    f.apply(Plain(&stream.since(since)[..]), &mut stats)
        .unwrap();
    drop(f);
    e.fs.crash(CrashMode::LoseUnsynced);
    for (name, want) in expected(case) {
        let have = e.fs.durable_read(&e.root.join(&name)).unwrap();
        assert!(have == want, "{name} differs after resume from {since}");
    }
}

fn enospc() -> FaultAction {
    FaultAction::Errno(libc::ENOSPC)
}

fn eio() -> FaultAction {
    FaultAction::Errno(libc::EIO)
}

/// How many segment writes a fault-free run of `stream` makes under `fsync`
/// (in batch mode consecutive pages share one write).
fn segment_writes(stream: &StreamIndex, fsync: FsyncPolicy) -> u64 {
    let e = env();
    let mut f = open(&e, fsync);
    f.apply(Plain(&stream.bytes[..]), &mut SessionStats::default())
        .unwrap();
    e.fs.op_log()
        .iter()
        .filter(|o| o.kind == OpKind::Write && o.path.to_string_lossy().ends_with(".p1seg"))
        .count() as u64
}

#[test]
fn enospc_on_a_page_write_stops_and_never_claims_that_page() {
    let stream = fixture_stream("c02-overflow");
    // `always` writes each page on its own, so the failed page is known
    // exactly; `batch` gathers pages, so every one of its writes is hit.
    let batch_writes = segment_writes(&stream, FsyncPolicy::Batch);
    assert!(batch_writes >= 5, "{batch_writes}");
    let always = [1, 2, 16, 17, 40, 78].map(|n| (FsyncPolicy::Always, n));
    let batch = (1..=batch_writes).map(|n| (FsyncPolicy::Batch, n));
    for (fsync, nth) in always.into_iter().chain(batch) {
        let e = env();
        let full = Fault::new(OpKind::Write, nth, enospc())
            .on_path(".p1seg")
            .sticky();
        let (err, reported) = fail_with(&e, fsync, &stream, &[full]);
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot write page to ") && msg.contains("data-000001.p1seg"),
            "{msg}"
        );
        assert!(msg.contains("No space left on device"), "{msg}");
        let last = stream.max_lsn();
        assert!(reported < last, "write {nth}: reported {reported}");
        if fsync == FsyncPolicy::Always {
            let failed_lsn = lsn_of_nth_page_write(&stream, nth as usize);
            assert!(
                reported < failed_lsn,
                "write {nth}: reported last_lsn {reported} covers the failed lsn {failed_lsn}"
            );
        }
        check_and_resume(&e, &stream, "c02-overflow", fsync, CrashMode::LoseUnsynced);
    }
}

#[test]
fn short_page_write_is_detected_and_repaired_on_resume() {
    let stream = fixture_stream("c02-overflow");
    let batch_writes = segment_writes(&stream, FsyncPolicy::Batch);
    let always = [(5, 2048), (20, 1), (33, 4095)].map(|(n, w)| (FsyncPolicy::Always, n, w));
    let batch = (1..=batch_writes).map(|n| (FsyncPolicy::Batch, n, 2048 + 17 * n as usize));
    for (fsync, nth, written) in always.into_iter().chain(batch) {
        let e = env();
        let short = Fault::new(
            OpKind::Write,
            nth,
            FaultAction::ShortWrite {
                written,
                errno: libc::ENOSPC,
            },
        )
        .on_path(".p1seg");
        let (err, reported) = fail_with(&e, fsync, &stream, &[short]);
        assert!(err.to_string().contains("No space left on device"), "{err}");
        if fsync == FsyncPolicy::Always {
            assert!(reported < lsn_of_nth_page_write(&stream, nth as usize));
        }
        // Resume without a crash: the half-written page is in the file (as
        // after a process exit); its CRC fails, so it is rewritten.
        check_and_resume(&e, &stream, "c02-overflow", fsync, CrashMode::KeepDirOps);
    }
}

#[test]
fn eio_on_segment_fsync_is_never_retried_and_never_claimed() {
    let stream = fixture_stream("c03-churn");
    for (nth, fsync) in [
        (1, FsyncPolicy::Batch),
        (3, FsyncPolicy::Batch),
        (50, FsyncPolicy::Batch),
        (7, FsyncPolicy::Always),
    ] {
        let e = env();
        let bad = Fault::new(OpKind::Sync, nth, eio()).on_path(".p1seg");
        let (err, reported) = fail_with(&e, fsync, &stream, &[bad]);
        let msg = err.to_string();
        assert!(msg.starts_with("cannot fsync "), "{msg}");
        assert!(msg.contains("Input/output error"), "{msg}");
        let log = e.fs.op_log();
        let at = log.iter().position(|o| o.failed).unwrap();
        let failed = &log[at];
        // Nothing after the failure may sync that file again (a retry
        // "succeeds" with the data gone) or replace meta.
        for later in &log[at + 1..] {
            assert!(
                !(later.kind == OpKind::Sync && later.path == failed.path),
                "fsync {nth} ({fsync:?}): retried after EIO: {later:?}"
            );
            assert!(
                later.kind != OpKind::Rename,
                "fsync {nth} ({fsync:?}): meta replaced after EIO: {later:?}"
            );
        }
        // The data covered by the failed fsync is gone from the disk: the
        // durable image must not claim any of it.
        e.fs.crash(CrashMode::LoseUnsynced);
        let m = check_claims(&e.fs, &e.root, &stream, Some(&e.ckpt))
            .unwrap_or_else(|m| panic!("fsync {nth} ({fsync:?}): {m}"));
        assert_eq!(m.map_or(0, |m| m.last_lsn), reported);
        check_and_resume(&e, &stream, "c03-churn", fsync, CrashMode::LoseUnsynced);
    }
}

/// A follower that hit a local error refuses to carry on: a second session
/// on the same handle (a daemon that ignored the first error) must not
/// commit anything, because the pages of the failed batch are not durable.
#[test]
fn a_follower_that_hit_a_local_error_commits_nothing_more() {
    let stream = fixture_stream("c02-overflow");
    let e = env();
    e.fs.inject(Fault::new(OpKind::Sync, 2, eio()).on_path(".p1seg"));
    let mut f = open(&e, FsyncPolicy::Batch);
    let mut stats = SessionStats::default();
    let err = f.apply(Plain(&stream.bytes[..]), &mut stats).unwrap_err();
    assert!(!err.is_stream_error());
    let before = f.meta().copied();
    let again = f.apply(Plain(&wal::stream_header()[..]), &mut stats);
    let again = again.expect_err("a poisoned follower must refuse to apply");
    assert!(!again.is_stream_error(), "{again}");
    assert!(f.commit(&mut stats).is_err());
    assert_eq!(f.meta().copied(), before);
    drop(f);
    e.fs.crash(CrashMode::LoseUnsynced);
    check_claims(&e.fs, &e.root, &stream, Some(&e.ckpt)).unwrap();
}

#[test]
fn failing_rename_of_meta_tmp_keeps_the_old_meta() {
    let stream = fixture_stream("c02-overflow");
    // Rename 1 is init's meta; 2 is the first commit; 4 a later one.
    for nth in [1, 2, 4] {
        let e = env();
        let bad = Fault::new(OpKind::Rename, nth, eio()).on_path("meta");
        let (err, reported) = fail_with(&e, FsyncPolicy::Batch, &stream, &[bad]);
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot rename into place ")
                && msg.ends_with("Input/output error (os error 5)"),
            "{msg}"
        );
        let vol = e.fs.read(&e.root.join("meta")).ok();
        let vol_lsn = vol.map(|b| quiverdb_follower::Meta::parse(&b).unwrap().last_lsn);
        assert_eq!(
            vol_lsn.unwrap_or(0),
            reported,
            "meta on disk is the last good one"
        );
        let ck =
            e.fs.read(&e.ckpt)
                .ok()
                .map(|b| String::from_utf8(b).unwrap());
        assert_eq!(
            ck.unwrap_or_else(|| "0".into()),
            reported.to_string(),
            "the checkpoint follows the durable meta only"
        );
        check_and_resume(
            &e,
            &stream,
            "c02-overflow",
            FsyncPolicy::Batch,
            CrashMode::LoseUnsynced,
        );
    }
}

#[test]
fn eio_on_folder_fsync_after_the_rename_is_safe_either_way() {
    let stream = fixture_stream("c02-overflow");
    for mode in [CrashMode::LoseUnsynced, CrashMode::KeepDirOps] {
        let e = env();
        // Folder sync 3 of the follower's root: the one after the first
        // commit's meta rename (1 and 2 are init's).
        let bad = Fault::new(OpKind::SyncDir, 3, eio()).on_path(e.root.to_str().unwrap());
        let (err, _) = fail_with(&e, FsyncPolicy::Batch, &stream, &[bad]);
        assert!(err.to_string().starts_with("cannot fsync folder "), "{err}");
        check_and_resume(&e, &stream, "c02-overflow", FsyncPolicy::Batch, mode);
    }
}

/// A stream whose pages span two segments at 4 KiB pages (8192 pages each):
/// allocating page 8192 extends the first segment to its full length.
fn two_segment_stream() -> StreamIndex {
    let mut s = StreamBuilder::new();
    for (lsn, id) in [(1u64, 0u64), (2, 100), (3, 8192), (4, 8193), (5, 0)] {
        s.page(lsn, id, format!("page {id}").as_bytes());
    }
    s.index()
}

#[test]
fn failing_to_create_or_extend_a_segment_is_a_local_error() {
    let stream = two_segment_stream();
    let cases = [
        (
            Fault::new(OpKind::Create, 1, enospc()).on_path("data-000002"),
            "cannot open ",
        ),
        (
            // Growing into segment 2 extends segment 1 to its full length.
            Fault::new(OpKind::SetLen, 1, enospc()).on_path(".p1seg"),
            "cannot extend ",
        ),
    ];
    for (fault, want) in cases {
        let e = env();
        let (err, reported) = fail_with(&e, FsyncPolicy::Batch, &stream, &[fault]);
        assert!(err.to_string().starts_with(want), "{err}");
        assert!(reported < 3, "{reported}");
        e.fs.clear_faults();
        e.fs.crash(CrashMode::Torn { seed: 3 });
        let m = check_claims(&e.fs, &e.root, &stream, None).unwrap();
        let mut f = open(&e, FsyncPolicy::Batch);
        let mut stats = SessionStats::default();
        f.apply(
            Plain(&stream.since(m.map_or(0, |m| m.last_lsn))[..]),
            &mut stats,
        )
        .unwrap();
        assert_eq!(f.meta().unwrap().next_page_id, 8194);
        drop(f);
        e.fs.crash(CrashMode::LoseUnsynced);
        let claims = check_claims(&e.fs, &e.root, &stream, None)
            .unwrap()
            .unwrap();
        assert_eq!(claims.last_lsn, 5);
        let seg2 =
            e.fs.durable_read(&e.root.join("data-000002.p1seg"))
                .unwrap();
        assert_eq!(seg2.len(), 2 * 4096);
        assert_eq!(&seg2[64..73], b"page 8192");
    }
}

// ---- a real full disk -----------------------------------------------------------

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn qdb_apply(db: &Path, extra: &[&str], stdin: &[u8]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qdb-apply"))
        .arg("--path")
        .arg(db)
        .args(extra)
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        // The child may stop reading early (that is the point of the test).
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// c03 needs 1.2 MB of segment; a 1 MiB tmpfs fills up part-way. qdb-apply
/// must exit 3 with one line naming the file and ENOSPC, meta must claim
/// only pages that are on disk, and after the disk is enlarged a resume from
/// qdb-ckpt's LSN ends at the expected state.
#[test]
fn real_disk_full_on_a_small_tmpfs() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mnt) = Tmpfs::mount(&tmp.path().join("mnt"), "1m") else {
        eprintln!("note: cannot mount a tmpfs here (not root, or no mount permission): skipping the real disk-full test");
        return;
    };
    let db = mnt.dir.join("db");
    let stream = fixture_stream("c03-churn");
    let (code, stderr) = qdb_apply(&db, &["--batch-mib", "1"], &stream.bytes);
    assert_eq!(code, 3, "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error: cannot ")
            && lines[0].ends_with("No space left on device (os error 28)"),
        "{stderr}"
    );
    // What is on disk now is what a restart sees: meta's claims must hold.
    let sim = SimFs::new();
    for name in std::fs::read_dir(&db).unwrap() {
        let p = name.unwrap().path();
        sim.put_durable(&p, &std::fs::read(&p).unwrap());
    }
    let m = check_claims(&sim, &db, &stream, None).unwrap().unwrap();
    assert!(
        m.last_lsn > 0,
        "the 1 MiB batch before the disk filled was committed"
    );
    assert!(m.last_lsn < stream.max_lsn());

    mnt.resize("4m");
    let ck = Command::new(env!("CARGO_BIN_EXE_qdb-ckpt"))
        .arg("--path")
        .arg(&db)
        .output()
        .unwrap();
    let since: u64 = String::from_utf8(ck.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(since, m.last_lsn);
    let (code, stderr) = qdb_apply(&db, &[], &stream.since(since));
    assert_eq!((code, stderr.as_str()), (0, ""));
    for (name, want) in expected("c03-churn") {
        assert!(std::fs::read(db.join(&name)).unwrap() == want, "{name}");
    }
}

// ---- disconnects: the input cut at every byte offset ---------------------------

/// A small stream with every kind of record: page images (a gap page, a
/// rewrite, a non-v2 payload), an unknown type, and a leader truncation
/// (TRUNCATE + mid-stream header).
fn synthetic_stream() -> StreamIndex {
    StreamBuilder::new()
        .page(1, 0, b"first image of page 0")
        .page(2, 2, b"page 2, after a gap")
        .record(7, 3, 9, b"unknown!!")
        .truncate()
        .header()
        .page(4, 0, b"second image of page 0")
        .page_image(5, 1, &[0xAB; 4096])
        .index()
}

fn synthetic_expected() -> BTreeMap<String, Vec<u8>> {
    let mut seg = page::overflow_page(4096, 0, NO_PAGE, 4, b"second image of page 0");
    seg.extend_from_slice(&[0xAB; 4096]);
    seg.extend_from_slice(&page::overflow_page(
        4096,
        2,
        NO_PAGE,
        2,
        b"page 2, after a gap",
    ));
    let mut m = quiverdb_follower::Meta::new_init(4096);
    m.last_lsn = 5;
    m.next_page_id = 3;
    BTreeMap::from([
        ("data-000001.p1seg".to_string(), seg),
        ("meta".to_string(), m.encode().to_vec()),
    ])
}

/// Cut `stream` at every byte offset; apply the prefix as one session, then
/// the whole stream as a second one. After the first, meta.last_lsn is the
/// LSN of the last complete record of the prefix (and durable); after the
/// second, the follower is the expected one.
fn cut_everywhere(stream: &StreamIndex, expected: &BTreeMap<String, Vec<u8>>) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("db");
    let page_ends: Vec<usize> = stream
        .records
        .iter()
        .filter(|r| r.rtype == WAL_TYPE_PAGE_IMAGE)
        .map(|r| r.end)
        .collect();
    for cut in 0..=stream.bytes.len() {
        let fs = SimFs::new();
        fs.create_dir_all(&root).unwrap();
        let mut f = Follower::open(Arc::new(fs.clone()), &root, opts(FsyncPolicy::Batch)).unwrap();
        let mut stats = SessionStats::default();
        let res = f.apply(Plain(&stream.bytes[..cut]), &mut stats);
        if cut < 16 {
            let err = res.expect_err("a cut header is an error");
            assert!(err.is_stream_error(), "cut {cut}: {err}");
            assert!(
                err.to_string().contains(&format!("after {cut} bytes")),
                "{err}"
            );
        } else {
            res.unwrap_or_else(|e| panic!("cut {cut}: a cut stream is a normal end: {e}"));
        }
        let want = stream.last_lsn_within(cut);
        let has_page = page_ends.first().is_some_and(|&end| end <= cut);
        assert_eq!(f.meta().is_some(), has_page, "cut {cut}: DB created");
        if let Some(m) = f.meta() {
            assert_eq!(m.last_lsn, want, "cut {cut}");
        }
        let reported = f.meta().copied();
        drop(f);
        fs.crash(CrashMode::LoseUnsynced);
        let durable = check_claims(&fs, &root, stream, None).unwrap();
        assert_eq!(durable, reported, "cut {cut}: reported meta is durable");

        let mut f = Follower::open(Arc::new(fs.clone()), &root, opts(FsyncPolicy::Batch)).unwrap();
        f.apply(Plain(&stream.bytes[..]), &mut stats).unwrap();
        drop(f);
        fs.crash(CrashMode::LoseUnsynced);
        for (name, want) in expected {
            let have = fs.durable_read(&root.join(name));
            assert!(have.as_ref() == Some(want), "cut {cut}: {name} differs");
        }
    }
}

#[test]
fn disconnect_at_every_byte_c01() {
    cut_everywhere(&fixture_stream("c01-one-put"), &expected("c01-one-put"));
}

#[test]
fn disconnect_at_every_byte_c10_unknown_type() {
    cut_everywhere(
        &fixture_stream("c10-unknown-type"),
        &expected("c10-unknown-type"),
    );
}

#[test]
fn disconnect_at_every_byte_synthetic() {
    let s = synthetic_stream();
    assert_eq!(s.records.len(), 6);
    cut_everywhere(&s, &synthetic_expected());
}

#[test]
fn eio_then_restart_without_reboot_rewrites_pages_only_the_cache_holds() {
    // After a failed fsync Linux keeps the unwritten pages in the page cache,
    // marked clean. A follower restarted at once (no reboot) reads them as if
    // they were on disk; gating must not trust them to skip the images that
    // would rewrite them, or its next commit claims pages the disk never got.
    let c02 = fixture_stream("c02-overflow");
    let round2 = common::restamp(&c02.bytes, 78);
    let one_commit = ApplyOptions {
        batch_bytes: 1 << 30,
        batch_interval: Duration::from_secs(3600),
        wait_lock: true,
        ..ApplyOptions::default()
    };
    let run = |e: &Env, stream: &[u8]| {
        let mut f = Follower::open(Arc::new(e.fs.clone()), &e.root, one_commit.clone()).unwrap();
        f.apply(Plain(stream), &mut SessionStats::default())
    };
    let reference = env();
    run(&reference, &c02.bytes).unwrap();
    run(&reference, &round2).unwrap();

    let e = env();
    run(&e, &c02.bytes).unwrap();
    let mut f = Follower::open(Arc::new(e.fs.clone()), &e.root, one_commit.clone()).unwrap();
    // The one segment fsync of round 2 fails: none of its pages reach the disk.
    e.fs.inject(Fault::new(OpKind::Sync, 1, eio()).on_path(".p1seg"));
    let err = f
        .apply(Plain(&round2[..]), &mut SessionStats::default())
        .unwrap_err();
    drop(f);
    assert!(!err.is_stream_error(), "{err}");
    e.fs.clear_faults();
    let durable = check_claims(&e.fs, &e.root, &StreamIndex::new(&round2), None)
        .unwrap()
        .unwrap();
    assert_eq!(durable.last_lsn, 78);
    // Restart at once and resume from the durable last_lsn.
    run(&e, &StreamIndex::new(&round2).since(durable.last_lsn)).unwrap();
    e.fs.crash(CrashMode::LoseUnsynced);
    reference.fs.crash(CrashMode::LoseUnsynced);
    for name in reference.fs.durable_list(&reference.root) {
        if name == "LOCK" {
            continue;
        }
        let want = reference.fs.durable_read(&reference.root.join(&name));
        let have = e.fs.durable_read(&e.root.join(&name));
        assert!(have == want, "{name} differs from the fault-free follower");
    }
}
