//! The transport layer: bytes from a leader to the applier. TCP listen and
//! connect with allow lists and backoff ([`net`]), streaming gzip/zstd
//! decoding ([`codec`]), and the bounded in-process pipes that join the
//! daemon's threads ([`pipe`]).

pub mod codec;
pub mod net;
pub mod pipe;
