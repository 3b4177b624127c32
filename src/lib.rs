//! quiverdb-follower: apply QuiverDB 1.x WAL streams to a follower database.
//!
//! The library holds all logic; the binaries in `src/bin/` parse flags, call
//! into it and map errors to exit codes. Module map (each mirrors a part of
//! `spec/quiverdb-1x-formats.md`):
//!
//! * [`layout`]: every format constant and offset.
//! * [`wal`]: WAL v1 stream parsing and encoding.
//! * [`page`]: page views: v2 LSN, page CRC.
//! * [`meta`]: meta v3 parsing, encoding, atomic replacement; checkpoint files.
//! * [`store`]: segment files, page addressing, fsync, the storage seam, the DB lock.
//! * [`apply`]: LSN gating and the durability order.
//! * [`codec`]: streaming gzip/zstd decoding.
//! * [`net`]: TCP listen/connect with backoff.
//! * [`pipe`]: bounded in-process pipes between pipeline stages.
//! * [`config`], [`daemon`]: the quiverdb-follower daemon.
//! * [`ship`]: a test leader that sends streams the way wal-ship does.
//! * [`kv`]: KV_RH pages, overflow chains, key hashing (read side).
//! * [`dir`]: the bucket-head directory, and heads inferred from pages.
//! * [`inspect`]: `qdb-inspect`: check, dump, get, pages, rebuild-dir.
//! * [`leader`]: `qdb-ship`: the leader side (WAL tail, catch-up scan, server).
//! * [`complete`]: the follower's complete LSN.
//! * [`fault`]: a simulated file system (power loss, injected faults) for tests and fuzzing.

pub mod apply;
pub mod cli;
pub mod codec;
pub mod complete;
pub mod config;
pub mod daemon;
pub mod dir;
pub mod error;
pub mod fault;
pub mod inspect;
pub mod kv;
pub mod layout;
pub mod leader;
pub mod meta;
pub mod net;
pub mod page;
pub mod pipe;
pub mod ship;
pub mod store;
pub mod wal;

pub use error::{Error, Result, StreamError};
