//! The one serve loop, shared by `qdb-recv` and the daemon: listen and hand
//! each accepted connection to a session handler, or connect with backoff
//! and do the same with each connection made.
//!
//! The backoff rule is the same for both tools: after a session that
//! brought something new, the next connection is made at once (a stream
//! that ended normally, as 1.x does); after one that brought nothing (a
//! server that accepts and closes, or replays only what the follower already
//! holds), the loop waits for the next backoff delay, so no server can make
//! it spin.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;

use log::info;

use super::net::NetError;
use super::net::{connect_with_backoff, sleep_unless_shutdown, AllowList, Backoff, Listener};

/// Where the stream comes from.
pub enum Endpoint {
    /// Accept connections on `addr` from the peers `allow` admits.
    Listen { addr: String, allow: AllowList },
    /// Connect to `addr`, retrying with `backoff`; give up after
    /// `max_retries` failed attempts in a row (`None`: never).
    Connect {
        addr: String,
        backoff: Backoff,
        max_retries: Option<u32>,
    },
}

/// What the session handler says once a session is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Stop serving (a signal, or a tool that serves one session per run).
    Stop,
    /// The session brought something new: serve the next one at once.
    Progress,
    /// It brought nothing new: in connect mode, wait before the next attempt.
    NoProgress,
}

/// Serve sessions until the handler says [`After::Stop`], `shutdown` is
/// set, or connecting gives up. `ready` runs once the listener is bound (with
/// its address) or, in connect mode, before the first attempt. Handler
/// errors end the loop and are returned as they are.
pub fn serve<E: From<NetError>>(
    endpoint: Endpoint,
    shutdown: &AtomicBool,
    ready: impl FnOnce(Option<SocketAddr>),
    mut session: impl FnMut(TcpStream, &str) -> Result<After, E>,
) -> Result<(), E> {
    match endpoint {
        Endpoint::Listen { addr, allow } => {
            let listener = Listener::bind(&addr, allow)?;
            ready(Some(listener.local_addr()));
            while let Some((stream, peer)) = listener.accept(shutdown)? {
                if session(stream, &peer.to_string())? == After::Stop {
                    break;
                }
            }
            Ok(())
        }
        Endpoint::Connect {
            addr,
            mut backoff,
            max_retries,
        } => {
            ready(None);
            loop {
                let Some(stream) =
                    connect_with_backoff(&addr, &mut backoff, max_retries, shutdown)?
                else {
                    return Ok(());
                };
                match session(stream, &addr)? {
                    After::Stop => return Ok(()),
                    After::Progress => backoff.reset(),
                    After::NoProgress => {
                        let delay = backoff.next_delay();
                        info!(
                            "session with {addr} brought nothing new; reconnecting in {} ms",
                            delay.as_millis()
                        );
                        if !sleep_unless_shutdown(delay, shutdown) {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}
