//! Applying a WAL stream to a follower (spec §6) with the durability order
//! this project promises:
//!
//! 1. a page is durable (segment fsynced) before `meta.last_lsn` covers it;
//! 2. `meta` is replaced atomically (tmp, fsync, rename, folder fsync);
//! 3. `meta.last_lsn` is durable before anyone is told about it (the commit
//!    hook, used for checkpoint files, runs after the meta write).
//!
//! Gating and growth follow QuiverDB 1.x exactly, so every stream 1.x
//! `wal-apply` accepts ends in the same data files. Deliberate differences
//! (all documented in the README):
//! * fsyncs are batched (group commit) and `meta.last_lsn` advances at each
//!   batch, not only at the end of the stream;
//! * after a corrupt record, the good prefix is made durable and its highest
//!   LSN is persisted (1.x leaves last_lsn unchanged);
//! * untrusted lengths and page ids are bounded before anything is allocated;
//! * a payload page whose own CRC is wrong is rejected, never written;
//! * the DB is locked, and created on first use if it does not exist.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result, StreamError};
use crate::format::layout::{
    is_valid_page_size, le_u32, DIR_FILE, META_FILE, WAL_HEADER_LEN, WAL_MAGIC,
    WAL_RECORD_HEADER_LEN, WAL_REC_OFF_LEN, WAL_TYPE_TRUNCATE,
};
use crate::format::page::{self, PageCrc};
use crate::format::wal::{Next, RecordHeader, StreamEnd, WalReader};
use crate::metrics::Metrics;
use crate::replica::complete::{self, Tracker};
use crate::replica::heads::HeadTracker;
use crate::storage::fs::Fs;
use crate::storage::lock::{DbLock, LockHint, LockOptions};
use crate::storage::meta::{self, Meta};
use crate::storage::store::{self, FsyncPolicy, Store};
use crate::transport::pipe::ChunkReader;

/// Default `--max-pages`: 2^28 pages (1 TiB at 4 KiB pages, 8 TiB at 32 KiB).
/// Absolute, not relative to the follower's size, because a resumed stream
/// may legitimately jump far past the follower's end (spec §12.3).
pub const DEFAULT_MAX_PAGES: u64 = 1 << 28;

#[derive(Clone, Debug)]
pub struct ApplyOptions {
    pub fsync: FsyncPolicy,
    /// Refuse page ids >= this.
    pub max_pages: u64,
    /// Create a missing DB with this page size at open; without it, a
    /// missing DB is created with the size of the first page image.
    pub page_size: Option<u32>,
    /// Create the DB if it has no meta.
    pub create: bool,
    /// Block until the lock is free instead of failing.
    pub wait_lock: bool,
    /// While waiting for the lock, give up when this is set (the tools'
    /// SIGINT/SIGTERM flag): [`Error::LockWaitInterrupted`].
    pub stop: Option<Arc<AtomicBool>>,
    /// How the "locked by another process" error says what to do.
    pub lock_hint: LockHint,
    /// Commit after this many bytes of applied pages.
    pub batch_bytes: u64,
    /// Commit at least this often while data flows.
    pub batch_interval: Duration,
    /// When the input pauses after a large batch, wait this long for more
    /// before committing (small batches commit at once: `SMALL_BATCH_RECORDS`).
    pub idle_grace: Duration,
    /// Maintain DIR/dir for this many buckets (the leader's count); `None`
    /// leaves dir alone, as 1.x does.
    pub buckets: Option<u32>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            fsync: FsyncPolicy::Batch,
            max_pages: DEFAULT_MAX_PAGES,
            page_size: None,
            create: true,
            wait_lock: false,
            stop: None,
            lock_hint: LockHint::StopOther,
            batch_bytes: 64 << 20,
            batch_interval: Duration::from_millis(1000),
            idle_grace: Duration::from_millis(2),
            buckets: None,
        }
    }
}

/// A batch of at most this many records is "small": when the input pauses
/// and both the batch so far and the one before it were small, the sender
/// is sending lone frames (an idle leader's occasional write), so apply
/// commits at once instead of waiting `idle_grace` for a burst that is not
/// coming; that wait was most of a lone frame's latency. While records
/// stream in, batches grow past this (records pile up during each fsync),
/// and the grace comes back to keep them large.
pub const SMALL_BATCH_RECORDS: u64 = 4;

/// Input that can say what is readable without blocking, so apply can
/// commit exactly when the next record has not fully arrived yet.
pub trait Input: Read {
    /// Can this input pause (a pipe or socket)? If not (a file, a buffer),
    /// the other methods are never called and commits follow size and time.
    fn live(&self) -> bool {
        false
    }
    /// Bytes readable now without waiting, looking ahead at most `want`.
    fn buffered(&mut self, want: usize) -> usize {
        want
    }
    /// Copy up to `buf.len()` readable bytes without consuming them.
    fn peek(&mut self, _buf: &mut [u8]) -> usize {
        0
    }
    /// Wait up to `timeout` for more input; true if some arrived (or the end).
    fn wait(&mut self, _timeout: Duration) -> bool {
        true
    }
    /// Nothing beyond what is buffered will ever arrive.
    fn closed(&mut self) -> bool {
        true
    }
}

impl Input for ChunkReader {
    fn live(&self) -> bool {
        true
    }
    fn buffered(&mut self, want: usize) -> usize {
        ChunkReader::buffered(self, want)
    }
    fn peek(&mut self, buf: &mut [u8]) -> usize {
        ChunkReader::peek(self, buf)
    }
    fn wait(&mut self, timeout: Duration) -> bool {
        ChunkReader::wait(self, timeout)
    }
    fn closed(&mut self) -> bool {
        ChunkReader::closed(self)
    }
}

/// Is the next record (or mid-stream header) completely readable right now?
fn next_record_buffered<I: Input>(input: &mut I) -> bool {
    let mut h = [0u8; WAL_RECORD_HEADER_LEN];
    let n = input.peek(&mut h);
    if n >= 8 && &h[..8] == WAL_MAGIC {
        return input.buffered(WAL_HEADER_LEN) >= WAL_HEADER_LEN;
    }
    if n < WAL_RECORD_HEADER_LEN {
        return false;
    }
    let need = WAL_RECORD_HEADER_LEN + le_u32(&h, WAL_REC_OFF_LEN) as usize;
    // A huge (corrupt) len must not make us look ahead without bound: the
    // record is then "not complete", and reading it will fail on its own.
    need <= 1 << 21 && input.buffered(need) >= need
}

/// A plain reader that never reports itself idle (files, in-memory streams).
pub struct Plain<R>(pub R);

impl<R: Read> Read for Plain<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}
impl<R: Read> Input for Plain<R> {}

/// What one stream (session) did.
#[derive(Clone, Debug, Default)]
pub struct SessionStats {
    /// CRC-valid records.
    pub records: u64,
    pub applied: u64,
    pub skipped: u64,
    /// TRUNCATE and unknown-type records (checked, counted, ignored).
    pub ignored: u64,
    pub mid_headers: u64,
    /// Stream bytes consumed.
    pub bytes: u64,
    pub commits: u64,
    /// meta.last_lsn on disk after the session.
    pub last_lsn: u64,
    /// The durable complete LSN after the session (src/complete.rs).
    pub complete_lsn: u64,
    pub end: Option<StreamEnd>,
}

impl std::fmt::Display for SessionStats {
    /// The one-line summary both qdb-apply and the daemon log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "records={} applied={} skipped={} ignored={} bytes={} last_lsn={} complete_lsn={}",
            self.records,
            self.applied,
            self.skipped,
            self.ignored,
            self.bytes,
            self.last_lsn,
            self.complete_lsn
        )
    }
}

type CommitHook = Box<dyn FnMut(&Meta) + Send>;

/// An open follower DB: holds the lock for its lifetime and applies streams.
pub struct Follower {
    fs: Arc<dyn Fs>,
    root: PathBuf,
    lock: DbLock,
    opts: ApplyOptions,
    /// `None` until the DB exists (it is created on the first page image).
    db: Option<(Meta, Store)>,
    /// Highest CRC-valid record LSN seen; never below meta.last_lsn.
    max_lsn: u64,
    /// Page writes or growth not yet covered by a commit.
    dirty: bool,
    dirty_bytes: u64,
    last_commit: Instant,
    payload: Vec<u8>,
    current: Vec<u8>,
    warnings: u32,
    hook: Option<CommitHook>,
    /// With `opts.buckets`: the heads DIR/dir gets at each commit.
    heads: Option<HeadTracker>,
    /// Set by the first local error (a failed write, fsync, rename...).
    /// After it, pages written since the last commit may not be on disk
    /// (a failed fsync drops them, and retrying it "succeeds"), and the
    /// highest LSN seen may belong to a page that was never written, so this
    /// follower must never commit again: it refuses every further call and
    /// the process restarts from the durable meta.last_lsn.
    poisoned: bool,
    /// Page LSNs up to this are known durable (meta.last_lsn at open, then
    /// at each commit); gating trusts only those, and the pages this process
    /// wrote since its last commit (`batch_pages`: id -> v2 LSN), whose
    /// bytes it knows, so it need not even read them back.
    trusted_lsn: u64,
    batch_pages: HashMap<u64, Option<u64>>,
    /// This session: meta.last_lsn when it started, its first and highest
    /// record LSN, and whether the "stream is behind" warning was given.
    session_base: u64,
    session_first: Option<u64>,
    session_max: u64,
    behind_warned: bool,
    /// The complete LSN (src/complete.rs), persisted after meta.
    complete: Tracker,
    complete_hook: Option<Box<dyn FnMut(u64) + Send>>,
    /// Records in the batch being built, and in the last one committed:
    /// they choose the idle grace ([`SMALL_BATCH_RECORDS`]).
    batch_records: u64,
    prev_batch_records: u64,
    metrics: Option<Metrics>,
}

/// At most this many per-record warnings per session, so a hostile stream
/// cannot flood the log.
const MAX_RECORD_WARNINGS: u32 = 10;

impl Follower {
    /// Lock `root` and open (or, with `opts.page_size`, create) its DB.
    pub fn open(fs: Arc<dyn Fs>, root: &Path, opts: ApplyOptions) -> Result<Follower> {
        let lock = DbLock::acquire_with(
            root,
            &LockOptions {
                wait: opts.wait_lock,
                stop: opts.stop.clone(),
                hint: opts.lock_hint,
            },
        )?;
        // Under the lock nobody else replaces meta, dir or complete-lsn: what an
        // interrupted replacement left behind can go (the removal becomes
        // durable with the folder fsync below, or at init).
        for name in [META_FILE, DIR_FILE, complete::COMPLETE_FILE] {
            meta::remove_stale_temps(&*fs, root, OsStr::new(name))?;
        }
        let mut meta = meta::read_meta(&*fs, root)?;
        match (meta, opts.page_size) {
            (Some(m), Some(ps)) if m.page_size != ps => {
                return Err(Error::PageSizeMismatch {
                    path: root.to_path_buf(),
                    db: m.page_size,
                    requested: ps,
                })
            }
            (None, Some(ps)) if opts.create => {
                meta = Some(store::init_db(&*fs, root, ps)?);
                complete::write(&*fs, root, 0)?;
                log::info!(
                    "created follower database {} (page size {ps})",
                    root.display()
                );
            }
            (None, Some(ps)) if !is_valid_page_size(ps) => return Err(Error::InvalidPageSize(ps)),
            (None, _) if !opts.create => {
                return Err(Error::NoDatabase {
                    path: root.to_path_buf(),
                })
            }
            _ => {}
        }
        let mut db = match meta {
            Some(m) => {
                let mut s = Store::open(fs.clone(), root, &m, opts.fsync);
                s.sync_existing()?;
                Some((m, s))
            }
            None => None,
        };
        let heads = match (opts.buckets, db.as_mut()) {
            (Some(b), Some((_, s))) => Some(HeadTracker::load(&*fs, root, s, b)?),
            _ => None,
        };
        let max_lsn = db.as_ref().map_or(0, |(m, _)| m.last_lsn);
        let complete = Tracker::new(complete::load(&*fs, root, db.as_ref().map(|(m, _)| m))?);
        // From now on the file exists: a missing one would later be read as
        // meta.last_lsn, which may by then be past a gap.
        if db.is_some() && complete::read(&*fs, root)?.is_none() {
            complete::write(&*fs, root, complete.value())?;
        }
        Ok(Follower {
            fs,
            root: root.to_path_buf(),
            lock,
            opts,
            db,
            max_lsn,
            dirty: false,
            dirty_bytes: 0,
            last_commit: Instant::now(),
            payload: Vec::new(),
            current: Vec::new(),
            warnings: 0,
            hook: None,
            heads,
            poisoned: false,
            trusted_lsn: max_lsn,
            batch_pages: HashMap::new(),
            session_base: 0,
            session_first: None,
            session_max: 0,
            behind_warned: false,
            complete,
            complete_hook: None,
            batch_records: 0,
            prev_batch_records: 0,
            metrics: None,
        })
    }

    /// Called after every commit that changed meta, with the durable meta.
    pub fn set_commit_hook(&mut self, hook: impl FnMut(&Meta) + Send + 'static) {
        self.hook = Some(Box::new(hook));
    }

    /// Called after every commit that changed the complete LSN, with the
    /// durable value (after meta and the complete-lsn file are durable).
    pub fn set_complete_hook(&mut self, hook: impl FnMut(u64) + Send + 'static) {
        self.complete_hook = Some(Box::new(hook));
    }

    /// The durable complete LSN: the safe resume point (src/complete.rs).
    pub fn complete_lsn(&self) -> u64 {
        self.complete.durable()
    }

    /// The leader's last_lsn from the latest qdb-ship heartbeat, if any.
    pub fn leader_lsn(&self) -> Option<u64> {
        self.complete.leader_lsn()
    }

    /// Count records, gaps and commits into `metrics` from now on.
    pub fn set_metrics(&mut self, metrics: Metrics) {
        metrics.set_last_lsn(self.meta().map_or(0, |m| m.last_lsn));
        metrics.set_complete_lsn(self.complete_lsn());
        self.metrics = Some(metrics);
    }

    /// The durable meta, if the DB exists.
    pub fn meta(&self) -> Option<&Meta> {
        self.db.as_ref().map(|(m, _)| m)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Apply one stream until its end. On a stream error, every page before
    /// the bad record is made durable and covered by meta.last_lsn before the
    /// error is returned. On a local error nothing more is committed, and
    /// this follower refuses every later `apply` or `commit`
    /// ([`Error::Poisoned`]): the process must restart from the durable meta.
    pub fn apply<I: Input>(&mut self, input: I, stats: &mut SessionStats) -> Result<()> {
        self.check_poisoned()?;
        self.warnings = 0;
        self.session_base = self.meta().map_or(0, |m| m.last_lsn);
        self.session_first = None;
        self.session_max = 0;
        self.behind_warned = false;
        let res = self.apply_inner(input, stats);
        self.warn_if_behind();
        self.complete.end_stream();
        let committed = match &res {
            // A local error must not be followed by a commit: it would fsync
            // again after a failed fsync, or cover the LSN of a page whose
            // write failed.
            Err(e) if !e.is_stream_error() => {
                self.poisoned = true;
                Ok(())
            }
            // Commit whatever the stream delivered, whether it ended well or not.
            _ => self.commit(stats),
        };
        stats.last_lsn = self.meta().map_or(0, |m| m.last_lsn);
        stats.complete_lsn = self.complete.durable();
        match (res, committed) {
            (Err(e), Ok(())) => Err(e),
            // A local failure outranks a stream error: the daemon must stop.
            (_, Err(e)) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        }
    }

    fn apply_inner<I: Input>(&mut self, input: I, stats: &mut SessionStats) -> Result<()> {
        let mut rd = WalReader::open(input)?;
        let res = self.record_loop(&mut rd, stats);
        stats.bytes += rd.offset();
        stats.mid_headers += rd.mid_headers;
        res
    }

    fn record_loop<I: Input>(
        &mut self,
        rd: &mut WalReader<I>,
        stats: &mut SessionStats,
    ) -> Result<()> {
        loop {
            // Group commit: when the next record has not fully arrived, the
            // sender has paused (or is slow): make the batch durable before
            // blocking. After a large batch, first a short grace so a burst
            // split across reads stays one batch; after small ones, at once.
            while rd.get_mut().live() && self.dirty_or_behind() {
                let small = self.batch_records <= SMALL_BATCH_RECORDS
                    && self.prev_batch_records <= SMALL_BATCH_RECORDS;
                let input = rd.get_mut();
                if next_record_buffered(input) || input.closed() {
                    break;
                }
                if small || !input.wait(self.opts.idle_grace) {
                    self.commit(stats)?;
                    self.warn_if_behind();
                    break;
                }
            }
            let (hdr, raw) = match rd.next_header()? {
                Next::Record(h, raw) => (h, raw),
                Next::End(end) => {
                    stats.end = Some(end);
                    return Ok(());
                }
            };
            let offset = rd.offset() - WAL_RECORD_HEADER_LEN as u64;
            let end = if hdr.is_page_image() {
                self.page_image(rd, offset, &hdr, &raw, stats)?
            } else if crate::format::marker::is_marker(hdr.rtype) && hdr.len <= 64 {
                self.marker_record(rd, &hdr, &raw, stats)?
            } else {
                let end = rd.skip_payload(&hdr, &raw)?;
                if end.is_none() {
                    self.saw_lsn(&hdr);
                    stats.records += 1;
                    stats.ignored += 1;
                    self.batch_records += 1;
                    if let Some(m) = &self.metrics {
                        m.record_ignored();
                    }
                    if hdr.rtype != WAL_TYPE_TRUNCATE {
                        log::debug!(
                            "ignored record of unknown type {} (lsn {})",
                            hdr.rtype,
                            hdr.lsn
                        );
                    }
                }
                end
            };
            if let Some(end) = end {
                stats.end = Some(end);
                return Ok(());
            }
            if self.dirty_bytes >= self.opts.batch_bytes
                || (self.dirty_or_behind()
                    && self.last_commit.elapsed() >= self.opts.batch_interval)
            {
                self.commit(stats)?;
            }
        }
    }

    fn page_image<I: Input>(
        &mut self,
        rd: &mut WalReader<I>,
        offset: u64,
        hdr: &RecordHeader,
        raw: &[u8; WAL_RECORD_HEADER_LEN],
        stats: &mut SessionStats,
    ) -> Result<Option<StreamEnd>> {
        // Bound everything untrusted before reading or allocating (§12.3).
        let page_size = match &self.db {
            Some((m, _)) => m.page_size,
            None if is_valid_page_size(hdr.len) => hdr.len,
            None => {
                return Err(StreamError::InvalidPageLen {
                    offset,
                    len: hdr.len,
                }
                .into())
            }
        };
        if hdr.len != page_size {
            return Err(StreamError::PageLenMismatch {
                offset,
                lsn: hdr.lsn,
                page_id: hdr.page_id,
                len: hdr.len,
                page_size,
            }
            .into());
        }
        if hdr.page_id >= self.opts.max_pages {
            return Err(StreamError::PageIdTooLarge {
                offset,
                page_id: hdr.page_id,
                max_pages: self.opts.max_pages,
            }
            .into());
        }
        let mut payload = std::mem::take(&mut self.payload);
        let res = self.page_image_payload(rd, offset, hdr, raw, &mut payload, stats);
        self.payload = payload;
        res
    }

    fn page_image_payload<I: Input>(
        &mut self,
        rd: &mut WalReader<I>,
        offset: u64,
        hdr: &RecordHeader,
        raw: &[u8; WAL_RECORD_HEADER_LEN],
        payload: &mut Vec<u8>,
        stats: &mut SessionStats,
    ) -> Result<Option<StreamEnd>> {
        if let Some(end) = rd.read_payload(hdr, raw, payload)? {
            return Ok(Some(end));
        }
        // A valid 1.x stream always carries a correct page CRC (or 0) on v2
        // pages (§12.8): a mismatch means corruption we must not write.
        if let PageCrc::Mismatch { stored, computed } = page::check_page_crc(payload) {
            return Err(StreamError::CorruptPage {
                offset,
                lsn: hdr.lsn,
                page_id: hdr.page_id,
                stored,
                computed,
            }
            .into());
        }
        if self.db.is_none() {
            let m = store::init_db(&*self.fs, &self.root, hdr.len)?;
            complete::write(&*self.fs, &self.root, 0)?;
            log::info!(
                "created follower database {} (page size {} from the stream)",
                self.root.display(),
                hdr.len
            );
            let mut s = Store::open(self.fs.clone(), &self.root, &m, self.opts.fsync);
            if let Some(b) = self.opts.buckets {
                self.heads = Some(HeadTracker::load(&*self.fs, &self.root, &mut s, b)?);
            }
            self.db = Some((m, s));
        }
        self.saw_lsn(hdr);
        stats.records += 1;
        self.batch_records += 1;
        let new_lsn = page::v2_page_lsn(payload);
        if let Some(n) = new_lsn {
            if n != hdr.lsn {
                self.warn(format_args!(
                    "page {} record lsn {} carries page lsn {n}: gating on the page lsn, as QuiverDB 1.x does",
                    hdr.page_id, hdr.lsn
                ));
            }
        }
        self.gate_and_write(hdr.page_id, payload, stats)?;
        Ok(None)
    }

    /// QuiverDB 1.x's gating for one page image whose length and CRC are
    /// already checked, then the write (not yet durable: the next commit
    /// makes it so). Shared by stream apply and backup restore, so both gate
    /// exactly alike.
    fn gate_and_write(&mut self, id: u64, payload: &[u8], stats: &mut SessionStats) -> Result<()> {
        let new_lsn = page::v2_page_lsn(payload);
        let (_, store) = self.db.as_mut().expect("db exists");
        let mut apply = true;
        if let Some(&written) = self.batch_pages.get(&id) {
            // Written by this process since the last commit: its LSN is
            // known without reading it back (and it is trusted).
            if let (Some(c), Some(n)) = (written, new_lsn) {
                apply = n > c;
            }
        } else if id < store.next_page_id() {
            self.current.resize(payload.len(), 0);
            if store.read_page(id, &mut self.current)?.is_ok() {
                let cur_lsn = page::v2_page_lsn(&self.current);
                if let (Some(c), Some(n)) = (cur_lsn, new_lsn) {
                    // A page newer than the durable last_lsn was written by a
                    // run that never committed it: after a failed fsync it may
                    // exist only in the page cache, so it must not make us
                    // skip the image that would rewrite it (1.x trusts it).
                    apply = n > c || c > self.trusted_lsn;
                }
            }
        }
        if apply {
            store.ensure_allocated(id)?;
            store.write_page(id, payload)?;
            self.batch_pages.insert(id, new_lsn);
            if let Some(h) = self.heads.as_mut() {
                h.page_written(id, payload);
            }
            self.dirty = true;
            self.dirty_bytes += payload.len() as u64;
            stats.applied += 1;
            if let Some(m) = &self.metrics {
                m.record_applied();
            }
            log::trace!("applied page {id} (page lsn {new_lsn:?})");
        } else {
            stats.skipped += 1;
            if let Some(m) = &self.metrics {
                m.record_skipped();
            }
            log::trace!("skipped page {id} (page lsn {new_lsn:?}, not newer)");
        }
        Ok(())
    }

    /// Restore one page image from a backup frame (`replica::restore`): the
    /// caller has checked its frame CRC, length and page id bound. Gated and
    /// written exactly as a stream's page image, without counting its LSN
    /// towards `last_lsn` (a backup's frames are not a sequence: the backup
    /// as a whole covers its snapshot LSN, see [`Follower::advance_to`]).
    /// Commits by size as apply does, so memory stays bounded.
    pub(crate) fn restore_page(
        &mut self,
        id: u64,
        payload: &[u8],
        stats: &mut SessionStats,
    ) -> Result<()> {
        self.check_poisoned()?;
        let res = self.restore_page_inner(id, payload, stats);
        if res.is_err() {
            self.poisoned = true;
        }
        res
    }

    fn restore_page_inner(
        &mut self,
        id: u64,
        payload: &[u8],
        stats: &mut SessionStats,
    ) -> Result<()> {
        if self.db.is_none() {
            return Err(Error::NoDatabase {
                path: self.root.clone(),
            });
        }
        stats.records += 1;
        self.gate_and_write(id, payload, stats)?;
        if self.dirty_bytes >= self.opts.batch_bytes {
            self.commit(stats)?;
        }
        Ok(())
    }

    /// Let the next commit raise `meta.last_lsn` to `lsn` (never lower it):
    /// used once every page a backup holds is written, so that the commit
    /// makes them durable first and only then covers them.
    pub(crate) fn advance_to(&mut self, lsn: u64) {
        self.max_lsn = self.max_lsn.max(lsn);
    }

    /// One of qdb-ship's records (docs/protocol.md): counted like any
    /// unknown type, and fed to the complete-LSN tracker.
    fn marker_record<I: Input>(
        &mut self,
        rd: &mut WalReader<I>,
        hdr: &RecordHeader,
        raw: &[u8; WAL_RECORD_HEADER_LEN],
        stats: &mut SessionStats,
    ) -> Result<Option<StreamEnd>> {
        let mut payload = Vec::with_capacity(hdr.len as usize);
        let end = rd.read_payload(hdr, raw, &mut payload)?;
        if end.is_none() {
            self.saw_lsn(hdr);
            stats.records += 1;
            stats.ignored += 1;
            if let Some(m) = crate::format::marker::Marker::parse(hdr.rtype, &payload) {
                log::debug!("marker {m:?}");
                self.complete.marker(m);
                if let (Some(metrics), Some(leader)) = (&self.metrics, self.complete.leader_lsn()) {
                    metrics.set_leader_lsn(leader);
                }
            }
        }
        Ok(end)
    }

    /// Count a CRC-valid record's LSN towards last_lsn, and warn about gaps.
    fn saw_lsn(&mut self, hdr: &RecordHeader) {
        // Our markers are not changes; inside a catch-up LSNs jump by design.
        // Only a page image is a change we applied (or already hold).
        if hdr.is_page_image() {
            self.complete.record(hdr.lsn);
        }
        let data = !crate::format::marker::is_marker(hdr.rtype);
        // Saturating: a stream may carry lsn u64::MAX, and the next record
        // after it must not overflow (a panic in debug builds, a bogus gap
        // warning in release).
        if data
            && !self.complete.in_catchup()
            && hdr.lsn > self.max_lsn.saturating_add(1)
            && hdr.lsn > 1
        {
            let (have, next) = (self.max_lsn, hdr.lsn);
            if let Some(m) = &self.metrics {
                m.gap();
            }
            self.warn(format_args!(
                "LSN gap: the follower has every LSN up to {have} but the stream continues at {next}: frames the leader truncated were never received; if they changed pages, re-seed the follower from a leader backup"
            ));
        }
        self.max_lsn = self.max_lsn.max(hdr.lsn);
        self.session_first.get_or_insert(hdr.lsn);
        self.session_max = self.session_max.max(hdr.lsn);
    }

    /// A session whose every record so far is at or below the follower's
    /// last_lsn changes nothing, silently (gating skips it all): usually a
    /// re-initialised or wrong leader. Said once per session, when the
    /// input pauses or ends.
    fn warn_if_behind(&mut self) {
        let Some(first) = self.session_first else {
            return;
        };
        if self.behind_warned || self.session_base == 0 || self.session_max > self.session_base {
            return;
        }
        self.behind_warned = true;
        log::warn!(
            "stream LSN {first} is below the follower's last_lsn {}: every record is older than the follower; is this the right leader? (a re-initialised leader needs a re-seeded follower)",
            self.session_base
        );
    }

    fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        self.warnings += 1;
        if self.warnings <= MAX_RECORD_WARNINGS {
            log::warn!("{msg}");
        } else if self.warnings == MAX_RECORD_WARNINGS + 1 {
            log::warn!("more warnings in this session are suppressed");
        }
    }

    fn dirty_or_behind(&self) -> bool {
        // A resumed stream whose pages are all skipped still advances the
        // complete LSN: that too must be committed when the input pauses.
        self.dirty
            || self.complete.changed()
            || self.db.as_ref().is_some_and(|(m, s)| {
                self.max_lsn > m.last_lsn || s.next_page_id() != m.next_page_id
            })
    }

    /// Make every applied page durable, then persist meta (last_lsn = the
    /// highest LSN seen, next_page_id) if it changed.
    pub fn commit(&mut self, stats: &mut SessionStats) -> Result<()> {
        self.check_poisoned()?;
        let res = self.commit_inner(stats);
        if res.is_err() {
            self.poisoned = true;
        }
        res
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Poisoned {
                path: self.root.clone(),
            });
        }
        Ok(())
    }

    fn commit_inner(&mut self, stats: &mut SessionStats) -> Result<()> {
        self.last_commit = Instant::now();
        self.prev_batch_records = std::mem::take(&mut self.batch_records);
        let Some((meta, store)) = self.db.as_mut() else {
            return Ok(());
        };
        // Someone deleted or replaced DIR/LOCK: a second applier may hold a
        // lock on the new file and write the same follower. Stop before
        // making anything more durable or visible.
        self.lock.check_still_held()?;
        if self.dirty {
            store.sync()?;
            self.dirty = false;
            self.dirty_bytes = 0;
        }
        // Durable now; from here on `trusted_lsn` (raised below) covers them.
        self.batch_pages.clear();
        // Only now are the pages the heads point at durable.
        if let Some(h) = self.heads.as_mut().filter(|h| h.is_dirty()) {
            h.persist(&*self.fs, &self.root)?;
        }
        let mut next = *meta;
        next.last_lsn = meta.last_lsn.max(self.max_lsn);
        next.next_page_id = store.next_page_id();
        if next != *meta {
            meta::write_meta(&*self.fs, &self.root, &next)?;
            *meta = next;
            self.trusted_lsn = next.last_lsn;
            stats.commits += 1;
            if let Some(m) = &self.metrics {
                m.committed(next.last_lsn, self.last_commit.elapsed());
            }
            log::debug!(
                "commit: last_lsn={} next_page_id={}",
                next.last_lsn,
                next.next_page_id
            );
            if let Some(hook) = self.hook.as_mut() {
                hook(&next);
            }
        }
        // After meta: the complete LSN never covers more than meta does.
        if self.complete.changed() {
            complete::write(&*self.fs, &self.root, self.complete.value())?;
            self.complete.mark_durable();
            if let Some(m) = &self.metrics {
                m.set_complete_lsn(self.complete.durable());
            }
            if let Some(hook) = self.complete_hook.as_mut() {
                hook(self.complete.durable());
            }
        }
        Ok(())
    }
}
