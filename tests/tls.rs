//! Secure transport, end to end over 127.0.0.1 with real processes:
//! certificates are made for each test with the `openssl` CLI; the leader is
//! this test process speaking through the library's client API (the one
//! `qdb-ship --sink tls://` uses) or `openssl s_client`.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::{Pki, TOKEN};
use common::*;
use quiverdb_follower::auth::{self, Token};
use quiverdb_follower::tls::{connect_tls, ClientTls, TlsStream};
use rustls_pki_types::pem::PemObject;

const CASE: &str = "c02-overflow";
/// A process whose stderr (and stdout) go to files, so a test can wait for
/// log lines and read the output afterwards.
struct Proc {
    child: Child,
    err: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    fn spawn(name: &str, args: &[String], stdout: Option<&Path>) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let err = dir.path().join("stderr");
        let out = match stdout {
            Some(p) => Stdio::from(fs::File::create(p).unwrap()),
            None => Stdio::null(),
        };
        let child = Command::new(bin(name))
            .args(args)
            // Refusals beyond the rate limit are logged at debug.
            .env(
                "RUST_LOG",
                "info,quiverdb_follower::transport::net::peerlog=debug",
            )
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Proc {
            child,
            err,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        wait_for(
            needle,
            timeout,
            || self.log(),
            || self.log().contains(needle),
        );
        let log = self.log();
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap()
            .to_string()
    }

    /// The port from "listening on 127.0.0.1:PORT".
    fn port(&self) -> u16 {
        let line = self.wait_log("listening on ", Duration::from_secs(20));
        line.rsplit(':').next().unwrap().trim().parse().unwrap()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// The exit status, within 20 s (else the test fails with the log).
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < end, "did not end\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send `bytes` as a leader through TLS (and the token, if given).
fn send(port: u16, tls: &ClientTls, token: Option<&str>, bytes: &[u8]) -> std::io::Result<()> {
    let addr = format!("127.0.0.1:{port}");
    let mut s = connect_tls(&addr, tls, Duration::from_secs(10)).map_err(std::io::Error::other)?;
    if let Some(t) = token {
        auth::send_token(&mut s, &Token::from_bytes(t.as_bytes()), &addr)
            .map_err(std::io::Error::other)?;
    }
    s.write_all(bytes)?;
    s.close()
}

fn daemon(pki: &Pki, db: &Path, extra: &[&str], token: bool) -> Proc {
    let mut args = vec![
        "--path".to_string(),
        db.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(pki.server_args(token));
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::spawn("quiverdb-follower", &args, None)
}

#[test]
fn qdb_recv_with_mutual_tls_feeds_qdb_apply() {
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("stream");
    let mut args = vec!["--listen".to_string(), "127.0.0.1:0".into()];
    args.extend(pki.server_args(true));
    let mut recv = Proc::spawn("qdb-recv", &args, Some(&out));
    let port = recv.port();
    let stream = stream(CASE);
    send(port, &pki.client(Some("client")), Some(TOKEN), &stream).unwrap();
    let status = recv.wait_exit();
    assert!(status.success(), "{}", recv.log());
    assert_eq!(fs::read(&out).unwrap(), stream);
    let db = work.path().join("db");
    let o = run(
        "qdb-apply",
        &["--path", db.to_str().unwrap()],
        &fs::read(&out).unwrap(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_matches_expected(&db, CASE);
}

#[test]
fn daemon_with_mutual_tls_and_token_applies() {
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("db");
    let mut d = daemon(&pki, &db, &[], true);
    let port = d.port();
    send(
        port,
        &pki.client(Some("client")),
        Some(TOKEN),
        &stream(CASE),
    )
    .unwrap();
    d.wait_log("ended: ", Duration::from_secs(20));
    assert!(d.stop().success(), "{}", d.log());
    assert!(d.log().contains("(TLS)"), "{}", d.log());
    assert_matches_expected(&db, CASE);
}

#[test]
fn refused_peers_apply_nothing_and_each_says_why() {
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("db");
    let d = daemon(&pki, &db, &["--handshake-timeout-secs", "5"], true);
    let port = d.port();
    let wal = stream(CASE);

    // Plaintext to the TLS port.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = plain.write_all(&wal);
    d.wait_log("sent plaintext, not TLS", Duration::from_secs(10));

    // A real client without a certificate: openssl s_client.
    let s_client = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-CAfile",
        ])
        .arg(pki.path("ca.pem"))
        .args(["-servername", "localhost", "-quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        let mut c = s_client;
        let _ = c.stdin.take().unwrap().write_all(&wal);
        d.wait_log("presented no client certificate", Duration::from_secs(10));
        let _ = c.kill();
        let _ = c.wait();
    }

    // Our client: no certificate, another CA's, an expired one, a wrong token.
    let _ = send(port, &pki.client(None), Some(TOKEN), &wal);
    let _ = send(port, &pki.client(Some("rogue")), Some(TOKEN), &wal);
    d.wait_log("not signed by the trusted CA", Duration::from_secs(10));
    let _ = send(port, &pki.client(Some("expired")), Some(TOKEN), &wal);
    d.wait_log("certificate has expired", Duration::from_secs(10));
    let e = send(
        port,
        &pki.client(Some("client")),
        Some("ffffffffffffffffffffffffffffffff"),
        &wal,
    )
    .unwrap_err();
    assert!(e.to_string().contains("refused our token"), "{e}");
    d.wait_log("sent a wrong token", Duration::from_secs(10));
    // A valid client that sends no token.
    let _ = send(port, &pki.client(Some("client")), None, &wal);
    d.wait_log("did not send the auth preamble", Duration::from_secs(10));

    assert!(
        !db.join("meta").exists(),
        "something was applied\n{}",
        d.log()
    );
    // Each refusal is one line.
    let log = d.log();
    assert!(
        !log.contains("panicked") && !log.contains("Error {") && !log.contains("Custom {"),
        "{log}"
    );
}

#[test]
fn bad_tls_configuration_is_exit_2_before_anything_is_touched() {
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("db");
    let dbs = db.display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--tls".into(),
                "server".into(),
                "--tls-cert".into(),
                pki.p("server.pem"),
            ],
            "--tls server needs --tls-cert and --tls-key",
        ),
        (
            vec![
                "--tls".into(),
                "server".into(),
                "--tls-cert".into(),
                pki.p("missing.pem"),
                "--tls-key".into(),
                pki.p("server.key"),
            ],
            "cannot read --tls-cert",
        ),
        (
            vec![
                "--tls".into(),
                "server".into(),
                "--tls-cert".into(),
                pki.p("server.pem"),
                "--tls-key".into(),
                pki.p("client.key"),
            ],
            "does not match the certificate",
        ),
        (
            vec![
                "--tls".into(),
                "server".into(),
                "--tls-cert".into(),
                pki.p("server.pem"),
                "--tls-key".into(),
                pki.p("server.key"),
                "--tls-client-ca".into(),
                pki.p("token"),
            ],
            "holds no PEM certificate",
        ),
        (
            vec!["--auth-token-file".into(), pki.p("token")],
            "would send the token in the clear",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec![
            "--path".to_string(),
            dbs.clone(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(extra.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run("quiverdb-follower", &args, b"");
        assert_one_line_error(&o, 2, needle);
        assert!(!db.exists(), "{extra:?} touched the database");
        let mut rargs = vec!["--listen", "127.0.0.1:0"];
        rargs.extend(extra.iter().map(String::as_str));
        let o = run("qdb-recv", &rargs, b"");
        assert_one_line_error(&o, 2, needle);
    }
}

#[test]
fn config_files_of_the_1_3_alpha_follower_work_unchanged() {
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("db");
    let cfg = work.path().join("follower.toml");
    fs::write(
        &cfg,
        format!(
            "path = {:?}\nlisten = \"127.0.0.1:0\"\ntls = \"server\"\ntls_cert = {:?}\ntls_key = {:?}\n",
            db.display().to_string(),
            pki.p("server.pem"),
            pki.p("server.key")
        ),
    )
    .unwrap();
    let mut d = Proc::spawn(
        "quiverdb-follower",
        &["--config".into(), cfg.display().to_string()],
        None,
    );
    let port = d.port();
    send(port, &pki.client(None), None, &stream(CASE)).unwrap();
    d.wait_log("ended: ", Duration::from_secs(20));
    assert!(d.stop().success(), "{}", d.log());
    assert_matches_expected(&db, CASE);
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let l = s.lines().find(|l| l.starts_with(field)).unwrap();
    l.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn silent_and_dripping_peers_do_not_hold_up_the_leader() {
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("db");
    let d = daemon(&pki, &db, &[], false);
    let port = d.port();
    let idle_fds = open_fds(d.child.id());

    // 25 silent peers and 25 that drip a TLS record header one byte at a time.
    let mut silent: Vec<TcpStream> = (0..25)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dripper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut drips: Vec<TcpStream> = (0..25)
                .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
                .collect();
            let hello = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01];
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < hello.len() * 10 {
                for s in &mut drips {
                    let _ = s.write_all(&hello[i % hello.len()..i % hello.len() + 1]);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
            drips
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let busy_fds = open_fds(d.child.id());
    let rss_kib = vm_kib(d.child.id(), "VmRSS:");

    let started = Instant::now();
    send(port, &pki.client(Some("client")), None, &stream(CASE)).unwrap();
    d.wait_log("ended: ", Duration::from_secs(20));
    let took = started.elapsed();
    // The contract is "not held up"; 1 s is the aim, 5 s leaves room for a
    // machine shared with compilers.
    assert!(
        took < Duration::from_secs(5),
        "leader applied after {took:?}\n{}",
        d.log()
    );
    assert!(
        busy_fds <= idle_fds + 50 + 10,
        "{busy_fds} fds with 50 pending peers (idle: {idle_fds})"
    );
    // 50 handshake threads with small stacks: a few MiB, not one per peer.
    assert!(
        rss_kib < 64 * 1024,
        "{rss_kib} KiB resident with 50 pending peers"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let drips = dripper.join().unwrap();

    // The pending peers are closed at the handshake deadline.
    let mut buf = [0u8; 1];
    silent[0]
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert_eq!(silent[0].read(&mut buf).unwrap_or(0), 0);
    drop(silent);
    drop(drips);
    let mut d = d;
    assert!(d.stop().success());
    assert_matches_expected(&db, CASE);
    // Refusals are rate-limited: far fewer lines than refused peers.
    let lines = d
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("handshake"))
        .count();
    assert!(lines < 50, "{lines} lines about handshakes\n{}", d.log());
}

#[test]
fn sighup_serves_the_renewed_certificate_without_dropping_the_session() {
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("db");
    // The daemon reads a copy that the test renews in place.
    fs::copy(pki.path("server.pem"), work.path().join("cert.pem")).unwrap();
    fs::copy(pki.path("server.key"), work.path().join("key.pem")).unwrap();
    let args: Vec<String> = vec![
        "--path".into(),
        db.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--tls".into(),
        "server".into(),
        "--tls-cert".into(),
        work.path().join("cert.pem").display().to_string(),
        "--tls-key".into(),
        work.path().join("key.pem").display().to_string(),
    ];
    let mut d = Proc::spawn("quiverdb-follower", &args, None);
    let port = d.port();
    let client = pki.client(None);
    let addr = format!("127.0.0.1:{port}");
    let wal = stream(CASE);
    let half = wal.len() / 2;

    // A session runs with the old certificate...
    let mut first: TlsStream = connect_tls(&addr, &client, Duration::from_secs(10)).unwrap();
    let old = first.peer_certificate().unwrap();
    first.write_all(&wal[..half]).unwrap();
    first.flush().unwrap();
    d.wait_log("accepted from", Duration::from_secs(10));

    // ...the certificate is renewed and SIGHUP sent...
    pki.issue("renewed", "ca", "localhost", "serverAuth", "60", 9);
    fs::copy(pki.path("renewed.pem"), work.path().join("cert.pem")).unwrap();
    fs::copy(pki.path("renewed.key"), work.path().join("key.pem")).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_log("reloaded TLS certificate", Duration::from_secs(10));

    // ...the next connection is served with the new one (and then refused:
    // one leader at a time)...
    let second = connect_tls(&addr, &client, Duration::from_secs(10)).unwrap();
    let new = second.peer_certificate().unwrap();
    assert_ne!(old, new);
    let renewed_pem = fs::read(pki.path("renewed.pem")).unwrap();
    let renewed = rustls_pki_types::CertificateDer::pem_slice_iter(&renewed_pem)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(new, renewed.to_vec());
    drop(second);

    // ...and the first session goes on to the end.
    first.write_all(&wal[half..]).unwrap();
    first.close().unwrap();
    d.wait_log("ended: ", Duration::from_secs(20));
    assert!(d.stop().success(), "{}", d.log());
    assert_matches_expected(&db, CASE);
}

/// A TLS server in this process that sends `bytes` to one client, through
/// the API `qdb-ship --listen --tls server` uses: `ServerTls::accept`, and
/// the token check when `token` is set.
fn serve_once(
    pki: &Pki,
    client_ca: bool,
    token: Option<&str>,
    bytes: Vec<u8>,
) -> (u16, std::thread::JoinHandle<Result<(), String>>) {
    use quiverdb_follower::tls::{ServerTls, ServerTlsFiles};
    let server = ServerTls::load(ServerTlsFiles {
        cert: pki.path("server.pem"),
        key: pki.path("server.key"),
        client_ca: client_ca.then(|| pki.path("ca.pem")),
    })
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let token = token.map(|t| Token::from_bytes(t.as_bytes()));
    let t = std::thread::spawn(move || {
        let (tcp, peer) = listener.accept().map_err(|e| e.to_string())?;
        let mut s = server
            .accept(tcp, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        if let Some(t) = &token {
            auth::check_token(&mut s, t, &peer.to_string()).map_err(|e| e.to_string())?;
        }
        s.write_all(&bytes).map_err(|e| e.to_string())?;
        s.close().map_err(|e| e.to_string())
    });
    (port, t)
}

#[test]
fn qdb_recv_connects_with_a_client_certificate_and_a_token() {
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("stream");
    let wal = stream(CASE);
    let (port, server) = serve_once(&pki, true, Some(TOKEN), wal.clone());
    let mut args: Vec<String> = ["--connect", &format!("127.0.0.1:{port}"), "--tls", "client"]
        .map(String::from)
        .to_vec();
    args.extend(pki.client_args());
    let mut recv = Proc::spawn("qdb-recv", &args, Some(&out));
    server.join().unwrap().unwrap();
    let status = recv.wait_exit();
    assert!(status.success(), "{}", recv.log());
    assert!(
        fs::read(&out).unwrap() == wal,
        "output differs from the stream"
    );
}

/// The real QuiverDB 1.3-alpha follower (`--tls client`) applies a stream
/// served by our TLS server API. Skipped, with a note, when the peer build
/// (`../shared/peers/build-quiverdb`) is not available.
#[test]
fn quiverdb_1_3_alpha_follower_applies_a_stream_from_our_tls_server() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/build-quiverdb");
    let built = Command::new(&script).stderr(Stdio::null()).output();
    let Some(qdb) = built
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.join("quiverdb-follower").exists())
    else {
        eprintln!("skipped: {} is not available", script.display());
        return;
    };
    let pki = Pki::new();
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("db");
    // The 1.3-alpha follower needs an existing database.
    let init = Command::new(qdb.join("quiverdb"))
        .args(["init", "--path"])
        .arg(&db)
        .args(["--page-size", "4096"])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let (port, server) = serve_once(&pki, false, None, stream(CASE));
    let log = work.path().join("peer.log");
    let mut peer = Command::new(qdb.join("quiverdb-follower"))
        .args(["--path"])
        .arg(&db)
        .args([
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--tls",
            "client",
            "--tls-ca",
        ])
        .arg(pki.path("ca.pem"))
        .args(["--tls-domain", "localhost"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let peer_log = || fs::read_to_string(&log).unwrap_or_default();
    while !server.is_finished() {
        if let Some(st) = peer.try_wait().unwrap() {
            panic!(
                "the 1.3-alpha follower exited ({st}) before connecting\n{}",
                peer_log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    server.join().unwrap().unwrap();
    let want: Vec<(String, Vec<u8>)> = expected_files(CASE)
        .into_iter()
        .filter(|(n, _)| n != "meta")
        .collect();
    let end = Instant::now() + Duration::from_secs(30);
    while segment_files(&db) != want {
        assert!(
            Instant::now() < end,
            "the 1.3-alpha follower's segments differ from the leader's\n{}",
            peer_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = peer.kill();
    let _ = peer.wait();
}

#[test]
fn qdb_recv_connect_gives_up_on_a_server_it_cannot_verify() {
    // A server whose certificate is from another CA than --tls-ca.
    let pki = Pki::new();
    let other = Pki::new();
    let (port, server) = serve_once(&other, false, None, stream(CASE));
    let o = run_timeout(
        "qdb-recv",
        &[
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--max-retries",
            "0",
            "--tls",
            "client",
            "--tls-ca",
            &pki.p("ca.pem"),
            "--tls-domain",
            "localhost",
        ],
        &[],
        Duration::from_secs(30),
    );
    assert_one_line_error(&o, 1, "not signed by the trusted CA");
    assert!(stdout(&o).is_empty());
    let _ = server.join();
}
