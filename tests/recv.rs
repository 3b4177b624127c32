//! qdb-recv end to end: the real binary, real 127.0.0.1 sockets, and a sender
//! that writes fixture streams the way `wal-ship --sink tcp://` does (header,
//! then one record per write, a flush after each, TCP_NODELAY).
//!
//! Every wait has a deadline, so a bug fails a test instead of hanging it.
//! Only loopback addresses are used.

use std::io::{BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use quiverdb_follower::format::layout::{WAL_HEADER_LEN, WAL_MAGIC};
use testkit::stream::StreamIndex;

const BIN: &str = env!("CARGO_BIN_EXE_qdb-recv");
const WAIT: Duration = Duration::from_secs(15);

fn fixture(case: &str, file: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/quiverdb-1.2.5/{case}/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A raw stream cut into what wal-ship writes and flushes one at a time:
/// the header, then each record (or mid-stream header), as
/// `testkit::stream::StreamIndex` reads them; then whatever follows the last
/// complete record (a cut), if anything.
fn frames(stream: &[u8]) -> Vec<&[u8]> {
    let idx = StreamIndex::new(stream);
    let mut out = Vec::new();
    let mut pos = 0;
    for r in &idx.records {
        // The gap before a record: the stream header, or mid-stream ones.
        while pos < r.offset {
            out.push(&stream[pos..pos + WAL_HEADER_LEN]);
            pos += WAL_HEADER_LEN;
        }
        out.push(&stream[r.offset..r.end]);
        pos = r.end;
    }
    if pos < stream.len() {
        out.push(&stream[pos..]);
    }
    out
}

/// c02 as a leader that died mid-record sends it: header, record 1, then half
/// of record 2.
fn cut_c02() -> (Vec<u8>, Vec<u8>) {
    let full = fixture("c02-overflow", "stream.wal");
    let f = frames(&full);
    let complete = f[0].len() + f[1].len();
    let cut = complete + f[2].len() / 2;
    (full[..cut].to_vec(), full[..complete].to_vec())
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, WAIT).expect("connect to qdb-recv");
    s.set_nodelay(true).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// Write `bytes` frame by frame with a flush after each, like wal-ship. A
/// stream that is not a whole WAL stream (a cut, gzip) goes in one piece.
/// Returns the open connection; dropping it closes it (FIN).
fn ship(stream: TcpStream, bytes: &[u8]) -> std::io::Result<TcpStream> {
    let mut w = BufWriter::new(stream);
    let whole = bytes.starts_with(WAL_MAGIC) && frames_cover(bytes);
    if whole {
        for frame in frames(bytes) {
            w.write_all(frame)?;
            w.flush()?;
        }
    } else {
        w.write_all(bytes)?;
        w.flush()?;
    }
    w.into_inner().map_err(|e| e.into_error())
}

/// Whether `bytes` is a whole stream: complete records (and headers) to the end.
fn frames_cover(bytes: &[u8]) -> bool {
    let idx = StreamIndex::new(bytes);
    let end = idx.records.last().map_or(WAL_HEADER_LEN, |r| r.end);
    idx.stopped_at_crc_error.is_none() && end == bytes.len()
}

fn accept_within(listener: &TcpListener, timeout: Duration) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let end = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_nodelay(true).unwrap();
                s.set_write_timeout(Some(WAIT)).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < end => {
                thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("test server: no connection from qdb-recv: {e}"),
        }
    }
}

/// A port nothing listens on (just freed by the test).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running qdb-recv whose stdout and stderr are collected by two threads.
struct Recv {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Recv {
    /// Run with RUST_LOG=info so the tests can follow the connection story.
    fn spawn(args: &[&str]) -> Recv {
        Recv::spawn_with(args, Some("info"), true)
    }

    fn spawn_with(args: &[&str], rust_log: Option<&str>, keep_stdout: bool) -> Recv {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match rust_log {
            Some(level) => cmd.env("RUST_LOG", level),
            None => cmd.env_remove("RUST_LOG"),
        };
        let mut child = cmd.spawn().expect("spawn qdb-recv");
        let out = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let mut stdout = child.stdout.take().unwrap();
        if keep_stdout {
            let out = Arc::clone(&out);
            readers.push(thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }));
        } else {
            drop(stdout); // the next stage of the pipeline is gone
        }
        let mut stderr = child.stderr.take().unwrap();
        let log2 = Arc::clone(&log);
        readers.push(thread::spawn(move || {
            let mut text = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.extend_from_slice(&buf[..n]);
                while let Some(nl) = text.iter().position(|&b| b == b'\n') {
                    let line = String::from_utf8_lossy(&text[..nl]).into_owned();
                    log2.lock().unwrap().push((Instant::now(), line));
                    text.drain(..=nl);
                }
            }
        }));
        Recv {
            child,
            out,
            log,
            readers,
        }
    }

    fn stdout(&self) -> Vec<u8> {
        self.out.lock().unwrap().clone()
    }

    fn lines(&self) -> Vec<(Instant, String)> {
        self.log.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.lines().into_iter().map(|(_, l)| l + "\n").collect()
    }

    fn wait_until(&self, what: &str, done: impl Fn(&Recv) -> bool) {
        let end = Instant::now() + WAIT;
        while !done(self) {
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; stderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The first log line containing `needle`, waiting for it.
    fn wait_log(&self, needle: &str) -> String {
        self.wait_until(&format!("log line {needle:?}"), |r| {
            r.lines().iter().any(|(_, l)| l.contains(needle))
        });
        self.lines()
            .into_iter()
            .map(|(_, l)| l)
            .find(|l| l.contains(needle))
            .unwrap()
    }

    /// The address from "listening on ADDR".
    fn listen_addr(&self) -> SocketAddr {
        let line = self.wait_log("listening on ");
        let addr = line.rsplit("listening on ").next().unwrap().trim();
        addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"))
    }

    fn wait_stdout_len(&self, n: usize) {
        self.wait_until(&format!("{n} bytes on stdout"), |r| {
            r.out.lock().unwrap().len() >= n
        });
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(r, 0);
    }

    /// Wait for the exit, then for the reader threads to see EOF.
    fn wait_exit(&mut self) -> ExitStatus {
        let end = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("qdb-recv did not exit; stderr:\n{}", self.stderr());
            }
            thread::sleep(Duration::from_millis(10));
        };
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        status
    }

    fn error_lines(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .map(|(_, l)| l)
            .filter(|l| l.starts_with("error:"))
            .collect()
    }
}

impl Drop for Recv {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn listen_copies_a_shipped_stream_byte_for_byte() {
    let stream = fixture("c02-overflow", "stream.wal");
    let mut recv = Recv::spawn(&["--listen", "127.0.0.1:0"]);
    let addr = recv.listen_addr();
    drop(ship(connect(addr), &stream).unwrap());
    assert!(recv.wait_exit().success(), "{}", recv.stderr());
    assert!(
        recv.stdout() == stream,
        "stdout differs from c02 stream.wal"
    );
    recv.wait_log("accepted from 127.0.0.1:");
    assert!(recv.error_lines().is_empty());
}

#[test]
fn a_flushed_frame_reaches_stdout_while_the_connection_stays_open() {
    let stream = fixture("c01-one-put", "stream.wal");
    let mut recv = Recv::spawn(&["--listen", "127.0.0.1:0"]);
    let mut conn = connect(recv.listen_addr());
    // Frame by frame, each waited for: the 16-byte header is small enough to
    // sit in a buffer if anything forgot to flush.
    let mut sent = 0;
    for frame in frames(&stream) {
        conn.write_all(frame).unwrap();
        conn.flush().unwrap();
        sent += frame.len();
        recv.wait_stdout_len(sent);
        assert!(recv.running(), "qdb-recv exited before the leader closed");
    }
    assert_eq!(recv.stdout(), stream);
    drop(conn);
    assert!(recv.wait_exit().success());
}

#[test]
fn connect_retries_with_growing_capped_backoff_then_copies() {
    let port = closed_port();
    let addr = format!("127.0.0.1:{port}");
    let mut recv = Recv::spawn(&[
        "--connect",
        &addr,
        "--reconnect-ms",
        "100",
        "--backoff-cap-ms",
        "400",
    ]);
    recv.wait_until("5 retries", |r| {
        r.lines()
            .iter()
            .filter(|(_, l)| l.contains("retrying in"))
            .count()
            >= 5
    });

    let retries: Vec<(Instant, u64)> = recv
        .lines()
        .into_iter()
        .filter(|(_, l)| l.contains("retrying in"))
        .map(|(t, l)| {
            assert!(l.contains(&format!("connect to {addr} failed:")), "{l}");
            let ms = l
                .rsplit("retrying in ")
                .next()
                .unwrap()
                .trim_end_matches(" ms");
            (t, ms.parse().unwrap())
        })
        .collect();
    let delays: Vec<u64> = retries.iter().map(|r| r.1).collect();
    assert_eq!(&delays[..5], &[100, 200, 400, 400, 400]);
    // Each retry line comes after the previous delay was slept, plus a refused
    // connect on loopback: never much longer than the cap.
    for pair in retries[..5].windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap <= Duration::from_millis(400 + 2000),
            "gap {gap:?} exceeds the cap plus slack"
        );
    }
    // Read jitter only moves the two ends: the sum of four sleeps is a floor.
    let span = retries[4].0 - retries[0].0;
    assert!(
        span >= Duration::from_millis(100 + 200 + 400 + 400 - 200),
        "retries came too fast: {span:?}"
    );

    let listener = TcpListener::bind(&addr).expect("rebind the test port");
    let stream = fixture("c01-one-put", "stream.wal");
    drop(ship(accept_within(&listener, WAIT), &stream).unwrap());
    assert!(recv.wait_exit().success(), "{}", recv.stderr());
    assert_eq!(recv.stdout(), stream);
    recv.wait_log(&format!("connected to {addr}"));
}

#[test]
fn connect_gives_up_after_max_retries_with_one_error_line() {
    let addr = format!("127.0.0.1:{}", closed_port());
    let mut recv = Recv::spawn(&[
        "--connect",
        &addr,
        "--reconnect-ms",
        "100",
        "--max-retries",
        "2",
    ]);
    let status = recv.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", recv.stderr());
    assert_eq!(recv.stderr().matches("retrying in").count(), 2);
    let errors = recv.error_lines();
    assert_eq!(errors.len(), 1, "{}", recv.stderr());
    assert!(
        errors[0].starts_with(&format!("error: cannot connect to {addr}: ")),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].contains("gave up after 3 attempt(s)"),
        "{}",
        errors[0]
    );
    assert!(recv.stdout().is_empty());
}

#[test]
fn allow_list_refuses_peers_outside_it() {
    let mut recv = Recv::spawn(&["--listen", "127.0.0.1:0", "--allow", "10.0.0.0/8"]);
    let addr = recv.listen_addr();
    // The refused sender may see its writes succeed or the connection reset.
    let _ = ship(connect(addr), &fixture("c01-one-put", "stream.wal"));
    let line = recv.wait_log("refused connection from 127.0.0.1:");
    assert!(line.contains("not in --allow list"), "{line}");
    thread::sleep(Duration::from_millis(300));
    assert!(recv.running(), "a refused peer must not end the wait");
    recv.terminate();
    assert!(recv.wait_exit().success());
    assert!(recv.stdout().is_empty());
}

#[test]
fn allow_list_accepts_peers_inside_it() {
    let stream = fixture("c01-one-put", "stream.wal");
    let mut recv = Recv::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--allow",
        "::1",
        "--allow",
        "127.0.0.0/8",
    ]);
    drop(ship(connect(recv.listen_addr()), &stream).unwrap());
    assert!(recv.wait_exit().success(), "{}", recv.stderr());
    assert_eq!(recv.stdout(), stream);
    assert!(!recv.stderr().contains("refused"));
}

#[test]
fn port_in_use_is_one_clear_line() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut recv = Recv::spawn_with(&["--listen", &addr], None, true);
    assert_eq!(recv.wait_exit().code(), Some(1));
    assert_eq!(
        recv.stderr(),
        format!(
            "error: cannot listen on {addr}: address already in use (another qdb-recv or quiverdb-follower is \
             probably running; stop it or choose another port)\n"
        )
    );
}

#[test]
fn unresolvable_addresses_are_one_clear_line() {
    // Neither needs a DNS server: one lacks a port, the other has a bad one.
    for args in [
        ["--listen", "127.0.0.1"],
        ["--connect", "localhost:notaport"],
    ] {
        let mut recv = Recv::spawn_with(&args, None, true);
        assert_eq!(recv.wait_exit().code(), Some(1));
        let err = recv.stderr();
        assert!(
            err.starts_with(&format!("error: cannot resolve '{}': ", args[1])),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn a_leader_dying_mid_record_ends_the_run_cleanly_and_the_next_run_is_whole() {
    let (cut, _) = cut_c02();
    let mut first = Recv::spawn(&["--listen", "127.0.0.1:0"]);
    let addr = first.listen_addr();
    drop(ship(connect(addr), &cut).unwrap());
    assert!(first.wait_exit().success(), "{}", first.stderr());
    assert!(
        first.stdout() == cut,
        "the first run must pass on exactly the bytes sent"
    );

    // The next run of the loop rebinds the same port at once.
    let full = fixture("c02-overflow", "stream.wal");
    let mut second = Recv::spawn(&["--listen", &addr.to_string()]);
    assert_eq!(second.listen_addr(), addr);
    drop(ship(connect(addr), &full).unwrap());
    assert!(second.wait_exit().success(), "{}", second.stderr());
    assert!(
        second.stdout() == full,
        "the second run must pass on the whole stream"
    );
}

#[test]
fn keep_serving_listen_drops_cut_records_and_refuses_gzip() {
    let (cut, cut_complete) = cut_c02();
    let good = fixture("c01-one-put", "stream.wal");
    let mut recv = Recv::spawn(&["--listen", "127.0.0.1:0", "--keep-serving"]);
    let addr = recv.listen_addr();

    drop(ship(connect(addr), &cut).unwrap());
    recv.wait_log("ended inside a record");
    let _ = ship(connect(addr), &fixture("c01-one-put", "stream.wal.gz"));
    let refusal = recv.wait_log("does not start with a QuiverDB 1.x WAL header");
    assert!(refusal.contains("(looks like gzip?)"), "{refusal}");
    assert!(
        refusal.contains("drop --keep-serving and run one session per process"),
        "{refusal}"
    );
    drop(ship(connect(addr), &good).unwrap());

    let expected = [cut_complete, good].concat();
    recv.wait_stdout_len(expected.len());
    recv.terminate();
    assert!(recv.wait_exit().success(), "{}", recv.stderr());
    assert!(
        recv.stdout() == expected,
        "stdout is not session 1's complete records + session 3"
    );
}

#[test]
fn keep_serving_connect_reconnects_after_each_session() {
    let (cut, cut_complete) = cut_c02();
    let good = fixture("c01-one-put", "stream.wal");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = {
        let (cut, good) = (cut.clone(), good.clone());
        thread::spawn(move || {
            drop(ship(accept_within(&listener, WAIT), &cut).unwrap());
            drop(ship(accept_within(&listener, WAIT), &good).unwrap());
        })
    };
    let mut recv = Recv::spawn(&[
        "--connect",
        &addr,
        "--keep-serving",
        "--reconnect-ms",
        "100",
    ]);
    let expected = [cut_complete, good].concat();
    recv.wait_stdout_len(expected.len());
    server.join().unwrap();
    recv.terminate();
    assert!(recv.wait_exit().success(), "{}", recv.stderr());
    assert!(
        recv.stdout() == expected,
        "stdout is not session 1's complete records + session 2"
    );
    assert!(recv.stderr().contains("ended inside a record"));
}

#[test]
fn sigterm_while_waiting_for_the_leader_exits_0_promptly() {
    let mut recv = Recv::spawn(&["--listen", "127.0.0.1:0"]);
    recv.listen_addr();
    let t = Instant::now();
    recv.terminate();
    assert!(recv.wait_exit().success(), "{}", recv.stderr());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );

    let addr = format!("127.0.0.1:{}", closed_port());
    let mut recv = Recv::spawn(&["--connect", &addr, "--reconnect-ms", "10000"]);
    recv.wait_log("retrying in 10000 ms");
    let t = Instant::now();
    recv.terminate();
    assert!(recv.wait_exit().success(), "{}", recv.stderr());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn idle_timeout_ends_a_silent_session_with_an_error() {
    let stream = fixture("c01-one-put", "stream.wal");
    let mut recv = Recv::spawn(&["--listen", "127.0.0.1:0", "--idle-timeout", "1"]);
    let conn = ship(connect(recv.listen_addr()), &stream[..WAL_HEADER_LEN]).unwrap();
    assert_eq!(recv.wait_exit().code(), Some(1));
    let errors = recv.error_lines();
    assert_eq!(errors.len(), 1, "{}", recv.stderr());
    assert!(
        errors[0].contains("for 1 s (--idle-timeout)"),
        "{}",
        errors[0]
    );
    assert_eq!(recv.stdout(), &stream[..WAL_HEADER_LEN]);
    drop(conn);
}

#[test]
fn downstream_closing_ends_it_quietly() {
    let mut recv = Recv::spawn_with(&["--listen", "127.0.0.1:0"], Some("info"), false);
    let _ = ship(
        connect(recv.listen_addr()),
        &fixture("c02-overflow", "stream.wal"),
    );
    assert!(recv.wait_exit().success(), "{}", recv.stderr());
    let err = recv.stderr();
    assert!(!err.contains("error") && !err.contains("panicked"), "{err}");
}
