//! TCP transport for the WAL stream: listen for the leader's `wal-ship`
//! (a TCP client, §7.1 of the format spec) or connect to a relay, filter
//! peers, and copy each session's bytes to an output with a flush per read.
//!
//! `qdb-recv` writes the output to stdout; the daemon writes it into apply.
//! Every blocking wait here (accept, connect, read, backoff sleep) wakes up at
//! least every [`TICK`] to look at a shutdown flag, so SIGTERM is honoured
//! promptly without closing sockets from another thread.
//!
//! Session boundaries matter: a stream can end mid-record, and bytes of a cut
//! record must never be glued to the next session. [`pump`] copies one session
//! verbatim (the caller ends the output after it); [`pump_framed`] with a
//! [`SessionFramer`] forwards only whole records so that several sessions can
//! share one output.

mod allow;
mod backoff;
mod framer;
mod peerlog;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

pub use allow::{AllowList, Cidr, CidrError};
pub use backoff::{Backoff, MIN_RECONNECT};
pub use framer::{SessionFramer, MAX_FRAMED_PAYLOAD};
pub use peerlog::{PeerLog, RefusedHook, LOG_INTERVAL, LOG_LINES_PER_INTERVAL};

/// The longest a blocking call sleeps before looking at the shutdown flag.
pub const TICK: Duration = Duration::from_millis(200);

/// One connect attempt that has not completed by then counts as failed (a
/// host that drops SYNs would otherwise hold an attempt for minutes).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Keepalive probes: a leader host that vanished without FIN is noticed after
/// about KEEPALIVE_TIME + KEEPALIVE_RETRIES * KEEPALIVE_INTERVAL (60 s).
pub const KEEPALIVE_TIME: Duration = Duration::from_secs(30);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_RETRIES: u32 = 3;

const BACKLOG: i32 = 16;
const READ_BUF: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot resolve '{addr}': {source} (expected HOST:PORT, e.g. 0.0.0.0:9999, [::1]:9999 or leader.example.com:9999)")]
    Resolve { addr: String, source: io::Error },

    #[error("cannot listen on {addr}: {}", listen_problem(source))]
    Listen { addr: String, source: io::Error },

    #[error("waiting for connections on {addr} failed: {source}")]
    Accept { addr: SocketAddr, source: io::Error },

    #[error("cannot connect to {addr}: {source}; gave up after {attempts} attempt(s) (--max-retries); check that the server is running and reachable")]
    Connect {
        addr: String,
        attempts: u32,
        source: io::Error,
    },

    #[error("cannot set up the connection with {peer}: {source}")]
    Socket { peer: String, source: io::Error },

    #[error("no data from {peer} for {secs} s (--idle-timeout): the leader may be gone; ended the session")]
    IdleTimeout { peer: String, secs: u64 },

    #[error("reading from {peer} failed: {source}")]
    Read { peer: String, source: io::Error },

    /// Writing to the output failed; [`NetError::is_broken_pipe`] tells when
    /// that is just the reader going away.
    #[error("writing the stream to the output failed: {0}")]
    Output(#[source] io::Error),

    #[error("session from {peer} does not start with a QuiverDB 1.x WAL header{hint}: --keep-serving needs an uncompressed stream; drop --keep-serving and run one session per process")]
    NotWalStream { peer: String, hint: &'static str },

    #[error(transparent)]
    Tls(#[from] crate::transport::tls::TlsError),

    #[error(transparent)]
    Auth(#[from] crate::transport::auth::AuthError),

    #[error("session from {peer}: a record claims {len} payload bytes, more than the {max} --keep-serving accepts (not a QuiverDB 1.x stream, or a corrupt one); dropped the session", max = MAX_FRAMED_PAYLOAD)]
    RecordTooLarge { peer: String, len: u32 },
}

impl NetError {
    /// The output failed: no later session can be delivered either.
    pub fn is_output(&self) -> bool {
        matches!(self, NetError::Output(_))
    }

    /// The output's reader went away (EPIPE): a normal end for a Unix filter.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, NetError::Output(e) if super::is_broken_pipe(e))
    }
}

fn listen_problem(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => "address already in use (another qdb-recv or quiverdb-follower is probably running; stop it or choose another port)".into(),
        io::ErrorKind::PermissionDenied => "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE; choose a port of 1024 or above)".into(),
        io::ErrorKind::AddrNotAvailable => "address not available (it is not an address of this host; use one of its addresses, or 0.0.0.0 / [::] for all)".into(),
        _ => e.to_string(),
    }
}

fn resolve(addr: &str) -> Result<Vec<SocketAddr>, NetError> {
    let err = |source| NetError::Resolve {
        addr: addr.to_string(),
        source,
    };
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(err)?.collect();
    if addrs.is_empty() {
        return Err(err(io::Error::new(
            io::ErrorKind::NotFound,
            "no addresses found",
        )));
    }
    Ok(addrs)
}

/// Sleep for `d`, waking every [`TICK`]; false if `shutdown` was set first.
pub fn sleep_unless_shutdown(d: Duration, shutdown: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    loop {
        if shutdown.load(Ordering::Relaxed) {
            return false;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        thread::sleep(left.min(TICK));
    }
}

/// Wait up to `timeout` for `events` on `fd`. Ok(false) on timeout or when a
/// signal interrupted the wait, so the caller looks at its flags sooner.
fn wait_fd(fd: &impl AsRawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().min(libc::c_int::MAX as u128) as libc::c_int;
    // SAFETY: `pfd` is one valid pollfd that outlives the call, and nfds is 1.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(r > 0)
}

/// A listening socket that hands out one allowed peer at a time.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    local: SocketAddr,
    allow: AllowList,
    /// Logs refused peers, rate-limited, and tells its hook (the daemon's
    /// metrics) about each.
    refusals: PeerLog,
}

impl Listener {
    /// Bind `addr` (HOST:PORT; port 0 picks a free port) with SO_REUSEADDR, so
    /// a restarted receiver rebinds at once while the previous session's
    /// socket is still in TIME_WAIT. Logs "listening on ADDR" at info, and a
    /// warning when a wildcard address has no allow list.
    pub fn bind(addr: &str, allow: AllowList) -> Result<Listener, NetError> {
        let mut first_err = None;
        for candidate in resolve(addr)? {
            match bind_socket(candidate) {
                Ok(listener) => {
                    let local = listener.local_addr().unwrap_or(candidate);
                    info!("listening on {local}");
                    if allow.is_empty() && local.ip().is_unspecified() {
                        warn!(
                            "listening on {local} without --allow: any host that can reach this port can send \
                             page writes to the follower; restrict peers with --allow CIDR, or carry the stream \
                             over ssh or TLS (see qdb-recv --help)"
                        );
                    }
                    return Ok(Listener {
                        listener,
                        local,
                        allow,
                        refusals: PeerLog::default(),
                    });
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(NetError::Listen {
            addr: addr.to_string(),
            source: first_err.unwrap_or_else(|| io::Error::other("no address to bind")),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Tell `hook` about each peer refused by the allow list.
    pub fn on_refused(mut self, hook: Option<RefusedHook>) -> Listener {
        self.refusals = PeerLog::with_hook(hook);
        self
    }

    /// Wait for the next allowed peer. Peers outside the allow list are
    /// logged ("refused connection from PEER: not in --allow list",
    /// rate-limited by [`PeerLog`]) and closed, and the wait goes on.
    /// Returns Ok(None) once `shutdown` is set.
    pub fn accept(
        &self,
        shutdown: &AtomicBool,
    ) -> Result<Option<(TcpStream, SocketAddr)>, NetError> {
        let err = |source| NetError::Accept {
            addr: self.local,
            source,
        };
        loop {
            if shutdown.load(Ordering::Relaxed) {
                return Ok(None);
            }
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    // A [::] socket reports IPv4 peers as ::ffff:a.b.c.d.
                    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                    if !self.allow.permits(peer.ip()) {
                        self.refusals.warn(
                            peer,
                            &format_args!("refused connection from {peer}: not in --allow list"),
                        );
                        continue;
                    }
                    // Some systems pass the listener's O_NONBLOCK on; reads
                    // rely on blocking with a timeout (configure_stream).
                    stream.set_nonblocking(false).map_err(err)?;
                    // "accepted from" is logged once the peer has proven
                    // itself (transport::handshake): a flood of connections
                    // must not be a flood of info lines.
                    log::debug!("connection from {peer}");
                    return Ok(Some((stream, peer)));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_fd(&self.listener, libc::POLLIN, TICK).map_err(err)?;
                }
                // The peer gave up between SYN and accept: not our failure.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(err(e)),
            }
        }
    }
}

fn bind_socket(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    // Non-blocking so that accept can return to look at the shutdown flag.
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Connect to `addr`, retrying with `backoff` after each failure: logs
/// "connect to ADDR failed: ERR; retrying in N ms" (warn) for each retry and
/// "connected to ADDR" (info) on success, which also resets `backoff`.
/// `max_retries` bounds the retries after the first attempt (None: forever);
/// running out is `NetError::Connect`. An address that does not resolve is an
/// error at once. Returns Ok(None) once `shutdown` is set.
pub fn connect_with_backoff(
    addr: &str,
    backoff: &mut Backoff,
    max_retries: Option<u32>,
    shutdown: &AtomicBool,
) -> Result<Option<TcpStream>, NetError> {
    let mut retries = 0u32;
    loop {
        if shutdown.load(Ordering::Relaxed) {
            return Ok(None);
        }
        // Resolved on every attempt, so a leader that moved is found again.
        let targets = resolve(addr)?;
        let failure = match connect_any(&targets, shutdown) {
            Ok(Some(stream)) => {
                // No reset here: a connection is not progress. A server that
                // accepts and then serves nothing new would otherwise be
                // retried at the initial delay forever; the serve loop resets
                // the backoff after a session that brought something new.
                match stream.peer_addr() {
                    Ok(peer) if peer.to_string() != addr => info!("connected to {addr} ({peer})"),
                    _ => info!("connected to {addr}"),
                }
                return Ok(Some(stream));
            }
            Ok(None) => return Ok(None),
            Err(e) => e,
        };
        if max_retries.is_some_and(|max| retries >= max) {
            return Err(NetError::Connect {
                addr: addr.to_string(),
                attempts: retries + 1,
                source: failure,
            });
        }
        retries += 1;
        let delay = backoff.next_delay();
        warn!(
            "connect to {addr} failed: {failure}; retrying in {} ms",
            delay.as_millis()
        );
        if !sleep_unless_shutdown(delay, shutdown) {
            return Ok(None);
        }
    }
}

/// Try each resolved address in turn; the error is the last one's.
fn connect_any(targets: &[SocketAddr], shutdown: &AtomicBool) -> io::Result<Option<TcpStream>> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses found");
    for &target in targets {
        match connect_one(target, shutdown) {
            Ok(found) => return Ok(found),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A non-blocking connect polled in ticks: a blocking one could not be
/// interrupted by SIGTERM while the kernel retries SYNs.
fn connect_one(target: SocketAddr, shutdown: &AtomicBool) -> io::Result<Option<TcpStream>> {
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e)
            if e.raw_os_error() == Some(libc::EINPROGRESS)
                || e.kind() == io::ErrorKind::WouldBlock =>
        {
            let deadline = Instant::now() + CONNECT_TIMEOUT;
            loop {
                if shutdown.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                    ));
                }
                if wait_fd(&socket, libc::POLLOUT, left.min(TICK))? {
                    break;
                }
            }
            if let Some(e) = socket.take_error()? {
                return Err(e);
            }
        }
        Err(e) => return Err(e),
    }
    socket.set_nonblocking(false)?;
    Ok(Some(socket.into()))
}

/// Per-connection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// End the session when no byte arrives for this long. None: wait forever,
    /// which is right for `wal-ship --follow` on an idle leader.
    pub idle_timeout: Option<Duration>,
    /// TCP keepalive probes (see [`KEEPALIVE_TIME`]).
    pub keepalive: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            idle_timeout: None,
            keepalive: true,
        }
    }
}

/// Prepare an accepted or connected socket: TCP_NODELAY (as 1.x sets on every
/// connection), keepalive if asked, and a [`TICK`] read timeout, which is what
/// lets [`pump`] notice shutdown and idle timeouts. Call before pumping.
pub fn configure_stream(s: &TcpStream, opts: &SessionOptions) -> Result<(), NetError> {
    let err = |source| NetError::Socket {
        peer: peer_name(s),
        source,
    };
    s.set_nodelay(true).map_err(err)?;
    if opts.keepalive {
        SockRef::from(s)
            .set_tcp_keepalive(&keepalive_params())
            .map_err(err)?;
    }
    s.set_read_timeout(Some(TICK)).map_err(err)?;
    Ok(())
}

fn keepalive_params() -> TcpKeepalive {
    let ka = TcpKeepalive::new().with_time(KEEPALIVE_TIME);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "dragonfly",
        target_os = "illumos",
        target_os = "fuchsia",
    ))]
    let ka = ka
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    ka
}

fn peer_name(s: &TcpStream) -> String {
    s.peer_addr()
        .map_or_else(|_| "the peer".to_string(), |a| a.to_string())
}

/// A connection [`pump`] can read a session from: a socket, or a proven
/// connection from the handshake layer (TLS or not). It must time out its
/// reads every [`TICK`] (WouldBlock), as [`configure_stream`] arranges.
pub trait PeerStream: Read {
    /// The peer, for messages.
    fn peer_name(&self) -> String;
}

impl PeerStream for TcpStream {
    fn peer_name(&self) -> String {
        peer_name(self)
    }
}

/// How a session ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The peer closed the connection.
    Eof,
    /// The shutdown flag was set.
    Shutdown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PumpOutcome {
    /// Bytes read from the peer.
    pub bytes: u64,
    pub ended: SessionEnd,
}

/// Copy one session from `src` to `out` unchanged, writing and flushing after
/// every read, so a frame that wal-ship flushed is passed on at once. Ends Ok
/// at EOF or when `shutdown` is set; Err on a read error, the idle timeout or
/// an output error. The stream must have been through [`configure_stream`]:
/// without its read timeout, shutdown is only seen when data arrives.
pub fn pump<S: PeerStream, W: Write>(
    src: &mut S,
    out: &mut W,
    opts: &SessionOptions,
    shutdown: &AtomicBool,
) -> Result<PumpOutcome, NetError> {
    pump_with(src, opts, shutdown, |data| {
        out.write_all(data).map_err(NetError::Output)?;
        out.flush().map_err(NetError::Output)
    })
}

/// As [`pump`], but through `framer`: only complete WAL units reach `out`.
/// After it returns, `framer.pending_bytes()` are the bytes of a cut record
/// that were dropped.
pub fn pump_framed<S: PeerStream, W: Write>(
    src: &mut S,
    framer: &mut SessionFramer,
    out: &mut W,
    opts: &SessionOptions,
    shutdown: &AtomicBool,
) -> Result<PumpOutcome, NetError> {
    pump_with(src, opts, shutdown, |data| framer.feed(data, out))
}

fn pump_with<S: PeerStream>(
    src: &mut S,
    opts: &SessionOptions,
    shutdown: &AtomicBool,
    mut deliver: impl FnMut(&[u8]) -> Result<(), NetError>,
) -> Result<PumpOutcome, NetError> {
    let mut buf = vec![0u8; READ_BUF];
    let mut bytes = 0u64;
    let mut last_data = Instant::now();
    let outcome = |bytes, ended| Ok(PumpOutcome { bytes, ended });
    loop {
        if shutdown.load(Ordering::Relaxed) {
            return outcome(bytes, SessionEnd::Shutdown);
        }
        match src.read(&mut buf) {
            Ok(0) => return outcome(bytes, SessionEnd::Eof),
            Ok(n) => {
                deliver(&buf[..n])?;
                bytes += n as u64;
                last_data = Instant::now();
            }
            // The read timeout is our tick. (On Unix it shows as WouldBlock;
            // TimedOut is a real error there: keepalive gave up on the peer.)
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Some(limit) = opts.idle_timeout {
                    if last_data.elapsed() >= limit {
                        return Err(NetError::IdleTimeout {
                            peer: src.peer_name(),
                            secs: limit.as_secs(),
                        });
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(NetError::Read {
                    peer: src.peer_name(),
                    source: e,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_errors_say_what_to_do() {
        let e = |kind| NetError::Listen {
            addr: "127.0.0.1:9999".into(),
            source: io::Error::from(kind),
        };
        assert_eq!(
            e(io::ErrorKind::AddrInUse).to_string(),
            "cannot listen on 127.0.0.1:9999: address already in use (another qdb-recv or quiverdb-follower \
             is probably running; stop it or choose another port)"
        );
        assert!(e(io::ErrorKind::PermissionDenied)
            .to_string()
            .contains("permission denied (ports below 1024"));
        assert!(e(io::ErrorKind::AddrNotAvailable)
            .to_string()
            .contains("not an address of this host"));
    }

    #[test]
    fn broken_pipe_is_recognised() {
        assert!(NetError::Output(io::ErrorKind::BrokenPipe.into()).is_broken_pipe());
        assert!(!NetError::Output(io::ErrorKind::Other.into()).is_broken_pipe());
        assert!(!NetError::Read {
            peer: "p".into(),
            source: io::ErrorKind::BrokenPipe.into()
        }
        .is_broken_pipe());
    }

    #[test]
    fn resolve_errors_name_the_address() {
        for bad in ["127.0.0.1", "localhost:notaport", "127.0.0.1:70000"] {
            let e = resolve(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("cannot resolve '{bad}'")), "{e}");
        }
    }

    #[test]
    fn sleep_stops_at_shutdown() {
        let flag = AtomicBool::new(true);
        let t = Instant::now();
        assert!(!sleep_unless_shutdown(Duration::from_secs(30), &flag));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(sleep_unless_shutdown(
            Duration::from_millis(1),
            &AtomicBool::new(false)
        ));
    }
}
