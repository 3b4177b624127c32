//! Page views (spec §3): the v2 page LSN that drives gating, the page CRC,
//! and small encoders for tests and benchmarks.

use crate::format::layout::*;

/// Does this buffer carry a page CRC that `read_page` checks (magic `P1PG`
/// and version >= 2, §3.4)?
pub fn has_page_crc(page: &[u8]) -> bool {
    page.len() >= PAGE_HEADER_LEN
        && &page[..4] == PAGE_MAGIC
        && le_u16(page, PAGE_OFF_VERSION) >= PAGE_VERSION_V2
}

/// The LSN of a v2 KV_RH or OVERFLOW page (`v2_page_lsn`, §3.6); `None` for
/// every other page (zeroed, other magic, version != 2, other type), which
/// 1.x never gates.
pub fn v2_page_lsn(page: &[u8]) -> Option<u64> {
    if page.len() < PAGE_HEADER_LEN || &page[..4] != PAGE_MAGIC {
        return None;
    }
    let version = le_u16(page, PAGE_OFF_VERSION);
    let ptype = le_u16(page, PAGE_OFF_TYPE);
    if version == PAGE_VERSION_V2 && (ptype == PAGE_TYPE_KV_RH || ptype == PAGE_TYPE_OVERFLOW) {
        Some(le_u64(page, PAGE_OFF_LSN))
    } else {
        None
    }
}

/// IEEE CRC32 over the whole page with bytes 60..64 taken as zero.
pub fn compute_page_crc(page: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&page[..PAGE_OFF_CRC]);
    h.update(&[0u8; 4]);
    h.update(&page[PAGE_OFF_CRC + 4..]);
    h.finalize()
}

/// Outcome of checking a page's CRC the way `Pager::read_page` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageCrc {
    /// No `P1PG` v>=2 header: 1.x does not check such pages.
    NotChecked,
    /// Stored CRC 0: accepted unchecked ("zero allowed for compatibility").
    Zero,
    Valid,
    Mismatch {
        stored: u32,
        computed: u32,
    },
}

pub fn check_page_crc(page: &[u8]) -> PageCrc {
    if !has_page_crc(page) {
        return PageCrc::NotChecked;
    }
    let stored = le_u32(page, PAGE_OFF_CRC);
    if stored == 0 {
        return PageCrc::Zero;
    }
    let computed = compute_page_crc(page);
    if stored == computed {
        PageCrc::Valid
    } else {
        PageCrc::Mismatch { stored, computed }
    }
}

/// Stamp `lsn` into a KV_RH/OVERFLOW page and recompute its CRC, as the
/// leader's `commit_page` does before logging (§5.3).
pub fn commit_stamp(page: &mut [u8], lsn: u64) {
    if v2_page_lsn(page).is_some() {
        page[PAGE_OFF_LSN..PAGE_OFF_LSN + 8].copy_from_slice(&lsn.to_le_bytes());
    }
    if has_page_crc(page) {
        let crc = compute_page_crc(page);
        page[PAGE_OFF_CRC..PAGE_OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// A v2 OVERFLOW page holding `chunk` (at most `page_size - 64` bytes), with
/// its LSN and CRC set. Used to build synthetic streams.
pub fn overflow_page(page_size: u32, page_id: u64, next: u64, lsn: u64, chunk: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; page_size as usize];
    assert!(
        chunk.len() <= p.len() - PAGE_HEADER_LEN,
        "chunk larger than a page"
    );
    p[..4].copy_from_slice(PAGE_MAGIC);
    p[PAGE_OFF_VERSION..PAGE_OFF_VERSION + 2].copy_from_slice(&PAGE_VERSION_V2.to_le_bytes());
    p[PAGE_OFF_TYPE..PAGE_OFF_TYPE + 2].copy_from_slice(&PAGE_TYPE_OVERFLOW.to_le_bytes());
    p[PAGE_OFF_PAGE_ID..PAGE_OFF_PAGE_ID + 8].copy_from_slice(&page_id.to_le_bytes());
    p[PAGE_OFF_DATA_START..PAGE_OFF_DATA_START + 2]
        .copy_from_slice(&(chunk.len() as u16).to_le_bytes());
    p[PAGE_OFF_NEXT..PAGE_OFF_NEXT + 8].copy_from_slice(&next.to_le_bytes());
    p[PAGE_HEADER_LEN..PAGE_HEADER_LEN + chunk.len()].copy_from_slice(chunk);
    commit_stamp(&mut p, lsn);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn worked_example_header_crc() {
        // Spec §11.6: page 0 header after put("alpha","1"), CRC 0x195c4fc6.
        let mut p = vec![0u8; 4096];
        let hdr = [
            0x50, 0x31, 0x50, 0x47, 0x02, 0x00, 0x02, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0x4a, 0x00, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x1c, 0x1a, 0x75, 0x51, 0x2c, 0xe3, 0xc4, 0xe8,
            0, 0, 0, 0, 0, 0, 0, 0, 0xc6, 0x4f, 0x5c, 0x19,
        ];
        p[..64].copy_from_slice(&hdr);
        p[64..74].copy_from_slice(&[0x05, 0x00, 0x01, 0x00, b'a', b'l', b'p', b'h', b'a', b'1']);
        p[4088..].copy_from_slice(&[0xff, 0xff, 0x00, 0x00, 0x40, 0x00, 0x99, 0x00]);
        assert_eq!(check_page_crc(&p), PageCrc::Valid);
        assert_eq!(compute_page_crc(&p), 0x195c_4fc6);
        assert_eq!(v2_page_lsn(&p), Some(1));
        p[100] ^= 1;
        assert!(matches!(check_page_crc(&p), PageCrc::Mismatch { .. }));
    }

    #[test]
    fn non_v2_pages_have_no_lsn() {
        let zero = vec![0u8; 4096];
        assert_eq!(v2_page_lsn(&zero), None);
        assert_eq!(check_page_crc(&zero), PageCrc::NotChecked);
        let mut p = overflow_page(4096, 3, NO_PAGE, 9, b"abc");
        assert_eq!(v2_page_lsn(&p), Some(9));
        p[PAGE_OFF_VERSION] = 3; // version 3: CRC still checked, but no LSN
        assert_eq!(v2_page_lsn(&p), None);
        assert!(has_page_crc(&p));
    }
}

/// Why a page could not be read; any of these makes apply overwrite it (§6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreadable {
    NotAllocated,
    MissingSegment,
    ShortSegment,
    CrcMismatch,
    IoError,
}
