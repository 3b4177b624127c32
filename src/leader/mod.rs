//! `qdb-ship`: the leader side. Reads a live QuiverDB 1.x leader's files
//! (no lock; its writer keeps running) and sends a WAL v1 stream that never
//! skips a frame unnoticed:
//!
//! * [`tail`] follows `wal-000001.log` and notices every truncation or
//!   rewrite, even one refilled to the same or a greater length;
//! * [`scan`] catches up from the data segments whenever frames may have
//!   been missed, in ascending LSN order, between [`marker`] records;
//! * [`frame`] writes the frames with wal-ship's compression framing;
//! * [`serve`] is `--listen` mode, one stream per connecting follower,
//!   with an optional resume request.
//!
//! The stream contract is in docs/protocol.md.

pub mod frame;
/// The marker records are wire format; kept reachable here for the tools.
pub use crate::format::marker;
pub mod scan;
pub mod serve;
pub mod tail;

use std::fs::OpenOptions;
use std::io::{self, IoSlice, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::format::layout::WAL_FILE;
use crate::format::wal::{encode_truncate, stream_header};
use crate::metrics::ShipMetrics;
use crate::storage::fs::StdFs;
use crate::storage::meta::{self, Meta};
use crate::transport::codec::Compression;
use crate::transport::handshake::{self, Conn};
use crate::transport::link::Link;
use crate::transport::net::{self, NetError, SessionOptions};
use frame::FrameWriter;
use marker::Marker;
use tail::{Event, WalTail};

#[derive(Debug, Error)]
pub enum ShipError {
    #[error("no QuiverDB database at {} (no meta file): --path must be the leader's database folder", path.display())]
    NoLeader { path: PathBuf },
    #[error(transparent)]
    Db(#[from] crate::Error),
    #[error("cannot read the leader's {what} in {}: {source}", path.display())]
    Leader {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the stream failed: {0}")]
    Sink(#[source] io::Error),
    #[error("cannot open sink {sink}: {source}")]
    OpenSink {
        sink: String,
        #[source]
        source: io::Error,
    },
    /// TLS or the token failed (a connect failure is [`ShipError::OpenSink`]).
    #[error("cannot open sink {sink}: {source}")]
    SecureSink {
        sink: String,
        #[source]
        source: NetError,
    },
    #[error("bad --sink {0:?}: expected tcp://HOST:PORT, tls://HOST:PORT or file://PATH")]
    BadSink(String),
    #[error(transparent)]
    Net(#[from] crate::transport::net::NetError),
}

impl ShipError {
    /// The reader of the stream went away (stdout closed, peer disconnected).
    pub fn is_disconnect(&self) -> bool {
        matches!(self, ShipError::Sink(e) if matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
        ))
    }
}

/// Where the stream goes (wal-ship's `--sink`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    Tcp(String),
    /// TLS client to HOST:PORT (the link's `client` material is required).
    Tls(String),
    File(PathBuf),
}

/// As the user writes it in `--sink` (error messages show this).
impl std::fmt::Display for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::Stdout => f.write_str("stdout"),
            Sink::Tcp(a) => write!(f, "tcp://{a}"),
            Sink::Tls(a) => write!(f, "tls://{a}"),
            Sink::File(p) => write!(f, "file://{}", p.display()),
        }
    }
}

impl Sink {
    pub fn parse(s: &str) -> Result<Sink, ShipError> {
        if let Some(a) = s.strip_prefix("tcp://").filter(|a| a.contains(':')) {
            Ok(Sink::Tcp(a.to_string()))
        } else if let Some(a) = s.strip_prefix("tls://").filter(|a| a.contains(':')) {
            Ok(Sink::Tls(a.to_string()))
        } else if let Some(p) = s.strip_prefix("file://").filter(|p| !p.is_empty()) {
            Ok(Sink::File(PathBuf::from(p)))
        } else {
            Err(ShipError::BadSink(s.to_string()))
        }
    }

    /// True for the sinks that connect (`tcp://`, `tls://`): the ones the
    /// link settings (TLS, token) apply to.
    pub fn is_network(&self) -> bool {
        matches!(self, Sink::Tcp(_) | Sink::Tls(_))
    }

    /// Open it as wal-ship does: one TCP connect with TCP_NODELAY (no
    /// retry), or create/truncate the file (and its parent folders). A
    /// network sink then runs the TLS client handshake (`tls://`, with
    /// `link.client`) and sends the token (with `link.token`), both within
    /// `link.handshake_timeout` (the transport's own connecting side,
    /// [`handshake::connect_secure`]).
    pub fn open(&self, link: &Link, stop: &AtomicBool) -> Result<SinkStream, ShipError> {
        let fail = |source| ShipError::OpenSink {
            sink: self.to_string(),
            source,
        };
        Ok(match self {
            // A File on a duplicate of fd 1, not io::stdout(): that one is
            // line-buffered and would split binary frames at every newline
            // byte, and it cannot take a vectored write as one system call.
            Sink::Stdout => SinkStream::File(std::fs::File::from(
                io::stdout().as_fd().try_clone_to_owned().map_err(fail)?,
            )),
            Sink::Tcp(a) | Sink::Tls(a) => {
                let tcp = connect(a, link.handshake_timeout).map_err(fail)?;
                // Keepalive: a follower host that vanished is noticed
                // instead of a write blocking for ever.
                net::configure_stream(&tcp, &SessionOptions::default()).map_err(|e| {
                    ShipError::SecureSink {
                        sink: self.to_string(),
                        source: e,
                    }
                })?;
                let conn = handshake::connect_secure(tcp, a, link, stop).map_err(|e| {
                    ShipError::SecureSink {
                        sink: self.to_string(),
                        source: e,
                    }
                })?;
                SinkStream::Net(Box::new(conn))
            }
            Sink::File(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(fail)?;
                }
                SinkStream::File(
                    OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(p)
                        .map_err(fail)?,
                )
            }
        })
    }
}

/// One TCP connect per resolved address, each bounded by `timeout` (a host
/// that drops SYNs would otherwise hold qdb-ship for minutes).
fn connect(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses found");
    for target in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&target, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// An opened sink.
#[derive(Debug)]
pub enum SinkStream {
    /// stdout or a file.
    File(std::fs::File),
    /// A connection (plain TCP or TLS), past the token.
    Net(Box<Conn>),
}

impl SinkStream {
    /// End a TLS connection with close_notify, so the follower reads a
    /// clean end; a plain socket or a file just closes when dropped.
    pub fn close(&mut self) -> io::Result<()> {
        match self {
            SinkStream::Net(c) if c.is_tls() => c.close(),
            _ => Ok(()),
        }
    }
}

impl Write for SinkStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SinkStream::File(f) => f.write(buf),
            SinkStream::Net(c) => c.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            SinkStream::File(f) => f.write_vectored(bufs),
            SinkStream::Net(c) => c.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            SinkStream::File(f) => f.flush(),
            SinkStream::Net(c) => c.flush(),
        }
    }
}

/// Counts the bytes that reach the sink (`quiverdb_ship_bytes_total`).
/// Vectored writes pass through as such: catch-up batches rely on them.
struct Counted<'m, W> {
    inner: W,
    metrics: Option<&'m ShipMetrics>,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(m) = self.metrics {
            m.add_bytes(n as u64);
        }
        Ok(n)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = self.inner.write_vectored(bufs)?;
        if let Some(m) = self.metrics {
            m.add_bytes(n as u64);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Clone, Debug)]
pub struct ShipOptions {
    pub path: PathBuf,
    pub follow: bool,
    pub compress: Compression,
    pub flush_every: u32,
    pub flush_bytes: u64,
    /// How often an idle tail looks at the WAL again.
    pub poll: Duration,
    /// Heartbeat period while following; `None`: no heartbeats.
    pub heartbeat: Option<Duration>,
    /// Updated as the stream goes (`--metrics-addr`).
    pub metrics: Option<ShipMetrics>,
}

impl ShipOptions {
    pub fn new(path: impl Into<PathBuf>) -> ShipOptions {
        ShipOptions {
            path: path.into(),
            follow: false,
            compress: Compression::None,
            flush_every: 1,
            flush_bytes: 0,
            poll: Duration::from_millis(2),
            heartbeat: Some(Duration::from_secs(1)),
            metrics: None,
        }
    }
}

/// What one stream sent.
#[derive(Clone, Debug, Default)]
pub struct ShipStats {
    pub wal_records: u64,
    pub truncations: u64,
    pub catchups: u64,
    pub catchup_pages: u64,
    /// Everything up to this LSN has been sent.
    pub complete: u64,
}

/// Read the leader's meta (fails if there is none).
pub fn leader_meta(root: &Path) -> Result<Meta, ShipError> {
    meta::read_meta(&StdFs, root)?.ok_or_else(|| ShipError::NoLeader {
        path: root.to_path_buf(),
    })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Send the leader's changes after `since` to `sink` until the end (one
/// pass without `follow`), `stop` is set, or the sink fails.
pub fn ship<W: Write>(
    opts: &ShipOptions,
    since: u64,
    sink: W,
    stop: &AtomicBool,
) -> Result<ShipStats, ShipError> {
    let root = &opts.path;
    let metrics = opts.metrics.as_ref();
    let mut m = leader_meta(root)?;
    let sink = Counted {
        inner: sink,
        metrics,
    };
    let mut out = FrameWriter::new(sink, opts.compress, opts.flush_every, opts.flush_bytes)
        .map_err(ShipError::Sink)?;
    let mut tail = open_tail(root);
    let header = tail.as_ref().map_or(stream_header(), |t| *t.header());
    out.header(&header).map_err(ShipError::Sink)?;
    let mut st = ShipStats {
        complete: since,
        ..ShipStats::default()
    };
    if m.last_lsn < since {
        log::warn!(
            "--since-lsn {since} is above the leader's last_lsn {}: is this the follower's leader?",
            m.last_lsn
        );
    }
    let mut last_beat = Instant::now();
    let mut truncate = Vec::new();
    encode_truncate(&mut truncate);
    // The leader's last_lsn, read since the WAL last showed progress: if
    // the WAL still ends short of it, frames were truncated away unread
    // (the writer appends a record before it writes the meta that covers
    // it, spec §5.3).
    let mut meta_lsn: Option<u64> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // The LSN of a WAL record that does not follow what was sent.
        let mut held: Option<u64> = None;
        let event = match tail.as_mut().map(|t| t.step()) {
            None => Event::Idle,
            Some(Ok(ev)) => ev,
            Some(Err(e)) => {
                // An unreadable WAL: catch up from the segments instead,
                // and try to open it again at the next poll.
                log::warn!(
                    "cannot read {}: {e}; catching up from the data segments",
                    root.join(WAL_FILE).display()
                );
                tail = None;
                Event::Idle
            }
        };
        match event {
            Event::Truncated => {
                meta_lsn = None;
                st.truncations += 1;
                if let Some(mt) = metrics {
                    mt.truncation();
                }
                log::debug!("WAL truncated or rewritten");
                out.frame(&[&truncate]).map_err(ShipError::Sink)?;
                out.header(&header).map_err(ShipError::Sink)?;
                continue;
            }
            Event::Record { lsn } => {
                meta_lsn = None;
                if lsn <= st.complete.saturating_add(1) {
                    if lsn > st.complete {
                        send_wal_record(&mut out, tail.as_ref(), &mut st, lsn, metrics)?;
                    }
                    continue;
                }
                held = Some(lsn);
            }
            Event::Idle => match meta_lsn {
                None => {
                    m = leader_meta(root)?;
                    meta_lsn = Some(m.last_lsn);
                    if let Some(mt) = metrics {
                        mt.set_leader_lsn(m.last_lsn);
                    }
                    if tail.is_none() {
                        tail = reopen_tail(root);
                    }
                    // Look at the WAL once more, after this meta.
                    continue;
                }
                Some(l) if l > st.complete => {}
                Some(_) => {
                    // Idle, and complete up to the leader's last_lsn.
                    out.flush().map_err(ShipError::Sink)?;
                    if !opts.follow {
                        break;
                    }
                    if opts.heartbeat.is_some_and(|hb| last_beat.elapsed() >= hb) {
                        last_beat = Instant::now();
                        let beat = Marker::Heartbeat {
                            leader_lsn: m.last_lsn,
                            unix_ms: unix_ms(),
                        };
                        out.frame(&[&beat.encode()]).map_err(ShipError::Sink)?;
                        out.flush().map_err(ShipError::Sink)?;
                    }
                    std::thread::sleep(opts.poll);
                    meta_lsn = None;
                    continue;
                }
            },
        }
        // Frames may have been missed: catch up from the data segments.
        m = leader_meta(root)?;
        catch_up(root, &m, &mut out, &mut st, metrics)?;
        meta_lsn = None;
        if let Some(lsn) = held {
            // Commits are sequential, so the catch-up's upto (read after
            // this record was in the WAL) is at least lsn - 1.
            if lsn > st.complete {
                send_wal_record(&mut out, tail.as_ref(), &mut st, lsn, metrics)?;
            }
        }
    }
    out.finish().map_err(ShipError::Sink)?;
    Ok(st)
}

fn send_wal_record<W: Write>(
    out: &mut FrameWriter<W>,
    tail: Option<&WalTail>,
    st: &mut ShipStats,
    lsn: u64,
    metrics: Option<&ShipMetrics>,
) -> Result<(), ShipError> {
    let rec = tail.expect("a record came from the tail").record();
    out.frame(&[rec]).map_err(ShipError::Sink)?;
    st.wal_records += 1;
    if lsn == st.complete.saturating_add(1) {
        st.complete = lsn;
        if let Some(m) = metrics {
            m.set_shipped_lsn(lsn);
        }
    }
    Ok(())
}

/// One catch-up for a follower complete up to `st.complete`, up to
/// `m.last_lsn` (read by the caller before the scan starts).
fn catch_up<W: Write>(
    root: &Path,
    m: &Meta,
    out: &mut FrameWriter<W>,
    st: &mut ShipStats,
    metrics: Option<&ShipMetrics>,
) -> Result<(), ShipError> {
    let since = st.complete;
    let upto = m.last_lsn.max(since);
    out.frame(&[&Marker::Begin { since, upto }.encode()])
        .map_err(ShipError::Sink)?;
    if let Some(mt) = metrics {
        mt.catchup_scan();
    }
    let started = Instant::now();
    // Sink errors come back through the scan as io errors: tell them apart.
    let mut sink_err = None;
    let r = scan::scan(root, m.page_size, since, upto, &mut |batch| {
        // One flush a batch: the follower sees progress every few MiB.
        out.bulk(batch).and_then(|()| out.flush()).map_err(|e| {
            let kind = e.kind();
            sink_err = Some(e);
            io::Error::from(kind)
        })?;
        // A batch is (record header, page) pairs; counted as they leave,
        // so a long scan shows its progress.
        if let Some(mt) = metrics {
            mt.add_catchup_pages(batch.len() as u64 / 2);
        }
        Ok(())
    });
    let r = match (r, sink_err) {
        (_, Some(e)) => return Err(ShipError::Sink(e)),
        (Err(e), None) => {
            return Err(ShipError::Leader {
                what: "data segments",
                path: root.to_path_buf(),
                source: e,
            })
        }
        (Ok(r), None) => r,
    };
    out.frame(&[&Marker::End { since, upto }.encode()])
        .map_err(ShipError::Sink)?;
    out.flush().map_err(ShipError::Sink)?;
    st.catchups += 1;
    st.catchup_pages += r.pages;
    st.complete = upto;
    if let Some(mt) = metrics {
        mt.set_shipped_lsn(upto);
    }
    log::info!(
        "catch-up since lsn {since}: {} pages, complete up to lsn {upto} ({:.3}s)",
        r.pages,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn reopen_tail(root: &Path) -> Option<WalTail> {
    WalTail::open(root).ok()
}

fn open_tail(root: &Path) -> Option<WalTail> {
    match WalTail::open(root) {
        Ok(t) => Some(t),
        Err(e) => {
            log::warn!(
                "cannot read {}: {e}; catching up from the data segments",
                root.join(WAL_FILE).display()
            );
            None
        }
    }
}
