//! The leader's TCP connection cut at every byte offset, each cut session
//! followed by a complete one, over real 127.0.0.1 sockets.
//!
//! * Compressed streams (gzip and zstd, as `wal-ship --compress` sends them)
//!   go through the real `quiverdb-follower` daemon, one daemon and one
//!   fresh follower per offset (the daemon holds its DB for its lifetime):
//!   that is the only way to see each cut from an empty follower.
//! * Uncompressed streams are thousands of offsets, too many for a daemon
//!   per offset in the CI budget: every offset goes through the daemon's own
//!   session wiring in-process (a real accepted `TcpStream`, `net::pump` into
//!   a bounded `pipe`, `Follower::apply` on its live reader) on a simulated
//!   file system, so that what the follower reported can also be checked
//!   against what a power loss right after the session leaves; and 89
//!   chosen offsets (every field boundary of every record) also go through
//!   the real daemon.
//!
//! A cut is the leader closing its socket (FIN), as when wal-ship dies.
//! After the cut session, meta.last_lsn must be the LSN of the last record
//! the prefix holds completely (for compressed streams: the last record that
//! an independent decoder, flate2's / zstd's stock readers, can decode from
//! the prefix), and the follower exists exactly when the prefix held a
//! complete page image. After the complete session, the follower's meta and
//! segments must equal QuiverDB 1.2.5's byte for byte.

mod child;
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use child::{Daemon, WAIT};
use common::*;
use quiverdb_follower::codec::Compression;
use quiverdb_follower::format::layout::WAL_TYPE_PAGE_IMAGE;
use quiverdb_follower::net::{self, SessionOptions};
use quiverdb_follower::Fs;
use quiverdb_follower::{pipe, Error};
use quiverdb_follower::{ApplyOptions, Follower, SessionStats};
use testkit::fault::{CrashMode, SimFs};
use testkit::leader::{ship, ShipOptions};
use testkit::stream::{check_claims, StreamIndex};

// ---- the real daemon, a fresh one per offset ------------------------------------

/// What an independent decoder (flate2's / zstd's stock readers) gets out of
/// a cut compressed stream before it reports the cut.
fn decodable(compressed: &[u8], c: Compression) -> Vec<u8> {
    let mut r: Box<dyn Read> = match c {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
        Compression::Zstd => match zstd::stream::read::Decoder::new(compressed) {
            Ok(d) => Box::new(d),
            Err(_) => return Vec::new(),
        },
        Compression::None | Compression::Auto => return compressed.to_vec(),
    };
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// (last_lsn, follower created) after applying `decoded` as one session.
fn expect_after(decoded: &[u8]) -> (u64, bool) {
    let idx = StreamIndex::new(decoded);
    let created = idx.records.iter().any(|r| r.rtype == WAL_TYPE_PAGE_IMAGE);
    (idx.max_lsn(), created)
}

/// Cut `wire` (the bytes on the socket: `compress` of `case`'s stream) at
/// each of `offsets`, through a fresh daemon and follower per offset.
/// Returns how many offsets ended at each last_lsn (so callers can check
/// the cuts really spread over the records).
fn daemon_cuts(
    case: &str,
    wire: &[u8],
    compress: Compression,
    offsets: impl IntoIterator<Item = usize>,
) -> std::collections::BTreeMap<u64, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for cut in offsets {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("db");
        let mut d = Daemon::start(&db, &["--decompress", compress.as_str()]);
        let (want, created) = expect_after(&decodable(&wire[..cut], compress));
        let reported = d.session(&wire[..cut]);
        assert_eq!(
            reported, want,
            "{case} {compress} cut {cut}: reported last_lsn"
        );
        assert_eq!(
            db.join("meta").exists(),
            created,
            "{case} {compress} cut {cut}: follower created"
        );
        if created {
            assert_eq!(read_last_lsn(&db), want, "{case} {compress} cut {cut}");
        }
        *seen.entry(want).or_insert(0) += 1;
        let full = d.session(wire);
        assert_eq!(full, StreamIndex::new(&stream(case)).max_lsn());
        // The session's end was logged after its commit: killing the daemon
        // now loses nothing.
        drop(d);
        assert_matches_expected(&db, case);
    }
    seen
}

/// `case`'s stream as `wal-ship --compress c` sends it (one flush per
/// record, the stream finished at the end, so the trailer is cut too).
fn shipped(case: &str, c: Compression) -> Vec<u8> {
    let mut v = Vec::new();
    let o = ShipOptions {
        compress: c,
        ..ShipOptions::default()
    };
    ship(&stream(case), &mut v, o, None).unwrap();
    v
}

#[test]
fn daemon_gzip_and_zstd_c01_cut_at_every_byte() {
    for (c, file) in [
        (Compression::Gzip, "stream.wal.gz"),
        (Compression::Zstd, "stream.wal.zst"),
    ] {
        // QuiverDB 1.2.5's own wal-ship output (and the test leader's twin).
        let wire = std::fs::read(case("c01-one-put").join(file)).unwrap();
        assert_eq!(wire, shipped("c01-one-put", c));
        let seen = daemon_cuts("c01-one-put", &wire, c, 0..=wire.len());
        eprintln!(
            "c01 {c}: {} cuts, last_lsn -> cuts {seen:?}",
            wire.len() + 1
        );
        assert_eq!(seen.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
    }
}

#[test]
fn daemon_gzip_and_zstd_c10_cut_at_every_byte() {
    // Three records: a page image, an unknown type (its LSN counts), a page image.
    for c in [Compression::Gzip, Compression::Zstd] {
        let wire = shipped("c10-unknown-type", c);
        let seen = daemon_cuts("c10-unknown-type", &wire, c, 0..=wire.len());
        eprintln!(
            "c10 {c}: {} cuts, last_lsn -> cuts {seen:?}",
            wire.len() + 1
        );
        assert_eq!(seen.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    }
}

/// Every field boundary of every record (±1), the whole stream header, and
/// a spread of offsets inside payloads.
fn boundary_offsets(s: &[u8]) -> Vec<usize> {
    let mut v: Vec<usize> = (0..=17).collect();
    for r in &StreamIndex::new(s).records {
        for f in [0, 1, 4, 12, 20, 24, 27, 28, 29, 64] {
            v.push(r.offset + f);
        }
        v.extend([r.end - 1, r.end, r.end + 1]);
    }
    v.extend((0..s.len()).step_by(211));
    v.retain(|&o| o <= s.len());
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn daemon_uncompressed_c10_cut_at_every_field_boundary() {
    let s = stream("c10-unknown-type");
    let offsets = boundary_offsets(&s);
    let n = offsets.len();
    let seen = daemon_cuts("c10-unknown-type", &s, Compression::None, offsets);
    eprintln!("c10 raw through the daemon: {n} cuts, last_lsn -> cuts {seen:?}");
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
}

// ---- every offset of raw streams: the daemon's session wiring in-process --------

/// One session as the daemon runs it: accept the leader's connection,
/// `net::pump` it into a bounded pipe on its own thread, `Follower::apply`
/// the pipe's live reader, then shut the socket down.
fn tcp_session(listener: &TcpListener, f: &mut Follower, bytes: &[u8]) -> Result<u64, Error> {
    let addr = listener.local_addr().unwrap();
    let data = bytes.to_vec();
    let leader = std::thread::spawn(move || {
        let mut c = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        c.set_write_timeout(Some(WAIT)).unwrap();
        let _ = c.write_all(&data);
        // Dropped: FIN, the cut.
    });
    let (mut sock, _) = listener.accept().unwrap();
    let sopts = SessionOptions::default();
    net::configure_stream(&sock, &sopts).unwrap();
    let closer = sock.try_clone().unwrap();
    let (mut w, r) = pipe::pipe(16);
    let pump = std::thread::spawn(move || {
        let stop = AtomicBool::new(false);
        let res = net::pump(&mut sock, &mut w, &sopts, &stop);
        drop(w);
        res
    });
    let mut stats = SessionStats::default();
    let res = f.apply(r, &mut stats);
    let _ = closer.shutdown(Shutdown::Both);
    pump.join().unwrap().unwrap();
    leader.join().unwrap();
    res.map(|()| stats.last_lsn)
}

/// Every offset of `case`'s raw stream over TCP: the cut session, a power
/// loss (what the follower reported must be durable, and claim nothing it
/// does not hold), then a complete session and another power loss, then the
/// durable files must be QuiverDB's.
fn tcp_cut_everywhere(case: &str) {
    let s = stream(case);
    let idx = StreamIndex::new(&s);
    let expected = expected_files(case);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // Only the lock lives here; the follower's files are in the SimFs.
    let root = tmp.path().join("db");
    let opts = || ApplyOptions {
        // Another test's child process can hold a copy of the lock fd
        // between its fork and exec.
        wait_lock: true,
        ..ApplyOptions::default()
    };
    for cut in 0..=s.len() {
        let fs = SimFs::new();
        fs.create_dir_all(&root).unwrap();
        let mut f = Follower::open(Arc::new(fs.clone()), &root, opts()).unwrap();
        let res = tcp_session(&listener, &mut f, &s[..cut]);
        let (want, created) = expect_after(&s[..cut]);
        match res {
            Ok(lsn) => assert_eq!(lsn, want, "{case} cut {cut}"),
            // Only a cut inside the stream header is an error.
            Err(e) => assert!(
                cut < 16
                    && e.is_stream_error()
                    && e.to_string().contains(&format!("after {cut} bytes")),
                "{case} cut {cut}: {e}"
            ),
        }
        assert_eq!(f.meta().is_some(), created, "{case} cut {cut}: created");
        let reported = f.meta().copied();
        drop(f);
        fs.crash(CrashMode::LoseUnsynced);
        let durable = check_claims(&fs, &root, &idx, None)
            .unwrap_or_else(|e| panic!("{case} cut {cut}: {e}"));
        assert_eq!(
            durable, reported,
            "{case} cut {cut}: reported meta is durable"
        );

        let mut f = Follower::open(Arc::new(fs.clone()), &root, opts()).unwrap();
        let lsn = tcp_session(&listener, &mut f, &s).unwrap();
        assert_eq!(lsn, idx.max_lsn());
        drop(f);
        fs.crash(CrashMode::LoseUnsynced);
        for (name, want) in &expected {
            let have = fs.durable_read(&root.join(name));
            assert!(
                have.as_ref() == Some(want),
                "{case} cut {cut}: {name} differs"
            );
        }
    }
}

#[test]
fn tcp_c01_cut_at_every_byte() {
    tcp_cut_everywhere("c01-one-put");
}

#[test]
fn tcp_c10_cut_at_every_byte() {
    tcp_cut_everywhere("c10-unknown-type");
}
