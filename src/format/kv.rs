//! Reading KV_RH pages and overflow chains (spec §3.2, §3.3) and the key
//! hash that places keys in buckets and slots (§4.3).
//!
//! Everything here parses bytes that may be corrupt: every offset read from
//! a page is bounds-checked, and a damaged page is a [`KvError`], never a
//! panic. Page *reads* (with the CRC check of §3.4) go through
//! [`PageSource`], implemented by `Store` for the applier and by the
//! read-only segment reader of `qdb-inspect`.

use std::hash::Hasher as _;

use thiserror::Error;

use crate::error::Result;
use crate::format::layout::*;
use crate::format::page::Unreadable;

/// QuiverDB 1.x `hash64` (hash_kind 1): XXH64 with seed 0 over
/// `u64_le(key.len()) ‖ key`. The length prefix comes from Rust's `Hash` for
/// slices; it is written little-endian whatever the host, as 64-bit 1.x
/// builds do (§12.10).
pub fn hash64(key: &[u8]) -> u64 {
    let mut h = twox_hash::XxHash64::with_seed(0);
    h.write(&(key.len() as u64).to_le_bytes());
    h.write(key);
    h.finish()
}

/// The bucket of a key in a directory of `buckets` buckets (§4.3).
pub fn bucket_of(key: &[u8], buckets: u32) -> u32 {
    (hash64(key) % u64::from(buckets.max(1))) as u32
}

/// The seed a fresh KV_RH page gets (§3.2). Readers use the stored seed,
/// never this: compaction carries seeds forward.
pub fn derive_seed(page_id: u64) -> u64 {
    let mut x = page_id ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 27;
    x = x.wrapping_mul(0x3C79_AC49);
    x ^= x >> 33;
    x
}

/// The in-page fingerprint of a hash value: its top byte, with 0 mapped to 1.
fn fingerprint(hv: u64) -> u8 {
    match (hv >> 56) as u8 {
        0 => 1,
        fp => fp,
    }
}

/// Why bytes are not a usable KV_RH or OVERFLOW page.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum KvError {
    #[error("not a KV_RH v2 page")]
    NotKv,
    #[error("not an OVERFLOW v2 page")]
    NotOverflow,
    #[error("slot table of {slots} slots does not fit in the page")]
    TableTooLarge { slots: u16 },
    #[error("data_start {data_start} is outside the data area 64..={limit}")]
    DataStart { data_start: u16, limit: usize },
    #[error("used_slots {used} exceeds table_slots {cap}")]
    UsedSlots { used: u16, cap: u16 },
    #[error("slot {slot}: record at offset {off} lies outside the data area 64..{data_start}")]
    RecordOutOfBounds {
        slot: usize,
        off: u16,
        data_start: u16,
    },
    #[error("overflow chunk_len {chunk_len} exceeds the {max} bytes a page holds")]
    ChunkTooLong { chunk_len: u16, max: usize },
}

/// One 4-byte slot of the Robin Hood table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub off: u16,
    pub fp: u8,
    pub dist: u8,
}

impl Slot {
    pub fn is_empty(&self) -> bool {
        self.off == SLOT_EMPTY
    }
}

/// One live record of a KV_RH page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub slot: usize,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// A view of a KV_RH v2 page whose header has been checked: the slot table
/// fits, data_start lies in the data area, used_slots <= table_slots.
/// Records are checked when they are read.
#[derive(Clone, Copy, Debug)]
pub struct KvPage<'a> {
    page: &'a [u8],
    data_start: u16,
    cap: usize,
    used: u16,
    table_off: usize,
}

impl<'a> KvPage<'a> {
    pub fn parse(page: &'a [u8]) -> Result<KvPage<'a>, KvError> {
        if !is_page_of_type(page, PAGE_TYPE_KV_RH) {
            return Err(KvError::NotKv);
        }
        let slots = le_u16(page, PAGE_OFF_TABLE_SLOTS);
        let cap = usize::from(slots);
        if PAGE_HEADER_LEN + 4 * cap > page.len() {
            return Err(KvError::TableTooLarge { slots });
        }
        let table_off = page.len() - 4 * cap;
        let data_start = le_u16(page, PAGE_OFF_DATA_START);
        if usize::from(data_start) < PAGE_HEADER_LEN || usize::from(data_start) > table_off {
            return Err(KvError::DataStart {
                data_start,
                limit: table_off,
            });
        }
        let used = le_u16(page, PAGE_OFF_USED_SLOTS);
        if used > slots {
            return Err(KvError::UsedSlots { used, cap: slots });
        }
        Ok(KvPage {
            page,
            data_start,
            cap,
            used,
            table_off,
        })
    }

    pub fn next(&self) -> u64 {
        le_u64(self.page, PAGE_OFF_NEXT)
    }
    pub fn lsn(&self) -> u64 {
        le_u64(self.page, PAGE_OFF_LSN)
    }
    pub fn seed(&self) -> u64 {
        le_u64(self.page, PAGE_OFF_SEED)
    }
    pub fn used_slots(&self) -> u16 {
        self.used
    }
    pub fn table_slots(&self) -> usize {
        self.cap
    }
    pub fn data_start(&self) -> u16 {
        self.data_start
    }
    /// No live keys: such a page belongs to no bucket.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    pub fn slot(&self, i: usize) -> Slot {
        let at = self.table_off + 4 * i;
        Slot {
            off: le_u16(self.page, at),
            fp: self.page[at + 2],
            dist: self.page[at + 3],
        }
    }

    /// The record an occupied slot points at: `klen u16 | vlen u16 | key | value`.
    pub fn record(&self, slot: usize) -> Result<Entry<'a>, KvError> {
        let off = self.slot(slot).off;
        let end = usize::from(self.data_start);
        let bad = KvError::RecordOutOfBounds {
            slot,
            off,
            data_start: self.data_start,
        };
        let start = usize::from(off);
        if start < PAGE_HEADER_LEN || start + 4 > end {
            return Err(bad);
        }
        let klen = usize::from(le_u16(self.page, start));
        let vlen = usize::from(le_u16(self.page, start + 2));
        let kstart = start + 4;
        if kstart + klen + vlen > end {
            return Err(bad);
        }
        Ok(Entry {
            slot,
            key: &self.page[kstart..kstart + klen],
            value: &self.page[kstart + klen..kstart + klen + vlen],
        })
    }

    /// Every occupied slot's record, in slot order (`rh_kv_list`).
    pub fn entries(&self) -> impl Iterator<Item = Result<Entry<'a>, KvError>> + '_ {
        (0..self.cap)
            .filter(|&i| !self.slot(i).is_empty())
            .map(|i| self.record(i))
    }

    /// The key that decides the page's bucket (all keys of a chain share
    /// one): the first occupied slot's. `None` for an empty page, or when
    /// that record is damaged.
    pub fn first_key(&self) -> Option<&'a [u8]> {
        if self.is_empty() {
            return None;
        }
        let i = (0..self.cap).find(|&i| !self.slot(i).is_empty())?;
        self.record(i).ok().map(|e| e.key)
    }

    /// Robin Hood lookup exactly as `rh_kv_lookup` (§3.2): from the home
    /// slot, at most table_slots probes, stopping at an empty slot or at a
    /// slot closer to its home than we are to ours.
    pub fn lookup(&self, key: &[u8]) -> Result<Option<Entry<'a>>, KvError> {
        if self.cap == 0 {
            return Ok(None);
        }
        let hv = hash64(key) ^ self.seed();
        let fp = fingerprint(hv);
        let mut idx = (hv % self.cap as u64) as usize;
        let mut d: u8 = 0;
        for _ in 0..self.cap {
            let s = self.slot(idx);
            if s.is_empty() || s.dist < d {
                return Ok(None);
            }
            if s.fp == fp {
                let e = self.record(idx)?;
                if e.key == key {
                    return Ok(Some(e));
                }
            }
            idx = (idx + 1) % self.cap;
            d = d.saturating_add(1);
        }
        Ok(None)
    }
}

fn is_page_of_type(page: &[u8], ptype: u16) -> bool {
    page.len() >= PAGE_HEADER_LEN
        && &page[..4] == PAGE_MAGIC
        && le_u16(page, PAGE_OFF_VERSION) == PAGE_VERSION_V2
        && le_u16(page, PAGE_OFF_TYPE) == ptype
}

/// An inline value that stands for a value stored in an overflow chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placeholder {
    pub total_len: u64,
    pub head: u64,
}

/// Is this inline value an overflow placeholder? Exactly 18 bytes starting
/// with 0xFF; 1.x does not escape genuine values of that shape (§12.11).
pub fn placeholder(value: &[u8]) -> Option<Placeholder> {
    if value.len() == OVF_PLACEHOLDER_LEN && value[0] == OVF_PLACEHOLDER_TAG {
        Some(Placeholder {
            total_len: le_u64(value, 2),
            head: le_u64(value, 10),
        })
    } else {
        None
    }
}

/// The header fields of an OVERFLOW v2 page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverflowPage<'a> {
    pub chunk: &'a [u8],
    pub next: u64,
    pub lsn: u64,
}

pub fn parse_overflow(page: &[u8]) -> Result<OverflowPage<'_>, KvError> {
    if !is_page_of_type(page, PAGE_TYPE_OVERFLOW) {
        return Err(KvError::NotOverflow);
    }
    let chunk_len = le_u16(page, PAGE_OFF_DATA_START);
    let max = page.len() - PAGE_HEADER_LEN;
    if usize::from(chunk_len) > max {
        return Err(KvError::ChunkTooLong { chunk_len, max });
    }
    Ok(OverflowPage {
        chunk: &page[PAGE_HEADER_LEN..PAGE_HEADER_LEN + usize::from(chunk_len)],
        next: le_u64(page, PAGE_OFF_NEXT),
        lsn: le_u64(page, PAGE_OFF_LSN),
    })
}

/// Pages as `Pager::read_page` returns them: bounds, segment present and long
/// enough, CRC of v2 pages (§3.4).
pub trait PageSource {
    fn page_size(&self) -> u32;
    /// meta.next_page_id as this source knows it.
    fn page_count(&self) -> u64;
    /// `Err` only for local failures; `Ok(Err(_))` when the page cannot be read.
    fn read_page(&mut self, id: u64, buf: &mut [u8])
        -> Result<std::result::Result<(), Unreadable>>;
}

/// Why a page cannot be read, in words.
pub fn unreadable_reason(why: Unreadable) -> &'static str {
    match why {
        Unreadable::NotAllocated => "not allocated: beyond meta.next_page_id",
        Unreadable::MissingSegment => "its segment file is missing",
        Unreadable::ShortSegment => "its segment file is too short",
        Unreadable::CrcMismatch => "page CRC mismatch",
        Unreadable::IoError => "read error",
    }
}

/// Why an overflow chain could not be read (`ovf_read_chain`, §3.3).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ChainError {
    #[error("overflow page {page} cannot be read ({})", unreadable_reason(*why))]
    Unreadable { page: u64, why: Unreadable },
    #[error("overflow page {page}: {error}")]
    BadPage { page: u64, error: KvError },
    #[error("overflow chain from page {head} holds {got}+ bytes, more than the placeholder's total_len {total_len}")]
    TooLong { head: u64, total_len: u64, got: u64 },
    #[error("overflow chain from page {head} ends after {got} bytes, short of the placeholder's total_len {total_len}")]
    TooShort { head: u64, total_len: u64, got: u64 },
}

/// Read an overflow chain into `out` (cleared first), checking what
/// `ovf_read_chain` checks. Stops as soon as the chain holds more than
/// `total_len` bytes, which also ends a cycle of non-empty pages; a cycle of
/// empty chunks ends after as many steps as there are pages.
pub fn read_overflow_chain(
    src: &mut dyn PageSource,
    ph: Placeholder,
    out: &mut Vec<u8>,
) -> Result<std::result::Result<Vec<u64>, ChainError>> {
    out.clear();
    let mut buf = vec![0u8; src.page_size() as usize];
    let mut pages = Vec::new();
    let mut id = ph.head;
    while id != NO_PAGE {
        if pages.len() as u64 > src.page_count() {
            return Ok(Err(ChainError::TooLong {
                head: ph.head,
                total_len: ph.total_len,
                got: out.len() as u64,
            }));
        }
        if let Err(why) = src.read_page(id, &mut buf)? {
            return Ok(Err(ChainError::Unreadable { page: id, why }));
        }
        let ovf = match parse_overflow(&buf) {
            Ok(o) => o,
            Err(error) => return Ok(Err(ChainError::BadPage { page: id, error })),
        };
        if (out.len() + ovf.chunk.len()) as u64 > ph.total_len {
            return Ok(Err(ChainError::TooLong {
                head: ph.head,
                total_len: ph.total_len,
                got: (out.len() + ovf.chunk.len()) as u64,
            }));
        }
        out.extend_from_slice(ovf.chunk);
        pages.push(id);
        id = ovf.next;
    }
    if out.len() as u64 != ph.total_len {
        return Ok(Err(ChainError::TooShort {
            head: ph.head,
            total_len: ph.total_len,
            got: out.len() as u64,
        }));
    }
    Ok(Ok(pages))
}

/// Slot-table capacity for `n` keys as the 1.x writer picks it before any
/// halving: `next_power_of_two(ceil(n / 0.85))`.
fn desired_capacity(n: usize) -> usize {
    ((n as f64 / 0.85).ceil() as usize)
        .max(1)
        .next_power_of_two()
}

/// Build a KV_RH page holding `entries` (in insertion order, keys distinct),
/// with LSN and CRC set as `commit_page` sets them: the page a 1.x writer
/// produces for these keys on a fresh page. For tests and synthetic streams.
///
/// Panics if the entries do not fit, or a key repeats (caller bugs).
pub fn encode_kv_page(
    page_size: u32,
    page_id: u64,
    next: u64,
    lsn: u64,
    entries: &[(&[u8], &[u8])],
) -> Vec<u8> {
    let ps = page_size as usize;
    let mut p = vec![0u8; ps];
    let cap = if entries.is_empty() {
        0
    } else {
        desired_capacity(entries.len())
    };
    let seed = derive_seed(page_id);
    let mut slots = vec![
        Slot {
            off: SLOT_EMPTY,
            fp: 0,
            dist: 0
        };
        cap
    ];
    let mut at = PAGE_HEADER_LEN;
    for (key, value) in entries {
        let off = at as u16;
        p[at..at + 2].copy_from_slice(&(key.len() as u16).to_le_bytes());
        p[at + 2..at + 4].copy_from_slice(&(value.len() as u16).to_le_bytes());
        p[at + 4..at + 4 + key.len()].copy_from_slice(key);
        p[at + 4 + key.len()..at + 4 + key.len() + value.len()].copy_from_slice(value);
        at += 4 + key.len() + value.len();
        let hv = hash64(key) ^ seed;
        let mut cur = Slot {
            off,
            fp: fingerprint(hv),
            dist: 0,
        };
        let mut idx = (hv % cap as u64) as usize;
        loop {
            let s = &mut slots[idx];
            if s.is_empty() {
                *s = cur;
                break;
            }
            // Robin Hood: the entry further from home keeps the slot.
            if s.dist < cur.dist {
                std::mem::swap(s, &mut cur);
            }
            idx = (idx + 1) % cap;
            cur.dist = cur.dist.saturating_add(1);
        }
    }
    assert!(at <= ps - 4 * cap, "entries do not fit in one page");
    p[..4].copy_from_slice(PAGE_MAGIC);
    p[PAGE_OFF_VERSION..PAGE_OFF_VERSION + 2].copy_from_slice(&PAGE_VERSION_V2.to_le_bytes());
    p[PAGE_OFF_TYPE..PAGE_OFF_TYPE + 2].copy_from_slice(&PAGE_TYPE_KV_RH.to_le_bytes());
    p[PAGE_OFF_PAGE_ID..PAGE_OFF_PAGE_ID + 8].copy_from_slice(&page_id.to_le_bytes());
    p[PAGE_OFF_DATA_START..PAGE_OFF_DATA_START + 2].copy_from_slice(&(at as u16).to_le_bytes());
    p[PAGE_OFF_TABLE_SLOTS..PAGE_OFF_TABLE_SLOTS + 2].copy_from_slice(&(cap as u16).to_le_bytes());
    p[PAGE_OFF_USED_SLOTS..PAGE_OFF_USED_SLOTS + 2]
        .copy_from_slice(&(entries.len() as u16).to_le_bytes());
    p[PAGE_OFF_NEXT..PAGE_OFF_NEXT + 8].copy_from_slice(&next.to_le_bytes());
    p[PAGE_OFF_SEED..PAGE_OFF_SEED + 8].copy_from_slice(&seed.to_le_bytes());
    let table = ps - 4 * cap;
    for (i, s) in slots.iter().enumerate() {
        let o = table + 4 * i;
        p[o..o + 2].copy_from_slice(&s.off.to_le_bytes());
        p[o + 2] = s.fp;
        p[o + 3] = s.dist;
    }
    crate::format::page::commit_stamp(&mut p, lsn);
    p
}

/// An 18-byte overflow placeholder, as the writer stores it inline.
pub fn encode_placeholder(total_len: u64, head: u64) -> [u8; OVF_PLACEHOLDER_LEN] {
    let mut b = [0u8; OVF_PLACEHOLDER_LEN];
    b[0] = OVF_PLACEHOLDER_TAG;
    b[2..10].copy_from_slice(&total_len.to_le_bytes());
    b[10..18].copy_from_slice(&head.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec §11.1.
    const HASHES: [(&[u8], u64, u32, u32, u32); 6] = [
        (b"", 0x34c96acdcadb1bbb, 59, 59, 955),
        (b"a", 0xbd1698eada10e1c3, 3, 67, 451),
        (b"alpha", 0x71593232ffdb09c5, 5, 69, 453),
        (b"key1", 0x00988962323a7164, 36, 100, 356),
        (b"t000", 0xd5b93e8279bbb9a6, 38, 38, 422),
        (b"hello world", 0x93fcddf9eb5d2c57, 23, 87, 87),
    ];

    #[test]
    fn hash64_and_buckets_match_spec_vectors() {
        for (key, h, b64, b128, b1024) in HASHES {
            assert_eq!(hash64(key), h, "hash64({key:?})");
            assert_eq!(bucket_of(key, 64), b64);
            assert_eq!(bucket_of(key, 128), b128);
            assert_eq!(bucket_of(key, 1024), b1024);
        }
        // The wrong definition (plain XXH64 of the key) must differ.
        assert_eq!(
            twox_hash::XxHash64::oneshot(0, b"alpha"),
            0xc758e1011dda5848
        );
    }

    #[test]
    fn derive_seed_matches_spec_vectors() {
        // Spec §11.2.
        for (id, seed) in [
            (0, 0xe8c4e32c51751a1c),
            (1, 0xe8c4e32c15f36645),
            (2, 0xe8c4e32bd846636d),
            (7, 0xe8c4e32caee601f3),
            (100, 0xe8c4e334d251d454),
        ] {
            assert_eq!(derive_seed(id), seed, "derive_seed({id})");
        }
    }

    #[test]
    fn slot_bytes_match_spec_vectors() {
        // Spec §11.3: one key on a fresh page: table_slots 2, record at 64.
        let rows: [(&[u8], u64, [u8; 8]); 7] = [
            (b"a", 0, [0xff, 0xff, 0, 0, 0x40, 0, 0x55, 0]),
            (b"alpha", 0, [0xff, 0xff, 0, 0, 0x40, 0, 0x99, 0]),
            (b"alpha", 1, [0x40, 0, 0x99, 0, 0xff, 0xff, 0, 0]),
            (b"key1", 2, [0xff, 0xff, 0, 0, 0x40, 0, 0xe8, 0]),
            (b"t000", 3, [0x40, 0, 0x3d, 0, 0xff, 0xff, 0, 0]),
            (b"hello world", 4, [0xff, 0xff, 0, 0, 0x40, 0, 0x7b, 0]),
            (b"", 5, [0x40, 0, 0xdc, 0, 0xff, 0xff, 0, 0]),
        ];
        for (key, id, slots) in rows {
            let p = encode_kv_page(4096, id, NO_PAGE, 1, &[(key, b"v")]);
            assert_eq!(p[4088..], slots, "key {key:?} on page {id}");
            let kv = KvPage::parse(&p).unwrap();
            assert_eq!(kv.table_slots(), 2);
            assert_eq!(kv.lookup(key).unwrap().unwrap().value, b"v");
            assert_eq!(kv.lookup(b"absent").unwrap(), None);
        }
    }

    #[test]
    fn worked_example_page_is_byte_exact() {
        // Spec §11.6: put("alpha","1") on page 0, lsn 1.
        let p = encode_kv_page(4096, 0, NO_PAGE, 1, &[(b"alpha", b"1")]);
        let hdr = [
            0x50, 0x31, 0x50, 0x47, 0x02, 0x00, 0x02, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0x4a, 0x00, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x1c, 0x1a, 0x75, 0x51, 0x2c, 0xe3, 0xc4, 0xe8,
            0, 0, 0, 0, 0, 0, 0, 0, 0xc6, 0x4f, 0x5c, 0x19,
        ];
        assert_eq!(p[..64], hdr);
        assert_eq!(p[64..74], *b"\x05\x00\x01\x00alpha1");
        assert!(p[74..4088].iter().all(|&b| b == 0));
        assert_eq!(hash64(b"alpha") ^ derive_seed(0), 0x999dd11eaeae13d9);
        let kv = KvPage::parse(&p).unwrap();
        assert_eq!(kv.first_key(), Some(&b"alpha"[..]));
        assert_eq!((kv.lsn(), kv.next(), kv.used_slots()), (1, NO_PAGE, 1));
    }

    #[test]
    fn many_keys_round_trip_through_lookup_and_entries() {
        let keys: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("user:{i:06}").into_bytes())
            .collect();
        let entries: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (&k[..], &k[2..])).collect();
        let p = encode_kv_page(4096, 9, 3, 7, &entries);
        let kv = KvPage::parse(&p).unwrap();
        assert_eq!(kv.table_slots(), 64);
        assert_eq!(kv.next(), 3);
        for k in &keys {
            assert_eq!(kv.lookup(k).unwrap().unwrap().value, &k[2..]);
        }
        let mut listed: Vec<&[u8]> = kv.entries().map(|e| e.unwrap().key).collect();
        listed.sort();
        assert_eq!(listed, keys.iter().map(|k| &k[..]).collect::<Vec<_>>());
    }

    #[test]
    fn damaged_pages_are_errors_not_panics() {
        let mut p = encode_kv_page(4096, 0, NO_PAGE, 1, &[(b"alpha", b"1")]);
        p[PAGE_OFF_TABLE_SLOTS..PAGE_OFF_TABLE_SLOTS + 2].copy_from_slice(&2000u16.to_le_bytes());
        assert_eq!(
            KvPage::parse(&p).unwrap_err(),
            KvError::TableTooLarge { slots: 2000 }
        );
        let mut p = encode_kv_page(4096, 0, NO_PAGE, 1, &[(b"alpha", b"1")]);
        p[PAGE_OFF_USED_SLOTS] = 3;
        assert!(matches!(KvPage::parse(&p), Err(KvError::UsedSlots { .. })));
        let mut p = encode_kv_page(4096, 0, NO_PAGE, 1, &[(b"alpha", b"1")]);
        p[64] = 200; // klen runs past data_start
        let kv = KvPage::parse(&p).unwrap();
        assert!(matches!(
            kv.lookup(b"alpha"),
            Err(KvError::RecordOutOfBounds { .. })
        ));
        assert_eq!(kv.first_key(), None);
        let mut p = encode_kv_page(4096, 0, NO_PAGE, 1, &[(b"alpha", b"1")]);
        p[4092..4094].copy_from_slice(&4000u16.to_le_bytes());
        let kv = KvPage::parse(&p).unwrap();
        assert!(kv.entries().next().unwrap().is_err());
        assert_eq!(KvPage::parse(&[0u8; 4096]).unwrap_err(), KvError::NotKv);
        assert_eq!(KvPage::parse(&[0u8; 10]).unwrap_err(), KvError::NotKv);
        let mut o = crate::format::page::overflow_page(4096, 1, NO_PAGE, 1, b"x");
        o[PAGE_OFF_DATA_START..PAGE_OFF_DATA_START + 2].copy_from_slice(&5000u16.to_le_bytes());
        assert!(matches!(
            parse_overflow(&o),
            Err(KvError::ChunkTooLong { .. })
        ));
    }

    #[test]
    fn placeholders() {
        let ph = encode_placeholder(102400, 7);
        assert_eq!(
            placeholder(&ph),
            Some(Placeholder {
                total_len: 102400,
                head: 7
            })
        );
        assert_eq!(placeholder(&ph[..17]), None);
        let mut not = ph;
        not[0] = 0xFE;
        assert_eq!(placeholder(&not), None);
    }

    /// An in-memory page source for chain tests.
    struct Mem(Vec<Vec<u8>>);
    impl PageSource for Mem {
        fn page_size(&self) -> u32 {
            4096
        }
        fn page_count(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_page(
            &mut self,
            id: u64,
            buf: &mut [u8],
        ) -> Result<std::result::Result<(), Unreadable>> {
            match self.0.get(id as usize) {
                Some(p) => {
                    buf.copy_from_slice(p);
                    Ok(Ok(()))
                }
                None => Ok(Err(Unreadable::NotAllocated)),
            }
        }
    }

    #[test]
    fn overflow_chains() {
        let full = vec![7u8; 4032];
        let ovf = crate::format::page::overflow_page;
        let mut mem = Mem(vec![
            ovf(4096, 0, 1, 1, &full),
            ovf(4096, 1, NO_PAGE, 2, b"tail"),
            ovf(4096, 2, 2, 3, b""), // empty chunk pointing at itself
        ]);
        let mut out = Vec::new();
        let ph = Placeholder {
            total_len: 4036,
            head: 0,
        };
        assert_eq!(
            read_overflow_chain(&mut mem, ph, &mut out).unwrap(),
            Ok(vec![0, 1])
        );
        assert_eq!(out.len(), 4036);
        assert_eq!(&out[4032..], b"tail");
        let short = Placeholder {
            total_len: 5000,
            ..ph
        };
        assert!(matches!(
            read_overflow_chain(&mut mem, short, &mut out).unwrap(),
            Err(ChainError::TooShort { got: 4036, .. })
        ));
        let long = Placeholder {
            total_len: 100,
            ..ph
        };
        assert!(matches!(
            read_overflow_chain(&mut mem, long, &mut out).unwrap(),
            Err(ChainError::TooLong { .. })
        ));
        let cyc = Placeholder {
            total_len: 0,
            head: 2,
        };
        assert!(matches!(
            read_overflow_chain(&mut mem, cyc, &mut out).unwrap(),
            Err(ChainError::TooLong { .. })
        ));
        let gone = Placeholder {
            total_len: 1,
            head: 9,
        };
        assert!(matches!(
            read_overflow_chain(&mut mem, gone, &mut out).unwrap(),
            Err(ChainError::Unreadable { page: 9, .. })
        ));
        mem.0[1] = vec![0u8; 4096];
        assert!(matches!(
            read_overflow_chain(&mut mem, ph, &mut out).unwrap(),
            Err(ChainError::BadPage { page: 1, .. })
        ));
    }
}
