//! Record framing for `--keep-serving`: forward only whole WAL v1 units so
//! that a session cut off mid-record leaves nothing half-written in the one
//! long output stream that all sessions share.
//!
//! A unit is the 16-byte header (`P1WAL001` + 8 reserved bytes) or a record
//! (28-byte header + `len` payload bytes, §5.2). Downstream apply reads a
//! later session's header as a mid-stream header (§5.5), so headers are
//! forwarded as they come. No CRC check here: apply does that.
//!
//! Memory: a unit is held until it is complete, so at most
//! `WAL_RECORD_HEADER_LEN + MAX_FRAMED_PAYLOAD` bytes, and the buffer grows only
//! as bytes arrive, never by a `len` taken from the wire.

use std::io::Write;

use crate::format::layout::{
    le_u32, WAL2_MAGIC, WAL_HEADER_LEN, WAL_MAGIC, WAL_RECORD_HEADER_LEN, WAL_REC_OFF_LEN,
};
use crate::transport::net::NetError;

/// The largest record payload `--keep-serving` holds back (1 MiB). 1.x pages
/// are at most 64 KiB and TRUNCATE records are empty, so a larger `len` means
/// the bytes are not a 1.x stream; the session is dropped rather than buffered.
pub const MAX_FRAMED_PAYLOAD: u32 = 1 << 20;

const MAGIC_LEN: usize = WAL_MAGIC.len();

/// Splits one session's bytes into complete units and writes each complete
/// unit to the output. Make a new one per session.
#[derive(Debug)]
pub struct SessionFramer {
    peer: String,
    /// The start of a unit whose end has not arrived yet.
    pending: Vec<u8>,
    /// Nothing forwarded yet: the session must open with a 1.x WAL header.
    at_start: bool,
}

impl SessionFramer {
    /// `peer` names the session in error messages.
    pub fn new(peer: impl Into<String>) -> SessionFramer {
        SessionFramer {
            peer: peer.into(),
            pending: Vec::new(),
            at_start: true,
        }
    }

    /// Take the next bytes of the session; write every unit they complete to
    /// `out`, then flush once if anything was written. On a framing error the
    /// held bytes are discarded: the session is unusable.
    pub fn feed<W: Write>(&mut self, data: &[u8], out: &mut W) -> Result<(), NetError> {
        let mut wrote = false;
        let result = self.forward_units(data, out, &mut wrote);
        if result.is_err() {
            self.pending = Vec::new();
        }
        // Units written before an error are whole: let them reach the output.
        if wrote {
            out.flush().map_err(NetError::Output)?;
        }
        result
    }

    fn forward_units<W: Write>(
        &mut self,
        mut data: &[u8],
        out: &mut W,
        wrote: &mut bool,
    ) -> Result<(), NetError> {
        while !data.is_empty() {
            // Whole units that sit in `data` go out without a copy.
            if self.pending.is_empty() {
                if let Some(n) = self.unit_len(data)? {
                    if data.len() >= n {
                        out.write_all(&data[..n]).map_err(NetError::Output)?;
                        self.at_start = false;
                        *wrote = true;
                        data = &data[n..];
                        continue;
                    }
                }
            }
            // Take only what the next decision needs: the magic, then the
            // record header, then the rest of the unit.
            let want = match self.unit_len(&self.pending)? {
                Some(n) => n,
                None if self.pending.len() < MAGIC_LEN => MAGIC_LEN,
                None => WAL_RECORD_HEADER_LEN,
            };
            let take = (want - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.unit_len(&self.pending)? == Some(self.pending.len()) {
                out.write_all(&self.pending).map_err(NetError::Output)?;
                self.pending.clear();
                self.at_start = false;
                *wrote = true;
            }
        }
        Ok(())
    }

    /// Bytes of an incomplete unit held back; if the session ends now they are
    /// dropped, never forwarded.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// The length of the unit that `prefix` starts, once the prefix is long
    /// enough to tell.
    fn unit_len(&self, prefix: &[u8]) -> Result<Option<usize>, NetError> {
        if prefix.len() < MAGIC_LEN {
            return Ok(None);
        }
        if &prefix[..MAGIC_LEN] == WAL_MAGIC {
            return Ok(Some(WAL_HEADER_LEN));
        }
        if self.at_start {
            return Err(NetError::NotWalStream {
                peer: self.peer.clone(),
                hint: sniff(prefix),
            });
        }
        if prefix.len() < WAL_RECORD_HEADER_LEN {
            return Ok(None);
        }
        let len = le_u32(prefix, WAL_REC_OFF_LEN);
        if len > MAX_FRAMED_PAYLOAD {
            return Err(NetError::RecordTooLarge {
                peer: self.peer.clone(),
                len,
            });
        }
        Ok(Some(WAL_RECORD_HEADER_LEN + len as usize))
    }
}

/// A guess at what a session that is not a raw 1.x stream carries, for the
/// error message.
fn sniff(prefix: &[u8]) -> &'static str {
    if prefix.starts_with(&[0x1f, 0x8b]) {
        " (looks like gzip?)"
    } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        " (looks like zstd?)"
    } else if prefix.starts_with(WAL2_MAGIC) {
        " (looks like a QuiverDB 2.x stream, which is not supported)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<u8> {
        let mut h = WAL_MAGIC.to_vec();
        h.extend_from_slice(&[0; 8]);
        h
    }

    fn record(len: u32, fill: u8) -> Vec<u8> {
        let mut r = vec![1u8; WAL_RECORD_HEADER_LEN];
        r[WAL_REC_OFF_LEN..WAL_REC_OFF_LEN + 4].copy_from_slice(&len.to_le_bytes());
        r.extend(std::iter::repeat(fill).take(len as usize));
        r
    }

    /// Header, two records, a mid-stream header, a TRUNCATE-sized record.
    fn stream() -> Vec<u8> {
        [
            header(),
            record(100, 0xAA),
            record(4096, 0xBB),
            header(),
            record(0, 0),
            record(7, 0xCC),
        ]
        .concat()
    }

    fn feed_in_chunks(data: &[u8], chunk: usize) -> (Vec<u8>, usize) {
        let mut f = SessionFramer::new("test");
        let mut out = Vec::new();
        for c in data.chunks(chunk) {
            f.feed(c, &mut out).unwrap();
        }
        (out, f.pending_bytes())
    }

    #[test]
    fn whole_stream_passes_through_at_any_chunking() {
        let s = stream();
        for chunk in [1, 2, 7, 8, 15, 16, 27, 28, 29, 100, 4096, s.len()] {
            let (out, pending) = feed_in_chunks(&s, chunk);
            assert_eq!(out, s, "chunk {chunk}");
            assert_eq!(pending, 0);
        }
    }

    #[test]
    fn a_cut_forwards_only_complete_units() {
        let s = stream();
        // Unit boundaries of `stream()`.
        let mut ends = vec![0usize];
        for len in [16, 128, 4124, 16, 28, 35] {
            ends.push(ends.last().unwrap() + len);
        }
        for cut in 0..=s.len() {
            let complete = *ends.iter().filter(|&&e| e <= cut).max().unwrap();
            for chunk in [1, 13, 5000] {
                let (out, pending) = feed_in_chunks(&s[..cut], chunk);
                assert_eq!(out, &s[..complete], "cut {cut} chunk {chunk}");
                assert_eq!(pending, cut - complete);
            }
        }
    }

    #[test]
    fn refuses_a_session_that_is_not_a_raw_1x_stream() {
        let cases: [(&[u8], &str); 4] = [
            (&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 0xff], "gzip?"),
            (&[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0, 0], "zstd?"),
            (b"P2WAL001\0\0\0\0\0\0\0\0", "2.x"),
            (b"hello world", "does not start"),
        ];
        for (bytes, needle) in cases {
            let mut out = Vec::new();
            let mut f = SessionFramer::new("127.0.0.1:5555");
            let e = f.feed(bytes, &mut out).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("127.0.0.1:5555"), "{e}");
            assert!(e.contains("--keep-serving"), "{e}");
            assert!(out.is_empty());
            assert_eq!(f.pending_bytes(), 0);
        }
    }

    #[test]
    fn refuses_an_oversized_record_without_allocating_it() {
        let mut s = header();
        s.extend(&record(0, 0)[..WAL_RECORD_HEADER_LEN]);
        let n = s.len();
        s[n - 8..n - 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut f = SessionFramer::new("p");
        let mut out = Vec::new();
        let e = f.feed(&s, &mut out).unwrap_err().to_string();
        assert!(e.contains("4294967295"), "{e}");
        assert_eq!(out, header());
        assert!(f.pending.capacity() <= WAL_RECORD_HEADER_LEN);
    }

    #[test]
    fn flushes_once_per_feed_that_completes_a_unit() {
        struct Counting {
            flushes: usize,
        }
        impl Write for Counting {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.flushes += 1;
                Ok(())
            }
        }
        let mut out = Counting { flushes: 0 };
        let mut f = SessionFramer::new("p");
        let s = stream();
        f.feed(&s[..10], &mut out).unwrap();
        assert_eq!(out.flushes, 0);
        f.feed(&s[10..], &mut out).unwrap();
        assert_eq!(out.flushes, 1);
    }
}
