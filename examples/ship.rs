//! A stand-in for `quiverdb wal-ship` (spec §7.1), for demos, tests and
//! benchmarks: sends a raw WAL file to `tcp://HOST:PORT` (TCP_NODELAY, as
//! wal-ship) or to stdout (`-`), header first, one flush per record, through
//! one gzip/zstd compressor for the whole stream.
//!
//! usage: ship [--compress none|gzip|zstd] [--since-lsn N] [--no-finish] [--records N] FILE (tcp://HOST:PORT | -)
//!
//! `--no-finish` leaves the compressed stream unfinished, as `wal-ship
//! --follow` does; `--records N` stops after N records (a leader that dies).

use std::io::{BufWriter, Write};
use std::net::TcpStream;
use std::process::ExitCode;

use quiverdb_follower::codec::Compression;
use testkit::leader::{ship, ShipOptions};

fn main() -> ExitCode {
    let mut opts = ShipOptions::default();
    let mut max = None;
    let mut pos = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--compress" => {
                opts.compress = match args.next().unwrap_or_default().parse() {
                    Ok(c) => c,
                    Err(e) => return fail(&e),
                }
            }
            "--no-finish" => opts.finish = false,
            "--since-lsn" => opts.since_lsn = args.next().and_then(|n| n.parse().ok()).unwrap_or(0),
            "--records" => max = args.next().and_then(|n| n.parse().ok()),
            _ => pos.push(a),
        }
    }
    if pos.len() != 2 || opts.compress == Compression::Auto {
        eprintln!("usage: ship [--compress none|gzip|zstd] [--since-lsn N] [--no-finish] [--records N] FILE (tcp://HOST:PORT | -)");
        return ExitCode::from(2);
    }
    let stream = match std::fs::read(&pos[0]) {
        Ok(s) => s,
        Err(e) => return fail(&format!("cannot read {}: {e}", pos[0])),
    };
    let res = match pos[1].strip_prefix("tcp://") {
        Some(addr) => TcpStream::connect(addr).and_then(|s| {
            s.set_nodelay(true)?;
            ship(&stream, BufWriter::new(s), opts, max)
        }),
        None => ship(&stream, BufWriter::new(std::io::stdout().lock()), opts, max),
    };
    match res {
        Ok(n) => {
            let _ = std::io::stderr().flush();
            eprintln!("shipped {n} records");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(1)
}
