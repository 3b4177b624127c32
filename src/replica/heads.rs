//! Keeping the bucket-head directory right on a follower.
//!
//! QuiverDB 1.x never logs bucket heads (§9.2), so a follower infers them
//! from its pages: a non-empty KV_RH page belongs to the bucket of its keys,
//! and a bucket's head is its page that no other page of the same bucket
//! points to. [`HeadTracker`] keeps that answer up to date page by page, so
//! the applier never rescans the database; `qdb-inspect rebuild-dir` builds
//! the same tracker from one scan.
//!
//! A bucket can be ambiguous (several candidate heads) between the LSNs of
//! one multi-page leader operation, e.g. after a tail page is written and
//! before the old tail is relinked to it, or while a stale non-empty image
//! of a freed page survives. The choice is deterministic: keep the current
//! head if it is still a candidate (readers keep seeing the chain they saw),
//! else the candidate that starts the longest in-bucket chain, then the
//! lowest page id. A bucket whose pages all lie on cycles gets no head.
//! Once the follower has caught up, a bucket has exactly one candidate, and
//! the heads equal the leader's.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::dir::{check_buckets, Directory};
use crate::format::kv::{bucket_of, KvPage, PageSource};
use crate::format::layout::*;
use crate::storage::dirfile::{read_dir_bytes, write_dir};
use crate::storage::fs::Fs;
use crate::storage::store::Store;

/// `bucket` of a page that is in no bucket (empty, not KV_RH, unreadable).
const NONE: u32 = u32::MAX;

/// What a page contributes to the heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fact {
    bucket: u32,
    next: u64,
}

const NOT_MEMBER: Fact = Fact {
    bucket: NONE,
    next: NO_PAGE,
};

const CHUNK_BITS: u32 = 16;
const CHUNK: usize = 1 << CHUNK_BITS;
/// Ids below this live in lazily allocated chunks; the rest (only reachable
/// with a huge --max-pages) in a map, so a stray id cannot make us allocate
/// for every page below it.
const DENSE_IDS: u64 = 1 << 32;

/// The facts of 64 Ki consecutive pages.
struct Chunk {
    bucket: Vec<u32>,
    next: Vec<u64>,
}

/// Per-page facts, 12 bytes a page, allocated a chunk at a time.
#[derive(Default)]
struct Facts {
    chunks: Vec<Option<Chunk>>,
    far: HashMap<u64, Fact>,
}

impl Facts {
    fn get(&self, id: u64) -> Fact {
        if id >= DENSE_IDS {
            return self.far.get(&id).copied().unwrap_or(NOT_MEMBER);
        }
        let (c, i) = ((id >> CHUNK_BITS) as usize, id as usize & (CHUNK - 1));
        match self.chunks.get(c) {
            Some(Some(ch)) => Fact {
                bucket: ch.bucket[i],
                next: ch.next[i],
            },
            _ => NOT_MEMBER,
        }
    }

    fn set(&mut self, id: u64, f: Fact) {
        if id >= DENSE_IDS {
            if f == NOT_MEMBER {
                self.far.remove(&id);
            } else {
                self.far.insert(id, f);
            }
            return;
        }
        let (c, i) = ((id >> CHUNK_BITS) as usize, id as usize & (CHUNK - 1));
        if self.chunks.len() <= c {
            self.chunks.resize_with(c + 1, || None);
        }
        let ch = self.chunks[c].get_or_insert_with(|| Chunk {
            bucket: vec![NONE; CHUNK],
            next: vec![NO_PAGE; CHUNK],
        });
        ch.bucket[i] = f.bucket;
        ch.next[i] = f.next;
    }
}

/// The pages whose `next` points at a page, whatever their bucket. A page
/// has one predecessor in a sane chain; stale images can add more.
#[derive(Clone, Debug)]
enum Preds {
    One(u64),
    Many(Vec<u64>),
}

/// Summary of the inferred heads, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeadStats {
    /// Non-empty KV_RH pages (members of some bucket).
    pub member_pages: u64,
    /// Buckets with at least one member page.
    pub buckets_used: u64,
    /// Buckets with more than one candidate head.
    pub ambiguous: u64,
    /// Buckets with members but no candidate (every page on a cycle).
    pub cyclic: u64,
}

/// Bucket heads inferred from page images, kept up to date one page write at
/// a time. Costs 12 bytes per page plus a little per chain link and per
/// bucket; `page_written` is O(1) plus finding and hashing the page's first
/// key.
pub struct HeadTracker {
    facts: Facts,
    preds: HashMap<u64, Preds>,
    /// Per bucket: member pages no other member of the bucket points to.
    cands: Vec<Vec<u64>>,
    /// Per bucket: number of member pages.
    members: Vec<u64>,
    /// The heads as last settled (and, once persisted, as in DIR/dir).
    dir: Directory,
    /// Buckets whose head may have changed since the last settle.
    dirty: Vec<u32>,
    is_dirty_bucket: Vec<bool>,
    /// The heads differ from DIR/dir (or it is missing or damaged).
    stale_file: bool,
}

impl HeadTracker {
    /// A tracker for a database with no pages.
    pub fn new(buckets: u32) -> Result<HeadTracker> {
        check_buckets(buckets)?;
        let n = buckets as usize;
        Ok(HeadTracker {
            facts: Facts::default(),
            preds: HashMap::new(),
            cands: vec![Vec::new(); n],
            members: vec![0; n],
            dir: Directory::empty(buckets),
            dirty: Vec::new(),
            is_dirty_bucket: vec![false; n],
            stale_file: true,
        })
    }

    /// Infer the heads from every readable page of `src` (unreadable pages
    /// belong to no bucket), with no previous heads to prefer.
    pub fn scan(src: &mut dyn PageSource, buckets: u32) -> Result<HeadTracker> {
        let mut t = HeadTracker::new(buckets)?;
        t.add_pages(src)?;
        t.settle();
        Ok(t)
    }

    fn add_pages(&mut self, src: &mut dyn PageSource) -> Result<()> {
        let mut buf = vec![0u8; src.page_size() as usize];
        for id in 0..src.page_count() {
            if src.read_page(id, &mut buf)?.is_ok() {
                self.page_written(id, &buf);
            }
        }
        Ok(())
    }

    /// Build from the pages on disk for an applier. An existing DIR/dir
    /// must have `buckets` buckets; its heads are the ones kept when a
    /// bucket is ambiguous. A damaged dir with the right bucket count is
    /// replaced at the next persist.
    pub fn load(fs: &dyn Fs, root: &Path, store: &mut Store, buckets: u32) -> Result<HeadTracker> {
        check_buckets(buckets)?;
        let path = root.join(DIR_FILE);
        let previous = match read_dir_bytes(fs, root)? {
            None => None,
            Some(bytes) => match Directory::parse(&bytes) {
                Ok(d) if d.buckets() == buckets => Some(d),
                Ok(d) => {
                    return Err(Error::DirBucketsMismatch {
                        path,
                        dir: d.buckets(),
                        requested: buckets,
                    })
                }
                Err(e) => match e.buckets() {
                    Some(b) if b != buckets => {
                        return Err(Error::DirBucketsMismatch {
                            path,
                            dir: b,
                            requested: buckets,
                        })
                    }
                    Some(_) => {
                        log::warn!("{} is damaged ({e}); it will be rebuilt from the pages at the next commit", path.display());
                        None
                    }
                    None => {
                        return Err(Error::BadDir {
                            path,
                            reason: e.to_string(),
                        })
                    }
                },
            },
        };
        let mut t = HeadTracker::new(buckets)?;
        t.add_pages(store)?;
        if let Some(d) = previous {
            t.dir = d;
            t.stale_file = false;
            // Buckets that had a head but no longer have pages must be settled too.
            for b in 0..buckets {
                if t.dir.heads[b as usize] != NO_PAGE {
                    t.mark(b);
                }
            }
        }
        t.settle();
        log::debug!(
            "head tracker: {} buckets, {} heads, dir {}",
            buckets,
            t.dir.heads.iter().filter(|&&h| h != NO_PAGE).count(),
            if t.stale_file {
                "to be written"
            } else {
                "up to date"
            }
        );
        Ok(t)
    }

    pub fn buckets(&self) -> u32 {
        self.dir.buckets()
    }

    /// The bucket and next pointer of a page image; `NOT_MEMBER` unless it
    /// is a KV_RH v2 page with keys.
    fn fact_of(&self, page: &[u8]) -> Fact {
        match KvPage::parse(page) {
            Ok(kv) => match kv.first_key() {
                Some(key) => Fact {
                    bucket: bucket_of(key, self.buckets()),
                    next: kv.next(),
                },
                None => NOT_MEMBER,
            },
            Err(_) => NOT_MEMBER,
        }
    }

    /// The image now at page `id` (already CRC-checked by the caller).
    pub fn page_written(&mut self, id: u64, page: &[u8]) {
        let new = self.fact_of(page);
        let old = self.facts.get(id);
        if new == old {
            // The common case: a page rewritten in place, same bucket and link.
            return;
        }
        if old.bucket != NONE {
            self.members[old.bucket as usize] -= 1;
            self.drop_cand(old.bucket, id);
            if old.next != NO_PAGE {
                self.remove_pred(old.next, id);
            }
        }
        self.facts.set(id, new);
        if new.bucket != NONE {
            self.members[new.bucket as usize] += 1;
            self.mark(new.bucket);
            if new.next != NO_PAGE {
                self.preds
                    .entry(new.next)
                    .and_modify(|p| match p {
                        Preds::One(q) => *p = Preds::Many(vec![*q, id]),
                        Preds::Many(v) => v.push(id),
                    })
                    .or_insert(Preds::One(id));
            }
        }
        self.refresh(id);
        if old.bucket != NONE && old.next != NO_PAGE {
            self.refresh(old.next);
        }
        if new.bucket != NONE && new.next != NO_PAGE {
            self.refresh(new.next);
        }
    }

    fn remove_pred(&mut self, target: u64, id: u64) {
        if let Some(p) = self.preds.get_mut(&target) {
            match p {
                Preds::One(q) if *q == id => {
                    self.preds.remove(&target);
                }
                Preds::One(_) => {}
                Preds::Many(v) => {
                    if let Some(i) = v.iter().position(|&q| q == id) {
                        v.swap_remove(i);
                    }
                    if v.len() == 1 {
                        *p = Preds::One(v[0]);
                    }
                }
            }
        }
    }

    fn mark(&mut self, b: u32) {
        if !self.is_dirty_bucket[b as usize] {
            self.is_dirty_bucket[b as usize] = true;
            self.dirty.push(b);
        }
    }

    fn drop_cand(&mut self, b: u32, id: u64) {
        let c = &mut self.cands[b as usize];
        if let Some(i) = c.iter().position(|&p| p == id) {
            c.swap_remove(i);
        }
        self.mark(b);
    }

    /// Is `id` a member that no other member of its bucket points to?
    fn is_cand(&self, id: u64, f: Fact) -> bool {
        let pointed = |q: u64| q != id && self.facts.get(q).bucket == f.bucket;
        f.bucket != NONE
            && match self.preds.get(&id) {
                None => true,
                Some(Preds::One(q)) => !pointed(*q),
                Some(Preds::Many(v)) => !v.iter().any(|&q| pointed(q)),
            }
    }

    /// Bring `id`'s place in its bucket's candidate list up to date.
    fn refresh(&mut self, id: u64) {
        let f = self.facts.get(id);
        if f.bucket == NONE {
            return;
        }
        let want = self.is_cand(id, f);
        let c = &mut self.cands[f.bucket as usize];
        let at = c.iter().position(|&p| p == id);
        match (want, at) {
            (true, None) => c.push(id),
            (false, Some(i)) => {
                c.swap_remove(i);
            }
            _ => return,
        }
        self.mark(f.bucket);
    }

    /// Length of the in-bucket chain from `start`, stopping at a cycle.
    fn chain_len(&self, b: u32, start: u64) -> u64 {
        let mut n = 0;
        let mut p = start;
        while p != NO_PAGE && n <= self.members[b as usize] {
            let f = self.facts.get(p);
            if f.bucket != b {
                break;
            }
            n += 1;
            p = f.next;
        }
        n
    }

    fn choose(&self, b: u32) -> u64 {
        let c = &self.cands[b as usize];
        let current = self.dir.heads[b as usize];
        match c.len() {
            0 => {
                if self.members[b as usize] > 0 {
                    log::debug!(
                        "bucket {b}: all {} pages lie on cycles; no head",
                        self.members[b as usize]
                    );
                }
                NO_PAGE
            }
            1 => c[0],
            _ if c.contains(&current) => {
                log::debug!("bucket {b}: candidate heads {c:?}; keeping {current}");
                current
            }
            _ => {
                let best = c
                    .iter()
                    .copied()
                    .max_by_key(|&p| (self.chain_len(b, p), std::cmp::Reverse(p)))
                    .unwrap_or(NO_PAGE);
                log::debug!("bucket {b}: candidate heads {c:?}; choosing {best} (longest chain, then lowest id)");
                best
            }
        }
    }

    /// Decide the heads of every bucket touched since the last settle.
    fn settle(&mut self) {
        for b in std::mem::take(&mut self.dirty) {
            self.is_dirty_bucket[b as usize] = false;
            let head = self.choose(b);
            if head != self.dir.heads[b as usize] {
                self.dir.heads[b as usize] = head;
                self.stale_file = true;
            }
        }
    }

    /// True when DIR/dir may need rewriting.
    pub fn is_dirty(&self) -> bool {
        self.stale_file || !self.dirty.is_empty()
    }

    /// The current heads.
    pub fn directory(&mut self) -> &Directory {
        self.settle();
        &self.dir
    }

    /// Write DIR/dir atomically if the heads changed. Call only when every
    /// page written so far is durable: dir must never point at a page a
    /// crash could lose.
    pub fn persist(&mut self, fs: &dyn Fs, root: &Path) -> Result<()> {
        self.settle();
        if self.stale_file {
            write_dir(fs, root, &self.dir)?;
            self.stale_file = false;
            log::debug!(
                "dir: wrote {} heads",
                self.dir.heads.iter().filter(|&&h| h != NO_PAGE).count()
            );
        }
        Ok(())
    }

    pub fn stats(&self) -> HeadStats {
        let mut s = HeadStats::default();
        for (b, &m) in self.members.iter().enumerate() {
            if m > 0 {
                s.member_pages += m;
                s.buckets_used += 1;
                match self.cands[b].len() {
                    0 => s.cyclic += 1,
                    1 => {}
                    _ => s.ambiguous += 1,
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::dir::MAX_BUCKETS;
    use crate::format::kv::encode_kv_page;

    #[test]
    fn worked_example_dir_crcs_match_spec_vectors() {
        // Spec §11.4/§11.6: one head = page 0 in the bucket of "alpha".
        for (buckets, bucket, crc) in [
            (64, 5, 0x50721a65_u32),
            (128, 69, 0xd5b81314),
            (1024, 453, 0x3b7f613a),
        ] {
            let page = encode_kv_page(4096, 0, NO_PAGE, 1, &[(b"alpha", b"1")]);
            let mut t = HeadTracker::new(buckets).unwrap();
            t.page_written(0, &page);
            let d = t.directory().clone();
            assert_eq!(d.heads[bucket], 0);
            assert_eq!(d.heads.iter().filter(|&&h| h != NO_PAGE).count(), 1);
            assert_eq!(d.crc(), crc);
        }
    }

    fn kv(id: u64, next: u64, keys: &[&str]) -> Vec<u8> {
        let e: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (k.as_bytes(), &b"v"[..])).collect();
        encode_kv_page(4096, id, next, 1, &e)
    }

    /// Keys of one bucket (of 4) for building chains.
    fn same_bucket_keys(n: usize) -> Vec<String> {
        let b = bucket_of(b"k0", 4);
        (0..)
            .map(|i| format!("k{i}"))
            .filter(|k| bucket_of(k.as_bytes(), 4) == b)
            .take(n)
            .collect()
    }

    #[test]
    fn chains_appends_cuts_and_reuse() {
        let k = same_bucket_keys(4);
        let b = bucket_of(k[0].as_bytes(), 4) as usize;
        let mut t = HeadTracker::new(4).unwrap();
        t.page_written(3, &kv(3, NO_PAGE, &[&k[0]]));
        assert_eq!(t.directory().heads[b], 3);
        // Tail append: the new page first (two candidates), then the relink.
        t.page_written(1, &kv(1, NO_PAGE, &[&k[1]]));
        assert_eq!(t.directory().heads[b], 3, "keeps the current head");
        assert_eq!(t.stats().ambiguous, 1);
        t.page_written(3, &kv(3, 1, &[&k[0]]));
        assert_eq!(t.directory().heads[b], 3);
        t.page_written(5, &kv(5, NO_PAGE, &[&k[2]]));
        t.page_written(1, &kv(1, 5, &[&k[1]]));
        assert_eq!(t.directory().heads[b], 3);
        assert_eq!(t.stats().ambiguous, 0);
        // Cut the middle page out: emptied, then its predecessor relinked.
        t.page_written(1, &kv(1, 5, &[]));
        t.page_written(3, &kv(3, 5, &[&k[0]]));
        assert_eq!(t.directory().heads[b], 3);
        // The head emptied: its successor becomes the head.
        t.page_written(3, &kv(3, 5, &[]));
        assert_eq!(t.directory().heads[b], 5);
        // Page 5 reused as an overflow page: the bucket is empty.
        t.page_written(
            5,
            &crate::format::page::overflow_page(4096, 5, NO_PAGE, 9, b"x"),
        );
        assert_eq!(t.directory().heads[b], NO_PAGE);
        assert_eq!(t.stats(), HeadStats::default());
        assert_eq!(t.facts.get(5), NOT_MEMBER);
    }

    #[test]
    fn page_moving_between_buckets() {
        let mut t = HeadTracker::new(4).unwrap();
        let (ka, kb) = (
            "k0",
            (1..)
                .map(|i| format!("k{i}"))
                .find(|k| bucket_of(k.as_bytes(), 4) != bucket_of(b"k0", 4))
                .unwrap(),
        );
        let (ba, bb) = (
            bucket_of(ka.as_bytes(), 4) as usize,
            bucket_of(kb.as_bytes(), 4) as usize,
        );
        t.page_written(0, &kv(0, NO_PAGE, &[ka]));
        t.page_written(0, &kv(0, NO_PAGE, &[&kb]));
        let d = t.directory();
        assert_eq!((d.heads[ba], d.heads[bb]), (NO_PAGE, 0));
    }

    #[test]
    fn stale_page_of_another_bucket_does_not_hide_a_head() {
        // Page 7 is a stale image in bucket A pointing at page 2, which was
        // reused for bucket B: page 2 is still bucket B's head.
        let mut t = HeadTracker::new(4).unwrap();
        let ka = "k0";
        let kb = (1..)
            .map(|i| format!("k{i}"))
            .find(|k| bucket_of(k.as_bytes(), 4) != bucket_of(b"k0", 4))
            .unwrap();
        let (ba, bb) = (
            bucket_of(ka.as_bytes(), 4) as usize,
            bucket_of(kb.as_bytes(), 4) as usize,
        );
        t.page_written(7, &kv(7, 2, &[ka]));
        t.page_written(2, &kv(2, NO_PAGE, &[&kb]));
        let d = t.directory();
        assert_eq!((d.heads[ba], d.heads[bb]), (7, 2));
    }

    #[test]
    fn ambiguity_without_a_current_head_prefers_the_longest_chain() {
        let k = same_bucket_keys(3);
        let b = bucket_of(k[0].as_bytes(), 4) as usize;
        let mut t = HeadTracker::new(4).unwrap();
        t.page_written(1, &kv(1, NO_PAGE, &[&k[0]]));
        t.page_written(8, &kv(8, 9, &[&k[1]]));
        t.page_written(9, &kv(9, NO_PAGE, &[&k[2]]));
        assert_eq!(t.directory().heads[b], 8);
        // A cycle: no head.
        let mut t = HeadTracker::new(4).unwrap();
        t.page_written(1, &kv(1, 2, &[&k[0]]));
        t.page_written(2, &kv(2, 1, &[&k[1]]));
        assert_eq!(t.directory().heads[b], NO_PAGE);
        assert_eq!(t.stats().cyclic, 1);
        // Breaking the cycle gives the head back.
        t.page_written(2, &kv(2, NO_PAGE, &[&k[1]]));
        assert_eq!(t.directory().heads[b], 1);
    }

    #[test]
    fn far_page_ids_do_not_allocate_everything_below() {
        let mut t = HeadTracker::new(4).unwrap();
        let id = (1u64 << 40) + 3;
        t.page_written(id, &kv(id, NO_PAGE, &["k0"]));
        let b = bucket_of(b"k0", 4) as usize;
        assert_eq!(t.directory().heads[b], id);
        assert!(t.facts.chunks.is_empty());
        t.page_written(id, &[0u8; 4096]);
        assert!(t.facts.far.is_empty());
    }

    #[test]
    fn bucket_count_limits() {
        assert!(matches!(HeadTracker::new(0), Err(Error::InvalidBuckets(0))));
        assert!(HeadTracker::new(MAX_BUCKETS + 1).is_err());
    }
}
