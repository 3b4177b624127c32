//! `qdb-ckpt`: flags.

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "qdb-ckpt",
    version,
    about = "Print a follower's last applied LSN (meta.last_lsn), or write it to a checkpoint file",
    long_about = "Print the follower's meta.last_lsn as a bare decimal number, the value to resume the \
leader's stream from with `quiverdb wal-ship --since-lsn`. It does not take the database lock, so it \
works while qdb-apply or quiverdb-follower is running: meta is always replaced atomically, and \
last_lsn only ever covers pages that are durable.",
    after_help = "EXAMPLES:\n  LSN=$(qdb-ckpt --path ./follower)\n  \
qdb-ckpt --path ./follower --write ./last_lsn\n  qdb-ckpt --path ./follower --json"
)]
pub struct Args {
    /// Follower database folder
    #[arg(long, value_name = "DIR")]
    pub path: PathBuf,

    /// Also write last_lsn (decimal, no newline, like the QuiverDB 1.x follower) to FILE, replaced atomically
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,

    /// Print page_size, next_page_id, last_lsn, complete_lsn and clean_shutdown as one JSON object
    #[arg(long)]
    pub json: bool,
}
