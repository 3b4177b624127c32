//! `qdb-apply`: flags.

use std::path::PathBuf;

use clap::Parser;

use crate::replica::apply::{ApplyOptions, DEFAULT_MAX_PAGES};
use crate::storage::lock::LockHint;
use crate::storage::store::FsyncPolicy;

#[derive(Debug, Parser)]
#[command(
    name = "qdb-apply",
    version,
    about = "Apply a QuiverDB 1.x WAL stream from stdin to a follower database",
    long_about = "Apply a QuiverDB 1.x WAL stream (as written by `quiverdb wal-ship`) from stdin to the \
follower database at --path, with QuiverDB 1.x's idempotent LSN gating, so the follower's data files \
end byte-identical to what QuiverDB's own wal-apply produces.\n\n\
The database is locked (flock on DIR/LOCK) for the whole run. If it does not exist it is created \
exactly as `quiverdb init` would, with the page size of the first page image (or --page-size). \
Pages are made durable in batches (group commit: by size, by time, and whenever the input pauses), \
and meta.last_lsn only ever covers durable pages, so it is always a safe resume point for \
`wal-ship --since-lsn`.\n\n\
A stream that ends inside a record (a partial tail) is a normal end. A corrupt record stops the run \
with an error after everything before it has been made durable.",
    after_help = "EXIT STATUS:\n  0  the stream was applied to its end (a partial tail is a normal end)\n  \
1  the stream was bad (corrupt record, wrong page size, not a WAL stream...); the follower is intact\n  \
2  usage error\n  3  local error (disk, permissions, lock held by another process or lost, \
a signal while waiting for the lock with --wait-lock)\n\n\
EXAMPLES:\n  qdb-apply --path ./follower < stream.wal\n  \
qdb-recv --listen 0.0.0.0:9999 | qdb-unzip | qdb-apply --path ./follower\n  \
ssh leader quiverdb wal-ship --path /db --since-lsn \"$(qdb-ckpt --path ./follower)\" --follow | qdb-apply --path ./follower\n\n\
Logs go to stderr; set RUST_LOG=info for the summary line, RUST_LOG=debug for every commit."
)]
pub struct Args {
    /// Follower database folder (created if missing)
    #[arg(long, value_name = "DIR")]
    pub path: PathBuf,

    /// Page size for a new follower (default: taken from the first page image); an existing follower must have this size
    #[arg(long, value_name = "BYTES")]
    pub page_size: Option<u32>,

    /// When segment data is fsynced: batch (group commit, default), always (after every page, like QuiverDB 1.x), never (unsafe: tests only)
    #[arg(long, value_enum, default_value = "batch", value_name = "POLICY")]
    pub fsync: FsyncPolicy,

    /// Refuse page images for page ids at or beyond this (guards against a corrupt page_id growing the follower without bound)
    #[arg(long, default_value_t = DEFAULT_MAX_PAGES, value_name = "PAGES")]
    pub max_pages: u64,

    /// Wait for the database lock instead of failing when another process holds it
    #[arg(long)]
    pub wait_lock: bool,

    /// Fail instead of creating the database when it does not exist
    #[arg(long)]
    pub no_create: bool,

    /// Commit (fsync + meta.last_lsn) after this many MiB of applied pages
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub batch_mib: u64,

    /// Commit at least every this many milliseconds while data flows
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub batch_ms: u64,

    /// Keep DIR/dir (the bucket-head directory QuiverDB reads keys through) for N buckets, the leader's count, so QuiverDB can read the follower; without it dir is left alone, as QuiverDB 1.x does
    #[arg(long, value_name = "N")]
    pub buckets: Option<u32>,
}

impl Args {
    pub fn options(&self) -> ApplyOptions {
        ApplyOptions {
            fsync: self.fsync,
            max_pages: self.max_pages,
            page_size: self.page_size,
            create: !self.no_create,
            wait_lock: self.wait_lock,
            // qdb-apply has --wait-lock: the lock error may suggest it.
            lock_hint: LockHint::WaitLock,
            batch_bytes: self.batch_mib.max(1) << 20,
            batch_interval: std::time::Duration::from_millis(self.batch_ms),
            buckets: self.buckets,
            ..ApplyOptions::default()
        }
    }
}
