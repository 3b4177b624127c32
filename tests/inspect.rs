//! qdb-inspect and `qdb-apply --buckets`, run as real processes against the
//! QuiverDB 1.2.5 fixtures.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use quiverdb_follower::format::dir::Directory;
use quiverdb_follower::format::kv::{self, KvPage};
use quiverdb_follower::format::layout::*;
use quiverdb_follower::format::page;
use quiverdb_follower::format::wal;
use quiverdb_follower::inspect::sha256;
use quiverdb_follower::{ApplyOptions, Follower, Plain, SessionStats};
use quiverdb_follower::{DbLock, FileIo, Fs, OpenMode, StdFs};

const APPLY: &str = env!("CARGO_BIN_EXE_qdb-apply");
const INSPECT: &str = env!("CARGO_BIN_EXE_qdb-inspect");

/// Streams that hold the leader's whole history: after them the follower's
/// pages equal the leader's.
const COMPLETE: [&str; 8] = [
    "c01-one-put",
    "c02-overflow",
    "c03-churn",
    "c04-ps16k",
    "c05-ps8k",
    "c09-resume",
    "c10-unknown-type",
    "c11-chains",
];
/// Streams that hold a prefix of the leader's history.
const PARTIAL: [&str; 2] = ["c07-partial-tail", "c08-bad-crc"];

fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/quiverdb-1.2.5")
        .join(case)
}

/// A number field of case.json (flat enough to need no JSON parser).
fn case_number(case: &str, field: &str) -> u64 {
    let text = fs::read_to_string(fixture(case).join("case.json")).unwrap();
    let at = text.find(&format!("\"{field}\": ")).unwrap() + field.len() + 4;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn buckets(case: &str) -> String {
    case_number(case, "buckets").to_string()
}

fn run(bin: &str, args: &[&str], stdin: Option<&Path>) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args).env_remove("RUST_LOG");
    cmd.stdin(match stdin {
        Some(p) => Stdio::from(fs::File::open(p).unwrap()),
        None => Stdio::null(),
    });
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Apply a case's stream(s) to `db`, with `extra` flags; returns the exit
/// status of the last run.
fn apply(db: &Path, case: &str, extra: &[&str]) -> Option<i32> {
    let streams: &[&str] = if case == "c09-resume" {
        &["part1.wal", "part2.wal"]
    } else {
        &["stream.wal"]
    };
    let mut status = None;
    for s in streams {
        let mut args = vec!["--path", db.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = run(APPLY, &args, Some(&fixture(case).join(s)));
        status = out.status.code();
    }
    status
}

fn inspect(db: &Path, cmd: &str, extra: &[&str]) -> Output {
    let mut args = vec![cmd, "--path", db.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(INSPECT, &args, None)
}

fn ok(out: Output) -> Vec<u8> {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}\nstdout: {}",
        text(&out.stderr),
        text(&out.stdout)
    );
    out.stdout
}

/// One line of scan.jsonl.
struct ScanLine {
    key: Vec<u8>,
    len: usize,
    sha: String,
    value_hex: Option<String>,
    line: String,
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!("\"{name}\":"))? + name.len() + 3;
    let rest = line[at..].trim_start_matches('"');
    Some(&rest[..rest.find(['"', ',', '}']).unwrap()])
}

fn scan_lines(case: &str) -> Vec<ScanLine> {
    fs::read_to_string(fixture(case).join("leader/scan.jsonl"))
        .unwrap()
        .lines()
        .map(|l| ScanLine {
            key: quiverdb_follower::inspect::parse_hex(field(l, "key_hex").unwrap()).unwrap(),
            len: field(l, "len").unwrap().parse().unwrap(),
            sha: field(l, "sha256").unwrap().to_string(),
            value_hex: field(l, "value_hex").map(str::to_string),
            line: format!("{l}\n"),
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn apply_with_buckets_reproduces_the_leaders_dir() {
    let tmp = tempfile::tempdir().unwrap();
    for case in COMPLETE {
        let db = tmp.path().join(case);
        assert_eq!(apply(&db, case, &["--buckets", &buckets(case)]), Some(0));
        assert_eq!(
            fs::read(db.join("dir")).unwrap(),
            fs::read(fixture(case).join("leader/dir")).unwrap(),
            "{case}: DIR/dir differs from leader/dir"
        );
        assert!(!db.join("dir.tmp").exists());
        // Through that dir, the follower lists exactly what the leader's db-scan listed...
        assert_eq!(
            text(&ok(inspect(&db, "dump", &[]))),
            fs::read_to_string(fixture(case).join("leader/scan.jsonl")).unwrap(),
            "{case}: dump differs from leader/scan.jsonl"
        );
        // ... and is clean.
        let report = text(&ok(inspect(&db, "check", &[])));
        assert!(
            report.ends_with("result: clean (0 warnings)\n"),
            "{case}: {report}"
        );
    }
}

#[test]
fn rebuild_dir_on_a_plain_follower_reproduces_the_leaders_dir() {
    let tmp = tempfile::tempdir().unwrap();
    for case in COMPLETE {
        let db = tmp.path().join(case);
        assert_eq!(apply(&db, case, &[]), Some(0));
        assert!(
            !db.join("dir").exists(),
            "without --buckets dir is left alone"
        );
        let leader_dir = fs::read(fixture(case).join("leader/dir")).unwrap();
        let b = buckets(case);
        // Without a dir, dump --buckets walks inferred heads: the same keys.
        assert_eq!(
            text(&ok(inspect(&db, "dump", &["--buckets", &b]))),
            fs::read_to_string(fixture(case).join("leader/scan.jsonl")).unwrap(),
            "{case}"
        );
        let out = text(&ok(inspect(&db, "rebuild-dir", &["--buckets", &b])));
        assert!(out.starts_with(&format!("dir: {b} buckets, ")), "{out}");
        assert!(out.contains("(new)"), "{out}");
        assert_eq!(fs::read(db.join("dir")).unwrap(), leader_dir, "{case}");
        // Again, taking the bucket count from the dir: nothing changes.
        let out = text(&ok(inspect(&db, "rebuild-dir", &[])));
        assert!(out.contains("(0 heads changed)"), "{out}");
        assert_eq!(fs::read(db.join("dir")).unwrap(), leader_dir, "{case}");
    }
}

#[test]
fn dump_by_page_scan_is_the_oracle_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("c03");
    assert_eq!(apply(&db, "c03-churn", &[]), Some(0));
    let scan = fs::read_to_string(fixture("c03-churn").join("leader/scan.jsonl")).unwrap();
    let out = inspect(&db, "dump", &[]);
    assert_eq!(text(&ok(out.clone())), scan);
    assert!(
        text(&out.stderr).contains("page-scan oracle"),
        "{}",
        text(&out.stderr)
    );
    // c11 has keys with records on two pages of one chain, not in id order:
    // there the oracle and QuiverDB's reader disagree, as documented.
    let db = tmp.path().join("c11");
    assert_eq!(apply(&db, "c11-chains", &[]), Some(0));
    let scan = fs::read_to_string(fixture("c11-chains").join("leader/scan.jsonl")).unwrap();
    assert_ne!(text(&ok(inspect(&db, "dump", &["--scan"]))), scan);
    assert_eq!(text(&ok(inspect(&db, "dump", &["--buckets", "4"]))), scan);
}

#[test]
fn dump_values_prints_every_value() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("c02");
    assert_eq!(apply(&db, "c02-overflow", &["--buckets", "64"]), Some(0));
    let out = text(&ok(inspect(&db, "dump", &["--values"])));
    let lines: Vec<&str> = out.lines().collect();
    let scan = scan_lines("c02-overflow");
    assert_eq!(lines.len(), scan.len());
    for (l, s) in lines.iter().zip(&scan) {
        let v = quiverdb_follower::inspect::parse_hex(field(l, "value_hex").unwrap()).unwrap();
        assert_eq!((v.len(), hex(&sha256(&v))), (s.len, s.sha.clone()));
        if s.value_hex.is_some() {
            assert_eq!(format!("{l}\n"), s.line);
        }
    }
    // The 20 KiB overflow value of "mid" is there in full.
    assert!(scan.iter().any(|s| s.key == b"mid" && s.len == 20480));
}

#[test]
fn get_finds_values_through_the_dir() {
    let tmp = tempfile::tempdir().unwrap();
    for case in ["c02-overflow", "c03-churn", "c04-ps16k", "c11-chains"] {
        let db = tmp.path().join(case);
        assert_eq!(apply(&db, case, &["--buckets", &buckets(case)]), Some(0));
        let scan = scan_lines(case);
        // Short and long values, overflow ones, the first and last keys.
        let mut picks: Vec<&ScanLine> = vec![&scan[0], &scan[scan.len() - 1]];
        picks.extend(scan.iter().filter(|s| s.len > 4096).take(2));
        picks.extend(scan.iter().filter(|s| s.len <= 64).take(2));
        picks.extend(scan.iter().step_by(17));
        for s in picks {
            let key = hex(&s.key);
            let v = ok(inspect(&db, "get", &["--hex", &key]));
            assert_eq!(
                (v.len(), hex(&sha256(&v))),
                (s.len, s.sha.clone()),
                "{case} {key}"
            );
            if let Some(vh) = &s.value_hex {
                assert_eq!(&hex(&v), vh);
                assert_eq!(
                    text(&ok(inspect(&db, "get", &["--hex", &key, "--json"]))),
                    s.line
                );
            }
            let by_scan = ok(inspect(&db, "get", &["--hex", &key, "--scan"]));
            assert_eq!(hex(&sha256(&by_scan)), s.sha, "{case} {key} --scan");
        }
    }
    // Text keys, and a key that is not there.
    let db = tmp.path().join("c02-overflow");
    assert_eq!(ok(inspect(&db, "get", &["k05"])), b"value-5-updated");
    let out = inspect(&db, "get", &["k03"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(text(&out.stderr), "error: key \"k03\" not found\n");
    let out = inspect(&db, "get", &["--hex", "6"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn get_without_a_dir_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("c01");
    assert_eq!(apply(&db, "c01-one-put", &[]), Some(0));
    let out = inspect(&db, "get", &["alpha"]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("rebuild-dir"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1);
    assert_eq!(ok(inspect(&db, "get", &["alpha", "--buckets", "64"])), b"1");
    assert_eq!(ok(inspect(&db, "get", &["alpha", "--scan"])), b"1");
}

#[test]
fn pages_lists_every_page() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("c01");
    assert_eq!(apply(&db, "c01-one-put", &[]), Some(0));
    assert_eq!(
        text(&ok(inspect(&db, "pages", &[]))),
        "id\ttype\tlsn\tnext\tused_slots\n0\tkv\t1\tnone\t1\n"
    );
    assert_eq!(
        text(&ok(inspect(&db, "pages", &["--json"]))),
        "{\"id\":0,\"type\":\"kv\",\"lsn\":1,\"next\":null,\"used_slots\":1}\n"
    );
    let db = tmp.path().join("c11");
    assert_eq!(apply(&db, "c11-chains", &[]), Some(0));
    let out = text(&ok(inspect(&db, "pages", &[])));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 17);
    assert_eq!(lines[1], "0\tkv\t203\t5\t10");
    assert_eq!(lines[8], "7\toverflow\t104\t8\t-");
    assert_eq!(lines[9], "8\toverflow\t105\tnone\t-");
}

#[test]
fn partial_histories_incremental_dir_equals_rebuild() {
    let tmp = tempfile::tempdir().unwrap();
    for (case, status) in [("c07-partial-tail", 0), ("c08-bad-crc", 1)] {
        let inc = tmp.path().join(format!("{case}-inc"));
        let plain = tmp.path().join(format!("{case}-plain"));
        assert_eq!(apply(&inc, case, &["--buckets", "1024"]), Some(status));
        assert_eq!(apply(&plain, case, &[]), Some(status));
        ok(inspect(&plain, "rebuild-dir", &["--buckets", "1024"]));
        let dir = fs::read(inc.join("dir")).unwrap();
        assert_eq!(dir, fs::read(plain.join("dir")).unwrap(), "{case}");
        // A prefix of the history: not the leader's final heads.
        assert_ne!(dir, fs::read(fixture(case).join("leader/dir")).unwrap());
        let report = text(&ok(inspect(&inc, "check", &[])));
        assert!(report.ends_with("result: clean (0 warnings)\n"), "{report}");
        // The page-scan oracle and the dir walk agree on these followers.
        assert_eq!(
            ok(inspect(&inc, "dump", &[])),
            ok(inspect(&inc, "dump", &["--scan"]))
        );
        // With the leader's final dir copied in, QuiverDB's db-scan fails at
        // "page 235 not allocated" (fixtures README); so do we.
        fs::copy(fixture(case).join("leader/dir"), plain.join("dir")).unwrap();
        let out = inspect(&plain, "dump", &[]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("reaches page 235, which cannot be read (not allocated"),
            "{}",
            text(&out.stderr)
        );
        let out = inspect(&plain, "check", &[]);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out.stdout)
            .contains("damage: dir head of bucket 0 links to page 235, beyond meta.next_page_id"));
    }
}

/// The follower exactly as QuiverDB 1.2.5's wal-apply left it (expected/).
fn expected_follower(case: &str, db: &Path) {
    fs::create_dir_all(db).unwrap();
    let exp = fixture(case).join("expected");
    fs::copy(exp.join("meta"), db.join("meta")).unwrap();
    for e in fs::read_dir(&exp).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if let Some(seg) = name.strip_suffix(".zst") {
            let z = fs::read(exp.join(&name)).unwrap();
            fs::write(db.join(seg), zstd::decode_all(&z[..]).unwrap()).unwrap();
        }
    }
}

#[test]
fn check_is_clean_on_quiverdb_followers() {
    let tmp = tempfile::tempdir().unwrap();
    for case in COMPLETE.iter().chain(&PARTIAL) {
        let db = tmp.path().join(case);
        expected_follower(case, &db);
        let out = ok(inspect(&db, "check", &[]));
        let report = text(&out);
        assert!(report.contains("chains: not checked"), "{report}");
        assert!(report.contains("\nresult: clean ("), "{case}: {report}");
        let out = ok(inspect(&db, "check", &["--buckets", &buckets(case)]));
        let report = text(&out);
        assert!(report.contains("dir: none; heads inferred"), "{report}");
        if *case == "c08-bad-crc" {
            // 1.x leaves last_lsn at 0 after the CRC abort.
            assert!(report.contains("warning: pages carry LSNs up to 595, beyond meta.last_lsn 0"));
        } else {
            assert!(
                report.ends_with("result: clean (0 warnings)\n"),
                "{case}: {report}"
            );
        }
    }
}

/// A c-case follower with a dir, to damage.
fn damaged_copy(tmp: &Path, case: &str, name: &str) -> PathBuf {
    let db = tmp.join(name);
    assert_eq!(apply(&db, case, &["--buckets", &buckets(case)]), Some(0));
    db
}

fn edit_page(db: &Path, ps: usize, id: usize, f: impl FnOnce(&mut Vec<u8>)) {
    let seg = db.join("data-000001.p1seg");
    let mut b = fs::read(&seg).unwrap();
    let mut p = b[id * ps..(id + 1) * ps].to_vec();
    f(&mut p);
    b[id * ps..(id + 1) * ps].copy_from_slice(&p);
    fs::write(&seg, b).unwrap();
}

fn read_page(db: &Path, ps: usize, id: usize) -> Vec<u8> {
    fs::read(db.join("data-000001.p1seg")).unwrap()[id * ps..(id + 1) * ps].to_vec()
}

fn damage_report(db: &Path) -> String {
    let out = inspect(db, "check", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("is damaged"),
        "{err}"
    );
    text(&out.stdout)
}

#[test]
fn check_reports_injected_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let ps = 4096;

    // A flipped byte in a page.
    let db = damaged_copy(tmp.path(), "c03-churn", "flip");
    edit_page(&db, ps, 17, |p| p[1000] ^= 0x40);
    let r = damage_report(&db);
    assert!(r.contains("damage: page 17: CRC mismatch (stored "), "{r}");

    // A truncated segment.
    let db = damaged_copy(tmp.path(), "c03-churn", "trunc");
    let seg = db.join("data-000001.p1seg");
    let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(290 * 4096 + 100).unwrap();
    let r = damage_report(&db);
    assert!(
        r.contains("damage: data-000001.p1seg is 1187940 bytes, but meta.next_page_id 298 needs 1220608: pages 290..297 are cut off"),
        "{r}"
    );

    // A corrupt dir CRC.
    let db = damaged_copy(tmp.path(), "c03-churn", "dircrc");
    let mut d = fs::read(db.join("dir")).unwrap();
    d[16] ^= 1;
    fs::write(db.join("dir"), &d).unwrap();
    let r = damage_report(&db);
    assert!(r.contains("damage: dir: CRC mismatch"), "{r}");
    // rebuild-dir repairs it.
    ok(inspect(&db, "rebuild-dir", &[]));
    ok(inspect(&db, "check", &[]));

    // A dir head pointing at an overflow page.
    let db = damaged_copy(tmp.path(), "c02-overflow", "head");
    let dir = Directory::parse(&fs::read(db.join("dir")).unwrap()).unwrap();
    let b = kv::bucket_of(b"k00", 64) as usize;
    let ovf = (0..43)
        .find(|&i| kv::parse_overflow(&read_page(&db, ps, i)).is_ok())
        .unwrap() as u64;
    let mut bad = dir.clone();
    bad.heads[b] = ovf;
    fs::write(db.join("dir"), bad.encode()).unwrap();
    let r = damage_report(&db);
    assert!(
        r.contains(&format!("damage: dir head of bucket {b} reaches page {ovf}, which is an OVERFLOW page, not a KV_RH page")),
        "{r}"
    );
    let out = inspect(&db, "get", &["k00"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!(
            "the chain of bucket {b} reaches page {ovf}, which is an OVERFLOW page, not a KV_RH page"
        )),
        "{}",
        text(&out.stderr)
    );

    // An overflow chain shorter than its placeholder says.
    let db = damaged_copy(tmp.path(), "c02-overflow", "ovf");
    let (kv_id, head) = (0..43)
        .find_map(|i| {
            let p = read_page(&db, ps, i);
            let kv = KvPage::parse(&p).ok()?;
            let ph = kv
                .entries()
                .find_map(|e| kv::placeholder(e.unwrap().value))?;
            Some((i, ph.head))
        })
        .unwrap();
    edit_page(&db, ps, head as usize, |p| {
        let len = le_u16(p, PAGE_OFF_DATA_START) - 1;
        p[PAGE_OFF_DATA_START..PAGE_OFF_DATA_START + 2].copy_from_slice(&len.to_le_bytes());
        let lsn = le_u64(p, PAGE_OFF_LSN);
        page::commit_stamp(p, lsn);
    });
    let r = damage_report(&db);
    assert!(
        r.contains(&format!("damage: page {kv_id}, key 6d6964: overflow chain from page {head} ends after 20479 bytes, short of the placeholder's total_len 20480")),
        "{r}"
    );
    assert_eq!(inspect(&db, "dump", &[]).status.code(), Some(1));

    // A chain that loops: c11's chain 4 -> 2 -> 9 -> 13, its tail relinked to its head.
    let db = damaged_copy(tmp.path(), "c11-chains", "cycle");
    edit_page(&db, ps, 13, |p| {
        p[PAGE_OFF_NEXT..PAGE_OFF_NEXT + 8].copy_from_slice(&4u64.to_le_bytes());
        let lsn = le_u64(p, PAGE_OFF_LSN);
        page::commit_stamp(p, lsn);
    });
    let r = damage_report(&db);
    assert!(r.contains(" loops back to page 4"), "{r}");
    assert!(
        r.contains("damage: 1 buckets have no head: their pages link in a cycle"),
        "{r}"
    );
    let out = inspect(&db, "dump", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("loops back to page 4"));
}

#[test]
fn apply_refuses_a_dir_with_another_bucket_count() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("c01");
    assert_eq!(apply(&db, "c01-one-put", &["--buckets", "64"]), Some(0));
    let before = fs::read(db.join("dir")).unwrap();
    let out = run(
        APPLY,
        &["--path", db.to_str().unwrap(), "--buckets", "128"],
        Some(&fixture("c01-one-put").join("stream.wal")),
    );
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    assert!(
        err.contains("holds 64 buckets, but 128 were asked for"),
        "{err}"
    );
    assert_eq!(fs::read(db.join("dir")).unwrap(), before);
    // rebuild-dir refuses too, unless forced.
    let out = inspect(&db, "rebuild-dir", &["--buckets", "128"]);
    assert_eq!(out.status.code(), Some(3));
    ok(inspect(
        &db,
        "rebuild-dir",
        &["--buckets", "128", "--force"],
    ));
    let d = Directory::parse(&fs::read(db.join("dir")).unwrap()).unwrap();
    assert_eq!(d.buckets(), 128);
    assert_eq!(d.heads[69], 0, "alpha is in bucket 69 of 128 (spec §11.1)");
}

#[test]
fn read_only_commands_work_while_an_applier_holds_the_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("c02");
    assert_eq!(apply(&db, "c02-overflow", &["--buckets", "64"]), Some(0));
    let _lock = DbLock::acquire(&db, false).unwrap();
    ok(inspect(&db, "check", &[]));
    ok(inspect(&db, "dump", &[]));
    ok(inspect(&db, "pages", &[]));
    assert_eq!(ok(inspect(&db, "get", &["k00"])), b"value-0");
    let out = inspect(&db, "rebuild-dir", &["--buckets", "64"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains("is locked by another process"));
}

/// A stream of KV pages built with the library's encoders.
fn stream(pages: &[(u64, u64, Vec<u8>)]) -> Vec<u8> {
    let mut s = wal::stream_header().to_vec();
    for (lsn, id, p) in pages {
        wal::encode_record(&mut s, WAL_TYPE_PAGE_IMAGE, *lsn, *id, p);
    }
    s
}

fn apply_bytes(db: &Path, tmp: &Path, bytes: &[u8], buckets: &str) {
    let f = tmp.join("s.wal");
    fs::write(&f, bytes).unwrap();
    let out = run(
        APPLY,
        &["--path", db.to_str().unwrap(), "--buckets", buckets],
        Some(&f),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn ambiguous_heads_keep_the_current_head_across_restarts() {
    // Two keys of one bucket (of 4); a tail append whose relink arrives in
    // a later session. Between the sessions the bucket has two candidate
    // heads: page 5 (the head) and page 2 (the new tail).
    let b = kv::bucket_of(b"k0", 4);
    let k2 = (1..)
        .map(|i| format!("k{i}"))
        .find(|k| kv::bucket_of(k.as_bytes(), 4) == b)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let kvp = |id, next, key: &str, lsn| {
        kv::encode_kv_page(4096, id, next, lsn, &[(key.as_bytes(), b"v")])
    };
    let head = |db: &Path| {
        Directory::parse(&fs::read(db.join("dir")).unwrap())
            .unwrap()
            .heads[b as usize]
    };

    apply_bytes(
        &db,
        tmp.path(),
        &stream(&[(1, 5, kvp(5, NO_PAGE, "k0", 1))]),
        "4",
    );
    assert_eq!(head(&db), 5);
    apply_bytes(
        &db,
        tmp.path(),
        &stream(&[(2, 2, kvp(2, NO_PAGE, &k2, 2))]),
        "4",
    );
    assert_eq!(head(&db), 5, "the current head is kept while ambiguous");
    let r = text(&ok(inspect(&db, "check", &[])));
    assert!(
        r.contains("warning: 1 buckets have several candidate heads"),
        "{r}"
    );
    // A from-scratch rebuild has no current head: equal chains, lowest id.
    let copy = tmp.path().join("copy");
    fs::create_dir(&copy).unwrap();
    for f in ["meta", "data-000001.p1seg"] {
        fs::copy(db.join(f), copy.join(f)).unwrap();
    }
    ok(inspect(&copy, "rebuild-dir", &["--buckets", "4"]));
    assert_eq!(head(&copy), 2);
    // The relink converges both.
    apply_bytes(&db, tmp.path(), &stream(&[(3, 5, kvp(5, 2, "k0", 3))]), "4");
    assert_eq!(head(&db), 5);
    ok(inspect(&db, "rebuild-dir", &["--buckets", "4"]));
    assert_eq!(head(&db), 5);
    assert_eq!(ok(inspect(&db, "get", &[&k2])), b"v");
    // The head emptied and cut out: the tail becomes the head.
    let empty = kv::encode_kv_page(4096, 5, 2, 4, &[]);
    apply_bytes(&db, tmp.path(), &stream(&[(4, 5, empty)]), "4");
    assert_eq!(head(&db), 2);
    assert_eq!(
        inspect(&db, "get", &["k0"]).status.code(),
        Some(1),
        "k0 was deleted with its page"
    );
}

/// Records the durability-relevant steps of an applier.
struct Recorder {
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

struct RecFile {
    inner: Box<dyn FileIo>,
    name: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FileIo for RecFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
        self.inner.read_at(buf, off)
    }
    fn write_all_at(&mut self, buf: &[u8], off: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, off)
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> std::io::Result<u64> {
        self.inner.size()
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        self.log.lock().unwrap().push(format!("sync {}", self.name));
        self.inner.sync_data()
    }
    fn sync_all(&mut self) -> std::io::Result<()> {
        self.log.lock().unwrap().push(format!("sync {}", self.name));
        self.inner.sync_all()
    }
}

impl Fs for Recorder {
    fn open(&self, path: &Path, mode: OpenMode) -> std::io::Result<Box<dyn FileIo>> {
        Ok(Box::new(RecFile {
            inner: StdFs.open(path, mode)?,
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            log: self.log.clone(),
        }))
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        StdFs.read(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        let name = to.file_name().unwrap().to_string_lossy();
        self.log.lock().unwrap().push(format!("rename {name}"));
        StdFs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        StdFs.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        StdFs.sync_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        StdFs.create_dir_all(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        StdFs.exists(path)
    }
}

#[test]
fn dir_is_replaced_after_the_pages_are_durable_and_before_meta() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let fs = std::sync::Arc::new(Recorder { log: log.clone() });
    // One commit, at the end of the stream.
    let opts = ApplyOptions {
        buckets: Some(64),
        batch_interval: std::time::Duration::from_secs(3600),
        ..ApplyOptions::default()
    };
    let mut f = Follower::open(fs, &db, opts.clone()).unwrap();
    let stream = fs::read(fixture("c02-overflow").join("stream.wal")).unwrap();
    f.apply(Plain(&stream[..]), &mut SessionStats::default())
        .unwrap();
    let log = log.lock().unwrap().clone();
    let at = |what: &str| log.iter().rposition(|l| l == what).unwrap();
    // dir's temporary file: `.dir.` + a random name + `.tmp`.
    let tmp = log
        .iter()
        .rposition(|l| l.starts_with("sync .dir.") && l.ends_with(".tmp"))
        .unwrap();
    assert!(at("sync data-000001.p1seg") < tmp, "{log:?}");
    assert!(tmp < at("rename dir"), "{log:?}");
    assert!(at("rename dir") < at("rename meta"), "{log:?}");
    assert_eq!(
        fs::read(db.join("dir")).unwrap(),
        fs::read(fixture("c02-overflow").join("leader/dir")).unwrap()
    );
    // Nothing changed: applying again leaves dir alone.
    drop(f);
    let log2 = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let fs = std::sync::Arc::new(Recorder { log: log2.clone() });
    let mut f = Follower::open(fs, &db, opts).unwrap();
    f.apply(Plain(&stream[..]), &mut SessionStats::default())
        .unwrap();
    assert!(!log2.lock().unwrap().iter().any(|l| l == "rename dir"));
}
