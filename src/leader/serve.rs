//! `qdb-ship --listen ADDR`: the server that client-mode followers connect
//! to. Each connection gets its own stream (its own header, compressor and
//! tail), on its own thread, up to a cap.
//!
//! A connection is served only after it has proven itself, within
//! `--handshake-timeout-secs` from accept: its address is in `--allow`,
//! then the TLS handshake (`--tls server`; a client certificate with
//! `--tls-client-ca`) and the token (`--auth-token-file`), both run by the
//! transport's own [`handshake::prove`]. Unproven connections take one of
//! [`MAX_PENDING`] handshake slots, never one of the `--max-clients`
//! streaming slots, so silent peers cannot keep followers from being served.
//! Refusals are logged through [`PeerLog`] (rate-limited, counted).
//!
//! Resume request (docs/protocol.md): after TLS and the token, a client may
//! send the 16 bytes `QFRESUME` + u64 LE LSN; it is then served everything
//! after that LSN. A client that sends nothing within the resume window
//! (QuiverDB's 1.3-alpha daemon, `qdb-recv` without `--resume-from`) is
//! served from `--since-lsn`.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::marker::parse_resume_request;
use super::{ship, ShipError, ShipOptions};
use crate::format::layout::{QF_RESUME_LEN, QF_RESUME_MAGIC};
use crate::transport::handshake::{self, Conn, Expect, HandshakeOptions, MAX_PENDING};
use crate::transport::link::Link;
use crate::transport::net::{AllowList, Listener, PeerLog, RefusedHook, SessionOptions, TICK};

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub ship: ShipOptions,
    /// Served to clients that send no resume request.
    pub since_lsn: u64,
    pub max_clients: usize,
    /// How long to wait for a resume request after the handshake.
    pub resume_wait: Duration,
    /// `--allow`: the peers that may connect (empty: any).
    pub allow: AllowList,
    /// TLS server material, token and handshake deadline (`link.client`
    /// is unused here).
    pub link: Link,
}

/// Read the optional resume request. `None`: the client sent nothing in
/// time (or something else, which is logged and otherwise ignored).
fn read_resume(s: &mut Conn, wait: Duration, peer: &str) -> Option<u64> {
    let deadline = Instant::now() + wait;
    let mut b = [0u8; QF_RESUME_LEN];
    let mut got = 0;
    while got < b.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        // The socket's timeout bounds each read (the TLS layer reads
        // through the same socket), so the window holds under TLS too.
        if left.is_zero() || s.tcp().set_read_timeout(Some(left)).is_err() {
            break;
        }
        match s.read(&mut b[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(_) => break,
        }
        // Not our magic: no need to wait for the rest.
        if !QF_RESUME_MAGIC.starts_with(&b[..got.min(8)]) {
            break;
        }
    }
    let _ = s.tcp().set_read_timeout(Some(TICK));
    match parse_resume_request(&b[..got]) {
        Some(lsn) => Some(lsn),
        None if got == 0 => None,
        None => {
            log::warn!("{peer} sent {got} bytes that are not a resume request: ignored");
            None
        }
    }
}

/// Accept followers until `stop` is set. Each stream ends when its client
/// goes away (noticed at the latest at the next heartbeat). `ready` gets the
/// bound address. `hangup` (SIGHUP) re-reads the TLS certificate and key.
pub fn serve(
    addr: &str,
    opts: &ServeOptions,
    stop: Arc<AtomicBool>,
    hangup: Arc<AtomicBool>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ShipError> {
    let metrics = opts.ship.metrics.clone();
    let hook = metrics
        .clone()
        .map(|m| RefusedHook(Arc::new(move || m.refused())));
    let listener = Listener::bind(addr, opts.allow.clone())?.on_refused(hook.clone());
    let log = Arc::new(PeerLog::with_hook(hook.clone()));
    let hs = Arc::new(HandshakeOptions {
        tls: opts.link.server.clone(),
        token: opts.link.token.clone(),
        timeout: opts.link.handshake_timeout,
        expect: Expect::Nothing,
        session: SessionOptions::default(),
        on_refused: hook,
    });
    crate::transport::serve::watch_hangup(hangup, stop.clone(), &opts.link);
    if let Some(m) = &metrics {
        m.set_healthy(true);
    }
    ready(listener.local_addr());
    let pending = Arc::new(AtomicUsize::new(0));
    let active = Arc::new(AtomicUsize::new(0));
    let result = loop {
        let (tcp, peer) = match listener.accept(&stop) {
            Ok(Some(x)) => x,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e.into()),
        };
        // Counted before the thread starts, so a burst cannot overshoot.
        if pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING {
            pending.fetch_sub(1, Ordering::AcqRel);
            log.warn(
                peer,
                &format_args!(
                    "refused connection from {peer}: {MAX_PENDING} connections are already in handshake"
                ),
            );
            continue;
        }
        let (opts, stop) = (opts.clone(), stop.clone());
        let (hs, plog, pending2, active) =
            (hs.clone(), log.clone(), pending.clone(), active.clone());
        let spawned = thread::Builder::new()
            .name(format!("ship {peer}"))
            .spawn(move || {
                let deadline = Instant::now() + hs.timeout;
                let proven = handshake::prove(&hs, tcp, peer, deadline, &stop);
                pending2.fetch_sub(1, Ordering::AcqRel);
                let conn = match proven {
                    Ok(c) => c,
                    Err(msg) if stop.load(Ordering::Relaxed) => {
                        log::debug!("connection from {peer} dropped on shutdown: {msg}");
                        return;
                    }
                    Err(msg) => return plog.warn(peer, &msg),
                };
                if active.fetch_add(1, Ordering::AcqRel) >= opts.max_clients {
                    active.fetch_sub(1, Ordering::AcqRel);
                    plog.warn(
                        peer,
                        &format_args!(
                            "refused {peer}: already serving {} followers (--max-clients)",
                            opts.max_clients
                        ),
                    );
                    let mut conn = conn;
                    let _ = conn.close();
                    return;
                }
                stream_to(conn, &peer.to_string(), &opts, &stop);
                active.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            pending.fetch_sub(1, Ordering::AcqRel);
            log.warn(peer, &format_args!("cannot serve {peer}: {e}"));
        }
    };
    if let Some(m) = &metrics {
        m.set_healthy(false);
    }
    result
}

/// One follower's stream, on a proven connection.
fn stream_to(mut conn: Conn, peer: &str, opts: &ServeOptions, stop: &AtomicBool) {
    let tls = if conn.is_tls() { " (TLS)" } else { "" };
    let since = match read_resume(&mut conn, opts.resume_wait, peer) {
        Some(lsn) => {
            log::info!("{peer}{tls} resumes after lsn {lsn}");
            lsn
        }
        None => {
            log::info!(
                "{peer}{tls} sent no resume request: serving after --since-lsn {}",
                opts.since_lsn
            );
            opts.since_lsn
        }
    };
    let metrics = opts.ship.metrics.as_ref();
    if let Some(m) = metrics {
        m.follower_connected();
    }
    match ship(&opts.ship, since, &mut conn, stop) {
        Ok(st) => log::info!("stream to {peer} ended: complete up to lsn {}", st.complete),
        Err(e) if e.is_disconnect() => log::info!("{peer} disconnected"),
        Err(e) => log::warn!("stream to {peer} failed: {e}"),
    }
    if let Some(m) = metrics {
        m.follower_disconnected();
    }
    // close_notify, then wait for the client to close: the end of the
    // stream must not be lost to a reset.
    let _ = conn.close();
}
