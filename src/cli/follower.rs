//! `quiverdb-follower`: flags. Every setting is optional here so that the
//! merge (CLI > config file > defaults) can tell what the command line set.

use std::path::PathBuf;

use clap::Parser;

use crate::codec::Compression;
use crate::config::CliValues;
use crate::store::FsyncPolicy;

#[derive(Debug, Parser)]
#[command(
    name = "quiverdb-follower",
    version,
    about = "Keep a follower copy of a QuiverDB 1.x database in sync with its leader's WAL stream",
    long_about = "Keep a follower copy of a QuiverDB 1.x database in sync by applying the WAL stream its \
leader ships with `quiverdb wal-ship --sink tcp://HOST:PORT [--compress gzip|zstd] --follow`.\n\n\
The daemon holds an exclusive lock on the follower database (flock on DIR/LOCK) for its whole \
lifetime. In server mode (--listen, the default, on 0.0.0.0:9999) it serves one leader connection \
at a time; in client mode (--connect) it connects to a relay that serves the stream, reconnecting \
with exponential backoff. Each connection is one stream with its own header and, with \
--decompress, its own decoder. Receiving, decompressing and applying run concurrently with bounded \
buffers; pages are fsynced in batches before meta.last_lsn covers them.\n\n\
With --checkpoint-file, the daemon writes meta.last_lsn (decimal, no newline) to that file, \
replaced atomically, after each session and every --checkpoint-interval-ms during one, so the \
leader can resume with `wal-ship --since-lsn $(cat FILE)`.\n\n\
Settings come from the command line, else from the --config TOML file (same names, with \
underscores: path, listen, connect, decompress, reconnect_ms, backoff_cap_ms, checkpoint_file, \
checkpoint_interval_ms, allow, fsync, max_pages, idle_timeout_secs, keepalive, buckets), else from \
the defaults.",
    after_help = "SIGNALS:\n  SIGTERM, SIGINT  stop taking data, make everything received durable, write the checkpoint, exit 0\n\n\
EXIT STATUS:\n  0  stopped by a signal\n  2  usage or configuration error\n  \
3  local error (disk, permissions, lock held by another process, port in use)\n\n\
EXAMPLES:\n  quiverdb-follower --path ./follower_db --listen 0.0.0.0:9999 --decompress gzip --checkpoint-file ./last_lsn\n  \
quiverdb-follower --config /etc/quiverdb/follower.toml\n  \
quiverdb-follower --path ./follower_db --connect relay.example:9999 --decompress zstd\n\n\
Logs go to stderr through env_logger; RUST_LOG overrides the default level (info)."
)]
pub struct Args {
    /// Follower database root (created on the first page image if missing); locked for the daemon's lifetime
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,

    /// Server mode: accept the leader's wal-ship connection on ADDR [default: 0.0.0.0:9999]
    #[arg(long, value_name = "ADDR", conflicts_with = "connect")]
    pub listen: Option<String>,

    /// Client mode: connect to a server (relay) that emits the WAL stream
    #[arg(long, value_name = "ADDR")]
    pub connect: Option<String>,

    /// Stream compression; must match the leader's wal-ship --compress (auto detects it) [default: none]
    #[arg(long, value_enum, value_name = "MODE")]
    pub decompress: Option<Compression>,

    /// Client mode: initial reconnect backoff in ms, doubled after each failure [default: 1000]
    #[arg(long, value_name = "MS")]
    pub reconnect_ms: Option<u64>,

    /// Client mode: backoff cap in ms [default: 15000]
    #[arg(long, value_name = "MS")]
    pub backoff_cap_ms: Option<u64>,

    /// Write the follower's last LSN (meta.last_lsn) to FILE after each session and periodically during one
    #[arg(long, value_name = "FILE")]
    pub checkpoint_file: Option<PathBuf>,

    /// How often to refresh the checkpoint file during a session, in ms [default: 1000]
    #[arg(long, value_name = "MS")]
    pub checkpoint_interval_ms: Option<u64>,

    /// TOML configuration file (CLI > config > defaults)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Server mode: accept leaders only from this network (repeatable; default: any)
    #[arg(long, value_name = "CIDR")]
    pub allow: Vec<String>,

    /// When segment data is fsynced: batch (group commit), always (every page), never (unsafe) [default: batch]
    #[arg(long, value_enum, value_name = "POLICY")]
    pub fsync: Option<FsyncPolicy>,

    /// Refuse page images for page ids at or beyond this [default: 268435456]
    #[arg(long, value_name = "PAGES")]
    pub max_pages: Option<u64>,

    /// End a session when the leader sends nothing for SECS seconds (0 = never) [default: 0]
    #[arg(long, value_name = "SECS")]
    pub idle_timeout_secs: Option<u64>,

    /// Maintain DIR/dir (the bucket-head directory) for a leader with N buckets, so QuiverDB's reader and qdb-inspect get work on the follower
    #[arg(long, value_name = "N")]
    pub buckets: Option<u32>,

    /// Do not enable TCP keepalive on leader connections
    #[arg(long)]
    pub no_keepalive: bool,

    /// With --connect to a `qdb-ship --listen` server: first send a resume request with the complete
    /// LSN, so the server resumes after it (docs/protocol.md). Off by default: a server that never
    /// reads it and closes the connection makes the kernel reset it, which can cut the stream's tail
    #[arg(long, requires = "connect")]
    pub resume_request: bool,

    /// Print the effective configuration as TOML and exit
    #[arg(long)]
    pub print_config: bool,
}

impl Args {
    pub fn cli_values(&self) -> CliValues {
        CliValues {
            path: self.path.clone(),
            listen: self.listen.clone(),
            connect: self.connect.clone(),
            decompress: self.decompress,
            reconnect_ms: self.reconnect_ms,
            backoff_cap_ms: self.backoff_cap_ms,
            checkpoint_file: self.checkpoint_file.clone(),
            checkpoint_interval_ms: self.checkpoint_interval_ms,
            allow: self.allow.clone(),
            fsync: self.fsync,
            max_pages: self.max_pages,
            idle_timeout_secs: self.idle_timeout_secs,
            no_keepalive: self.no_keepalive,
            buckets: self.buckets,
            resume_request: self.resume_request,
        }
    }
}
