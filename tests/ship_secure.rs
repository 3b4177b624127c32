//! `qdb-ship` on a secured link, end to end with real processes over
//! 127.0.0.1 (issue 11 "Done when" 1–3 for the leader tool, issue 13's
//! `qdb-ship --metrics-addr`): `--sink tls://` with a client certificate and
//! a token into our daemon, `--listen --tls server` serving QuiverDB's own
//! 1.3-alpha daemon, refusals (wrong token, no client certificate,
//! plaintext, `--allow`) that ship nothing and log one line, and a scrape
//! of its metrics after a catch-up, checked by `promtool`.
//!
//! Leaders are either a fixture stream applied by `qdb-apply` (a database
//! without a WAL: qdb-ship catches up from its segments) or the real
//! QuiverDB 1.2.6 leader (tests/peer).

mod common;
mod peer;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::pki::Pki;
use common::prom::{get, samples};
use common::*;
use peer::{s, Peer};

const WAIT: Duration = Duration::from_secs(60);
const CASE: &str = "c03-churn";
/// Info for the "listening on" and "metrics on" lines; peerlog at warn so
/// that the lines it rate-limits (logged at debug) stay out of the counts.
const LOG: (&str, &str) = ("RUST_LOG", "info");

/// A leader database: the fixture `case` applied by qdb-apply (no WAL).
fn fixture_leader(dir: &Path, case: &str) -> PathBuf {
    let l = dir.join("leader");
    let o = run("qdb-apply", &["--path", s(&l)], &stream(case));
    assert!(o.status.success(), "qdb-apply: {}", stderr(&o));
    l
}

/// The port of a "listening on 127.0.0.1:PORT" line.
fn port(c: &LoggedChild) -> u16 {
    let line = c.wait_log("listening on ", WAIT);
    line.rsplit(':').next().unwrap().trim().parse().unwrap()
}

/// The address of a "metrics on http://ADDR/metrics" line.
fn metrics_addr(c: &LoggedChild) -> SocketAddr {
    let line = c.wait_log("metrics on http://", WAIT);
    let a = line.rsplit("http://").next().unwrap();
    a.trim().trim_end_matches("/metrics").parse().unwrap()
}

/// `quiverdb_ship_*` samples of a scrape, by name (labels included).
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, text) = get(addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    samples(&text)
}

fn val(m: &BTreeMap<String, f64>, key: &str) -> u64 {
    *m.get(&format!("quiverdb_ship_{key}"))
        .unwrap_or_else(|| panic!("no {key} in {m:#?}")) as u64
}

/// Every file of a follower that says what it holds: meta, the complete
/// LSN and the data segments.
fn follower_files(db: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = vec![
        ("meta".to_string(), fs::read(db.join("meta")).unwrap()),
        (
            "complete-lsn".to_string(),
            fs::read(db.join("complete-lsn")).unwrap_or_default(),
        ),
    ];
    v.extend(segment_files(db));
    v
}

/// Our daemon listening on 127.0.0.1 with `extra` flags, fed one stream by
/// `qdb-ship ship_args --sink URL` (`{port}` in URL is the daemon's port);
/// returns the daemon's log once the session has ended.
fn ship_into_daemon(db: &Path, extra: &[String], ship_args: &[String], url: &str) -> String {
    let mut args = vec![
        "--path".to_string(),
        s(db).to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut d = LoggedChild::spawn("quiverdb-follower", &args, &[LOG]);
    let sink = url.replace("{port}", &port(&d).to_string());
    let mut ship: Vec<String> = ship_args.to_vec();
    ship.extend(["--sink".to_string(), sink]);
    let ship: Vec<&str> = ship.iter().map(String::as_str).collect();
    let o = run_timeout("qdb-ship", &ship, &[], WAIT);
    assert!(o.status.success(), "qdb-ship: {}", stderr(&o));
    d.wait_log("ended: ", WAIT);
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(WAIT).success(), "{}", d.stderr());
    d.stderr()
}

/// Issue 11 "Done when" 1 for qdb-ship: `--sink tls://` with a client
/// certificate and a token, into the daemon with `--tls server
/// --tls-client-ca --auth-token-file`: the follower ends with the same
/// meta, complete LSN and segments as through a plain `tcp://` sink, and
/// its segments equal the leader's.
#[test]
fn tls_sink_with_client_certificate_and_token_applies_what_the_plain_path_applies() {
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let l = fixture_leader(work.path(), CASE);
    let base = vec![
        "--path".to_string(),
        s(&l).to_string(),
        "--since-lsn".into(),
        "0".into(),
    ];

    let tls_db = work.path().join("tls");
    let mut ship = base.clone();
    ship.extend(pki.client_args());
    let log = ship_into_daemon(
        &tls_db,
        &pki.server_args(true),
        &ship,
        "tls://127.0.0.1:{port}",
    );
    assert!(log.contains("(TLS)"), "not a TLS session:\n{log}");

    let plain_db = work.path().join("plain");
    ship_into_daemon(&plain_db, &[], &base, "tcp://127.0.0.1:{port}");

    assert!(
        follower_files(&tls_db) == follower_files(&plain_db),
        "the TLS path applied something else than the plain path"
    );
    assert_eq!(read_last_lsn(&tls_db), read_last_lsn(&l));
    peer::assert_segments_equal(&l, &tls_db);
}

/// Issue 11 "Done when" 3: QuiverDB's 1.3-alpha daemon in `--tls client`
/// mode connects to `qdb-ship --listen --tls server` on a real QuiverDB
/// leader, is served from `--since-lsn` (it sends no resume request) and
/// ends with segments equal to the leader's, also after more writes.
#[test]
fn quiverdb_1_3_alpha_tls_client_follows_qdb_ship_listen_tls_server() {
    let Some(p) = Peer::get() else { return };
    let pki = Pki::new();
    let d = tempfile::tempdir().unwrap();
    let (l, f) = (d.path().join("leader"), d.path().join("alpha"));
    p.db_init(&l, 64);
    p.sessions(&l, 30, 3);
    let server = LoggedChild::spawn(
        "qdb-ship",
        &[
            "--path",
            s(&l),
            "--listen",
            "127.0.0.1:0",
            "--follow",
            "--since-lsn",
            "0",
            "--tls",
            "server",
            "--tls-cert",
            &pki.p("server.pem"),
            "--tls-key",
            &pki.p("server.key"),
        ],
        &[LOG],
    );
    let addr = format!("127.0.0.1:{}", port(&server));
    p.run(&["init", "--path", s(&f), "--page-size", "4096"]);
    let mut alpha = Command::new(p.bin.join("quiverdb-follower"))
        .args(["--path", s(&f), "--connect", &addr, "--tls", "client"])
        .args(["--tls-ca", &pki.p("ca.pem"), "--tls-domain", "localhost"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The alpha daemon updates meta only at the end of a stream: watch the
    // segments instead.
    let equal = |what: &str| {
        wait_for(
            what,
            WAIT,
            || server.stderr(),
            || f.join("data-000001.p1seg").exists() && segment_files(&f) == segment_files(&l),
        )
    };
    equal("the alpha daemon to catch up over TLS");
    p.sessions(&l, 10, 11);
    equal("the alpha daemon to follow over TLS");
    alpha.kill().unwrap();
    alpha.wait().unwrap();
    assert_eq!(
        server.count("(TLS) sent no resume request"),
        1,
        "{}",
        server.stderr()
    );
}

/// `qdb-ship --listen` with `extra` flags and metrics, on the fixture
/// leader: (the process, its port, its metrics address).
fn listener(l: &Path, extra: &[&str]) -> (LoggedChild, u16, SocketAddr) {
    let mut args = vec![
        "--path",
        s(l),
        "--listen",
        "127.0.0.1:0",
        "--follow",
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let c = LoggedChild::spawn("qdb-ship", &args, &[LOG]);
    let m = metrics_addr(&c);
    let p = port(&c);
    (c, p, m)
}

/// `qdb-recv --connect` to the server, `attempts` times: each run must get
/// no stream byte. Returns the last run's stderr.
fn refused_recv(port: u16, extra: &[&str], attempts: usize) -> String {
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["--connect", &addr, "--max-retries", "0"];
    args.extend_from_slice(extra);
    let mut last = String::new();
    for _ in 0..attempts {
        let o = run_timeout("qdb-recv", &args, &[], WAIT);
        assert!(
            o.stdout.is_empty(),
            "qdb-recv {extra:?} received {} bytes",
            o.stdout.len()
        );
        last = stderr(&o);
    }
    last
}

/// Wait until the server has counted `n` refusals, then check that it
/// logged exactly one warning line with `needle` (the rest are
/// rate-limited) and shipped nothing.
fn assert_refused(server: &LoggedChild, metrics: SocketAddr, n: u64, needle: &str) {
    wait_for(
        "the refusals to be counted",
        WAIT,
        || server.stderr(),
        || val(&scrape(metrics), "refused_total") >= n,
    );
    let m = scrape(metrics);
    assert_eq!(val(&m, "refused_total"), n, "{m:#?}");
    assert_eq!(val(&m, "bytes_total"), 0, "something was shipped");
    assert_eq!(val(&m, "connected_followers"), 0);
    let lines: Vec<String> = server
        .lines()
        .into_iter()
        .filter(|l| l.contains("WARN"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one warning line, got:\n{}",
        server.stderr()
    );
    assert!(lines[0].contains(needle), "{lines:?}");
}

/// Refused with nothing shipped and one log line for three attempts each:
/// a wrong token, a TLS client without a certificate, plaintext (a resume
/// request in the clear) against `--listen --tls server --tls-client-ca
/// --auth-token-file`; real clients (`qdb-recv --connect`).
#[test]
fn refused_clients_get_nothing_and_are_logged_once() {
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let l = fixture_leader(work.path(), "c02-overflow");
    let secure: Vec<String> = pki.server_args(true);
    let secure: Vec<&str> = secure.iter().map(String::as_str).collect();
    let (ca, cert, key) = (pki.p("ca.pem"), pki.p("client.pem"), pki.p("client.key"));
    let (token, wrong) = (pki.p("token"), pki.p("wrong-token"));
    let tls = [
        "--tls",
        "client",
        "--tls-ca",
        &ca,
        "--tls-domain",
        "localhost",
    ];

    // A wrong token.
    let (server, port, m) = listener(&l, &secure);
    let mut args = tls.to_vec();
    args.extend(["--tls-cert", &cert, "--tls-key", &key]);
    args.extend(["--auth-token-file", &wrong]);
    let err = refused_recv(port, &args, 3);
    assert!(err.contains("refused our token"), "{err}");
    assert_refused(&server, m, 3, "sent a wrong token");
    drop(server);

    // No client certificate.
    let (server, port, m) = listener(&l, &secure);
    let mut args = tls.to_vec();
    args.extend(["--auth-token-file", &token]);
    refused_recv(port, &args, 3);
    assert_refused(&server, m, 3, "presented no client certificate");
    drop(server);

    // Plaintext: a resume request sent in the clear.
    let (server, port, m) = listener(&l, &secure);
    refused_recv(port, &["--resume-from", s(&l)], 3);
    assert_refused(&server, m, 3, "sent plaintext, not TLS");
}

/// `--allow`: a peer outside the list is closed before anything is sent,
/// logged once for three attempts and counted.
#[test]
fn allow_list_refuses_other_peers() {
    let work = tempfile::tempdir().unwrap();
    let l = fixture_leader(work.path(), "c02-overflow");
    let (server, port, m) = listener(&l, &["--allow", "10.0.0.0/8"]);
    refused_recv(port, &[], 3);
    assert_refused(&server, m, 3, "not in --allow list");
}

/// `--metrics-addr`: after a catch-up served to a follower, the scrape
/// shows the shipped LSN equal to the leader's last LSN, one catch-up scan
/// with its pages, the bytes sent and one connected follower; `/healthz`
/// is 200 while serving; `promtool check metrics` accepts the exposition.
#[test]
fn metrics_after_a_catch_up_show_the_leader_lsn_shipped() {
    let work = tempfile::tempdir().unwrap();
    let l = fixture_leader(work.path(), CASE);
    let want = read_last_lsn(&l);
    let (server, port, m) = listener(&l, &[]);
    // 200 once the port is bound (the "listening on" line comes just before).
    wait_for("/healthz to be 200", WAIT, String::new, || {
        get(m, "/healthz").0 == 200
    });
    let f = work.path().join("follower");
    let addr = format!("127.0.0.1:{port}");
    let mut follower = LoggedChild::spawn(
        "quiverdb-follower",
        &["--path", s(&f), "--connect", &addr, "--resume-request"],
        &[],
    );
    wait_for(
        "the shipped LSN to reach the leader's",
        WAIT,
        || server.stderr(),
        || val(&scrape(m), "shipped_lsn") == want,
    );
    let s = scrape(m);
    assert_eq!(val(&s, "leader_lsn"), want);
    assert_eq!(val(&s, "catchup_scans_total"), 1, "{s:#?}");
    // Churn rewrote pages: the scan sends each page once, at its last LSN.
    let pages = val(&s, "catchup_pages_total");
    assert!(pages > 0 && pages <= want, "{pages} pages for {want} LSNs");
    assert!(val(&s, "bytes_total") > pages * 4096, "{s:#?}");
    assert_eq!(val(&s, "connected_followers"), 1);
    assert_eq!(val(&s, "refused_total"), 0);
    assert_eq!(s.get("quiverdb_ship_truncations_total"), Some(&0.0));
    let (_, text) = get(m, "/metrics");
    common::prom::promtool(&["check", "metrics"], &text);
    wait_for(
        "the follower to be complete",
        WAIT,
        || follower.stderr(),
        || f.join("meta").exists() && read_last_lsn(&f) == want,
    );
    follower.signal(libc::SIGTERM);
    assert!(follower.wait_exit(WAIT).success(), "{}", follower.stderr());
    wait_for(
        "the follower to be counted as gone",
        WAIT,
        || server.stderr(),
        || val(&scrape(m), "connected_followers") == 0,
    );
    peer::assert_segments_equal(&l, &f);
}

/// A bad TLS or token setup, or a bad `--sink`, is one `error:` line and
/// exit 2, before the leader is read or anything is bound or connected.
#[test]
fn bad_tls_configuration_is_exit_2_before_anything_is_touched() {
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    // No leader there: reading it would be exit 1 with another message.
    let missing = work.path().join("no-leader");
    let port = free_port();
    let tls = format!("tls://127.0.0.1:{port}");
    let (ca, cert, key) = (pki.p("ca.pem"), pki.p("server.pem"), pki.p("server.key"));
    let (client_key, token) = (pki.p("client.key"), pki.p("token"));
    let tcp = format!("tcp://127.0.0.1:{port}");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--sink", &tls],
            "--sink tls:// needs --tls-ca and --tls-domain",
        ),
        (
            vec![
                "--sink",
                &tls,
                "--tls-ca",
                "/nonexistent/ca.pem",
                "--tls-domain",
                "x",
            ],
            "cannot read --tls-ca /nonexistent/ca.pem",
        ),
        (
            vec![
                "--sink",
                &tls,
                "--tls-ca",
                &ca,
                "--tls-domain",
                "localhost",
                "--tls-cert",
                &cert,
            ],
            "needs both --tls-cert and --tls-key",
        ),
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--tls",
                "server",
                "--tls-cert",
                &cert,
            ],
            "--tls server needs --tls-cert and --tls-key",
        ),
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--tls",
                "server",
                "--tls-cert",
                &cert,
                "--tls-key",
                &client_key,
            ],
            "does not match the certificate",
        ),
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--tls",
                "server",
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-client-ca",
                &token,
            ],
            "holds no PEM certificate",
        ),
        (
            vec!["--sink", &tcp, "--auth-token-file", &token],
            "would send the token in the clear",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--tls", "client"],
            "with --listen use --tls server",
        ),
        (vec!["--tls-ca", &ca], "needs a network link"),
        (vec!["--allow", "10.0.0.0/8"], "--allow needs --listen"),
        (vec!["--sink", "udp://x:1"], "bad --sink"),
    ];
    // Something listening where the sinks point: a connect would be seen.
    let probe = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    probe.set_nonblocking(true).unwrap();
    for (extra, needle) in cases {
        let mut args = vec!["--path", s(&missing)];
        args.extend(extra.iter().copied());
        let o = run_timeout("qdb-ship", &args, &[], WAIT);
        assert_one_line_error(&o, 2, needle);
        assert!(probe.accept().is_err(), "{extra:?} connected to the sink");
    }
}

/// Handshake deadline: silent peers on `--listen --tls server` take no
/// streaming slot (`--max-clients 1`) and are closed after
/// `--handshake-timeout-secs`, counted as refused; a TLS follower that
/// connects meanwhile is served at once.
#[test]
fn silent_peers_do_not_hold_up_a_tls_follower_and_are_closed_at_the_deadline() {
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let l = fixture_leader(work.path(), "c02-overflow");
    let want = read_last_lsn(&l);
    let (cert, key, ca) = (pki.p("server.pem"), pki.p("server.key"), pki.p("ca.pem"));
    let (server, port, m) = listener(
        &l,
        &[
            "--tls",
            "server",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--handshake-timeout-secs",
            "5",
            "--max-clients",
            "1",
        ],
    );
    let silent: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let f = work.path().join("follower");
    let addr = format!("127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let _follower = LoggedChild::spawn(
        "quiverdb-follower",
        &[
            "--path",
            s(&f),
            "--connect",
            &addr,
            "--tls",
            "client",
            "--tls-ca",
            &ca,
            "--tls-domain",
            "localhost",
        ],
        &[],
    );
    wait_for(
        "the TLS follower to be served",
        WAIT,
        || server.stderr(),
        || val(&scrape(m), "shipped_lsn") == want,
    );
    // Served while the silent peers still hold their handshake slots
    // (their deadline has not passed yet).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "served after {:?}",
        started.elapsed()
    );
    for mut p in silent {
        p.set_read_timeout(Some(WAIT)).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(p.read(&mut b).unwrap_or(0), 0, "a silent peer got data");
    }
    wait_for(
        "the timed-out peers to be counted",
        WAIT,
        || server.stderr(),
        || val(&scrape(m), "refused_total") == 5,
    );
    assert!(
        server.stderr().contains("no TLS handshake within 5 s"),
        "{}",
        server.stderr()
    );
}
