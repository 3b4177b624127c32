//! The follower's complete LSN: the highest L such that every change up to
//! L is applied. `meta.last_lsn` stays exactly what QuiverDB 1.x writes (the
//! highest LSN *seen*, which jumps over frames the leader never shipped);
//! this is the resume point that is always safe:
//! `qdb-ship --since-lsn $(qdb-ckpt --path F)` heals any gap.
//!
//! It advances on a record whose LSN is exactly complete + 1, and through
//! qdb-ship's catch-up markers (docs/protocol.md): inside a catch-up whose
//! `since` is at or below it, pages arrive in ascending LSN order, so each
//! page LSN x makes everything up to min(x, upto) complete; the end marker
//! completes `upto`. A gap (a record above complete + 1) leaves it where it is.
//!
//! Stored in `<root>/complete-lsn` (decimal ASCII and a newline), replaced
//! atomically like meta, after meta in the durability order: pages durable,
//! meta, this file, checkpoint. A follower without the file (one created
//! before this file existed, or by QuiverDB itself) is taken to be complete
//! up to its meta.last_lsn, which is what every tool assumed before; a new
//! follower starts at 0.

use std::io;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::marker::Marker;
use crate::storage::fs::Fs;
use crate::storage::meta::{self, Meta};

pub const COMPLETE_FILE: &str = "complete-lsn";

/// Read `<root>/complete-lsn`; `Ok(None)` when it does not exist.
pub fn read(fs: &dyn Fs, root: &Path) -> Result<Option<u64>> {
    let path = root.join(COMPLETE_FILE);
    let bytes = match fs.read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    let text = String::from_utf8_lossy(&bytes);
    text.trim().parse().map(Some).map_err(|_| {
        Error::io(
            "bad complete-LSN file (not a decimal number; delete it to fall back to meta.last_lsn)",
            path,
            io::Error::from(io::ErrorKind::InvalidData),
        )
    })
}

/// The complete LSN of a follower: its file, else meta.last_lsn (see the
/// module doc), else 0.
pub fn load(fs: &dyn Fs, root: &Path, meta: Option<&Meta>) -> Result<u64> {
    Ok(read(fs, root)?.unwrap_or_else(|| meta.map_or(0, |m| m.last_lsn)))
}

/// Replace `<root>/complete-lsn` atomically (tmp, fsync, rename, folder fsync).
pub fn write(fs: &dyn Fs, root: &Path, lsn: u64) -> Result<()> {
    let text = format!("{lsn}\n");
    meta::replace_file(
        fs,
        root,
        std::ffi::OsStr::new(COMPLETE_FILE),
        text.as_bytes(),
    )
}

/// Tracks the complete LSN as records arrive; [`Tracker::value`] may be
/// persisted once every page applied so far is durable.
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    complete: u64,
    durable: u64,
    /// Inside a catch-up that we may count: its `upto`.
    catchup: Option<u64>,
    /// The leader's last_lsn from the latest heartbeat.
    leader_lsn: Option<u64>,
}

impl Tracker {
    pub fn new(durable: u64) -> Tracker {
        Tracker {
            complete: durable,
            durable,
            ..Tracker::default()
        }
    }

    pub fn value(&self) -> u64 {
        self.complete
    }

    pub fn durable(&self) -> u64 {
        self.durable
    }

    pub fn changed(&self) -> bool {
        self.complete != self.durable
    }

    pub fn mark_durable(&mut self) {
        self.durable = self.complete;
    }

    pub fn leader_lsn(&self) -> Option<u64> {
        self.leader_lsn
    }

    /// Inside a catch-up, LSNs jump by design: no gap warnings.
    pub fn in_catchup(&self) -> bool {
        self.catchup.is_some()
    }

    /// A CRC-valid data record (PAGE_IMAGE; TRUNCATE carries 0) was received
    /// (applied, or skipped because the follower holds a newer image).
    pub fn record(&mut self, lsn: u64) {
        if let Some(upto) = self.catchup {
            // Ascending order: every page up to this one has been sent.
            self.complete = self.complete.max(lsn.min(upto));
        } else if lsn == self.complete.wrapping_add(1) {
            self.complete = lsn;
        }
    }

    pub fn marker(&mut self, m: Marker) {
        match m {
            Marker::Heartbeat { leader_lsn, .. } => self.leader_lsn = Some(leader_lsn),
            // A catch-up for a follower that held less than we do says
            // nothing about what we lack: it may start above our gap.
            Marker::Begin { since, upto } => {
                self.catchup = (since <= self.complete).then_some(upto);
            }
            Marker::End { since, upto } => {
                if since <= self.complete {
                    self.complete = self.complete.max(upto);
                }
                self.catchup = None;
            }
        }
    }

    /// The stream ended: a catch-up cut off does not continue in the next one.
    pub fn end_stream(&mut self) {
        self.catchup = None;
    }
}

/// The complete LSN as restore and promote read it: the file, else
/// `meta.last_lsn` (a follower from before the file existed).
pub(crate) fn complete_lsn(fs: &dyn Fs, root: &Path, meta: &Meta) -> Result<u64> {
    load(fs, root, Some(meta))
}

/// Record that every change up to `lsn` is applied. The caller has already
/// made the pages durable and covered them with `meta` (the durability
/// order).
pub(crate) fn advance_complete_lsn(fs: &dyn Fs, root: &Path, lsn: u64) -> Result<()> {
    write(fs, root, lsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_stops_it_and_a_catchup_heals_it() {
        let mut t = Tracker::new(10);
        t.record(11);
        t.record(12);
        assert_eq!(t.value(), 12);
        t.record(15); // 13 and 14 never came
        t.record(16);
        assert_eq!(t.value(), 12);
        // A catch-up for a follower at 14 does not cover 13.
        t.marker(Marker::Begin {
            since: 14,
            upto: 30,
        });
        t.record(20);
        t.marker(Marker::End {
            since: 14,
            upto: 30,
        });
        assert_eq!(t.value(), 12);
        // One since 12 does; inside it each page completes min(lsn, upto).
        t.marker(Marker::Begin {
            since: 12,
            upto: 30,
        });
        assert!(t.in_catchup());
        t.record(18);
        assert_eq!(t.value(), 18);
        t.record(33);
        assert_eq!(t.value(), 30);
        t.marker(Marker::End {
            since: 12,
            upto: 30,
        });
        assert_eq!(t.value(), 30);
        assert!(!t.in_catchup());
        t.record(31);
        assert_eq!(t.value(), 31);
        assert!(t.changed());
        t.mark_durable();
        assert_eq!(t.durable(), 31);
    }

    #[test]
    fn a_cut_catchup_ends_with_the_stream() {
        let mut t = Tracker::new(0);
        t.marker(Marker::Begin {
            since: 0,
            upto: 100,
        });
        t.record(40);
        t.end_stream();
        t.record(70);
        assert_eq!(t.value(), 40);
    }
}
