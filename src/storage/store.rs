//! The follower's data files (spec §1): segment addressing, growth, page
//! reads and writes, fsync batching and `init`. File I/O goes through the
//! [`Fs`] seam (`storage/fs.rs`).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::layout::*;
use crate::format::page::Unreadable;
use crate::storage::fs::{FileIo, Fs, OpenMode};
use crate::storage::meta::{self, Meta};

/// Create a DB exactly as `quiverdb init --page-size N` does (§1.1): an empty
/// first segment, the WAL header, the empty free list, then meta. A folder
/// left half-initialised by a crash (no meta, an empty first segment and no
/// other segment) is completed; any other data without meta is refused.
pub fn init_db(fs: &dyn Fs, root: &Path, page_size: u32) -> Result<Meta> {
    if !is_valid_page_size(page_size) {
        return Err(Error::InvalidPageSize(page_size));
    }
    fs.create_dir_all(root)
        .map_err(|e| Error::io("cannot create folder", root, e))?;
    let seg1 = root.join(segment_file_name(1));
    if fs.exists(&seg1) {
        let f = fs
            .open(&seg1, OpenMode::Read)
            .map_err(|e| Error::io("cannot open", &seg1, e))?;
        let len = f.size().map_err(|e| Error::io("cannot stat", &seg1, e))?;
        if len != 0 || fs.exists(&root.join(segment_file_name(2))) {
            return Err(Error::OrphanSegments {
                path: root.to_path_buf(),
            });
        }
    }
    let mut f = fs
        .open(&seg1, OpenMode::Create)
        .map_err(|e| Error::io("cannot create", &seg1, e))?;
    f.sync_all()
        .map_err(|e| Error::io("cannot fsync", &seg1, e))?;
    // A crash during an earlier init can leave these files created but
    // empty, short or zero-filled (their folder entry reached the disk, their
    // data did not). There is no meta yet, so they hold nothing of value:
    // rewrite any that does not start with its complete header.
    let wal = root.join(WAL_FILE);
    if !has_header(fs, &wal, WAL_MAGIC, WAL_HEADER_LEN) {
        write_new_file(fs, &wal, &crate::format::wal::stream_header())?;
    }
    let free = root.join(FREE_FILE);
    if !has_header(fs, &free, FREE_MAGIC, FREE_HEADER_LEN) {
        let mut b = [0u8; FREE_HEADER_LEN];
        b[..8].copy_from_slice(FREE_MAGIC);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        write_new_file(fs, &free, &b)?;
    }
    let m = Meta::new_init(page_size);
    meta::write_meta(fs, root, &m)?;
    Ok(m)
}

/// Does `path` exist, at least `len` bytes long and starting with `magic`?
fn has_header(fs: &dyn Fs, path: &Path, magic: &[u8], len: usize) -> bool {
    fs.read(path)
        .is_ok_and(|b| b.len() >= len && b.starts_with(magic))
}

fn write_new_file(fs: &dyn Fs, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs
        .open(path, OpenMode::CreateTruncate)
        .map_err(|e| Error::io("cannot create", path, e))?;
    f.write_all_at(bytes, 0)
        .map_err(|e| Error::io("cannot write", path, e))?;
    f.sync_all().map_err(|e| Error::io("cannot fsync", path, e))
}

/// When segment data is fsynced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync each dirty segment once per batch, before meta.last_lsn covers it.
    Batch,
    /// fsync the segment after every page write, as QuiverDB 1.x does.
    Always,
    /// Never fsync segments (meta is still replaced atomically). After a
    /// crash, meta.last_lsn may claim pages that were lost: test use only.
    Never,
}

impl FsyncPolicy {
    pub const ALL: [FsyncPolicy; 3] = [FsyncPolicy::Batch, FsyncPolicy::Always, FsyncPolicy::Never];

    pub fn as_str(self) -> &'static str {
        match self {
            FsyncPolicy::Batch => "batch",
            FsyncPolicy::Always => "always",
            FsyncPolicy::Never => "never",
        }
    }
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let s = s.trim();
        FsyncPolicy::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("{s:?} is not one of batch, always, never"))
    }
}

struct Segment {
    file: Box<dyn FileIo>,
    len: u64,
    dirty: bool,
    /// The cache's clock when it was last used (for LRU eviction).
    used: u64,
}

/// Most segment files a store keeps open at once, whatever the limit on
/// open files: a follower of any size needs only this many descriptors.
pub const DEFAULT_MAX_OPEN_SEGMENTS: usize = 64;

/// How many segment files a store may keep open in this process: at most
/// [`DEFAULT_MAX_OPEN_SEGMENTS`], and at most a quarter of the soft
/// `RLIMIT_NOFILE` (the rest is for sockets, pipes, meta, the lock, and
/// several stores), but at least 4.
pub fn max_open_segments() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    let quarter = usize::try_from(soft / 4).unwrap_or(usize::MAX);
    quarter.clamp(4, DEFAULT_MAX_OPEN_SEGMENTS)
}

/// What `read_page` concludes from a page's bytes: v2 pages must pass their CRC.
fn check_read(buf: &[u8]) -> std::result::Result<(), Unreadable> {
    match crate::format::page::check_page_crc(buf) {
        crate::format::page::PageCrc::Mismatch { .. } => Err(Unreadable::CrcMismatch),
        _ => Ok(()),
    }
}

impl Segment {
    /// Record a change: dirty until the next sync, or synced now under `always`.
    fn changed(&mut self, path: &Path, always: bool) -> Result<()> {
        self.dirty = true;
        if always {
            self.file
                .sync_data()
                .map_err(|e| Error::io("cannot fsync", path, e))?;
            self.dirty = false;
        }
        Ok(())
    }
}

/// The segment files of one DB, with the in-memory logical page count.
pub struct Store {
    fs: Arc<dyn Fs>,
    root: PathBuf,
    page_size: u32,
    pages_per_seg: u64,
    /// The open segment files, by segment number: a bounded cache
    /// (`max_open`, least recently used out). A segment written since the
    /// last sync is fsynced before its handle is closed, so every segment
    /// outside the cache is clean and `sync` need only look at the cache.
    segs: HashMap<u64, Segment>,
    max_open: usize,
    /// The cache's clock.
    clock: u64,
    next_page_id: u64,
    fsync: FsyncPolicy,
    /// A segment file was created since the last sync: the folder needs an fsync.
    dir_dirty: bool,
    /// Opened for reading only (qdb-inspect, alongside a running applier).
    read_only: bool,
    /// Consecutive page writes not yet handed to the kernel (see `write_page`).
    run: WriteRun,
}

/// Pages written back to back in one segment, gathered into one `pwrite`:
/// per-page 4 KiB writes cost the kernel a syscall and a small-folio
/// allocation each, which made apply CPU-bound. Reads of a page in the run
/// are served from it, and `sync` writes it out first, so the run changes
/// only when data reaches the kernel, never what is read or made durable.
#[derive(Default)]
struct WriteRun {
    seg_no: u64,
    off: u64,
    buf: Vec<u8>,
}

/// Largest run handed to one `pwrite`.
const MAX_RUN: usize = 1 << 20;

impl WriteRun {
    fn covers(&self, seg_no: u64, off: u64, len: u64) -> bool {
        !self.buf.is_empty()
            && seg_no == self.seg_no
            && off >= self.off
            && off + len <= self.off + self.buf.len() as u64
    }
}

impl Store {
    pub fn open(fs: Arc<dyn Fs>, root: &Path, meta: &Meta, fsync: FsyncPolicy) -> Store {
        Store {
            fs,
            root: root.to_path_buf(),
            page_size: meta.page_size,
            pages_per_seg: pages_per_segment(meta.page_size),
            segs: HashMap::new(),
            max_open: max_open_segments(),
            clock: 0,
            next_page_id: meta.next_page_id,
            fsync,
            dir_dirty: false,
            read_only: false,
            run: WriteRun::default(),
        }
    }

    /// Open for reading only: segments are opened read-only and never
    /// created, so this works beside a running applier and on read-only media.
    pub fn open_read_only(fs: Arc<dyn Fs>, root: &Path, meta: &Meta) -> Store {
        let mut s = Store::open(fs, root, meta, FsyncPolicy::Never);
        s.read_only = true;
        s
    }

    /// Keep at most `n` (at least 1) segment files open.
    pub fn set_max_open_segments(&mut self, n: usize) {
        self.max_open = n.max(1);
    }

    /// Segment files open right now.
    pub fn open_segments(&self) -> usize {
        self.segs.len()
    }

    /// Length of segment `seg_no`; `None` if it is missing.
    pub fn segment_len(&mut self, seg_no: u64) -> Result<Option<u64>> {
        Ok(self.segment(seg_no, false)?.map(|s| s.len))
    }

    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    pub fn next_page_id(&self) -> u64 {
        self.next_page_id
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn locate(&self, page_id: u64) -> (u64, u64) {
        let seg_no = page_id / self.pages_per_seg + 1;
        let off = (page_id % self.pages_per_seg) * u64::from(self.page_size);
        (seg_no, off)
    }

    fn seg_path(&self, seg_no: u64) -> PathBuf {
        self.root.join(segment_file_name(seg_no))
    }

    /// The open segment, opening (and with `create`, creating) it on first
    /// use; the least recently used handle is closed first when the cache
    /// is full.
    fn segment(&mut self, seg_no: u64, create: bool) -> Result<Option<&mut Segment>> {
        self.clock += 1;
        let clock = self.clock;
        if !self.segs.contains_key(&seg_no) {
            let Some((file, len)) = self.open_segment(seg_no, create)? else {
                return Ok(None);
            };
            while self.segs.len() >= self.max_open {
                self.evict_one()?;
            }
            self.segs.insert(
                seg_no,
                Segment {
                    file,
                    len,
                    dirty: false,
                    used: clock,
                },
            );
        }
        let seg = self.segs.get_mut(&seg_no).expect("present");
        seg.used = clock;
        Ok(Some(seg))
    }

    /// Open segment `seg_no` outside the cache: its handle and length.
    fn open_segment(
        &mut self,
        seg_no: u64,
        create: bool,
    ) -> Result<Option<(Box<dyn FileIo>, u64)>> {
        let path = self.seg_path(seg_no);
        debug_assert!(
            !(create && self.read_only),
            "write through a read-only store"
        );
        let mode = if self.read_only {
            OpenMode::Read
        } else if create {
            if !self.fs.exists(&path) {
                // Kept apart from the handle: the folder is fsynced at the
                // next sync even if this handle is closed before it.
                self.dir_dirty = true;
            }
            OpenMode::Create
        } else {
            OpenMode::ReadWrite
        };
        let file = match self.fs.open(&path, mode) {
            Ok(f) => f,
            Err(e) if !create && e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("cannot open", path, e)),
        };
        let len = file
            .size()
            .map_err(|e| Error::io("cannot stat", &path, e))?;
        Ok(Some((file, len)))
    }

    /// Close the least recently used handle, fsyncing it first if it was
    /// written since the last sync: the next commit's meta must not cover
    /// pages that only a closed handle's fsync could have made durable.
    fn evict_one(&mut self) -> Result<()> {
        let Some((&seg_no, _)) = self.segs.iter().min_by_key(|(_, s)| s.used) else {
            return Ok(());
        };
        if self.run.seg_no == seg_no && !self.run.buf.is_empty() {
            // Never evicted in practice (the run's segment was just used),
            // but its pages must reach this handle before it closes.
            self.flush_run()?;
        }
        let mut seg = self.segs.remove(&seg_no).expect("present");
        if seg.dirty && self.fsync != FsyncPolicy::Never {
            seg.file
                .sync_data()
                .map_err(|e| Error::io("cannot fsync", self.seg_path(seg_no), e))?;
        }
        Ok(())
    }

    /// Read page `id` the way 1.x `read_page` does (bounds, segment present
    /// and long enough, CRC of v2 pages). `Err` only for local failures that
    /// are not "this page is unreadable".
    pub fn read_page(
        &mut self,
        id: u64,
        buf: &mut [u8],
    ) -> Result<std::result::Result<(), Unreadable>> {
        if id >= self.next_page_id {
            return Ok(Err(Unreadable::NotAllocated));
        }
        let (seg_no, off) = self.locate(id);
        let ps = u64::from(self.page_size);
        if self.run.covers(seg_no, off, ps) {
            let at = (off - self.run.off) as usize;
            buf.copy_from_slice(&self.run.buf[at..at + buf.len()]);
            return Ok(check_read(buf));
        }
        let Some(seg) = self.segment(seg_no, false)? else {
            return Ok(Err(Unreadable::MissingSegment));
        };
        if seg.len < off + ps {
            return Ok(Err(Unreadable::ShortSegment));
        }
        let mut got = 0;
        while got < buf.len() {
            match seg.file.read_at(&mut buf[got..], off + got as u64) {
                Ok(0) => return Ok(Err(Unreadable::ShortSegment)),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if !self.read_only {
                        log::warn!("page {id}: read failed ({e}); it will be overwritten");
                    }
                    return Ok(Err(Unreadable::IoError));
                }
            }
        }
        Ok(check_read(buf))
    }

    /// How many pages from `id` on (within its segment and below
    /// next_page_id) lie in a hole of their segment file, so read as zeros
    /// without reading them: a sparse follower of N segments holds N x 32
    /// MiB of holes that `qdb-inspect check` need not read. 0 when unknown.
    pub fn hole_pages_from(&mut self, id: u64) -> Result<u64> {
        if id >= self.next_page_id || !self.run.buf.is_empty() {
            return Ok(0);
        }
        let (seg_no, off) = self.locate(id);
        let ps = u64::from(self.page_size);
        let seg_end = self.pages_per_seg * ps;
        let Some(seg) = self.segment(seg_no, false)? else {
            return Ok(0);
        };
        let len = seg.len.min(seg_end);
        if len < off + ps {
            return Ok(0);
        }
        let data = match seg.file.next_data(off) {
            Ok(d) => d.unwrap_or(len).min(len),
            Err(_) => return Ok(0),
        };
        let pages = data.saturating_sub(off) / ps;
        Ok(pages.min(self.next_page_id - id))
    }

    /// Make page `id` addressable (1.x `ensure_allocated`, §6.2): beyond the
    /// logical end, grow next_page_id to id+1, creating every segment before
    /// the page's own at full length. Must be followed by `write_page(id)`:
    /// the page's own segment is extended by that write (a write past the
    /// end leaves the same zero gap as 1.x's `set_len`, and saves an
    /// ftruncate per page, a third of apply's time when the follower grows).
    /// Returns whether next_page_id changed.
    pub fn ensure_allocated(&mut self, id: u64) -> Result<bool> {
        if id < self.next_page_id {
            return Ok(false);
        }
        let ps = u64::from(self.page_size);
        let (first_seg, _) = self.locate(self.next_page_id);
        let (last_seg, _) = self.locate(id);
        for seg_no in first_seg..last_seg {
            self.grow_segment(seg_no, self.pages_per_seg * ps)?;
        }
        self.next_page_id = id + 1;
        Ok(true)
    }

    fn grow_segment(&mut self, seg_no: u64, want: u64) -> Result<()> {
        if self.run.seg_no == seg_no {
            self.flush_run()?;
        }
        let path = self.seg_path(seg_no);
        let always = self.fsync == FsyncPolicy::Always;
        if !self.segs.contains_key(&seg_no) {
            // A segment skipped over by a page far beyond the end (1.x sets
            // it to full length): growing it through the cache would push
            // out the handles in use, so it gets a handle of its own, made
            // durable and closed at once.
            let (mut file, len) = self.open_segment(seg_no, true)?.expect("created");
            if len < want {
                file.set_len(want)
                    .map_err(|e| Error::io("cannot extend", &path, e))?;
                if self.fsync != FsyncPolicy::Never {
                    file.sync_data()
                        .map_err(|e| Error::io("cannot fsync", &path, e))?;
                }
            }
            return Ok(());
        }
        let seg = self.segment(seg_no, true)?.expect("created");
        if seg.len >= want {
            return Ok(());
        }
        seg.file
            .set_len(want)
            .map_err(|e| Error::io("cannot extend", &path, e))?;
        seg.len = want;
        seg.changed(&path, always)
    }

    /// Write a full page image at its slot. The page must be allocated.
    /// Consecutive pages are gathered and reach the kernel together (at the
    /// latest at the next `sync`); under `FsyncPolicy::Always` each page is
    /// written and fsynced at once.
    pub fn write_page(&mut self, id: u64, page: &[u8]) -> Result<()> {
        debug_assert_eq!(page.len(), self.page_size as usize);
        let (seg_no, off) = self.locate(id);
        if self.fsync != FsyncPolicy::Always {
            let run = &mut self.run;
            if run.covers(seg_no, off, page.len() as u64) {
                // A rewrite of a page still in the run.
                let at = (off - run.off) as usize;
                run.buf[at..at + page.len()].copy_from_slice(page);
                return Ok(());
            }
            let appends = !run.buf.is_empty()
                && seg_no == run.seg_no
                && off == run.off + run.buf.len() as u64
                && run.buf.len() + page.len() <= MAX_RUN;
            if !appends {
                self.flush_run()?;
                self.run.seg_no = seg_no;
                self.run.off = off;
            }
            self.run.buf.extend_from_slice(page);
            return Ok(());
        }
        self.write_at(seg_no, off, page)
    }

    fn write_at(&mut self, seg_no: u64, off: u64, data: &[u8]) -> Result<()> {
        let path = self.seg_path(seg_no);
        let always = self.fsync == FsyncPolicy::Always;
        let seg = self.segment(seg_no, true)?.expect("created");
        seg.file
            .write_all_at(data, off)
            .map_err(|e| Error::io("cannot write page to", &path, e))?;
        seg.len = seg.len.max(off + data.len() as u64);
        seg.changed(&path, always)
    }

    /// Hand the gathered pages to the kernel.
    fn flush_run(&mut self) -> Result<()> {
        if self.run.buf.is_empty() {
            return Ok(());
        }
        let run = std::mem::take(&mut self.run);
        let res = self.write_at(run.seg_no, run.off, &run.buf);
        if res.is_ok() && self.fsync == FsyncPolicy::Batch && run.buf.len() >= MAX_RUN / 2 {
            // A long sequential run (a growing follower): overlap the disk
            // with the rest of the batch instead of paying for all of it at
            // the commit's fsync. Not for short runs: pages under writeback
            // cannot be rewritten without waiting, and churn rewrites them.
            if let Ok(Some(seg)) = self.segment(run.seg_no, false) {
                seg.file.start_writeback(run.off, run.buf.len() as u64);
            }
        }
        // Keep the allocation for the next run.
        self.run.buf = run.buf;
        self.run.buf.clear();
        res
    }

    /// Make every write so far durable (per the fsync policy). A failed fsync
    /// is never retried: after an fsync error the kernel may have dropped the
    /// dirty pages, so the only safe answer is to stop.
    pub fn sync(&mut self) -> Result<()> {
        self.flush_run()?;
        if self.fsync == FsyncPolicy::Never {
            return Ok(());
        }
        // Segments outside the cache are clean (fsynced when evicted).
        let mut dirty: Vec<u64> = self
            .segs
            .iter()
            .filter(|(_, s)| s.dirty)
            .map(|(&n, _)| n)
            .collect();
        dirty.sort_unstable();
        for seg_no in dirty {
            let path = self.seg_path(seg_no);
            let seg = self.segs.get_mut(&seg_no).expect("present");
            seg.file
                .sync_data()
                .map_err(|e| Error::io("cannot fsync", &path, e))?;
            seg.dirty = false;
        }
        if self.dir_dirty {
            // New segment files need their directory entry durable too.
            self.fs
                .sync_dir(&self.root)
                .map_err(|e| Error::io("cannot fsync folder", &self.root, e))?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// fsync every allocated segment once. A previous process may have
    /// written pages and died before its fsync: they are in the page cache,
    /// gating reads them as present and skips older images, so they must be
    /// made durable before any new meta.last_lsn can cover them.
    pub fn sync_existing(&mut self) -> Result<()> {
        if self.fsync == FsyncPolicy::Never || self.next_page_id == 0 {
            return Ok(());
        }
        let (last_seg, _) = self.locate(self.next_page_id - 1);
        for seg_no in 1..=last_seg {
            if let Some(seg) = self.segs.get_mut(&seg_no) {
                seg.dirty = true;
                continue;
            }
            // Through a handle of its own, not the cache: a large follower
            // has more segments than the cache holds.
            let path = self.seg_path(seg_no);
            match self.fs.open(&path, OpenMode::ReadWrite) {
                Ok(mut f) => f
                    .sync_data()
                    .map_err(|e| Error::io("cannot fsync", &path, e))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("cannot open", path, e)),
            }
        }
        self.dir_dirty = true;
        self.sync()
    }

    pub fn fs(&self) -> &dyn Fs {
        &*self.fs
    }
}
