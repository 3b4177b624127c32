//! The bucket-head directory file `<root>/dir` (spec §4.1): parsing and
//! encoding. Keeping it right on a follower is the replication layer's job
//! (`HeadTracker`); reading and replacing the file is the storage layer's.

use thiserror::Error;

use crate::error::{Error, Result};
use crate::format::layout::*;

/// The largest bucket count accepted: far above 1.x's default of 1024,
/// and small enough that the directory (128 MiB) and the tracker's
/// per-bucket state stay reasonable.
pub const MAX_BUCKETS: u32 = 1 << 24;

/// Why bytes are not a valid `dir` file.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DirError {
    #[error("only {len} bytes long, shorter than the 24-byte header")]
    TooShort { len: usize },
    #[error("bad magic (expected P1DIR001)")]
    BadMagic,
    #[error("version {0} (only version 1 exists)")]
    BadVersion(u32),
    #[error("bucket count 0")]
    ZeroBuckets,
    #[error("{len} bytes long, but {buckets} buckets need {expected}")]
    BadLength {
        buckets: u32,
        len: usize,
        expected: usize,
    },
    #[error("CRC mismatch (stored {stored:#x}, computed {computed:#010x})")]
    CrcMismatch {
        buckets: u32,
        stored: u64,
        computed: u32,
    },
}

impl DirError {
    /// The bucket count of a damaged file whose header is still readable.
    pub fn buckets(&self) -> Option<u32> {
        match *self {
            DirError::BadLength { buckets, .. } | DirError::CrcMismatch { buckets, .. } => {
                Some(buckets)
            }
            _ => None,
        }
    }
}

/// The contents of a `dir` file: one head page id (or NO_PAGE) per bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directory {
    pub heads: Vec<u64>,
}

impl Directory {
    /// What `db-init --buckets N` writes: every head NO_PAGE.
    pub fn empty(buckets: u32) -> Directory {
        Directory {
            heads: vec![NO_PAGE; buckets as usize],
        }
    }

    pub fn buckets(&self) -> u32 {
        self.heads.len() as u32
    }

    /// CRC32 over version ‖ buckets ‖ heads (magic and the CRC field excluded).
    pub fn crc(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        h.update(&DIR_VERSION.to_le_bytes());
        h.update(&self.buckets().to_le_bytes());
        for head in &self.heads {
            h.update(&head.to_le_bytes());
        }
        h.finalize()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(DIR_HEADER_LEN + 8 * self.heads.len());
        b.extend_from_slice(DIR_MAGIC);
        b.extend_from_slice(&DIR_VERSION.to_le_bytes());
        b.extend_from_slice(&self.buckets().to_le_bytes());
        b.extend_from_slice(&u64::from(self.crc()).to_le_bytes());
        for head in &self.heads {
            b.extend_from_slice(&head.to_le_bytes());
        }
        b
    }

    /// Parse as `Directory::open` does: a stored CRC field of 0 is not
    /// checked; any other value must equal the CRC (high half zero).
    pub fn parse(b: &[u8]) -> Result<Directory, DirError> {
        if b.len() < DIR_HEADER_LEN {
            return Err(DirError::TooShort { len: b.len() });
        }
        if &b[..8] != DIR_MAGIC {
            return Err(DirError::BadMagic);
        }
        let version = le_u32(b, 8);
        if version != DIR_VERSION {
            return Err(DirError::BadVersion(version));
        }
        let buckets = le_u32(b, 12);
        if buckets == 0 {
            return Err(DirError::ZeroBuckets);
        }
        let expected = DIR_HEADER_LEN + 8 * buckets as usize;
        if b.len() != expected {
            return Err(DirError::BadLength {
                buckets,
                len: b.len(),
                expected,
            });
        }
        let d = Directory {
            heads: b[DIR_HEADER_LEN..]
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        };
        let stored = le_u64(b, 16);
        let computed = d.crc();
        if stored != 0 && stored != u64::from(computed) {
            return Err(DirError::CrcMismatch {
                buckets,
                stored,
                computed,
            });
        }
        Ok(d)
    }
}

pub fn check_buckets(buckets: u32) -> Result<()> {
    if buckets == 0 || buckets > MAX_BUCKETS {
        return Err(Error::InvalidBuckets(buckets));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_dir_crcs_match_spec_vectors() {
        // Spec §11.4.
        for (buckets, len, crc) in [
            (64, 536, 0xe66d262c_u32),
            (128, 1048, 0x63a72f5d),
            (1024, 8216, 0xc505cc92),
        ] {
            let d = Directory::empty(buckets);
            let b = d.encode();
            assert_eq!(b.len(), len);
            assert_eq!(d.crc(), crc);
            assert_eq!(b[16..24], u64::from(crc).to_le_bytes());
            assert_eq!(Directory::parse(&b).unwrap(), d);
        }
    }

    #[test]
    fn parse_rejects_damage() {
        let good = Directory::empty(64).encode();
        let mut b = good.clone();
        b[30] ^= 1;
        assert!(matches!(
            Directory::parse(&b),
            Err(DirError::CrcMismatch { buckets: 64, .. })
        ));
        // A stored CRC of 0 is accepted unchecked, as 1.x does.
        b[16..24].fill(0);
        assert!(Directory::parse(&b).is_ok());
        assert_eq!(
            Directory::parse(&good[..100]).unwrap_err().buckets(),
            Some(64)
        );
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(Directory::parse(&b), Err(DirError::BadMagic));
        let mut b = good;
        b[8] = 2;
        assert_eq!(Directory::parse(&b), Err(DirError::BadVersion(2)));
        assert_eq!(
            Directory::parse(b"P1DIR"),
            Err(DirError::TooShort { len: 5 })
        );
    }
}
