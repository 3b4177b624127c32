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
    /// the caller flushes. Uncompressed, a batch larger than the buffer goes
    /// to the sink as vectored writes without being copied (BufWriter
    /// passes it through); per-frame flushes would cost a system call (and
    /// a compressed block) per page.
    pub fn bulk(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<()> {
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        let mut v = bufs.to_vec();
        let mut rest = &mut v[..];
        IoSlice::advance_slices(&mut rest, 0);
        while !rest.is_empty() {
            match self.w().write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => IoSlice::advance_slices(&mut rest, k),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
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
