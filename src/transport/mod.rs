//! The transport layer: bytes from a leader to the applier. TCP listen and
//! connect with allow lists and backoff ([`net`]), streaming gzip/zstd
//! decoding ([`codec`]), and the bounded in-process pipes that join the
//! daemon's threads ([`pipe`]); TLS ([`tls`]), token authentication
//! ([`auth`]) and the concurrent, deadline-bound proving of new connections
//! ([`handshake`]).

pub mod auth;
pub mod codec;
pub mod handshake;
pub mod link;
pub mod net;
pub mod pipe;
pub mod tls;
