//! The real QuiverDB 1.2.6 leader (and its 1.3-alpha follower daemon), built
//! by `../shared/peers/build-quiverdb`, as the other end of tests. Never
//! linked: run as processes.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The folder holding `quiverdb` and `quiverdb-follower`: `$QUIVERDB_PEER_BIN`
/// (set by .ci/run), else what the build script prints. `None` (with a note
/// on stderr) when neither works; under `CI` that is a failure instead,
/// since a skipped interoperability test proves nothing.
pub fn peer_bin() -> Option<PathBuf> {
    let found = std::env::var_os("QUIVERDB_PEER_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/build-quiverdb");
            let out = Command::new(&script).stderr(Stdio::null()).output().ok()?;
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
        })
        .filter(|d| d.join("quiverdb").is_file());
    if found.is_none() {
        let why = "the QuiverDB peer is not available: set QUIVERDB_PEER_BIN or run ../shared/peers/build-quiverdb";
        if std::env::var_os("CI").is_some() {
            panic!("{why} (CI is set, so this test may not be skipped)");
        }
        eprintln!("SKIPPED: {why}");
    }
    found
}

pub struct Peer {
    pub bin: PathBuf,
}

impl Peer {
    pub fn get() -> Option<Peer> {
        peer_bin().map(|bin| Peer { bin })
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin.join("quiverdb"));
        c.args(args).stdin(Stdio::null());
        c
    }

    /// Run `quiverdb ARGS` and require success.
    pub fn run(&self, args: &[&str]) -> Output {
        let o = self.cmd(args).output().unwrap();
        assert!(
            o.status.success(),
            "quiverdb {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    pub fn db_init(&self, db: &Path, buckets: u32) {
        self.run(&[
            "db-init",
            "--path",
            s(db),
            "--buckets",
            &buckets.to_string(),
        ]);
    }

    pub fn last_lsn(&self, db: &Path) -> u64 {
        let o = self.run(&["cdc-last-lsn", "--path", s(db)]);
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    }

    /// `n` writer sessions (each one `db-put` or `db-del` process): a
    /// deterministic mix over 40 keys with inline and overflow values.
    pub fn sessions(&self, db: &Path, n: u32, seed: u32) {
        for i in 0..n {
            let x = (i.wrapping_add(seed).wrapping_mul(2_654_435_761)) >> 7;
            let key = format!("key-{}", x % 40);
            if x % 5 == 0 {
                // Deleting a missing key fails: not our concern.
                let _ = self
                    .cmd(&["db-del", "--path", s(db), "--key", &key])
                    .output();
            } else {
                let len = if x % 3 == 0 {
                    1500 + (x % 5000) as usize
                } else {
                    10 + (x % 90) as usize
                };
                let v: String = (0..len)
                    .map(|j| (b'a' + ((j as u32 + x) % 26) as u8) as char)
                    .collect();
                self.run(&["db-put", "--path", s(db), "--key", &key, "--value", &v]);
            }
        }
    }

    /// `db-scan --json`, entries sorted (its order is not stable).
    pub fn scan(&self, db: &Path) -> Vec<String> {
        self.try_scan(db)
            .unwrap_or_else(|e| panic!("db-scan {}: {e}", db.display()))
    }

    /// As [`Peer::scan`], or QuiverDB's error message.
    pub fn try_scan(&self, db: &Path) -> Result<Vec<String>, String> {
        let o = self
            .cmd(&["db-scan", "--path", s(db), "--json"])
            .output()
            .unwrap();
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("")
                .to_string());
        }
        let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let inner = text.trim_start_matches('[').trim_end_matches(']');
        let mut v: Vec<String> = inner
            .split("},{")
            .map(|e| e.trim_matches(|c| c == '{' || c == '}').to_string())
            .filter(|e| !e.is_empty())
            .collect();
        v.sort();
        Ok(v)
    }

    /// QuiverDB's own reader sees the same keys and values, and `dir` and
    /// every data segment are byte-identical.
    pub fn assert_equal(&self, leader: &Path, follower: &Path) {
        let (l, f) = (self.scan(leader), self.scan(follower));
        assert!(
            !l.is_empty(),
            "the leader is empty: the test proves nothing"
        );
        let differ = l.iter().filter(|e| !f.contains(e)).count()
            + f.iter().filter(|e| !l.contains(e)).count();
        assert!(
            differ == 0,
            "db-scan differs in {differ} entries ({} leader keys, {} follower keys)",
            l.len(),
            f.len()
        );
        assert!(
            std::fs::read(leader.join("dir")).unwrap()
                == std::fs::read(follower.join("dir")).unwrap(),
            "dir differs"
        );
        assert_segments_equal(leader, follower);
    }
}

pub fn assert_segments_equal(leader: &Path, follower: &Path) {
    let (l, f) = (
        crate::common::segment_files(leader),
        crate::common::segment_files(follower),
    );
    assert_eq!(l.len(), f.len(), "segment counts differ");
    for ((n, a), (_, b)) in l.iter().zip(f.iter()) {
        assert!(
            a == b,
            "{n} differs ({} vs {} bytes, first difference at {:?})",
            a.len(),
            b.len(),
            a.iter().zip(b.iter()).position(|(x, y)| x != y)
        );
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every page LSN of a database's segments (4 KiB pages), by page id.
pub fn page_lsns(db: &Path) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for (_, seg) in crate::common::segment_files(db) {
        for p in seg.chunks(4096) {
            out.push(quiverdb_follower::format::page::v2_page_lsn(p));
        }
    }
    out
}

/// The follower's complete LSN, as `qdb-ckpt` prints it.
pub fn ckpt(db: &Path) -> u64 {
    let o = crate::common::run("qdb-ckpt", &["--path", s(db)], b"");
    assert!(o.status.success(), "{}", crate::common::stderr(&o));
    crate::common::stdout(&o).trim().parse().unwrap()
}

/// The long-lived writer of issue 9 "Done when" 2: one `Db::open`, then
/// `OPS` puts and deletes over 97 keys with 2–14 KiB values (overflow
/// chains: several page records each, so the WAL passes its 8 MiB rotation
/// size every few hundred ops). It counts the WAL truncations it sees
/// after each op (the file got shorter) and prints `rotations N`.
const WRITER_MAIN: &str = r#"
use std::path::Path;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let root = Path::new(&a[1]);
    let ops: u64 = a[2].parse().expect("ops");
    let wal = root.join("wal-000001.log");
    let len = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let mut db = QuiverDB::Db::open(root).expect("Db::open");
    let (mut last, mut rotations) = (len(), 0u32);
    for i in 0..ops {
        let key = format!("key-{}", (i * 31) % 97);
        if i % 9 == 4 {
            db.del(key.as_bytes()).expect("del");
        } else {
            let n = 2048 + ((i * 7919) % 12288) as usize;
            let v: Vec<u8> = (0..n).map(|j| b'a' + ((i as usize + j) % 26) as u8).collect();
            db.put(key.as_bytes(), &v).expect("put");
        }
        let now = len();
        if now < last {
            rotations += 1;
        }
        last = now;
    }
    println!("rotations {rotations}");
}
"#;

/// Build (once, then cached) the writer above on the QuiverDB library from
/// the peer's own source, offline with the peer's Cargo.lock, in the
/// peer's target folder so its compiled dependencies are reused. `None`
/// (skip, or a failure under `CI`) when the peer source is not there.
pub fn long_lived_writer(peer: &Peer) -> Option<PathBuf> {
    let src = peer.bin.parent()?.parent()?.to_path_buf();
    if !src.join("Cargo.lock").is_file() || !src.join("src/db.rs").is_file() {
        let why = format!("no QuiverDB source beside {}", peer.bin.display());
        if std::env::var_os("CI").is_some() {
            panic!("{why} (CI is set, so this test may not be skipped)");
        }
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let proj = src.join("target/qdb-peer-writer");
    let bin = src.join("target/release/qdb-peer-writer");
    let manifest = format!(
        "[package]\nname = \"qdb-peer-writer\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
         [dependencies]\nQuiverDB = {{ path = {:?} }}\n\n[workspace]\n",
        src.display().to_string()
    );
    let main_rs = proj.join("src/main.rs");
    // Rebuilt only when this source changes (cargo decides the rest).
    let fresh = bin.is_file()
        && std::fs::read_to_string(&main_rs).ok().as_deref() == Some(WRITER_MAIN)
        && std::fs::read_to_string(proj.join("Cargo.toml")).ok() == Some(manifest.clone());
    if !fresh {
        std::fs::create_dir_all(proj.join("src")).unwrap();
        std::fs::write(proj.join("Cargo.toml"), &manifest).unwrap();
        std::fs::copy(src.join("Cargo.lock"), proj.join("Cargo.lock")).unwrap();
        std::fs::write(&main_rs, WRITER_MAIN).unwrap();
        let o = Command::new(env!("CARGO"))
            .args(["build", "--release", "--offline", "--quiet"])
            .current_dir(&proj)
            .env("CARGO_TARGET_DIR", src.join("target"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            o.status.success() && bin.is_file(),
            "building the QuiverDB writer: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Some(bin)
}
