//! A test leader: sends a WAL stream the way `quiverdb wal-ship` does
//! (spec §7.1): the 16-byte header flushed at once, then each record written
//! whole and flushed, through one compressor for the whole stream (gzip:
//! flate2 level 1 with a sync flush per flush point; zstd: level 0 with an
//! end-of-block flush). Used by the demo, the daemon tests and benchmarks;
//! QuiverDB itself is not needed to exercise the follower end to end.

use std::io::{self, Write};

use quiverdb_follower::codec::Compression;
use quiverdb_follower::format::wal::{Next, WalReader};

/// How much to send.
#[derive(Clone, Copy, Debug)]
pub struct ShipOptions {
    pub compress: Compression,
    /// Flush after this many records (wal-ship's --flush-every, default 1).
    pub flush_every: u32,
    /// Finish the compressed stream (trailer / frame end) at the end, as
    /// wal-ship does on a normal exit; false mimics `--follow`, which never ends it.
    pub finish: bool,
    /// Send only records with lsn > this (wal-ship's `--since-lsn`, exclusive).
    pub since_lsn: u64,
}

impl Default for ShipOptions {
    fn default() -> Self {
        ShipOptions {
            compress: Compression::None,
            flush_every: 1,
            finish: true,
            since_lsn: 0,
        }
    }
}

/// Send the complete records of `stream` (a raw WAL stream: header, records)
/// to `sink`. Returns the number of records sent. Stops early (Ok) after
/// `max_records` if given.
pub fn ship<W: Write>(
    stream: &[u8],
    sink: W,
    opts: ShipOptions,
    max_records: Option<u64>,
) -> io::Result<u64> {
    match opts.compress {
        Compression::Gzip => {
            let enc = flate2::write::GzEncoder::new(Gate::new(sink), flate2::Compression::fast());
            let (n, mut enc) = send(stream, enc, opts, max_records)?;
            if opts.finish {
                enc.try_finish()?;
                enc.get_mut().flush()?;
            } else {
                // flate2 writes the trailer when the encoder is dropped; a
                // `--follow` stream never gets one.
                enc.get_mut().open = false;
            }
            Ok(n)
        }
        Compression::Zstd => {
            let enc = zstd::stream::write::Encoder::new(sink, 0)?;
            let (n, enc) = send(stream, enc, opts, max_records)?;
            if opts.finish {
                enc.finish()?.flush()?;
            }
            Ok(n)
        }
        _ => Ok(send(stream, sink, opts, max_records)?.0),
    }
}

fn send<W: Write>(
    stream: &[u8],
    mut out: W,
    opts: ShipOptions,
    max: Option<u64>,
) -> io::Result<(u64, W)> {
    let bad = |e: quiverdb_follower::StreamError| {
        io::Error::new(io::ErrorKind::InvalidData, e.to_string())
    };
    let mut rd = WalReader::open(stream).map_err(bad)?;
    out.write_all(&stream[..16])?;
    out.flush()?;
    let mut sent = 0u64;
    let mut since_flush = 0u32;
    loop {
        if max.is_some_and(|m| sent >= m) {
            break;
        }
        let start = rd.offset() as usize;
        let (h, raw) = match rd.next_header().map_err(bad)? {
            Next::Record(h, raw) => (h, raw),
            Next::End(_) => break,
        };
        // Mid-stream headers are forwarded as they are: they sit between records.
        let rec_start = rd.offset() as usize - raw.len();
        if rec_start > start {
            out.write_all(&stream[start..rec_start])?;
        }
        // As wal-ship, the LSN filter applies to every record type.
        if rd.skip_payload(&h, &raw).map_err(bad)?.is_some() {
            break;
        }
        if h.lsn <= opts.since_lsn {
            continue;
        }
        out.write_all(&stream[rec_start..rd.offset() as usize])?;
        sent += 1;
        since_flush += 1;
        if since_flush >= opts.flush_every.max(1) {
            out.flush()?;
            since_flush = 0;
        }
    }
    out.flush()?;
    Ok((sent, out))
}

/// A writer that can be shut, after which writes are swallowed.
struct Gate<W> {
    inner: W,
    open: bool,
}

impl<W> Gate<W> {
    fn new(inner: W) -> Gate<W> {
        Gate { inner, open: true }
    }
}

impl<W: Write> Write for Gate<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.open {
            self.inner.write(buf)
        } else {
            Ok(buf.len())
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.open {
            self.inner.flush()
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfinished_streams_have_no_end_marker() {
        let stream = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/quiverdb-1.2.5/c01-one-put/stream.wal"
        ))
        .unwrap();
        for (compress, ext) in [(Compression::Gzip, "gz"), (Compression::Zstd, "zst")] {
            let want = std::fs::read(format!(
                "{}/../tests/fixtures/quiverdb-1.2.5/c01-one-put/stream.wal.{ext}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap();
            let mut full = Vec::new();
            let opts = ShipOptions {
                compress,
                ..ShipOptions::default()
            };
            ship(&stream, &mut full, opts, None).unwrap();
            assert_eq!(full, want, "{ext}: byte-identical to wal-ship");
            let mut open = Vec::new();
            let opts = ShipOptions {
                compress,
                finish: false,
                ..ShipOptions::default()
            };
            ship(&stream, &mut open, opts, None).unwrap();
            assert!(open.len() < full.len(), "{ext}: no trailer");
            assert_eq!(
                &open[..],
                &full[..open.len()],
                "{ext}: a prefix of the finished stream"
            );
        }
    }
}
