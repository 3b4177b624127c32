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
