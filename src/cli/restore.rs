//! `qdb-restore`: flags.

use std::path::PathBuf;

use clap::{ArgGroup, Parser};

use crate::replica::apply::DEFAULT_MAX_PAGES;
use crate::replica::restore::RestoreOptions;
use crate::storage::store::FsyncPolicy;

#[derive(Debug, Parser)]
#[command(
    name = "qdb-restore",
    version,
    about = "Heal a follower from a backup made by the leader's `quiverdb backup`",
    long_about = "Apply a backup made on the leader by `quiverdb backup --path L --out B [--since-lsn N]` \
(pages.bin, dir.bin, manifest.json) to the follower database at --path: from the folder B (--from B), \
or from a tar of its contents on stdin (`-`), plain, gzip or zstd (detected). This is how a follower \
fed by QuiverDB 1.x `wal-ship`, which loses the frames of a WAL truncated between two polls, heals the \
gaps the stream cannot.\n\n\
The rules are qdb-apply's: the database is locked, created if missing, and must have the backup's page \
size. The whole backup is checked first (manifest, every frame's CRC and length, every page's CRC, \
dir.bin) and nothing is written unless all of it is good. Each page is then gated by its LSN exactly \
as a stream's page image is (a follower page with a higher LSN is kept). Pages are made durable before \
dir.bin is installed and before meta.last_lsn (and the complete LSN) are raised to the backup's \
snapshot_lsn.\n\n\
An incremental backup (`--since-lsn N`) must start at or below the follower's complete LSN; one that \
starts above it would leave a hole and is refused with the --since-lsn to use, unless --force. A tar \
on stdin is spooled to a temporary folder (in --spool-dir, default the follower's parent folder) \
before it is checked, because a stream cannot be read twice; memory stays bounded either way.",
    after_help = "EXIT STATUS:\n  0  the backup was restored\n  \
1  bad backup (missing or malformed manifest, truncated pages.bin, bad frame CRC, page size mismatch, \
tar without the backup files) or a refused incremental backup; the follower is unchanged\n  \
2  usage error\n  3  local error (disk, permissions, lock held by another process)\n\n\
EXAMPLES:\n  quiverdb backup --path /db --out /tmp/b && qdb-restore --path ./follower --from /tmp/b\n  \
ssh leader 'B=$(mktemp -d) && quiverdb backup --path /db --out $B --since-lsn N >&2 && tar -C $B -c . | zstd' \
| qdb-restore --path ./follower -\n\n\
Logs go to stderr; set RUST_LOG=info for the summary line.",
    group(ArgGroup::new("source").required(true).args(["from", "stdin"]))
)]
pub struct Args {
    /// Follower database folder (created if missing)
    #[arg(long, value_name = "DIR")]
    pub path: PathBuf,

    /// The backup folder written by `quiverdb backup --out`
    #[arg(long, value_name = "BACKUP_DIR")]
    pub from: Option<PathBuf>,

    /// `-`: read a tar of the backup folder's contents from stdin (plain, gzip or zstd)
    #[arg(value_name = "-", value_parser = ["-"])]
    pub stdin: Option<String>,

    /// Keep DIR/dir maintained for N buckets (the leader's count), as qdb-apply --buckets does; without it the backup's dir.bin is installed
    #[arg(long, value_name = "N")]
    pub buckets: Option<u32>,

    /// Restore an incremental backup even though it starts above the follower's complete LSN (the changes in between stay missing)
    #[arg(long)]
    pub force: bool,

    /// Where a tar read from stdin is spooled (default: the follower's parent folder)
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// When segment data is fsynced: batch (default), always, never (unsafe: tests only)
    #[arg(long, value_enum, default_value = "batch", value_name = "POLICY")]
    pub fsync: FsyncPolicy,

    /// Refuse frames for page ids at or beyond this
    #[arg(long, default_value_t = DEFAULT_MAX_PAGES, value_name = "PAGES")]
    pub max_pages: u64,

    /// Wait for the database lock instead of failing when another process holds it
    #[arg(long)]
    pub wait_lock: bool,
}

impl Args {
    pub fn options(&self) -> RestoreOptions {
        RestoreOptions {
            buckets: self.buckets,
            force: self.force,
            wait_lock: self.wait_lock,
            fsync: self.fsync,
            max_pages: self.max_pages,
            ..RestoreOptions::default()
        }
    }

    /// The folder a tar on stdin is spooled in.
    pub fn spool_dir(&self) -> PathBuf {
        if let Some(d) = &self.spool_dir {
            return d.clone();
        }
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}
