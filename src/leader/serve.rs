//! `qdb-ship --listen ADDR`: the server that client-mode followers connect
//! to. Each connection gets its own stream (its own header, compressor and
//! tail), on its own thread, up to a cap.
//!
//! Resume request (docs/protocol.md): a client may send, first, the 16
//! bytes `QFRESUME` + u64 LE LSN; it is then served everything after that
//! LSN. A client that sends nothing within the resume window (QuiverDB's
//! 1.3-alpha daemon, `qdb-recv` without `--resume-from`) is served from
//! `--since-lsn`.

use std::io::Read;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::marker::parse_resume_request;
use super::{ship, ShipError, ShipOptions};
use crate::format::layout::{QF_RESUME_LEN, QF_RESUME_MAGIC};
use crate::transport::net::{AllowList, Listener};

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub ship: ShipOptions,
    /// Served to clients that send no resume request.
    pub since_lsn: u64,
    pub max_clients: usize,
    /// How long to wait for a resume request after accepting.
    pub resume_wait: Duration,
}

/// Read the optional resume request. `None`: the client sent nothing in
/// time (or something else, which is logged and otherwise ignored).
fn read_resume(s: &mut TcpStream, wait: Duration, peer: &str) -> Option<u64> {
    let deadline = Instant::now() + wait;
    let mut b = [0u8; QF_RESUME_LEN];
    let mut got = 0;
    while got < b.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match s.read(&mut b[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
        // Not our magic: no need to wait for the rest.
        if !QF_RESUME_MAGIC.starts_with(&b[..got.min(8)]) {
            break;
        }
    }
    let _ = s.set_read_timeout(None);
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
/// goes away (noticed at the latest at the next heartbeat).
pub fn serve(addr: &str, opts: &ServeOptions, stop: Arc<AtomicBool>) -> Result<(), ShipError> {
    let listener = Listener::bind(addr, AllowList(Vec::new()))?;
    let active = Arc::new(AtomicUsize::new(0));
    while let Some((mut stream, peer)) = listener.accept(&stop)? {
        if active.load(Ordering::SeqCst) >= opts.max_clients {
            log::warn!(
                "refused {peer}: already serving {} followers (--max-clients)",
                opts.max_clients
            );
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (opts, stop, counter) = (opts.clone(), stop.clone(), active.clone());
        let spawned = thread::Builder::new()
            .name(format!("ship {peer}"))
            .spawn(move || {
                let peer = peer.to_string();
                let _ = stream.set_nodelay(true);
                let since = match read_resume(&mut stream, opts.resume_wait, &peer) {
                    Some(lsn) => {
                        log::info!("{peer} resumes after lsn {lsn}");
                        lsn
                    }
                    None => opts.since_lsn,
                };
                let closer = stream.try_clone().ok();
                match ship(&opts.ship, since, stream, &stop) {
                    Ok(st) => {
                        log::info!("stream to {peer} ended: complete up to lsn {}", st.complete)
                    }
                    Err(e) if e.is_disconnect() => log::info!("{peer} disconnected"),
                    Err(e) => log::warn!("stream to {peer} failed: {e}"),
                }
                if let Some(c) = closer {
                    let _ = c.shutdown(Shutdown::Both);
                }
                counter.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            log::warn!("cannot serve {peer}: {e}");
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
    Ok(())
}
