//! `qdb-ship`: flags.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::transport::codec::Compression;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShipCompress {
    /// Raw WAL v1 stream
    None,
    /// gzip, framed as wal-ship does (flate2 level 1, a sync flush per flush point)
    Gzip,
    /// zstd, framed as wal-ship does (level 0, an end-of-block flush per flush point)
    Zstd,
}

impl From<ShipCompress> for Compression {
    fn from(c: ShipCompress) -> Compression {
        match c {
            ShipCompress::None => Compression::None,
            ShipCompress::Gzip => Compression::Gzip,
            ShipCompress::Zstd => Compression::Zstd,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "qdb-ship",
    version,
    about = "Ship a QuiverDB 1.x leader's changes as a WAL v1 stream, never skipping a frame",
    long_about = "Run on the leader host. Reads the leader's files only (no lock: its writer keeps \
running) and sends a WAL v1 stream that QuiverDB's wal-apply, its 1.3-alpha follower and \
quiverdb-follower all apply. Options mean what they mean for `quiverdb wal-ship`. Unlike wal-ship, \
qdb-ship notices every truncation and rewrite of the WAL, and when frames may have been missed \
(a truncation it did not read, a --since-lsn older than the WAL, an unreadable WAL) it sends every \
page of the data segments above the follower's LSN, in ascending LSN order, then a marker saying \
the follower is complete. So `qdb-ship --since-lsn $(qdb-ckpt --path F)` always heals a follower, \
and `--since-lsn 0` seeds a new one (or makes a streaming backup). The stream format is in \
docs/protocol.md.",
    after_help = "EXAMPLES:\n  \
qdb-ship --path ./leader_db --follow --compress zstd --sink tcp://follower:9999 --since-lsn 42\n  \
qdb-ship --path ./leader_db --listen 0.0.0.0:9999 --follow\n  \
qdb-ship --path ./leader_db --since-lsn 0 --compress zstd > base.wal.zst\n  \
qdb-unzip < base.wal.zst | qdb-apply --path ./restored\n\n\
Exit status: 0 at the end of the stream (without --follow), on SIGTERM/SIGINT, or when the \
reader of stdout goes away; 1 when the leader cannot be read or the sink fails; 2 for bad usage."
)]
pub struct Args {
    /// The leader's database folder (read only, no lock)
    #[arg(long, value_name = "DIR")]
    pub path: PathBuf,

    /// Send only changes with LSN > N (exclusive, as wal-ship); 0 sends everything
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub since_lsn: u64,

    /// Keep following the leader's WAL (without it: one pass, then exit)
    #[arg(long)]
    pub follow: bool,

    /// tcp://HOST:PORT or file://PATH (default: stdout)
    #[arg(long, value_name = "URL", conflicts_with = "listen")]
    pub sink: Option<String>,

    /// Serve each follower that connects to ADDR (HOST:PORT) its own stream
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Compress the whole stream
    #[arg(long, value_enum, default_value = "none", value_name = "MODE")]
    pub compress: ShipCompress,

    /// Flush after this many frames
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub flush_every: u32,

    /// Also flush after this many bytes (0: off)
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub flush_bytes: u64,

    /// With --follow: send a heartbeat with the leader's last_lsn this often (0: never)
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub heartbeat_ms: u64,

    /// How often an idle tail looks at the WAL again
    #[arg(long, default_value_t = 2, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub poll_ms: u64,

    /// With --listen: at most this many followers at once
    #[arg(long, default_value_t = 16, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_clients: u64,

    /// With --listen: how long to wait for a client's resume request
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub resume_wait_ms: u64,
}
