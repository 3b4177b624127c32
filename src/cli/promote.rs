//! `qdb-promote`: flags.

use std::path::PathBuf;

use clap::Parser;

use crate::replica::promote::PromoteOptions;

#[derive(Debug, Parser)]
#[command(
    name = "qdb-promote",
    version,
    about = "Failover: turn a stopped follower into a database QuiverDB opens as a leader",
    long_about = "Make the stopped follower at --path a QuiverDB 1.x database that `quiverdb check \
--strict` passes and that QuiverDB opens as a leader. A follower lacks what WAL v1 never ships: the \
free list (1.x's check counts overflow pages that no chain reaches and that are not free as orphans), \
and, when it was fed without --buckets, the bucket-head directory dir.\n\n\
Promote walks every bucket chain of dir and every overflow chain of the values on them, then writes, \
each file replaced atomically and in this order: dir (rebuilt from the pages with --buckets N when \
missing), the free list (every page no chain reaches: the set the leader's own free list holds), a \
fresh WAL header, and meta marked clean; last, it removes the follower-only file complete-lsn (a \
leader has no complete LSN). Every state in between is still a valid follower, so a crash leaves \
either the follower or the promoted database; running the same command again finishes it.\n\n\
It refuses while an applier (qdb-apply, quiverdb-follower, qdb-restore) holds the lock, a follower \
whose chains are damaged, and a follower whose complete LSN is below its meta.last_lsn (it has known \
holes: heal it with qdb-restore from `quiverdb backup --since-lsn <complete LSN>`, which the \
message names) unless --force.",
    after_help = "EXIT STATUS:\n  0  promoted\n  \
1  refused: the follower has known holes (see --force); nothing was changed\n  \
2  usage error\n  \
3  local error or a follower that cannot be promoted (lock held by an applier, no database, no dir \
and no --buckets, damaged chains, disk)\n\n\
EXAMPLES:\n  systemctl stop quiverdb-follower && qdb-promote --path /var/lib/follower && quiverdb check --strict --path /var/lib/follower\n  \
qdb-promote --path ./follower --buckets 1024"
)]
pub struct Args {
    /// Follower database folder
    #[arg(long, value_name = "DIR")]
    pub path: PathBuf,

    /// The leader's bucket count: rebuild dir from the pages when the follower has none
    #[arg(long, value_name = "N")]
    pub buckets: Option<u32>,

    /// Promote even though the follower's complete LSN is below its meta.last_lsn (changes in between are missing)
    #[arg(long)]
    pub force: bool,
}

impl Args {
    pub fn options(&self) -> PromoteOptions {
        PromoteOptions {
            buckets: self.buckets,
            force: self.force,
        }
    }
}
