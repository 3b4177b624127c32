//! Lone-frame commit latency of the daemon over loopback, against the disk's
//! own commit sequence measured in the same run (see scripts/bench-latency).
//!
//! 1. Reference: N times, what a commit of one page costs on this file
//!    system with the library's own code: write a page into a segment,
//!    fdatasync it (Store::sync), then write_meta (meta to a temp file,
//!    fsync, rename, fsync of the folder).
//! 2. Daemon: starts DAEMON --listen 127.0.0.1:0 on a fresh DB, connects as
//!    a leader, and N times sends ONE page-image record, then polls `meta`
//!    until last_lsn covers it (time from the send to the durable meta), then
//!    pauses PAUSE_MS, as an idle leader's occasional write does.
//!
//! usage: latency DAEMON WORKDIR N PAUSE_MS
//! prints: "reference p50 ... p99 ..." and "lone-frame p50 ... p99 ..." (ms)

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiverdb_follower::format::wal::{self, Next, WalReader};
use quiverdb_follower::format::{layout::WAL_TYPE_PAGE_IMAGE, page};
use quiverdb_follower::{init_db, write_meta, Fs, FsyncPolicy, StdFs, Store};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn report(label: &str, mut v: Vec<f64>) {
    let (p50, p99, max) = (pct(&mut v, 0.5), pct(&mut v, 0.99), pct(&mut v, 1.0));
    println!(
        "{label:<28} p50 {p50:.3} ms   p99 {p99:.3} ms   max {max:.3} ms   (n={})",
        v.len()
    );
}

fn last_lsn(db: &Path) -> u64 {
    match std::fs::read(db.join("meta")) {
        Ok(m) if m.len() >= 40 => u64::from_le_bytes(m[32..40].try_into().unwrap()),
        _ => 0,
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 5 {
        eprintln!("usage: latency DAEMON WORKDIR N PAUSE_MS");
        std::process::exit(2);
    }
    let (daemon, work) = (&a[1], Path::new(&a[2]));
    let n: usize = a[3].parse().expect("N");
    let pause = Duration::from_millis(a[4].parse().expect("PAUSE_MS"));

    // A real 4 KiB page image from the c03 fixture, restamped per LSN.
    let src = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/quiverdb-1.2.5/c03-churn/stream.wal"),
    )
    .expect("fixture stream");
    let mut rd = WalReader::open(&src[..]).unwrap();
    let mut template = Vec::new();
    let Next::Record(h, raw) = rd.next_header().unwrap() else {
        panic!("empty fixture")
    };
    rd.read_payload(&h, &raw, &mut template).unwrap();
    let page_size = template.len() as u32;

    // The reference: the disk's own commit sequence, in a DB of its own.
    let fs: Arc<dyn Fs> = Arc::new(StdFs);
    let rroot = work.join("ref");
    std::fs::create_dir_all(&rroot).unwrap();
    let mut meta = init_db(&*fs, &rroot, page_size).unwrap();
    let mut store = Store::open(fs.clone(), &rroot, &meta, FsyncPolicy::Batch);
    let mut reference = Vec::with_capacity(n);
    let mut rp = template.clone();

    // The daemon.
    let db = work.join("db");
    let mut child = Command::new(daemon)
        .args(["--path", db.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the daemon");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let l = lines.next().expect("daemon log").unwrap();
        if let Some(a) = l.split("listening on ").nth(1) {
            break a.trim().to_string();
        }
    };
    // Keep draining the log so the daemon never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_nodelay(true).unwrap();
    c.write_all(&wal::stream_header()).unwrap();
    let mut p = template.clone();
    let mut rec = Vec::new();
    let mut lat = Vec::with_capacity(n);
    // Reference and daemon alternate, so both see the same disk: a shared
    // virtual disk's speed drifts by the second. Frame 0 creates the DB.
    for i in 0..=n as u64 {
        let lsn = i + 1;
        if i > 0 {
            rp.copy_from_slice(&p);
            page::commit_stamp(&mut rp, lsn);
            let t = Instant::now();
            store.ensure_allocated(i % 64).unwrap();
            store.write_page(i % 64, &rp).unwrap();
            store.sync().unwrap();
            meta.last_lsn = lsn;
            meta.next_page_id = store.next_page_id();
            write_meta(&*fs, &rroot, &meta).unwrap();
            reference.push(t.elapsed().as_secs_f64() * 1e3);
            std::thread::sleep(pause);
        }
        page::commit_stamp(&mut p, lsn);
        rec.clear();
        wal::encode_record(&mut rec, WAL_TYPE_PAGE_IMAGE, lsn, i % 64, &p);
        let t = Instant::now();
        c.write_all(&rec).unwrap();
        let deadline = t + Duration::from_secs(10);
        while last_lsn(&db) < lsn {
            assert!(
                Instant::now() < deadline,
                "lsn {lsn} not durable after 10 s"
            );
            // Polling meta costs ~5 us; sleeping a little leaves the CPU to the daemon.
            std::thread::sleep(Duration::from_micros(20));
        }
        if i > 0 {
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        std::thread::sleep(pause);
    }
    report("reference (disk commit)", reference);
    drop(c);
    let _ = child.kill();
    let _ = child.wait();
    report("lone frame (send -> meta)", lat);
}
