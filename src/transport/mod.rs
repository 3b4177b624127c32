//! The transport layer: bytes from a leader to the applier. TCP listen and
//! connect with allow lists and backoff ([`net`]), streaming gzip/zstd
//! decoding ([`codec`]), and the bounded in-process pipes that join the
//! daemon's threads ([`pipe`]), and the one serve loop both `qdb-recv` and
//! the daemon run (`serve`); TLS ([`tls`]), token authentication ([`auth`])
//! and the concurrent, deadline-bound proving of new connections
//! ([`handshake`]).

pub mod auth;
pub mod codec;
pub mod handshake;
pub mod link;
pub mod net;
pub mod pipe;
pub(crate) mod serve;
pub mod tls;

/// True when a write failed because the reader of our output went away;
/// Unix tools treat that as a normal end, not an error.
pub fn is_broken_pipe(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::BrokenPipe
}
