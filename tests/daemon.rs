//! quiverdb-follower end to end: the real daemon as a child process, real
//! 127.0.0.1 sockets, and leaders played by this process through the
//! library's `ship` module (byte-identical to `quiverdb wal-ship` output).
//!
//! Every wait has a deadline and every loop is bounded, so a bug fails a test
//! instead of hanging it. Only loopback addresses are used; no test binds a
//! wildcard address. Follower files are compared byte for byte with the
//! QuiverDB 1.2.5 fixtures.

mod common;

use std::fs;
use std::io::{BufWriter, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;
use quiverdb_follower::codec::Compression;
use testkit::leader::{ship, ShipOptions};

const DAEMON: &str = "quiverdb-follower";
/// Deadline of any single wait for the daemon (generous: debug build, 2 shared cores).
const WAIT: Duration = Duration::from_secs(30);
/// SIGTERM/SIGINT must end the daemon within 2 s; this bound only catches a hang.
const STOP_BOUND: Duration = Duration::from_secs(5);

/// A follower DB and a checkpoint file in a fresh temp dir.
struct Dirs {
    tmp: tempfile::TempDir,
    db: PathBuf,
    ckpt: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let t = tempfile::tempdir().unwrap();
        let db = t.path().join("follower_db");
        let ckpt = t.path().join("last_lsn");
        Dirs { tmp: t, db, ckpt }
    }

    fn root(&self) -> &Path {
        self.tmp.path()
    }

    fn db(&self) -> &str {
        self.db.to_str().unwrap()
    }

    fn ckpt(&self) -> &str {
        self.ckpt.to_str().unwrap()
    }
}

/// Run the daemon for something that must end at once (errors, --print-config).
fn run_quick(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    run_timeout(DAEMON, args, env, WAIT)
}

fn spawn(args: &[&str]) -> LoggedChild {
    LoggedChild::spawn(DAEMON, args, &[])
}

/// The address from the daemon's "listening on ADDR" log line.
fn listen_addr(d: &LoggedChild) -> SocketAddr {
    let line = d.wait_log("listening on ", WAIT);
    let addr = line.rsplit("listening on ").next().unwrap().trim();
    addr.parse()
        .unwrap_or_else(|e| panic!("{addr:?} in {line:?}: {e}"))
}

/// A leader connection to the daemon, as wal-ship opens it.
fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, WAIT).expect("connect to the daemon");
    s.set_nodelay(true).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

fn opts(compress: Compression, finish: bool) -> ShipOptions {
    ShipOptions {
        compress,
        flush_every: 1,
        finish,
        ..ShipOptions::default()
    }
}

/// Ship `stream` (at most `max` records) over `conn` like wal-ship; the
/// connection stays open (the caller drops it to end the session).
fn ship_on(conn: &TcpStream, stream: &[u8], o: ShipOptions, max: Option<u64>) -> u64 {
    ship(stream, BufWriter::new(conn), o, max).expect("ship to the daemon")
}

/// One whole session: connect, ship all of `stream`, close.
fn session(addr: SocketAddr, stream: &[u8], compress: Compression) {
    let conn = connect(addr);
    ship_on(&conn, stream, opts(compress, true), None);
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The checkpoint file's value; it must be bare decimal (no newline).
fn read_ckpt(file: &Path) -> Option<u64> {
    let text = match fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("{}: {e}", file.display()),
    };
    assert!(
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()),
        "checkpoint file must hold decimal digits only, got {text:?}"
    );
    Some(text.parse().unwrap())
}

/// Wait for the info line the daemon writes after a session's checkpoint.
fn wait_checkpoint_log(d: &LoggedChild, lsn: u64, file: &Path) {
    d.wait_log(
        &format!("checkpoint complete_lsn={lsn} -> {}", file.display()),
        WAIT,
    );
}

/// SIGTERM (or SIGINT) and assert a prompt exit with status 0.
fn stop(d: &mut LoggedChild, sig: i32) {
    let t = Instant::now();
    d.signal(sig);
    let status = d.wait_exit(STOP_BOUND + Duration::from_secs(5));
    let took = t.elapsed();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", d.stderr());
    assert!(
        took < STOP_BOUND,
        "took {took:?} to stop; stderr:\n{}",
        d.stderr()
    );
    assert!(!d.stderr().contains("panicked"), "stderr:\n{}", d.stderr());
}

/// The settings `--print-config` reports, as key -> raw TOML value.
fn print_config(args: &[&str]) -> std::collections::BTreeMap<String, String> {
    let mut all = args.to_vec();
    all.push("--print-config");
    let o = run_quick(&all, &[]);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    assert_eq!(stderr(&o), "", "{args:?}");
    stdout(&o)
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(" = ").unwrap_or_else(|| panic!("{l:?}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn config_merge_cli_over_file_over_defaults() {
    let d = Dirs::new();
    // Paths inside the temp dir: nothing outside it is touched even if a
    // bug made the daemon start instead of printing.
    let root = d.root().to_str().unwrap();
    let (cfg_db, cfg_ckpt) = (format!("{root}/cfg_db"), format!("{root}/cfg_ckpt"));
    let (cli_db, cli_ckpt) = (format!("{root}/cli_db"), format!("{root}/cli_ckpt"));
    let q = |p: &str| format!("{p:?}");
    let (q_cfg_db, q_cfg_ckpt, q_cli_db, q_cli_ckpt) =
        (q(&cfg_db), q(&cfg_ckpt), q(&cli_db), q(&cli_ckpt));
    let cfg = d.root().join("follower.toml");
    fs::write(
        &cfg,
        format!(
            r#"# as in the README
path = {q_cfg_db}
listen = "127.0.0.1:7000"
decompress = "gzip"
reconnect_ms = 500
backoff_cap_ms = 4000
checkpoint_file = {q_cfg_ckpt}
checkpoint_interval_ms = 250
"#
        ),
    )
    .unwrap();
    let connect_cfg = d.root().join("connect.toml");
    fs::write(
        &connect_cfg,
        format!("path = {q_cfg_db}\nconnect = \"127.0.0.1:7001\"\n"),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let connect_cfg = connect_cfg.to_str().unwrap();

    type Row<'a> = (&'a [&'a str], [Option<&'a str>; 8]);
    // path, listen, connect, decompress, reconnect_ms, backoff_cap_ms, checkpoint_file, checkpoint_interval_ms
    let table: &[Row] = &[
        // Defaults: neither listen nor connect means listening on 0.0.0.0:9999.
        (
            &["--path", &cli_db],
            [
                Some(&q_cli_db),
                Some("\"0.0.0.0:9999\""),
                None,
                Some("\"none\""),
                Some("1000"),
                Some("15000"),
                None,
                Some("1000"),
            ],
        ),
        // Everything from the file.
        (
            &["--config", cfg],
            [
                Some(&q_cfg_db),
                Some("\"127.0.0.1:7000\""),
                None,
                Some("\"gzip\""),
                Some("500"),
                Some("4000"),
                Some(&q_cfg_ckpt),
                Some("250"),
            ],
        ),
        // The CLI wins key by key; the rest still comes from the file.
        (
            &[
                "--config",
                cfg,
                "--path",
                &cli_db,
                "--decompress",
                "zstd",
                "--reconnect-ms",
                "200",
                "--checkpoint-file",
                &cli_ckpt,
            ],
            [
                Some(&q_cli_db),
                Some("\"127.0.0.1:7000\""),
                None,
                Some("\"zstd\""),
                Some("200"),
                Some("4000"),
                Some(&q_cli_ckpt),
                Some("250"),
            ],
        ),
        (
            &[
                "--config",
                cfg,
                "--backoff-cap-ms",
                "9000",
                "--checkpoint-interval-ms",
                "50",
                "--decompress",
                "auto",
            ],
            [
                Some(&q_cfg_db),
                Some("\"127.0.0.1:7000\""),
                None,
                Some("\"auto\""),
                Some("500"),
                Some("9000"),
                Some(&q_cfg_ckpt),
                Some("50"),
            ],
        ),
        // A mode flag on the CLI replaces the file's mode.
        (
            &["--config", cfg, "--connect", "127.0.0.1:7002"],
            [
                Some(&q_cfg_db),
                None,
                Some("\"127.0.0.1:7002\""),
                Some("\"gzip\""),
                Some("500"),
                Some("4000"),
                Some(&q_cfg_ckpt),
                Some("250"),
            ],
        ),
        (
            &["--config", connect_cfg, "--listen", "127.0.0.1:7003"],
            [
                Some(&q_cfg_db),
                Some("\"127.0.0.1:7003\""),
                None,
                Some("\"none\""),
                Some("1000"),
                Some("15000"),
                None,
                Some("1000"),
            ],
        ),
        (
            &["--config", connect_cfg],
            [
                Some(&q_cfg_db),
                None,
                Some("\"127.0.0.1:7001\""),
                Some("\"none\""),
                Some("1000"),
                Some("15000"),
                None,
                Some("1000"),
            ],
        ),
    ];
    let keys = [
        "path",
        "listen",
        "connect",
        "decompress",
        "reconnect_ms",
        "backoff_cap_ms",
        "checkpoint_file",
        "checkpoint_interval_ms",
    ];
    for (args, want) in table {
        let got = print_config(args);
        for (k, w) in keys.iter().zip(want) {
            assert_eq!(got.get(*k).map(String::as_str), *w, "{k} for {args:?}");
        }
        // --print-config never touches the database.
        assert!(!Path::new(&cli_db).exists() && !Path::new(&cfg_db).exists());
    }

    // The printed configuration is itself a valid config file, read back the same.
    let o = run_quick(&["--config", cfg, "--print-config"], &[]);
    let printed = d.root().join("printed.toml");
    fs::write(&printed, &o.stdout).unwrap();
    let again = run_quick(
        &["--config", printed.to_str().unwrap(), "--print-config"],
        &[],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&again), stdout(&o));
}

#[test]
fn config_errors_are_one_line_naming_file_key_and_what_is_allowed() {
    let d = Dirs::new();
    let write = |name: &str, text: &str| {
        let p = d.root().join(name);
        fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let unknown = write(
        "unknown.toml",
        "path = \"/x\"\nlisten_addr = \"127.0.0.1:1\"\n",
    );
    let wrong_type = write("type.toml", "path = \"/x\"\nreconnect_ms = \"fast\"\n");
    let wrong_bool = write("bool.toml", "path = \"/x\"\nkeepalive = \"yes\"\n");
    let bad_value = write("value.toml", "path = \"/x\"\ndecompress = \"lz4\"\n");
    let too_low = write("low.toml", "path = \"/x\"\nreconnect_ms = 10\n");
    let both = write(
        "both.toml",
        "path = \"/x\"\nlisten = \"127.0.0.1:1\"\nconnect = \"127.0.0.1:2\"\n",
    );
    let syntax = write("syntax.toml", "path = \"/x\"\nlisten = \n");
    let missing = d.root().join("missing.toml");
    let missing = missing.to_str().unwrap();

    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--config", &unknown],
            &[
                &unknown,
                "listen_addr",
                "unknown field `listen_addr`, expected one of `path`, `listen`, `connect`, `decompress`, `reconnect_ms`, `backoff_cap_ms`, `checkpoint_file`",
            ],
        ),
        (
            &["--config", &wrong_type],
            &[&wrong_type, "line 2: key `reconnect_ms`: invalid type: string \"fast\", expected u64"],
        ),
        (
            &["--config", &wrong_bool],
            &[&wrong_bool, "key `keepalive`: invalid type: string \"yes\", expected a boolean"],
        ),
        (
            &["--config", &bad_value],
            &[
                &bad_value,
                "key `decompress`: \"lz4\" is not one of \"none\", \"gzip\", \"zstd\", \"auto\"",
            ],
        ),
        (
            &["--config", &too_low],
            &[&too_low, "key `reconnect_ms`: 10 is below the minimum of 100"],
        ),
        // Mutually exclusive after the merge too: the file sets both.
        (
            &["--config", &both],
            &[&both, "listen (127.0.0.1:1)", "connect (127.0.0.1:2)", "choose one"],
        ),
        (&["--config", &syntax], &[&syntax, "line 2"]),
        (&["--config", missing], &["cannot read config file", missing]),
        (&["--listen", "127.0.0.1:1"], &["no follower database path"]),
        // A CLI value is reported without blaming the file.
        (
            &["--config", &bad_value, "--decompress", "none", "--reconnect-ms", "5"],
            &["--reconnect-ms: 5 is below the minimum of 100"],
        ),
    ];
    for (args, needles) in cases {
        let o = run_quick(args, &[]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line expected: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        for n in *needles {
            assert!(err.contains(n), "{args:?}: expected {n:?} in {err}");
        }
        assert!(o.stdout.is_empty());
    }
    let o = run_quick(
        &[
            "--config",
            &bad_value,
            "--decompress",
            "none",
            "--reconnect-ms",
            "5",
        ],
        &[],
    );
    assert!(!stderr(&o).contains(&bad_value), "{}", stderr(&o));

    // Both modes on the command line: a usage error (clap), status 2.
    let o = run_quick(
        &[
            "--path",
            "/x",
            "--listen",
            "127.0.0.1:1",
            "--connect",
            "127.0.0.1:2",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let first = stderr(&o).lines().next().unwrap_or_default().to_string();
    assert!(
        first.starts_with("error: ") && first.contains("cannot be used with"),
        "{}",
        stderr(&o)
    );
    for bad in [
        &["--path", "/x", "--decompress", "lz4"][..],
        &["--path", "/x", "--reconnect-ms", "soon"][..],
    ] {
        let o = run_quick(bad, &[]);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
    }
}

#[test]
fn gzip_then_zstd_sessions_checkpoint_after_each_and_end_identical() {
    let d = Dirs::new();
    let mut f = spawn(&[
        "--path",
        d.db(),
        "--listen",
        "127.0.0.1:0",
        "--decompress",
        "auto",
        "--checkpoint-file",
        d.ckpt(),
    ]);
    let addr = listen_addr(&f);
    let part1 = fs::read(case("c09-resume").join("part1.wal")).unwrap();
    let part2 = fs::read(case("c09-resume").join("part2.wal")).unwrap();

    session(addr, &part1, Compression::Gzip);
    wait_checkpoint_log(&f, 595, &d.ckpt);
    assert_eq!(read_ckpt(&d.ckpt), Some(595));
    assert_eq!(read_last_lsn(&d.db), 595);
    f.wait_log("decoding gzip input", WAIT);

    session(addr, &part2, Compression::Zstd);
    wait_checkpoint_log(&f, 1191, &d.ckpt);
    assert_eq!(fs::read(&d.ckpt).unwrap(), b"1191");
    f.wait_log("decoding zstd input", WAIT);
    assert_eq!(f.count("accepted from 127.0.0.1:"), 2);
    assert!(
        f.wait_log_n(" ended: records=", 2, WAIT)
            .contains("records=621 applied="),
        "{}",
        f.stderr()
    );
    stop(&mut f, libc::SIGTERM);
    assert_matches_expected(&d.db, "c03-churn");
    assert_eq!(read_ckpt(&d.ckpt), Some(1191));
    assert!(!d.root().join("last_lsn.tmp").exists());
    assert!(!f.stderr().contains("WARN"), "{}", f.stderr());
}

#[test]
fn periodic_checkpoint_reaches_durable_lsn_while_the_session_is_open_then_sigint() {
    let d = Dirs::new();
    let args = [
        "--path",
        d.db(),
        "--listen",
        "127.0.0.1:0",
        "--decompress",
        "zstd",
        "--checkpoint-file",
        d.ckpt(),
        "--checkpoint-interval-ms",
        "100",
    ];
    let mut f = spawn(&args);
    let addr = listen_addr(&f);
    let c03 = stream("c03-churn");
    // `wal-ship --compress zstd --follow`: 600 records, flushed, never finished.
    let conn = connect(addr);
    assert_eq!(
        ship_on(&conn, &c03, opts(Compression::Zstd, false), Some(600)),
        600
    );
    let seen = std::cell::RefCell::new(Vec::new());
    wait_for(
        "the checkpoint file to reach 600",
        WAIT,
        || format!("seen {:?}; stderr:\n{}", seen.borrow(), f.stderr()),
        || {
            // Checkpoint first, then meta: meta only grows, so ckpt <= meta
            // here means the checkpoint was never ahead of durable meta.
            let c = read_ckpt(&d.ckpt);
            if let Some(c) = c {
                let meta = if d.db.join("meta").exists() {
                    read_last_lsn(&d.db)
                } else {
                    0
                };
                assert!(c <= meta, "checkpoint {c} ahead of meta.last_lsn {meta}");
                let mut seen = seen.borrow_mut();
                if seen.last() != Some(&c) {
                    seen.push(c);
                }
            }
            c == Some(600)
        },
    );
    let seen = seen.into_inner();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "checkpoint went backwards: {seen:?}"
    );
    // The session is still open: no end of session, no session checkpoint line.
    assert_eq!(f.count(" ended: records="), 0, "{}", f.stderr());
    assert_eq!(f.count("checkpoint complete_lsn="), 0, "{}", f.stderr());
    assert!(f.running());

    stop(&mut f, libc::SIGINT);
    drop(conn);
    assert_eq!(read_last_lsn(&d.db), 600);
    assert_eq!(read_ckpt(&d.ckpt), Some(600));
    assert_eq!(
        f.count(&format!("checkpoint complete_lsn=600 -> {}", d.ckpt())),
        1
    );

    // A restarted daemon (the lock was released) takes the resumed stream.
    let mut f = spawn(&args);
    let addr = listen_addr(&f);
    session(
        addr,
        &since_lsn(&c03, read_ckpt(&d.ckpt).unwrap()),
        Compression::Zstd,
    );
    wait_checkpoint_log(&f, 1191, &d.ckpt);
    stop(&mut f, libc::SIGTERM);
    assert_matches_expected(&d.db, "c03-churn");
}

#[test]
fn sigterm_during_a_session_makes_what_arrived_durable_and_checkpoints_it() {
    let d = Dirs::new();
    let args = [
        "--path",
        d.db(),
        "--listen",
        "127.0.0.1:0",
        "--checkpoint-file",
        d.ckpt(),
        "--checkpoint-interval-ms",
        "50",
    ];
    let mut f = spawn(&args);
    let addr = listen_addr(&f);
    let c03 = stream("c03-churn");
    // The leader sends 400 records at once, then the rest one every 5 ms
    // (about 4 s), and keeps the connection open (--follow): the signal lands
    // while records are still flowing.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let leader: JoinHandle<()> = {
        let c03 = c03.clone();
        thread::spawn(move || {
            let mut conn = connect(addr);
            ship_on(&conn, &c03, opts(Compression::None, true), Some(400));
            for (_, _, a, b) in records(&c03).into_iter().skip(400) {
                if done_rx.try_recv().is_ok() {
                    return;
                }
                // The daemon closes first: a failed write is expected then.
                if conn.write_all(&c03[a..b]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
            let _ = done_rx.recv_timeout(WAIT);
        })
    };
    wait_for(
        "the first 400 records to be durable",
        WAIT,
        || f.stderr(),
        || d.db.join("meta").exists() && read_last_lsn(&d.db) >= 400,
    );
    stop(&mut f, libc::SIGTERM);
    done_tx.send(()).unwrap();
    leader.join().unwrap();

    let last = read_last_lsn(&d.db);
    assert!(
        (400..1191).contains(&last),
        "the signal did not land mid-stream (last_lsn={last}): the test proves nothing"
    );
    assert_eq!(
        read_ckpt(&d.ckpt),
        Some(last),
        "checkpoint != meta.last_lsn"
    );
    wait_checkpoint_log(&f, last, &d.ckpt);
    f.wait_log(&format!("stopped (last_lsn={last} complete_lsn="), WAIT);
    assert!(!d.db.join("meta.tmp").exists());

    // Resuming from the checkpoint completes the follower byte for byte.
    let mut f = spawn(&args);
    let addr = listen_addr(&f);
    session(addr, &since_lsn(&c03, last), Compression::None);
    wait_checkpoint_log(&f, 1191, &d.ckpt);
    stop(&mut f, libc::SIGTERM);
    assert_matches_expected(&d.db, "c03-churn");
}

#[test]
fn a_second_instance_on_the_same_path_fails_at_once() {
    let d = Dirs::new();
    let mut first = spawn(&["--path", d.db(), "--listen", "127.0.0.1:0"]);
    listen_addr(&first);
    let t = Instant::now();
    let o = run_quick(&["--path", d.db(), "--listen", "127.0.0.1:0"], &[]);
    assert!(t.elapsed() < STOP_BOUND, "took {:?}", t.elapsed());
    assert_one_line_error(
        &o,
        3,
        &format!(
            "the follower database {} is locked by another process",
            d.db()
        ),
    );
    assert!(first.running(), "the lock holder must keep running");
    stop(&mut first, libc::SIGTERM);
    // Released at exit: the next instance starts.
    let mut next = spawn(&["--path", d.db(), "--listen", "127.0.0.1:0"]);
    listen_addr(&next);
    stop(&mut next, libc::SIGTERM);
}

#[test]
fn port_in_use_is_one_error_line_and_status_3() {
    let d = Dirs::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    // Quiet logs: the only line is then the error.
    let o = run_quick(
        &["--path", d.db(), "--listen", &addr],
        &[("RUST_LOG", "warn")],
    );
    assert_one_line_error(
        &o,
        3,
        &format!("cannot listen on {addr}: address already in use"),
    );
    // At the default level the error is still exactly one line, and the last.
    let o = run_quick(&["--path", d.db(), "--listen", &addr], &[]);
    assert_eq!(o.status.code(), Some(3));
    let err = stderr(&o);
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert_eq!(err.lines().last(), Some(errors[0]));
    assert!(errors[0].starts_with("error: cannot listen on"), "{err}");
}

/// A connect-mode leader: a server on `port` that serves `stream` (compressed
/// as `compress`) to one connection; it stops listening once that connection
/// is accepted, so it is down again until the next `serve_once`.
fn serve_once(port: u16, stream: Vec<u8>, compress: Compression) -> JoinHandle<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the test server");
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        let end = Instant::now() + WAIT;
        let conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < end, "no connection from the daemon");
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        // Down again at once: a reconnect right after this session is refused.
        drop(listener);
        conn.set_nonblocking(false).unwrap();
        conn.set_nodelay(true).unwrap();
        conn.set_write_timeout(Some(WAIT)).unwrap();
        ship_on(&conn, &stream, opts(compress, true), None);
    })
}

#[test]
fn connect_mode_retries_until_the_server_starts_and_follows_its_restarts() {
    let d = Dirs::new();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut f = spawn(&[
        "--path",
        d.db(),
        "--connect",
        &addr,
        "--decompress",
        "zstd",
        "--reconnect-ms",
        "100",
        "--backoff-cap-ms",
        "400",
        "--checkpoint-file",
        d.ckpt(),
    ]);
    // Started before the server exists: it retries with a growing backoff.
    let first = f.wait_log("retrying in", WAIT);
    assert!(
        first.contains(&format!("connect to {addr} failed:"))
            && first.ends_with("retrying in 100 ms"),
        "{first}"
    );
    assert!(f
        .wait_log_n("retrying in", 2, WAIT)
        .ends_with("retrying in 200 ms"));

    let part1 = fs::read(case("c09-resume").join("part1.wal")).unwrap();
    let part2 = fs::read(case("c09-resume").join("part2.wal")).unwrap();
    serve_once(port, part1, Compression::Zstd).join().unwrap();
    wait_checkpoint_log(&f, 595, &d.ckpt);
    assert_eq!(read_ckpt(&d.ckpt), Some(595));
    assert_eq!(read_last_lsn(&d.db), 595);
    f.wait_log(&format!("connected to {addr}"), WAIT);

    // The server is down now: the daemon keeps trying.
    let before = f.count("retrying in");
    f.wait_log_n("retrying in", before + 1, WAIT);
    assert!(f.running());

    serve_once(port, part2, Compression::Zstd).join().unwrap();
    wait_checkpoint_log(&f, 1191, &d.ckpt);
    assert_eq!(
        f.count(&format!("connected to {addr}")),
        2,
        "{}",
        f.stderr()
    );
    stop(&mut f, libc::SIGTERM);
    assert_matches_expected(&d.db, "c03-churn");
    assert_eq!(read_ckpt(&d.ckpt), Some(1191));
}

#[test]
fn session_errors_are_warnings_and_the_next_session_completes_the_follower() {
    let d = Dirs::new();
    let mut f = spawn(&[
        "--path",
        d.db(),
        "--listen",
        "127.0.0.1:0",
        "--decompress",
        "gzip",
        "--checkpoint-file",
        d.ckpt(),
    ]);
    let addr = listen_addr(&f);

    // 1. A corrupt record (c08): the good prefix is applied and checkpointed.
    let conn = connect(addr);
    (&conn).write_all(&gzip(&stream("c08-bad-crc"))).unwrap();
    drop(conn);
    let warn = f.wait_log("failed: WAL record CRC mismatch", WAIT);
    assert!(warn.contains("WARN"), "{warn}");
    assert!(
        warn.contains("at stream offset 2453796 (type 1, lsn 596, page 143)"),
        "{warn}"
    );
    wait_checkpoint_log(&f, 595, &d.ckpt);
    assert_eq!(read_last_lsn(&d.db), 595);

    // 2. A decompression error: raw WAL while the daemon expects gzip. The
    // warning must name the real cause, not a symptom further down.
    session(addr, &stream("c01-one-put"), Compression::None);
    let warn = f.wait_log("--decompress gzip", WAIT);
    assert!(
        warn.contains("WARN") && warn.contains("session from 127.0.0.1:"),
        "{warn}"
    );
    assert!(warn.contains("use --decompress none or auto"), "{warn}");
    f.wait_log_n(" ended: records=0 ", 1, WAIT);
    assert_eq!(read_last_lsn(&d.db), 595);

    // 3. A good session, resumed from the checkpoint as a leader would.
    assert!(f.running());
    let resume = since_lsn(&stream("c03-churn"), read_ckpt(&d.ckpt).unwrap());
    session(addr, &resume, Compression::Gzip);
    wait_checkpoint_log(&f, 1191, &d.ckpt);
    assert_eq!(f.count("accepted from 127.0.0.1:"), 3);
    stop(&mut f, libc::SIGTERM);
    assert_matches_expected(&d.db, "c03-churn");
    assert!(!f.stderr().contains("ERROR"), "{}", f.stderr());
}

#[test]
fn a_leader_dying_mid_record_then_a_good_session() {
    let d = Dirs::new();
    let mut f = spawn(&[
        "--path",
        d.db(),
        "--listen",
        "127.0.0.1:0",
        "--checkpoint-file",
        d.ckpt(),
    ]);
    let addr = listen_addr(&f);
    let c03 = stream("c03-churn");
    let recs = records(&c03);

    // Header + 300 records as wal-ship sends them, then half of record 301,
    // then the leader is gone.
    let conn = connect(addr);
    assert_eq!(
        ship_on(&conn, &c03, opts(Compression::None, true), Some(300)),
        300
    );
    let (_, _, a, b) = recs[300];
    (&conn).write_all(&c03[a..a + (b - a) / 2]).unwrap();
    drop(conn);

    let end = f.wait_log(" ended: records=", WAIT);
    assert!(end.contains("records=300 applied=300 "), "{end}");
    f.wait_log("ended inside a record (partial tail)", WAIT);
    wait_checkpoint_log(&f, 300, &d.ckpt);
    assert_eq!(read_last_lsn(&d.db), 300);
    assert_eq!(read_ckpt(&d.ckpt), Some(300));

    session(addr, &since_lsn(&c03, 300), Compression::None);
    wait_checkpoint_log(&f, 1191, &d.ckpt);
    stop(&mut f, libc::SIGTERM);
    assert_matches_expected(&d.db, "c03-churn");
}

#[test]
fn allow_list_refuses_a_peer_outside_it_and_nothing_is_applied() {
    let d = Dirs::new();
    let mut f = spawn(&[
        "--path",
        d.db(),
        "--listen",
        "127.0.0.1:0",
        "--allow",
        "10.0.0.0/8",
        "--checkpoint-file",
        d.ckpt(),
    ]);
    let addr = listen_addr(&f);
    // The refused sender may see its writes succeed or the connection reset.
    let conn = connect(addr);
    let _ = ship(
        &stream("c01-one-put"),
        BufWriter::new(&conn),
        opts(Compression::None, true),
        None,
    );
    drop(conn);
    let line = f.wait_log("refused connection from 127.0.0.1:", WAIT);
    assert!(line.contains("not in --allow list"), "{line}");
    thread::sleep(Duration::from_millis(300));
    assert!(f.running(), "a refused peer must not end the daemon");
    stop(&mut f, libc::SIGTERM);
    assert_eq!(f.count("accepted from"), 0, "{}", f.stderr());
    assert_eq!(f.count(" ended: records="), 0, "{}", f.stderr());
    assert!(!d.db.join("meta").exists(), "nothing may be applied");
    assert!(segment_files(&d.db).is_empty());
}

#[test]
fn systemd_notify_ready_status_and_stopping() {
    let d = Dirs::new();
    let sock_path = d.root().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut f = LoggedChild::spawn(
        DAEMON,
        &[
            "--path",
            d.db(),
            "--listen",
            "127.0.0.1:0",
            "--checkpoint-file",
            d.ckpt(),
        ],
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let mut got: Vec<String> = Vec::new();
    let wait_msg = |what: &str, got: &mut Vec<String>| -> String {
        let end = Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = got.iter().find(|m| m.lines().any(|l| l == what)) {
                return m.clone();
            }
            assert!(
                Instant::now() < end,
                "no {what:?} on NOTIFY_SOCKET; got {got:?}"
            );
            if let Ok(n) = sock.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    };
    let ready = wait_msg("READY=1", &mut got);
    assert!(
        ready
            .lines()
            .any(|l| l == "STATUS=last_lsn=0 complete_lsn=0"),
        "{ready:?}"
    );
    // READY comes once the port is bound: a leader can connect at once.
    let addr = listen_addr(&f);
    session(addr, &stream("c02-overflow"), Compression::None);
    wait_msg("STATUS=last_lsn=78 complete_lsn=78", &mut got);
    assert!(!got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
    stop(&mut f, libc::SIGTERM);
    wait_msg("STOPPING=1", &mut got);
    assert_eq!(
        got.iter().filter(|m| m.contains("READY=1")).count(),
        1,
        "{got:?}"
    );
    assert_matches_expected(&d.db, "c02-overflow");
}

#[test]
fn man_page_documents_the_flags_signals_and_exit_status() {
    let page =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/quiverdb-follower.1"))
            .unwrap()
            .replace("\\-", "-");
    for needle in [
        "quiverdb-follower",
        "--path",
        "--listen",
        "--connect",
        "--decompress",
        "--reconnect-ms",
        "--backoff-cap-ms",
        "--checkpoint-file",
        "--checkpoint-interval-ms",
        "--config",
        "--allow",
        "--print-config",
        "SIGTERM",
        "EXIT STATUS",
        "0.0.0.0:9999",
    ] {
        assert!(page.contains(needle), "man page lacks {needle:?}");
    }
}
