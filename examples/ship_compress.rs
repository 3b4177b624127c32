//! Compress a raw WAL stream the way `quiverdb wal-ship --compress` does
//! (spec §7.1): one compressor for the whole stream, flushed after the
//! header and after every record (gzip: flate2 level 1 + sync flush; zstd:
//! level 0 + end-of-block flush). Used by `scripts/bench-unzip` to make
//! realistic input; not part of the product.
//!
//! Usage: cargo run --release --example ship_compress -- gzip|zstd [--no-finish] < stream.wal > out

use std::io::{self, BufWriter, Read, Write};
use std::process::ExitCode;

use quiverdb_follower::layout::{
    WAL_HEADER_LEN, WAL_MAGIC, WAL_RECORD_HEADER_LEN, WAL_REC_OFF_LEN,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let finish = !args.iter().any(|a| a == "--no-finish");
    let out = BufWriter::with_capacity(1 << 20, io::stdout().lock());
    let res = match args.first().map(String::as_str) {
        Some("gzip") => {
            let enc = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
            ship(enc, finish, |e| e.finish().map(drop))
        }
        Some("zstd") => match zstd::Encoder::new(out, 0) {
            Ok(enc) => ship(enc, finish, |e| e.finish().map(drop)),
            Err(e) => Err(e),
        },
        _ => {
            eprintln!("usage: ship_compress gzip|zstd [--no-finish] < stream.wal > out");
            return ExitCode::from(2);
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Split stdin into header / records / mid-stream headers and write each
/// followed by a flush. The whole input is read first: this is a bench
/// helper, its memory does not matter.
fn ship<W: Write>(
    mut enc: W,
    finish: bool,
    end: impl FnOnce(W) -> io::Result<()>,
) -> io::Result<()> {
    let mut stream = Vec::new();
    io::stdin().lock().read_to_end(&mut stream)?;
    let mut pos = 0;
    while pos < stream.len() {
        let rest = &stream[pos..];
        let n = if rest.starts_with(WAL_MAGIC) {
            WAL_HEADER_LEN
        } else if rest.len() >= WAL_RECORD_HEADER_LEN {
            let off = WAL_REC_OFF_LEN;
            let len = u32::from_le_bytes([rest[off], rest[off + 1], rest[off + 2], rest[off + 3]]);
            WAL_RECORD_HEADER_LEN + len as usize
        } else {
            rest.len()
        };
        let n = n.min(rest.len());
        enc.write_all(&rest[..n])?;
        enc.flush()?;
        pos += n;
    }
    // wal-ship flushes once more on exit before finishing (§7.1 step 7).
    enc.flush()?;
    if finish {
        end(enc)
    } else {
        Ok(())
    }
}
