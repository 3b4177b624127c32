//! Catch-up from the leader's data segments: every page whose v2 page LSN
//! is above `since`, as PAGE_IMAGE records carrying that page LSN, in
//! ascending LSN order, between a begin and an end marker.
//!
//! Why this is complete up to `upto` = meta.last_lsn read *before* the scan:
//! the leader writes a page before the meta that covers it (spec §5.3), so
//! every commit up to `upto` is on disk when the scan reads; a page that
//! changes after we read it gets an LSN above `upto`, and is sent by the WAL
//! tail or the next catch-up. Because the order is ascending, a stream cut
//! after page LSN x leaves a follower complete up to min(x, upto).
//!
//! Cost, about one sequential read of the segments (`scripts/bench-ship`
//! compares it with `cat`):
//! * pass 1 keeps (lsn, page id) pairs, 16 bytes a page. The first
//!   [`KEEP_PAGES_BYTES`] of pages are read straight into the kept buffer
//!   (no copy) by one reader per core (at most `MAX_WORKERS`). The readers
//!   take the buffer a huge page at a time, so the kernel zeroes each unit
//!   on the core that then fills it, while it is in that core's cache, and
//!   the readers finish together; each 256 KiB piece is CRC checked, and
//!   its record headers built, right after its read, while it is still in
//!   L2. The pages past the buffer are read sequentially in
//!   [`CHUNK_BYTES`] reads, and only their LSN is kept;
//! * pass 2 sorts the pairs by LSN and sends them in batches of
//!   [`BATCH_BYTES`]: kept pages straight from memory, the others read again
//!   with one `pread` per run of adjacent pages (sorted by offset), CRC
//!   checked, and sent only if their LSN is unchanged;
//! * each batch goes to the sink as one vectored write of (header, page)
//!   slices: no page is copied on our side, and the record CRC is derived
//!   from the verified page CRC ([`RecordCrc`]) instead of hashing the page
//!   a second time.
//!
//! Memory stays bounded whatever the size of the DB: 16 bytes a page found,
//! plus at most `KEEP_PAGES_BYTES + CHUNK_BYTES + BATCH_BYTES` of page bytes
//! and a 28-byte record header for each kept or re-read page.

use std::fs::File;
use std::io::{self, IoSlice, Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::format::layout::{
    le_u32, pages_per_segment, segment_file_name, PAGE_OFF_CRC, WAL_RECORD_HEADER_LEN,
    WAL_REC_OFF_CRC, WAL_TYPE_PAGE_IMAGE,
};
use crate::format::page::{self, PageCrc};
use crate::format::wal::record_header;

/// Page bytes kept from pass 1 (so small and medium catch-ups read once).
pub const KEEP_PAGES_BYTES: usize = 64 << 20;
/// Pass 1 read size: large sequential reads, as `cat` does.
pub const CHUNK_BYTES: usize = 4 << 20;
/// Pass 2 batch: the page bytes sent by one vectored write.
pub const BATCH_BYTES: usize = 8 << 20;
/// A page whose CRC fails is being written: read it again this many times.
const TORN_RETRIES: u32 = 200;

/// Receives the page records of one batch, in ascending LSN order, as
/// alternating (28-byte header, page) slices.
pub type Emit<'a> = dyn FnMut(&[IoSlice<'_>]) -> io::Result<()> + 'a;

/// What a catch-up sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CatchUp {
    pub since: u64,
    pub upto: u64,
    pub pages: u64,
    pub bytes: u64,
}

/// A GF(2)-linear map on 32-bit values, as four byte-indexed tables.
struct Lin32([[u32; 256]; 4]);

impl Lin32 {
    /// The map whose image of bit `b` is `basis(1 << b)`.
    fn from_basis(basis: impl Fn(u32) -> u32) -> Box<Lin32> {
        let unit: Vec<u32> = (0..32).map(|b| basis(1 << b)).collect();
        let mut t = Box::new(Lin32([[0; 256]; 4]));
        for (byte, table) in t.0.iter_mut().enumerate() {
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = (0..8)
                    .filter(|bit| v >> bit & 1 == 1)
                    .fold(0, |x, bit| x ^ unit[byte * 8 + bit]);
            }
        }
        t
    }

    fn apply(&self, x: u32) -> u32 {
        let b = x.to_le_bytes();
        self.0[0][b[0] as usize]
            ^ self.0[1][b[1] as usize]
            ^ self.0[2][b[2] as usize]
            ^ self.0[3][b[3] as usize]
    }
}

/// The CRC of a PAGE_IMAGE record, IEEE CRC32 over header[0..24] ‖ page,
/// from the page's own verified CRC (IEEE CRC32 over the page with its CRC
/// field, bytes 60..64, taken as zero) instead of hashing the page again.
///
/// CRC32 is affine over GF(2). For a page P of n bytes whose CRC field
/// holds s = crc(P with the field zeroed):
/// * crc(P) = s ^ F(s), F linear: what the 4 bytes s at offset 60 add to
///   the CRC of n bytes;
/// * crc(H ‖ P) = A(crc(H)) ^ crc(P), A linear: the CRC register carried
///   over n more bytes.
///
/// Both maps depend only on n; they are built once per catch-up from 66
/// hashes of n bytes.
pub struct RecordCrc {
    page_size: usize,
    a: Box<Lin32>,
    f: Box<Lin32>,
}

impl RecordCrc {
    pub fn new(page_size: usize) -> RecordCrc {
        let zeros = vec![0u8; page_size];
        let carry = |c: u32| {
            let mut h = crc32fast::Hasher::new_with_initial(c);
            h.update(&zeros);
            h.finalize()
        };
        let c0 = carry(0);
        let a = Lin32::from_basis(|e| carry(e) ^ c0);
        let z = crc32fast::hash(&zeros);
        let f = Lin32::from_basis(|e| {
            let mut d = zeros.clone();
            d[PAGE_OFF_CRC..PAGE_OFF_CRC + 4].copy_from_slice(&e.to_le_bytes());
            crc32fast::hash(&d) ^ z
        });
        RecordCrc { page_size, a, f }
    }

    /// The record header for `page`, whose CRC the caller has checked
    /// (`check_page_crc` gave anything but a mismatch). A page without a
    /// stored CRC (none, or 0) is hashed as usual.
    pub fn header(&self, lsn: u64, page_id: u64, page: &[u8]) -> [u8; WAL_RECORD_HEADER_LEN] {
        let stored = if page.len() == self.page_size && page::has_page_crc(page) {
            le_u32(page, PAGE_OFF_CRC)
        } else {
            0
        };
        if stored == 0 {
            return record_header(WAL_TYPE_PAGE_IMAGE, lsn, page_id, page.len() as u32, page);
        }
        let mut h = record_header(WAL_TYPE_PAGE_IMAGE, lsn, page_id, page.len() as u32, &[]);
        let crc =
            self.a.apply(crc32fast::hash(&h[..WAL_REC_OFF_CRC])) ^ stored ^ self.f.apply(stored);
        h[WAL_REC_OFF_CRC..].copy_from_slice(&crc.to_le_bytes());
        h
    }
}

/// Read one page until its CRC holds (a torn read while the writer writes
/// it); `Ok(false)` if it never does (a damaged page: left out).
fn read_page_stable(f: &File, off: u64, buf: &mut [u8]) -> io::Result<bool> {
    for i in 0..TORN_RETRIES {
        f.read_exact_at(buf, off)?;
        if !matches!(page::check_page_crc(buf), PageCrc::Mismatch { .. }) {
            return Ok(true);
        }
        if i > 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(false)
}

/// Check a page read from `f` at `off` (now in `p`), re-reading a torn one;
/// its LSN if it is a v2 page above `since` with a sound CRC.
fn settle(f: &File, off: u64, p: &mut [u8], id: u64, since: u64) -> io::Result<Option<u64>> {
    if matches!(page::check_page_crc(p), PageCrc::Mismatch { .. }) && !read_page_stable(f, off, p)?
    {
        log::warn!("page {id} keeps failing its CRC: left out of this catch-up");
        return Ok(None);
    }
    // A re-read page may have moved on: take the LSN it has now.
    Ok(page::v2_page_lsn(p).filter(|&l| l > since))
}

/// Fill `buf` from `f` (sequential reads); fewer bytes only at EOF.
fn fill(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Where pass 2 takes a page of the current batch from.
#[derive(Clone, Copy)]
enum Src {
    /// Kept page k.
    Kept(usize),
    /// Page r of the batch's read buffer.
    Read(usize),
    Skip,
}

/// Run one catch-up of the leader at `root` for a follower that holds
/// everything up to `since`, with `upto` = the leader's meta.last_lsn read
/// by the caller *before* calling. `emit` gets the page records batch by
/// batch, in ascending LSN order.
pub fn scan(
    root: &Path,
    page_size: u32,
    since: u64,
    upto: u64,
    emit: &mut Emit<'_>,
) -> io::Result<CatchUp> {
    scan_kept(root, page_size, since, upto, KEEP_PAGES_BYTES, emit)
}

/// [`scan`] with `keep_bytes` of page bytes kept from pass 1 (tests use a
/// small budget to exercise pass 2's reads).
fn scan_kept(
    root: &Path,
    page_size: u32,
    since: u64,
    upto: u64,
    keep_bytes: usize,
    emit: &mut Emit<'_>,
) -> io::Result<CatchUp> {
    let ps = page_size as usize;
    let pps = pages_per_segment(page_size);
    let keep_pages = keep_bytes / ps;
    // The whole pages of each segment now. Segments only grow, and every
    // page up to `upto` was written before the caller read it: the pages
    // past these sizes are newer, read below only as a bonus.
    let mut sizes: Vec<u64> = Vec::new();
    let mut first: Vec<usize> = Vec::new();
    let mut total = 0usize;
    while total < keep_pages {
        let path = root.join(segment_file_name(sizes.len() as u64 + 1));
        match std::fs::metadata(&path) {
            Ok(m) => {
                let whole = (m.len() / ps as u64).min(pps);
                first.push(total);
                sizes.push(whole);
                total += whole as usize;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(e),
        }
    }
    let rc = RecordCrc::new(ps);
    let mut kept = Kept::new(
        Layout {
            ps,
            pps,
            sizes,
            first,
        },
        total.min(keep_pages),
    );
    let mut found = kept.read(root, since, &rc)?;
    let kept_found = found.len();
    // Pass 1b: past the budget (or past the sizes seen: a growing segment,
    // new segments), sequential reads; those pages are read again in
    // pass 2.
    let mut covered = kept.len as u64;
    let mut seg_no = 1u64;
    let chunk_pages = (CHUNK_BYTES / ps).max(1);
    let mut chunk: Vec<u8> = Vec::new();
    loop {
        let path = root.join(segment_file_name(seg_no));
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(e),
        };
        // Where pass 1a stopped in this segment (its size then).
        let seen = kept
            .layout
            .sizes
            .get(seg_no as usize - 1)
            .map_or(0, |&w| w.min(covered));
        covered -= seen;
        let mut index = seen;
        if index > 0 {
            f.seek(io::SeekFrom::Start(index * ps as u64))?;
        }
        while index < pps {
            let want = chunk_pages.min((pps - index) as usize);
            if chunk.is_empty() {
                chunk = vec![0u8; chunk_pages * ps];
            }
            let buf = &mut chunk[..want * ps];
            let got = fill(&mut f, buf)?;
            // Whole pages only; a short tail (a segment being grown) ends it.
            let whole = got / ps;
            for i in 0..whole {
                let p = &buf[i * ps..(i + 1) * ps];
                // Checked when pass 2 reads it again.
                if let Some(lsn) = page::v2_page_lsn(p).filter(|&l| l > since) {
                    found.push((lsn, (seg_no - 1) * pps + index + i as u64));
                }
            }
            index += whole as u64;
            if got < want * ps {
                break;
            }
        }
        seg_no += 1;
    }
    drop(chunk);
    // Sorted already unless pass 1b found pages (in place: no scratch
    // memory the size of a large DB's list).
    if found.len() > kept_found {
        found.sort_unstable();
    }
    send(root, &kept, &rc, &found, since, upto, emit)
}

/// At most this many pass-1a readers.
const MAX_WORKERS: usize = 4;
/// Pass 1a hands out the kept buffer in units of one huge page: the reader
/// that faults a unit in (the kernel zeroes it then) fills it while it is
/// still in that core's cache, and the readers finish together.
const UNIT_BYTES: usize = if cfg!(test) { 16 << 10 } else { 2 << 20 };
/// Pass 1a reads a unit in pieces this large and checks a piece's pages
/// right after its read, while they are in L2, not after the whole unit.
const PIECE_BYTES: usize = if cfg!(test) { 8 << 10 } else { 256 << 10 };
/// Alignment of the kept buffer: a transparent huge page.
const HUGE_BYTES: usize = 2 << 20;

/// Where the kept pages come from.
struct Layout {
    ps: usize,
    pps: u64,
    /// Whole pages of each segment (from segment 1) when the scan started.
    sizes: Vec<u64>,
    /// Kept index of each segment's first page.
    first: Vec<usize>,
}

impl Layout {
    /// (segment index from 0, page index in it) of kept page `k`.
    fn locate(&self, k: usize) -> (usize, u64) {
        // The last segment starting at or before k: empty segments start
        // where the next one does, so this is the one holding k.
        let seg = self.first.partition_point(|&f| f <= k) - 1;
        let idx = (k - self.first[seg]) as u64;
        // A reader would otherwise spin on an empty read.
        assert!(idx < self.sizes[seg], "kept page {k} outside the segments");
        (seg, idx)
    }
}

/// Pass 1a's pages: the first `len` pages in (segment, index) order, read
/// once, with the record header of each page that will be sent.
struct Kept {
    layout: Layout,
    len: usize,
    /// Page k is at `mem[at + k * ps..]`; `at` aligns it to a huge page.
    mem: Vec<u8>,
    at: usize,
    /// Record header of kept page k (set for the pages in `found` only).
    headers: Vec<[u8; WAL_RECORD_HEADER_LEN]>,
}

impl Kept {
    fn new(layout: Layout, len: usize) -> Kept {
        let bytes = len * layout.ps;
        // Zeroed lazily by the kernel, fault by fault, in the readers.
        let mem = if len == 0 {
            Vec::new()
        } else {
            vec![0u8; bytes + HUGE_BYTES]
        };
        let at = (mem.as_ptr() as usize).next_multiple_of(HUGE_BYTES) - mem.as_ptr() as usize;
        if len > 0 {
            let huge = bytes.next_multiple_of(HUGE_BYTES).min(mem.len() - at);
            // Huge pages where the kernel allows them: first touches of 64
            // MiB in 4 KiB pages (16,384 faults) cost more than reading the
            // segments into it (measured with perf on scripts/bench-ship's
            // leader).
            // SAFETY: advice only, on whole pages inside `mem`'s allocation;
            // the memory stays valid and zeroed whatever the kernel does.
            unsafe {
                libc::madvise(
                    mem.as_ptr().add(at) as *mut libc::c_void,
                    huge & !(HUGE_BYTES - 1),
                    libc::MADV_HUGEPAGE,
                );
            }
        }
        Kept {
            headers: vec![[0; WAL_RECORD_HEADER_LEN]; len],
            layout,
            len,
            mem,
            at,
        }
    }

    /// Kept index of page `id`, if pass 1a read it.
    fn index(&self, id: u64) -> Option<usize> {
        let l = &self.layout;
        let seg = usize::try_from(id / l.pps).ok()?;
        let idx = id % l.pps;
        let k = l.first.get(seg)? + idx as usize;
        (idx < l.sizes[seg] && k < self.len).then_some(k)
    }

    fn page(&self, k: usize) -> &[u8] {
        let ps = self.layout.ps;
        &self.mem[self.at + k * ps..self.at + (k + 1) * ps]
    }

    /// Pass 1a: read every kept page, by one reader per core (at most
    /// `MAX_WORKERS`) taking the next unit until none is left, and check
    /// each page once, right after its read: the kernel's zeroing, the
    /// copies, the CRCs and the record headers run on all cores. The
    /// (lsn, id) of the pages to send, in no particular order.
    fn read(&mut self, root: &Path, since: u64, rc: &RecordCrc) -> io::Result<Vec<(u64, u64)>> {
        if self.len == 0 {
            return Ok(Vec::new());
        }
        let layout = &self.layout;
        let ps = layout.ps;
        let unit = unit_pages(ps);
        let pages = &mut self.mem[self.at..self.at + self.len * ps];
        let units = Mutex::new(
            pages
                .chunks_mut(unit * ps)
                .zip(self.headers.chunks_mut(unit))
                .enumerate(),
        );
        // Tests use three readers whatever the machine.
        let cores = if cfg!(test) {
            3
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        let workers = cores.min(MAX_WORKERS).min(self.len.div_ceil(unit));
        let units = &units;
        let share = self.len / workers + unit;
        let reader = move || -> io::Result<Vec<(u64, u64)>> {
            let mut found = Vec::with_capacity(share);
            let mut open: Option<(usize, File)> = None;
            loop {
                let next = units.lock().unwrap_or_else(PoisonError::into_inner).next();
                let Some((u, (buf, headers))) = next else {
                    // Sorted here, in parallel: the merge is then linear.
                    found.sort_unstable();
                    return Ok(found);
                };
                let mut r = Unit {
                    root,
                    layout,
                    since,
                    rc,
                    open: &mut open,
                    found: &mut found,
                };
                r.read(u * unit, buf, headers)?;
            }
        };
        let parts: Vec<io::Result<Vec<(u64, u64)>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..workers).map(|_| s.spawn(reader)).collect();
            // This thread is a reader too.
            let mine = reader();
            handles
                .into_iter()
                .map(|h| h.join().expect("a pass-1 reader panicked"))
                .chain(std::iter::once(mine))
                .collect()
        });
        let parts = parts.into_iter().collect::<io::Result<Vec<_>>>()?;
        Ok(merge(parts))
    }
}

/// Merge sorted runs (one per reader, so a handful) into one sorted run,
/// in linear time: the serial part of pass 1 stays short.
fn merge(parts: Vec<Vec<(u64, u64)>>) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    let mut heads: Vec<std::iter::Peekable<std::vec::IntoIter<(u64, u64)>>> = parts
        .into_iter()
        .map(|p| p.into_iter().peekable())
        .collect();
    loop {
        let next = heads
            .iter_mut()
            .filter_map(|h| h.peek().copied().map(|v| (v, h)))
            .min_by_key(|(v, _)| *v);
        let Some((v, h)) = next else {
            return out;
        };
        h.next();
        out.push(v);
    }
}

/// Pages in a pass-1a unit.
fn unit_pages(ps: usize) -> usize {
    (UNIT_BYTES / ps).max(1)
}

/// One pass-1a reader's state while it reads a unit.
struct Unit<'a> {
    root: &'a Path,
    layout: &'a Layout,
    since: u64,
    rc: &'a RecordCrc,
    /// The segment file this reader has open.
    open: &'a mut Option<(usize, File)>,
    found: &'a mut Vec<(u64, u64)>,
}

impl Unit<'_> {
    /// Read kept pages `k0..` into `buf` (one unit), piece by piece, and
    /// check each piece's pages while they are in cache.
    fn read(
        &mut self,
        k0: usize,
        buf: &mut [u8],
        headers: &mut [[u8; WAL_RECORD_HEADER_LEN]],
    ) -> io::Result<()> {
        let l = self.layout;
        let ps = l.ps;
        let piece = (PIECE_BYTES / ps).max(1);
        let mut k = 0;
        while k < headers.len() {
            let (seg, idx) = l.locate(k0 + k);
            let here = ((l.sizes[seg] - idx) as usize)
                .min(headers.len() - k)
                .min(piece);
            if self.open.as_ref().map(|(s, _)| *s) != Some(seg) {
                let path = self.root.join(segment_file_name(seg as u64 + 1));
                *self.open = Some((seg, File::open(path)?));
            }
            let f = &self.open.as_ref().expect("opened above").1;
            let bytes = &mut buf[k * ps..(k + here) * ps];
            f.read_exact_at(bytes, idx * ps as u64)?;
            for (i, p) in bytes.chunks_exact_mut(ps).enumerate() {
                if !page::v2_page_lsn(p).is_some_and(|lsn| lsn > self.since) {
                    continue;
                }
                let at = idx + i as u64;
                let id = seg as u64 * l.pps + at;
                let Some(lsn) = settle(f, at * ps as u64, p, id, self.since)? else {
                    continue;
                };
                self.found.push((lsn, id));
                headers[k + i] = self.rc.header(lsn, id, p);
            }
            k += here;
        }
        Ok(())
    }
}

/// Pass 2: the pages of `found` (sorted by LSN), batch by batch.
fn send(
    root: &Path,
    kept: &Kept,
    rc: &RecordCrc,
    found: &[(u64, u64)],
    since: u64,
    upto: u64,
    emit: &mut Emit<'_>,
) -> io::Result<CatchUp> {
    let mut out = CatchUp {
        since,
        upto,
        ..CatchUp::default()
    };
    let (ps, pps) = (kept.layout.ps, kept.layout.pps);
    let batch_pages = (BATCH_BYTES / ps).max(1);
    let mut read_buf: Vec<u8> = Vec::new();
    let mut read_headers: Vec<[u8; WAL_RECORD_HEADER_LEN]> = Vec::new();
    let mut open: Option<(u64, File)> = None;
    let mut srcs: Vec<Src> = Vec::with_capacity(batch_pages);
    let mut to_read: Vec<(u64, usize)> = Vec::new();
    for batch in found.chunks(batch_pages) {
        srcs.clear();
        to_read.clear();
        for (j, &(_, id)) in batch.iter().enumerate() {
            match kept.index(id) {
                Some(k) => srcs.push(Src::Kept(k)),
                None => {
                    srcs.push(Src::Skip);
                    to_read.push((id, j));
                }
            }
        }
        if !to_read.is_empty() {
            if read_buf.is_empty() {
                read_buf = vec![0u8; batch_pages * ps];
                read_headers = vec![[0; WAL_RECORD_HEADER_LEN]; batch_pages];
            }
            // In file order, one pread per run of adjacent pages.
            to_read.sort_unstable();
            let mut k = 0;
            while k < to_read.len() {
                let (first, _) = to_read[k];
                let seg = first / pps + 1;
                let mut run = 1;
                while k + run < to_read.len()
                    && to_read[k + run].0 == first + run as u64
                    && to_read[k + run].0 / pps + 1 == seg
                {
                    run += 1;
                }
                if open.as_ref().map(|(s, _)| *s) != Some(seg) {
                    open = Some((seg, File::open(root.join(segment_file_name(seg)))?));
                }
                let f = &open.as_ref().expect("opened above").1;
                let off = (first % pps) * ps as u64;
                f.read_exact_at(&mut read_buf[k * ps..(k + run) * ps], off)?;
                for r in k..k + run {
                    let (id, j) = to_read[r];
                    let p = &mut read_buf[r * ps..(r + 1) * ps];
                    let off = (id % pps) * ps as u64;
                    let lsn = batch[j].0;
                    // Changed since pass 1: its new LSN is above `upto`.
                    if settle(f, off, p, id, since)? == Some(lsn) {
                        srcs[j] = Src::Read(r);
                        read_headers[r] = rc.header(lsn, id, p);
                    }
                }
                k += run;
            }
        }
        let mut slices = Vec::with_capacity(srcs.len() * 2);
        for src in &srcs {
            let (h, p) = match *src {
                Src::Kept(k) => (&kept.headers[k], kept.page(k)),
                Src::Read(r) => (&read_headers[r], &read_buf[r * ps..(r + 1) * ps]),
                Src::Skip => continue,
            };
            slices.push(IoSlice::new(h));
            slices.push(IoSlice::new(p));
        }
        if slices.is_empty() {
            continue;
        }
        emit(&slices)?;
        let n = slices.len() / 2;
        out.pages += n as u64;
        out.bytes += (n * (WAL_RECORD_HEADER_LEN + ps)) as u64;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::layout::le_u64;

    /// Split a batch back into (record lsn, page id, page) per record, and
    /// check each record's CRC the way a reader does.
    fn records(bufs: &[IoSlice<'_>], out: &mut Vec<(u64, u64, Vec<u8>)>) {
        for pair in bufs.chunks(2) {
            let h: [u8; WAL_RECORD_HEADER_LEN] = pair[0][..].try_into().unwrap();
            let p = &pair[1][..];
            let want = crate::format::wal::record_header(
                h[0],
                le_u64(&h, 4),
                le_u64(&h, 12),
                p.len() as u32,
                p,
            );
            assert_eq!(h, want, "record header and CRC as a full hash gives them");
            out.push((le_u64(&h, 4), le_u64(&h, 12), p.to_vec()));
        }
    }

    fn write_segment(dir: &Path, lsns: &[u64]) -> Vec<Vec<u8>> {
        write_segment_no(dir, 1, lsns)
    }

    /// Segment `no` with one page per LSN (0: a zeroed page); its pages.
    fn write_segment_no(dir: &Path, no: u64, lsns: &[u64]) -> Vec<Vec<u8>> {
        let mut seg = Vec::new();
        let mut pages = Vec::new();
        for (i, &lsn) in lsns.iter().enumerate() {
            let id = (no - 1) * pages_per_segment(4096) + i as u64;
            let p = if lsn == 0 {
                vec![0; 4096] // allocated, never written
            } else {
                page::overflow_page(4096, id, u64::MAX, lsn, format!("page {id}").as_bytes())
            };
            seg.extend_from_slice(&p);
            pages.push(p);
        }
        std::fs::write(dir.join(segment_file_name(no)), &seg).unwrap();
        pages
    }

    /// Pass 1a's units cross segment boundaries, skip an empty segment and
    /// end anywhere in the kept budget; a trailing partial page (a segment
    /// being grown) is not a page. The records are the same, byte for
    /// byte, whatever the budget.
    #[test]
    fn kept_pages_span_segments_whatever_the_budget() {
        let d = tempfile::tempdir().unwrap();
        let pps = pages_per_segment(4096);
        let segs: [Vec<u64>; 3] = [
            (0..23u64)
                .map(|i| if i % 5 == 4 { 0 } else { 100 - i })
                .collect(),
            Vec::new(),
            (0..17u64).map(|i| 50 + 3 * i).collect(),
        ];
        let mut want = Vec::new();
        for (no, lsns) in segs.iter().enumerate() {
            let pages = write_segment_no(d.path(), no as u64 + 1, lsns);
            for (i, (p, &lsn)) in pages.into_iter().zip(lsns).enumerate() {
                if lsn > 1 {
                    want.push((lsn, no as u64 * pps + i as u64, p));
                }
            }
        }
        let mut grown = std::fs::OpenOptions::new()
            .append(true)
            .open(d.path().join(segment_file_name(3)))
            .unwrap();
        std::io::Write::write_all(&mut grown, &[7u8; 100]).unwrap();
        want.sort();
        for keep in [0usize, 1, 4, 22, 23, 24, 30, 40, 1000] {
            let mut got = Vec::new();
            let r = scan_kept(d.path(), 4096, 1, 500, keep * 4096, &mut |b| {
                records(b, &mut got);
                Ok(())
            })
            .unwrap();
            assert_eq!(got, want, "budget {keep} pages");
            assert_eq!(r.pages as usize, want.len());
        }
    }

    #[test]
    fn sends_pages_above_since_in_ascending_lsn_order() {
        let d = tempfile::tempdir().unwrap();
        let pages = write_segment(d.path(), &[5, 2, 9, 0, 7, 3]);
        let mut got = Vec::new();
        let r = scan(d.path(), 4096, 2, 9, &mut |b| {
            records(b, &mut got);
            Ok(())
        })
        .unwrap();
        let ids: Vec<(u64, u64)> = got.iter().map(|g| (g.0, g.1)).collect();
        assert_eq!(ids, vec![(3, 5), (5, 0), (7, 4), (9, 2)]);
        for (lsn, id, p) in &got {
            assert_eq!(p, &pages[*id as usize], "page {id} byte for byte");
            assert_eq!(le_u64(p, 36), *lsn, "record lsn = page lsn");
        }
        assert_eq!(r.pages, 4);
        assert_eq!(r.bytes, 4 * (28 + 4096));
    }

    /// Past the kept budget, pages are read again in pass 2 (runs of
    /// adjacent pages, sorted by offset): the same records, byte for byte,
    /// whatever the budget; a page that changed since pass 1 is left out.
    #[test]
    fn the_kept_budget_changes_nothing_on_the_wire() {
        let d = tempfile::tempdir().unwrap();
        // 3000 pages: LSNs mostly ascending with rewrites far back, holes
        // and pages at or below `since`.
        let lsns: Vec<u64> = (0..3000u64)
            .map(|i| match i % 7 {
                0 => 0,
                3 => 20_000 - i,
                5 => 1 + i % 3,
                _ => 10 + i,
            })
            .collect();
        let pages = write_segment(d.path(), &lsns);
        let mut runs = Vec::new();
        for keep in [0usize, 4096 * 5, 4096 * 1000, KEEP_PAGES_BYTES] {
            let mut got = Vec::new();
            let r = scan_kept(d.path(), 4096, 3, 30_000, keep, &mut |b| {
                records(b, &mut got);
                Ok(())
            })
            .unwrap();
            assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "ascending LSNs");
            for (lsn, id, p) in &got {
                assert_eq!(p, &pages[*id as usize]);
                assert_eq!(*lsn, lsns[*id as usize]);
            }
            let want = lsns.iter().filter(|&&l| l > 3).count();
            assert_eq!(got.len(), want, "budget {keep}");
            assert_eq!(r.pages as usize, want);
            runs.push(got);
        }
        assert!(runs.windows(2).all(|w| w[0] == w[1]));
    }

    /// The derived record CRC equals a full hash for any page content and
    /// page size.
    #[test]
    fn record_crc_from_the_page_crc_equals_a_full_hash() {
        let mut x = 0x9e3779b97f4a7c15u64;
        for ps in [4096usize, 8192, 65536] {
            let rc = RecordCrc::new(ps);
            for k in 0..50u64 {
                let body: Vec<u8> = (0..ps - 64)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                let p = page::overflow_page(ps as u32, k, u64::MAX, x >> 8, &body);
                assert!(matches!(page::check_page_crc(&p), PageCrc::Valid));
                let (lsn, id) = (x >> 3, x >> 40);
                assert_eq!(
                    rc.header(lsn, id, &p),
                    record_header(WAL_TYPE_PAGE_IMAGE, lsn, id, ps as u32, &p)
                );
                // Without a stored CRC, the page is hashed.
                let mut z = p.clone();
                z[PAGE_OFF_CRC..PAGE_OFF_CRC + 4].fill(0);
                assert_eq!(
                    rc.header(lsn, id, &z),
                    record_header(WAL_TYPE_PAGE_IMAGE, lsn, id, ps as u32, &z)
                );
            }
        }
    }
}
