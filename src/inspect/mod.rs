//! `qdb-inspect`: look inside a follower (or any QuiverDB 1.x database)
//! without changing it, and rebuild its bucket-head directory.
//!
//! The read-only commands take no lock and read `meta` once, at the start:
//! meta and dir are only ever replaced atomically, so each is read whole,
//! and pages an applier adds later are simply not looked at. A page that an
//! applier rewrites while it is being read can still look damaged, so
//! `check` reads a page again before it reports a CRC mismatch.
//!
//! Reading follows QuiverDB 1.x (spec §9): `get` and `dump` walk each
//! bucket's chain from its head in `dir` and the last match along a chain
//! wins; without a `dir` (or with `--scan`) they use the page-scan oracle of
//! §9.2: every readable KV_RH page in ascending id order, later pages
//! winning.

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::dir::{self, Directory};
use crate::format::kv::{
    bucket_of, parse_overflow, placeholder, read_overflow_chain, unreadable_reason, KvError,
    KvPage, Placeholder,
};
use crate::format::layout::*;
use crate::format::page::Unreadable;
use crate::format::page::{check_page_crc, PageCrc};
use crate::replica::heads::{HeadStats, HeadTracker};
use crate::storage::dirfile;
use crate::storage::fs::Fs;
use crate::storage::lock::DbLock;
use crate::storage::meta::{self, Meta};
use crate::storage::store::Store;

/// A database opened for reading: its meta (read once) and its pages.
pub struct Db {
    fs: Arc<dyn Fs>,
    root: PathBuf,
    pub meta: Meta,
    pub pages: Store,
}

impl Db {
    pub fn open(fs: Arc<dyn Fs>, root: &Path) -> Result<Db> {
        let meta = meta::read_meta(&*fs, root)?.ok_or_else(|| Error::NoDatabase {
            path: root.to_path_buf(),
        })?;
        let pages = Store::open_read_only(fs.clone(), root, &meta);
        Ok(Db {
            fs,
            root: root.to_path_buf(),
            meta,
            pages,
        })
    }

    pub fn dir(&self) -> Result<Option<Directory>> {
        dirfile::read_dir(&*self.fs, &self.root)
    }

    /// The heads to read through: DIR/dir, else (with the leader's bucket
    /// count) heads inferred from the pages in memory, else none.
    pub fn heads(&mut self, buckets: Option<u32>) -> Result<(Option<Directory>, HeadsFrom)> {
        match (self.dir()?, buckets) {
            (Some(d), Some(b)) if d.buckets() != b => Err(Error::DirBucketsMismatch {
                path: self.root.join(DIR_FILE),
                dir: d.buckets(),
                requested: b,
            }),
            (Some(d), _) => Ok((Some(d), HeadsFrom::Dir)),
            (None, Some(b)) => {
                let mut t = HeadTracker::scan(&mut self.pages, b)?;
                Ok((Some(t.directory().clone()), HeadsFrom::Inferred))
            }
            (None, None) => Ok((None, HeadsFrom::Scan)),
        }
    }

    fn damaged(&self, reason: String) -> Error {
        Error::Damaged {
            path: self.root.clone(),
            reason,
        }
    }

    fn page_buf(&self) -> Vec<u8> {
        vec![0u8; self.meta.page_size as usize]
    }

    /// Resolve a value found in a record: inline, or through its overflow chain.
    fn resolve(&mut self, page: u64, value: &[u8]) -> Result<Vec<u8>> {
        match placeholder(value) {
            None => Ok(value.to_vec()),
            Some(ph) => {
                let mut out = Vec::new();
                match read_overflow_chain(&mut self.pages, ph, &mut out)? {
                    Ok(_) => Ok(out),
                    Err(e) => Err(self.damaged(format!("a value on page {page}: {e}"))),
                }
            }
        }
    }

    /// Walk the chain of `bucket` from `head` as `Db::get` does, calling
    /// `visit` on each page. A page that cannot be read or is not KV_RH, and
    /// a chain that loops, are damage.
    fn walk_chain(
        &mut self,
        bucket: u32,
        head: u64,
        buf: &mut Vec<u8>,
        mut visit: impl FnMut(&mut Db, u64, &KvPage<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut seen = HashSet::new();
        let mut id = head;
        while id != NO_PAGE {
            if !seen.insert(id) {
                return Err(self.damaged(format!(
                    "the chain of bucket {bucket} loops back to page {id}"
                )));
            }
            if let Err(why) = self.pages.read_page(id, buf)? {
                return Err(self.damaged(format!(
                    "the chain of bucket {bucket} reaches page {id}, which cannot be read ({})",
                    describe_unreadable(why, self.meta.next_page_id)
                )));
            }
            let page = std::mem::take(buf);
            let res = match KvPage::parse(&page) {
                Ok(kv) => visit(self, id, &kv).map(|()| kv.next()),
                Err(e) => Err(self.damaged(format!(
                    "the chain of bucket {bucket} reaches page {id}, which is {}",
                    describe_kv_error(&page, &e)
                ))),
            };
            *buf = page;
            id = res?;
        }
        Ok(())
    }

    /// `Db::get`: the value of `key`, tail wins along the bucket's chain.
    /// Every match is resolved, as 1.x does, so a broken overflow chain of
    /// an older match is damage too.
    pub fn get(&mut self, dir: &Directory, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let b = bucket_of(key, dir.buckets());
        let mut best = None;
        let mut buf = self.page_buf();
        self.walk_chain(b, dir.heads[b as usize], &mut buf, |db, id, kv| {
            match kv.lookup(key) {
                Ok(Some(e)) => best = Some(db.resolve(id, e.value)?),
                Ok(None) => {}
                Err(e) => return Err(db.damaged(format!("page {id}: {e}"))),
            }
            Ok(())
        })?;
        Ok(best)
    }

    /// The page-scan oracle (§9.2) for one key: the last readable KV_RH
    /// page, in id order, that holds it.
    pub fn get_by_scan(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut best: Option<(u64, Vec<u8>)> = None;
        self.scan_kv_pages(|id, kv| {
            if let Some(e) = kv.lookup(key)? {
                best = Some((id, e.value.to_vec()));
            }
            Ok(())
        })?;
        match best {
            Some((id, v)) => self.resolve(id, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Every readable KV_RH page with keys, in id order; unreadable pages
    /// are skipped, as QuiverDB's own follower checks do.
    fn scan_kv_pages(
        &mut self,
        mut visit: impl FnMut(u64, &KvPage<'_>) -> std::result::Result<(), KvError>,
    ) -> Result<()> {
        let mut buf = self.page_buf();
        for id in 0..self.meta.next_page_id {
            if self.pages.read_page(id, &mut buf)?.is_err() {
                continue;
            }
            match KvPage::parse(&buf) {
                Ok(kv) if !kv.is_empty() => {
                    if let Err(e) = visit(id, &kv) {
                        return Err(self.damaged(format!("page {id}: {e}")));
                    }
                }
                Ok(_) | Err(KvError::NotKv) => {}
                Err(e) => return Err(self.damaged(format!("page {id}: {e}"))),
            }
        }
        Ok(())
    }
}

fn describe_unreadable(why: Unreadable, next_page_id: u64) -> String {
    match why {
        Unreadable::NotAllocated => format!("not allocated: meta.next_page_id is {next_page_id}"),
        why => unreadable_reason(why).to_string(),
    }
}

/// What a page is, for messages about a page that should be KV_RH.
fn describe_kv_error(page: &[u8], e: &KvError) -> String {
    match e {
        KvError::NotKv => match PageKind::of(page) {
            PageKind::Overflow => "an OVERFLOW page, not a KV_RH page".to_string(),
            PageKind::Zero => "all zero (never written), not a KV_RH page".to_string(),
            _ => "not a KV_RH page".to_string(),
        },
        e => format!("a damaged KV_RH page ({e})"),
    }
}

/// The kinds of page `pages` and `check` tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    Kv,
    Overflow,
    /// All zero: allocated but never written (gap pages, uncommitted pages).
    Zero,
    /// Anything else: another magic, version or type.
    Other,
}

impl PageKind {
    pub fn of(page: &[u8]) -> PageKind {
        let typed = |t| {
            page.len() >= PAGE_HEADER_LEN
                && &page[..4] == PAGE_MAGIC
                && le_u16(page, PAGE_OFF_VERSION) == PAGE_VERSION_V2
                && le_u16(page, PAGE_OFF_TYPE) == t
        };
        if typed(PAGE_TYPE_KV_RH) {
            PageKind::Kv
        } else if typed(PAGE_TYPE_OVERFLOW) {
            PageKind::Overflow
        } else if page.iter().all(|&b| b == 0) {
            PageKind::Zero
        } else {
            PageKind::Other
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PageKind::Kv => "kv",
            PageKind::Overflow => "overflow",
            PageKind::Zero => "zero",
            PageKind::Other => "other",
        }
    }
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * b.len());
    for &x in b {
        s.push(DIGITS[usize::from(x >> 4)] as char);
        s.push(DIGITS[usize::from(x & 15)] as char);
    }
    s
}

/// Parse a hex string (either case); `None` if it is not hex.
pub fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn stdout_error(e: io::Error) -> Error {
    Error::io("cannot write to", "standard output", e)
}

/// Values longer than this are listed without `value_hex` (scan.jsonl's rule).
const DUMP_HEX_MAX: usize = 64;

/// One line of `leader/scan.jsonl`: `{"key_hex","len","sha256"}`, plus
/// `"value_hex"` when asked for.
fn json_line(out: &mut dyn Write, key: &[u8], value: &[u8], with_hex: bool) -> io::Result<()> {
    write!(
        out,
        "{{\"key_hex\":\"{}\",\"len\":{},\"sha256\":\"{}\"",
        hex(key),
        value.len(),
        hex(&sha256(value))
    )?;
    if with_hex {
        write!(out, ",\"value_hex\":\"{}\"", hex(value))?;
    }
    writeln!(out, "}}")
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ReadOptions {
    /// Use the page-scan oracle even when there is a dir.
    pub scan: bool,
    /// The leader's bucket count: without a dir, walk chains from heads
    /// inferred from the pages instead of using the page-scan oracle.
    pub buckets: Option<u32>,
}

/// Where `dump` and `get` found the chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadsFrom {
    /// DIR/dir.
    Dir,
    /// Heads inferred from the pages (as `rebuild-dir` would write them).
    Inferred,
    /// No chains: the page-scan oracle (§9.2).
    Scan,
}

/// Every live key, sorted by key bytes (= by key_hex), one JSON line each,
/// in the format of `quiverdb db-scan --json` as the fixtures store it.
/// Values are resolved only for the winning record of each key.
///
/// The oracle differs from QuiverDB's reader when a key has records on two
/// pages of one chain whose id order is not their chain order.
pub fn dump(
    db: &mut Db,
    opts: ReadOptions,
    values: bool,
    out: &mut dyn Write,
) -> Result<HeadsFrom> {
    let (dir, from) = if opts.scan {
        (None, HeadsFrom::Scan)
    } else {
        db.heads(opts.buckets)?
    };
    let mut keys: BTreeMap<Vec<u8>, (u64, Vec<u8>)> = BTreeMap::new();
    match &dir {
        Some(d) => {
            let mut buf = db.page_buf();
            for (b, &head) in d.heads.iter().enumerate() {
                db.walk_chain(b as u32, head, &mut buf, |db, id, kv| {
                    for e in kv.entries() {
                        let e = e.map_err(|e| db.damaged(format!("page {id}: {e}")))?;
                        keys.insert(e.key.to_vec(), (id, e.value.to_vec()));
                    }
                    Ok(())
                })?;
            }
        }
        None => {
            db.scan_kv_pages(|id, kv| {
                for e in kv.entries() {
                    let e = e?;
                    keys.insert(e.key.to_vec(), (id, e.value.to_vec()));
                }
                Ok(())
            })?;
        }
    }
    for (key, (id, value)) in &keys {
        let value = db.resolve(*id, value)?;
        json_line(out, key, &value, values || value.len() <= DUMP_HEX_MAX).map_err(stdout_error)?;
    }
    out.flush().map_err(stdout_error)?;
    Ok(from)
}

/// `get`: the value of one key through dir (or inferred heads, or the page
/// scan). Without a dir, the scan is used only when asked for: a key
/// lookup that silently bypasses the reader's path would hide a missing dir.
pub fn get(db: &mut Db, key: &[u8], opts: ReadOptions) -> Result<Option<Vec<u8>>> {
    if opts.scan {
        return db.get_by_scan(key);
    }
    match db.heads(opts.buckets)? {
        (Some(d), _) => db.get(&d, key),
        (None, _) => Err(Error::NoDir {
            path: db.root.clone(),
        }),
    }
}

/// Print `value` as `get --json` does: the dump line, always with value_hex.
pub fn print_json_value(out: &mut dyn Write, key: &[u8], value: &[u8]) -> Result<()> {
    json_line(out, key, value, true).map_err(stdout_error)
}

/// `pages`: one line per page, `id type lsn next used_slots`, tab-separated
/// after a header line, or JSON lines. `-` marks a field the page type does
/// not have, `none` a NO_PAGE link; `bad-crc` and `unreadable` pages show
/// what their header says, if anything.
pub fn pages(db: &mut Db, json: bool, out: &mut dyn Write) -> Result<()> {
    let mut buf = db.page_buf();
    if !json {
        writeln!(out, "id\ttype\tlsn\tnext\tused_slots").map_err(stdout_error)?;
    }
    for id in 0..db.meta.next_page_id {
        let ty = match db.pages.read_page(id, &mut buf)? {
            Ok(()) => PageKind::of(&buf).name(),
            Err(Unreadable::CrcMismatch) => "bad-crc",
            Err(_) => {
                buf.fill(0);
                "unreadable"
            }
        };
        let header = PageKind::of(&buf);
        let lsn =
            matches!(header, PageKind::Kv | PageKind::Overflow).then(|| le_u64(&buf, PAGE_OFF_LSN));
        let next = matches!(header, PageKind::Kv | PageKind::Overflow)
            .then(|| le_u64(&buf, PAGE_OFF_NEXT));
        let used = (header == PageKind::Kv).then(|| le_u16(&buf, PAGE_OFF_USED_SLOTS));
        let line = if json {
            let mut s = format!("{{\"id\":{id},\"type\":\"{ty}\"");
            if let Some(l) = lsn {
                s += &format!(",\"lsn\":{l}");
            }
            match next {
                Some(NO_PAGE) => s += ",\"next\":null",
                Some(n) => s += &format!(",\"next\":{n}"),
                None => {}
            }
            if let Some(u) = used {
                s += &format!(",\"used_slots\":{u}");
            }
            s + "}"
        } else {
            let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            let next = match next {
                Some(NO_PAGE) => "none".to_string(),
                n => opt(n),
            };
            format!(
                "{id}\t{ty}\t{}\t{next}\t{}",
                opt(lsn),
                opt(used.map(u64::from))
            )
        };
        writeln!(out, "{line}").map_err(stdout_error)?;
    }
    out.flush().map_err(stdout_error)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RebuildOptions {
    /// The leader's bucket count; default: the existing dir's.
    pub buckets: Option<u32>,
    /// Replace an existing dir with another bucket count, or one that cannot be read.
    pub force: bool,
    /// Wait for the lock instead of failing.
    pub wait_lock: bool,
}

/// What `rebuild-dir` wrote.
#[derive(Clone, Debug)]
pub struct Rebuilt {
    pub dir: Directory,
    pub stats: HeadStats,
    /// The previous dir, when there was a readable one.
    pub previous: Option<Directory>,
}

/// Infer every bucket head from the pages, from scratch, and replace
/// DIR/dir atomically. Takes the DB lock, like an applier.
pub fn rebuild_dir(fs: Arc<dyn Fs>, root: &Path, opts: RebuildOptions) -> Result<Rebuilt> {
    // Check first: the lock would create the folder of a mistyped --path.
    if meta::read_meta(&*fs, root)?.is_none() {
        return Err(Error::NoDatabase {
            path: root.to_path_buf(),
        });
    }
    let _lock = DbLock::acquire(root, opts.wait_lock)?;
    let mut db = Db::open(fs.clone(), root)?;
    let path = root.join(DIR_FILE);
    let mismatch = |dir: u32, requested: u32| Error::DirBucketsMismatch {
        path: path.clone(),
        dir,
        requested,
    };
    let (previous, existing_buckets) = match dirfile::read_dir_bytes(&*fs, root)? {
        None => (None, None),
        Some(bytes) => match Directory::parse(&bytes) {
            Ok(d) => {
                let b = d.buckets();
                (Some(d), Some(b))
            }
            Err(e) => match (e.buckets(), opts.force) {
                (Some(b), _) => (None, Some(b)),
                (None, true) => (None, None),
                (None, false) => {
                    return Err(Error::BadDir {
                        path,
                        reason: e.to_string(),
                    })
                }
            },
        },
    };
    let buckets = match (opts.buckets, existing_buckets) {
        (Some(req), Some(have)) if req != have && !opts.force => return Err(mismatch(have, req)),
        (Some(req), _) => req,
        (None, Some(have)) => have,
        (None, None) => {
            return Err(Error::NoDir {
                path: root.to_path_buf(),
            })
        }
    };
    let mut t = HeadTracker::scan(&mut db.pages, buckets)?;
    let dir = t.directory().clone();
    dirfile::write_dir(&*fs, root, &dir)?;
    Ok(Rebuilt {
        dir,
        stats: t.stats(),
        previous,
    })
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CheckOptions {
    /// The leader's bucket count, for a database without a dir.
    pub buckets: Option<u32>,
}

/// What `check` found. `damage` makes the exit status non-zero.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub summary: Vec<String>,
    pub damage: Vec<String>,
    pub warnings: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }

    /// At most this many lines of each kind are printed.
    const MAX_LINES: usize = 100;

    pub fn print(&self, out: &mut dyn Write) -> Result<()> {
        let mut w = || -> io::Result<()> {
            for s in &self.summary {
                writeln!(out, "{s}")?;
            }
            for (label, lines) in [("damage", &self.damage), ("warning", &self.warnings)] {
                for l in lines.iter().take(Self::MAX_LINES) {
                    writeln!(out, "{label}: {l}")?;
                }
                if lines.len() > Self::MAX_LINES {
                    writeln!(
                        out,
                        "{label}: ... and {} more",
                        lines.len() - Self::MAX_LINES
                    )?;
                }
            }
            if self.is_clean() {
                writeln!(out, "result: clean ({} warnings)", self.warnings.len())?;
            } else {
                writeln!(
                    out,
                    "result: damaged ({} problems, {} warnings)",
                    self.damage.len(),
                    self.warnings.len()
                )?;
            }
            out.flush()
        };
        w().map_err(stdout_error)
    }
}

/// What `check` remembers of each page between its passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// Could not be read (reported once, by the segment or page pass).
    Unreadable,
    Zero,
    Other,
    /// A KV_RH page: its bucket (if it has keys and the count is known),
    /// whether it has keys, and its link.
    Kv {
        keys: bool,
        bucket: Option<u32>,
        next: u64,
    },
    Overflow,
    /// A KV_RH or OVERFLOW page whose structure is damaged (reported).
    Broken,
}

/// `check`: every page's CRC and structure, the segments against meta, the
/// chains (through dir, or through heads inferred from the pages), and every
/// overflow chain a live key uses.
pub fn check(fs: Arc<dyn Fs>, root: &Path, opts: CheckOptions) -> Result<CheckReport> {
    let mut r = CheckReport::default();
    let mut db = match Db::open(fs.clone(), root) {
        Ok(db) => db,
        Err(Error::BadMeta { reason, .. }) => {
            r.damage.push(format!("meta: {reason}"));
            return Ok(r);
        }
        Err(e) => return Err(e),
    };
    let m = db.meta;
    r.summary.push(format!(
        "meta: page_size {}, next_page_id {}, last_lsn {}, clean_shutdown {}",
        m.page_size, m.next_page_id, m.last_lsn, m.clean_shutdown
    ));
    check_segments(&mut db, &mut r)?;

    // The bucket count: the dir's (even a damaged one's), else --buckets.
    let (dir, header_buckets) = match dirfile::read_dir_bytes(&*fs, root)? {
        None => (None, None),
        Some(bytes) => match Directory::parse(&bytes) {
            Ok(d) => {
                let b = d.buckets();
                (Some(d), Some(b))
            }
            Err(e) => {
                r.damage.push(format!("dir: {e}"));
                (None, e.buckets())
            }
        },
    };
    if let (Some(have), Some(want)) = (header_buckets, opts.buckets) {
        if have != want {
            r.damage.push(format!(
                "dir has {have} buckets, but --buckets says the leader has {want}"
            ));
        }
    }
    let buckets = header_buckets
        .or(opts.buckets)
        .filter(|&b| dir::check_buckets(b).is_ok());

    let (seen, mut tracker) = check_pages(&mut db, buckets, &mut r)?;

    // Chains: from dir's heads if it is usable, else from inferred heads.
    let live: Vec<u64> = match (&dir, tracker.as_mut()) {
        (_, None) => {
            r.summary.push(
                "chains: not checked: no dir and no --buckets, so buckets are unknown".to_string(),
            );
            let live: Vec<u64> = (0..m.next_page_id)
                .filter(|&id| matches!(seen[id as usize], Seen::Kv { keys: true, .. }))
                .collect();
            for &id in &live {
                if let Seen::Kv { next, .. } = seen[id as usize] {
                    if next != NO_PAGE && !matches!(seen.get(next as usize), Some(Seen::Kv { .. }))
                    {
                        r.warnings.push(format!(
                            "page {id} links to page {next}, which is not a KV_RH page"
                        ));
                    }
                }
            }
            live
        }
        (Some(d), Some(t)) => {
            let derived = t.directory().clone();
            let differ: Vec<usize> = (0..d.heads.len())
                .filter(|&b| d.heads[b] != derived.heads[b])
                .collect();
            if !differ.is_empty() {
                let ex: Vec<String> = differ
                    .iter()
                    .take(5)
                    .map(|&b| {
                        format!(
                            "bucket {b}: dir {} vs pages {}",
                            show_page(d.heads[b]),
                            show_page(derived.heads[b])
                        )
                    })
                    .collect();
                r.warnings.push(format!(
                    "dir differs from the heads the pages imply in {} buckets ({}): dir is stale or the pages are mid-update; `qdb-inspect rebuild-dir` rewrites it",
                    differ.len(),
                    ex.join(", ")
                ));
            }
            r.summary.push(format!(
                "dir: {} buckets, {} heads, CRC ok",
                d.buckets(),
                count_heads(d)
            ));
            check_chains(d, "dir", &seen, &mut r)
        }
        (None, Some(t)) => {
            let derived = t.directory().clone();
            r.summary.push(format!(
                "dir: {}; heads inferred from the pages for {} buckets",
                if header_buckets.is_some() {
                    "damaged"
                } else {
                    "none"
                },
                derived.buckets()
            ));
            check_chains(&derived, "inferred", &seen, &mut r)
        }
    };
    if let Some(t) = &tracker {
        let s = t.stats();
        if s.ambiguous > 0 {
            r.warnings.push(format!("{} buckets have several candidate heads (pages mid-update, or stale images of freed pages)", s.ambiguous));
        }
        if s.cyclic > 0 {
            r.damage.push(format!(
                "{} buckets have no head: their pages link in a cycle",
                s.cyclic
            ));
        }
    }
    check_overflow(&mut db, &live, &seen, &mut r)?;
    Ok(r)
}

fn show_page(id: u64) -> String {
    if id == NO_PAGE {
        "none".to_string()
    } else {
        id.to_string()
    }
}

fn count_heads(d: &Directory) -> usize {
    d.heads.iter().filter(|&&h| h != NO_PAGE).count()
}

/// Segments against meta.next_page_id: 1.x grows each segment only as far
/// as its highest allocated page, and earlier ones to the full 32 MiB.
fn check_segments(db: &mut Db, r: &mut CheckReport) -> Result<()> {
    let n = db.meta.next_page_id;
    let ps = u64::from(db.meta.page_size);
    let pps = pages_per_segment(db.meta.page_size);
    let last = if n == 0 { 0 } else { (n - 1) / pps + 1 };
    let mut files = 0;
    for seg in 1..=last.max(1) {
        let first = (seg - 1) * pps;
        let want = n.saturating_sub(first).min(pps) * ps;
        let name = segment_file_name(seg);
        match db.pages.segment_len(seg)? {
            None if want == 0 => r
                .warnings
                .push(format!("{name} is missing (QuiverDB's init creates it)")),
            None => r.damage.push(format!(
                "{name} is missing: pages {first}..{} cannot be read",
                first + want / ps - 1
            )),
            Some(len) => {
                files += 1;
                if len < want {
                    r.damage.push(format!(
                        "{name} is {len} bytes, but meta.next_page_id {n} needs {want}: pages {}..{} are cut off",
                        first + len / ps,
                        first + want / ps - 1
                    ));
                } else if len > want {
                    r.warnings.push(format!(
                        "{name} is {len} bytes, more than the {want} meta.next_page_id {n} needs: pages written after the last commit (normal while an applier runs, or after an interrupted apply; the next apply writes them again)"
                    ));
                }
            }
        }
    }
    let mut extra = last.max(1) + 1;
    while db.fs.exists(&db.root.join(segment_file_name(extra))) {
        r.warnings.push(format!(
            "{} exists beyond meta.next_page_id {n} (pages written after the last commit)",
            segment_file_name(extra)
        ));
        extra += 1;
    }
    r.summary.push(format!(
        "segments: {files} of {} expected present",
        last.max(1)
    ));
    Ok(())
}

/// Read every page: CRC, structure, and (with a bucket count) the heads
/// the pages imply.
fn check_pages(
    db: &mut Db,
    buckets: Option<u32>,
    r: &mut CheckReport,
) -> Result<(Vec<Seen>, Option<HeadTracker>)> {
    let n = db.meta.next_page_id;
    let mut tracker = buckets.map(HeadTracker::new).transpose()?;
    let mut seen = Vec::with_capacity(n as usize);
    let mut buf = db.page_buf();
    let mut counts = [0u64; 6];
    let mut max_lsn = 0;
    let mut id = 0;
    while id < n {
        // Holes of a sparse segment read as zero pages: count them without
        // reading gigabytes of zeros.
        let holes = db.pages.hole_pages_from(id)?;
        if holes > 0 {
            counts[3] += holes;
            seen.extend((0..holes).map(|_| Seen::Zero));
            id += holes;
            continue;
        }
        let mut res = db.pages.read_page(id, &mut buf)?;
        if res == Err(Unreadable::CrcMismatch) {
            // It may have been read while an applier rewrote it.
            res = db.pages.read_page(id, &mut buf)?;
        }
        let s = match res {
            Err(Unreadable::CrcMismatch) => {
                if let PageCrc::Mismatch { stored, computed } = check_page_crc(&buf) {
                    r.damage.push(format!(
                        "page {id}: CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
                    ));
                }
                Seen::Unreadable
            }
            Err(Unreadable::IoError) => {
                r.damage.push(format!("page {id}: read error"));
                Seen::Unreadable
            }
            // Missing or short segments were reported by the segment pass.
            Err(_) => Seen::Unreadable,
            Ok(()) => {
                if let Some(lsn) = crate::format::page::v2_page_lsn(&buf) {
                    max_lsn = max_lsn.max(lsn);
                }
                let s = check_page(id, &buf, buckets, r);
                if let Some(t) = tracker.as_mut() {
                    if matches!(s, Seen::Kv { .. }) {
                        t.page_written(id, &buf);
                    }
                }
                s
            }
        };
        counts[match s {
            Seen::Kv { keys: true, .. } => 0,
            Seen::Kv { keys: false, .. } => 1,
            Seen::Overflow => 2,
            Seen::Zero => 3,
            Seen::Other | Seen::Broken => 4,
            Seen::Unreadable => 5,
        }] += 1;
        seen.push(s);
        id += 1;
    }
    r.summary.push(format!(
        "pages: {n}: {} kv with keys, {} kv empty, {} overflow, {} zero, {} other or damaged, {} unreadable",
        counts[0], counts[1], counts[2], counts[3], counts[4], counts[5]
    ));
    if max_lsn > db.meta.last_lsn {
        r.warnings.push(format!(
            "pages carry LSNs up to {max_lsn}, beyond meta.last_lsn {}: an apply is running or was interrupted (resuming from meta.last_lsn applies them again)",
            db.meta.last_lsn
        ));
    }
    Ok((seen, tracker))
}

/// One readable page's structure.
fn check_page(id: u64, page: &[u8], buckets: Option<u32>, r: &mut CheckReport) -> Seen {
    let kind = PageKind::of(page);
    if matches!(kind, PageKind::Kv | PageKind::Overflow) {
        let own = le_u64(page, PAGE_OFF_PAGE_ID);
        if own != id {
            r.warnings
                .push(format!("page {id}: its header says page {own}"));
        }
    }
    match kind {
        PageKind::Zero => Seen::Zero,
        PageKind::Other => {
            r.warnings.push(format!(
                "page {id}: neither KV_RH nor OVERFLOW v2 (starts {})",
                crate::format::wal::describe_bytes(&page[..8])
            ));
            Seen::Other
        }
        PageKind::Overflow => match parse_overflow(page) {
            Ok(_) => Seen::Overflow,
            Err(e) => {
                r.damage.push(format!("page {id}: {e}"));
                Seen::Broken
            }
        },
        PageKind::Kv => match KvPage::parse(page) {
            Ok(kv) => match check_kv(&kv, buckets) {
                Ok(bucket) => Seen::Kv {
                    keys: !kv.is_empty(),
                    bucket,
                    next: kv.next(),
                },
                Err(e) => {
                    r.damage.push(format!("page {id}: {e}"));
                    Seen::Broken
                }
            },
            Err(e) => {
                r.damage.push(format!("page {id}: {e}"));
                Seen::Broken
            }
        },
    }
}

/// A KV_RH page's records: each in bounds, found by lookup at its own slot
/// (fingerprint and probe distance right, no duplicate keys), the slot
/// count right, all keys in one bucket. Returns that bucket.
fn check_kv(kv: &KvPage<'_>, buckets: Option<u32>) -> std::result::Result<Option<u32>, String> {
    let mut used = 0;
    let mut bucket = None;
    for e in kv.entries() {
        let e = e.map_err(|e| e.to_string())?;
        used += 1;
        match kv.lookup(e.key).map_err(|e| e.to_string())? {
            Some(found) if found.slot == e.slot => {}
            _ => {
                return Err(format!(
                    "key {} in slot {} cannot be found by lookup (bad fingerprint or probe distance, or a duplicate key)",
                    hex(e.key),
                    e.slot
                ))
            }
        }
        if let Some(n) = buckets {
            let b = bucket_of(e.key, n);
            match bucket {
                None => bucket = Some(b),
                Some(first) if first != b => {
                    return Err(format!(
                        "holds keys of buckets {first} and {b}: one page belongs to one bucket"
                    ))
                }
                _ => {}
            }
        }
    }
    if used != kv.used_slots() {
        return Err(format!(
            "used_slots is {}, but {used} slots are occupied",
            kv.used_slots()
        ));
    }
    Ok(bucket)
}

/// Walk every chain from `heads`; returns the pages reached (the live ones).
fn check_chains(heads: &Directory, label: &str, seen: &[Seen], r: &mut CheckReport) -> Vec<u64> {
    let n = seen.len() as u64;
    let mut owner: Vec<u32> = vec![u32::MAX; seen.len()];
    let mut live = Vec::new();
    let mut longest = 0;
    for (b, &head) in heads.heads.iter().enumerate() {
        let b = b as u32;
        let mut id = head;
        let mut len = 0;
        while id != NO_PAGE {
            let at = if len == 0 {
                format!("{label} head of bucket {b}")
            } else {
                format!("the chain of bucket {b}")
            };
            if id >= n {
                r.damage.push(format!(
                    "{at} links to page {id}, beyond meta.next_page_id {n}"
                ));
                break;
            }
            let next = match seen[id as usize] {
                Seen::Kv { bucket, next, keys } => {
                    if let Some(x) = bucket.filter(|&x| x != b) {
                        r.damage
                            .push(format!("page {id} on {at} holds keys of bucket {x}"));
                    }
                    if !keys {
                        r.warnings.push(format!(
                            "page {id} on {at} is empty (the leader unlinks empty pages)"
                        ));
                    }
                    next
                }
                other => {
                    r.damage.push(format!(
                        "{at} reaches page {id}, {}: QuiverDB's reader fails there",
                        match other {
                            Seen::Unreadable => "which cannot be read",
                            Seen::Zero => "which is all zero (never written), not a KV_RH page",
                            Seen::Overflow => "which is an OVERFLOW page, not a KV_RH page",
                            Seen::Broken => "whose structure is damaged",
                            _ => "which is not a KV_RH page",
                        }
                    ));
                    break;
                }
            };
            match owner[id as usize] {
                u32::MAX => owner[id as usize] = b,
                o if o == b => {
                    r.damage
                        .push(format!("the chain of bucket {b} loops back to page {id}"));
                    break;
                }
                o => {
                    r.damage
                        .push(format!("page {id} is on the chains of buckets {o} and {b}"));
                    break;
                }
            }
            live.push(id);
            len += 1;
            id = next;
        }
        longest = longest.max(len);
    }
    let unreached: Vec<u64> = (0..n)
        .filter(|&id| {
            owner[id as usize] == u32::MAX
                && matches!(seen[id as usize], Seen::Kv { keys: true, .. })
        })
        .collect();
    if !unreached.is_empty() {
        let ex: Vec<String> = unreached.iter().take(10).map(|p| p.to_string()).collect();
        r.warnings.push(format!(
            "{} pages hold keys but no chain reaches them (pages {}): stale images of pages the leader freed, or a stale dir; QuiverDB's reader does not see their keys",
            unreached.len(),
            ex.join(", ")
        ));
    }
    r.summary.push(format!(
        "chains: {} buckets, {} pages, longest {longest}",
        count_heads(heads),
        live.len()
    ));
    live
}

/// Every overflow chain a live key uses: readable OVERFLOW pages, length
/// equal to the placeholder's, no page shared by two values.
fn check_overflow(db: &mut Db, live: &[u64], seen: &[Seen], r: &mut CheckReport) -> Result<()> {
    let mut used = vec![false; seen.len()];
    let mut buf = db.page_buf();
    let mut chunk = Vec::new();
    let mut values = 0;
    for &id in live {
        if db.pages.read_page(id, &mut buf)?.is_err() {
            continue;
        }
        let Ok(kv) = KvPage::parse(&buf) else {
            continue;
        };
        let phs: Vec<(Vec<u8>, Placeholder)> = kv
            .entries()
            .filter_map(|e| e.ok())
            .filter_map(|e| placeholder(e.value).map(|ph| (e.key.to_vec(), ph)))
            .collect();
        for (key, ph) in phs {
            values += 1;
            match read_overflow_chain(&mut db.pages, ph, &mut chunk)? {
                Err(e) => r.damage.push(format!("page {id}, key {}: {e}", hex(&key))),
                Ok(pages) => {
                    for p in pages {
                        if std::mem::replace(&mut used[p as usize], true) {
                            r.damage.push(format!("overflow page {p} is used by two values (one is key {} on page {id})", hex(&key)));
                        }
                    }
                }
            }
        }
    }
    let in_use = used.iter().filter(|&&u| u).count();
    let stale = seen
        .iter()
        .enumerate()
        .filter(|&(i, s)| *s == Seen::Overflow && !used[i])
        .count();
    r.summary.push(format!(
        "overflow: {values} values in {in_use} pages; {stale} overflow pages unused (chains the leader freed keep their last image)"
    ));
    Ok(())
}

/// SHA-256 of a value, for the `sha256` field of scan.jsonl lines.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_vectors() {
        let cases: [(&[u8], &str); 4] = [
            (
                b"",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                b"abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            ),
            // scan.jsonl of c01: the value "1".
            (
                b"1",
                "6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b",
            ),
        ];
        for (data, want) in cases {
            assert_eq!(hex(&sha256(data)), want);
        }
        assert_eq!(
            hex(&sha256(&vec![b'a'; 1_000_000])),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
        // Padding edges.
        for (n, want) in [
            (
                55,
                "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318",
            ),
            (
                56,
                "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a",
            ),
            (
                63,
                "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34",
            ),
            (
                64,
                "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb",
            ),
        ] {
            assert_eq!(hex(&sha256(&vec![b'a'; n])), want, "{n} bytes");
        }
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(b"\x00\xffab"), "00ff6162");
        assert_eq!(parse_hex("00FF6162"), Some(b"\x00\xffab".to_vec()));
        assert_eq!(parse_hex("0"), None);
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex(""), Some(Vec::new()));
    }

    #[test]
    fn json_line_format() {
        let mut out = Vec::new();
        json_line(&mut out, b"alpha", b"1", true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"key_hex\":\"616c706861\",\"len\":1,\"sha256\":\"6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b\",\"value_hex\":\"31\"}\n"
        );
    }
}
