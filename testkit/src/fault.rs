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
//! The DB lock ([`quiverdb_follower::DbLock`]) is a real `flock` and does not go
//! through the seam, so tests give the follower a real (empty) folder as root.
//!
//! The checks the robustness tests and the fuzz targets share live beside
//! it: [`crate::stream::StreamIndex`], [`crate::stream::check_claims`] and
//! [`crate::fuzz::fuzz_apply_stream`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use quiverdb_follower::{FileIo, Fs, OpenMode};

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
        let mut rng = crate::rng::Rng::new(match mode {
            CrashMode::Torn { seed } => seed,
            _ => 0,
        });
        let pending = std::mem::take(&mut st.pending);
        let mut names = st.durable_names.clone();
        for ops in pending.values() {
            let keep = match mode {
                CrashMode::LoseUnsynced => 0,
                CrashMode::KeepDirOps => ops.len(),
                CrashMode::Torn { .. } => (rng.next_u64() % (ops.len() as u64 + 1)) as usize,
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
                if node.size_dirty && rng.next_u64() % 2 == 0 {
                    node.durable.set_len(node.min_len);
                    node.durable.set_len(node.volatile.len);
                }
                for &s in &node.dirty {
                    if rng.next_u64() % 2 == 0 {
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
}
