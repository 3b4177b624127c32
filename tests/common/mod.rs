//! Shared helpers for the integration tests: fixture access, running the real
//! binaries as child processes, and comparing a follower with expected state.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
    let mut cmd = Command::new(bin(name));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET");
    for (k, v) in env {
        cmd.env(k, v);
    }
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
    let mut cmd = Command::new(bin(name));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut sin = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // Write on a thread: the child may exit early (errors) and close its stdin.
    let w = std::thread::spawn(move || {
        let _ = sin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    w.join().unwrap();
    out
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

/// (lsn, page_id, start offset, end offset) of every complete record of a raw stream.
pub fn records(stream: &[u8]) -> Vec<(u64, u64, usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 16;
    while pos + 8 <= stream.len() {
        if &stream[pos..pos + 8] == b"P1WAL001" {
            pos += 16;
            continue;
        }
        if pos + 28 > stream.len() {
            break;
        }
        let h = &stream[pos..pos + 28];
        let lsn = u64::from_le_bytes(h[4..12].try_into().unwrap());
        let pid = u64::from_le_bytes(h[12..20].try_into().unwrap());
        let len = u32::from_le_bytes(h[20..24].try_into().unwrap()) as usize;
        if pos + 28 + len > stream.len() {
            break;
        }
        out.push((lsn, pid, pos, pos + 28 + len));
        pos += 28 + len;
    }
    out
}

/// What `wal-ship --since-lsn N` would send from a complete stream: the
/// header, then every record with lsn > N.
pub fn since_lsn(stream: &[u8], n: u64) -> Vec<u8> {
    let mut out = stream[..16].to_vec();
    for (lsn, _, a, b) in records(stream) {
        if lsn > n {
            out.extend_from_slice(&stream[a..b]);
        }
    }
    out
}

pub fn read_last_lsn(db: &Path) -> u64 {
    let m = fs::read(db.join("meta")).unwrap();
    u64::from_le_bytes(m[32..40].try_into().unwrap())
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
/// can wait (with a deadline) for log lines while the process runs.
pub struct LoggedChild {
    pub child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl LoggedChild {
    /// Spawn `name` with `args`, RUST_LOG removed (the binary's default
    /// level) unless `env` sets it; stdin and stdout are null.
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> LoggedChild {
        use std::io::BufRead;
        let mut child = command(name, args, env, Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                match line {
                    Ok(l) => sink.lock().unwrap().push(l),
                    Err(_) => break,
                }
            }
        });
        LoggedChild {
            child,
            lines,
            reader: Some(reader),
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.lines().iter().map(|l| format!("{l}\n")).collect()
    }

    /// How many log lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Wait (up to `timeout`) until `n` lines contain `needle`; returns the n-th.
    pub fn wait_log_n(&self, needle: &str, n: usize, timeout: std::time::Duration) -> String {
        wait_for(
            &format!("{n} log line(s) containing {needle:?}"),
            timeout,
            || format!("stderr so far:\n{}", self.stderr()),
            || self.count(needle) >= n,
        );
        self.lines()
            .into_iter()
            .filter(|l| l.contains(needle))
            .nth(n - 1)
            .unwrap()
    }

    pub fn wait_log(&self, needle: &str, timeout: std::time::Duration) -> String {
        self.wait_log_n(needle, 1, timeout)
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Send `sig` (e.g. libc::SIGTERM) to the child.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill({sig})");
    }

    /// Wait up to `timeout` for the exit (killing the child and failing the
    /// test if it does not come), then for all of stderr.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        let end = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the process did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        status
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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
    use std::io::Read;
    let mut child = command(name, args, env, Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let end = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
            panic!("{name} {args:?} did not exit within {timeout:?}; stderr:\n{err}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `stream` again with every LSN (record and page) moved up by `by`: the
/// same pages rewritten later, as a leader's churn rewrites them.
pub fn restamp(stream: &[u8], by: u64) -> Vec<u8> {
    use quiverdb_follower::format::wal::{self, Next, WalReader};
    let mut out = wal::stream_header().to_vec();
    let mut rd = WalReader::open(stream).unwrap();
    let mut buf = Vec::new();
    while let Next::Record(h, raw) = rd.next_header().unwrap() {
        assert!(rd.read_payload(&h, &raw, &mut buf).unwrap().is_none());
        quiverdb_follower::format::page::commit_stamp(&mut buf, h.lsn + by);
        wal::encode_record(&mut out, h.rtype, h.lsn + by, h.page_id, &buf);
    }
    out
}

/// For every page, the highest page LSN among records with lsn <= last_lsn:
/// what a follower claiming last_lsn must hold at least.
pub fn claimed_page_lsns(stream: &[u8], last_lsn: u64) -> std::collections::HashMap<u64, u64> {
    let mut m = std::collections::HashMap::new();
    for (lsn, pid, a, _) in records(stream) {
        if lsn <= last_lsn {
            let page_lsn = u64::from_le_bytes(stream[a + 28 + 36..a + 28 + 44].try_into().unwrap());
            let e = m.entry(pid).or_insert(0);
            *e = (*e).max(page_lsn);
        }
    }
    m
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
    for (pid, want) in claimed_page_lsns(stream, last) {
        let (seg, off) = ((pid / 8192) as usize, (pid % 8192) as usize * 4096);
        let page = segs.get(seg).and_then(|(_, b)| b.get(off..off + 4096));
        let have = page.map(|p| u64::from_le_bytes(p[36..44].try_into().unwrap()));
        assert!(
            have.is_some_and(|h| h >= want),
            "meta.last_lsn={last} claims page {pid} at lsn {want}, but the follower has {have:?}"
        );
    }
    last
}
