//! The replication layer: applying a WAL v1 stream to a follower with
//! QuiverDB 1.x's gating and our durability order ([`apply`]), and keeping
//! the bucket-head directory that 1.x never ships ([`heads`]), healing a
//! follower from a leader backup ([`restore`]) and turning it into a leader
//! ([`promote`]).

pub(crate) mod apply;
pub mod complete;
pub(crate) mod heads;
pub mod promote;
pub mod restore;

pub use apply::{ApplyOptions, Follower, Input, Plain, SessionStats, DEFAULT_MAX_PAGES};
