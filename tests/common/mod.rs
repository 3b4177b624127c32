//! Shared helpers for the integration tests: fixture access, running the real
//! binaries as child processes, and comparing a follower with expected state.
#![allow(dead_code)]

pub mod prom;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use quiverdb_follower::format::layout::{
    pages_per_segment, META_FILE, META_OFF_LAST_LSN, PAGE_OFF_LSN,
};
use testkit::stream::StreamIndex;

pub mod pki;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quiverdb-1.2.5")
}

pub fn case(name: &str) -> PathBuf {
    fixtures().join(name)
}

pub fn stream(name: &str) -> Vec<u8> {
    fs::read(case(name).join("stream.wal")).unwrap()
}

/// The cases whose stream is complete and whose expected state is the leader's.
pub const COMPLETE_CASES: &[&str] = &[
    "c01-one-put",
    "c02-overflow",
    "c03-churn",
    "c04-ps16k",
    "c05-ps8k",
    "c10-unknown-type",
    "c11-chains",
];

/// Expected follower files of a case: (file name, bytes), meta included.
pub fn expected_files(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = case(name).join("expected");
    let mut out = vec![("meta".to_string(), fs::read(dir.join("meta")).unwrap())];
    let mut segs: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".p1seg.zst"))
        .collect();
    segs.sort();
    for z in segs {
        let bytes = zstd::decode_all(fs::File::open(dir.join(&z)).unwrap()).unwrap();
        out.push((z.trim_end_matches(".zst").to_string(), bytes));
    }
    out
}

/// `expected_files` as a map, by file name.
pub fn expected_map(name: &str) -> std::collections::BTreeMap<String, Vec<u8>> {
    expected_files(name).into_iter().collect()
}

/// Every file of the corpus folders (seeds and regressions of a fuzz
/// target), sorted by path; notes (`*.md`) and missing folders are skipped.
pub fn read_corpus(dirs: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(rd) = fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "md") {
                continue;
            }
            out.push((p.display().to_string(), fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

/// A command for one of our binaries: RUST_LOG and NOTIFY_SOCKET removed
/// (the binary's defaults) unless `env` sets them, stdin null, stderr piped.
pub fn command(name: &str, args: &[&str], env: &[(&str, &str)], stdout: Stdio) -> Command {
    let mut cmd = testkit::child::command(bin(name), args, env);
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped());
    cmd
}

/// The follower's segment files (sorted by name).
pub fn segment_files(db: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<_> = fs::read_dir(db)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("data-") && n.ends_with(".p1seg"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let b = fs::read(db.join(&n)).unwrap();
            (n, b)
        })
        .collect()
}

/// Assert the follower's meta and segments equal the case's expected files, byte for byte.
pub fn assert_matches_expected(db: &Path, name: &str) {
    let want = expected_files(name);
    let mut got = vec![("meta".to_string(), fs::read(db.join("meta")).unwrap())];
    got.extend(segment_files(db));
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want), "{name}: file sets differ");
    for ((n, g), (_, w)) in got.iter().zip(want.iter()) {
        if g != w {
            let first = g.iter().zip(w.iter()).position(|(a, b)| a != b);
            panic!(
                "{name}: {n} differs (got {} bytes, want {}; first difference at {:?})",
                g.len(),
                w.len(),
                first
            );
        }
    }
}

pub fn bin(name: &str) -> PathBuf {
    match name {
        "qdb-apply" => PathBuf::from(env!("CARGO_BIN_EXE_qdb-apply")),
        "qdb-ckpt" => PathBuf::from(env!("CARGO_BIN_EXE_qdb-ckpt")),
        "qdb-ship" => PathBuf::from(env!("CARGO_BIN_EXE_qdb-ship")),
        "qdb-promote" => PathBuf::from(env!("CARGO_BIN_EXE_qdb-promote")),
        "qdb-restore" => PathBuf::from(env!("CARGO_BIN_EXE_qdb-restore")),
        "qdb-unzip" => PathBuf::from(env!("CARGO_BIN_EXE_qdb-unzip")),
        "qdb-recv" => PathBuf::from(env!("CARGO_BIN_EXE_qdb-recv")),
        "quiverdb-follower" => PathBuf::from(env!("CARGO_BIN_EXE_quiverdb-follower")),
        other => panic!("unknown binary {other}"),
    }
}

/// Run a binary with `stdin` bytes; returns its output.
pub fn run(name: &str, args: &[&str], stdin: &[u8]) -> Output {
    run_env(name, args, stdin, &[])
}

pub fn run_env(name: &str, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    testkit::child::run_with_input(testkit::child::command(bin(name), args, env), stdin)
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Assert a failed run printed exactly one line, `error: ...` containing `needle`.
pub fn assert_one_line_error(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "got: {err}");
    assert!(lines[0].contains(needle), "expected {needle:?} in: {err}");
}

/// (lsn, page_id, start offset, end offset) of every complete record of a
/// raw stream (read by `testkit::stream::StreamIndex`).
pub fn records(stream: &[u8]) -> Vec<(u64, u64, usize, usize)> {
    StreamIndex::new(stream)
        .records
        .iter()
        .map(|r| (r.lsn, r.page_id, r.offset, r.end))
        .collect()
}

/// What `wal-ship --since-lsn N` would send from a complete stream: the
/// header, then every record with lsn > N.
pub fn since_lsn(stream: &[u8], n: u64) -> Vec<u8> {
    StreamIndex::new(stream).since(n)
}

pub fn read_last_lsn(db: &Path) -> u64 {
    let m = fs::read(db.join(META_FILE)).unwrap();
    u64::from_le_bytes(
        m[META_OFF_LAST_LSN..META_OFF_LAST_LSN + 8]
            .try_into()
            .unwrap(),
    )
}

/// A 127.0.0.1 port nothing listens on right now (bound, then freed).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `done` every 10 ms until it holds; panic with `what` (and the
/// message from `context`) after `timeout`. Every wait in a test goes through
/// a deadline like this, so a bug fails the test instead of hanging it.
pub fn wait_for(
    what: &str,
    timeout: std::time::Duration,
    context: impl Fn() -> String,
    mut done: impl FnMut() -> bool,
) {
    let end = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A running binary whose stderr lines are collected by a thread, so a test
/// can wait (with a deadline) for log lines while the process runs: a
/// `testkit::child::Child` (its methods through `Deref`) for one of our
/// binaries by name.
pub struct LoggedChild(pub testkit::child::Child);

impl LoggedChild {
    /// Spawn `name` with `args`, RUST_LOG removed (the binary's default
    /// level) unless `env` sets it; stdin and stdout are null.
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> LoggedChild {
        LoggedChild(testkit::child::Child::spawn(testkit::child::command(
            bin(name),
            args,
            env,
        )))
    }
}

impl std::ops::Deref for LoggedChild {
    type Target = testkit::child::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for LoggedChild {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// Run a binary to completion with stdin null, but fail the test (after
/// killing it) if it has not exited within `timeout`: for runs that must end
/// at once, where a bug would otherwise leave a daemon serving forever.
pub fn run_timeout(
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: std::time::Duration,
) -> Output {
    testkit::child::run_timeout(testkit::child::command(bin(name), args, env), timeout)
}

/// `stream` again with every LSN (record and page) moved up by `by`: the
/// same pages rewritten later, as a leader's churn rewrites them.
pub fn restamp(stream: &[u8], by: u64) -> Vec<u8> {
    StreamIndex::new(stream).restamp(by)
}

/// For every page, the highest page LSN among records with lsn <= last_lsn:
/// what a follower claiming last_lsn must hold at least.
pub fn claimed_page_lsns(stream: &[u8], last_lsn: u64) -> std::collections::HashMap<u64, u64> {
    StreamIndex::new(stream).claimed_page_lsns(last_lsn)
}

/// meta.last_lsn (0 without a follower) never claims a page the segments do
/// not hold: each page's on-disk v2 LSN is at least the highest page LSN of
/// the records up to last_lsn (4 KiB pages).
pub fn assert_last_lsn_not_ahead(db: &Path, stream: &[u8]) -> u64 {
    if !db.join("meta").exists() {
        return 0;
    }
    let last = read_last_lsn(db);
    let segs = segment_files(db);
    let per_seg = pages_per_segment(4096);
    for (pid, want) in claimed_page_lsns(stream, last) {
        let (seg, off) = ((pid / per_seg) as usize, (pid % per_seg) as usize * 4096);
        let page = segs.get(seg).and_then(|(_, b)| b.get(off..off + 4096));
        let have =
            page.map(|p| u64::from_le_bytes(p[PAGE_OFF_LSN..PAGE_OFF_LSN + 8].try_into().unwrap()));
        assert!(
            have.is_some_and(|h| h >= want),
            "meta.last_lsn={last} claims page {pid} at lsn {want}, but the follower has {have:?}"
        );
    }
    last
}
