//! quiverdb-follower: keep a follower copy of a QuiverDB 1.x database in
//! sync by applying its leader's WAL v1 stream.
//!
//! # The house
//!
//! Five layers, each a folder under `src/`, each depending only on the ones
//! above it in this list:
//!
//! | layer | folder | what it owns |
//! |---|---|---|
//! | format | `format/` | QuiverDB 1.x bytes: constants, WAL records, pages, KV pages, `dir` ([`format`](mod@format), public) |
//! | storage | `storage/` | the follower's files: the [`Fs`] seam, segments ([`Store`]), `meta`, the lock, atomic replacement |
//! | replication | `replica/` | gating and the durability order ([`Follower`]), the complete LSN, inferred bucket heads, backup restore ([`restore_dir`]) and failover ([`promote()`]) |
//! | transport | `transport/` | TCP, TLS and tokens, handshakes with a deadline, gzip/zstd decoding, bounded pipes between threads |
//! | read side | `inspect/` | `qdb-inspect`: check, dump, get, pages, rebuild-dir ([`inspect`]) |
//! | leader side | `leader/` | `qdb-ship`: WAL tail, catch-up scan of the segments, server mode ([`leader`]) |
//!
//! On top sit [`metrics`] (`metrics/`: the Prometheus registry the daemon
//! and the leader tool update with atomics, and its `/metrics` + `/healthz`
//! HTTP server), the daemon (`daemon/`: settings and the process that wires
//! transport to replication) and [`cli`] (clap definitions shared by the
//! thin binaries in `src/bin/` and the man pages). `docs/architecture.md`
//! draws the path of a record from the socket to `meta`.
//!
//! # Contract
//!
//! * A page is durable before any LSN that covers it is written anywhere
//!   (`meta`, the checkpoint file).
//! * From the same stream, segments and `meta` are byte-identical to what
//!   QuiverDB 1.2.5's `wal-apply` writes.
//! * Errors are typed ([`Error`], [`StreamError`]); every message is one
//!   line that says what to do.
//!
//! Test support (a simulated file system with power loss, a test leader)
//! lives outside the library, in the `testkit` crate.

// Linux only: segment writeback uses sync_file_range(2) and the durability
// argument relies on Linux's fsync semantics. Fail here, with a message,
// rather than with an obscure missing-symbol error further down.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "quiverdb-follower supports Linux only (it uses sync_file_range(2) and Linux fsync semantics); build it on Linux"
);

pub mod cli;
mod daemon;
mod error;
pub mod format;
pub mod inspect;
pub mod leader;
pub mod metrics;
mod replica;
mod storage;
mod transport;

pub use error::{BackupError, Error, Result, StreamError};

// Storage: the file-system seam (public so that tests can inject faults),
// segments, meta and the lock.
pub use storage::{
    check_checkpoint_path, init_db, read_meta, remove_stale_temps, replace_file, write_checkpoint,
    write_meta, DbLock, FileIo, Fs, FsyncPolicy, Meta, OpenMode, StdFs, Store,
};

// Replication: apply a stream to a follower.
pub use replica::{
    complete, ApplyOptions, Follower, Input, Plain, SessionStats, DEFAULT_MAX_PAGES,
};

// Healing and failover: restore a leader backup, promote a follower.
pub use replica::promote::{encode_free_list, promote, PromoteOptions, PromoteReport};
pub use replica::restore::{
    restore_dir, restore_tar, unpack_backup_tar, Manifest, RestoreOptions, RestoreReport,
};

// Transport: decoding and the pipes that feed the applier.
pub use transport::codec::{self, Compression};
pub use transport::net::{self, SessionOptions};
pub use transport::pipe;
pub use transport::{auth, handshake, link, tls};

// The daemon.
pub use daemon::{config, preflight as daemon_preflight, run as run_daemon, DaemonError};
