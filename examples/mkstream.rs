//! Make a large, realistic WAL stream for benchmarks: a real QuiverDB 1.2.5
//! stream repeated until it reaches the requested size, each round with
//! LSNs shifted past the previous round (page LSNs, page CRCs and record
//! CRCs recomputed), so every round really rewrites the pages.
//!
//! MODE picks the page ids: `churn` keeps the source's (every round rewrites
//! the same pages), `spread` moves each round to fresh page ids (the source's
//! rewrite pattern, a follower that keeps growing), `distinct` gives every
//! record its own page (the worst case: every byte of the stream lands on
//! disk, as with `cat`).
//!
//! usage: cargo run --release --example mkstream -- SOURCE.wal MIN_MB MODE > out.wal

use std::io::{BufWriter, Write};

use quiverdb_follower::format::page;
use quiverdb_follower::format::wal::{self, Next, WalReader};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 || !["churn", "spread", "distinct"].contains(&args[3].as_str()) {
        eprintln!("usage: mkstream SOURCE.wal MIN_MB churn|spread|distinct > out.wal");
        std::process::exit(2);
    }
    let src = std::fs::read(&args[1]).expect("read source stream");
    let min_bytes: u64 = args[2].parse::<u64>().expect("MIN_MB") << 20;
    let mut recs = Vec::new();
    let mut rd = WalReader::open(&src[..]).expect("source is a WAL stream");
    let mut buf = Vec::new();
    while let Next::Record(h, raw) = rd.next_header().expect("valid source") {
        if rd
            .read_payload(&h, &raw, &mut buf)
            .expect("valid source")
            .is_some()
        {
            break;
        }
        recs.push((h, buf.clone()));
    }
    let span = recs.iter().map(|(h, _)| h.lsn).max().unwrap_or(0);
    let mode = args[3].as_str();
    let mut n = 0u64;
    let pages = recs.iter().map(|(h, _)| h.page_id + 1).max().unwrap_or(0);
    let out = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 20, out.lock());
    out.write_all(&wal::stream_header()).unwrap();
    let mut written = 16u64;
    let mut round = 0u64;
    let mut rec = Vec::new();
    while written < min_bytes {
        for (h, payload) in &recs {
            let lsn = h.lsn + round * span;
            let page_id = match mode {
                "spread" => h.page_id + round * pages,
                "distinct" => n,
                _ => h.page_id,
            };
            n += 1;
            let mut p = payload.clone();
            page::commit_stamp(&mut p, lsn);
            rec.clear();
            wal::encode_record(&mut rec, h.rtype, lsn, page_id, &p);
            out.write_all(&rec).unwrap();
            written += rec.len() as u64;
        }
        round += 1;
    }
    out.flush().unwrap();
    eprintln!("{written} bytes, {round} rounds, last lsn {}", round * span);
}
