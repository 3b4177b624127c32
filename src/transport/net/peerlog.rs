//! Rate-limited logging of refused and failed peers: a flood of bad
//! connections must not become a flood of log lines.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One log line per peer address per interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Lines per interval for all peers together.
pub const LOG_LINES_PER_INTERVAL: u32 = 20;

/// Rate-limited logging of refused and failed peers.
#[derive(Debug)]
pub struct PeerLog {
    inner: Mutex<PeerLogInner>,
    /// Every refusal and failure since start.
    total: AtomicU64,
    /// Told about every refusal, logged or not (the daemon's metrics).
    hook: Option<RefusedHook>,
}

/// A counter callback for refused peers.
#[derive(Clone)]
pub struct RefusedHook(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for RefusedHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefusedHook")
    }
}

#[derive(Debug)]
struct PeerLogInner {
    /// Per address: when it was last logged, and how many were not logged since.
    peers: HashMap<IpAddr, (Instant, u64)>,
    window: Instant,
    lines: u32,
    /// Not logged because of the overall limit, in this window.
    dropped: u64,
}

impl Default for PeerLog {
    fn default() -> Self {
        PeerLog {
            inner: Mutex::new(PeerLogInner {
                peers: HashMap::new(),
                window: Instant::now(),
                lines: 0,
                dropped: 0,
            }),
            total: AtomicU64::new(0),
            hook: None,
        }
    }
}

impl PeerLog {
    /// A log that also tells `hook` about every refusal.
    pub fn with_hook(hook: Option<RefusedHook>) -> PeerLog {
        PeerLog {
            hook,
            ..PeerLog::default()
        }
    }

    /// Count a refusal or failure of `peer`; log `msg` at warn unless this
    /// peer was logged within [`LOG_INTERVAL`] or the overall budget is spent.
    pub fn warn(&self, peer: SocketAddr, msg: &dyn std::fmt::Display) {
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(h) = &self.hook {
            (h.0)();
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now.duration_since(g.window) >= LOG_INTERVAL {
            if g.dropped > 0 {
                log::warn!(
                    "{} more refused or failed connections were not logged in the last {} s",
                    g.dropped,
                    LOG_INTERVAL.as_secs()
                );
            }
            g.window = now;
            g.lines = 0;
            g.dropped = 0;
        }
        // Bounded memory under a flood from many addresses.
        if g.peers.len() > 4096 {
            g.peers
                .retain(|_, (last, _)| now.duration_since(*last) < LOG_INTERVAL);
            if g.peers.len() > 4096 {
                g.peers.clear();
            }
        }
        let ip = peer.ip();
        let due = g
            .peers
            .get(&ip)
            .map_or(true, |(last, _)| now.duration_since(*last) >= LOG_INTERVAL);
        if !due || g.lines >= LOG_LINES_PER_INTERVAL {
            if due {
                g.dropped += 1;
            }
            g.peers.entry(ip).or_insert((now, 0)).1 += 1;
            // Still there for whoever asks (RUST_LOG=...net::peerlog=debug).
            log::debug!("{msg}");
            return;
        }
        g.lines += 1;
        let suppressed = g.peers.insert(ip, (now, 0)).map_or(0, |(_, n)| n);
        if suppressed > 0 {
            log::warn!(
                "{msg} ({suppressed} more from {ip} not logged; {total} refused or failed in all)"
            );
        } else {
            log::warn!("{msg} ({total} refused or failed in all)");
        }
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_log_counts_everything_and_bounds_lines() {
        let log = PeerLog::default();
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        for _ in 0..1000 {
            log.warn(a, &"x");
        }
        assert_eq!(log.total(), 1000);
        let g = log.inner.lock().unwrap();
        assert_eq!(g.lines, 1);
        assert_eq!(g.peers[&a.ip()].1, 999);
    }
}
