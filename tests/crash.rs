//! The real `quiverdb-follower` daemon killed with SIGKILL at many points
//! while it applies c03-churn (1,191 frames) that this process ships to it
//! the way `wal-ship --compress zstd --follow` does, over 127.0.0.1; each
//! time resumed as an operator would, from the checkpoint file. After each
//! kill the checkpoint file is never ahead of meta.last_lsn, and meta never
//! claims a page the segments do not hold; at the end the follower is
//! byte-identical to QuiverDB 1.2.5's.

mod child;
mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use child::{Daemon, WAIT};
use common::*;
use quiverdb_follower::codec::Compression;
use testkit::leader::{ship, ShipOptions};

/// The daemon as the operator runs it here: zstd from the leader, and a
/// checkpoint file refreshed every 20 ms during a session, not only at its end.
fn start(db: &Path, ckpt: &Path) -> Daemon {
    Daemon::start(
        db,
        &[
            "--decompress",
            "zstd",
            "--checkpoint-file",
            ckpt.to_str().unwrap(),
            "--checkpoint-interval-ms",
            "20",
        ],
    )
}

/// The checkpoint file's value (None while there is none). It is replaced
/// atomically, so it must always hold bare decimal digits.
fn read_ckpt(file: &Path) -> Option<u64> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("{}: {e}", file.display()),
    };
    assert!(
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()),
        "checkpoint file holds {text:?}"
    );
    Some(text.parse().unwrap())
}

/// A sink that notes its length at every flush: wal-ship flushes after the
/// header and after each record, and a zstd block becomes decodable only
/// once it has arrived whole, so flush point i+1 is where the i-th record
/// sent can first be decoded.
#[derive(Default)]
struct Wire {
    bytes: Vec<u8>,
    flushes: Vec<usize>,
}

impl Write for Wire {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.flushes.push(self.bytes.len());
        Ok(())
    }
}

/// c03 after `since`, as `wal-ship --since-lsn since --compress zstd
/// --follow` sends it (never finished), and the LSNs of the records sent.
fn ship_since(s: &[u8], since: u64) -> (Wire, Vec<u64>) {
    let mut w = Wire::default();
    let o = ShipOptions {
        compress: Compression::Zstd,
        flush_every: 1,
        finish: false,
        since_lsn: since,
    };
    let n = ship(s, &mut w, o, None).unwrap();
    let lsns: Vec<u64> = records(s)
        .iter()
        .map(|r| r.0)
        .filter(|&l| l > since)
        .collect();
    assert_eq!(n as usize, lsns.len());
    (w, lsns)
}

#[test]
fn daemon_sigkill_at_random_points_then_resume_from_checkpoint_ends_identical() {
    let s = stream("c03-churn");
    assert_eq!(records(&s).len(), 1191);
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("f");
    let ck = t.path().join("last_lsn");
    let mut rng = testkit::rng::Rng::new(0x2545_F491_4F6C_DD1D);
    let mut next = move |n: u64| rng.below(n);
    const KILLS: usize = 50;
    let mut resumes_from = Vec::new();
    // Kills that left records received but not yet durable (informational).
    let mut behind = 0;
    for i in 0..KILLS {
        // The invariants after a kill (and before the first start).
        let last = assert_last_lsn_not_ahead(&db, &s);
        let ckpt = read_ckpt(&ck).unwrap_or(0);
        assert!(
            ckpt <= last,
            "kill {i}: checkpoint {ckpt} ahead of meta.last_lsn {last}"
        );
        resumes_from.push(ckpt);

        // Resume as an operator would: restart, ship after the checkpoint.
        let mut d = start(&db, &ck);
        let (wire, lsns) = ship_since(&s, ckpt);
        let conn = d.connect();
        // Spread the kills over the whole stream: this session gets up to
        // twice its share of the records left, cut anywhere inside the
        // block of the record after them.
        let left = lsns.len() as u64;
        let k = next(2 * left / (KILLS - i) as u64 + 1).min(left) as usize;
        let (from, to) = (wire.flushes[k], wire.flushes[(k + 1).min(left as usize)]);
        let cut = from + next((to - from) as u64 + 1) as usize;
        let mut pos = 0;
        while pos < cut {
            let n = (1 + next(8 * 1024) as usize).min(cut - pos);
            (&conn).write_all(&wire.bytes[pos..pos + n]).unwrap();
            pos += n;
            if next(4) == 0 {
                std::thread::sleep(Duration::from_micros(next(3000)));
            }
        }
        // Records decodable from what was sent.
        let sent = wire.flushes[1..]
            .iter()
            .take(lsns.len())
            .take_while(|&&f| f <= pos)
            .count();
        if let (true, 0) = (sent > 0, next(2)) {
            // Half the kills land after visible progress (the checkpoint
            // moved past the first record sent), so the resume point moves
            // even on a loaded machine...
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && read_ckpt(&ck).unwrap_or(0) < lsns[0] {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_micros(next(20_000)));
        } else {
            // ...the other half wherever it is, often still applying.
            std::thread::sleep(Duration::from_micros(next(5_000)));
        }
        d.child.kill().unwrap();
        let status = d.child.wait().unwrap();
        assert_eq!(
            status.code(),
            None,
            "kill {i}: it died by the signal; log {:#?}",
            d.all_log()
        );
        drop(conn);
        if sent > 0 && read_last_lsn_or_0(&db) < lsns[sent - 1] {
            behind += 1;
        }
    }
    let last = assert_last_lsn_not_ahead(&db, &s);
    let ckpt = read_ckpt(&ck).unwrap_or(0);
    assert!(
        ckpt <= last,
        "checkpoint {ckpt} ahead of meta.last_lsn {last}"
    );

    // The last resume runs to the end; the leader stays connected (--follow)
    // and the periodic checkpoint reports the end.
    let mut d = start(&db, &ck);
    let (wire, _) = ship_since(&s, ckpt);
    let conn = d.connect();
    (&conn).write_all(&wire.bytes).unwrap();
    let deadline = Instant::now() + WAIT;
    while read_ckpt(&ck) != Some(1191) {
        assert!(
            Instant::now() < deadline,
            "never reached 1191: {:#?}",
            d.all_log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // A clean stop after all those kills.
    d.signal(libc::SIGTERM);
    let status = d.wait_exit();
    assert!(status.success(), "{status}: {:#?}", d.all_log());
    drop(conn);
    assert_matches_expected(&db, "c03-churn");
    assert_eq!(read_ckpt(&ck), Some(1191));

    // The kills really landed at different points of the stream.
    resumes_from.dedup();
    eprintln!(
        "resumed from {} distinct points {resumes_from:?}; {behind} of {KILLS} kills left received records not yet durable",
        resumes_from.len()
    );
    assert!(resumes_from.len() > 10, "resume points: {resumes_from:?}");
}

fn read_last_lsn_or_0(db: &Path) -> u64 {
    if db.join("meta").exists() {
        read_last_lsn(db)
    } else {
        0
    }
}
