//! The bodies of the cargo-fuzz targets, also run on stable by the test
//! suite over the seed corpus and mutations of it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quiverdb_follower::format::layout::*;
use quiverdb_follower::{Fs, Meta};

use crate::fault::{CrashMode, SimFs};
use crate::stream::{check_claims, StreamIndex};

/// The body of the `apply_stream` fuzz target, also run on stable by
/// `tests/hostile.rs` over the seed corpus and mutations of it.
///
/// Feeds `data` as one WAL stream to [`quiverdb_follower::Follower::apply`] on a
/// fresh [`SimFs`] and checks: no panic; only stream errors (the file system
/// never fails here); meta.last_lsn is never above the highest CRC-valid LSN
/// of the stream, and equals it when the stream applied to its end; what the
/// follower reports as durable is what a power loss leaves; and
/// [`check_claims`] holds. Memory is bounded by the follower's caps: the
/// fuzzer runs it with `-malloc_limit_mb`.
pub fn fuzz_apply_stream(data: &[u8]) {
    thread_local! {
        static ROOT: PathBuf = {
            // A real folder, only for the DB lock; data stays in the SimFs.
            let mut p = std::env::temp_dir();
            let tid = format!("{:?}", std::thread::current().id())
                .chars()
                .filter(char::is_ascii_digit)
                .collect::<String>();
            p.push(format!("qdb-fuzz-{}-{tid}", std::process::id()));
            std::fs::create_dir_all(&p).expect("create fuzz root");
            p.join("db")
        };
    }
    ROOT.with(|root| fuzz_apply_stream_in(root, data));
}

/// [`fuzz_apply_stream`] with the (real, otherwise unused) folder that holds
/// the DB lock chosen by the caller.
pub fn fuzz_apply_stream_in(root: &Path, data: &[u8]) {
    use quiverdb_follower::{ApplyOptions, Follower, Plain, SessionStats};
    use std::time::Duration;

    let fs = SimFs::new();
    fs.create_dir_all(root).expect("sim root");
    let opts = ApplyOptions {
        // Small caps and batches: growth stays cheap and commits are many.
        max_pages: 1 << 16,
        batch_bytes: 3 * 4096,
        batch_interval: Duration::from_secs(3600),
        // In a test binary, a child process forked by another test while we
        // held the lock keeps it until its exec: wait rather than fail.
        wait_lock: true,
        ..ApplyOptions::default()
    };
    let mut f = Follower::open(Arc::new(fs.clone()), root, opts).expect("open follower");
    let mut stats = SessionStats::default();
    let res = f.apply(Plain(data), &mut stats);
    let reported = f.meta().copied();
    drop(f);

    let mut idx = StreamIndex::new(data);
    let max_valid = idx.max_lsn();
    if let Err(e) = &res {
        // Claims are checked only against the records apply processed: the
        // failing one and those after it were never applied.
        let at = stream_error_offset(e).unwrap_or(0) as usize;
        idx.records.retain(|r| r.offset < at);
    }
    if let Err(e) = &res {
        assert!(e.is_stream_error(), "local error on a healthy fs: {e}");
    }
    if let Some(m) = reported {
        assert!(
            m.last_lsn <= max_valid,
            "last_lsn {} above the highest valid lsn {max_valid}",
            m.last_lsn
        );
        if res.is_ok() {
            assert_eq!(
                m.last_lsn, max_valid,
                "a clean session must reach its last lsn"
            );
        }
        assert_eq!(stats.last_lsn, m.last_lsn);
    }
    // Everything the follower reported must already be durable.
    fs.crash(CrashMode::LoseUnsynced);
    let durable = fs
        .durable_read(&root.join(META_FILE))
        .map(|b| Meta::parse(&b).expect("durable meta parses"));
    assert_eq!(durable, reported, "reported meta is not the durable meta");
    if let Err(e) = check_claims(&fs, root, &idx, None) {
        panic!("durability check failed: {e}");
    }
}

/// The body of the `parse_stream` fuzz target: [`quiverdb_follower::format::wal::WalReader`]
/// against the independent parser of [`StreamIndex`]. Both must find the
/// same CRC-valid records (offset, type, LSN, page id) in the same order; a
/// clean end or partial tail must come after the last of them, and a CRC
/// error exactly where the index stopped. The reader never reads past the
/// input and never allocates more than a page (or its 1 MiB cap) by an
/// untrusted length.
pub fn fuzz_parse_stream(data: &[u8]) {
    use quiverdb_follower::format::wal::{Next, WalReader};
    use quiverdb_follower::StreamError;

    let idx = StreamIndex::new(data);
    let Ok(mut rd) = WalReader::open(data) else {
        assert!(
            idx.records.is_empty(),
            "the reader refused a stream the index read"
        );
        return;
    };
    let mut got = Vec::new();
    let mut buf = Vec::new();
    // `Ok(None)`: a clean end or partial tail; `Ok(Some(offset))`: a page
    // image of an impossible len, which apply rejects before reading on.
    let outcome = loop {
        let (h, raw) = match rd.next_header() {
            Ok(Next::Record(h, raw)) => (h, raw),
            Ok(Next::End(_)) => break Ok(None),
            Err(e) => break Err(e),
        };
        let offset = rd.offset() as usize - WAL_RECORD_HEADER_LEN;
        let end = if h.is_page_image() {
            if !is_valid_page_size(h.len) {
                break Ok(Some(offset as u64));
            }
            rd.read_payload(&h, &raw, &mut buf)
        } else {
            rd.skip_payload(&h, &raw)
        };
        match end {
            Ok(None) => got.push((offset, h.rtype, h.lsn, h.page_id)),
            Ok(Some(_)) => break Ok(None),
            Err(e) => break Err(e),
        }
        assert!(rd.offset() as usize <= data.len());
    };
    let want: Vec<_> = idx
        .records
        .iter()
        .map(|r| (r.offset, r.rtype, r.lsn, r.page_id))
        .collect();
    assert!(
        want.starts_with(&got),
        "the reader and the index disagree: {got:?} vs {want:?}"
    );
    match outcome {
        Ok(None) => {
            assert_eq!(got, want);
            assert_eq!(idx.stopped_at_crc_error, None);
        }
        Err(StreamError::CrcMismatch { offset, .. }) => {
            assert_eq!(got, want);
            assert_eq!(idx.stopped_at_crc_error, Some(offset as usize));
        }
        // The caps end the comparison early; the index, which has none,
        // either reads that record on or stopped at it.
        Ok(Some(offset)) | Err(StreamError::RecordTooLong { offset, .. }) => {
            let offset = offset as usize;
            if let Some(next) = idx.records.get(got.len()) {
                assert_eq!(next.offset, offset);
            }
        }
        Err(e) => panic!("unexpected reader error on an in-memory stream: {e}"),
    }
}

/// The stream offset of the record a stream error is about (`None` for
/// errors about the stream header or the input itself).
pub fn stream_error_offset(e: &quiverdb_follower::Error) -> Option<u64> {
    use quiverdb_follower::StreamError as S;
    match e {
        quiverdb_follower::Error::Stream(
            S::CrcMismatch { offset, .. }
            | S::PageLenMismatch { offset, .. }
            | S::InvalidPageLen { offset, .. }
            | S::RecordTooLong { offset, .. }
            | S::PageIdTooLarge { offset, .. }
            | S::CorruptPage { offset, .. },
        ) => Some(*offset),
        _ => None,
    }
}

/// Output cap of [`fuzz_unzip`]: a few KiB of gzip or zstd can decode to
/// gigabytes, so the sink refuses more than this, as a closed pipe would.
pub const UNZIP_FUZZ_CAP: usize = 4 << 20;

/// A sink that holds at most `cap` bytes and fails (EPIPE) past that.
struct BoundedSink {
    out: Vec<u8>,
    cap: usize,
    refused: bool,
}

impl io::Write for BoundedSink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        assert!(!self.refused, "unzip wrote again after its output failed");
        if self.out.len() + b.len() > self.cap {
            self.refused = true;
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.out.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the stock decoders (flate2's and zstd's readers, the crates' own
/// code paths, not the raw engines `codec` drives) make of `data`, up to
/// one byte past `cap`, and whether they reached the end without an error.
fn stock_decode(
    data: &[u8],
    c: quiverdb_follower::codec::Compression,
    cap: usize,
) -> (Vec<u8>, bool) {
    use quiverdb_follower::codec::Compression;
    use std::io::Read;
    let r: Box<dyn Read> = match c {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(data)),
        Compression::Zstd => match zstd::stream::read::Decoder::new(data) {
            Ok(d) => Box::new(d),
            Err(_) => return (Vec::new(), false),
        },
        _ => return (data.to_vec(), true),
    };
    let mut r = r.take(cap as u64 + 1);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return (out, false),
        }
    }
}

/// The body of the `unzip` fuzz target, also replayed on stable by
/// `tests/unzip_fuzz.rs`: `data` through [`quiverdb_follower::codec::unzip`] in every
/// mode (auto, none, gzip, zstd) into a sink capped at [`UNZIP_FUZZ_CAP`].
///
/// Checks: no panic; reading a slice never fails; a write error is the
/// sink's own refusal, after which unzip stops writing and returns it
/// (output stays bounded however much the input would decode to); input
/// refused for its format writes nothing; what is written is a prefix of a
/// 1.x stream (it starts like `P1WAL001`); on success every input byte was
/// read and every output byte counted; uncompressed input is copied
/// through unchanged; `auto` agrees with the mode it detects; and the output
/// agrees with the stock decoders: equal for a complete stream, and for a
/// cut one at least as long as theirs (everything decodable is written).
pub fn fuzz_unzip(data: &[u8]) {
    use quiverdb_follower::codec::{unzip, CodecError, Compression};
    let mut auto = None;
    for mode in [
        Compression::Auto,
        Compression::None,
        Compression::Gzip,
        Compression::Zstd,
    ] {
        let mut sink = BoundedSink {
            out: Vec::new(),
            cap: UNZIP_FUZZ_CAP,
            refused: false,
        };
        let res = unzip(data, &mut sink, mode);
        let out = &sink.out;
        let n = out.len().min(WAL_MAGIC.len());
        assert_eq!(
            &out[..n],
            &WAL_MAGIC[..n],
            "{mode}: output is not a 1.x stream"
        );
        match &res {
            Ok(o) => {
                assert!(!sink.refused, "{mode}: the refused write was swallowed");
                assert_eq!(
                    o.bytes_in,
                    data.len() as u64,
                    "{mode}: input not read to its end"
                );
                assert_eq!(o.bytes_out, out.len() as u64, "{mode}: bytes_out");
                if mode != Compression::Auto {
                    assert_eq!(o.detected, mode);
                }
                match o.detected {
                    Compression::None => assert!(out[..] == data[..], "{mode}: copy-through"),
                    c if !data.is_empty() => {
                        let (stock, complete) = stock_decode(data, c, UNZIP_FUZZ_CAP);
                        if !o.truncated {
                            assert!(
                                complete,
                                "{mode}: the stock {c} decoder refuses a stream unzip accepted"
                            );
                            assert!(
                                stock == *out,
                                "{mode}: {c} output differs from the stock decoder's"
                            );
                        } else {
                            assert!(
                                out.starts_with(&stock),
                                "{mode}: a cut {c} stream: {} bytes written, the stock decoder got {}: not everything decodable was written, or the bytes differ",
                                out.len(),
                                stock.len()
                            );
                        }
                    }
                    _ => {}
                }
            }
            Err(CodecError::Write(_)) => {
                assert!(sink.refused, "{mode}: a write error the sink never raised")
            }
            Err(CodecError::Read(e)) => panic!("{mode}: reading a slice failed: {e}"),
            Err(
                CodecError::ModeMismatch { .. }
                | CodecError::NotRecognised { .. }
                | CodecError::Wal2 { .. }
                | CodecError::DecodedNotWal { .. },
            ) => assert!(out.is_empty(), "{mode}: wrote before refusing the input"),
            Err(_) => {}
        }
        let outcome = res.as_ref().map(|o| (o.detected, o.truncated)).ok();
        match mode {
            Compression::Auto => auto = Some((outcome, out.clone())),
            m => {
                // `auto` decodes exactly as the mode it detected.
                if let Some((Some((detected, truncated)), auto_out)) = &auto {
                    if *detected == m {
                        assert_eq!(outcome, Some((*detected, *truncated)), "auto vs {m}");
                        assert!(auto_out == out, "auto and {m} wrote different bytes");
                    }
                }
            }
        }
    }
}
