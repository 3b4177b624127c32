//! Accepting leaders without letting unproven peers hold anything up.
//!
//! An [`Acceptor`] owns the listening socket on its own thread. Each
//! accepted connection gets a handshake thread that, within one deadline
//! (`--handshake-timeout-secs`, default 10 s) and in this order:
//!
//! 1. runs the TLS handshake (with `--tls server`; client certificates are
//!    verified when `--tls-client-ca` is set),
//! 2. checks the token preamble (with `--auth-token-file`, see [`auth`]),
//! 3. reads the first bytes of the stream: the 16-byte WAL header, checked,
//!    when the stream is known to be uncompressed, else one byte.
//!
//! Only a connection that passed all three is handed to the caller by
//! [`Acceptor::next`] and becomes the applying session. At most
//! [`MAX_PENDING`] connections are in handshake at once; more are closed at
//! accept. A peer that sends nothing, or drips one byte a second, therefore
//! costs one of those slots for at most the deadline and never delays a
//! leader that proves itself.
//!
//! Second leader: while a session is active (or one is ready and not yet
//! taken), another connection that passes the handshake waits up to
//! [`SECOND_LEADER_GRACE`] for it to end, and is then refused and closed,
//! with a rate-limited log line. The running session is never
//! replaced: the follower applies one stream at a time, and a leader whose
//! host vanished is noticed by TCP keepalive (about 60 s) or
//! `--idle-timeout-secs`, after which the next leader is accepted.
//!
//! Refusals and failures are logged through [`PeerLog`]: at most one line
//! per peer address per [`net::LOG_INTERVAL`], and at most [`net::LOG_LINES_PER_INTERVAL`]
//! lines in all per interval, each with the counts of what was suppressed.
//!
//! [`auth`]: crate::transport::auth

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::format::layout::WAL_HEADER_LEN;
use crate::format::wal::check_stream_header;
use crate::transport::auth::{self, Token};
use crate::transport::link::Link;
use crate::transport::net::{
    self, Listener, NetError, PeerLog, PeerStream, RefusedHook, SessionOptions, TICK,
};
use crate::transport::tls::{ServerTls, TlsStream};

/// Connections in handshake at once; more are closed at accept.
pub const MAX_PENDING: usize = 64;
/// Default `--handshake-timeout-secs`.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
/// How long a proven leader waits for the active session to end before it
/// is refused: a leader that reconnects at once after its connection broke
/// must not be refused because the daemon is still finishing the old
/// session (draining, the last fsync, the checkpoint).
pub const SECOND_LEADER_GRACE: Duration = Duration::from_secs(2);
/// Handshake threads do little; a small stack keeps 64 of them cheap.
const HANDSHAKE_STACK: usize = 256 * 1024;

/// What the first bytes of a stream must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A 16-byte QuiverDB 1.x WAL header (uncompressed stream).
    WalHeader,
    /// The same, for `qdb-recv --keep-serving`, whose refusal says what
    /// that mode needs (see [`net::SessionFramer`]).
    FramedWalHeader,
    /// At least one byte (compressed or unknown stream).
    AnyByte,
    /// Nothing: the listening side sends the stream (`qdb-ship --listen`),
    /// and what the client may send after TLS and the token (a resume
    /// request) is read by the caller.
    Nothing,
}

/// How connections are proven.
#[derive(Debug, Clone)]
pub struct HandshakeOptions {
    pub tls: Option<Arc<ServerTls>>,
    pub token: Option<Token>,
    pub timeout: Duration,
    pub expect: Expect,
    pub session: SessionOptions,
    /// Told about every refused or failed connection.
    pub on_refused: Option<RefusedHook>,
}

/// A connection that passed the handshake, with the stream bytes already
/// read (the prefix) replayed first.
#[derive(Debug)]
pub struct Conn {
    stream: TlsStream,
    prefix: Vec<u8>,
    pos: usize,
    peer: String,
}

impl Conn {
    /// A connection with nothing read yet (connect mode).
    pub fn new(stream: TlsStream, peer: String) -> Conn {
        Conn {
            stream,
            prefix: Vec::new(),
            pos: 0,
            peer,
        }
    }

    /// The socket, e.g. to clone a handle that shuts it down from another thread.
    pub fn tcp(&self) -> &TcpStream {
        self.stream.tcp()
    }

    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// End the connection cleanly: TLS close_notify, then a wait for the
    /// peer to close ([`TlsStream::close`]), so the end of what was written
    /// is not lost to a reset.
    pub fn close(&mut self) -> io::Result<()> {
        self.stream.close()
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.len());
            buf[..n].copy_from_slice(&self.prefix[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.stream.read(buf)
    }
}

/// Writes go to the peer after the handshake (e.g. qdb-ship's resume
/// request, which follows TLS and the token).
impl io::Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.stream.write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl PeerStream for Conn {
    fn peer_name(&self) -> String {
        self.peer.clone()
    }
}

/// Reads and writes that retry the socket's tick timeouts until `deadline`,
/// so that the token and header reads share the handshake's deadline.
struct DeadlineIo<'a> {
    s: &'a mut TlsStream,
    deadline: Instant,
    shutdown: &'a AtomicBool,
}

impl DeadlineIo<'_> {
    fn check(&self) -> io::Result<()> {
        if self.shutdown.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "stopping on signal",
            ));
        }
        if Instant::now() >= self.deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline"));
        }
        Ok(())
    }
}

impl Read for DeadlineIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.check()?;
            match self.s.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                r => return r,
            }
        }
    }
}

impl Write for DeadlineIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        self.s.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.s.flush()
    }
}

#[derive(Debug, Default)]
struct State {
    ready: Option<(Conn, String)>,
    /// The peer of the session the caller is running.
    active: Option<String>,
    /// The accept loop failed: the caller ends with this.
    failed: Option<NetError>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    pending: AtomicUsize,
    log: PeerLog,
    opts: HandshakeOptions,
    shutdown: Arc<AtomicBool>,
}

/// Accepts and proves connections on background threads; see the module doc.
#[derive(Debug)]
pub struct Acceptor {
    shared: Arc<Shared>,
    local: SocketAddr,
}

/// The applying session; dropping it lets the next proven leader in.
#[derive(Debug)]
pub struct Active {
    shared: Arc<Shared>,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.shared.lock().active = None;
        // A proven leader may be waiting out SECOND_LEADER_GRACE.
        self.shared.cv.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Acceptor {
    /// Start accepting on `listener`. Certificates are re-read through
    /// `opts.tls` ([`ServerTls::reload`]); handshakes after a reload use the
    /// new ones, sessions already running keep theirs.
    pub fn start(
        listener: Listener,
        opts: HandshakeOptions,
        shutdown: Arc<AtomicBool>,
    ) -> Acceptor {
        let local = listener.local_addr();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            pending: AtomicUsize::new(0),
            log: PeerLog::with_hook(opts.on_refused.clone()),
            opts,
            shutdown,
        });
        let s = shared.clone();
        thread::Builder::new()
            .name("accept".into())
            .spawn(move || accept_loop(listener, s))
            .expect("spawn accept thread");
        Acceptor { shared, local }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Refused and failed connections so far.
    pub fn refused(&self) -> u64 {
        self.shared.log.total()
    }

    /// Wait for the next proven connection. Ok(None) once shutdown is set.
    /// The returned [`Active`] marks the session: keep it until the session
    /// ends.
    pub fn next(&self) -> Result<Option<(Conn, String, Active)>, NetError> {
        let mut g = self.shared.lock();
        loop {
            if let Some(e) = g.failed.take() {
                return Err(e);
            }
            if self.shared.shutdown.load(Ordering::Relaxed) {
                return Ok(None);
            }
            if let Some((conn, peer)) = g.ready.take() {
                g.active = Some(peer.clone());
                let active = Active {
                    shared: self.shared.clone(),
                };
                return Ok(Some((conn, peer, active)));
            }
            g = self
                .shared
                .cv
                .wait_timeout(g, TICK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Re-read server certificates; a failure keeps the old ones.
pub fn reload_server(tls: &ServerTls) {
    match tls.reload() {
        Ok(()) => log::info!(
            "SIGHUP: reloaded TLS certificate {} and key {}",
            tls.files().cert.display(),
            tls.files().key.display()
        ),
        Err(e) => log::error!("SIGHUP: {e}; still using the previous certificate and key"),
    }
}

fn accept_loop(listener: Listener, shared: Arc<Shared>) {
    loop {
        let (tcp, peer) = match listener.accept(&shared.shutdown) {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(e) => {
                shared.lock().failed = Some(e);
                shared.cv.notify_all();
                return;
            }
        };
        // Counted before the thread starts, so a burst cannot overshoot.
        if shared.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING {
            shared.pending.fetch_sub(1, Ordering::AcqRel);
            shared.log.warn(
                peer,
                &format_args!(
                    "refused connection from {peer}: {MAX_PENDING} connections are already in handshake"
                ),
            );
            continue;
        }
        let s = shared.clone();
        let spawned = thread::Builder::new()
            .name("handshake".into())
            .stack_size(HANDSHAKE_STACK)
            .spawn(move || {
                let deadline = Instant::now() + s.opts.timeout;
                let result = prove(&s.opts, tcp, peer, deadline, &s.shutdown);
                s.pending.fetch_sub(1, Ordering::AcqRel);
                match result {
                    Ok(conn) => offer(&s, conn, peer),
                    Err(msg) if s.shutdown.load(Ordering::Relaxed) => {
                        log::debug!("connection from {peer} dropped on shutdown: {msg}")
                    }
                    Err(msg) => s.log.warn(peer, &msg),
                }
            });
        if let Err(e) = spawned {
            shared.pending.fetch_sub(1, Ordering::AcqRel);
            shared
                .log
                .warn(peer, &format_args!("refused connection from {peer}: {e}"));
        }
    }
}

/// Hand a proven connection to the caller, unless a session is still
/// active after [`SECOND_LEADER_GRACE`].
fn offer(shared: &Shared, conn: Conn, peer: SocketAddr) {
    let mut g = shared.lock();
    let until = Instant::now() + SECOND_LEADER_GRACE;
    let busy = loop {
        let busy = g
            .active
            .clone()
            .or_else(|| g.ready.as_ref().map(|(_, p)| p.clone()));
        let left = until.saturating_duration_since(Instant::now());
        if busy.is_none() || left.is_zero() || shared.shutdown.load(Ordering::Relaxed) {
            break busy;
        }
        g = shared
            .cv
            .wait_timeout(g, left.min(TICK))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    };
    match busy {
        Some(other) => {
            drop(g);
            shared.log.warn(
                peer,
                &format_args!(
                    "refused leader {peer}: it passed the handshake, but the session from {other} is active \
                     (one leader at a time)"
                ),
            );
        }
        None => {
            log::info!(
                "accepted from {peer}{}",
                if conn.is_tls() { " (TLS)" } else { "" }
            );
            g.ready = Some((conn, peer.to_string()));
            drop(g);
            shared.cv.notify_all();
        }
    }
}

/// TLS, token, first stream bytes, all before `deadline`. The error is the
/// log line (for [`PeerLog::warn`]). Public for servers that run several
/// sessions at once and so cannot use [`Acceptor`] (`qdb-ship --listen`,
/// with [`Expect::Nothing`]); call it on a thread of its own.
pub fn prove(
    opts: &HandshakeOptions,
    tcp: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
    shutdown: &AtomicBool,
) -> Result<Conn, String> {
    let secs = opts.timeout.as_secs();
    let timed_out = |what: &str| {
        format!(
            "connection from {peer}: no {what} within {secs} s (--handshake-timeout-secs); closed"
        )
    };
    net::configure_stream(&tcp, &opts.session).map_err(|e| e.to_string())?;
    let mut stream = match &opts.tls {
        Some(tls) => match tls.accept_until(tcp, deadline, shutdown) {
            Ok(s) => s,
            Err(crate::transport::tls::TlsError::Timeout { .. }) => {
                return Err(timed_out("TLS handshake"))
            }
            Err(e) => return Err(format!("refused connection: {e}")),
        },
        None => TlsStream::Plain(tcp),
    };
    let peer_s = peer.to_string();
    let mut io = DeadlineIo {
        s: &mut stream,
        deadline,
        shutdown,
    };
    if let Some(token) = &opts.token {
        match auth::check_token(&mut io, token, &peer_s) {
            Ok(()) => {}
            Err(auth::AuthError::Io { source, .. }) if source.kind() == io::ErrorKind::TimedOut => {
                return Err(timed_out("auth preamble"))
            }
            Err(e) => return Err(format!("refused connection: {e}")),
        }
    }
    let need = match opts.expect {
        Expect::WalHeader | Expect::FramedWalHeader => WAL_HEADER_LEN,
        Expect::AnyByte => 1,
        Expect::Nothing => 0,
    };
    let mut prefix = Vec::with_capacity(need);
    let mut buf = [0u8; WAL_HEADER_LEN];
    while prefix.len() < need {
        match io.read(&mut buf[..need - prefix.len()]) {
            Ok(0) => {
                // The peer has sent all it will and closed: it can hold
                // nothing up any more, and it passed TLS and the token. The
                // session reports the short stream as it would any other
                // (e.g. "input ended after N bytes").
                return Ok(Conn {
                    stream,
                    prefix,
                    pos: 0,
                    peer: peer_s,
                });
            }
            Ok(n) => prefix.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(timed_out("WAL header")),
            Err(e) => return Err(format!("connection from {peer}: {e}")),
        }
    }
    match opts.expect {
        Expect::WalHeader => {
            if let Err(e) = check_stream_header(&prefix) {
                return Err(format!("refused connection from {peer}: {e}"));
            }
        }
        Expect::FramedWalHeader => {
            let mut framer = net::SessionFramer::new(&peer_s);
            if let Err(e) = framer.feed(&prefix, &mut io::sink()) {
                return Err(e.to_string());
            }
        }
        Expect::AnyByte | Expect::Nothing => {}
    }
    Ok(Conn {
        stream,
        prefix,
        pos: 0,
        peer: peer_s,
    })
}

/// The connecting side: TLS client handshake (with `link.client`) and the
/// token preamble (with `link.token`) on a connected, configured socket,
/// within `link.handshake_timeout`.
pub fn connect_secure(
    tcp: TcpStream,
    peer: &str,
    link: &Link,
    shutdown: &AtomicBool,
) -> Result<Conn, NetError> {
    let deadline = Instant::now() + link.handshake_timeout;
    let mut stream = match &link.client {
        Some(tls) => tls.handshake(tcp, deadline, shutdown)?,
        None => TlsStream::Plain(tcp),
    };
    if let Some(token) = &link.token {
        let mut io = DeadlineIo {
            s: &mut stream,
            deadline,
            shutdown,
        };
        auth::send_token(&mut io, token, peer)?;
    }
    Ok(Conn::new(stream, peer.to_string()))
}
