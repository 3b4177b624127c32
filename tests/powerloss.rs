//! Simulated power loss at every I/O operation (or a dense deterministic
//! sample) while a follower applies real QuiverDB 1.2.5 streams.
//!
//! Each run: a fresh [`SimFs`], the power is cut at the n-th mutating
//! operation, the machine "restarts" (volatile state replaced by the durable
//! image, per crash mode), and then, as an operator would:
//! 1. the durable image is checked: meta.last_lsn never claims a page that is
//!    not durable, and the checkpoint file is never ahead of it
//!    ([`check_claims`]);
//! 2. the follower resumes with the slice of the stream after last_lsn
//!    (`wal-ship --since-lsn last_lsn`);
//! 3. after that session, a second power loss must change nothing, and every
//!    file of the follower must be byte-identical to what QuiverDB 1.2.5's
//!    own `wal-apply` produced (the fixture's `expected/`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quiverdb_follower::{ApplyOptions, Follower, Plain, SessionStats};
use quiverdb_follower::{Fs, FsyncPolicy};
use testkit::fault::{CrashMode, SimFs};
use testkit::stream::{check_claims, StreamIndex};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/quiverdb-1.2.5");

struct Case {
    stream: StreamIndex,
    /// Every file a fresh follower holds after the whole stream, by name.
    expected: BTreeMap<String, Vec<u8>>,
}

fn load(case: &str) -> Case {
    let dir = Path::new(FIXTURES).join(case);
    let stream = StreamIndex::new(&std::fs::read(dir.join("stream.wal")).unwrap());
    let mut expected = common::expected_map(case);
    // The files `init` creates and apply never touches (spec §11.5).
    expected.insert(
        "wal-000001.log".into(),
        b"P1WAL001\0\0\0\0\0\0\0\0".to_vec(),
    );
    let mut free = b"P1FREE01".to_vec();
    free.extend_from_slice(&[1, 0, 0, 0]);
    free.resize(24, 0);
    expected.insert("free".into(), free);
    Case { stream, expected }
}

struct Env {
    _tmp: tempfile::TempDir,
    /// A real, empty folder: only the DB lock lives on the real disk.
    root: PathBuf,
    ckpt: PathBuf,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("db");
    let ckpt = tmp.path().join("last_lsn");
    Env {
        _tmp: tmp,
        root,
        ckpt,
    }
}

fn opts(fsync: FsyncPolicy) -> ApplyOptions {
    ApplyOptions {
        fsync,
        // 16 pages per batch: c02 commits 5 times, c03 75 times, so crashes
        // land inside batches, between them, and inside the meta protocol.
        batch_bytes: 16 * 4096,
        // Never commit by time: the sequence of operations must not depend
        // on the machine's speed.
        batch_interval: Duration::from_secs(3600),
        // Another test's child process, forked while we held the DB lock,
        // can hold that flock for a moment after we drop it (until its exec
        // closes the copied fd): wait for it rather than fail.
        wait_lock: true,
        ..ApplyOptions::default()
    }
}

/// One session, as qdb-apply plus a checkpoint writer would run it: the
/// commit hook writes the checkpoint file after each durable commit.
fn session(
    fs: &SimFs,
    e: &Env,
    fsync: FsyncPolicy,
    bytes: &[u8],
) -> quiverdb_follower::Result<SessionStats> {
    let mut f = Follower::open(Arc::new(fs.clone()), &e.root, opts(fsync))?;
    let hook_fs = fs.clone();
    let ckpt = e.ckpt.clone();
    f.set_commit_hook(move |m| {
        // A failure here (the power is already off) must not matter: the
        // checkpoint may lag meta, never lead it.
        let _ = quiverdb_follower::write_checkpoint(&hook_fs, &ckpt, m.last_lsn);
    });
    let mut stats = SessionStats::default();
    f.apply(Plain(bytes), &mut stats)?;
    Ok(stats)
}

fn fresh(e: &Env) -> SimFs {
    let fs = SimFs::new();
    fs.create_dir_all(&e.root).unwrap();
    fs
}

/// Mutating operations of one uninterrupted run of the whole stream.
fn count_ops(case: &Case, fsync: FsyncPolicy) -> u64 {
    let e = env();
    let fs = fresh(&e);
    session(&fs, &e, fsync, &case.stream.bytes).unwrap();
    eprintln!(
        "{} records, fsync {fsync:?}: {} mutating operations",
        case.stream.records.len(),
        fs.ops()
    );
    fs.ops()
}

fn assert_final(fs: &SimFs, e: &Env, case: &Case, what: &str) {
    // Whatever the follower said it finished must survive one more power loss.
    fs.crash(CrashMode::LoseUnsynced);
    let mut got = BTreeMap::new();
    for name in fs.durable_list(&e.root) {
        got.insert(name.clone(), fs.durable_read(&e.root.join(&name)).unwrap());
    }
    // Ours, not in the 1.x fixtures: it must never claim more than meta
    // (its tmp is a transient, removed by the next replacement).
    got.remove("complete-lsn.tmp");
    if let Some(c) = got.remove("complete-lsn") {
        let c: u64 = String::from_utf8_lossy(&c).trim().parse().unwrap();
        let last = got
            .get("meta")
            .map_or(0, |m| u64::from_le_bytes(m[32..40].try_into().unwrap()));
        assert!(
            c <= last,
            "{what}: complete-lsn {c} ahead of meta.last_lsn {last}"
        );
    }
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&got), names(&case.expected), "{what}: file names");
    for (name, want) in &case.expected {
        let have = &got[name];
        if have != want {
            let first = have.iter().zip(want).position(|(a, b)| a != b);
            panic!(
                "{what}: {name} differs from the expected state (len {} vs {}, first difference at {:?})",
                have.len(),
                want.len(),
                first
            );
        }
    }
    // The checkpoint may lag meta (its write after the last meta commit can
    // be lost, and a resume with nothing left to apply commits nothing), but
    // it never leads it.
    if let Some(ck) = fs.durable_read(&e.ckpt) {
        let ck: u64 = String::from_utf8(ck).unwrap().parse().unwrap();
        assert!(ck <= case.stream.max_lsn(), "{what}: checkpoint {ck}");
    }
}

/// Cut the power at operation `n`, restart, check, resume, compare.
fn crash_at(case: &Case, fsync: FsyncPolicy, n: u64, mode: CrashMode) {
    let what = format!("power cut at op {n} ({mode:?}, fsync {fsync:?})");
    let e = env();
    let fs = fresh(&e);
    fs.cut_power_at(n);
    let first = session(&fs, &e, fsync, &case.stream.bytes);
    if fs.is_dead() {
        match first {
            Err(err) => assert!(!err.is_stream_error(), "{what}: {err}"),
            // Only the checkpoint writer ignores errors (it runs after the
            // commit it reports, so losing it is harmless).
            Ok(_) => {
                let cut = fs.op_log().pop().unwrap();
                assert!(
                    !cut.path.starts_with(&e.root),
                    "{what}: the session ignored a failed {cut:?}"
                );
            }
        }
    } else {
        first.unwrap_or_else(|err| panic!("{what}: {err}"));
    }
    fs.crash(mode);
    let durable = check_claims(&fs, &e.root, &case.stream, Some(&e.ckpt))
        .unwrap_or_else(|msg| panic!("{what}: {msg}"));
    let since = durable.map_or(0, |m| m.last_lsn);
    let stats = session(&fs, &e, fsync, &case.stream.since(since))
        .unwrap_or_else(|err| panic!("{what}: resume from {since}: {err}"));
    assert_eq!(stats.last_lsn, case.stream.max_lsn(), "{what}");
    assert_final(&fs, &e, case, &what);
}

fn modes(n: u64) -> [CrashMode; 3] {
    [
        CrashMode::LoseUnsynced,
        CrashMode::KeepDirOps,
        CrashMode::Torn { seed: n },
    ]
}

#[test]
fn c02_power_loss_at_every_op_every_mode() {
    let case = load("c02-overflow");
    let total = count_ops(&case, FsyncPolicy::Batch);
    // Consecutive pages share one write (store::WriteRun), so a batch is a
    // few writes, not one per page.
    assert!(
        total > 60,
        "c02 should take well over 60 operations, took {total}"
    );
    // total + 1: the cut never happens, the run completes, then power is lost.
    for n in 1..=total + 1 {
        for mode in modes(n) {
            crash_at(&case, FsyncPolicy::Batch, n, mode);
        }
    }
}

#[test]
fn c02_power_loss_at_every_op_fsync_always() {
    let case = load("c02-overflow");
    let total = count_ops(&case, FsyncPolicy::Always);
    for n in 1..=total + 1 {
        crash_at(&case, FsyncPolicy::Always, n, modes(n)[(n % 3) as usize]);
    }
}

/// c03 has about 2,000 operations; every one in all modes takes minutes in
/// a debug build, so CI runs a deterministic sample: every operation of the
/// first batch (DB creation included), of one batch in the middle and of the
/// last batch (the final commit), and every 23rd operation in between, each
/// with one of the three crash modes in turn.
#[test]
fn c03_power_loss_sampled() {
    let case = load("c03-churn");
    let total = count_ops(&case, FsyncPolicy::Batch);
    let mid = total / 2;
    let points: Vec<u64> = (1..=total + 1)
        .filter(|&n| n <= 45 || (mid..mid + 30).contains(&n) || n + 30 > total || n % 23 == 0)
        .collect();
    assert!(points.len() > 150, "{} points", points.len());
    for n in points {
        crash_at(&case, FsyncPolicy::Batch, n, modes(n)[(n % 3) as usize]);
    }
}

/// The full c03 run: every operation, every crash mode (minutes; run by hand
/// with `cargo test --release --test powerloss -- --ignored`).
#[test]
#[ignore]
fn c03_power_loss_at_every_op_every_mode() {
    let case = load("c03-churn");
    let total = count_ops(&case, FsyncPolicy::Batch);
    for n in 1..=total + 1 {
        for mode in modes(n) {
            crash_at(&case, FsyncPolicy::Batch, n, mode);
        }
    }
}

/// A crash during the resume session too: two power losses in a row, then a
/// clean resume, still end at the expected state.
#[test]
fn c02_power_loss_twice() {
    let case = load("c02-overflow");
    let total = count_ops(&case, FsyncPolicy::Batch);
    for n in (1..=total).step_by(7) {
        let e = env();
        let fs = fresh(&e);
        fs.cut_power_at(n);
        let _ = session(&fs, &e, FsyncPolicy::Batch, &case.stream.bytes);
        fs.crash(CrashMode::Torn { seed: n });
        let m = check_claims(&fs, &e.root, &case.stream, Some(&e.ckpt)).unwrap();
        let since = m.map_or(0, |m| m.last_lsn);
        // The second cut lands somewhere inside the resume session.
        fs.cut_power_at(fs.ops() + 1 + (n * 31) % 60);
        let _ = session(&fs, &e, FsyncPolicy::Batch, &case.stream.since(since));
        fs.crash(CrashMode::KeepDirOps);
        let m = check_claims(&fs, &e.root, &case.stream, Some(&e.ckpt))
            .unwrap_or_else(|msg| panic!("second crash after first at {n}: {msg}"));
        let since = m.map_or(0, |m| m.last_lsn);
        session(&fs, &e, FsyncPolicy::Batch, &case.stream.since(since)).unwrap();
        assert_final(&fs, &e, &case, &format!("double crash from {n}"));
    }
}

// ---- a torn page on a real disk ------------------------------------------------

/// Apply `stream` to the follower at `root` on the real file system.
fn apply_std(root: &Path, stream: &[u8]) -> SessionStats {
    let fs = Arc::new(quiverdb_follower::StdFs);
    let mut f = Follower::open(fs, root, opts(FsyncPolicy::Batch)).unwrap();
    let mut stats = SessionStats::default();
    f.apply(Plain(stream), &mut stats).unwrap();
    stats
}

/// A follower built from c09's first part (lsn 1-595), with the second half
/// of one page overwritten by garbage, as a write torn by a power loss
/// leaves it. Re-applying the rest of the stream (c09's part 2, lsn
/// 571-1191) must notice the page's CRC fails, so its on-disk LSN is not
/// trusted for gating: the next image of that page in the stream overwrites
/// it even though a copy with a higher LSN "is" on disk. The end state is
/// byte-identical to 1.x's.
#[test]
fn torn_page_is_detected_by_its_crc_and_overwritten_by_the_next_image() {
    let dir = Path::new(FIXTURES).join("c09-resume");
    let part1 = std::fs::read(dir.join("part1.wal")).unwrap();
    let part2 = StreamIndex::new(&std::fs::read(dir.join("part2.wal")).unwrap());
    let case = load("c03-churn");

    // The page to tear: the first one whose part-1 image is resent in part 2
    // (lsn 571-595), so an intact follower would skip that copy.
    let p1 = StreamIndex::new(&part1);
    let last_in_part1 = |id: u64| {
        p1.records
            .iter()
            .filter(|r| r.page_id == id)
            .map(|r| r.lsn)
            .max()
    };
    let victim = part2
        .records
        .iter()
        .find(|r| last_in_part1(r.page_id).is_some_and(|c| r.lsn <= c))
        .unwrap()
        .page_id;
    let on_disk_lsn = last_in_part1(victim).unwrap();
    // How many of part 2's images of it an intact follower skips.
    let resent = part2
        .records
        .iter()
        .filter(|r| r.page_id == victim && r.lsn <= on_disk_lsn)
        .count();
    assert!(resent >= 1);

    let run = |tear: bool| {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("db");
        apply_std(&root, &part1);
        let seg_path = root.join("data-000001.p1seg");
        let mut seg = std::fs::read(&seg_path).unwrap();
        let off = victim as usize * 4096;
        let page = &mut seg[off..off + 4096];
        assert_eq!(
            quiverdb_follower::format::page::v2_page_lsn(page),
            Some(on_disk_lsn)
        );
        if tear {
            let garbage = testkit::rng::Rng::new(0x9E37_79B9_7F4A_7C15).bytes(2048);
            page[2048..].copy_from_slice(&garbage);
            assert!(matches!(
                quiverdb_follower::format::page::check_page_crc(page),
                quiverdb_follower::format::page::PageCrc::Mismatch { .. }
            ));
            // The header, LSN included, is intact: only the CRC gives it away.
            assert_eq!(
                quiverdb_follower::format::page::v2_page_lsn(page),
                Some(on_disk_lsn)
            );
            std::fs::write(&seg_path, &seg).unwrap();
        }
        let stats = apply_std(&root, &part2.bytes);
        for (name, want) in &case.expected {
            let have = std::fs::read(root.join(name)).unwrap();
            assert!(
                &have == want,
                "tear={tear}: {name} differs from the expected state"
            );
        }
        stats
    };
    let intact = run(false);
    let torn = run(true);
    assert_eq!(
        torn.applied,
        intact.applied + resent as u64,
        "page {victim}: the torn copy (lsn {on_disk_lsn}) must not gate its {resent} resent image(s)"
    );
}
