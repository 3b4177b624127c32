//! `qdb-ckpt`: flags.

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "qdb-ckpt",
    version,
    about = "Print a follower's resume point (its complete LSN), or write it to a checkpoint file",
    long_about = "Print the follower's complete LSN as a bare decimal number: the highest L such that \
every change up to L is applied, the value to resume the leader's stream from with \
`qdb-ship --since-lsn` (or `quiverdb wal-ship --since-lsn`). It equals meta.last_lsn unless the \
stream had a gap (frames the leader never shipped), where meta.last_lsn runs ahead; \
`qdb-ship --since-lsn $(qdb-ckpt --path F)` heals such a gap. A follower without a complete-lsn file \
(created before it existed) counts as complete up to meta.last_lsn. It does not take the database \
lock, so it works while qdb-apply or quiverdb-follower is running: both files are replaced \
atomically, and only ever cover pages that are durable.",
    after_help = "EXAMPLES:\n  LSN=$(qdb-ckpt --path ./follower)\n  \
qdb-ckpt --path ./follower --write ./last_lsn\n  qdb-ckpt --path ./follower --json"
)]
pub struct Args {
    /// Follower database folder
    #[arg(long, value_name = "DIR")]
    pub path: PathBuf,

    /// Also write the complete LSN (decimal, no newline, like the QuiverDB 1.x follower) to FILE, replaced atomically
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,

    /// Print page_size, next_page_id, last_lsn, complete_lsn and clean_shutdown as one JSON object
    #[arg(long)]
    pub json: bool,
}
