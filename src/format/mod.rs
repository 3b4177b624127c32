//! The format layer: QuiverDB 1.x's bytes, and nothing else. Every module
//! here mirrors a section of `spec/quiverdb-1x-formats.md`, parses and
//! encodes in memory, and does no I/O: storage, replication and the read
//! side build on it.
//!
//! * [`layout`]: every constant and offset (§1–§5).
//! * [`wal`]: WAL v1 records and the stream reader (§5, §6).
//! * [`page`]: page views: the v2 LSN and the page CRC (§3).
//! * [`kv`]: KV_RH pages, overflow chains and key hashing (§3.2, §3.3, §4.3).
//! * [`dir`]: the bucket-head directory file (§4.1).
//! * [`marker`]: our own record types (heartbeat, catch-up markers) and the
//!   resume request (`docs/protocol.md`); 1.x readers ignore them.

pub mod dir;
pub mod kv;
pub mod layout;
pub mod marker;
pub mod page;
pub mod wal;
