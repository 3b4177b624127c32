//! qdb-ship's own record types (docs/protocol.md): heartbeat and the two
//! catch-up markers. They travel inside a WAL v1 stream as records of types
//! that QuiverDB 1.x ignores, with a valid CRC.
//!
//! The record LSN field matters because 1.x counts it into `last_lsn`
//! (spec §6.2 step 6): the heartbeat and the begin marker carry 0, and the
//! end marker carries `upto` only because everything up to it has then
//! really been sent.

use crate::format::layout::{
    le_u64, QF_MARKER_LEN, QF_RESUME_LEN, QF_RESUME_MAGIC, QF_TYPE_CATCHUP_BEGIN,
    QF_TYPE_CATCHUP_END, QF_TYPE_HEARTBEAT,
};
use crate::format::wal::encode_record;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    /// The leader's meta.last_lsn at the time of sending, and its clock.
    Heartbeat { leader_lsn: u64, unix_ms: u64 },
    /// A catch-up from the data segments starts: every page whose LSN is in
    /// `(since, upto]` follows, in ascending LSN order (pages with higher
    /// LSNs may follow too).
    Begin { since: u64, upto: u64 },
    /// That catch-up ended: everything up to `upto` has been sent, for a
    /// follower that held everything up to `since`.
    End { since: u64, upto: u64 },
}

/// Is `rtype` one of ours?
pub fn is_marker(rtype: u8) -> bool {
    matches!(
        rtype,
        QF_TYPE_HEARTBEAT | QF_TYPE_CATCHUP_BEGIN | QF_TYPE_CATCHUP_END
    )
}

impl Marker {
    /// Parse a CRC-checked record of one of our types; `None` for anything
    /// else (another length, another type), which is then ignored as 1.x would.
    pub fn parse(rtype: u8, payload: &[u8]) -> Option<Marker> {
        if payload.len() != QF_MARKER_LEN as usize {
            return None;
        }
        let (a, b) = (le_u64(payload, 0), le_u64(payload, 8));
        match rtype {
            QF_TYPE_HEARTBEAT => Some(Marker::Heartbeat {
                leader_lsn: a,
                unix_ms: b,
            }),
            QF_TYPE_CATCHUP_BEGIN => Some(Marker::Begin { since: a, upto: b }),
            QF_TYPE_CATCHUP_END => Some(Marker::End { since: a, upto: b }),
            _ => None,
        }
    }

    /// (type, record lsn, payload)
    fn parts(&self) -> (u8, u64, [u64; 2]) {
        match *self {
            Marker::Heartbeat {
                leader_lsn,
                unix_ms,
            } => (QF_TYPE_HEARTBEAT, 0, [leader_lsn, unix_ms]),
            Marker::Begin { since, upto } => (QF_TYPE_CATCHUP_BEGIN, 0, [since, upto]),
            Marker::End { since, upto } => (QF_TYPE_CATCHUP_END, upto, [since, upto]),
        }
    }

    /// The whole record: 28-byte header with a valid CRC, 16-byte payload.
    pub fn encode(&self) -> Vec<u8> {
        let (rtype, lsn, [a, b]) = self.parts();
        let mut payload = [0u8; QF_MARKER_LEN as usize];
        payload[..8].copy_from_slice(&a.to_le_bytes());
        payload[8..].copy_from_slice(&b.to_le_bytes());
        let mut out = Vec::with_capacity(44);
        encode_record(&mut out, rtype, lsn, 0, &payload);
        out
    }
}

/// The resume request a client sends first on a `qdb-ship --listen`
/// connection: `QFRESUME` then the LSN it holds completely (u64 LE).
pub fn resume_request(lsn: u64) -> [u8; QF_RESUME_LEN] {
    let mut b = [0u8; QF_RESUME_LEN];
    b[..8].copy_from_slice(QF_RESUME_MAGIC);
    b[8..].copy_from_slice(&lsn.to_le_bytes());
    b
}

/// Parse a resume request; `None` if these bytes are not one.
pub fn parse_resume_request(b: &[u8]) -> Option<u64> {
    (b.len() == QF_RESUME_LEN && &b[..8] == QF_RESUME_MAGIC).then(|| le_u64(b, 8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::wal::{record_crc, RecordHeader};

    #[test]
    fn markers_round_trip_with_a_valid_crc() {
        for m in [
            Marker::Heartbeat {
                leader_lsn: 7,
                unix_ms: 9,
            },
            Marker::Begin { since: 3, upto: 40 },
            Marker::End { since: 3, upto: 40 },
        ] {
            let rec = m.encode();
            assert_eq!(rec.len(), 44);
            let raw: [u8; 28] = rec[..28].try_into().unwrap();
            let h = RecordHeader::parse(&raw);
            assert!(is_marker(h.rtype));
            assert_eq!(h.crc, record_crc(&raw, &rec[28..]));
            // 1.x counts the record LSN: only the end marker claims one.
            let want_lsn = if let Marker::End { upto, .. } = m {
                upto
            } else {
                0
            };
            assert_eq!(h.lsn, want_lsn);
            assert_eq!(Marker::parse(h.rtype, &rec[28..]), Some(m));
        }
        assert_eq!(Marker::parse(QF_TYPE_HEARTBEAT, &[0; 15]), None);
        assert_eq!(Marker::parse(1, &[0; 16]), None);
    }

    #[test]
    fn resume_request_bytes() {
        let r = resume_request(0x0102);
        assert_eq!(&r, b"QFRESUME\x02\x01\0\0\0\0\0\0");
        assert_eq!(parse_resume_request(&r), Some(0x0102));
        assert_eq!(parse_resume_request(b"P1WAL001\0\0\0\0\0\0\0\0"), None);
    }
}
