//! Streams for tests: a builder ([`StreamBuilder`]), an index of a
//! stream's records read independently of the library's `WalReader` (a
//! second implementation of spec §5, so the two check each other), the
//! `--since-lsn` slice an operator would resume with, and the durability
//! check [`check_claims`]. Tests use these rather than offsets of their own.

use std::collections::HashMap;
use std::path::Path;

use quiverdb_follower::format::layout::*;
use quiverdb_follower::format::page::{self, PageCrc};
use quiverdb_follower::format::wal::{self, record_crc};
use quiverdb_follower::Meta;

use crate::fault::SimFs;

/// Builds a stream for a test: the 16-byte header, then records with valid
/// CRCs in the order they are added.
#[derive(Clone, Debug)]
pub struct StreamBuilder {
    bytes: Vec<u8>,
    page_size: u32,
}

impl Default for StreamBuilder {
    fn default() -> Self {
        StreamBuilder::new()
    }
}

impl StreamBuilder {
    /// A stream header; page images are 4 KiB.
    pub fn new() -> StreamBuilder {
        StreamBuilder::with_page_size(4096)
    }

    /// A stream header; page images are `page_size` bytes.
    pub fn with_page_size(page_size: u32) -> StreamBuilder {
        StreamBuilder {
            bytes: wal::stream_header().to_vec(),
            page_size,
        }
    }

    /// A PAGE_IMAGE record of page `page_id` at `lsn`: a v2 OVERFLOW page
    /// holding `chunk`, with page LSN `lsn` and a valid page CRC.
    pub fn page(&mut self, lsn: u64, page_id: u64, chunk: &[u8]) -> &mut Self {
        let p = page::overflow_page(self.page_size, page_id, NO_PAGE, lsn, chunk);
        self.record(WAL_TYPE_PAGE_IMAGE, lsn, page_id, &p)
    }

    /// A PAGE_IMAGE record with `payload` as it is (any length or content).
    pub fn page_image(&mut self, lsn: u64, page_id: u64, payload: &[u8]) -> &mut Self {
        self.record(WAL_TYPE_PAGE_IMAGE, lsn, page_id, payload)
    }

    /// A record of any type, with a valid record CRC.
    pub fn record(&mut self, rtype: u8, lsn: u64, page_id: u64, payload: &[u8]) -> &mut Self {
        wal::encode_record(&mut self.bytes, rtype, lsn, page_id, payload);
        self
    }

    /// A TRUNCATE record (the leader truncated its WAL).
    pub fn truncate(&mut self) -> &mut Self {
        wal::encode_truncate(&mut self.bytes);
        self
    }

    /// A repeated stream header in mid-stream (after a truncation).
    pub fn header(&mut self) -> &mut Self {
        self.bytes.extend_from_slice(&wal::stream_header());
        self
    }

    /// Bytes as they are (records of another stream, garbage, a cut).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(bytes);
        self
    }

    /// The stream so far.
    pub fn build(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// The stream so far, indexed.
    pub fn index(&self) -> StreamIndex {
        StreamIndex::new(&self.bytes)
    }
}

/// One CRC-valid, complete record of a stream.
#[derive(Clone, Debug)]
pub struct IndexedRecord {
    /// Stream offset of the record header.
    pub offset: usize,
    /// Stream offset just past the payload.
    pub end: usize,
    pub rtype: u8,
    pub lsn: u64,
    pub page_id: u64,
    /// `v2_page_lsn` of a PAGE_IMAGE payload.
    pub page_lsn: Option<u64>,
}

/// The records of a stream, read independently of [`quiverdb_follower::format::wal::WalReader`]
/// (a second implementation of §5, so the two check each other).
#[derive(Clone, Debug)]
pub struct StreamIndex {
    pub bytes: Vec<u8>,
    /// Complete, CRC-valid records up to the first bad or incomplete one.
    pub records: Vec<IndexedRecord>,
    /// Why the scan stopped: `None` at a clean end (or a partial tail).
    pub stopped_at_crc_error: Option<usize>,
}

impl StreamIndex {
    /// Index a stream. Anything that is not a `P1WAL001` stream has no records.
    pub fn new(bytes: &[u8]) -> StreamIndex {
        let mut idx = StreamIndex {
            bytes: bytes.to_vec(),
            records: Vec::new(),
            stopped_at_crc_error: None,
        };
        if bytes.len() < WAL_HEADER_LEN || &bytes[..8] != WAL_MAGIC {
            return idx;
        }
        let mut pos = WAL_HEADER_LEN;
        loop {
            if bytes.len() - pos >= 8 && &bytes[pos..pos + 8] == WAL_MAGIC {
                if bytes.len() - pos < WAL_HEADER_LEN {
                    break;
                }
                pos += WAL_HEADER_LEN;
                continue;
            }
            if bytes.len() - pos < WAL_RECORD_HEADER_LEN {
                break;
            }
            let hdr: &[u8; WAL_RECORD_HEADER_LEN] = bytes[pos..pos + WAL_RECORD_HEADER_LEN]
                .try_into()
                .expect("28 bytes");
            let len = le_u32(hdr, WAL_REC_OFF_LEN) as usize;
            let body = pos + WAL_RECORD_HEADER_LEN;
            if bytes.len() - body < len {
                break;
            }
            let payload = &bytes[body..body + len];
            if record_crc(hdr, payload) != le_u32(hdr, WAL_REC_OFF_CRC) {
                idx.stopped_at_crc_error = Some(pos);
                break;
            }
            let rtype = hdr[0];
            idx.records.push(IndexedRecord {
                offset: pos,
                end: body + len,
                rtype,
                lsn: le_u64(hdr, WAL_REC_OFF_LSN),
                page_id: le_u64(hdr, WAL_REC_OFF_PAGE_ID),
                page_lsn: if rtype == WAL_TYPE_PAGE_IMAGE {
                    page::v2_page_lsn(payload)
                } else {
                    None
                },
            });
            pos = body + len;
        }
        idx
    }

    pub fn payload(&self, r: &IndexedRecord) -> &[u8] {
        &self.bytes[r.offset + WAL_RECORD_HEADER_LEN..r.end]
    }

    /// The highest record LSN in the index (0 if none).
    pub fn max_lsn(&self) -> u64 {
        self.records.iter().map(|r| r.lsn).max().unwrap_or(0)
    }

    /// What `wal-ship --since-lsn lsn` would send from this stream: the
    /// header, then every record with a greater LSN.
    pub fn since(&self, lsn: u64) -> Vec<u8> {
        let mut out = quiverdb_follower::format::wal::stream_header().to_vec();
        for r in self.records.iter().filter(|r| r.lsn > lsn) {
            out.extend_from_slice(&self.bytes[r.offset..r.end]);
        }
        out
    }

    /// The stream again with every LSN (record and page) moved up by `by`:
    /// the same pages rewritten later, as a leader's churn rewrites them.
    /// Mid-stream headers are dropped.
    pub fn restamp(&self, by: u64) -> Vec<u8> {
        let mut out = StreamBuilder::new();
        for r in &self.records {
            let mut p = self.payload(r).to_vec();
            page::commit_stamp(&mut p, r.lsn + by);
            out.record(r.rtype, r.lsn + by, r.page_id, &p);
        }
        out.build()
    }

    /// For every page, the highest page LSN among the page images with
    /// `lsn <= last_lsn`: what a follower claiming `last_lsn` must hold at
    /// least.
    pub fn claimed_page_lsns(&self, last_lsn: u64) -> HashMap<u64, u64> {
        let mut m = HashMap::new();
        for r in self.records.iter().filter(|r| r.lsn <= last_lsn) {
            if let Some(l) = r.page_lsn {
                let e = m.entry(r.page_id).or_insert(0);
                *e = l.max(*e);
            }
        }
        m
    }

    /// The LSN meta should hold after applying `bytes[..cut]` as a whole
    /// session: the highest LSN of the complete records in it.
    pub fn last_lsn_within(&self, cut: usize) -> u64 {
        self.records
            .iter()
            .filter(|r| r.end <= cut)
            .map(|r| r.lsn)
            .max()
            .unwrap_or(0)
    }
}

/// Check the durable image of the follower at `root` against the stream it
/// was fed: **meta.last_lsn never claims a page that is not durable**.
///
/// For every PAGE_IMAGE record with `lsn <= meta.last_lsn`, the durable page
/// at its page id must be an image of that page from the stream that
/// supersedes it: that record's image or one later in the stream, or (for a
/// v2 image, which gating may skip) one with a page LSN at least as high. The one exception is a page that fails its
/// CRC while the stream has an image of it beyond last_lsn: a write of that
/// later image was torn by the crash, and resuming from last_lsn rewrites it.
/// Also: every page below meta.next_page_id is addressable, last_lsn is no
/// higher than the stream's, and a checkpoint file (if given and durable) is
/// not ahead of meta.last_lsn.
///
/// Returns the durable meta (`None`: no durable meta, nothing is claimed).
pub fn check_claims(
    fs: &SimFs,
    root: &Path,
    stream: &StreamIndex,
    checkpoint: Option<&Path>,
) -> Result<Option<Meta>, String> {
    let Some(meta_bytes) = fs.durable_read(&root.join(META_FILE)) else {
        if let Some(c) = checkpoint.and_then(|c| fs.durable_read(c)) {
            return Err(format!(
                "checkpoint {:?} exists but no meta is durable",
                String::from_utf8_lossy(&c)
            ));
        }
        return Ok(None);
    };
    let m = Meta::parse(&meta_bytes).map_err(|e| format!("durable meta is corrupt: {e}"))?;
    let last = m.last_lsn;
    if last > stream.max_lsn() {
        return Err(format!(
            "meta.last_lsn {last} is beyond every LSN of the stream (max {})",
            stream.max_lsn()
        ));
    }
    if let Some(c) = checkpoint.and_then(|c| fs.durable_read(c)) {
        let text = String::from_utf8_lossy(&c).into_owned();
        let ck: u64 = text
            .parse()
            .map_err(|_| format!("checkpoint {text:?} is not a number"))?;
        if ck > last {
            return Err(format!(
                "checkpoint {ck} is ahead of durable meta.last_lsn {last}"
            ));
        }
    }
    let ps = u64::from(m.page_size);
    let per_seg = pages_per_segment(m.page_size);
    let page_of = |id: u64| -> Option<Vec<u8>> {
        let seg = root.join(segment_file_name(id / per_seg + 1));
        fs.durable_read_at(&seg, (id % per_seg) * ps, ps as usize)
    };
    if m.next_page_id > 0 && page_of(m.next_page_id - 1).is_none() {
        return Err(format!(
            "meta.next_page_id {} but page {} is not addressable in the durable segments",
            m.next_page_id,
            m.next_page_id - 1
        ));
    }
    let mut by_page: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, r) in stream.records.iter().enumerate() {
        if r.rtype == WAL_TYPE_PAGE_IMAGE && r.end - r.offset == WAL_RECORD_HEADER_LEN + ps as usize
        {
            by_page.entry(r.page_id).or_default().push(i);
        }
    }
    let mut claimed: Vec<(u64, Vec<usize>)> = by_page
        .iter()
        .filter(|(_, v)| v.iter().any(|&i| stream.records[i].lsn <= last))
        .map(|(&p, v)| (p, v.clone()))
        .collect();
    claimed.sort_unstable_by_key(|(p, _)| *p);
    for (id, recs) in claimed {
        let Some(d) = page_of(id) else {
            return Err(format!(
                "page {id} is claimed (an image with lsn <= {last}) but is not in the durable segments"
            ));
        };
        let torn_ok = matches!(page::check_page_crc(&d), PageCrc::Mismatch { .. })
            && recs.iter().any(|&i| stream.records[i].lsn > last);
        if torn_ok {
            continue;
        }
        // Which stream images of this page does the durable page equal?
        let same: Vec<usize> = recs
            .iter()
            .copied()
            .filter(|&i| stream.payload(&stream.records[i]) == &d[..])
            .collect();
        for (pos, &i) in recs.iter().enumerate() {
            let r = &stream.records[i];
            if r.lsn > last {
                continue;
            }
            // Superseded by an image later in the stream, or (v2) gated
            // out because the page already held an image at least as new.
            let later = same.iter().any(|j| recs[pos..].contains(j));
            let newer = r.page_lsn.is_some_and(|n| {
                same.iter()
                    .any(|&j| stream.records[j].page_lsn.is_some_and(|x| x >= n))
            });
            let ok = later || newer;
            if !ok {
                return Err(format!(
                    "meta.last_lsn {last} claims page {id} at lsn {} (page lsn {:?}), but the durable page is {}",
                    r.lsn,
                    r.page_lsn,
                    describe_page(&d)
                ));
            }
        }
    }
    Ok(Some(m))
}

fn describe_page(d: &[u8]) -> String {
    match (page::check_page_crc(d), page::v2_page_lsn(d)) {
        (PageCrc::Mismatch { .. }, _) => "torn (CRC mismatch)".to_string(),
        (_, Some(l)) => format!("an image with page lsn {l} that is not in the stream"),
        (_, None) if d.iter().all(|&b| b == 0) => "all zeros".to_string(),
        (_, None) => "a non-v2 page that is not the expected image".to_string(),
    }
}

/// `zstd -q -c --long=27` of `data`, through a pipe (so the window is not
/// shrunk to the input's size): a real stream that needs a 128 MiB window.
pub fn zstd_long27(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut z = Command::new("zstd")
        .args(["-q", "-c", "--long=27"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the zstd CLI (apt-get install zstd)");
    let mut zin = z.stdin.take().unwrap();
    let d = data.to_vec();
    let t = std::thread::spawn(move || zin.write_all(&d).unwrap());
    let out = z.wait_with_output().unwrap().stdout;
    t.join().unwrap();
    assert_eq!(out[5] >> 3, 27 - 10, "the frame declares a 2^27 window");
    out
}

/// A zstd frame (window 2^window_log, no content size, no checksum): one
/// raw block with `prefix`, then `blocks` RLE blocks of 128 KiB of zeros,
/// 4 bytes each: 1 GiB costs 32 KiB.
pub fn zstd_bomb(prefix: &[u8], blocks: usize, window_log: u8) -> Vec<u8> {
    let mut v = vec![0x28, 0xb5, 0x2f, 0xfd];
    // Frame header descriptor: no content size, not single-segment, no
    // checksum, no dictionary; then the window descriptor (mantissa 0).
    v.push(0x00);
    v.push((window_log - 10) << 3);
    let block = |v: &mut Vec<u8>, last: bool, kind: u32, size: u32| {
        let h = (size << 3) | (kind << 1) | u32::from(last);
        v.extend_from_slice(&h.to_le_bytes()[..3]);
    };
    block(&mut v, blocks == 0, 0, prefix.len() as u32);
    v.extend_from_slice(prefix);
    for i in 0..blocks {
        block(&mut v, i + 1 == blocks, 1, 128 << 10);
        v.push(0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_index_slices_like_since_lsn() {
        let mut s = quiverdb_follower::format::wal::stream_header().to_vec();
        for lsn in 1..=3u64 {
            let p = page::overflow_page(4096, lsn, NO_PAGE, lsn, b"x");
            quiverdb_follower::format::wal::encode_record(
                &mut s,
                WAL_TYPE_PAGE_IMAGE,
                lsn,
                lsn,
                &p,
            );
        }
        quiverdb_follower::format::wal::encode_truncate(&mut s);
        let idx = StreamIndex::new(&s);
        assert_eq!(idx.records.len(), 4);
        assert_eq!(idx.max_lsn(), 3);
        let tail = StreamIndex::new(&idx.since(1));
        let lsns: Vec<u64> = tail.records.iter().map(|r| r.lsn).collect();
        assert_eq!(lsns, vec![2, 3]);
        assert_eq!(idx.last_lsn_within(16 + 2 * 4124 + 10), 2);
    }

    #[test]
    fn builder_writes_what_the_index_reads() {
        let s = StreamBuilder::new()
            .page(1, 0, b"a")
            .page(2, 5, b"b")
            .truncate()
            .header()
            .page(3, 0, b"c")
            .build();
        let idx = StreamIndex::new(&s);
        let got: Vec<(u8, u64, u64, Option<u64>)> = idx
            .records
            .iter()
            .map(|r| (r.rtype, r.lsn, r.page_id, r.page_lsn))
            .collect();
        assert_eq!(
            got,
            vec![
                (WAL_TYPE_PAGE_IMAGE, 1, 0, Some(1)),
                (WAL_TYPE_PAGE_IMAGE, 2, 5, Some(2)),
                (WAL_TYPE_TRUNCATE, 0, 0, None),
                (WAL_TYPE_PAGE_IMAGE, 3, 0, Some(3)),
            ]
        );
        assert_eq!(idx.stopped_at_crc_error, None);
        let claimed = idx.claimed_page_lsns(2);
        assert_eq!(claimed.get(&0), Some(&1));
        assert_eq!(claimed.get(&5), Some(&2));
        let later = StreamIndex::new(&idx.restamp(10));
        let lsns: Vec<(u64, Option<u64>)> =
            later.records.iter().map(|r| (r.lsn, r.page_lsn)).collect();
        assert_eq!(
            lsns,
            vec![(11, Some(11)), (12, Some(12)), (10, None), (13, Some(13))]
        );
        for r in later.records.iter().filter(|r| r.page_lsn.is_some()) {
            assert_eq!(page::check_page_crc(later.payload(r)), PageCrc::Valid);
        }
    }
}
