//! The one serve loop, shared by `qdb-recv` and the daemon: listen and hand
//! each proven connection to a session handler, or connect with backoff
//! (TLS and the token included) and do the same with each connection made.
//!
//! The backoff rule is the same for both tools: after a session that
//! brought something new, the next connection is made at once (a stream
//! that ended normally, as 1.x does); after one that brought nothing (a
//! server that accepts and closes, or replays only what the follower already
//! holds), or a failed TLS handshake or refused token, the loop waits for
//! the next backoff delay, so no server can make it spin.
//!
//! In listen mode connections are proven on background threads
//! ([`handshake`](super::handshake)): TLS, the token and the first stream
//! bytes within the handshake deadline; only a proven connection reaches
//! the handler. SIGHUP re-reads the TLS material, if there is any.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use log::{info, warn};

use super::handshake::{self, Acceptor, Conn, Expect, HandshakeOptions};
use super::link::Link;
use super::net::{self, NetError, RefusedHook, SessionOptions};
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

/// How connections are secured and what a proven one must have sent.
pub struct Secure {
    /// TLS material and token, loaded ([`crate::transport::link::LinkSettings::load`]).
    pub link: Link,
    /// Listen mode: the first stream bytes a connection must send to be proven.
    pub expect: Expect,
    /// Socket options of every connection.
    pub session: SessionOptions,
    /// Listen mode: told about each refused or failed peer (allow list,
    /// TLS, token, header), e.g. to count them.
    pub on_refused: Option<RefusedHook>,
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
/// its address) or, in connect mode, before the first attempt. `hangup`
/// (SIGHUP) re-reads the TLS files. Handler errors end the loop and are
/// returned as they are.
pub fn serve<E: From<NetError>>(
    endpoint: Endpoint,
    secure: &Secure,
    shutdown: &Arc<AtomicBool>,
    hangup: Arc<AtomicBool>,
    ready: impl FnOnce(Option<SocketAddr>),
    mut session: impl FnMut(Conn, &str) -> Result<After, E>,
) -> Result<(), E> {
    watch_hangup(hangup, shutdown.clone(), &secure.link);
    match endpoint {
        Endpoint::Listen { addr, allow } => {
            let listener = Listener::bind(&addr, allow)?.on_refused(secure.on_refused.clone());
            let local = listener.local_addr();
            let acceptor = Acceptor::start(
                listener,
                HandshakeOptions {
                    tls: secure.link.server.clone(),
                    token: secure.link.token.clone(),
                    timeout: secure.link.handshake_timeout,
                    expect: secure.expect,
                    session: secure.session,
                    on_refused: secure.on_refused.clone(),
                },
                shutdown.clone(),
            );
            ready(Some(local));
            while let Some((conn, peer, active)) = acceptor.next()? {
                let after = session(conn, &peer)?;
                // The next proven leader may take over only now.
                drop(active);
                if after == After::Stop {
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
            // Failed TLS handshakes or refused tokens in a row: they count
            // against `max_retries` like failed connects.
            let mut refused = 0u32;
            loop {
                let Some(stream) =
                    connect_with_backoff(&addr, &mut backoff, max_retries, shutdown)?
                else {
                    return Ok(());
                };
                let secured = net::configure_stream(&stream, &secure.session).and_then(|()| {
                    handshake::connect_secure(stream, &addr, &secure.link, shutdown)
                });
                let after = match secured {
                    Ok(conn) => {
                        refused = 0;
                        session(conn, &addr)?
                    }
                    Err(e) => {
                        // Like a failed connect: the server or its
                        // certificate may be fixed by the next attempt.
                        refused += 1;
                        if max_retries.is_some_and(|max| refused > max) {
                            return Err(e.into());
                        }
                        warn!("{e}");
                        After::NoProgress
                    }
                };
                match after {
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

/// SIGHUP (which would otherwise kill the process): re-read certificates
/// and keys. A running session keeps its connection; the next handshake
/// uses the new files. On an error the previous files stay in use.
pub(crate) fn watch_hangup(hangup: Arc<AtomicBool>, shutdown: Arc<AtomicBool>, link: &Link) {
    let server = link.server.clone();
    let client = link.client.clone();
    let spawned = thread::Builder::new().name("sighup".into()).spawn(move || {
        while !shutdown.load(Ordering::Relaxed) {
            if hangup.swap(false, Ordering::Relaxed) {
                if let Some(tls) = &server {
                    handshake::reload_server(tls);
                } else if let Some(tls) = &client {
                    match tls.reload() {
                        Ok(()) => info!("SIGHUP: reloaded the TLS client material"),
                        Err(e) => {
                            log::error!("SIGHUP: {e}; still using the previous files")
                        }
                    }
                } else {
                    info!("SIGHUP: nothing to reload in this configuration; still running");
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    if let Err(e) = spawned {
        warn!("cannot watch for SIGHUP: {e}");
    }
}
