//! Tailing the leader's `wal-000001.log` without ever skipping a frame
//! unnoticed. The writer truncates the file to its 16-byte header at each
//! rotation and at each writer open (spec §5.5), possibly between two of
//! our looks and refilled to any length, so before reading on, every step
//! checks that nothing it already read was rewritten:
//! * the file at the path is still the one we hold open (same inode);
//! * it is not shorter than our position;
//! * the last record we read is still there, byte for byte in its header
//!   (same LSN, same CRC);
//! * the next record continues the LSN sequence (within one generation of
//!   the file, LSNs increase by exactly 1): a record at our position from a
//!   newer generation has a much higher LSN.
//!
//! Any of these failing is a truncation: reading restarts after the header.
//! Whether frames were lost is the caller's question (it compares LSNs).

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::format::layout::{
    le_u32, le_u64, WAL_FILE, WAL_HEADER_LEN, WAL_MAGIC, WAL_RECORD_HEADER_LEN, WAL_REC_OFF_CRC,
    WAL_REC_OFF_LEN, WAL_REC_OFF_LSN,
};
use crate::format::wal::record_crc;

/// A record longer than this is a header being written (or garbage), never
/// a page (32 KiB at most) or a marker: treated as not yet complete.
const MAX_RECORD_LEN: u32 = 1 << 20;

/// What one step of the tail found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete, CRC-valid record: [`WalTail::record`] holds its bytes.
    Record { lsn: u64 },
    /// The file was truncated or rewritten since we last looked: reading
    /// restarts at offset 16.
    Truncated,
    /// Nothing complete beyond our position (yet).
    Idle,
}

pub struct WalTail {
    path: PathBuf,
    file: File,
    ino: u64,
    header: [u8; WAL_HEADER_LEN],
    pos: u64,
    /// Offset and header bytes of the last record read in this generation.
    last: Option<(u64, [u8; WAL_RECORD_HEADER_LEN])>,
    rec: Vec<u8>,
}

impl WalTail {
    /// Open `<root>/wal-000001.log` read-only, without any lock; fails if
    /// it is shorter than its header or is not a WAL v1 file.
    pub fn open(root: &Path) -> io::Result<WalTail> {
        let path = root.join(WAL_FILE);
        let file = File::open(&path)?;
        let ino = file.metadata()?.ino();
        let mut header = [0u8; WAL_HEADER_LEN];
        file.read_exact_at(&mut header, 0)?;
        if &header[..8] != WAL_MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a QuiverDB 1.x WAL (magic is not P1WAL001)",
            ));
        }
        Ok(WalTail {
            path,
            file,
            ino,
            header,
            pos: WAL_HEADER_LEN as u64,
            last: None,
            rec: Vec::new(),
        })
    }

    /// The file's 16-byte header as read at open (sent again after a truncation).
    pub fn header(&self) -> &[u8; WAL_HEADER_LEN] {
        &self.header
    }

    /// The bytes of the record the last [`Event::Record`] reported.
    pub fn record(&self) -> &[u8] {
        &self.rec
    }

    /// Read position in the file.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    fn restart(&mut self) -> Event {
        self.pos = WAL_HEADER_LEN as u64;
        self.last = None;
        Event::Truncated
    }

    /// One step: detect a rewrite, else read the next complete record.
    pub fn step(&mut self) -> io::Result<Event> {
        // Replaced file (1.x never does this, a restore might): reopen.
        match std::fs::metadata(&self.path) {
            Ok(md) if md.ino() != self.ino => {
                let root = self.path.parent().unwrap_or(Path::new("."));
                let fresh = WalTail::open(root)?;
                self.file = fresh.file;
                self.ino = fresh.ino;
                return Ok(self.restart());
            }
            Ok(_) => {}
            Err(e) => return Err(e),
        }
        let len = self.file.metadata()?.len();
        if len < self.pos {
            return Ok(self.restart());
        }
        if let Some((off, h)) = self.last {
            let mut now = [0u8; WAL_RECORD_HEADER_LEN];
            self.file.read_exact_at(&mut now, off)?;
            if now != h {
                return Ok(self.restart());
            }
        }
        if self.pos + WAL_RECORD_HEADER_LEN as u64 > len {
            return Ok(Event::Idle);
        }
        let mut h = [0u8; WAL_RECORD_HEADER_LEN];
        self.file.read_exact_at(&mut h, self.pos)?;
        let rlen = le_u32(&h, WAL_REC_OFF_LEN);
        if rlen > MAX_RECORD_LEN
            || self.pos + (WAL_RECORD_HEADER_LEN as u64) + u64::from(rlen) > len
        {
            return Ok(Event::Idle);
        }
        self.rec.clear();
        self.rec.extend_from_slice(&h);
        self.rec.resize(WAL_RECORD_HEADER_LEN + rlen as usize, 0);
        self.file.read_exact_at(
            &mut self.rec[WAL_RECORD_HEADER_LEN..],
            self.pos + WAL_RECORD_HEADER_LEN as u64,
        )?;
        // Not (completely) written yet, or overwritten under us: look again.
        if record_crc(&h, &self.rec[WAL_RECORD_HEADER_LEN..]) != le_u32(&h, WAL_REC_OFF_CRC) {
            return Ok(Event::Idle);
        }
        let lsn = le_u64(&h, WAL_REC_OFF_LSN);
        if let Some((_, prev)) = self.last {
            if lsn != le_u64(&prev, WAL_REC_OFF_LSN).wrapping_add(1) {
                // A record of a newer generation at our offset.
                return Ok(self.restart());
            }
        }
        self.last = Some((self.pos, h));
        self.pos += self.rec.len() as u64;
        Ok(Event::Record { lsn })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::wal::{encode_record, stream_header};

    fn wal(lsns: std::ops::RangeInclusive<u64>) -> Vec<u8> {
        let mut b = stream_header().to_vec();
        for l in lsns {
            encode_record(&mut b, 1, l, l % 3, &[l as u8; 4096]);
        }
        b
    }

    fn records(t: &mut WalTail) -> Vec<Result<u64, Event>> {
        let mut v = Vec::new();
        loop {
            match t.step().unwrap() {
                Event::Record { lsn } => v.push(Ok(lsn)),
                Event::Idle => return v,
                e => v.push(Err(e)),
            }
        }
    }

    #[test]
    fn notices_a_refill_to_the_same_and_a_greater_length() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(WAL_FILE);
        std::fs::write(&p, wal(1..=3)).unwrap();
        let mut t = WalTail::open(d.path()).unwrap();
        assert_eq!(records(&mut t), vec![Ok(1), Ok(2), Ok(3)]);
        // Truncated and refilled to exactly the same length: wal-ship misses this.
        std::fs::write(&p, wal(10..=12)).unwrap();
        assert_eq!(
            records(&mut t),
            vec![Err(Event::Truncated), Ok(10), Ok(11), Ok(12)]
        );
        // Truncated and refilled past our position: the record at our
        // offset is from the new generation (LSN 21 does not follow 12).
        let mut b = wal(20..=25);
        std::fs::write(&p, &b).unwrap();
        assert_eq!(records(&mut t)[0], Err(Event::Truncated));
        // A partly written record is not read until it is complete.
        let mut more = Vec::new();
        encode_record(&mut more, 1, 26, 0, &[7; 4096]);
        b.extend_from_slice(&more[..100]);
        std::fs::write(&p, &b).unwrap();
        assert_eq!(records(&mut t), vec![]);
        b.extend_from_slice(&more[100..]);
        std::fs::write(&p, &b).unwrap();
        assert_eq!(records(&mut t), vec![Ok(26)]);
        assert_eq!(t.record(), &more[..]);
    }
}
