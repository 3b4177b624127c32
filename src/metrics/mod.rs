//! Prometheus metrics for the follower daemon and the leader tool
//! (`qdb-ship`): a cheap, clone-able handle whose hot-path
//! updates are single atomic operations, and a tiny HTTP server
//! ([`http`]) that serves `/metrics` and `/healthz`.
//!
//! The exposition is Prometheus text format 0.0.4 (the `prometheus` crate's
//! encoder): it is what both a Prometheus server and `promtool check
//! metrics` read. (OpenMetrics-only encoders emit an `info` type and
//! counter families without `_total`, which promtool 2.x rejects.)
//!
//! Values that depend on "now" (`lag_seconds`) or on something not yet known
//! (`complete_lsn` before the complete-LSN file exists, the leader's LSN
//! before a heartbeat) are derived at scrape time from atomics, so nothing
//! on the apply path computes them.

pub mod http;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Commit latency buckets: a commit is two to four fsyncs, 0.3 ms on a fast
/// SSD to a second on a struggling disk.
const COMMIT_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Prometheus gauges are signed; an LSN past i64::MAX (a hostile stream can
/// carry u64::MAX) is shown as i64::MAX rather than as a negative number.
fn gauge_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What an exporter served over HTTP must provide.
pub trait Exporter: Send + Sync + 'static {
    /// The metrics in Prometheus text format.
    fn encode(&self) -> String;
    /// True while the process does its job (`/healthz` answers 200).
    fn healthy(&self) -> bool;
}

/// The replication numbers that the systemd STATUS line, `/metrics` and
/// `qdb-ckpt --json` share.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Snapshot {
    /// `meta.last_lsn` (durable).
    pub last_lsn: u64,
    /// Every LSN up to this is applied (== last_lsn until the complete-LSN
    /// file is maintained).
    pub complete_lsn: u64,
    /// The leader's LSN, once the stream has told it (a heartbeat).
    pub leader_lsn: Option<u64>,
    /// `leader_lsn - last_lsn` (0 when caught up), when the leader's LSN is known.
    pub lag_lsn: Option<u64>,
    /// Seconds since the follower last advanced while the leader is ahead; 0
    /// when caught up or when the leader's LSN is unknown.
    pub lag_seconds: f64,
}

impl Snapshot {
    /// `last_lsn=N complete_lsn=N[ leader_lsn=N lag_lsn=N lag_seconds=S]`:
    /// the systemd STATUS text.
    pub fn status(&self) -> String {
        let mut s = format!(
            "last_lsn={} complete_lsn={}",
            self.last_lsn, self.complete_lsn
        );
        if let (Some(l), Some(lag)) = (self.leader_lsn, self.lag_lsn) {
            s += &format!(
                " leader_lsn={l} lag_lsn={lag} lag_seconds={:.1}",
                self.lag_seconds
            );
        }
        s
    }
}

/// The follower's metrics. Cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    started: Instant,
    healthy: AtomicBool,
    // Raw state behind the derived gauges.
    last: AtomicU64,
    complete: AtomicU64,
    complete_known: AtomicBool,
    leader: AtomicU64,
    leader_known: AtomicBool,
    /// Nanoseconds after `started` when last_lsn last advanced.
    advanced_at: AtomicU64,
    // Gauges.
    last_lsn: IntGauge,
    complete_lsn: IntGauge,
    leader_lsn: IntGauge,
    lag_lsn: IntGauge,
    lag_seconds: Gauge,
    connected: IntGauge,
    last_commit_ts: Gauge,
    // Counters, each label value resolved once (an Arc'd atomic).
    applied: IntCounter,
    skipped: IntCounter,
    ignored: IntCounter,
    received: IntCounter,
    decoded: IntCounter,
    ended: IntCounter,
    error: IntCounter,
    refused: IntCounter,
    gaps: IntCounter,
    commits: IntCounter,
    commit_duration: Histogram,
}

/// Register a metric; names are fixed and unique, so failure is a bug.
fn reg<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    r.register(Box::new(m.clone()))
        .expect("metric names are unique");
    m
}

fn int_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    reg(r, IntGauge::new(name, help).expect("valid metric"))
}

fn counter_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    reg(
        r,
        IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
    )
}

fn build_info(r: &Registry) {
    let g = reg(
        r,
        IntGaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1; the labels tell the version of the running binary.",
            ),
            &["version"],
        )
        .expect("valid metric"),
    );
    g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh set, all zero, named `quiverdb_follower_*`.
    pub fn new() -> Metrics {
        let r = Registry::new_custom(Some("quiverdb_follower".into()), None).expect("valid prefix");
        let records = counter_vec(
            &r,
            "records_total",
            "CRC-valid WAL records: applied (written), skipped (not newer than the follower's page), ignored (TRUNCATE and unknown types).",
            "result",
        );
        let bytes = counter_vec(
            &r,
            "bytes_total",
            "Stream bytes: received from the network (compressed, if so), decoded (raw WAL consumed by apply).",
            "stage",
        );
        let sessions = counter_vec(
            &r,
            "sessions_total",
            "Leader sessions: ended (the stream ended cleanly), error (stream, decode or network error), refused (peer not in --allow).",
            "outcome",
        );
        let commit_duration = reg(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "commit_duration_seconds",
                    "Group commits: fsync of the data written, then meta (tmp, fsync, rename, folder fsync).",
                )
                .buckets(COMMIT_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
        );
        build_info(&r);
        let inner = Inner {
            started: Instant::now(),
            healthy: AtomicBool::new(false),
            last: AtomicU64::new(0),
            complete: AtomicU64::new(0),
            complete_known: AtomicBool::new(false),
            leader: AtomicU64::new(0),
            leader_known: AtomicBool::new(false),
            advanced_at: AtomicU64::new(0),
            last_lsn: int_gauge(&r, "last_lsn", "meta.last_lsn: the highest LSN durably applied (the resume point)."),
            complete_lsn: int_gauge(&r, "complete_lsn", "Every LSN up to this one is applied (equals last_lsn until the stream tells gaps apart)."),
            leader_lsn: int_gauge(&r, "leader_lsn", "The leader's LSN as last told by the stream (0 until a heartbeat is seen)."),
            lag_lsn: int_gauge(&r, "lag_lsn", "leader_lsn - last_lsn (0 when caught up or while the leader's LSN is unknown)."),
            lag_seconds: reg(&r, Gauge::new("lag_seconds", "Seconds since the follower last advanced while the leader is ahead; 0 when caught up.").expect("valid metric")),
            connected: int_gauge(&r, "connected", "1 while a leader session is open."),
            last_commit_ts: reg(&r, Gauge::new("last_commit_timestamp_seconds", "Unix time of the last commit that advanced meta.").expect("valid metric")),
            applied: records.with_label_values(&["applied"]),
            skipped: records.with_label_values(&["skipped"]),
            ignored: records.with_label_values(&["ignored"]),
            received: bytes.with_label_values(&["received"]),
            decoded: bytes.with_label_values(&["decoded"]),
            ended: sessions.with_label_values(&["ended"]),
            error: sessions.with_label_values(&["error"]),
            refused: sessions.with_label_values(&["refused"]),
            gaps: reg(&r, IntCounter::new("gaps_total", "LSN gaps seen: the stream skipped LSNs the follower never received.").expect("valid metric")),
            commits: reg(&r, IntCounter::new("commits_total", "Group commits that advanced meta.").expect("valid metric")),
            commit_duration,
            registry: r,
        };
        Metrics {
            inner: Arc::new(inner),
        }
    }

    pub fn record_applied(&self) {
        self.inner.applied.inc();
    }
    pub fn record_skipped(&self) {
        self.inner.skipped.inc();
    }
    pub fn record_ignored(&self) {
        self.inner.ignored.inc();
    }
    pub fn gap(&self) {
        self.inner.gaps.inc();
    }
    pub fn add_received(&self, n: u64) {
        self.inner.received.inc_by(n);
    }
    pub fn add_decoded(&self, n: u64) {
        self.inner.decoded.inc_by(n);
    }
    pub fn session_ended(&self) {
        self.inner.ended.inc();
    }
    pub fn session_error(&self) {
        self.inner.error.inc();
    }
    pub fn session_refused(&self) {
        self.inner.refused.inc();
    }
    pub fn set_connected(&self, on: bool) {
        self.inner.connected.set(i64::from(on));
    }

    fn since_start(&self) -> u64 {
        u64::try_from(self.inner.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The durable last_lsn at open (no commit, but the lag clock starts).
    pub fn set_last_lsn(&self, lsn: u64) {
        let i = &self.inner;
        if lsn > i.last.swap(lsn, Ordering::Relaxed) || i.advanced_at.load(Ordering::Relaxed) == 0 {
            i.advanced_at.store(self.since_start(), Ordering::Relaxed);
        }
        i.last_lsn.set(gauge_i64(lsn));
    }

    /// A commit made meta durable with `last_lsn`; it took `took`.
    pub fn committed(&self, last_lsn: u64, took: Duration) {
        let i = &self.inner;
        i.commits.inc();
        i.commit_duration.observe(took.as_secs_f64());
        i.last_commit_ts.set(unix_now());
        self.set_last_lsn(last_lsn);
    }

    /// The leader's LSN as the stream told it (heartbeat records).
    pub fn set_leader_lsn(&self, lsn: u64) {
        self.inner.leader.store(lsn, Ordering::Relaxed);
        self.inner.leader_known.store(true, Ordering::Relaxed);
    }

    /// Every LSN up to `lsn` is applied (from the complete-LSN file).
    pub fn set_complete_lsn(&self, lsn: u64) {
        self.inner.complete.store(lsn, Ordering::Relaxed);
        self.inner.complete_known.store(true, Ordering::Relaxed);
    }

    /// `/healthz` answers 200 only while this is set: the DB is locked and
    /// the listener or connector runs.
    pub fn set_healthy(&self, on: bool) {
        self.inner.healthy.store(on, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let i = &self.inner;
        let last = i.last.load(Ordering::Relaxed);
        let complete = if i.complete_known.load(Ordering::Relaxed) {
            i.complete.load(Ordering::Relaxed)
        } else {
            last
        };
        let leader = i
            .leader_known
            .load(Ordering::Relaxed)
            .then(|| i.leader.load(Ordering::Relaxed));
        let lag_lsn = leader.map(|l| l.saturating_sub(last));
        let lag_seconds = match lag_lsn {
            Some(lag) if lag > 0 => {
                let at = i.advanced_at.load(Ordering::Relaxed);
                Duration::from_nanos(self.since_start().saturating_sub(at)).as_secs_f64()
            }
            _ => 0.0,
        };
        Snapshot {
            last_lsn: last,
            complete_lsn: complete,
            leader_lsn: leader,
            lag_lsn,
            lag_seconds,
        }
    }

    /// The gauges this type owns, from `snapshot` (scrape time only).
    fn refresh(&self) {
        let s = self.snapshot();
        let i = &self.inner;
        i.complete_lsn.set(gauge_i64(s.complete_lsn));
        i.leader_lsn.set(gauge_i64(s.leader_lsn.unwrap_or(0)));
        i.lag_lsn.set(gauge_i64(s.lag_lsn.unwrap_or(0)));
        i.lag_seconds.set(s.lag_seconds);
    }
}

fn encode_registry(r: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&r.gather(), &mut buf)
        .expect("encoding to memory cannot fail");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

impl Exporter for Metrics {
    fn encode(&self) -> String {
        self.refresh();
        encode_registry(&self.inner.registry)
    }
    fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }
}

/// The leader side (`qdb-ship --metrics-addr`), named `quiverdb_ship_*`.
/// Every stream of the process updates the same set.
#[derive(Clone)]
pub struct ShipMetrics {
    inner: Arc<ShipInner>,
}

impl std::fmt::Debug for ShipMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipMetrics").finish_non_exhaustive()
    }
}

struct ShipInner {
    registry: Registry,
    healthy: AtomicBool,
    /// The highest shipped LSN of any stream: several streams (followers
    /// at different points) race to raise it, and it never goes down.
    shipped: AtomicU64,
    shipped_lsn: IntGauge,
    leader_lsn: IntGauge,
    catchup_scans: IntCounter,
    catchup_pages: IntCounter,
    truncations: IntCounter,
    bytes: IntCounter,
    refused: IntCounter,
    followers: IntGauge,
}

impl Default for ShipMetrics {
    fn default() -> Self {
        ShipMetrics::new()
    }
}

impl ShipMetrics {
    pub fn new() -> ShipMetrics {
        let r = Registry::new_custom(Some("quiverdb_ship".into()), None).expect("valid prefix");
        build_info(&r);
        let c =
            |name: &str, help: &str| reg(&r, IntCounter::new(name, help).expect("valid metric"));
        let inner = ShipInner {
            shipped: AtomicU64::new(0),
            shipped_lsn: int_gauge(
                &r,
                "shipped_lsn",
                "Every change up to this LSN has been sent to a follower (the highest over all streams).",
            ),
            leader_lsn: int_gauge(
                &r,
                "leader_lsn",
                "The leader's meta.last_lsn as last read (0 until read).",
            ),
            catchup_scans: c(
                "catchup_scans_total",
                "Catch-up scans of the leader's data segments (frames may have been missed, or a follower resumed from before the WAL).",
            ),
            catchup_pages: c("catchup_pages_total", "Page images sent by catch-up scans."),
            truncations: c(
                "truncations_total",
                "WAL truncations or rewrites noticed (each stream counts those it notices).",
            ),
            bytes: c(
                "bytes_total",
                "Stream bytes sent to followers (after compression and before TLS).",
            ),
            refused: c(
                "refused_total",
                "Connections refused or failed before streaming (--allow, TLS, token, --max-clients, handshake deadline).",
            ),
            followers: int_gauge(&r, "connected_followers", "Followers being streamed to now."),
            healthy: AtomicBool::new(false),
            registry: r,
        };
        ShipMetrics {
            inner: Arc::new(inner),
        }
    }
    /// A stream has sent every change up to `lsn`; the gauge shows the
    /// highest such LSN of all streams.
    pub fn set_shipped_lsn(&self, lsn: u64) {
        // The gauge is set from this at scrape time: setting it here
        // could let a slower stream's older value land last.
        self.inner.shipped.fetch_max(lsn, Ordering::Relaxed);
    }
    pub fn set_leader_lsn(&self, lsn: u64) {
        self.inner.leader_lsn.set(gauge_i64(lsn));
    }
    pub fn catchup_scan(&self) {
        self.inner.catchup_scans.inc();
    }
    pub fn add_catchup_pages(&self, n: u64) {
        self.inner.catchup_pages.inc_by(n);
    }
    pub fn truncation(&self) {
        self.inner.truncations.inc();
    }
    pub fn add_bytes(&self, n: u64) {
        self.inner.bytes.inc_by(n);
    }
    pub fn refused(&self) {
        self.inner.refused.inc();
    }
    pub fn follower_connected(&self) {
        self.inner.followers.inc();
    }
    pub fn follower_disconnected(&self) {
        self.inner.followers.dec();
    }
    pub fn set_healthy(&self, on: bool) {
        self.inner.healthy.store(on, Ordering::Relaxed);
    }
}

impl Exporter for ShipMetrics {
    fn encode(&self) -> String {
        let i = &self.inner;
        i.shipped_lsn
            .set(gauge_i64(i.shipped.load(Ordering::Relaxed)));
        encode_registry(&i.registry)
    }
    fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_derived_from_the_leader_lsn_only_when_known() {
        let m = Metrics::new();
        m.set_last_lsn(10);
        let s = m.snapshot();
        assert_eq!((s.leader_lsn, s.lag_lsn, s.lag_seconds), (None, None, 0.0));
        assert_eq!(s.complete_lsn, 10);
        assert_eq!(s.status(), "last_lsn=10 complete_lsn=10");
        m.set_leader_lsn(15);
        std::thread::sleep(Duration::from_millis(20));
        let s = m.snapshot();
        assert_eq!(s.lag_lsn, Some(5));
        assert!(s.lag_seconds >= 0.02, "{s:?}");
        m.committed(15, Duration::from_micros(700));
        let s = m.snapshot();
        assert_eq!((s.lag_lsn, s.lag_seconds), (Some(0), 0.0));
        m.set_complete_lsn(12);
        assert_eq!(m.snapshot().complete_lsn, 12);
    }

    #[test]
    fn exposition_names_every_metric() {
        let m = Metrics::new();
        m.record_applied();
        m.committed(3, Duration::from_millis(1));
        let text = m.encode();
        for name in [
            "quiverdb_follower_last_lsn 3",
            "quiverdb_follower_complete_lsn 3",
            "quiverdb_follower_leader_lsn 0",
            "quiverdb_follower_lag_lsn 0",
            "quiverdb_follower_lag_seconds 0",
            "quiverdb_follower_records_total{result=\"applied\"} 1",
            "quiverdb_follower_bytes_total{stage=\"received\"} 0",
            "quiverdb_follower_sessions_total{outcome=\"refused\"} 0",
            "quiverdb_follower_gaps_total 0",
            "quiverdb_follower_commits_total 1",
            "quiverdb_follower_commit_duration_seconds_count 1",
            "quiverdb_follower_last_commit_timestamp_seconds ",
            "quiverdb_follower_connected 0",
            "quiverdb_follower_build_info{version=",
        ] {
            assert!(text.contains(name), "{name:?} missing from\n{text}");
        }
        let ship = ShipMetrics::new();
        ship.set_shipped_lsn(7);
        // A follower further behind does not lower it.
        ship.set_shipped_lsn(3);
        let text = ship.encode();
        for name in [
            "quiverdb_ship_shipped_lsn 7",
            "quiverdb_ship_leader_lsn 0",
            "quiverdb_ship_catchup_scans_total 0",
            "quiverdb_ship_catchup_pages_total 0",
            "quiverdb_ship_truncations_total 0",
            "quiverdb_ship_bytes_total 0",
            "quiverdb_ship_refused_total 0",
            "quiverdb_ship_connected_followers 0",
            "quiverdb_ship_build_info{version=",
        ] {
            assert!(text.contains(name), "{name:?} missing from\n{text}");
        }
    }
}
