//! The `quiverdb-follower` daemon: the same stages as the shell pipeline
//! `qdb-recv | qdb-unzip | qdb-apply`, wired in-process with bounded pipes so
//! network, decompression and disk overlap, plus the lifetime DB lock,
//! checkpoints, signals and systemd notification.
//!
//! Session model: one leader connection at a time; each connection is one
//! stream with its own header and its own decoder (as in 1.x). A session
//! that fails because of its stream (corrupt record, leader gone mid-record,
//! decompression error) is logged and the next session is served; a local
//! failure (disk, permissions, fsync) ends the daemon with an error so that a
//! supervisor restarts it.

pub mod config;
mod count;

use std::net::Shutdown;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::daemon::config::{Mode, Settings};
use crate::error::{Error, StreamError};
use crate::format::wal::StreamEnd;
use crate::metrics::http::{MetricsError, MetricsServer};
use crate::metrics::Metrics;
use crate::replica::apply::{ApplyOptions, Follower, SessionStats};
use crate::storage::fs::{Fs, StdFs};
use crate::storage::meta;
use crate::transport::codec::{self, Compression, UnzipOptions};
use crate::transport::handshake::{Conn, Expect};
use crate::transport::link::Link;
use crate::transport::net::{self, AllowList, Backoff, NetError, RefusedHook, SessionOptions};
use crate::transport::pipe;
use crate::transport::serve::{serve, After, Endpoint, Secure};
use count::{CountReads, CountWrites};

/// Chunks in flight between two stages (128 KiB each): bounded memory.
const PIPE_CHUNKS: usize = 16;

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Db(#[from] Error),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Check what [`resolve`](config::resolve) cannot check without the file
/// system, before the database is locked or a port bound (exit status 2
/// for the caller): a checkpoint path that can never be written would
/// otherwise be found out only after a whole session was applied.
pub fn preflight(settings: &Settings) -> Result<(), Error> {
    if let Some(file) = &settings.checkpoint_file {
        meta::check_checkpoint_path(&StdFs, file)?;
    }
    Ok(())
}

/// Run the daemon until `shutdown` is set (SIGTERM/SIGINT) or a local error.
/// `link` is `settings.link` loaded (checked before anything is locked or
/// bound); `hangup`, set by SIGHUP, re-reads its certificates and keys.
pub fn run(
    settings: &Settings,
    link: &Link,
    shutdown: Arc<AtomicBool>,
    hangup: Arc<AtomicBool>,
) -> Result<(), DaemonError> {
    let fs: Arc<dyn Fs> = Arc::new(StdFs);
    let opts = ApplyOptions {
        fsync: settings.fsync,
        max_pages: settings.max_pages,
        buckets: settings.buckets,
        ..ApplyOptions::default()
    };
    let mut follower = Follower::open(fs.clone(), &settings.path, opts)?;
    log::info!(
        "follower database {} locked (last_lsn={} complete_lsn={})",
        settings.path.display(),
        follower.meta().map_or(0, |m| m.last_lsn),
        follower.complete_lsn()
    );
    // Always kept (a few atomics): the systemd STATUS line reads it too.
    let metrics = Metrics::new();
    follower.set_metrics(metrics.clone());
    let _server = match settings.metrics_addr {
        Some(addr) => Some(MetricsServer::start(addr, Arc::new(metrics.clone()))?),
        None => None,
    };
    // The checkpoint is the resume point: the complete LSN (src/complete.rs).
    let ckpt = Checkpointer::start(fs, settings, follower.complete_lsn(), metrics.clone());
    {
        let ckpt = ckpt.clone();
        follower.set_complete_hook(move |c| ckpt.durable(c));
    }
    let endpoint = match &settings.mode {
        Mode::Listen(addr) => {
            if settings.default_mode {
                log::info!("neither --listen nor --connect given: listening on the default {addr}");
            }
            Endpoint::Listen {
                addr: addr.clone(),
                allow: AllowList(settings.allow.clone()),
            }
        }
        Mode::Connect(addr) => Endpoint::Connect {
            addr: addr.clone(),
            backoff: Backoff::new(settings.reconnect, settings.backoff_cap),
            max_retries: None,
        },
    };
    // READY=1 once the socket is bound (or connecting starts), with the
    // follower's position as of now.
    let ready = |_| {
        metrics.set_healthy(true);
        notify_status(&metrics, "READY=1");
    };
    let secure = Secure {
        link: link.clone(),
        // Listen mode proves a connection by its first bytes too: the whole
        // 16-byte header when the stream is uncompressed, else one byte (a
        // compressed stream starts with its codec's header).
        expect: match settings.decompress {
            Compression::None => Expect::WalHeader,
            _ => Expect::AnyByte,
        },
        session: session_options(settings),
        on_refused: Some({
            let m = metrics.clone();
            RefusedHook(Arc::new(move || m.session_refused()))
        }),
    };
    let res = serve(
        endpoint,
        &secure,
        &shutdown,
        hangup,
        ready,
        |mut stream, peer| {
            if settings.resume_request {
                // Ask a qdb-ship --listen server to resume after what we
                // hold completely (docs/protocol.md), after TLS and the
                // token. Opt-in: a server that never reads it and closes
                // makes the kernel reset the connection (RST), which can
                // drop the end of the stream before we read it.
                let request = crate::format::marker::resume_request(follower.complete_lsn());
                if let Err(e) = std::io::Write::write_all(&mut stream, &request) {
                    log::warn!("cannot send the resume request to {peer}: {e}");
                }
            }
            let stats = session(
                settings,
                &mut follower,
                &ckpt,
                &metrics,
                stream,
                peer.to_string(),
                &shutdown,
            )?;
            Ok(if shutdown.load(Ordering::Relaxed) {
                After::Stop
            } else if stats.applied > 0 {
                After::Progress
            } else {
                // Nothing new (an empty session, or a server replaying what the
                // follower already holds): the connect loop waits before retrying.
                After::NoProgress
            })
        },
    );
    metrics.set_healthy(false);
    notify("STOPPING=1");
    ckpt.stop();
    if res.is_ok() {
        log::info!(
            "stopped (last_lsn={} complete_lsn={})",
            follower.meta().map_or(0, |m| m.last_lsn),
            follower.complete_lsn()
        );
    }
    res
}

/// One leader connection: net -> (decode) -> apply, then a checkpoint.
fn session(
    settings: &Settings,
    follower: &mut Follower,
    ckpt: &Checkpointer,
    metrics: &Metrics,
    mut stream: Conn,
    peer: String,
    shutdown: &Arc<AtomicBool>,
) -> Result<SessionStats, DaemonError> {
    let started = Instant::now();
    let complete_before = follower.complete_lsn();
    // Configured when the connection was made (transport::serve).
    let sopts = session_options(settings);
    let mut stats = SessionStats::default();
    // Kept to unblock the network stage if apply stops first.
    let closer = stream.tcp().try_clone().ok();
    metrics.set_connected(true);
    let (net_w, net_r) = pipe::pipe(PIPE_CHUNKS);
    let mut net_w = CountWrites {
        inner: net_w,
        metrics: metrics.clone(),
    };
    let net_thread = {
        let shutdown = shutdown.clone();
        thread::Builder::new()
            .name("net".into())
            .spawn(move || {
                let r = net::pump(&mut stream, &mut net_w, &sopts, &shutdown);
                drop(net_w);
                r
            })
            .expect("spawn net thread")
    };
    let counted = |r| CountReads {
        inner: r,
        metrics: metrics.clone(),
    };
    let (decode_thread, apply_res) = match settings.decompress {
        Compression::None => (None, follower.apply(counted(net_r), &mut stats)),
        mode => {
            let uopts = UnzipOptions {
                zstd_window_log_max: settings.zstd_window_log_max,
            };
            let (mut dec_w, dec_r) = pipe::pipe(PIPE_CHUNKS);
            let t = thread::Builder::new()
                .name("decode".into())
                .spawn(move || codec::unzip_with(net_r, &mut dec_w, mode, uopts))
                .expect("spawn decode thread");
            (Some(t), follower.apply(counted(dec_r), &mut stats))
        }
    };
    // Apply is done (end of stream, or an error): closing the socket wakes
    // the network stage even if the leader is idle, and the decode stage
    // then ends on its closed input or output.
    if let Some(c) = &closer {
        let _ = c.shutdown(Shutdown::Both);
    }
    let net_res = net_thread.join().expect("net thread");
    let dec_res = decode_thread.map(|t| t.join().expect("decode thread"));
    metrics.set_connected(false);

    if let Err(e) = &apply_res {
        if !e.is_stream_error() {
            metrics.session_error();
            log::error!("session from {peer}: {e}");
            return Err(DaemonError::Db(apply_res.unwrap_err()));
        }
    }
    // The idle timeout closes the input, so apply (and the decoder) then
    // see an early end: a leader that sent nothing reads as "input ended
    // after 0 bytes ... the sender sent nothing usable", a compressed one as
    // a cut stream. Neither is the reason; the timeout is, so it is what the
    // log says (a real stream error, seen before the input went quiet, is
    // still logged as such).
    let idle = match &net_res {
        Err(NetError::IdleTimeout { secs, .. }) => Some(*secs),
        _ => None,
    };
    let ended_by_idle =
        |e: &Error| idle.is_some() && matches!(e, Error::Stream(StreamError::ShortHeader { .. }));
    // A decode failure (other than apply having stopped reading) is the
    // cause of whatever apply then saw: e.g. raw WAL sent to --decompress
    // gzip reaches apply as an empty stream ("input ended after 0 bytes"),
    // which would hide the real reason ("use --decompress none or auto").
    let dec_failed = matches!(&dec_res, Some(Err(e)) if !e.is_broken_pipe());
    match (&dec_res, &apply_res) {
        (Some(Err(e)), _) if dec_failed => log::warn!("session from {peer} failed: {e}"),
        (_, Err(e)) if !ended_by_idle(e) => log::warn!("session from {peer} failed: {e}"),
        _ => {}
    }
    let mut failed = apply_res.is_err() || dec_failed;
    if let Some(secs) = idle {
        failed = true;
        log::warn!(
            "session from {peer} ended by the idle timeout after {secs} s: nothing received for \
             {secs} s (--idle-timeout-secs); the leader may be gone or idle, the next session is served"
        );
    }
    // Upstream problems matter only when apply did not already explain the end.
    if apply_res.is_ok() && !dec_failed && idle.is_none() {
        match dec_res {
            Some(Ok(o)) if o.truncated => {
                log::warn!(
                    "session from {peer}: compressed stream cut off before its end (partial tail)"
                )
            }
            _ => {}
        }
        match net_res {
            Err(e) if !e.is_output() => {
                failed = true;
                log::warn!("session from {peer}: {e}")
            }
            _ => {}
        }
    }
    if let Some(StreamEnd::PartialTail { bytes }) = stats.end {
        log::warn!("session from {peer} ended inside a record (partial tail): its {bytes} bytes were ignored");
    }
    // Counted before the "ended" line, so whoever reads the log sees it counted.
    if failed {
        metrics.session_error();
    } else {
        metrics.session_ended();
    }
    log::info!(
        "session from {peer} ended: {stats} elapsed={:.3}s",
        started.elapsed().as_secs_f64()
    );
    if follower.meta().is_some() {
        ckpt.session_end(stats.complete_lsn, stats.complete_lsn != complete_before)
            .map_err(DaemonError::Db)?;
    }
    notify_status(metrics, "");
    Ok(stats)
}

/// Writes the checkpoint file: periodically while sessions run (only LSNs
/// that meta already holds durably) and after each session.
#[derive(Clone)]
struct Checkpointer {
    inner: Option<Arc<CkptInner>>,
}

struct CkptInner {
    fs: Arc<dyn Fs>,
    file: PathBuf,
    /// (durable last_lsn, last written, stopping)
    state: Mutex<(u64, u64, bool)>,
    wake: Condvar,
    /// Serialises writers of the file (the tmp name is shared).
    write: Mutex<()>,
    /// For the STATUS line sent with each checkpoint.
    metrics: Metrics,
}

impl Checkpointer {
    fn start(
        fs: Arc<dyn Fs>,
        settings: &Settings,
        last_lsn: u64,
        metrics: Metrics,
    ) -> Checkpointer {
        let Some(file) = settings.checkpoint_file.clone() else {
            return Checkpointer { inner: None };
        };
        // Leftovers of a write interrupted by a crash. Removed only now,
        // under the database lock: before it, another daemon on the same
        // follower (and so the same checkpoint) could be mid-write.
        if let Some(name) = file.file_name() {
            if let Err(e) = meta::remove_stale_temps(&*fs, &meta::checkpoint_dir(&file), name) {
                log::warn!("{e}");
            }
        }
        let inner = Arc::new(CkptInner {
            fs,
            file,
            state: Mutex::new((last_lsn, u64::MAX, false)),
            wake: Condvar::new(),
            write: Mutex::new(()),
            metrics,
        });
        let interval = settings.checkpoint_interval;
        let t = inner.clone();
        thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || t.run(interval))
            .expect("spawn checkpoint thread");
        Checkpointer { inner: Some(inner) }
    }

    /// The complete LSN is now durably `lsn` (called from the commit hook).
    fn durable(&self, lsn: u64) {
        if let Some(i) = &self.inner {
            i.state.lock().unwrap().0 = lsn;
        }
    }

    /// The session ended at complete LSN `lsn`; `moved`: it advanced it.
    /// The file is written only when its value changes; the log line is
    /// there for every session that moved the resume point.
    fn session_end(&self, lsn: u64, moved: bool) -> Result<(), Error> {
        let Some(i) = &self.inner else { return Ok(()) };
        let written = {
            let mut st = i.state.lock().unwrap();
            st.0 = lsn;
            st.1
        };
        // When the file already says so (the periodic writer got there
        // first, or the session brought nothing new), rewriting it would
        // cost a temporary file, two fsyncs and a rename for nothing, and a
        // server that keeps replaying what the follower holds makes many
        // such sessions.
        if written != lsn {
            i.write_now(lsn)?;
        } else if !moved {
            log::debug!("checkpoint unchanged (complete_lsn={lsn})");
            return Ok(());
        }
        log::info!("checkpoint complete_lsn={lsn} -> {}", i.file.display());
        Ok(())
    }

    fn stop(&self) {
        if let Some(i) = &self.inner {
            i.state.lock().unwrap().2 = true;
            i.wake.notify_all();
        }
    }
}

impl CkptInner {
    fn write_now(&self, lsn: u64) -> Result<(), Error> {
        let _w = self.write.lock().unwrap();
        // The periodic thread reads `lsn` before it takes this lock; if a
        // session end wrote a newer value in between, writing `lsn` now would
        // move the file backwards (and could leave it behind meta at exit).
        let written = self.state.lock().unwrap().1;
        if written != u64::MAX && lsn < written {
            return Ok(());
        }
        meta::write_checkpoint(&*self.fs, &self.file, lsn)?;
        self.state.lock().unwrap().1 = lsn;
        notify_status(&self.metrics, "");
        Ok(())
    }

    fn run(&self, interval: Duration) {
        let mut warnings = RepeatLimit::new(REPEAT_INTERVAL);
        loop {
            let (durable, written, stopping) = {
                let g = self.state.lock().unwrap();
                let (g, _) = self.wake.wait_timeout(g, interval).unwrap();
                *g
            };
            if stopping {
                return;
            }
            if written == u64::MAX || durable > written {
                match self.write_now(durable) {
                    Ok(()) => {
                        log::debug!(
                            "checkpoint complete_lsn={durable} -> {}",
                            self.file.display()
                        )
                    }
                    // Retried at the next tick (a failure at session end is
                    // fatal); a lasting cause fails every tick, so the same
                    // line is logged at most once per REPEAT_INTERVAL.
                    Err(e) => {
                        warnings.warn(&repeat_key(&e), &format!("periodic checkpoint failed: {e}"))
                    }
                }
            }
        }
    }
}

/// The same warning is logged at most once per this interval.
const REPEAT_INTERVAL: Duration = Duration::from_secs(60);

/// What makes two failures "the same warning": the operation, the path
/// and the kind of error, not the whole text, which names a fresh random
/// temporary file each time.
fn repeat_key(e: &Error) -> String {
    match e {
        Error::Io { what, path, source } => {
            format!("{what} {}: {:?}", path.display(), source.kind())
        }
        other => other.to_string(),
    }
}

/// Logs a warning, unless the same one was logged less than `interval`
/// ago; the next time it is logged it says how often it was held back.
struct RepeatLimit {
    interval: Duration,
    /// The last warning's key, when it was logged, and how many times it
    /// came again since.
    last: Option<(String, Instant, u64)>,
}

impl RepeatLimit {
    fn new(interval: Duration) -> RepeatLimit {
        RepeatLimit {
            interval,
            last: None,
        }
    }

    /// Whether the warning `key` is to be logged now, and how many repeats
    /// were held back.
    fn admit(&mut self, key: &str, now: Instant) -> Option<u64> {
        match &mut self.last {
            Some((text, at, held)) if text == key => {
                if now.duration_since(*at) < self.interval {
                    *held += 1;
                    return None;
                }
                let n = *held;
                *at = now;
                *held = 0;
                Some(n)
            }
            _ => {
                self.last = Some((key.to_string(), now, 0));
                Some(0)
            }
        }
    }

    /// Log `msg` unless a warning with the same `key` was logged less than
    /// the interval ago.
    fn warn(&mut self, key: &str, msg: &str) {
        match self.admit(key, Instant::now()) {
            Some(0) => log::warn!("{msg}"),
            Some(n) => log::warn!("{msg} (repeated {n} more times since it was last logged)"),
            None => {}
        }
    }
}

fn session_options(settings: &Settings) -> SessionOptions {
    SessionOptions {
        idle_timeout: settings.idle_timeout,
        keepalive: settings.keepalive,
    }
}

/// The STATUS line carries what `/metrics` and `qdb-ckpt --json` carry:
/// last and complete LSN, and the lag once the leader's LSN is known.
fn notify_status(metrics: &Metrics, extra: &str) {
    let mut msg = format!("STATUS={}", metrics.snapshot().status());
    if !extra.is_empty() {
        msg = format!("{extra}\n{msg}");
    }
    notify(&msg);
}

/// Tell systemd (`Type=notify`) about a state change: one datagram of
/// `KEY=VALUE` lines to `$NOTIFY_SOCKET` (a file-system path, as systemd
/// sets it), nothing when it is unset. Failures are only logged: the
/// follower works the same without a service manager.
pub fn notify(msg: &str) {
    let states: Vec<sd_notify::NotifyState> = msg
        .lines()
        .map(|line| match line.split_once('=') {
            Some(("READY", "1")) => sd_notify::NotifyState::Ready,
            Some(("STOPPING", "1")) => sd_notify::NotifyState::Stopping,
            Some(("STATUS", status)) => sd_notify::NotifyState::Status(status),
            _ => sd_notify::NotifyState::Custom(line),
        })
        .collect();
    if let Err(e) = sd_notify::notify(false, &states) {
        log::debug!("sd_notify failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_warning_is_admitted_once_per_interval_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut r = RepeatLimit::new(Duration::from_secs(60));
        assert_eq!(r.admit("a", t0), Some(0));
        for i in 1..=100 {
            assert_eq!(r.admit("a", t0 + Duration::from_millis(i * 10)), None);
        }
        // Another text is news, and resets the count.
        assert_eq!(r.admit("b", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(r.admit("b", t0 + Duration::from_secs(3)), None);
        assert_eq!(r.admit("b", t0 + Duration::from_secs(62)), Some(1));
        assert_eq!(r.admit("b", t0 + Duration::from_secs(63)), None);
    }
}
