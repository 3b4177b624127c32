//! `qdb-promote`: failover. Turns a stopped follower into a database that
//! QuiverDB 1.x opens as a leader and that `quiverdb check --strict` passes.
//!
//! A follower lacks three things a leader has, because WAL v1 never ships
//! them: the free list (1.x's `check --strict` counts every overflow page
//! that no chain reaches and that is not in the free list as an orphan), a
//! `dir` (when the follower was fed without `--buckets`), and a meta marked
//! clean. Promote adds them, in this order, each file replaced atomically:
//!
//! 1. `dir`, when missing (rebuilt from the pages with `--buckets N`);
//! 2. `free`: every page below `next_page_id` that no bucket chain and no
//!    overflow chain of a reachable value reaches — the set the leader's own
//!    free list holds, since 1.x frees exactly the pages it unlinks;
//! 3. `wal-000001.log`: a fresh 16-byte header (a follower's WAL file is
//!    never written, but a promoted DB must not replay anything stale);
//! 4. `meta` with `clean_shutdown = 1`;
//! 5. the follower-only file `complete-lsn` removed (unlink, then the
//!    folder fsynced): a leader has no complete LSN, every change it holds
//!    is by definition complete, and a stale one left behind would make
//!    `qdb-ckpt` report it and a later promote refuse.
//!
//! Every state in between is still a valid follower (apply reads none of
//! `free`, the WAL file or `clean_shutdown`), so a crash leaves either the
//! follower or, once step 4 is durable, the promoted database. The
//! complete LSN goes last because its absence means "complete up to
//! meta.last_lsn": removed any earlier, a crash would leave a follower with
//! known holes claiming to have none. Until step 5 is durable the file
//! still says what the follower held, so a rerun of the same command
//! (`--force` included, for a follower with holes) finishes the job.

use std::path::Path;
use std::sync::Arc;

use crate::error::{BackupError, Error, Result};
use crate::format::dir::{check_buckets, Directory};
use crate::format::kv::{parse_overflow, placeholder, KvPage};
use crate::format::layout::{FREE_FILE, FREE_HEADER_LEN, FREE_MAGIC, NO_PAGE, WAL_FILE};
use crate::replica::complete;
use crate::replica::heads::HeadTracker;
use crate::storage::dirfile;
use crate::storage::fs::Fs;
use crate::storage::lock::DbLock;
use crate::storage::meta::{self, replace_file};
use crate::storage::store::{FsyncPolicy, Store};
#[derive(Clone, Copy, Debug, Default)]
pub struct PromoteOptions {
    /// The leader's bucket count: rebuild `dir` from the pages when the
    /// follower has none (or an unreadable one).
    pub buckets: Option<u32>,
    /// Promote a follower whose complete LSN is below its meta.last_lsn.
    pub force: bool,
}

/// What promote did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PromoteReport {
    pub pages: u64,
    /// Pages some chain reaches.
    pub reachable: u64,
    /// Pages now in the free list.
    pub free: u64,
    /// `dir` was (re)built from the pages.
    pub dir_rebuilt: bool,
    pub last_lsn: u64,
}

impl std::fmt::Display for PromoteReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pages={} reachable={} free={} dir_rebuilt={} last_lsn={}",
            self.pages, self.reachable, self.free, self.dir_rebuilt, self.last_lsn
        )
    }
}

/// The free list file (spec §4.2) holding `ids`, as 1.x's pushes leave it:
/// magic, version 1, count, reserved 0, then the ids.
pub fn encode_free_list(ids: &[u64]) -> Vec<u8> {
    let mut b = Vec::with_capacity(FREE_HEADER_LEN + 8 * ids.len());
    b.extend_from_slice(FREE_MAGIC);
    b.extend_from_slice(&1u32.to_le_bytes());
    // The count is u32 and "best effort" in 1.x (readers use the length).
    b.extend_from_slice(&(ids.len().min(u32::MAX as usize) as u32).to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    for id in ids {
        b.extend_from_slice(&id.to_le_bytes());
    }
    b
}

/// A bit per page below next_page_id: memory is next_page_id / 8 bytes.
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: u64) -> Bits {
        Bits(vec![0; n.div_ceil(64) as usize])
    }
    /// Mark `id`; false if it was marked already.
    fn mark(&mut self, id: u64) -> bool {
        let (w, b) = ((id / 64) as usize, id % 64);
        let was = self.0[w] & (1 << b) != 0;
        self.0[w] |= 1 << b;
        !was
    }
    fn get(&self, id: u64) -> bool {
        self.0[(id / 64) as usize] & (1 << (id % 64)) != 0
    }
}

/// Promote the stopped follower at `root` in place.
pub fn promote(fs: Arc<dyn Fs>, root: &Path, opts: &PromoteOptions) -> Result<PromoteReport> {
    if let Some(b) = opts.buckets {
        check_buckets(b)?;
    }
    // Check first: the lock would create the folder of a mistyped --path.
    if meta::read_meta(&*fs, root)?.is_none() {
        return Err(Error::NoDatabase {
            path: root.to_path_buf(),
        });
    }
    // Never wait: an applier still running means the follower is not stopped.
    let _lock = DbLock::acquire(root, false)?;
    let m = meta::read_meta(&*fs, root)?.ok_or_else(|| Error::NoDatabase {
        path: root.to_path_buf(),
    })?;
    let complete = complete::complete_lsn(&*fs, root, &m)?;
    if complete < m.last_lsn && !opts.force {
        return Err(BackupError::Holes {
            path: root.to_path_buf(),
            complete,
            last_lsn: m.last_lsn,
        }
        .into());
    }
    let mut store = Store::open(fs.clone(), root, &m, FsyncPolicy::Batch);
    // Pages a crashed applier wrote without a commit may sit only in the
    // page cache: make them durable before the free list describes them.
    store.sync_existing()?;
    let dir_path = root.join(crate::format::layout::DIR_FILE);
    let (dir, rebuild) = match (dirfile::read_dir_bytes(&*fs, root)?, opts.buckets) {
        (Some(bytes), b) => match (Directory::parse(&bytes), b) {
            (Ok(d), Some(b)) if d.buckets() != b => {
                return Err(Error::DirBucketsMismatch {
                    path: dir_path,
                    dir: d.buckets(),
                    requested: b,
                })
            }
            (Ok(d), _) => (d, false),
            (Err(_), Some(b)) => (HeadTracker::scan(&mut store, b)?.directory().clone(), true),
            (Err(e), None) => {
                return Err(Error::BadDir {
                    path: dir_path,
                    reason: e.to_string(),
                })
            }
        },
        (None, Some(b)) => (HeadTracker::scan(&mut store, b)?.directory().clone(), true),
        (None, None) => {
            return Err(Error::NoDir {
                path: root.to_path_buf(),
            })
        }
    };
    let reach = reachable(&mut store, root, &dir)?;
    let free: Vec<u64> = (0..m.next_page_id).filter(|&id| !reach.get(id)).collect();
    let reachable_count = m.next_page_id - free.len() as u64;

    // 1. dir (the chains were walked through it; it must be there first).
    if rebuild {
        dirfile::write_dir(&*fs, root, &dir)?;
    }
    // 2. the free list.
    let free_bytes = encode_free_list(&free);
    if fs.read(&root.join(FREE_FILE)).ok().as_deref() != Some(&free_bytes[..]) {
        replace_file(&*fs, root, std::ffi::OsStr::new(FREE_FILE), &free_bytes)?;
    }
    // 3. a fresh WAL.
    let wal = crate::format::wal::stream_header();
    if fs.read(&root.join(WAL_FILE)).ok().as_deref() != Some(&wal[..]) {
        replace_file(&*fs, root, std::ffi::OsStr::new(WAL_FILE), &wal)?;
    }
    // 4. meta clean: the commit point of the promotion.
    let mut next = m;
    next.clean_shutdown = 1;
    next.next_page_id = m.next_page_id.max(store.next_page_id());
    if next != m {
        meta::write_meta(&*fs, root, &next)?;
    }
    // 5. no complete LSN: the last step, after everything above is durable.
    let complete_path = root.join(complete::COMPLETE_FILE);
    if fs.exists(&complete_path) {
        fs.remove_file(&complete_path)
            .map_err(|e| Error::io("cannot remove", &complete_path, e))?;
        fs.sync_dir(root)
            .map_err(|e| Error::io("cannot fsync folder", root, e))?;
    }
    Ok(PromoteReport {
        pages: m.next_page_id,
        reachable: reachable_count,
        free: free.len() as u64,
        dir_rebuilt: rebuild,
        last_lsn: next.last_lsn,
    })
}

/// Every page a bucket chain of `dir` reaches, and every overflow page of a
/// value on those chains. A chain that is broken (a page that cannot be read
/// or has the wrong type, a loop, an id past the end) is damage: promote
/// refuses rather than free pages it cannot prove unused.
fn reachable(store: &mut Store, root: &Path, dir: &Directory) -> Result<Bits> {
    let n = store.next_page_id();
    let mut bits = Bits::new(n);
    let mut buf = vec![0u8; store.page_size() as usize];
    let mut ovf = vec![0u8; store.page_size() as usize];
    let damaged = |reason: String| {
        Error::Damaged {
        path: root.to_path_buf(),
        reason: format!(
            "{reason}; promote will not build a free list from a damaged follower: heal it first with qdb-restore from a leader backup"
        ),
    }
    };
    for (b, &head) in dir.heads.iter().enumerate() {
        let mut id = head;
        while id != NO_PAGE {
            if id >= n {
                return Err(damaged(format!(
                    "the chain of bucket {b} reaches page {id}, past the end ({n} pages)"
                )));
            }
            if !bits.mark(id) {
                return Err(damaged(format!(
                    "the chain of bucket {b} reaches page {id} a second time"
                )));
            }
            if let Err(why) = store.read_page(id, &mut buf)? {
                return Err(damaged(format!(
                    "the chain of bucket {b} reaches page {id}, which cannot be read ({why:?})"
                )));
            }
            let kv = KvPage::parse(&buf).map_err(|e| {
                damaged(format!(
                    "the chain of bucket {b} reaches page {id}, which is not a KV page ({e})"
                ))
            })?;
            for e in kv.entries() {
                let e = e.map_err(|e| damaged(format!("page {id} has a bad record ({e})")))?;
                let Some(ph) = placeholder(e.value) else {
                    continue;
                };
                let mut o = ph.head;
                while o != NO_PAGE {
                    if o >= n {
                        return Err(damaged(format!(
                            "a value on page {id} has its overflow chain reach page {o}, past the end"
                        )));
                    }
                    if !bits.mark(o) {
                        return Err(damaged(format!(
                            "a value on page {id} has its overflow chain reach page {o}, which another chain reaches too"
                        )));
                    }
                    if let Err(why) = store.read_page(o, &mut ovf)? {
                        return Err(damaged(format!(
                            "a value on page {id} has its overflow chain reach page {o}, which cannot be read ({why:?})"
                        )));
                    }
                    o = parse_overflow(&ovf)
                        .map_err(|e| {
                            damaged(format!(
                                "a value on page {id} has its overflow chain reach page {o}, which is not an overflow page ({e})"
                            ))
                        })?
                        .next;
                }
            }
            id = kv.next();
        }
    }
    Ok(bits)
}
