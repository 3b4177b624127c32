//! The replication layer: applying a WAL v1 stream to a follower with
//! QuiverDB 1.x's gating and our durability order ([`apply`]), and keeping
//! the bucket-head directory that 1.x never ships ([`heads`]).

pub(crate) mod apply;
pub mod complete;
pub(crate) mod heads;

pub use apply::{ApplyOptions, Follower, Input, Plain, SessionStats, DEFAULT_MAX_PAGES};
