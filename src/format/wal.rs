//! WAL v1 stream parsing and encoding (spec §5, §6.2).
//!
//! [`WalReader`] reads a stream the way QuiverDB 1.x `wal-apply` does: the
//! 16-byte stream header, then records, with mid-stream headers (after a
//! leader-side truncation) skipped, and a short read anywhere inside a record
//! treated as the normal end of the stream (a partial tail). It never
//! allocates by an untrusted length: page payloads are read into a buffer the
//! caller sized to the page size, other payloads are streamed through the CRC.
//!
//! [`encode_record`] and friends produce byte-exact streams for tests,
//! benchmarks and test leaders.

use std::io::{self, Read};

use crate::error::StreamError;
use crate::format::layout::*;

/// Non-page records (TRUNCATE, unknown types) carry at most this many payload
/// bytes. Valid 1.x streams only carry TRUNCATE with len 0; a larger len is a
/// corrupt header, and following it would silently swallow the rest of the stream.
pub const MAX_OTHER_RECORD_LEN: u32 = 1 << 20;

/// A 28-byte record header (§5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub rtype: u8,
    pub flags: u8,
    pub reserved: u16,
    pub lsn: u64,
    pub page_id: u64,
    pub len: u32,
    pub crc: u32,
}

impl RecordHeader {
    pub fn parse(b: &[u8; WAL_RECORD_HEADER_LEN]) -> RecordHeader {
        RecordHeader {
            rtype: b[0],
            flags: b[1],
            reserved: le_u16(b, 2),
            lsn: le_u64(b, WAL_REC_OFF_LSN),
            page_id: le_u64(b, WAL_REC_OFF_PAGE_ID),
            len: le_u32(b, WAL_REC_OFF_LEN),
            crc: le_u32(b, WAL_REC_OFF_CRC),
        }
    }

    pub fn encode(&self) -> [u8; WAL_RECORD_HEADER_LEN] {
        let mut b = [0u8; WAL_RECORD_HEADER_LEN];
        b[0] = self.rtype;
        b[1] = self.flags;
        b[2..4].copy_from_slice(&self.reserved.to_le_bytes());
        b[4..12].copy_from_slice(&self.lsn.to_le_bytes());
        b[12..20].copy_from_slice(&self.page_id.to_le_bytes());
        b[20..24].copy_from_slice(&self.len.to_le_bytes());
        b[24..28].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    pub fn is_page_image(&self) -> bool {
        self.rtype == WAL_TYPE_PAGE_IMAGE
    }
}

/// Record CRC: IEEE CRC32 over header bytes 0..24 followed by the payload.
pub fn record_crc(header: &[u8; WAL_RECORD_HEADER_LEN], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..WAL_REC_OFF_CRC]);
    h.update(payload);
    h.finalize()
}

/// The 16-byte stream header as wal-ship writes it.
pub fn stream_header() -> [u8; WAL_HEADER_LEN] {
    let mut h = [0u8; WAL_HEADER_LEN];
    h[..8].copy_from_slice(WAL_MAGIC);
    h
}

/// A record header whose CRC covers the header and `payload`; `len` is
/// given separately so tests can build a header whose payload never follows.
pub fn record_header(
    rtype: u8,
    lsn: u64,
    page_id: u64,
    len: u32,
    payload: &[u8],
) -> [u8; WAL_RECORD_HEADER_LEN] {
    let mut hdr = RecordHeader {
        rtype,
        flags: 0,
        reserved: 0,
        lsn,
        page_id,
        len,
        crc: 0,
    }
    .encode();
    let crc = record_crc(&hdr, payload);
    hdr[24..28].copy_from_slice(&crc.to_le_bytes());
    hdr
}

/// Encode one record (header with a correct CRC, then payload) onto `out`.
pub fn encode_record(out: &mut Vec<u8>, rtype: u8, lsn: u64, page_id: u64, payload: &[u8]) {
    out.extend_from_slice(&record_header(
        rtype,
        lsn,
        page_id,
        payload.len() as u32,
        payload,
    ));
    out.extend_from_slice(payload);
}

/// The 28-byte TRUNCATE record wal-ship synthesises (§5.2).
pub fn encode_truncate(out: &mut Vec<u8>) {
    encode_record(out, WAL_TYPE_TRUNCATE, 0, 0, &[]);
}

/// Explain a stream header that is not `P1WAL001`: the 2.x format, a
/// compressed stream fed without decompression, or garbage.
pub fn check_stream_header(h: &[u8]) -> Result<(), StreamError> {
    if h.len() >= 8 && &h[..8] == WAL_MAGIC {
        return Ok(());
    }
    if h.len() >= 8 && &h[..8] == WAL2_MAGIC {
        return Err(StreamError::Wal2);
    }
    let seen = describe_bytes(h);
    if h.starts_with(&[0x1f, 0x8b]) {
        return Err(StreamError::Compressed { what: "gzip", seen });
    }
    if h.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(StreamError::Compressed { what: "zstd", seen });
    }
    Err(StreamError::BadMagic { seen })
}

/// Show up to 8 bytes as hex plus their printable ASCII, for error messages.
pub fn describe_bytes(b: &[u8]) -> String {
    let n = b.len().min(8);
    let hex: Vec<String> = b[..n].iter().map(|x| format!("{x:02x}")).collect();
    let ascii: String = b[..n]
        .iter()
        .map(|&c| if c.is_ascii_graphic() { c as char } else { '.' })
        .collect();
    format!("bytes {} \"{}\"", hex.join(" "), ascii)
}

/// Why a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// Input ended exactly at a record boundary.
    Clean,
    /// Input ended inside a record or mid-stream header; `bytes` of it were
    /// present and are ignored, as 1.x does.
    PartialTail { bytes: u64 },
}

/// What [`WalReader::next_header`] found.
pub enum Next {
    Record(RecordHeader, [u8; WAL_RECORD_HEADER_LEN]),
    End(StreamEnd),
}

/// Reads a WAL v1 stream. Wrap a raw fd in a buffer first (or use
/// the daemon's `ChunkReader`): the reader issues small `read`s.
pub struct WalReader<R> {
    inner: R,
    offset: u64,
    /// Mid-stream headers seen (one per leader-side truncation).
    pub mid_headers: u64,
    scratch: Vec<u8>,
}

impl<R: Read> WalReader<R> {
    /// Read and check the 16-byte stream header. Empty or short input is an
    /// error here, as in 1.x ("read WAL stream header from input").
    pub fn open(mut inner: R) -> Result<WalReader<R>, StreamError> {
        let mut h = [0u8; WAL_HEADER_LEN];
        let got = read_full(&mut inner, &mut h).map_err(StreamError::Read)?;
        if got >= 8 {
            check_stream_header(&h[..8])?;
        } else if got > 0 && !WAL_MAGIC.starts_with(&h[..got]) {
            // Explain what was seen even on a short read (e.g. a tiny gzip file).
            check_stream_header(&h[..got])?;
        }
        if got < WAL_HEADER_LEN {
            return Err(StreamError::ShortHeader { got });
        }
        Ok(WalReader {
            inner,
            offset: WAL_HEADER_LEN as u64,
            mid_headers: 0,
            scratch: Vec::new(),
        })
    }

    /// Stream offset of the next unread byte (for messages).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The next record header, skipping mid-stream headers; or the end.
    pub fn next_header(&mut self) -> Result<Next, StreamError> {
        loop {
            let mut b = [0u8; WAL_RECORD_HEADER_LEN];
            let got = self.fill(&mut b[..8])?;
            if got < 8 {
                return Ok(Next::End(end_after(got)));
            }
            if &b[..8] == WAL_MAGIC {
                let mut rest = [0u8; 8];
                let got = self.fill(&mut rest)?;
                if got < 8 {
                    return Ok(Next::End(end_after(8 + got)));
                }
                self.mid_headers += 1;
                continue;
            }
            let got = self.fill(&mut b[8..])?;
            if got < WAL_RECORD_HEADER_LEN - 8 {
                return Ok(Next::End(end_after(8 + got)));
            }
            return Ok(Next::Record(RecordHeader::parse(&b), b));
        }
    }

    /// Read the payload of `hdr` into `buf` (resized to `hdr.len`) and check
    /// the record CRC. `Ok(false)`: the stream ended inside the payload.
    /// The caller bounds `hdr.len` before calling (page size check).
    pub fn read_payload(
        &mut self,
        hdr: &RecordHeader,
        raw: &[u8; WAL_RECORD_HEADER_LEN],
        buf: &mut Vec<u8>,
    ) -> Result<Option<StreamEnd>, StreamError> {
        let start = self.offset - WAL_RECORD_HEADER_LEN as u64;
        buf.resize(hdr.len as usize, 0);
        let got = self.fill(buf)?;
        if got < buf.len() {
            return Ok(Some(end_after(WAL_RECORD_HEADER_LEN + got)));
        }
        check_crc(start, hdr, record_crc(raw, buf))?;
        Ok(None)
    }

    /// Consume a non-page payload through the CRC without keeping it.
    pub fn skip_payload(
        &mut self,
        hdr: &RecordHeader,
        raw: &[u8; WAL_RECORD_HEADER_LEN],
    ) -> Result<Option<StreamEnd>, StreamError> {
        let start = self.offset - WAL_RECORD_HEADER_LEN as u64;
        if hdr.len > MAX_OTHER_RECORD_LEN {
            return Err(StreamError::RecordTooLong {
                offset: start,
                rtype: hdr.rtype,
                len: hdr.len,
                cap: MAX_OTHER_RECORD_LEN,
            });
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&raw[..WAL_REC_OFF_CRC]);
        let mut left = hdr.len as usize;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(8192, 0);
        let mut result = None;
        while left > 0 {
            let n = left.min(scratch.len());
            let got = self.fill(&mut scratch[..n])?;
            h.update(&scratch[..got]);
            if got < n {
                let consumed = hdr.len as usize - left + got;
                result = Some(end_after(WAL_RECORD_HEADER_LEN + consumed));
                break;
            }
            left -= n;
        }
        self.scratch = scratch;
        if result.is_none() {
            check_crc(start, hdr, h.finalize())?;
        }
        Ok(result)
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, StreamError> {
        let got = read_full(&mut self.inner, buf).map_err(StreamError::Read)?;
        self.offset += got as u64;
        Ok(got)
    }
}

fn end_after(bytes: usize) -> StreamEnd {
    if bytes == 0 {
        StreamEnd::Clean
    } else {
        StreamEnd::PartialTail {
            bytes: bytes as u64,
        }
    }
}

fn check_crc(offset: u64, hdr: &RecordHeader, computed: u32) -> Result<(), StreamError> {
    if computed == hdr.crc {
        return Ok(());
    }
    Err(StreamError::CrcMismatch {
        offset,
        rtype: hdr.rtype,
        lsn: hdr.lsn,
        page_id: hdr.page_id,
        stored: hdr.crc,
        computed,
    })
}

/// Like `read_exact`, but a short read at EOF returns the count instead of an
/// error, because a short read is the normal end of a WAL stream.
pub fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Decoders report a cut compressed stream as UnexpectedEof: that
            // is a partial tail too (§5.4).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
