//! The output side of qdb-ship: WAL v1 frames through one compressor for
//! the whole stream, flushed the way `quiverdb wal-ship` flushes (spec §7.1):
//! the header at once, then after every `flush_every` frames or
//! `flush_bytes` bytes. gzip is flate2 level 1 with a sync flush per flush
//! point, zstd level 0 with an end-of-block flush, so the bytes equal
//! wal-ship's for the same frames (tests/real_leader.rs checks it).
//!
//! One difference: when the tail goes idle the pending frames are flushed,
//! so a committed frame never waits for `flush_every - 1` more.

use std::io::{self, BufWriter, IoSlice, Write};

use crate::transport::codec::Compression;

enum Enc<W: Write> {
    Plain(BufWriter<W>),
    Gzip(flate2::write::GzEncoder<BufWriter<W>>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<W>>),
}

pub struct FrameWriter<W: Write> {
    enc: Enc<W>,
    flush_every: u32,
    flush_bytes: u64,
    frames: u32,
    bytes: u64,
    /// Bytes written since the last flush: a flush with nothing new would
    /// add an empty block to a compressed stream, and wal-ship never does.
    pending: bool,
    /// Total uncompressed bytes written.
    pub written: u64,
}

impl<W: Write> FrameWriter<W> {
    /// `compress` is None, Gzip or Zstd (Auto is a reader's option).
    pub fn new(
        sink: W,
        compress: Compression,
        flush_every: u32,
        flush_bytes: u64,
    ) -> io::Result<Self> {
        let buf = BufWriter::with_capacity(64 << 10, sink);
        let enc = match compress {
            Compression::Gzip => Enc::Gzip(flate2::write::GzEncoder::new(
                buf,
                flate2::Compression::fast(),
            )),
            Compression::Zstd => Enc::Zstd(zstd::stream::write::Encoder::new(buf, 0)?),
            Compression::None | Compression::Auto => Enc::Plain(buf),
        };
        Ok(FrameWriter {
            enc,
            flush_every: flush_every.max(1),
            flush_bytes,
            frames: 0,
            bytes: 0,
            pending: false,
            written: 0,
        })
    }

    fn w(&mut self) -> &mut dyn Write {
        match &mut self.enc {
            Enc::Plain(w) => w,
            Enc::Gzip(w) => w,
            Enc::Zstd(w) => w,
        }
    }

    /// A stream header (first, or after a TRUNCATE): written and flushed.
    pub fn header(&mut self, h: &[u8]) -> io::Result<()> {
        self.w().write_all(h)?;
        self.written += h.len() as u64;
        self.pending = true;
        self.flush()
    }

    /// One frame (a record, or several parts of one), flushed by policy.
    pub fn frame(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let mut n = 0;
        for p in parts {
            self.w().write_all(p)?;
            n += p.len() as u64;
        }
        self.written += n;
        self.pending = true;
        self.frames += 1;
        self.bytes += n;
        if self.frames >= self.flush_every
            || (self.flush_bytes > 0 && self.bytes >= self.flush_bytes)
        {
            self.flush()?;
        }
        Ok(())
    }

    /// Many frames at once (a catch-up batch), outside the flush policy:
    /// the caller flushes. Uncompressed, the batch goes to the sink as
    /// vectored writes without being copied: past the BufWriter (flushed
    /// first), which would otherwise copy every slice through its buffer
    /// and write 64 KiB at a time, since it cannot tell (on stable Rust)
    /// that the sink takes vectored writes. Per-frame flushes would cost a
    /// system call (and a compressed block) per page.
    pub fn bulk(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        let w: &mut dyn Write = match &mut self.enc {
            Enc::Plain(b) => {
                b.flush()?;
                b.get_mut()
            }
            Enc::Gzip(w) => w,
            Enc::Zstd(w) => w,
        };
        // (slice, offset in it) of the first byte not yet written; a
        // window of at most IOV_MAX (1024) slices per call.
        let (mut i, mut off) = (0, 0);
        let mut window: Vec<IoSlice<'_>> = Vec::with_capacity(bufs.len().min(1024));
        while i < bufs.len() {
            if off == bufs[i].len() {
                (i, off) = (i + 1, 0);
                continue;
            }
            window.clear();
            window.push(IoSlice::new(&bufs[i][off..]));
            window.extend(bufs[i + 1..].iter().take(1023).copied());
            let mut k = match w.write_vectored(&window) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            while k > 0 {
                let rest = bufs[i].len() - off;
                if k < rest {
                    off += k;
                    k = 0;
                } else {
                    k -= rest;
                    (i, off) = (i + 1, 0);
                }
            }
        }
        self.written += n as u64;
        self.pending |= n > 0;
        Ok(())
    }

    /// Flush through the compressor to the sink, if anything is pending.
    pub fn flush(&mut self) -> io::Result<()> {
        self.frames = 0;
        self.bytes = 0;
        if !self.pending {
            return Ok(());
        }
        self.pending = false;
        self.w().flush()
    }

    /// End the stream: flush, then the gzip trailer / zstd frame end.
    pub fn finish(mut self) -> io::Result<()> {
        // Unconditional, as wal-ship's exit path (spec §7.1 step 7).
        self.pending = true;
        self.flush()?;
        match self.enc {
            Enc::Plain(mut w) => w.flush(),
            Enc::Gzip(w) => w.finish()?.flush(),
            Enc::Zstd(w) => w.finish()?.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most 7 bytes a call, from its first slice only
    /// (as `Write::write_vectored`'s default does): `bulk` still writes
    /// every byte once, in order.
    struct Trickle(Vec<u8>);
    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let n = b.len().min(7);
            self.0.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bulk_writes_every_byte_in_order_through_short_writes() {
        let parts: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| (0..(i % 50) as u8).map(|j| j ^ i as u8).collect())
            .collect();
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut fw = FrameWriter::new(Trickle(Vec::new()), Compression::None, 1, 0).unwrap();
        fw.bulk(&slices).unwrap();
        let want = parts.concat();
        assert_eq!(fw.written, want.len() as u64);
        let Enc::Plain(w) = fw.enc else {
            unreachable!()
        };
        assert!(w.into_inner().ok().unwrap().0 == want);
    }
}
