//! `quiverdb-follower --metrics-addr`: the real daemon scraped over real
//! loopback HTTP after fixture streams; the numbers must agree with the
//! session log, with `qdb-ckpt --json` and with each other, the exposition
//! must pass `promtool check metrics`, and a bad address is refused before
//! anything is locked or bound.

mod child;
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use child::{Daemon, WAIT};
use common::prom::{get, promtool, samples};
use common::*;

/// The daemon's metrics address, from its "metrics on http://ADDR/metrics" line.
fn metrics_addr(d: &mut Daemon) -> SocketAddr {
    let l = d
        .all_log()
        .into_iter()
        .find(|l| l.contains("metrics on http://"))
        .expect("the daemon logs its metrics address");
    let a = l.rsplit("http://").next().unwrap();
    a.trim_end_matches("/metrics").parse().unwrap()
}

fn val(m: &BTreeMap<String, f64>, key: &str) -> u64 {
    *m.get(&format!("quiverdb_follower_{key}"))
        .unwrap_or_else(|| panic!("no {key} in {m:#?}")) as u64
}

/// A field of the daemon's "session ... ended: records=N applied=N ..." line.
fn logged(line: &str, field: &str) -> u64 {
    let v = line.rsplit(&format!(" {field}=")).next().unwrap();
    v.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn scrape_after_fixture_streams_matches_the_log_qdb_ckpt_and_promtool() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("db");
    let mut d = Daemon::start(&db, &["--metrics-addr", "127.0.0.1:0"]);
    let m_addr = metrics_addr(&mut d);
    // 200 once the listener runs (it may answer 503 for the first instant).
    wait_for("/healthz to answer 200", WAIT, String::new, || {
        get(m_addr, "/healthz") == (200, "ok\n".into())
    });
    let before = samples(&get(m_addr, "/metrics").1);
    assert_eq!(val(&before, "last_lsn"), 0);
    assert_eq!(val(&before, "build_info{version=\"0.1.0\"}"), 1);

    // Two sessions: c03's first 100 LSNs, then everything after 200 (a gap,
    // as when the leader truncated frames the follower never received).
    let s = stream("c03-churn");
    let first: Vec<u8> = {
        let mut b = s[..16].to_vec();
        for (lsn, _, a, z) in records(&s) {
            if lsn <= 100 {
                b.extend_from_slice(&s[a..z]);
            }
        }
        b
    };
    let second = since_lsn(&s, 200);
    let mut lines = Vec::new();
    for part in [&first, &second] {
        d.session(part);
        lines.push(d.log().last().unwrap().clone());
    }
    let last = read_last_lsn(&db);
    assert_eq!(last, 1191);

    let (code, text) = get(m_addr, "/metrics");
    assert_eq!(code, 200);
    let m = samples(&text);
    // The same numbers as qdb-ckpt --json (which reads meta).
    let o = run("qdb-ckpt", &["--path", db.to_str().unwrap(), "--json"], b"");
    let json = stdout(&o);
    // The gap after LSN 100 stops the complete LSN there (issue 9): the
    // follower knows it lacks 101..=200, and says so in both places.
    assert!(
        json.contains(&format!("\"last_lsn\":{last},\"complete_lsn\":100,")),
        "{json}"
    );
    assert_eq!(val(&m, "last_lsn"), last);
    assert_eq!(val(&m, "complete_lsn"), 100);
    // No heartbeat in these streams: the leader's LSN is unknown, lag 0.
    assert_eq!(val(&m, "leader_lsn"), 0);
    assert_eq!(val(&m, "lag_lsn"), 0);
    assert_eq!(val(&m, "lag_seconds"), 0);
    // Records and bytes: what the two session lines say, summed.
    let sum = |f: &str| lines.iter().map(|l| logged(l, f)).sum::<u64>();
    assert_eq!(val(&m, "records_total{result=\"applied\"}"), sum("applied"));
    assert_eq!(val(&m, "records_total{result=\"skipped\"}"), sum("skipped"));
    assert_eq!(val(&m, "records_total{result=\"ignored\"}"), sum("ignored"));
    assert!(sum("applied") > 0);
    assert_eq!(val(&m, "bytes_total{stage=\"decoded\"}"), sum("bytes"));
    // Uncompressed: every byte received is a byte decoded.
    assert_eq!(
        val(&m, "bytes_total{stage=\"received\"}"),
        (first.len() + second.len()) as u64
    );
    assert_eq!(
        val(&m, "sessions_total{outcome=\"ended\"}"),
        2,
        "{:#?}",
        d.all_log()
    );
    assert_eq!(val(&m, "sessions_total{outcome=\"error\"}"), 0);
    assert_eq!(val(&m, "sessions_total{outcome=\"refused\"}"), 0);
    assert_eq!(val(&m, "gaps_total"), 1);
    assert_eq!(val(&m, "connected"), 0);
    let commits = val(&m, "commits_total");
    assert!(commits >= 2, "{commits}");
    assert_eq!(val(&m, "commit_duration_seconds_count"), commits);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ts = val(&m, "last_commit_timestamp_seconds");
    assert!(ts <= now && ts + 60 > now, "{ts} vs {now}");
    promtool(&["check", "metrics"], &text);

    assert_eq!(get(m_addr, "/nope").0, 404);
    // A session whose stream is corrupt (a record CRC mismatch) counts as
    // an error.
    let mut bad = s[..16].to_vec();
    let (_, _, a, z) = records(&s)[0];
    bad.extend_from_slice(&s[a..z]);
    let last_byte = bad.len() - 1;
    bad[last_byte] ^= 0xff;
    d.session(&bad);
    let m = samples(&get(m_addr, "/metrics").1);
    assert_eq!(val(&m, "sessions_total{outcome=\"error\"}"), 1);
    // Bytes that are not a WAL stream never become a session: the handshake
    // refuses them, and they count as refused.
    let mut c = d.connect();
    let _ = std::io::Write::write_all(&mut c, b"not a WAL stream at all, sixteen+ bytes");
    drop(c);
    d.wait_line("refused connection from");
    let m = samples(&get(m_addr, "/metrics").1);
    assert_eq!(val(&m, "sessions_total{outcome=\"refused\"}"), 1);
    assert_eq!(val(&m, "sessions_total{outcome=\"error\"}"), 1);
}

#[test]
fn a_refused_peer_is_counted() {
    let t = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(
        &t.path().join("db"),
        &["--metrics-addr", "127.0.0.1:0", "--allow", "192.0.2.0/24"],
    );
    let m_addr = metrics_addr(&mut d);
    drop(d.connect());
    d.wait_line("not in --allow list");
    let m = samples(&get(m_addr, "/metrics").1);
    assert_eq!(val(&m, "sessions_total{outcome=\"refused\"}"), 1);
    assert_eq!(val(&m, "sessions_total{outcome=\"ended\"}"), 0);
}

#[test]
fn a_bad_metrics_address_is_refused_before_anything_is_touched() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("db");
    let p = db.to_str().unwrap();
    for bad in ["localhost", "127.0.0.1:http", "nowhere:9901", ""] {
        let o = run(
            "quiverdb-follower",
            &[
                "--path",
                p,
                "--listen",
                "127.0.0.1:0",
                "--metrics-addr",
                bad,
            ],
            b"",
        );
        assert_one_line_error(&o, 2, "--metrics-addr");
    }
    let cfg = t.path().join("f.toml");
    std::fs::write(&cfg, format!("path = {p:?}\nmetrics_addr = \"x:y\"\n")).unwrap();
    let o = run(
        "quiverdb-follower",
        &["--config", cfg.to_str().unwrap()],
        b"",
    );
    assert_one_line_error(&o, 2, "key `metrics_addr`");
    assert!(
        !db.exists(),
        "nothing may be created before the settings are valid"
    );

    // A port that is taken is a local error (exit 3), one line.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = run(
        "quiverdb-follower",
        &[
            "--path",
            p,
            "--listen",
            "127.0.0.1:0",
            "--metrics-addr",
            &addr,
        ],
        b"",
    );
    // (The daemon logs at info by default: the error is its last line.)
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    let last_line = err.lines().last().unwrap_or("");
    assert!(
        last_line.starts_with("error: cannot serve metrics on ") && last_line.contains(&addr),
        "{err}"
    );
}

#[test]
fn contrib_alert_rules_and_scrape_config_pass_promtool() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus");
    let rules = dir.join("quiverdb-follower.rules.yml");
    let text = std::fs::read_to_string(&rules).unwrap();
    // The rules the README promises: lag, gaps, no session.
    for metric in [
        "quiverdb_follower_lag_seconds",
        "quiverdb_follower_gaps_total",
        "quiverdb_follower_connected",
    ] {
        assert!(
            text.contains(metric),
            "{metric} missing from {}",
            rules.display()
        );
    }
    promtool(&["check", "rules", rules.to_str().unwrap()], "");
    promtool(
        &[
            "check",
            "config",
            dir.join("prometheus.yml").to_str().unwrap(),
        ],
        "",
    );
}
