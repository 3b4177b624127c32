//! Issue 12 (hardening): one regression test per item, each running the
//! real binaries on real files. Each test failed on the code before the
//! fix; the comment above it says how.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, wait_for};
use quiverdb_follower::format::layout::{pages_per_segment, segment_file_name};
use quiverdb_follower::{DbLock, StdFs};
use testkit::child::run_with_input;
use testkit::stream::{zstd_bomb, zstd_long27, StreamBuilder};

const APPLY: &str = env!("CARGO_BIN_EXE_qdb-apply");
const CKPT: &str = env!("CARGO_BIN_EXE_qdb-ckpt");
const INSPECT: &str = env!("CARGO_BIN_EXE_qdb-inspect");
const UNZIP: &str = env!("CARGO_BIN_EXE_qdb-unzip");
const DAEMON: &str = env!("CARGO_BIN_EXE_quiverdb-follower");

/// A WAL stream of page images `(page_id, lsn)` for page size `ps`.
fn stream(ps: u32, pages: &[(u64, u64)]) -> Vec<u8> {
    let mut s = StreamBuilder::with_page_size(ps);
    for &(id, lsn) in pages {
        s.page(lsn, id, format!("page {id} lsn {lsn}").as_bytes());
    }
    s.build()
}

fn cmd(bin: &str, args: &[&dyn AsRef<OsStr>]) -> Command {
    let mut c = Command::new(bin);
    for a in args {
        c.arg(a.as_ref());
    }
    c.env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Limit the child's open files (soft and hard) to `n`, as `ulimit -n n`.
fn limit_nofile(c: &mut Command, n: u64) {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in pre_exec.
    unsafe {
        c.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn meta_of(db: &Path) -> quiverdb_follower::Meta {
    quiverdb_follower::read_meta(&StdFs, db).unwrap().unwrap()
}

// ---- Scale: open files ------------------------------------------------------

/// Before: every segment stayed open, so the 125th segment under
/// `ulimit -n 128` failed with "Too many open files" (apply, resume, check).
#[test]
fn a_follower_of_3000_segments_applies_resumes_and_checks_under_ulimit_128() {
    const SEGS: u64 = 3000;
    let ps = 32768u32; // 1024 pages per 32 MiB segment: 3,000 segments = 3M pages
    let pps = pages_per_segment(ps);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    // Session 1: one page in each of the first 1,500 segments, in order,
    // so written segments are evicted from the handle cache mid-batch.
    let first: Vec<(u64, u64)> = (0..SEGS / 2).map(|k| (k * pps + k % 7, k + 1)).collect();
    let mut c = cmd(APPLY, &[&"--path", &db]);
    limit_nofile(&mut c, 128);
    let out = run_with_input(c, &stream(ps, &first));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(meta_of(&db).last_lsn, SEGS / 2);

    // Session 2 (a resume): a page in the last segment first (it creates
    // the 1,499 segments before it, full length and sparse), then a newer
    // image in every segment, from the last to the first.
    let mut lsn = SEGS / 2;
    let mut second = Vec::new();
    for k in (0..SEGS).rev() {
        lsn += 1;
        second.push((k * pps + k % 5, lsn));
    }
    let mut c = cmd(APPLY, &[&"--path", &db]);
    limit_nofile(&mut c, 128);
    let out = run_with_input(c, &stream(ps, &second));
    assert!(out.status.success(), "{}", stderr(&out));
    let m = meta_of(&db);
    assert_eq!(
        (m.last_lsn, m.next_page_id),
        (lsn, (SEGS - 1) * pps + (SEGS - 1) % 5 + 1)
    );
    for k in [1, SEGS / 2, SEGS] {
        let f = db.join(segment_file_name(k));
        let len = fs::metadata(&f).unwrap().len();
        assert!(len == u64::from(ps) * pps || k == SEGS, "{f:?}: {len}");
    }
    assert!(!db.join(segment_file_name(SEGS + 1)).exists());

    // The same session again: every record skipped by gating, which reads
    // a page in each of the 3,000 segments.
    let mut c = cmd(APPLY, &[&"--path", &db]);
    limit_nofile(&mut c, 128);
    c.env("RUST_LOG", "info");
    let out = run_with_input(c, &stream(ps, &second));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("records={SEGS} applied=0 skipped={SEGS}")),
        "{}",
        stderr(&out)
    );

    let mut c = cmd(INSPECT, &[&"check", &"--path", &db]);
    limit_nofile(&mut c, 128);
    let out = c.output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", stderr(&out));
    assert!(
        report.contains(&format!("segments: {SEGS} of {SEGS} expected present")),
        "{report}"
    );
}

// ---- Defect 1: --wait-lock and signals ---------------------------------------

/// Before: the blocking flock slept through SIGTERM/SIGINT (the handlers
/// only stop the intake), so the run applied the whole stream once the
/// lock was released.
#[test]
fn wait_lock_ends_on_sigterm_and_sigint_with_nothing_applied() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("db");
        let held = DbLock::acquire(&db, false).unwrap();
        let mut child = cmd(APPLY, &[&"--path", &db, &"--wait-lock"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut w = child.stdin.take().unwrap();
        w.write_all(&stream(4096, &[(0, 1)])).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(child.try_wait().unwrap().is_none(), "it waits for the lock");
        // SAFETY: a plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
        let started = Instant::now();
        let status = wait_deadline(&mut child, Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(2), "signal {sig}");
        drop(held);
        drop(w);
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(3), "signal {sig}: {err}");
        assert_eq!(
            err,
            format!(
                "error: interrupted by a signal while waiting for the lock on the follower database {}: nothing was applied\n",
                db.display()
            )
        );
        assert!(!db.join("meta").exists(), "nothing was applied");
    }
}

fn wait_deadline(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the child did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---- Defect 2: non-UTF-8 checkpoint paths ----------------------------------

/// Before: the checkpoint's name went through `to_string_lossy`, so
/// `ck\xff\xfe` was written as `ck\u{fffd}\u{fffd}`.
#[test]
fn a_non_utf8_checkpoint_path_is_written_under_that_very_name() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let out = run_with_input(
        cmd(APPLY, &[&"--path", &db]),
        &stream(4096, &[(0, 1), (1, 2)]),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let ck = tmp.path().join(OsStr::from_bytes(b"ck\xff\xfe"));
    let out = cmd(CKPT, &[&"--path", &db, &"--write", &ck])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&ck).unwrap(), b"2");
    // The library, as the daemon uses it.
    let lib_ck = tmp.path().join(OsStr::from_bytes(b"lib\x80ck"));
    quiverdb_follower::write_checkpoint(&StdFs, &lib_ck, 7).unwrap();
    assert_eq!(fs::read(&lib_ck).unwrap(), b"7");
    let mut names: Vec<Vec<u8>> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            b"ck\xff\xfe".to_vec(),
            b"db".to_vec(),
            b"lib\x80ck".to_vec()
        ]
    );
}

// ---- Defects 7 and 8: temporary files, symlinked checkpoints ------------------

/// Before: a symlinked checkpoint was replaced by a regular file and its
/// target went stale. Now it is refused, and the target is left alone.
#[test]
fn a_symlinked_checkpoint_is_refused_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let out = run_with_input(cmd(APPLY, &[&"--path", &db]), &stream(4096, &[(0, 1)]));
    assert!(out.status.success(), "{}", stderr(&out));
    let target = tmp.path().join("real_ck");
    fs::write(&target, b"0").unwrap();
    let link = tmp.path().join("ck");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = cmd(CKPT, &[&"--path", &db, &"--write", &link])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        stderr(&out),
        format!(
            "error: the checkpoint file {} is a symbolic link: it is replaced by a rename, which would replace the link and leave its target stale; give the real file's path instead\n",
            link.display()
        )
    );
    assert!(out.stdout.is_empty());
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(&target).unwrap(), b"0");
}

/// Before: meta, dir and checkpoints were written through the fixed names
/// `meta.tmp`, `dir.tmp`, `FILE.tmp` (an obstacle there stopped every
/// commit with "cannot remove"; a symlink planted there in the window
/// between the remove and the create+truncate open was followed). Now the
/// temporary files are created exclusively under random names, and what
/// an interrupted write left behind is removed at the next open.
#[test]
fn replaced_files_go_through_exclusive_random_temp_files_and_leftovers_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    fs::create_dir_all(&db).unwrap();
    // Obstacles at the old fixed names (folders cannot be removed by unlink).
    fs::create_dir(db.join("meta.tmp")).unwrap();
    fs::create_dir(tmp.path().join("ck.tmp")).unwrap();
    // Leftovers of interrupted replacements, and files that are not ours.
    fs::write(db.join(".meta.abcdefABCDEF.tmp"), b"stale").unwrap();
    fs::write(db.join(".dir.0123456789ab.tmp"), b"stale").unwrap();
    fs::write(db.join(".meta.notours"), b"keep").unwrap();
    fs::write(db.join("meta.tmp.keep"), b"keep").unwrap();
    let out = run_with_input(
        cmd(APPLY, &[&"--path", &db, &"--buckets", &"8"]),
        &stream(4096, &[(0, 1), (1, 2)]),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(meta_of(&db).last_lsn, 2);
    let mut names: Vec<String> = fs::read_dir(&db)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".meta.notours",
            "LOCK",
            "complete-lsn",
            "data-000001.p1seg",
            "dir",
            "free",
            "meta",
            "meta.tmp",
            "meta.tmp.keep",
            "wal-000001.log"
        ]
    );
    let ck = tmp.path().join("ck");
    fs::write(tmp.path().join(".ck.zzzzzzzzzzzz.tmp"), b"stale").unwrap();
    let out = cmd(CKPT, &[&"--path", &db, &"--write", &ck])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&ck).unwrap(), b"2");
    assert!(!tmp.path().join(".ck.zzzzzzzzzzzz.tmp").exists());
    // A file replaced by us keeps the mode a plain create gives it.
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(db.join("meta")).unwrap().permissions().mode() & 0o777;
    let plain = {
        let p = tmp.path().join("plain");
        fs::write(&p, b"").unwrap();
        fs::metadata(&p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode, plain);
}

// ---- Defect 9: LOCK deleted under a running applier ----------------------------

/// Before: the first applier went on committing after its LOCK was
/// deleted and a second applier locked a new one: two writers on one
/// follower.
#[test]
fn a_deleted_lock_file_stops_the_running_applier_before_it_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let mut first = cmd(APPLY, &[&"--path", &db])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut w1 = first.stdin.take().unwrap();
    let s = stream(4096, &[(0, 1), (1, 2), (2, 3)]);
    let rec = (s.len() - 16) / 3;
    // The header and the first record; the pause makes it commit.
    w1.write_all(&s[..16 + rec]).unwrap();
    wait_for(
        "the first commit",
        Duration::from_secs(20),
        String::new,
        || db.join("meta").exists() && meta_of(&db).last_lsn == 1,
    );
    fs::remove_file(db.join("LOCK")).unwrap();
    // A second applier now gets a lock of its own (and holds it).
    let mut second = cmd(APPLY, &[&"--path", &db])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        "the second lock",
        Duration::from_secs(20),
        String::new,
        || db.join("LOCK").exists(),
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(second.try_wait().unwrap().is_none());
    // More data for the first: it must refuse to commit it. It may have
    // stopped already (a commit with nothing new also checks the lock), in
    // which case the write finds the pipe closed.
    if let Err(e) = w1.write_all(&s[16 + rec..]) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let status = wait_deadline(&mut first, Duration::from_secs(10));
    let mut err = String::new();
    first
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(3), "{err}");
    assert_eq!(
        err,
        format!(
            "error: {} was deleted or replaced while this process held the lock on it: another applier may now be running on the follower, so this one stops before writing anything more (make sure only one applier runs, then restart it)\n",
            db.join("LOCK").display()
        )
    );
    assert_eq!(meta_of(&db).last_lsn, 1, "nothing more was committed");
    drop(w1);
    drop(second.stdin.take());
    let _ = wait_deadline(&mut second, Duration::from_secs(10));
}

// ---- Defect 11: a stream behind the follower ------------------------------------

/// Before: a session whose every record is older than the follower (a
/// re-initialised leader) was skipped without a word.
#[test]
fn a_stream_entirely_behind_the_follower_is_warned_about_once() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let out = run_with_input(
        cmd(APPLY, &[&"--path", &db]),
        &stream(4096, &[(0, 1), (1, 2), (2, 3), (0, 40)]),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stderr.is_empty() || !stderr(&out).contains("below"));
    let restarted = stream(4096, &[(0, 1), (1, 2), (2, 3), (3, 4), (1, 5)]);
    let out = run_with_input(cmd(APPLY, &[&"--path", &db]), &restarted);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(" WARN ") && err.trim_end().ends_with(
            "stream LSN 1 is below the follower's last_lsn 40: every record is older than the follower; is this the right leader? (a re-initialised leader needs a re-seeded follower)"
        ),
        "{err}"
    );
    // Page 3 was new to the follower: gating applied it all the same.
    assert_eq!(meta_of(&db).next_page_id, 4);
    // A normal resume (records newer than the follower) says nothing.
    let out = run_with_input(cmd(APPLY, &[&"--path", &db]), &stream(4096, &[(0, 41)]));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        stderr(&out)
    );
}

// ---- Defect 5 (codec): zstd window cap and memory ----------------------------------

/// Run qdb-unzip on `input` under GNU time; its exit code, stderr,
/// decoded byte count and peak RSS in KiB. (wait4's rusage of a child we
/// spawn ourselves would also count the moments between fork and exec,
/// when the child is a copy of this big test process.)
fn unzip_rss(args: &[&str], input: &[u8]) -> (i32, String, u64, i64) {
    let mut child = Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kib=%M", UNZIP])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("GNU time (/usr/bin/time)");
    let mut w = child.stdin.take().unwrap();
    let data = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = w.write_all(&data);
    });
    let mut out = child.stdout.take().unwrap();
    let counter = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => return n,
                Ok(k) => n += k as u64,
            }
        }
    });
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    feeder.join().unwrap();
    let decoded = counter.join().unwrap();
    let (rest, rss) = err
        .trim_end()
        .rsplit_once("maxrss_kib=")
        .expect("time's line");
    let rest = rest.replace("Command exited with non-zero status 1\n", "");
    (
        status.code().unwrap_or(-1),
        rest,
        decoded,
        rss.parse().unwrap(),
    )
}

/// Before: a `zstd --long=27` stream or a bomb with a 128 MiB window was
/// decoded with a 128 MiB window: ~134 MB peak RSS. Now windows over 8 MiB
/// are refused by default (one line naming --zstd-window-log-max) and the
/// largest accepted by default stays far under 64 MiB.
#[test]
fn qdb_unzip_peak_rss_stays_under_64_mib_for_long_windows_and_bombs() {
    const CAP_KIB: i64 = 64 * 1024;
    let refused = "error: zstd: a frame needs a window larger than 8 MiB (2^23 bytes), at or after input byte 0: wal-ship never needs more; for a stream made with `zstd --long=N`, raise the limit with --zstd-window-log-max N (memory grows with it)\n";
    // A real `zstd --long=27` stream.
    let wal = stream(
        4096,
        &(0..2000).map(|i| (i % 300, i + 1)).collect::<Vec<_>>(),
    );
    let long = zstd_long27(&wal);
    let (code, err, decoded, rss) = unzip_rss(&[], &long);
    assert_eq!((code, err.as_str(), decoded), (1, refused, 0));
    assert!(rss < CAP_KIB, "--long=27 refused: peak RSS {rss} KiB");
    eprintln!("qdb-unzip peak RSS, zstd --long=27 refused: {rss} KiB");
    // With the cap raised, the same stream decodes (the option works).
    let (code, err, decoded, _) = unzip_rss(&["--zstd-window-log-max", "27"], &long);
    assert_eq!((code, err.as_str(), decoded), (0, "", wal.len() as u64));

    let head = stream(4096, &[]);
    // A bomb with a 128 MiB window: refused at its header.
    let (code, err, decoded, rss) = unzip_rss(&[], &zstd_bomb(&head, 2048, 27));
    assert_eq!((code, err.as_str(), decoded), (1, refused, 0));
    assert!(rss < CAP_KIB, "window 2^27 bomb: peak RSS {rss} KiB");
    eprintln!("qdb-unzip peak RSS, window 2^27 bomb refused: {rss} KiB");
    // The largest window accepted by default: 256 MiB of zeros decoded,
    // memory bounded by the window.
    let (code, _, decoded, rss) = unzip_rss(&["-d", "zstd"], &zstd_bomb(&head, 2048, 23));
    assert_eq!((code, decoded), (0, 16 + (2048u64 << 17)));
    assert!(rss < CAP_KIB, "window 2^23 bomb: peak RSS {rss} KiB");
    eprintln!("qdb-unzip peak RSS, window 2^23 bomb: {rss} KiB");
}

// ---- Defect 15: the lock error, per tool ------------------------------------

/// Before: every tool's lock error said "pass --wait-lock", a flag the
/// daemon does not have.
#[test]
fn the_lock_error_is_worded_for_each_tool() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let _held = DbLock::acquire(&db, false).unwrap();
    let head = format!(
        "error: the follower database {0} is locked by another process (flock on {0}/LOCK): another qdb-apply or quiverdb-follower is running on it; ",
        db.display()
    );
    let out = run_with_input(cmd(APPLY, &[&"--path", &db]), &stream(4096, &[(0, 1)]));
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        stderr(&out),
        format!("{head}stop it, or pass --wait-lock to wait\n")
    );
    let out = cmd(DAEMON, &[&"--path", &db, &"--listen", &"127.0.0.1:0"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.ends_with(&format!(
            "{head}stop it first: only one applier may run on a follower (check `systemctl status` and `pgrep -a qdb-apply`)\n"
        )),
        "{err}"
    );
    assert!(!err.contains("--wait-lock"), "{err}");
}

// ---- Defect 16: Linux only ----------------------------------------------------

/// Before: on another Unix the build failed deep inside with a missing
/// `sync_file_range`. Now the crate root stops it with one clear message.
/// Checked by compiling the crate root's guard alone for FreeBSD (no
/// FreeBSD standard library is needed: a `no_core` crate that declares
/// only the built-in `compile_error!`), and for Linux, where it passes.
#[test]
fn building_for_another_os_fails_with_a_clear_message() {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let start = lib
        .find("#[cfg(not(target_os = \"linux\"))]")
        .expect("the guard");
    let end = start + lib[start..].find("\n);").expect("its end") + 3;
    let dir = tempfile::tempdir().unwrap();
    let guard = dir.path().join("guard.rs");
    let prelude = "#![feature(no_core, rustc_attrs, decl_macro)]\n#![no_core]\n\
                   #[rustc_builtin_macro]\nmacro compile_error($msg:expr $(,)?) { /* built in */ }\n";
    fs::write(&guard, format!("{prelude}{}", &lib[start..end])).unwrap();
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let build = |target: &str| {
        Command::new(&rustc)
            .args([
                "--edition",
                "2021",
                "--crate-type",
                "lib",
                "--emit",
                "metadata",
            ])
            .args(["--target", target, "-A", "internal_features"])
            .arg("--out-dir")
            .arg(dir.path())
            .arg(&guard)
            // Feature gates on a stable compiler, for this check only.
            .env("RUSTC_BOOTSTRAP", "1")
            .output()
            .unwrap()
    };
    let out = build("x86_64-unknown-freebsd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.starts_with("error: quiverdb-follower supports Linux only (it uses sync_file_range(2) and Linux fsync semantics); build it on Linux\n"),
        "{err}"
    );
    let out = build("x86_64-unknown-linux-gnu");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
