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
//! compares it with `cat`), on all cores:
//! * pass 1 keeps (lsn, page id) pairs, 16 bytes a page, for the whole
//!   pages of each segment when the scan starts (pages past them are newer
//!   than `upto`). The first [`KEEP_PAGES_BYTES`] of pages are read straight
//!   into the kept buffer (no copy) by one reader per core (at most
//!   `MAX_WORKERS`). The readers take the buffer a huge page at a time, so
//!   the kernel zeroes each unit on the core that then fills it, while it
//!   is in that core's cache, and the readers finish together; each
//!   256 KiB piece is CRC checked, and its record headers built, right
//!   after its read, while it is still in L2. The pages past the buffer are
//!   read by the same readers, [`CHUNK_BYTES`] at a time through a small
//!   buffer each, and only their LSN is kept. Each reader sorts its pairs;
//!   one merge orders them all;
//! * pass 2 sends the pairs in batches of [`BATCH_BYTES`]: kept pages
//!   straight from memory; the others are read again by the readers, each
//!   its share of the batch in offset order with one `pread` per run of
//!   adjacent pages, while the batch before is being sent; they are CRC
//!   checked and sent only if their LSN is unchanged;
//! * each batch goes to the sink as one vectored write of (header, page)
//!   slices: no page is copied on our side, and the record CRC is derived
//!   from the verified page CRC ([`RecordCrc`]) instead of hashing the page
//!   a second time.
//!
//! Memory stays bounded whatever the size of the DB: 16 bytes a page found
//! (twice while the runs are merged), plus at most `KEEP_PAGES_BYTES +
//! 2 * BATCH_BYTES` of page bytes, a 28-byte record header for each of
//! those pages, and a 256 KiB buffer a reader.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex, PoisonError};
use std::time::Duration;

use crate::format::layout::{
    le_u32, pages_per_segment, segment_file_name, PAGE_OFF_CRC, WAL_RECORD_HEADER_LEN,
    WAL_REC_OFF_CRC, WAL_TYPE_PAGE_IMAGE,
};
use crate::format::page::{self, PageCrc};
use crate::format::wal::record_header;

/// Page bytes kept from pass 1 (so small and medium catch-ups read once).
pub const KEEP_PAGES_BYTES: usize = 64 << 20;
/// Pass 1 hands out the pages past the kept buffer in units this large.
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

/// Where pass 2 takes a page of the current batch from.
#[derive(Clone, Copy)]
enum Src {
    /// Kept page k.
    Kept(usize),
    /// Page r of reader w's share of the batch's re-reads.
    Read(usize, usize),
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
    // The whole pages of each segment now. Segments only grow, and every
    // page up to `upto` was written before the caller read it: the pages
    // past these sizes (a segment being grown, a new segment) are newer,
    // and come with the WAL tail or the next catch-up.
    let mut sizes: Vec<u64> = Vec::new();
    let mut first: Vec<usize> = Vec::new();
    let mut total = 0usize;
    loop {
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
    let layout = Layout {
        ps,
        pps,
        sizes,
        first,
    };
    let mut kept = Kept::new(layout, total.min(keep_bytes / ps));
    let mut runs = kept.read(root, since, &rc)?;
    runs.extend(read_lsns(root, &kept.layout, kept.len..total, since)?);
    let found = merge(runs);
    send(root, &kept, &rc, &found, since, upto, emit)
}

/// At most this many readers.
const MAX_WORKERS: usize = 4;
/// Pass 1a hands out the kept buffer in units of one huge page: the reader
/// that faults a unit in (the kernel zeroes it then) fills it while it is
/// still in that core's cache, and the readers finish together.
const UNIT_BYTES: usize = if cfg!(test) { 16 << 10 } else { 2 << 20 };
/// Readers read in pieces this large and look at a piece's pages right
/// after its read, while they are in L2.
const PIECE_BYTES: usize = if cfg!(test) { 8 << 10 } else { 256 << 10 };
/// Alignment of the kept buffer: a transparent huge page.
const HUGE_BYTES: usize = 2 << 20;
/// Pass 2 gives each reader at least this many of a batch's re-reads.
const MIN_SHARED_REREAD: usize = if cfg!(test) { 4 } else { 64 };

/// Readers for the passes: one per core (tests use three whatever the
/// machine), at most `MAX_WORKERS`.
fn readers() -> usize {
    let cores = if cfg!(test) {
        3
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    cores.min(MAX_WORKERS)
}

/// Run `job` on `n` threads, this one included, and gather what each
/// returns: the jobs share their work through what they capture.
fn on_readers<T: Send>(n: usize, job: impl Fn() -> io::Result<T> + Sync) -> io::Result<Vec<T>> {
    let job = &job;
    let parts: Vec<io::Result<T>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..n.max(1)).map(|_| s.spawn(job)).collect();
        let mine = job();
        handles
            .into_iter()
            .map(|h| h.join().expect("a catch-up reader panicked"))
            .chain(std::iter::once(mine))
            .collect()
    });
    parts.into_iter().collect()
}

/// The segment file holding pages of segment `seg` (from 0), through
/// `open`, which keeps the one its reader used last open.
fn segment_file<'a>(
    root: &Path,
    open: &'a mut Option<(usize, File)>,
    seg: usize,
) -> io::Result<&'a File> {
    if open.as_ref().map(|(s, _)| *s) != Some(seg) {
        let path = root.join(segment_file_name(seg as u64 + 1));
        *open = Some((seg, File::open(path)?));
    }
    Ok(&open.as_ref().expect("opened above").1)
}

/// Looks at a piece just read: (its offset in the caller's buffer, in
/// pages; its segment file; its first page id; its pages).
type Look<'a> = dyn FnMut(usize, &File, u64, &mut [u8]) -> io::Result<()> + 'a;

/// Where the pages come from: every whole page of the segments when the
/// scan started, numbered from 0 in (segment, index) order.
struct Layout {
    ps: usize,
    pps: u64,
    /// Whole pages of each segment (from segment 1) when the scan started.
    sizes: Vec<u64>,
    /// Number of each segment's first page.
    first: Vec<usize>,
}

impl Layout {
    /// How many pages the segments had when the scan started.
    fn pages(&self) -> usize {
        self.first.last().map_or(0, |&f| {
            f + *self.sizes.last().expect("as many as first") as usize
        })
    }

    /// (segment index from 0, page index in it) of page number `k`.
    fn locate(&self, k: usize) -> (usize, u64) {
        // The last segment starting at or before k: empty segments start
        // where the next one does, so this is the one holding k.
        let seg = self.first.partition_point(|&f| f <= k) - 1;
        let idx = (k - self.first[seg]) as u64;
        // A reader would otherwise spin on an empty read.
        assert!(idx < self.sizes[seg], "page {k} outside the segments");
        (seg, idx)
    }

    /// Read the pages numbered from `k0` into `buf` (as many as it holds),
    /// at most `PIECE_BYTES` of one segment at a time, and hand each piece
    /// to `look`; `open` keeps the reader's segment file open.
    fn read_pieces(
        &self,
        root: &Path,
        open: &mut Option<(usize, File)>,
        k0: usize,
        buf: &mut [u8],
        look: &mut Look<'_>,
    ) -> io::Result<()> {
        let ps = self.ps;
        let n = buf.len() / ps;
        let piece = (PIECE_BYTES / ps).max(1);
        let mut k = 0;
        while k < n {
            let (seg, idx) = self.locate(k0 + k);
            let here = ((self.sizes[seg] - idx) as usize).min(n - k).min(piece);
            let f = segment_file(root, open, seg)?;
            let bytes = &mut buf[k * ps..(k + here) * ps];
            f.read_exact_at(bytes, idx * ps as u64)?;
            look(k, f, seg as u64 * self.pps + idx, bytes)?;
            k += here;
        }
        Ok(())
    }
}

/// Pass 1a's pages: the first `len` pages, read once, with the record
/// header of each page that will be sent.
struct Kept {
    layout: Layout,
    len: usize,
    /// Page k is at `mem[at + k * ps..]`; `at` aligns it to a huge page.
    mem: Vec<u8>,
    at: usize,
    /// Record header of kept page k (set for the pages to send only).
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

    /// Pass 1a: read every kept page, each reader taking the next unit
    /// until none is left, and check each page once, right after its read:
    /// the kernel's zeroing, the copies, the CRCs and the record headers
    /// run on all cores. The (lsn, id) of the pages to send, as one sorted
    /// run per reader.
    fn read(
        &mut self,
        root: &Path,
        since: u64,
        rc: &RecordCrc,
    ) -> io::Result<Vec<Vec<(u64, u64)>>> {
        if self.len == 0 {
            return Ok(Vec::new());
        }
        let layout = &self.layout;
        let ps = layout.ps;
        let unit = (UNIT_BYTES / ps).max(1);
        let pages = &mut self.mem[self.at..self.at + self.len * ps];
        let units = Mutex::new(
            pages
                .chunks_mut(unit * ps)
                .zip(self.headers.chunks_mut(unit))
                .enumerate(),
        );
        let workers = readers().min(self.len.div_ceil(unit));
        let share = self.len / workers + unit;
        on_readers(workers, || {
            let mut found = Vec::with_capacity(share);
            let mut open = None;
            loop {
                let next = units.lock().unwrap_or_else(PoisonError::into_inner).next();
                let Some((u, (buf, headers))) = next else {
                    // Sorted here, in parallel: the merge is then linear.
                    found.sort_unstable();
                    return Ok(found);
                };
                layout.read_pieces(root, &mut open, u * unit, buf, &mut |k, f, id, pages| {
                    for (i, p) in pages.chunks_exact_mut(ps).enumerate() {
                        if !page::v2_page_lsn(p).is_some_and(|lsn| lsn > since) {
                            continue;
                        }
                        let id = id + i as u64;
                        let off = (id % layout.pps) * ps as u64;
                        let Some(lsn) = settle(f, off, p, id, since)? else {
                            continue;
                        };
                        found.push((lsn, id));
                        headers[k + i] = rc.header(lsn, id, p);
                    }
                    Ok(())
                })?;
            }
        })
    }
}

/// Pass 1b: the (lsn, id) of pages `pages` above `since`, read on all
/// cores through small buffers that stay in cache; their CRC is checked
/// when pass 2 reads them again. One sorted run per reader.
fn read_lsns(
    root: &Path,
    layout: &Layout,
    pages: std::ops::Range<usize>,
    since: u64,
) -> io::Result<Vec<Vec<(u64, u64)>>> {
    if pages.is_empty() {
        return Ok(Vec::new());
    }
    let ps = layout.ps;
    let unit = (CHUNK_BYTES / ps).max(1);
    let next = AtomicUsize::new(pages.start);
    let workers = readers().min(pages.len().div_ceil(unit));
    on_readers(workers, || {
        let mut found = Vec::new();
        let mut open = None;
        let mut buf = vec![0u8; (PIECE_BYTES / ps).max(1) * ps];
        loop {
            let k0 = next.fetch_add(unit, Ordering::Relaxed);
            if k0 >= pages.end {
                found.sort_unstable();
                return Ok(found);
            }
            let mut k = k0;
            let end = (k0 + unit).min(pages.end);
            while k < end {
                let n = (buf.len() / ps).min(end - k);
                layout.read_pieces(
                    root,
                    &mut open,
                    k,
                    &mut buf[..n * ps],
                    &mut |_, _, id, p| {
                        for (i, p) in p.chunks_exact(ps).enumerate() {
                            if let Some(lsn) = page::v2_page_lsn(p).filter(|&l| l > since) {
                                found.push((lsn, id + i as u64));
                            }
                        }
                        Ok(())
                    },
                )?;
                k += n;
            }
        }
    })
}

/// Merge sorted runs (a handful: one per reader and pass) into one sorted
/// run, in linear time: the serial part between the passes stays short.
fn merge(runs: Vec<Vec<(u64, u64)>>) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(runs.iter().map(Vec::len).sum());
    let mut heads: Vec<std::iter::Peekable<std::vec::IntoIter<(u64, u64)>>> =
        runs.into_iter().map(|r| r.into_iter().peekable()).collect();
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

/// A share of one batch's re-reads in pass 2, owned by whoever works on
/// it: a reader thread fills it, the sending thread sends from it, and it
/// goes back to a reader for a later batch.
#[derive(Default)]
struct Reread {
    /// (page id, LSN seen by pass 1, place in the batch), sorted by id.
    pages: Vec<(u64, u64, usize)>,
    /// Slot r holds page r.
    buf: Vec<u8>,
    headers: Vec<[u8; WAL_RECORD_HEADER_LEN]>,
    /// Whether slot r holds its page with the LSN pass 1 saw.
    ok: Vec<bool>,
    err: Option<io::Error>,
}

impl Reread {
    /// One `pread` per run of adjacent pages; each page CRC checked and
    /// kept only if its LSN is still the one pass 1 saw.
    fn run(&mut self, root: &Path, l: &Layout, since: u64, rc: &RecordCrc) -> io::Result<()> {
        let ps = l.ps;
        let n = self.pages.len();
        self.buf.resize(n * ps, 0);
        self.headers.resize(n, [0; WAL_RECORD_HEADER_LEN]);
        self.ok.clear();
        self.ok.resize(n, false);
        let mut open = None;
        let mut k = 0;
        while k < n {
            let (first, _, _) = self.pages[k];
            let seg = first / l.pps;
            let mut run = 1;
            while k + run < n
                && self.pages[k + run].0 == first + run as u64
                && self.pages[k + run].0 / l.pps == seg
            {
                run += 1;
            }
            let f = segment_file(root, &mut open, seg as usize)?;
            let off = (first % l.pps) * ps as u64;
            f.read_exact_at(&mut self.buf[k * ps..(k + run) * ps], off)?;
            for r in k..k + run {
                let (id, lsn, _) = self.pages[r];
                let p = &mut self.buf[r * ps..(r + 1) * ps];
                let off = (id % l.pps) * ps as u64;
                // Changed since pass 1: its new LSN is above `upto`.
                self.ok[r] = settle(f, off, p, id, since)? == Some(lsn);
                if self.ok[r] {
                    self.headers[r] = rc.header(lsn, id, p);
                }
            }
            k += run;
        }
        Ok(())
    }
}

/// Pass 2: the pages of `found` (sorted by LSN), batch by batch. The pages
/// of a batch that pass 1a did not keep are read again by one reader per
/// core, each its share of the batch, while the batch before is sent.
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
    let l = &kept.layout;
    let ps = l.ps;
    let batch_pages = (BATCH_BYTES / ps).max(1);
    let batches: Vec<&[(u64, u64)]> = found.chunks(batch_pages).collect();
    // Readers only if pass 1a did not keep every page.
    let workers = if kept.len < l.pages() { readers() } else { 0 };
    std::thread::scope(|s| {
        let mut to_readers = Vec::new();
        let mut from_readers = Vec::new();
        for _ in 0..workers {
            let (job_tx, job_rx) = mpsc::channel::<Reread>();
            let (done_tx, done_rx) = mpsc::channel::<Reread>();
            s.spawn(move || {
                for mut job in job_rx {
                    job.err = job.run(root, l, since, rc).err();
                    if done_tx.send(job).is_err() {
                        return;
                    }
                }
            });
            to_readers.push(job_tx);
            from_readers.push(done_rx);
        }
        let mut pool: Vec<Reread> = Vec::new();
        // Where each page of a batch comes from, and its reread shares.
        let dispatch = |batch: &[(u64, u64)], pool: &mut Vec<Reread>| {
            let mut srcs = Vec::with_capacity(batch.len());
            let mut to_read = Vec::new();
            for (j, &(lsn, id)) in batch.iter().enumerate() {
                match kept.index(id) {
                    Some(k) => srcs.push(Src::Kept(k)),
                    None => {
                        srcs.push(Src::Skip);
                        to_read.push((id, lsn, j));
                    }
                }
            }
            if to_read.is_empty() {
                return (srcs, 0);
            }
            // In file order, so that adjacent pages are one read.
            to_read.sort_unstable();
            let shares = workers.min(to_read.len().div_ceil(MIN_SHARED_REREAD));
            let share = to_read.len().div_ceil(shares);
            for (w, part) in to_read.chunks(share).enumerate() {
                let mut job = pool.pop().unwrap_or_default();
                job.pages.clear();
                job.pages.extend_from_slice(part);
                for (r, &(_, _, j)) in part.iter().enumerate() {
                    srcs[j] = Src::Read(w, r);
                }
                // A reader that is gone has panicked: the scope says so.
                let _ = to_readers[w].send(job);
            }
            (srcs, to_read.len().div_ceil(share))
        };
        let mut next = batches.first().map(|b| dispatch(b, &mut pool));
        for (b, batch) in batches.iter().enumerate() {
            let (srcs, shares) = next.take().expect("dispatched before");
            // The next batch is read while this one is sent.
            next = batches.get(b + 1).map(|b| dispatch(b, &mut pool));
            let mut done = Vec::with_capacity(shares);
            for rx in &from_readers[..shares] {
                match rx.recv() {
                    Ok(job) => done.push(job),
                    Err(_) => return Err(io::Error::other("a catch-up reader stopped")),
                }
            }
            if let Some(e) = done.iter_mut().find_map(|j| j.err.take()) {
                return Err(e);
            }
            let mut slices = Vec::with_capacity(batch.len() * 2);
            for src in &srcs {
                let (h, p) = match *src {
                    Src::Kept(k) => (&kept.headers[k], kept.page(k)),
                    Src::Read(w, r) if done[w].ok[r] => {
                        (&done[w].headers[r], &done[w].buf[r * ps..(r + 1) * ps])
                    }
                    Src::Read(..) | Src::Skip => continue,
                };
                slices.push(IoSlice::new(h));
                slices.push(IoSlice::new(p));
            }
            if !slices.is_empty() {
                emit(&slices)?;
                let n = slices.len() / 2;
                out.pages += n as u64;
                out.bytes += (n * (WAL_RECORD_HEADER_LEN + ps)) as u64;
            }
            drop(slices);
            pool.extend(done);
        }
        Ok(out)
    })
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

    /// A page rewritten while the scan runs (a new LSN, above `upto`) or
    /// being written (its CRC fails) is left out of pass 2, not sent with
    /// the LSN or bytes pass 1 saw; every other page is sent as it was.
    #[test]
    fn pages_that_change_during_pass_2_are_left_out() {
        let d = tempfile::tempdir().unwrap();
        // Three batches of re-reads (2,048 pages each), nothing kept.
        let lsns: Vec<u64> = (0..5000u64).map(|i| i + 1).collect();
        let pages = write_segment(d.path(), &lsns);
        let (rewritten, torn) = (4500u64, 4600u64);
        let mut got = Vec::new();
        let mut calls = 0;
        scan_kept(d.path(), 4096, 0, 5000, 0, &mut |b| {
            calls += 1;
            if calls == 1 {
                // Batch 3 is read after batch 1 is sent.
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.path().join(segment_file_name(1)))
                    .unwrap();
                let newer = page::overflow_page(4096, rewritten, u64::MAX, 9000, b"newer");
                f.write_all_at(&newer, rewritten * 4096).unwrap();
                f.write_all_at(&[0xA5; 100], torn * 4096 + 1000).unwrap();
            }
            records(b, &mut got);
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 3);
        let want: Vec<(u64, u64, Vec<u8>)> = (0..5000u64)
            .filter(|&id| id != rewritten && id != torn)
            .map(|id| (id + 1, id, pages[id as usize].clone()))
            .collect();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "every other page as it was, in LSN order");
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
