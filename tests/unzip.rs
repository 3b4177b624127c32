//! qdb-unzip, run as a real child process over real pipes and sockets.
//!
//! Every run goes through [`run`] or [`Live`], which kill the child and fail
//! the test after a generous deadline instead of hanging the suite.

use quiverdb_follower::format::layout::WAL_HEADER_LEN;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qdb-unzip");
/// No run of this suite takes more than a second or two; the deadline only
/// turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(60);
const CASES: [&str; 3] = ["c01-one-put", "c02-overflow", "c03-churn"];

fn fixture_path(case: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/quiverdb-1.2.5")
        .join(case)
        .join(name)
}

fn fixture(case: &str, name: &str) -> Vec<u8> {
    let p = fixture_path(case, name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn qdb_unzip(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("RUST_LOG");
    c
}

struct Out {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

/// Collect everything a pipe yields on a thread, so no pipe can fill up and
/// deadlock the child.
fn drain<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Wait for `child`, killing it and failing the test past the deadline.
fn wait_or_kill(child: &mut Child, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {DEADLINE:?}, killed");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Run qdb-unzip with `input` on stdin (written from a thread, then closed).
fn run(args: &[&str], input: &[u8]) -> Out {
    let mut child = qdb_unzip(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qdb-unzip");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // A write error is fine: qdb-unzip may stop reading early (mismatch).
    let feeder = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let status = wait_or_kill(&mut child, &format!("qdb-unzip {args:?}"));
    feeder.join().unwrap();
    Out {
        status,
        stdout: out.join().unwrap(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    }
}

/// Run a helper CLI (gzip, zstd) on `input` and return its stdout.
fn tool(cmd: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e} (the gzip and zstd CLIs are needed)"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = thread::spawn(move || stdin.write_all(&input));
    let out = drain(child.stdout.take().unwrap());
    let st = wait_or_kill(&mut child, cmd);
    feeder.join().unwrap().expect("feed tool");
    assert!(st.success(), "{cmd} {args:?} failed: {st}");
    out.join().unwrap()
}

fn assert_clean(out: &Out, expected: &[u8], what: &str) {
    assert!(
        out.status.success(),
        "{what}: exit {}, stderr {}",
        out.status,
        out.stderr
    );
    assert!(out.stderr.is_empty(), "{what}: stderr {:?}", out.stderr);
    assert!(
        out.stdout == expected,
        "{what}: output differs ({} bytes, expected {})",
        out.stdout.len(),
        expected.len()
    );
}

fn assert_error(out: &Out, message: &str, what: &str) {
    assert_eq!(out.status.code(), Some(1), "{what}: stderr {}", out.stderr);
    assert_eq!(out.stderr, format!("error: {message}\n"), "{what}");
    assert!(
        out.stdout.is_empty(),
        "{what}: wrote {} bytes",
        out.stdout.len()
    );
}

/// The pieces wal-ship writes between flushes: the 16-byte header, then each
/// record (28-byte header + payload).
fn wal_pieces(stream: &[u8]) -> Vec<&[u8]> {
    let idx = testkit::stream::StreamIndex::new(stream);
    let mut pieces = vec![&stream[..WAL_HEADER_LEN]];
    let mut pos = WAL_HEADER_LEN;
    for r in &idx.records {
        assert_eq!(r.offset, pos, "fixture stream has a gap at {pos}");
        pieces.push(&stream[r.offset..r.end]);
        pos = r.end;
    }
    assert_eq!(pos, stream.len(), "fixture stream ends inside a record");
    pieces
}

/// A wal-ship-style compressor (§7.1): one compressor for the whole stream,
/// flushed after each piece; the bytes each flush produced are handed out.
enum Shipper {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::Encoder<'static, Vec<u8>>),
}

impl Shipper {
    fn new(kind: &str) -> Self {
        match kind {
            "gzip" => Shipper::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::fast(),
            )),
            "zstd" => Shipper::Zstd(zstd::Encoder::new(Vec::new(), 0).unwrap()),
            _ => unreachable!(),
        }
    }

    /// Compress and flush one piece; return the compressed bytes it made.
    fn ship(&mut self, piece: &[u8]) -> Vec<u8> {
        match self {
            Shipper::Gzip(e) => {
                e.write_all(piece).unwrap();
                e.flush().unwrap();
                std::mem::take(e.get_mut())
            }
            Shipper::Zstd(e) => {
                e.write_all(piece).unwrap();
                e.flush().unwrap();
                std::mem::take(e.get_mut())
            }
        }
    }

    /// What wal-ship writes when it exits normally: one more flush, then
    /// the trailer / frame end (§7.1 step 7).
    fn finish(self) -> Vec<u8> {
        match self {
            Shipper::Gzip(mut e) => {
                e.flush().unwrap();
                e.finish().unwrap()
            }
            Shipper::Zstd(mut e) => {
                e.flush().unwrap();
                e.finish().unwrap()
            }
        }
    }
}

/// Compress a whole stream wal-ship style. Returns the compressed bytes and,
/// for each flush, (compressed length so far, decoded length so far).
fn ship_stream(kind: &str, stream: &[u8], finish: bool) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut s = Shipper::new(kind);
    let (mut comp, mut flushes, mut dec) = (Vec::new(), Vec::new(), 0);
    for piece in wal_pieces(stream) {
        comp.extend(s.ship(piece));
        dec += piece.len();
        flushes.push((comp.len(), dec));
    }
    if finish {
        comp.extend(s.finish());
    }
    (comp, flushes)
}

#[test]
fn the_test_shipper_is_byte_identical_to_wal_ship() {
    // The streaming tests below are only as good as their imitation of
    // wal-ship: check it against QuiverDB 1.2.5's own output.
    for case in CASES {
        let stream = fixture(case, "stream.wal");
        for (kind, ext) in [("gzip", "gz"), ("zstd", "zst")] {
            let (comp, _) = ship_stream(kind, &stream, true);
            assert!(
                comp == fixture(case, &format!("stream.wal.{ext}")),
                "{case}: {kind} differs from wal-ship's"
            );
        }
    }
}

// ---- decoding complete streams ----------------------------------------------------------

#[test]
fn wal_ship_fixtures_decode_to_stream_wal() {
    for case in CASES {
        let want = fixture(case, "stream.wal");
        for (ext, mode) in [("gz", "gzip"), ("zst", "zstd")] {
            let input = fixture(case, &format!("stream.wal.{ext}"));
            assert_clean(&run(&[], &input), &want, &format!("{case}.{ext} auto"));
            assert_clean(
                &run(&["--decompress", mode], &input),
                &want,
                &format!("{case}.{ext} --decompress {mode}"),
            );
        }
    }
}

#[test]
fn uncompressed_stream_is_copied_through() {
    for case in CASES {
        let want = fixture(case, "stream.wal");
        assert_clean(&run(&[], &want), &want, &format!("{case} auto"));
        assert_clean(&run(&["-d", "none"], &want), &want, &format!("{case} none"));
    }
}

#[test]
fn gzip_cli_output_decodes() {
    for case in CASES {
        let want = fixture(case, "stream.wal");
        let path = fixture_path(case, "stream.wal");
        // `gzip -c FILE` stores the file name (FNAME) and mtime in the header.
        let named = tool("gzip", &["-c", path.to_str().unwrap()], &[]);
        assert_ne!(named[3] & 0x08, 0, "expected gzip to store FNAME");
        assert_clean(&run(&[], &named), &want, &format!("{case} gzip -c FILE"));
        for level in ["-1", "-6", "-9"] {
            let gz = tool("gzip", &["-c", "-n", level], &want);
            assert_clean(
                &run(&["-d", "gzip"], &gz),
                &want,
                &format!("{case} gzip {level}"),
            );
        }
    }
}

#[test]
fn zstd_cli_output_decodes() {
    for case in CASES {
        let want = fixture(case, "stream.wal");
        for args in [
            &["-q", "-c"][..],
            &["-q", "-c", "-19"],
            &["-q", "-c", "--no-check", "-1"],
        ] {
            let zst = tool("zstd", args, &want);
            assert_clean(&run(&[], &zst), &want, &format!("{case} zstd {args:?}"));
        }
    }
}

/// Split the c03 stream into three parts at odd offsets (not record bounds).
fn three_parts(stream: &[u8]) -> [&[u8]; 3] {
    let (a, b) = (stream.len() / 3 + 11, 2 * stream.len() / 3 + 5);
    [&stream[..a], &stream[a..b], &stream[b..]]
}

#[test]
fn multi_member_gzip_decodes_fully() {
    let want = fixture("c03-churn", "stream.wal");
    // `cat a.gz b.gz c.gz`, as the gzip CLI documents.
    let mut cat = Vec::new();
    for part in three_parts(&want) {
        cat.extend(tool("gzip", &["-c"], part));
    }
    assert_clean(&run(&[], &cat), &want, "gzip CLI members");
    // A wal-ship member followed by gzip CLI members, with an empty member between.
    let [a, b, c] = three_parts(&want);
    let (mut mixed, _) = ship_stream_raw("gzip", a);
    mixed.extend(tool("gzip", &["-c"], &[]));
    mixed.extend(tool("gzip", &["-c"], b));
    mixed.extend(tool("gzip", &["-c"], c));
    assert_clean(&run(&["-d", "gzip"], &mixed), &want, "mixed members");
}

#[test]
fn multi_frame_zstd_decodes_fully() {
    let want = fixture("c03-churn", "stream.wal");
    let mut cat = Vec::new();
    for part in three_parts(&want) {
        cat.extend(tool("zstd", &["-q", "-c"], part));
    }
    assert_clean(&run(&[], &cat), &want, "zstd CLI frames");
    let [a, b, c] = three_parts(&want);
    let (mut mixed, _) = ship_stream_raw("zstd", a);
    mixed.extend(tool("zstd", &["-q", "-c"], b));
    mixed.extend(tool("zstd", &["-q", "-c", "--no-check"], c));
    assert_clean(&run(&["-d", "zstd"], &mixed), &want, "mixed frames");
}

/// Like ship_stream, but for arbitrary bytes in one flushed piece, finished.
fn ship_stream_raw(kind: &str, data: &[u8]) -> (Vec<u8>, usize) {
    let mut s = Shipper::new(kind);
    let mut comp = s.ship(data);
    comp.extend(s.finish());
    (comp, data.len())
}

#[test]
fn output_matches_the_gzip_and_zstd_clis() {
    // The reference decoders agree with qdb-unzip on the wal-ship fixtures.
    for case in CASES {
        for (ext, cli) in [("gz", "gzip"), ("zst", "zstd")] {
            let input = fixture(case, &format!("stream.wal.{ext}"));
            let reference = tool(cli, &["-d", "-c", "-q"], &input);
            let ours = run(&[], &input);
            assert_clean(&ours, &reference, &format!("{case}.{ext} vs {cli} -dc"));
        }
    }
}

// ---- streaming: an unfinished stream over a connection that stays open ----------------

/// A running qdb-unzip whose stdout is read by a thread into a channel, so
/// the test can wait for bytes with a deadline.
struct Live {
    child: Child,
    rx: Receiver<Vec<u8>>,
    got: Vec<u8>,
}

impl Live {
    fn spawn(args: &[&str], stdin: Stdio) -> (Live, Option<std::process::ChildStdin>) {
        let mut child = qdb_unzip(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qdb-unzip");
        let stdin = child.stdin.take();
        let rx = Self::reader(child.stdout.take().unwrap());
        (
            Live {
                child,
                rx,
                got: Vec::new(),
            },
            stdin,
        )
    }

    fn reader(mut out: ChildStdout) -> Receiver<Vec<u8>> {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        rx
    }

    /// Wait until exactly `total` decoded bytes have arrived in all.
    fn expect_total(&mut self, total: usize, what: &str) {
        let start = Instant::now();
        while self.got.len() < total {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.got.extend(chunk),
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "{what}: only {} of {total} decoded bytes arrived while the input stayed open",
                        self.got.len()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "{what}: stdout closed after {} of {total} bytes",
                        self.got.len()
                    )
                }
            }
        }
        assert_eq!(self.got.len(), total, "{what}: more output than was sent");
    }

    /// Wait for exit; return (status, everything on stdout, stderr).
    fn finish(mut self, what: &str) -> (ExitStatus, Vec<u8>, String) {
        let err = drain(self.child.stderr.take().unwrap());
        let st = wait_or_kill(&mut self.child, what);
        while let Ok(chunk) = self.rx.recv_timeout(DEADLINE) {
            self.got.extend(chunk);
        }
        let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
        (st, self.got, err)
    }
}

/// Send `stream` record by record, wal-ship style, through `conn` (which
/// stays open), and check each record is decoded before the next is sent.
fn stream_record_by_record(kind: &str, stream: &[u8], live: &mut Live, conn: &mut dyn Write) {
    let mut shipper = Shipper::new(kind);
    let mut total = 0;
    for (i, piece) in wal_pieces(stream).into_iter().enumerate() {
        conn.write_all(&shipper.ship(piece)).unwrap();
        conn.flush().unwrap();
        total += piece.len();
        live.expect_total(total, &format!("{kind} record {i}"));
    }
    assert!(
        live.got == stream,
        "{kind}: decoded bytes differ from the stream"
    );
    // The stream is deliberately left unfinished, as in --follow mode.
    drop(shipper);
}

#[test]
fn flushed_gzip_records_arrive_while_the_pipe_stays_open() {
    let stream = fixture("c02-overflow", "stream.wal");
    let (mut live, stdin) = Live::spawn(&[], Stdio::piped());
    let mut stdin = stdin.unwrap();
    stream_record_by_record("gzip", &stream, &mut live, &mut stdin);
    // Closing the unfinished stream is a partial tail: warn, exit 0.
    drop(stdin);
    let (st, out, err) = live.finish("gzip follow");
    assert!(st.success(), "exit {st}, stderr {err}");
    assert_eq!(out, stream);
    assert!(
        err.contains("WARN") && err.contains("partial tail"),
        "stderr: {err:?}"
    );
}

#[test]
fn flushed_zstd_records_arrive_while_the_socket_stays_open() {
    let stream = fixture("c02-overflow", "stream.wal");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    sender.set_nodelay(true).unwrap();
    let (receiver, _) = listener.accept().unwrap();
    let (mut live, _) = Live::spawn(&["-d", "zstd"], Stdio::from(OwnedFd::from(receiver)));
    stream_record_by_record("zstd", &stream, &mut live, &mut sender);
    drop(sender);
    let (st, out, err) = live.finish("zstd follow");
    assert!(st.success(), "exit {st}, stderr {err}");
    assert_eq!(out, stream);
    assert!(err.contains("partial tail"), "stderr: {err:?}");
}

#[test]
fn finished_streams_end_without_a_warning() {
    for kind in ["gzip", "zstd"] {
        let stream = fixture("c01-one-put", "stream.wal");
        let (mut live, stdin) = Live::spawn(&[], Stdio::piped());
        let mut stdin = stdin.unwrap();
        let mut shipper = Shipper::new(kind);
        for piece in wal_pieces(&stream) {
            stdin.write_all(&shipper.ship(piece)).unwrap();
        }
        live.expect_total(stream.len(), kind);
        stdin.write_all(&shipper.finish()).unwrap();
        drop(stdin);
        let (st, out, err) = live.finish(kind);
        assert!(st.success(), "{kind}: exit {st}, stderr {err}");
        assert_eq!(out, stream, "{kind}");
        assert_eq!(err, "", "{kind}");
    }
}

// ---- cut-off streams -------------------------------------------------------------------

/// Feed `input[..cut]` for each cut and check: exit 0, stdout a prefix of
/// `want`, never shorter than for a smaller cut, a warning whenever the
/// stream was cut, and the whole stream when it was not.
fn check_cuts(input: &[u8], want: &[u8], cuts: &[usize], args: &[&str], what: &str) -> Vec<usize> {
    let mut last = 0;
    let mut lens = Vec::new();
    for &cut in cuts {
        let out = run(args, &input[..cut]);
        let w = format!("{what} cut at {cut}/{}", input.len());
        assert!(
            out.status.success(),
            "{w}: exit {}, stderr {}",
            out.status,
            out.stderr
        );
        assert!(
            want.starts_with(&out.stdout),
            "{w}: output ({} bytes) is not a prefix of stream.wal",
            out.stdout.len()
        );
        assert!(
            out.stdout.len() >= last,
            "{w}: less output than a shorter cut gave"
        );
        last = out.stdout.len();
        if cut == input.len() {
            assert_eq!(out.stdout, want, "{w}");
            assert_eq!(out.stderr, "", "{w}");
        } else if cut == 0 {
            assert!(
                out.stderr.contains("the input was empty"),
                "{w}: {}",
                out.stderr
            );
        } else {
            assert!(
                out.stderr.contains("WARN") && out.stderr.contains("partial tail"),
                "{w}: stderr {:?}",
                out.stderr
            );
            assert!(!out.stderr.contains("error"), "{w}: {}", out.stderr);
        }
        lens.push(last);
    }
    lens
}

#[test]
fn c01_fixtures_cut_at_every_offset() {
    let want = fixture("c01-one-put", "stream.wal");
    for ext in ["gz", "zst"] {
        let input = fixture("c01-one-put", &format!("stream.wal.{ext}"));
        let cuts: Vec<usize> = (0..=input.len()).collect();
        let lens = check_cuts(&input, &want, &cuts, &[], &format!("c01.{ext}"));
        // The record was flushed before the trailer, so all of it decodes
        // from a cut that only loses the trailer / frame end.
        let tail = if ext == "gz" { 8 } else { 3 };
        assert_eq!(lens[input.len() - tail], want.len(), "c01.{ext}");
    }
}

#[test]
fn c02_fixtures_cut_at_a_spread_of_offsets() {
    let want = fixture("c02-overflow", "stream.wal");
    for (ext, mode) in [("gz", "gzip"), ("zst", "zstd")] {
        let input = fixture("c02-overflow", &format!("stream.wal.{ext}"));
        let n = input.len();
        let mut cuts: Vec<usize> = (0..=120).map(|i| i * n / 120).collect();
        cuts.extend([1, 2, 3, 5, 9, 10, 11, 17, n - 9, n - 8, n - 4, n - 1]);
        cuts.sort_unstable();
        cuts.dedup();
        check_cuts(&input, &want, &cuts, &["-d", mode], &format!("c02.{ext}"));
    }
}

#[test]
fn a_cut_at_or_after_a_flush_point_yields_every_record_before_it() {
    let want = fixture("c02-overflow", "stream.wal");
    for kind in ["gzip", "zstd"] {
        let (comp, flushes) = ship_stream(kind, &want, true);
        let mut cuts = Vec::new();
        for &(c, _) in &flushes {
            cuts.extend([c - 1, c, c + 1]);
        }
        cuts.push(comp.len());
        cuts.sort_unstable();
        cuts.dedup();
        let lens = check_cuts(&comp, &want, &cuts, &[], kind);
        for (&cut, &len) in cuts.iter().zip(&lens) {
            let floor = flushes
                .iter()
                .filter(|&&(c, _)| c <= cut)
                .map(|&(_, d)| d)
                .max()
                .unwrap_or(0);
            assert!(
                len >= floor,
                "{kind} cut at {cut}: {len} bytes decoded, but {floor} were flushed before the cut"
            );
        }
    }
}

// ---- bad input ---------------------------------------------------------------------------

fn flipped(input: &[u8], at: &[usize]) -> Vec<u8> {
    let mut v = input.to_vec();
    for &i in at {
        v[i] ^= 0x5a;
    }
    v
}

fn assert_corrupt(out: &Out, prefix: &str, what: &str) {
    assert_eq!(out.status.code(), Some(1), "{what}: stderr {}", out.stderr);
    assert!(
        out.stderr.starts_with(&format!("error: {prefix}")),
        "{what}: stderr {:?}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{what}: {:?}", out.stderr);
    assert!(!out.stderr.contains("WARN"), "{what}: {:?}", out.stderr);
}

#[test]
fn corrupt_gzip_is_an_error() {
    let want = fixture("c02-overflow", "stream.wal");
    let gz = fixture("c02-overflow", "stream.wal.gz");
    let n = gz.len();
    for at in [n / 3, n / 2, 2 * n / 3, n - 6] {
        let out = run(&[], &flipped(&gz, &[at]));
        assert_corrupt(&out, "gzip: ", &format!("flip at {at}"));
    }
    // A flip inside the deflate data of the gzip CLI's output too.
    let cli = tool("gzip", &["-c", "-n"], &want);
    let out = run(&["-d", "gzip"], &flipped(&cli, &[cli.len() / 2]));
    assert_corrupt(&out, "gzip: ", "gzip CLI flip");
    // Junk after a complete member is not silently dropped.
    let mut junk = gz.clone();
    junk.extend(b"junk");
    let out = run(&[], &junk);
    assert_corrupt(
        &out,
        "gzip: data after member 1 is not another gzip member",
        "junk",
    );
    assert_eq!(out.stdout, want, "everything before the junk is written");
}

#[test]
fn corrupt_zstd_is_an_error() {
    let want = fixture("c02-overflow", "stream.wal");
    // The zstd CLI writes a content checksum, so any flip is detectable.
    let zst = tool("zstd", &["-q", "-c"], &want);
    let n = zst.len();
    for at in [n / 3, n / 2, 2 * n / 3, n - 2] {
        let out = run(&[], &flipped(&zst, &[at]));
        assert_corrupt(&out, "zstd: ", &format!("flip at {at}"));
    }
    // wal-ship's frames carry no checksum, so a flipped literal would go
    // unseen: give the second block (after the frame header, 6 bytes, and
    // the raw 16-byte block holding the WAL header) the reserved type 3.
    let ship = fixture("c02-overflow", "stream.wal.zst");
    assert_eq!(ship[6..9], [0x80, 0, 0], "first block: raw, 16 bytes");
    let mut bad = ship.clone();
    bad[6 + 3 + 16] |= 0b110;
    let out = run(&[], &bad);
    assert_corrupt(&out, "zstd: ", "wal-ship zstd block type");
    let mut junk = ship.clone();
    junk.extend(b"junk junk");
    let out = run(&[], &junk);
    assert_corrupt(&out, "zstd: ", "junk");
    assert!(out.stderr.contains("after frame 1"), "{}", out.stderr);
}

#[test]
fn zstd_long_window_is_refused_with_a_hint() {
    // Fed through stdin, zstd cannot shrink the declared window to the input size.
    let want = fixture("c01-one-put", "stream.wal");
    let zst = tool("zstd", &["-q", "-c", "--long=31"], &want);
    assert_corrupt(
        &run(&[], &zst),
        "zstd: a frame needs a window larger than 8 MiB (2^23 bytes), at or after input byte 0: \
         wal-ship never needs more; for a stream made with `zstd --long=N`, raise the limit with \
         --zstd-window-log-max N (memory grows with it)",
        "--long=31",
    );
}

#[test]
fn mode_mismatch_names_what_was_seen() {
    let gz = fixture("c01-one-put", "stream.wal.gz");
    let zst = fixture("c01-one-put", "stream.wal.zst");
    let raw = fixture("c01-one-put", "stream.wal");
    let looks = |seen: &str, sig: &str, chosen: &str, fix: &str| {
        format!(
            "input looks like {seen} (starts with {sig}) but --decompress {chosen} was chosen: \
             use --decompress {fix} or auto"
        )
    };
    let cases: [(&[u8], &str, String); 6] = [
        (&gz, "zstd", looks("gzip", "1f 8b", "zstd", "gzip")),
        (&gz, "none", looks("gzip", "1f 8b", "none", "gzip")),
        (&zst, "gzip", looks("zstd", "28 b5 2f fd", "gzip", "zstd")),
        (&zst, "none", looks("zstd", "28 b5 2f fd", "none", "zstd")),
        (
            &raw,
            "gzip",
            looks(
                "an uncompressed QuiverDB 1.x WAL stream",
                "P1WAL001",
                "gzip",
                "none",
            ),
        ),
        (
            &raw,
            "zstd",
            looks(
                "an uncompressed QuiverDB 1.x WAL stream",
                "P1WAL001",
                "zstd",
                "none",
            ),
        ),
    ];
    for (input, mode, msg) in cases {
        assert_error(&run(&["--decompress", mode], input), &msg, mode);
    }
}

#[test]
fn quiverdb_2x_streams_are_refused_in_every_mode() {
    let mut v2 = b"P2WAL001".to_vec();
    v2.extend([0u8; 8 + 28]);
    let msg = "input is a QuiverDB 2.x WAL stream (P2WAL001), which is not supported: \
               quiverdb-follower applies 1.x streams";
    for mode in ["auto", "none", "gzip", "zstd"] {
        assert_error(&run(&["-d", mode], &v2), msg, mode);
    }
    let gz2 = tool("gzip", &["-c"], &v2);
    assert_error(
        &run(&[], &gz2),
        "input is a gzip-compressed QuiverDB 2.x WAL stream (P2WAL001), which is not \
         supported: quiverdb-follower applies 1.x streams",
        "gzip 2.x",
    );
}

#[test]
fn unrecognised_input_is_refused_in_every_mode() {
    let msg = "input is not gzip, zstd or a QuiverDB 1.x WAL stream (first bytes: \
               47 45 54 20 2f 20 48 54 ... = \"GET / HT\"): check the leader's --compress and \
               the sender";
    for mode in ["auto", "none", "gzip", "zstd"] {
        assert_error(&run(&["-d", mode], b"GET / HTTP/1.1\r\n\r\n"), msg, mode);
    }
    // gzip of something that is not a WAL stream.
    let gz = tool("gzip", &["-c"], b"#!/bin/sh\necho hi\n");
    assert_error(
        &run(&[], &gz),
        "the gzip data does not decode to a QuiverDB 1.x WAL stream (first decoded bytes: \
         23 21 2f 62 69 6e 2f 73 = \"#!/bin/s\"): check that the leader sends wal-ship output",
        "gzip of a script",
    );
}

#[test]
fn empty_input_warns_and_exits_0() {
    for mode in ["auto", "none", "gzip", "zstd"] {
        let out = run(&["-d", mode], b"");
        assert!(out.status.success(), "{mode}: {}", out.stderr);
        assert!(out.stdout.is_empty());
        assert!(
            out.stderr.contains("the input was empty"),
            "{mode}: {}",
            out.stderr
        );
    }
}

// ---- the reader of stdout going away ------------------------------------------------------

#[test]
fn downstream_closing_early_is_a_quiet_end() {
    let big = fixture_path("c03-churn", "stream.wal.gz");
    let want = fixture("c03-churn", "stream.wal");
    let mut child = qdb_unzip(&[])
        .stdin(File::open(&big).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let err = drain(child.stderr.take().unwrap());
    let mut first = [0u8; 100];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(first[..], want[..100]);
    drop(stdout);
    let st = wait_or_kill(&mut child, "closed stdout");
    let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    assert!(st.success(), "exit {st}, stderr {err}");
    assert_eq!(err, "", "no message when the reader goes away");
}

#[test]
fn shell_pipeline_into_head_is_quiet() {
    let big = fixture_path("c03-churn", "stream.wal.zst");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(r#"set -o pipefail; "$0" < "$1" | head -c 100 | wc -c"#)
        .arg(BIN)
        .arg(&big)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let st = wait_or_kill(&mut child, "bash pipeline");
    let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    assert!(st.success(), "pipeline exit {st} (pipefail), stderr {err}");
    assert_eq!(String::from_utf8_lossy(&out.join().unwrap()).trim(), "100");
    assert_eq!(err, "");
}

// ---- memory ---------------------------------------------------------------------------

/// The peak resident size (VmHWM) of a running child, in KiB. Read from
/// /proc rather than getrusage: a child's ru_maxrss starts from the
/// *parent's* RSS at spawn on Linux, and this test binary's RSS varies with
/// whatever the other tests hold at that moment.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn memory_stays_bounded_on_a_long_stream() {
    // 10 copies of c03, compressed wal-ship style on the fly: ~49 MB decoded.
    let stream = fixture("c03-churn", "stream.wal");
    let copies = 10;
    let (mut live, stdin) = Live::spawn(&[], Stdio::piped());
    let mut stdin = stdin.unwrap();
    let feed = stream.clone();
    let feeder = thread::spawn(move || {
        let mut shipper = Shipper::new("gzip");
        for _ in 0..copies {
            for piece in wal_pieces(&feed) {
                stdin.write_all(&shipper.ship(piece)).unwrap();
            }
        }
        stdin.write_all(&shipper.finish()).unwrap();
    });
    let expected = copies * stream.len();
    let (mut total, mut mismatch, mut peak) = (0usize, None, None);
    while total < expected {
        let chunk = match live.rx.recv_timeout(DEADLINE) {
            Ok(c) => c,
            Err(e) => {
                let _ = live.child.kill();
                panic!("after {total} of {expected} bytes: {e:?}");
            }
        };
        for (i, b) in chunk.iter().enumerate() {
            if mismatch.is_none() && *b != stream[(total + i) % stream.len()] {
                mismatch = Some(total + i);
            }
        }
        total += chunk.len();
        // The child is not reaped yet, so its pid is still its own (once it
        // has exited, /proc shows no VmHWM and the reading is skipped).
        if let Some(kib) = peak_rss_kib(live.child.id()) {
            peak = peak.max(Some(kib));
        }
    }
    feeder.join().unwrap();
    let (st, rest, err) = live.finish("long stream");
    assert!(st.success(), "exit {st}, stderr {err}");
    assert_eq!(total, expected);
    assert_eq!(rest.len(), 0, "more output than was sent");
    assert_eq!(mismatch, None, "decoded bytes differ");
    let peak = peak.expect("no VmHWM reading while the child ran");
    assert!(
        peak < 32 * 1024,
        "peak RSS {peak} KiB while decoding {total} bytes"
    );
}
