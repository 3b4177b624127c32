//! Every QuiverDB 1.x format constant, in one place, each with the section of
//! `spec/quiverdb-1x-formats.md` it comes from. Nothing here is ours to change:
//! these values are what QuiverDB 1.0.0–1.2.5 write and read.

/// `NO_PAGE` (§0): the end of a chain.
pub const NO_PAGE: u64 = u64::MAX;

// ---- meta v3 (§2) -------------------------------------------------------
pub const META_FILE: &str = "meta";
pub const META_TMP_FILE: &str = "meta.tmp";
pub const META_MAGIC: &[u8; 8] = b"P1DBMETA";
/// The only meta version this crate writes.
pub const META_VERSION: u32 = 3;
/// meta v3 is exactly 41 bytes, no padding, no checksum.
pub const META_LEN: usize = 41;
pub const META_OFF_VERSION: usize = 8;
pub const META_OFF_PAGE_SIZE: usize = 12;
pub const META_OFF_FLAGS: usize = 16;
pub const META_OFF_NEXT_PAGE_ID: usize = 20;
pub const META_OFF_HASH_KIND: usize = 28;
pub const META_OFF_LAST_LSN: usize = 32;
pub const META_OFF_CLEAN: usize = 40;
/// hash_kind 1 = xxh64 with seed 0 over `u64_le(len) ‖ key` (§4.3).
pub const HASH_KIND_XXH64: u32 = 1;

// ---- pages and segments (§1.2, §3) ------------------------------------------
/// 32 MiB: the logical size of one data segment file.
pub const SEGMENT_SIZE: u64 = 32 * 1024 * 1024;
/// Page sizes `init` accepts: a power of two, >= 4096 and <= 65535 (§3.5).
pub const VALID_PAGE_SIZES: [u32; 4] = [4096, 8192, 16384, 32768];
pub const PAGE_MAGIC: &[u8; 4] = b"P1PG";
pub const PAGE_HEADER_LEN: usize = 64;
pub const PAGE_OFF_VERSION: usize = 4;
pub const PAGE_OFF_TYPE: usize = 6;
pub const PAGE_OFF_PAGE_ID: usize = 12;
/// KV_RH: data_start; OVERFLOW: chunk_len.
pub const PAGE_OFF_DATA_START: usize = 20;
pub const PAGE_OFF_TABLE_SLOTS: usize = 22;
pub const PAGE_OFF_USED_SLOTS: usize = 24;
pub const PAGE_OFF_FLAGS: usize = 26;
pub const PAGE_OFF_NEXT: usize = 28;
pub const PAGE_OFF_LSN: usize = 36;
pub const PAGE_OFF_SEED: usize = 44;
/// Page CRC: IEEE CRC32 over the whole page with these 4 bytes taken as zero.
pub const PAGE_OFF_CRC: usize = 60;
/// The page format version that carries an LSN (`v2_page_lsn`, §3.6).
pub const PAGE_VERSION_V2: u16 = 2;
pub const PAGE_TYPE_KV_RH: u16 = 2;
pub const PAGE_TYPE_OVERFLOW: u16 = 3;
/// An empty Robin Hood slot starts with offset 0xFFFF (§3.2).
pub const SLOT_EMPTY: u16 = 0xFFFF;
/// An inline value of exactly this length starting with 0xFF is an overflow placeholder (§3.3).
pub const OVF_PLACEHOLDER_LEN: usize = 18;
pub const OVF_PLACEHOLDER_TAG: u8 = 0xFF;

// ---- WAL v1 (§5) ------------------------------------------------------------
pub const WAL_FILE: &str = "wal-000001.log";
pub const WAL_MAGIC: &[u8; 8] = b"P1WAL001";
/// The 2.x magic: recognised only to say clearly that 2.x is not supported.
pub const WAL2_MAGIC: &[u8; 8] = b"P2WAL001";
pub const WAL_HEADER_LEN: usize = 16;
pub const WAL_RECORD_HEADER_LEN: usize = 28;
/// Header bytes covered by the record CRC (the CRC itself sits at 24..28).
pub const WAL_REC_OFF_CRC: usize = 24;
pub const WAL_REC_OFF_LSN: usize = 4;
pub const WAL_REC_OFF_PAGE_ID: usize = 12;
pub const WAL_REC_OFF_LEN: usize = 20;
pub const WAL_TYPE_PAGE_IMAGE: u8 = 1;
pub const WAL_TYPE_TRUNCATE: u8 = 2;

// ---- quiverdb-follower record types (ours, NOT QuiverDB 1.x) ---------------
// Sent by qdb-ship in the WAL v1 stream; 1.x readers check their CRC, count
// their record LSN and ignore them (spec §6.2 steps 5-7). Layouts and the
// choice of each record LSN field are in docs/protocol.md.
/// Heartbeat: record lsn 0, payload `leader_last_lsn u64 | unix_ms u64`.
pub const QF_TYPE_HEARTBEAT: u8 = 0x51;
/// Catch-up begins: record lsn 0, payload `since u64 | upto u64`.
pub const QF_TYPE_CATCHUP_BEGIN: u8 = 0x52;
/// Catch-up complete: record lsn = upto, payload `since u64 | upto u64`.
pub const QF_TYPE_CATCHUP_END: u8 = 0x53;
/// Every marker payload is two u64: 16 bytes.
pub const QF_MARKER_LEN: u32 = 16;
/// Resume request a client may send first on a qdb-ship --listen connection:
/// these 8 bytes, then the LSN to resume after (u64 LE).
pub const QF_RESUME_MAGIC: &[u8; 8] = b"QFRESUME";
pub const QF_RESUME_LEN: usize = 16;

// ---- free list (§4.2) -------------------------------------------------------
pub const FREE_FILE: &str = "free";
pub const FREE_MAGIC: &[u8; 8] = b"P1FREE01";
pub const FREE_HEADER_LEN: usize = 24;

// ---- directory (§4.1) ------------------------------------------------------
pub const DIR_FILE: &str = "dir";
pub const DIR_TMP_FILE: &str = "dir.tmp";
pub const DIR_MAGIC: &[u8; 8] = b"P1DIR001";
pub const DIR_VERSION: u32 = 1;
pub const DIR_HEADER_LEN: usize = 24;

// ---- lock (§8) ---------------------------------------------------------------
pub const LOCK_FILE: &str = "LOCK";

/// `data-NNNNNN.p1seg`, numbering from 1 (§1.1).
pub fn segment_file_name(seg_no: u64) -> String {
    format!("data-{seg_no:06}.p1seg")
}

/// Pages per 32 MiB segment for a page size (at least 1).
pub fn pages_per_segment(page_size: u32) -> u64 {
    (SEGMENT_SIZE / u64::from(page_size)).max(1)
}

pub fn is_valid_page_size(page_size: u32) -> bool {
    VALID_PAGE_SIZES.contains(&page_size)
}

/// Little-endian field readers. Callers pass slices they have already
/// length-checked, so an out-of-range offset is a bug, not bad input.
pub fn le_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
pub fn le_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
pub fn le_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
