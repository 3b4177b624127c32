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
//! * [`fault`]: a simulated file system (power loss, injected faults) for tests and fuzzing.

pub mod apply;
pub mod cli;
pub mod codec;
pub mod error;
pub mod fault;
pub mod layout;
pub mod meta;
pub mod net;
pub mod page;
pub mod pipe;
pub mod store;
pub mod wal;

pub use error::{Error, Result, StreamError};
