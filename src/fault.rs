//! A simulated file system for robustness testing, plugged into the
//! [`Fs`]/[`FileIo`] seam: it models a page cache so that tests can cut the
//! power at any I/O operation, and it injects faults (ENOSPC, short writes,
//! EIO on fsync, failing renames...) into the real code paths.
//!
//! # The model
//!
//! Every file has a *volatile* content (what the running process reads: the
//! page cache) and a *durable* content (what survives a power loss).
//!
//! * `write_all_at` and `set_len` change the volatile content only and mark
//!   the touched 512-byte sectors dirty.
//! * `sync_data`/`sync_all` copy the dirty sectors and the size to durable.
//!   A *failed* fsync behaves as Linux does since 4.13: the dirty sectors are
//!   marked clean without reaching the disk, and the next fsync succeeds with
//!   nothing to write. So a caller that retries a failed fsync is told its
//!   data is safe when it is not, which is exactly the bug to catch.
//! * Creating, renaming and removing a file are *directory* operations. They
//!   are visible at once, but become durable only at `sync_dir` of their
//!   folder. Pending directory operations are kept in order per folder, as a
//!   journaling file system commits them: a crash keeps a prefix of them.
//! * [`SimFs::crash`] is the power loss: everything volatile is replaced by
//!   the durable image, per [`CrashMode`] (lose everything unsynced, keep the
//!   directory operations, or a seeded torn mode where any subset of dirty
//!   sectors reached the disk and a prefix of the directory operations did).
//! * Folders themselves are durable as soon as they are created; the
//!   follower's root always exists before the tests start.
//!
//! Content is stored sparsely (4 KiB chunks), so a hostile page id that grows
//! a follower to gigabytes costs only the pages actually written.
//!
//! Paths are compared as given (no normalisation, no symlinks); callers use
//! absolute paths built with `Path::join`, as the follower does.
//!
//! The DB lock ([`crate::store::DbLock`]) is a real `flock` and does not go
//! through the seam, so tests give the follower a real (empty) folder as root.
//!
//! The module also holds the checks the robustness tests and the fuzz target
//! share: [`StreamIndex`] (the records of a stream, and the `--since-lsn`
//! slice an operator would resume with), [`check_claims`] (the durable image
//! never claims a page it does not hold) and [`fuzz_apply_stream`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::layout::*;
use crate::meta::Meta;
use crate::page::{self, PageCrc};
use crate::store::{FileIo, Fs, OpenMode};
use crate::wal::record_crc;

/// Sector size: the unit a torn write keeps or loses.
pub const SECTOR: u64 = 512;
const CHUNK: u64 = 4096;

/// The kinds of operation faults and power cuts are counted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `open` with a mode that may create or truncate.
    Create,
    Write,
    SetLen,
    /// `sync_data` or `sync_all`.
    Sync,
    /// Matched against the folder's path.
    SyncDir,
    /// Matched against the destination path.
    Rename,
    Remove,
}

/// What an injected fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Fail with this errno and change nothing (for `Sync`: the dirty data
    /// is dropped, as after a real writeback error).
    Errno(i32),
    /// Write only the first `written` bytes of the buffer, then fail with
    /// `errno` (what `write_all` reports when the disk fills mid-write).
    /// Only meaningful for [`OpKind::Write`].
    ShortWrite { written: usize, errno: i32 },
}

/// One fault rule: fire on the `nth` (1-based, counted from when the rule
/// was injected) operation of kind `op` whose path contains
/// `path_contains`; with `sticky`, also on every later one (a full disk
/// stays full).
#[derive(Clone, Debug)]
pub struct Fault {
    pub op: OpKind,
    pub nth: u64,
    pub path_contains: Option<String>,
    pub sticky: bool,
    pub action: FaultAction,
}

impl Fault {
    pub fn new(op: OpKind, nth: u64, action: FaultAction) -> Fault {
        Fault {
            op,
            nth: nth.max(1),
            path_contains: None,
            sticky: false,
            action,
        }
    }

    /// Only count operations on paths containing `s` (e.g. `".p1seg"`, `"meta.tmp"`).
    pub fn on_path(mut self, s: &str) -> Fault {
        self.path_contains = Some(s.to_string());
        self
    }

    pub fn sticky(mut self) -> Fault {
        self.sticky = true;
        self
    }
}

/// What survives [`SimFs::crash`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Only what was synced: unsynced data and directory operations are lost
    /// (the adversarial case for the rename protocol).
    LoseUnsynced,
    /// Unsynced data is lost, but every pending directory operation reached
    /// the disk (renames that "happened to survive").
    KeepDirOps,
    /// Seeded: each dirty sector independently reached the disk or not, each
    /// unsynced size change did or did not, and a prefix of each folder's
    /// pending directory operations did: torn page writes included.
    Torn { seed: u64 },
}

/// One operation as the log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpEvent {
    /// 1-based, counted over every mutating operation.
    pub n: u64,
    pub kind: OpKind,
    pub path: PathBuf,
    /// The operation failed (fault or power cut).
    pub failed: bool,
}

/// Sparse file content in 4 KiB chunks; absent chunks read as zeros.
#[derive(Clone, Debug, Default)]
struct Sparse {
    len: u64,
    chunks: BTreeMap<u64, Box<[u8]>>,
}

impl Sparse {
    fn read_at(&self, buf: &mut [u8], off: u64) -> usize {
        if off >= self.len {
            return 0;
        }
        let n = (buf.len() as u64).min(self.len - off) as usize;
        let mut done = 0;
        while done < n {
            let pos = off + done as u64;
            let (ci, co) = (pos / CHUNK, (pos % CHUNK) as usize);
            let take = (CHUNK as usize - co).min(n - done);
            match self.chunks.get(&ci) {
                Some(c) => buf[done..done + take].copy_from_slice(&c[co..co + take]),
                None => buf[done..done + take].fill(0),
            }
            done += take;
        }
        n
    }

    fn write_at(&mut self, buf: &[u8], off: u64) {
        let mut done = 0;
        while done < buf.len() {
            let pos = off + done as u64;
            let (ci, co) = (pos / CHUNK, (pos % CHUNK) as usize);
            let take = (CHUNK as usize - co).min(buf.len() - done);
            let c = self
                .chunks
                .entry(ci)
                .or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
            c[co..co + take].copy_from_slice(&buf[done..done + take]);
            done += take;
        }
        self.len = self.len.max(off + buf.len() as u64);
    }

    fn set_len(&mut self, len: u64) {
        if len < self.len {
            // Drop whole chunks past the end and zero the tail of the last
            // one, so growing again reads zeros as a real file does.
            let first_gone = len.div_ceil(CHUNK);
            self.chunks.split_off(&first_gone);
            if len % CHUNK != 0 {
                if let Some(c) = self.chunks.get_mut(&(len / CHUNK)) {
                    c[(len % CHUNK) as usize..].fill(0);
                }
            }
        }
        self.len = len;
    }

    fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len as usize];
        self.read_at(&mut v, 0);
        v
    }

    /// Copy one sector, but never past this file's own length (a torn
    /// crash that kept a sector but not the size change).
    fn copy_sector_within(&mut self, src: &Sparse, sector: u64) {
        let off = sector * SECTOR;
        if off >= self.len {
            return;
        }
        let mut b = [0u8; SECTOR as usize];
        let n = src.read_at(&mut b, off).min((self.len - off) as usize);
        self.write_at(&b[..n], off);
    }

    fn copy_sector_from(&mut self, src: &Sparse, sector: u64) {
        let off = sector * SECTOR;
        if off >= src.len {
            return;
        }
        let mut b = [0u8; SECTOR as usize];
        let n = src.read_at(&mut b, off);
        self.write_at(&b[..n], off);
    }
}

#[derive(Debug, Default)]
struct Inode {
    volatile: Sparse,
    durable: Sparse,
    /// Sectors written since the last successful or failed sync.
    dirty: BTreeSet<u64>,
    /// The smallest volatile size since the last sync: a shrink followed by
    /// a regrow must leave zeros on disk too.
    min_len: u64,
    size_dirty: bool,
}

impl Inode {
    fn mark(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        for s in off / SECTOR..=(off + len - 1) / SECTOR {
            self.dirty.insert(s);
        }
    }

    fn sync(&mut self) {
        if self.size_dirty {
            self.durable.set_len(self.min_len);
            self.durable.set_len(self.volatile.len);
        }
        for s in std::mem::take(&mut self.dirty) {
            self.durable.copy_sector_from(&self.volatile, s);
        }
        self.durable.set_len(self.volatile.len);
        self.min_len = self.volatile.len;
        self.size_dirty = false;
    }

    fn set_len(&mut self, len: u64) {
        self.volatile.set_len(len);
        self.min_len = self.min_len.min(len);
        self.size_dirty = true;
    }
}

#[derive(Clone, Debug)]
enum DirOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

fn apply_dir_op(ns: &mut BTreeMap<PathBuf, u64>, op: &DirOp) {
    match op {
        DirOp::Link(p, ino) => {
            ns.insert(p.clone(), *ino);
        }
        DirOp::Unlink(p) => {
            ns.remove(p);
        }
        DirOp::Rename(from, to) => {
            if let Some(ino) = ns.remove(from) {
                ns.insert(to.clone(), ino);
            }
        }
    }
}

struct Rule {
    fault: Fault,
    seen: u64,
}

#[derive(Default)]
struct State {
    dirs: BTreeSet<PathBuf>,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    /// What the running process sees.
    names: BTreeMap<PathBuf, u64>,
    /// What survives a crash.
    durable_names: BTreeMap<PathBuf, u64>,
    /// Unsynced directory operations, in order, per folder.
    pending: BTreeMap<PathBuf, Vec<DirOp>>,
    /// Bumped by every crash: handles from before it are dead.
    epoch: u64,
    ops: u64,
    cut_at: Option<u64>,
    dead: bool,
    rules: Vec<Rule>,
    fired: u64,
    log: Vec<OpEvent>,
    /// Names handed out by `create_temp`.
    temp_seq: u64,
}

fn power_lost() -> io::Error {
    io::Error::other("simulated power loss: the machine is down")
}

fn parent_of(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl State {
    /// Count a mutating operation: cut the power if it is the chosen one,
    /// and find the fault rule (if any) that fires on it.
    fn begin(&mut self, kind: OpKind, path: &Path) -> io::Result<Option<FaultAction>> {
        if self.dead {
            return Err(power_lost());
        }
        self.ops += 1;
        let n = self.ops;
        if self.cut_at == Some(n) {
            self.dead = true;
            self.log.push(OpEvent {
                n,
                kind,
                path: path.to_path_buf(),
                failed: true,
            });
            return Err(power_lost());
        }
        let p = path.to_string_lossy();
        let mut action = None;
        for r in &mut self.rules {
            if r.fault.op != kind {
                continue;
            }
            if let Some(s) = &r.fault.path_contains {
                if !p.contains(s.as_str()) {
                    continue;
                }
            }
            r.seen += 1;
            if action.is_none()
                && (r.seen == r.fault.nth || (r.fault.sticky && r.seen > r.fault.nth))
            {
                action = Some(r.fault.action);
            }
        }
        if action.is_some() {
            self.fired += 1;
        }
        self.log.push(OpEvent {
            n,
            kind,
            path: path.to_path_buf(),
            failed: action.is_some(),
        });
        Ok(action)
    }

    fn check_alive(&self) -> io::Result<()> {
        if self.dead {
            Err(power_lost())
        } else {
            Ok(())
        }
    }

    fn new_inode(&mut self) -> u64 {
        self.next_ino += 1;
        self.inodes.insert(self.next_ino, Inode::default());
        self.next_ino
    }

    fn dir_op(&mut self, dir: PathBuf, op: DirOp) {
        apply_dir_op(&mut self.names, &op);
        self.pending.entry(dir).or_default().push(op);
    }

    fn inode_for(&self, path: &Path) -> io::Result<u64> {
        self.names
            .get(path)
            .copied()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// The simulated file system. Clones share the same state, so a test keeps
/// one handle while the follower owns another (`Arc::new(fs.clone())`).
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("SimFs")
            .field("files", &st.names.len())
            .field("ops", &st.ops)
            .field("dead", &st.dead)
            .finish()
    }
}

impl SimFs {
    pub fn new() -> SimFs {
        SimFs::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the state from the checks
        // that run after it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a fault rule.
    pub fn inject(&self, fault: Fault) {
        self.lock().rules.push(Rule { fault, seen: 0 });
    }

    pub fn clear_faults(&self) {
        self.lock().rules.clear();
    }

    /// How many injected faults have fired.
    pub fn faults_fired(&self) -> u64 {
        self.lock().fired
    }

    /// Cut the power at the `n`th (1-based) mutating operation from the
    /// start of this file system's life: that operation and every later
    /// one (reads included) fail, until [`SimFs::crash`].
    pub fn cut_power_at(&self, n: u64) {
        self.lock().cut_at = Some(n);
    }

    /// Mutating operations so far (the numbering `cut_power_at` uses).
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// The power was cut and the machine has not restarted yet.
    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// Every mutating operation so far, in order.
    pub fn op_log(&self) -> Vec<OpEvent> {
        self.lock().log.clone()
    }

    /// Power loss, then restart: volatile state becomes the durable image
    /// (per `mode`), handles opened before are dead, the power is back, and
    /// the power-cut trigger is cleared. Fault rules stay.
    pub fn crash(&self, mode: CrashMode) {
        let mut st = self.lock();
        let mut rng = SplitMix(match mode {
            CrashMode::Torn { seed } => seed,
            _ => 0,
        });
        let pending = std::mem::take(&mut st.pending);
        let mut names = st.durable_names.clone();
        for ops in pending.values() {
            let keep = match mode {
                CrashMode::LoseUnsynced => 0,
                CrashMode::KeepDirOps => ops.len(),
                CrashMode::Torn { .. } => (rng.next() % (ops.len() as u64 + 1)) as usize,
            };
            for op in &ops[..keep] {
                apply_dir_op(&mut names, op);
            }
        }
        let live: BTreeSet<u64> = names.values().copied().collect();
        st.inodes.retain(|ino, _| live.contains(ino));
        for ino in live.iter() {
            let node = st.inodes.get_mut(ino).expect("named inode exists");
            if let CrashMode::Torn { .. } = mode {
                // Some of the unsynced state reached the disk anyway.
                if node.size_dirty && rng.next() % 2 == 0 {
                    node.durable.set_len(node.min_len);
                    node.durable.set_len(node.volatile.len);
                }
                for &s in &node.dirty {
                    if rng.next() % 2 == 0 {
                        node.durable.copy_sector_within(&node.volatile, s);
                    }
                }
            }
            node.volatile = node.durable.clone();
            node.dirty.clear();
            node.min_len = node.volatile.len;
            node.size_dirty = false;
        }
        st.durable_names = names.clone();
        st.names = names;
        st.epoch += 1;
        st.dead = false;
        st.cut_at = None;
    }

    /// The durable content of `path` (what a crash would leave), if the
    /// durable image has that name.
    pub fn durable_read(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.lock();
        let ino = st.durable_names.get(path)?;
        Some(st.inodes[ino].durable.to_vec())
    }

    /// `len` durable bytes of `path` at `off`, if the durable image has that
    /// name and is long enough (reads only those bytes of a sparse file).
    pub fn durable_read_at(&self, path: &Path, off: u64, len: usize) -> Option<Vec<u8>> {
        let st = self.lock();
        let data = &st.inodes[st.durable_names.get(path)?].durable;
        if data.len < off + len as u64 {
            return None;
        }
        let mut b = vec![0u8; len];
        data.read_at(&mut b, off);
        Some(b)
    }

    /// Names of the files directly in `dir`, as the running process sees them.
    pub fn list(&self, dir: &Path) -> Vec<String> {
        list_names(&self.lock().names, dir)
    }

    /// Names of the files directly in `dir` in the durable image.
    pub fn durable_list(&self, dir: &Path) -> Vec<String> {
        list_names(&self.lock().durable_names, dir)
    }

    /// Test setup: make `path` hold `bytes`, durably, without counting an
    /// operation (e.g. to tear a page behind the follower's back).
    pub fn put_durable(&self, path: &Path, bytes: &[u8]) {
        let mut st = self.lock();
        let dir = parent_of(path);
        st.dirs.insert(dir);
        let ino = match st.names.get(path) {
            Some(&i) => i,
            None => st.new_inode(),
        };
        st.names.insert(path.to_path_buf(), ino);
        st.durable_names.insert(path.to_path_buf(), ino);
        let node = st.inodes.get_mut(&ino).expect("inode");
        let mut data = Sparse::default();
        data.write_at(bytes, 0);
        node.volatile = data.clone();
        node.durable = data;
        node.dirty.clear();
        node.min_len = bytes.len() as u64;
        node.size_dirty = false;
    }

    /// Test setup: overwrite `bytes` at `off` in `path`, durably.
    pub fn poke_durable(&self, path: &Path, off: u64, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        let ino = st.inode_for(path)?;
        let node = st.inodes.get_mut(&ino).expect("inode");
        node.volatile.write_at(bytes, off);
        node.durable.write_at(bytes, off);
        Ok(())
    }
}

fn list_names(ns: &BTreeMap<PathBuf, u64>, dir: &Path) -> Vec<String> {
    ns.keys()
        .filter(|p| p.parent() == Some(dir))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

struct SimFile {
    state: Arc<Mutex<State>>,
    ino: u64,
    epoch: u64,
    path: PathBuf,
}

impl SimFile {
    fn lock(&self) -> io::Result<MutexGuard<'_, State>> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.check_alive()?;
        if st.epoch != self.epoch {
            // The process that opened it did not survive the crash.
            return Err(io::Error::other(
                "stale handle from before a simulated crash",
            ));
        }
        Ok(st)
    }
}

impl FileIo for SimFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let st = self.lock()?;
        Ok(st.inodes[&self.ino].volatile.read_at(buf, off))
    }

    fn write_all_at(&mut self, buf: &[u8], off: u64) -> io::Result<()> {
        let mut st = self.lock()?;
        let action = st.begin(OpKind::Write, &self.path)?;
        let (n, err) = match action {
            None => (buf.len(), None),
            Some(FaultAction::Errno(e)) => (0, Some(e)),
            Some(FaultAction::ShortWrite { written, errno }) => {
                (written.min(buf.len()), Some(errno))
            }
        };
        let node = st.inodes.get_mut(&self.ino).expect("open inode");
        if n > 0 {
            let old_len = node.volatile.len;
            node.volatile.write_at(&buf[..n], off);
            if node.volatile.len != old_len {
                node.size_dirty = true;
            }
            node.mark(off, n as u64);
        }
        match err {
            Some(e) => Err(errno(e)),
            None => Ok(()),
        }
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut st = self.lock()?;
        if let Some(a) = st.begin(OpKind::SetLen, &self.path)? {
            return Err(errno(action_errno(a)));
        }
        st.inodes
            .get_mut(&self.ino)
            .expect("open inode")
            .set_len(len);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        let st = self.lock()?;
        Ok(st.inodes[&self.ino].volatile.len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut st = self.lock()?;
        let action = st.begin(OpKind::Sync, &self.path)?;
        let node = st.inodes.get_mut(&self.ino).expect("open inode");
        match action {
            None => {
                node.sync();
                Ok(())
            }
            Some(a) => {
                // Linux writeback-error semantics: the dirty pages are marked
                // clean but never reached the disk; the next fsync succeeds.
                node.dirty.clear();
                Err(errno(action_errno(a)))
            }
        }
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

fn action_errno(a: FaultAction) -> i32 {
    match a {
        FaultAction::Errno(e) | FaultAction::ShortWrite { errno: e, .. } => e,
    }
}

impl Fs for SimFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FileIo>> {
        let mut st = self.lock();
        st.check_alive()?;
        let dir = parent_of(path);
        if !st.dirs.contains(&dir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        if st.dirs.contains(path) {
            return Err(io::Error::other("is a folder"));
        }
        let existing = st.names.get(path).copied();
        let ino = match mode {
            OpenMode::Read | OpenMode::ReadWrite => {
                existing.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?
            }
            OpenMode::Create | OpenMode::CreateNew | OpenMode::CreateTruncate => {
                if mode == OpenMode::CreateNew && existing.is_some() {
                    return Err(io::Error::from(io::ErrorKind::AlreadyExists));
                }
                if let Some(a) = st.begin(OpKind::Create, path)? {
                    return Err(errno(action_errno(a)));
                }
                match existing {
                    Some(ino) => {
                        if mode == OpenMode::CreateTruncate {
                            st.inodes.get_mut(&ino).expect("inode").set_len(0);
                        }
                        ino
                    }
                    None => {
                        let ino = st.new_inode();
                        st.dir_op(dir, DirOp::Link(path.to_path_buf(), ino));
                        ino
                    }
                }
            }
        };
        Ok(Box::new(SimFile {
            state: self.state.clone(),
            ino,
            epoch: st.epoch,
            path: path.to_path_buf(),
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.lock();
        st.check_alive()?;
        let ino = st.inode_for(path)?;
        Ok(st.inodes[&ino].volatile.to_vec())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if let Some(a) = st.begin(OpKind::Rename, to)? {
            return Err(errno(action_errno(a)));
        }
        let dir = parent_of(from);
        if parent_of(to) != dir {
            // The follower only renames within a folder; a cross-folder
            // rename would need two folder syncs to model.
            return Err(errno(libc::EXDEV));
        }
        st.inode_for(from)?;
        st.dir_op(dir, DirOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if let Some(a) = st.begin(OpKind::Remove, path)? {
            return Err(errno(action_errno(a)));
        }
        st.inode_for(path)?;
        st.dir_op(parent_of(path), DirOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if let Some(a) = st.begin(OpKind::SyncDir, dir)? {
            return Err(errno(action_errno(a)));
        }
        if !st.dirs.contains(dir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        if let Some(ops) = st.pending.remove(dir) {
            for op in &ops {
                apply_dir_op(&mut st.durable_names, op);
            }
        }
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.check_alive()?;
        for a in dir.ancestors() {
            if !a.as_os_str().is_empty() {
                st.dirs.insert(a.to_path_buf());
            }
        }
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let st = self.lock();
        st.names.contains_key(path) || st.dirs.contains(path)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
        let st = self.lock();
        st.check_alive()?;
        if !st.dirs.contains(dir) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
            .collect())
    }

    fn create_temp(
        &self,
        dir: &Path,
        prefix: &std::ffi::OsStr,
        suffix: &str,
    ) -> io::Result<(PathBuf, Box<dyn FileIo>)> {
        // Deterministic names, so that a failing run can be replayed.
        let seq = {
            let mut st = self.lock();
            st.temp_seq += 1;
            st.temp_seq
        };
        let mut name = prefix.to_os_string();
        name.push(format!("sim{seq:09}"));
        name.push(suffix);
        let path = dir.join(name);
        let f = self.open(&path, OpenMode::CreateNew)?;
        Ok((path, f))
    }

    fn is_symlink(&self, _path: &Path) -> bool {
        // The model has no symbolic links.
        false
    }
}

/// splitmix64: a tiny deterministic generator for the torn crash mode.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

// ---- stream index and the durability check ---------------------------------

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

/// The records of a stream, read independently of [`crate::wal::WalReader`]
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
        let mut out = crate::wal::stream_header().to_vec();
        for r in self.records.iter().filter(|r| r.lsn > lsn) {
            out.extend_from_slice(&self.bytes[r.offset..r.end]);
        }
        out
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

// ---- fuzzing -----------------------------------------------------------------

/// The body of the `apply_stream` fuzz target, also run on stable by
/// `tests/hostile.rs` over the seed corpus and mutations of it.
///
/// Feeds `data` as one WAL stream to [`crate::apply::Follower::apply`] on a
/// fresh [`SimFs`] and checks: no panic; only stream errors (the file system
/// never fails here); meta.last_lsn is never above the highest CRC-valid LSN
/// of the stream, and equals it when the stream applied to its end; what the
/// follower reports as durable is what a power loss leaves; and
/// [`check_claims`] holds. Memory is bounded by the follower's caps: the
/// fuzzer runs it with `-malloc_limit_mb`.
pub fn fuzz_apply_stream(data: &[u8]) {
    thread_local! {
        static ROOT: PathBuf = {
            // A real folder, only for the DB lock; data stays in the SimFs.
            let mut p = std::env::temp_dir();
            let tid = format!("{:?}", std::thread::current().id())
                .chars()
                .filter(char::is_ascii_digit)
                .collect::<String>();
            p.push(format!("qdb-fuzz-{}-{tid}", std::process::id()));
            std::fs::create_dir_all(&p).expect("create fuzz root");
            p.join("db")
        };
    }
    ROOT.with(|root| fuzz_apply_stream_in(root, data));
}

/// [`fuzz_apply_stream`] with the (real, otherwise unused) folder that holds
/// the DB lock chosen by the caller.
pub fn fuzz_apply_stream_in(root: &Path, data: &[u8]) {
    use crate::apply::{ApplyOptions, Follower, Plain, SessionStats};
    use std::time::Duration;

    let fs = SimFs::new();
    fs.create_dir_all(root).expect("sim root");
    let opts = ApplyOptions {
        // Small caps and batches: growth stays cheap and commits are many.
        max_pages: 1 << 16,
        batch_bytes: 3 * 4096,
        batch_interval: Duration::from_secs(3600),
        // In a test binary, a child process forked by another test while we
        // held the lock keeps it until its exec: wait rather than fail.
        wait_lock: true,
        ..ApplyOptions::default()
    };
    let mut f = Follower::open(Arc::new(fs.clone()), root, opts).expect("open follower");
    let mut stats = SessionStats::default();
    let res = f.apply(Plain(data), &mut stats);
    let reported = f.meta().copied();
    drop(f);

    let mut idx = StreamIndex::new(data);
    let max_valid = idx.max_lsn();
    if let Err(e) = &res {
        // Claims are checked only against the records apply processed: the
        // failing one and those after it were never applied.
        let at = stream_error_offset(e).unwrap_or(0) as usize;
        idx.records.retain(|r| r.offset < at);
    }
    if let Err(e) = &res {
        assert!(e.is_stream_error(), "local error on a healthy fs: {e}");
    }
    if let Some(m) = reported {
        assert!(
            m.last_lsn <= max_valid,
            "last_lsn {} above the highest valid lsn {max_valid}",
            m.last_lsn
        );
        if res.is_ok() {
            assert_eq!(
                m.last_lsn, max_valid,
                "a clean session must reach its last lsn"
            );
        }
        assert_eq!(stats.last_lsn, m.last_lsn);
    }
    // Everything the follower reported must already be durable.
    fs.crash(CrashMode::LoseUnsynced);
    let durable = fs
        .durable_read(&root.join(META_FILE))
        .map(|b| Meta::parse(&b).expect("durable meta parses"));
    assert_eq!(durable, reported, "reported meta is not the durable meta");
    if let Err(e) = check_claims(&fs, root, &idx, None) {
        panic!("durability check failed: {e}");
    }
}

/// The body of the `parse_stream` fuzz target: [`crate::wal::WalReader`]
/// against the independent parser of [`StreamIndex`]. Both must find the
/// same CRC-valid records (offset, type, LSN, page id) in the same order; a
/// clean end or partial tail must come after the last of them, and a CRC
/// error exactly where the index stopped. The reader never reads past the
/// input and never allocates more than a page (or its 1 MiB cap) by an
/// untrusted length.
pub fn fuzz_parse_stream(data: &[u8]) {
    use crate::error::StreamError;
    use crate::wal::{Next, WalReader};

    let idx = StreamIndex::new(data);
    let Ok(mut rd) = WalReader::open(data) else {
        assert!(
            idx.records.is_empty(),
            "the reader refused a stream the index read"
        );
        return;
    };
    let mut got = Vec::new();
    let mut buf = Vec::new();
    // `Ok(None)`: a clean end or partial tail; `Ok(Some(offset))`: a page
    // image of an impossible len, which apply rejects before reading on.
    let outcome = loop {
        let (h, raw) = match rd.next_header() {
            Ok(Next::Record(h, raw)) => (h, raw),
            Ok(Next::End(_)) => break Ok(None),
            Err(e) => break Err(e),
        };
        let offset = rd.offset() as usize - WAL_RECORD_HEADER_LEN;
        let end = if h.is_page_image() {
            if !is_valid_page_size(h.len) {
                break Ok(Some(offset as u64));
            }
            rd.read_payload(&h, &raw, &mut buf)
        } else {
            rd.skip_payload(&h, &raw)
        };
        match end {
            Ok(None) => got.push((offset, h.rtype, h.lsn, h.page_id)),
            Ok(Some(_)) => break Ok(None),
            Err(e) => break Err(e),
        }
        assert!(rd.offset() as usize <= data.len());
    };
    let want: Vec<_> = idx
        .records
        .iter()
        .map(|r| (r.offset, r.rtype, r.lsn, r.page_id))
        .collect();
    assert!(
        want.starts_with(&got),
        "the reader and the index disagree: {got:?} vs {want:?}"
    );
    match outcome {
        Ok(None) => {
            assert_eq!(got, want);
            assert_eq!(idx.stopped_at_crc_error, None);
        }
        Err(StreamError::CrcMismatch { offset, .. }) => {
            assert_eq!(got, want);
            assert_eq!(idx.stopped_at_crc_error, Some(offset as usize));
        }
        // The caps end the comparison early; the index, which has none,
        // either reads that record on or stopped at it.
        Ok(Some(offset)) | Err(StreamError::RecordTooLong { offset, .. }) => {
            let offset = offset as usize;
            if let Some(next) = idx.records.get(got.len()) {
                assert_eq!(next.offset, offset);
            }
        }
        Err(e) => panic!("unexpected reader error on an in-memory stream: {e}"),
    }
}

/// The stream offset of the record a stream error is about (`None` for
/// errors about the stream header or the input itself).
pub fn stream_error_offset(e: &crate::Error) -> Option<u64> {
    use crate::error::StreamError as S;
    match e {
        crate::Error::Stream(
            S::CrcMismatch { offset, .. }
            | S::PageLenMismatch { offset, .. }
            | S::InvalidPageLen { offset, .. }
            | S::RecordTooLong { offset, .. }
            | S::PageIdTooLarge { offset, .. }
            | S::CorruptPage { offset, .. },
        ) => Some(*offset),
        _ => None,
    }
}

/// Output cap of [`fuzz_unzip`]: a few KiB of gzip or zstd can decode to
/// gigabytes, so the sink refuses more than this, as a closed pipe would.
pub const UNZIP_FUZZ_CAP: usize = 4 << 20;

/// A sink that holds at most `cap` bytes and fails (EPIPE) past that.
struct BoundedSink {
    out: Vec<u8>,
    cap: usize,
    refused: bool,
}

impl io::Write for BoundedSink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        assert!(!self.refused, "unzip wrote again after its output failed");
        if self.out.len() + b.len() > self.cap {
            self.refused = true;
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.out.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the stock decoders (flate2's and zstd's readers, the crates' own
/// code paths, not the raw engines `codec` drives) make of `data`, up to
/// one byte past `cap`, and whether they reached the end without an error.
fn stock_decode(data: &[u8], c: crate::codec::Compression, cap: usize) -> (Vec<u8>, bool) {
    use crate::codec::Compression;
    use std::io::Read;
    let r: Box<dyn Read> = match c {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(data)),
        Compression::Zstd => match zstd::stream::read::Decoder::new(data) {
            Ok(d) => Box::new(d),
            Err(_) => return (Vec::new(), false),
        },
        _ => return (data.to_vec(), true),
    };
    let mut r = r.take(cap as u64 + 1);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return (out, false),
        }
    }
}

/// The body of the `unzip` fuzz target, also replayed on stable by
/// `tests/unzip_fuzz.rs`: `data` through [`crate::codec::unzip`] in every
/// mode (auto, none, gzip, zstd) into a sink capped at [`UNZIP_FUZZ_CAP`].
///
/// Checks: no panic; reading a slice never fails; a write error is the
/// sink's own refusal, after which unzip stops writing and returns it
/// (output stays bounded however much the input would decode to); input
/// refused for its format writes nothing; what is written is a prefix of a
/// 1.x stream (it starts like `P1WAL001`); on success every input byte was
/// read and every output byte counted; uncompressed input is copied
/// through unchanged; `auto` agrees with the mode it detects; and the output
/// agrees with the stock decoders: equal for a complete stream, and for a
/// cut one at least as long as theirs (everything decodable is written).
pub fn fuzz_unzip(data: &[u8]) {
    use crate::codec::{unzip, CodecError, Compression};
    let mut auto = None;
    for mode in [
        Compression::Auto,
        Compression::None,
        Compression::Gzip,
        Compression::Zstd,
    ] {
        let mut sink = BoundedSink {
            out: Vec::new(),
            cap: UNZIP_FUZZ_CAP,
            refused: false,
        };
        let res = unzip(data, &mut sink, mode);
        let out = &sink.out;
        let n = out.len().min(WAL_MAGIC.len());
        assert_eq!(
            &out[..n],
            &WAL_MAGIC[..n],
            "{mode}: output is not a 1.x stream"
        );
        match &res {
            Ok(o) => {
                assert!(!sink.refused, "{mode}: the refused write was swallowed");
                assert_eq!(
                    o.bytes_in,
                    data.len() as u64,
                    "{mode}: input not read to its end"
                );
                assert_eq!(o.bytes_out, out.len() as u64, "{mode}: bytes_out");
                if mode != Compression::Auto {
                    assert_eq!(o.detected, mode);
                }
                match o.detected {
                    Compression::None => assert!(out[..] == data[..], "{mode}: copy-through"),
                    c if !data.is_empty() => {
                        let (stock, complete) = stock_decode(data, c, UNZIP_FUZZ_CAP);
                        if !o.truncated {
                            assert!(
                                complete,
                                "{mode}: the stock {c} decoder refuses a stream unzip accepted"
                            );
                            assert!(
                                stock == *out,
                                "{mode}: {c} output differs from the stock decoder's"
                            );
                        } else {
                            assert!(
                                out.starts_with(&stock),
                                "{mode}: a cut {c} stream: {} bytes written, the stock decoder got {}: not everything decodable was written, or the bytes differ",
                                out.len(),
                                stock.len()
                            );
                        }
                    }
                    _ => {}
                }
            }
            Err(CodecError::Write(_)) => {
                assert!(sink.refused, "{mode}: a write error the sink never raised")
            }
            Err(CodecError::Read(e)) => panic!("{mode}: reading a slice failed: {e}"),
            Err(
                CodecError::ModeMismatch { .. }
                | CodecError::NotRecognised { .. }
                | CodecError::Wal2 { .. }
                | CodecError::DecodedNotWal { .. },
            ) => assert!(out.is_empty(), "{mode}: wrote before refusing the input"),
            Err(_) => {}
        }
        let outcome = res.as_ref().map(|o| (o.detected, o.truncated)).ok();
        match mode {
            Compression::Auto => auto = Some((outcome, out.clone())),
            m => {
                // `auto` decodes exactly as the mode it detected.
                if let Some((Some((detected, truncated)), auto_out)) = &auto {
                    if *detected == m {
                        assert_eq!(outcome, Some((*detected, *truncated)), "auto vs {m}");
                        assert!(auto_out == out, "auto and {m} wrote different bytes");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        PathBuf::from("/sim/db")
    }

    fn setup() -> SimFs {
        let fs = SimFs::new();
        fs.create_dir_all(&root()).unwrap();
        fs
    }

    #[test]
    fn unsynced_data_is_lost_synced_data_survives() {
        let fs = setup();
        let p = root().join("f");
        let mut f = fs.open(&p, OpenMode::Create).unwrap();
        fs.sync_dir(&root()).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"J", 0).unwrap();
        assert_eq!(fs.read(&p).unwrap(), b"Jello");
        fs.crash(CrashMode::LoseUnsynced);
        assert_eq!(fs.read(&p).unwrap(), b"hello");
        assert!(
            f.write_all_at(b"x", 0).is_err(),
            "old handles die with the crash"
        );
    }

    #[test]
    fn creation_and_rename_need_a_folder_sync() {
        let fs = setup();
        let (a, b) = (root().join("a"), root().join("b"));
        let mut f = fs.open(&a, OpenMode::CreateTruncate).unwrap();
        f.write_all_at(b"1", 0).unwrap();
        f.sync_all().unwrap();
        fs.crash(CrashMode::LoseUnsynced);
        assert!(!fs.exists(&a), "a file whose folder was never synced");

        let mut f = fs.open(&a, OpenMode::CreateTruncate).unwrap();
        f.write_all_at(b"1", 0).unwrap();
        f.sync_all().unwrap();
        fs.sync_dir(&root()).unwrap();
        fs.rename(&a, &b).unwrap();
        assert!(fs.exists(&b) && !fs.exists(&a));
        let fs2 = fs.clone();
        fs.crash(CrashMode::LoseUnsynced);
        assert_eq!(fs2.list(&root()), vec!["a"]);
        fs.rename(&a, &b).unwrap();
        fs.crash(CrashMode::KeepDirOps);
        assert_eq!(fs.list(&root()), vec!["b"]);
        assert_eq!(fs.read(&b).unwrap(), b"1");
    }

    #[test]
    fn failed_fsync_drops_the_data_and_the_retry_lies() {
        let fs = setup();
        let p = root().join("f");
        let mut f = fs.open(&p, OpenMode::Create).unwrap();
        fs.sync_dir(&root()).unwrap();
        f.set_len(8).unwrap();
        f.sync_data().unwrap();
        fs.inject(Fault::new(OpKind::Sync, 1, FaultAction::Errno(libc::EIO)));
        f.write_all_at(b"new", 0).unwrap();
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(libc::EIO));
        f.sync_data().unwrap();
        assert_eq!(fs.read(&p).unwrap(), b"new\0\0\0\0\0", "the cache has it");
        assert_eq!(
            fs.durable_read(&p).unwrap(),
            vec![0u8; 8],
            "the disk does not"
        );
    }

    #[test]
    fn short_write_and_power_cut() {
        let fs = setup();
        let p = root().join("f");
        fs.inject(Fault::new(
            OpKind::Write,
            1,
            FaultAction::ShortWrite {
                written: 2,
                errno: libc::ENOSPC,
            },
        ));
        let mut f = fs.open(&p, OpenMode::Create).unwrap();
        let e = f.write_all_at(b"abcd", 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(fs.read(&p).unwrap(), b"ab");
        let n = fs.ops();
        fs.cut_power_at(n + 2);
        f.write_all_at(b"x", 0).unwrap();
        assert!(f.sync_data().is_err());
        assert!(fs.is_dead());
        assert!(fs.read(&p).is_err());
        fs.crash(CrashMode::KeepDirOps);
        assert_eq!(fs.read(&p).unwrap(), b"", "created, never synced");
        assert!(fs.op_log().last().unwrap().failed);
    }

    #[test]
    fn torn_crash_keeps_some_sectors_and_sparse_growth_is_cheap() {
        let fs = setup();
        let p = root().join("f");
        let mut f = fs.open(&p, OpenMode::Create).unwrap();
        fs.sync_dir(&root()).unwrap();
        f.set_len(1 << 40).unwrap();
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(&[2u8; 4096], 0).unwrap();
        fs.crash(CrashMode::Torn { seed: 7 });
        let mut b = vec![0u8; 4096];
        fs.open(&p, OpenMode::Read)
            .unwrap()
            .read_at(&mut b, 0)
            .unwrap();
        let twos = b.chunks(512).filter(|s| s.iter().all(|&x| x == 2)).count();
        let ones = b.chunks(512).filter(|s| s.iter().all(|&x| x == 1)).count();
        assert_eq!(twos + ones, 8);
        assert!(twos > 0 && ones > 0, "seed 7 tears the page");
    }

    #[test]
    fn stream_index_slices_like_since_lsn() {
        let mut s = crate::wal::stream_header().to_vec();
        for lsn in 1..=3u64 {
            let p = page::overflow_page(4096, lsn, NO_PAGE, lsn, b"x");
            crate::wal::encode_record(&mut s, WAL_TYPE_PAGE_IMAGE, lsn, lsn, &p);
        }
        crate::wal::encode_truncate(&mut s);
        let idx = StreamIndex::new(&s);
        assert_eq!(idx.records.len(), 4);
        assert_eq!(idx.max_lsn(), 3);
        let tail = StreamIndex::new(&idx.since(1));
        let lsns: Vec<u64> = tail.records.iter().map(|r| r.lsn).collect();
        assert_eq!(lsns, vec![2, 3]);
        assert_eq!(idx.last_lsn_within(16 + 2 * 4124 + 10), 2);
    }
}
