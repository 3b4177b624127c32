//! Streaming gzip / zstd decoding of a WAL stream (spec §7.1, §5.4, §11.8).
//!
//! `wal-ship --compress` runs ONE compressor over the whole stream and
//! flushes it after every record (gzip sync flush, zstd end of block); in
//! `--follow` mode the stream is never finished. So the decoder here must
//! hand out every byte it can decode as soon as its input arrives, instead
//! of waiting for a buffer to fill or for the trailer. The stock `read::`
//! decoders of flate2 and zstd are built around pulling more input; this
//! module drives the raw engines (`flate2::Decompress`, zstd's `DCtx`) from
//! each `read()` of input instead, and writes + flushes the output after
//! each one, so nothing decodable sits in a buffer while the sender is idle.
//!
//! Contract of [`unzip`]:
//! * memory is bounded (two fixed buffers plus the decoder's window);
//! * a compressed stream that ends before its trailer / frame end is a
//!   partial tail, not an error (`truncated`), as in QuiverDB 1.x (§5.4);
//! * input that is not what the mode asks for is refused before a single
//!   byte is written, with a message that names what was seen;
//! * decoded data must start with the 1.x WAL magic, so "gzip of something
//!   else" is refused too (checked on the first 8 decoded bytes, held back
//!   until then: wal-ship's first flush is the 16-byte header, so this never
//!   delays a record).

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use crate::format::layout::{WAL2_MAGIC, WAL_MAGIC};

/// Size of the input reads. Large, so bulk decoding makes few syscalls; a
/// read returns whatever is available, so this never delays a flushed record.
pub const INPUT_BUF: usize = 256 * 1024;
/// Decoded bytes are written in chunks of at most this size.
pub const OUTPUT_BUF: usize = 256 * 1024;
/// Input handed to zstd per call (see `ZstdDecoder::feed`).
const ZSTD_SLICE: usize = 16 * 1024;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Skippable frames: magic 0x184D2A50..=0x184D2A5F, little-endian, so the
/// first byte is 0x50..=0x5F and the other three are fixed.
const ZSTD_SKIPPABLE_TAIL: [u8; 3] = [0x2a, 0x4d, 0x18];

/// How the input is compressed. `Auto` detects it from the first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Uncompressed 1.x WAL stream, copied through (refuses gzip/zstd input)
    None,
    /// Single or multi-member gzip (wal-ship --compress gzip, the gzip CLI)
    Gzip,
    /// Single or multi-frame zstd (wal-ship --compress zstd, the zstd CLI)
    Zstd,
    /// Detect gzip, zstd or an uncompressed stream from the first bytes
    Auto,
}

impl Compression {
    pub const ALL: [Compression; 4] = [
        Compression::None,
        Compression::Gzip,
        Compression::Zstd,
        Compression::Auto,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Auto => "auto",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `--decompress` value that is not one of none|gzip|zstd|auto.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression {0:?}: use none, gzip, zstd or auto")]
pub struct ParseCompressionError(pub String);

impl FromStr for Compression {
    type Err = ParseCompressionError;

    /// Trimmed and case-insensitive; the empty string means `none`, as for
    /// QuiverDB 1.x's `P1_APPLY_DECOMPRESS` (§7.2), so config values and
    /// environment variables written for 1.x keep their meaning.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "auto" => Ok(Compression::Auto),
            _ => Err(ParseCompressionError(s.to_string())),
        }
    }
}

/// What the first bytes of an input are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// gzip member header (`1f 8b`).
    Gzip,
    /// zstd frame (`28 b5 2f fd`) or zstd skippable frame.
    Zstd,
    /// Uncompressed QuiverDB 1.x WAL stream (`P1WAL001`).
    Wal1,
    /// QuiverDB 2.x WAL stream (`P2WAL001`): recognised only to refuse it.
    Wal2,
    /// None of the above, whatever follows.
    Unknown,
    /// Too few bytes to decide: they are a prefix of at least one signature.
    TooShort,
}

impl Sniffed {
    /// How the format is named in messages.
    fn describe(self) -> &'static str {
        match self {
            Sniffed::Gzip => "gzip",
            Sniffed::Zstd => "zstd",
            Sniffed::Wal1 => "an uncompressed QuiverDB 1.x WAL stream",
            Sniffed::Wal2 => "a QuiverDB 2.x WAL stream",
            Sniffed::Unknown | Sniffed::TooShort => "unrecognised data",
        }
    }

    /// The `--decompress` value that decodes this format.
    fn mode(self) -> Option<Compression> {
        match self {
            Sniffed::Gzip => Some(Compression::Gzip),
            Sniffed::Zstd => Some(Compression::Zstd),
            Sniffed::Wal1 => Some(Compression::None),
            _ => None,
        }
    }
}

impl fmt::Display for Sniffed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Classify the first bytes of an input. Never needs more than 8 bytes;
/// returns `TooShort` only while the bytes could still become a signature.
pub fn sniff(prefix: &[u8]) -> Sniffed {
    if prefix.starts_with(&GZIP_MAGIC) {
        return Sniffed::Gzip;
    }
    if prefix.starts_with(&ZSTD_MAGIC) || is_zstd_skippable(prefix) {
        return Sniffed::Zstd;
    }
    if prefix.starts_with(WAL_MAGIC) {
        return Sniffed::Wal1;
    }
    if prefix.starts_with(WAL2_MAGIC) {
        return Sniffed::Wal2;
    }
    if candidates(prefix).is_empty() {
        Sniffed::Unknown
    } else {
        Sniffed::TooShort
    }
}

fn is_zstd_skippable(prefix: &[u8]) -> bool {
    prefix.len() >= 4 && prefix[0] & 0xf0 == 0x50 && prefix[1..4] == ZSTD_SKIPPABLE_TAIL
}

/// Every format whose signature `prefix` is consistent with, most likely
/// first (the order decides a prefix cut so short it fits several).
fn candidates(prefix: &[u8]) -> Vec<Sniffed> {
    let fits = |sig: &[u8]| {
        let n = prefix.len().min(sig.len());
        prefix[..n] == sig[..n]
    };
    let mut out = Vec::new();
    if fits(&GZIP_MAGIC) {
        out.push(Sniffed::Gzip);
    }
    if fits(&ZSTD_MAGIC) {
        out.push(Sniffed::Zstd);
    }
    if fits(WAL_MAGIC) {
        out.push(Sniffed::Wal1);
    }
    if fits(WAL2_MAGIC) {
        out.push(Sniffed::Wal2);
    }
    let skippable_fits = match prefix.first() {
        None => true,
        Some(b) => {
            b & 0xf0 == 0x50 && {
                let n = (prefix.len() - 1).min(3);
                prefix[1..1 + n] == ZSTD_SKIPPABLE_TAIL[..n]
            }
        }
    };
    if skippable_fits && !out.contains(&Sniffed::Zstd) {
        out.push(Sniffed::Zstd);
    }
    out
}

/// Why a stream could not be decoded. Every message says what is wrong and
/// what to do. Input and output failures are separate variants, so a caller
/// can tell a dead sender from a closed reader ([`CodecError::is_broken_pipe`]).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The input is a known format, but not the one `--decompress` asked for.
    #[error(
        "input looks like {seen} (starts with {starts_with}) but --decompress {chosen} was chosen: \
         use --decompress {suggested} or auto"
    )]
    ModeMismatch {
        chosen: Compression,
        seen: Sniffed,
        suggested: Compression,
        starts_with: String,
    },
    /// A 2.x stream, compressed (`inside` = the compression) or not.
    #[error(
        "input is a {}QuiverDB 2.x WAL stream (P2WAL001), which is not supported: \
         quiverdb-follower applies 1.x streams",
        match .inside { Some(c) => format!("{c}-compressed "), None => String::new() }
    )]
    Wal2 { inside: Option<Compression> },
    /// The input starts with none of the known signatures.
    #[error(
        "input is not gzip, zstd or a QuiverDB 1.x WAL stream (first bytes: {first_bytes}): \
         check the leader's --compress and the sender"
    )]
    NotRecognised { first_bytes: String },
    /// The compressed data decodes fine, but not to a 1.x WAL stream.
    #[error(
        "the {format} data does not decode to a QuiverDB 1.x WAL stream (first decoded bytes: \
         {first_bytes}): check that the leader sends wal-ship output"
    )]
    DecodedNotWal {
        format: Compression,
        first_bytes: String,
    },
    /// Bad gzip header, corrupt deflate data, CRC or length mismatch, or
    /// trailing data that is not another gzip member.
    #[error(
        "gzip: {detail}, at input byte {offset}: the stream is corrupt; check the sender and the \
         link, and that the leader really sends gzip"
    )]
    CorruptGzip { offset: u64, detail: String },
    /// zstd rejected the data (corrupt block, bad checksum, trailing junk...).
    /// `offset` is where the slice of input that zstd rejected starts.
    #[error(
        "zstd: {detail}, at or after input byte {offset}: the stream is corrupt; check the sender \
         and the link, and that the leader really sends zstd"
    )]
    CorruptZstd { offset: u64, detail: String },
    /// The frame declares a window over the 128 MiB this decoder allows
    /// (memory stays bounded); wal-ship never does this, `zstd --long` can.
    #[error(
        "zstd: a frame needs a window over 128 MiB, at or after input byte {offset}: recompress \
         without zstd --long (or with --long=27 or less)"
    )]
    ZstdWindowTooLarge { offset: u64 },
    /// Reading the input failed (connection reset, I/O error...).
    #[error("reading the input failed: {0}: check the sender and the connection")]
    Read(#[source] io::Error),
    /// Writing the decoded output failed.
    #[error("writing the output failed: {0}: check the stage that reads the decoded stream")]
    Write(#[source] io::Error),
}

impl CodecError {
    /// True when the output's reader went away (EPIPE): Unix tools treat that
    /// as a normal end, not an error.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CodecError::Write(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// What [`unzip`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnzipOutcome {
    /// The format decoded: `None` (copied through), `Gzip` or `Zstd`.
    pub detected: Compression,
    /// Bytes read from the input.
    pub bytes_in: u64,
    /// Decoded bytes written to the output.
    pub bytes_out: u64,
    /// The compressed input ended before its gzip trailer / zstd frame end
    /// (a partial tail: everything decodable was written).
    pub truncated: bool,
}

/// Decode `input` to `output` as it arrives: after every read of input,
/// everything it made decodable is written and `output.flush()` is called,
/// so a record flushed by wal-ship reaches `output` without waiting for more
/// input. Memory stays bounded whatever the stream length.
///
/// A compressed stream cut off (EOF before trailer / frame end) is not an
/// error: `Ok` with `truncated = true` after writing everything decodable.
/// Empty input: `Ok` with zero bytes. Multi-member gzip and multi-frame zstd
/// are decoded to their end. Input that does not match `mode` is refused
/// before anything is written.
pub fn unzip<R: Read, W: Write>(
    mut input: R,
    output: W,
    mode: Compression,
) -> Result<UnzipOutcome, CodecError> {
    let mut buf = vec![0u8; INPUT_BUF];
    // Read just enough to classify the input. wal-ship's first flush holds
    // at least 10 bytes (gzip header) or the whole 16-byte WAL header, so
    // this never waits on a live stream.
    let mut filled = 0;
    let mut eof = false;
    while sniff(&buf[..filled]) == Sniffed::TooShort {
        let n = read_some(&mut input, &mut buf[filled..])?;
        if n == 0 {
            eof = true;
            break;
        }
        filled += n;
    }
    if filled == 0 {
        return Ok(UnzipOutcome {
            detected: match mode {
                Compression::Auto => Compression::None,
                m => m,
            },
            bytes_in: 0,
            bytes_out: 0,
            truncated: false,
        });
    }
    let format = choose_format(mode, &buf[..filled], eof)?;
    log::info!("decoding {} input", format_name(format));

    let mut sink = Sink::new(output, format);
    let mut decoder = match format {
        Compression::Gzip => Decoder::Gzip(Box::new(GzipDecoder::new())),
        Compression::Zstd => Decoder::Zstd(ZstdDecoder::new()),
        _ => Decoder::Raw,
    };
    let mut bytes_in = 0u64;
    let mut chunk = filled;
    loop {
        decoder.feed(&buf[..chunk], bytes_in, &mut sink)?;
        bytes_in += chunk as u64;
        if eof {
            break;
        }
        chunk = read_some(&mut input, &mut buf)?;
        if chunk == 0 {
            break;
        }
    }
    sink.finish()?;
    let truncated = decoder.truncated();
    if let Decoder::Gzip(g) = &decoder {
        log::debug!("gzip: {} complete member(s)", g.members);
    }
    if let Decoder::Zstd(z) = &decoder {
        log::debug!("zstd: {} complete frame(s)", z.frames);
    }
    Ok(UnzipOutcome {
        detected: format,
        bytes_in,
        bytes_out: sink.bytes_out,
        truncated,
    })
}

fn format_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "uncompressed",
        other => other.as_str(),
    }
}

fn read_some<R: Read>(input: &mut R, buf: &mut [u8]) -> Result<usize, CodecError> {
    loop {
        match input.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CodecError::Read(e)),
        }
    }
}

/// Pick the decoder for `mode` and the first bytes, or say why not.
/// `eof`: the input ended within `prefix`, so a `TooShort` prefix is a cut
/// stream and is resolved to the format it is most plausibly the start of.
fn choose_format(mode: Compression, prefix: &[u8], eof: bool) -> Result<Compression, CodecError> {
    let seen = match sniff(prefix) {
        Sniffed::TooShort if eof => {
            let cands = candidates(prefix);
            // The mode's own format wins when the cut prefix fits it.
            let wanted = cands
                .iter()
                .copied()
                .find(|s| s.mode() == Some(mode) && mode != Compression::Auto);
            wanted
                .or(cands.first().copied())
                .unwrap_or(Sniffed::Unknown)
        }
        s => s,
    };
    match seen {
        Sniffed::Wal2 => return Err(CodecError::Wal2 { inside: None }),
        Sniffed::Unknown | Sniffed::TooShort => {
            return Err(CodecError::NotRecognised {
                first_bytes: show_bytes(prefix),
            })
        }
        _ => {}
    }
    let found = seen.mode().unwrap_or(Compression::None);
    if mode == Compression::Auto || mode == found {
        return Ok(found);
    }
    let sig_len = match seen {
        Sniffed::Gzip => 2,
        Sniffed::Zstd => 4,
        _ => 8,
    };
    let sig = &prefix[..prefix.len().min(sig_len)];
    Err(CodecError::ModeMismatch {
        chosen: mode,
        seen,
        suggested: found,
        starts_with: if seen == Sniffed::Wal1 {
            String::from_utf8_lossy(sig).into_owned()
        } else {
            hex(sig)
        },
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Up to 8 bytes in hex, "..." if more followed, and the text when it is
/// printable ASCII (an HTTP request or a shell banner is then obvious).
fn show_bytes(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(8)];
    let mut s = hex(head);
    if bytes.len() > head.len() {
        s.push_str(" ...");
    }
    if head.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        s.push_str(&format!(" = {:?}", String::from_utf8_lossy(head)));
    }
    s
}

/// The output side: writes and flushes each decoded chunk, counts bytes and,
/// for compressed input, checks the first 8 decoded bytes are the 1.x magic.
struct Sink<W: Write> {
    out: W,
    format: Compression,
    /// Decoded bytes held back until the magic can be judged.
    head: Vec<u8>,
    checked: bool,
    bytes_out: u64,
}

impl<W: Write> Sink<W> {
    fn new(out: W, format: Compression) -> Self {
        Sink {
            out,
            format,
            head: Vec::with_capacity(WAL_MAGIC.len()),
            // Raw input was already checked by `choose_format`.
            checked: format == Compression::None,
            bytes_out: 0,
        }
    }

    fn write(&mut self, mut data: &[u8]) -> Result<(), CodecError> {
        if data.is_empty() {
            return Ok(());
        }
        if !self.checked {
            let take = (WAL_MAGIC.len() - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.head.len() < WAL_MAGIC.len() {
                return Ok(());
            }
            self.check_head()?;
            let head = std::mem::take(&mut self.head);
            self.out.write_all(&head).map_err(CodecError::Write)?;
            self.bytes_out += head.len() as u64;
        }
        self.out.write_all(data).map_err(CodecError::Write)?;
        self.bytes_out += data.len() as u64;
        self.out.flush().map_err(CodecError::Write)
    }

    fn check_head(&mut self) -> Result<(), CodecError> {
        let n = self.head.len();
        if self.head[..] == WAL_MAGIC[..n] {
            self.checked = n == WAL_MAGIC.len();
            return Ok(());
        }
        if n >= 2 && self.head[..] == WAL2_MAGIC[..n] {
            return Err(CodecError::Wal2 {
                inside: Some(self.format),
            });
        }
        Err(CodecError::DecodedNotWal {
            format: self.format,
            first_bytes: show_bytes(&self.head),
        })
    }

    /// End of input: a decoded stream shorter than the magic is passed on if
    /// it could be the start of one (a cut stream), refused otherwise.
    fn finish(&mut self) -> Result<(), CodecError> {
        if self.checked || self.head.is_empty() {
            return Ok(());
        }
        self.check_head()?;
        let head = std::mem::take(&mut self.head);
        self.out.write_all(&head).map_err(CodecError::Write)?;
        self.bytes_out += head.len() as u64;
        self.out.flush().map_err(CodecError::Write)
    }
}

enum Decoder {
    Raw,
    Gzip(Box<GzipDecoder>),
    Zstd(ZstdDecoder),
}

impl Decoder {
    /// Decode `input` (which starts at input offset `at`) and write all of it
    /// that is decodable now.
    fn feed<W: Write>(
        &mut self,
        input: &[u8],
        at: u64,
        sink: &mut Sink<W>,
    ) -> Result<(), CodecError> {
        match self {
            Decoder::Raw => sink.write(input),
            Decoder::Gzip(g) => g.feed(input, at, sink),
            Decoder::Zstd(z) => z.feed(input, at, sink),
        }
    }

    fn truncated(&self) -> bool {
        match self {
            Decoder::Raw => false,
            Decoder::Gzip(g) => g.members == 0 || !matches!(g.state, GzState::Between),
            Decoder::Zstd(z) => z.frames == 0 || z.in_frame,
        }
    }
}

// ---- gzip (RFC 1952) ---------------------------------------------------------

// Header flag bits (RFC 1952 §2.3.1). FTEXT (0x01) is only a hint.
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const FRESERVED: u8 = 0xe0;

enum GzState {
    /// Inside a member header (the parser tracks where).
    Header,
    /// Inside the deflate data.
    Body,
    /// Inside the 8-byte trailer (CRC32, ISIZE).
    Trailer,
    /// After a complete member: the stream may end here, or a new member begin.
    Between,
}

/// Where the header parser is. Fields of unbounded length (name, comment)
/// are skipped byte by byte, never stored, so a hostile header costs nothing.
#[derive(Clone, Copy)]
enum HeaderStep {
    Fixed { have: usize },
    ExtraLen { have: usize, len: u16 },
    Extra { left: u16 },
    Name,
    Comment,
    Hcrc { have: usize, crc: u16 },
    Done,
}

struct GzipDecoder {
    state: GzState,
    step: HeaderStep,
    flags: u8,
    fixed: [u8; 10],
    header_crc: flate2::Crc,
    inflate: flate2::Decompress,
    data_crc: flate2::Crc,
    trailer: [u8; 8],
    trailer_len: usize,
    members: u64,
    out: Vec<u8>,
}

impl GzipDecoder {
    fn new() -> Self {
        GzipDecoder {
            state: GzState::Header,
            step: HeaderStep::Fixed { have: 0 },
            flags: 0,
            fixed: [0; 10],
            header_crc: flate2::Crc::new(),
            inflate: flate2::Decompress::new(false),
            data_crc: flate2::Crc::new(),
            trailer: [0; 8],
            trailer_len: 0,
            members: 0,
            out: vec![0; OUTPUT_BUF],
        }
    }

    fn corrupt(offset: u64, detail: impl Into<String>) -> CodecError {
        CodecError::CorruptGzip {
            offset,
            detail: detail.into(),
        }
    }

    fn feed<W: Write>(
        &mut self,
        input: &[u8],
        at: u64,
        sink: &mut Sink<W>,
    ) -> Result<(), CodecError> {
        let mut pos = 0;
        while pos < input.len() {
            match self.state {
                GzState::Between => {
                    self.state = GzState::Header;
                    self.step = HeaderStep::Fixed { have: 0 };
                    self.header_crc.reset();
                }
                GzState::Header => {
                    pos += self.header(&input[pos..], at + pos as u64)?;
                    if matches!(self.step, HeaderStep::Done) {
                        self.state = GzState::Body;
                        self.inflate.reset(false);
                        self.data_crc.reset();
                    }
                }
                GzState::Body => {
                    pos += self.body(&input[pos..], at + pos as u64, sink)?;
                }
                GzState::Trailer => {
                    let take = (8 - self.trailer_len).min(input.len() - pos);
                    self.trailer[self.trailer_len..self.trailer_len + take]
                        .copy_from_slice(&input[pos..pos + take]);
                    self.trailer_len += take;
                    pos += take;
                    if self.trailer_len == 8 {
                        self.check_trailer(at + pos as u64 - 8)?;
                        self.members += 1;
                        self.state = GzState::Between;
                    }
                }
            }
        }
        Ok(())
    }

    /// Parse header bytes; returns how many were consumed.
    fn header(&mut self, input: &[u8], at: u64) -> Result<usize, CodecError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            let off = at + i as u64;
            i += 1;
            if !matches!(self.step, HeaderStep::Hcrc { .. }) {
                self.header_crc.update(&[b]);
            }
            self.step = match self.step {
                HeaderStep::Fixed { have } => {
                    self.fixed[have] = b;
                    match have {
                        0 | 1 if b != GZIP_MAGIC[have] => {
                            let what = if self.members == 0 {
                                "not a gzip header".to_string()
                            } else {
                                format!(
                                    "data after member {} is not another gzip member",
                                    self.members
                                )
                            };
                            return Err(Self::corrupt(off - have as u64, what));
                        }
                        2 if b != 8 => {
                            return Err(Self::corrupt(
                                off,
                                format!(
                                    "unsupported compression method {b} (only 8 = deflate exists)"
                                ),
                            ))
                        }
                        3 if b & FRESERVED != 0 => {
                            return Err(Self::corrupt(
                                off,
                                format!("reserved header flags set ({b:#04x})"),
                            ))
                        }
                        _ => {}
                    }
                    if have + 1 < self.fixed.len() {
                        HeaderStep::Fixed { have: have + 1 }
                    } else {
                        self.flags = self.fixed[3];
                        self.next_field(0)
                    }
                }
                HeaderStep::ExtraLen { have, len } => {
                    let len = len | (u16::from(b) << (8 * have));
                    if have == 0 {
                        HeaderStep::ExtraLen { have: 1, len }
                    } else if len == 0 {
                        self.next_field(FEXTRA)
                    } else {
                        HeaderStep::Extra { left: len }
                    }
                }
                HeaderStep::Extra { left } => {
                    if left > 1 {
                        HeaderStep::Extra { left: left - 1 }
                    } else {
                        self.next_field(FEXTRA)
                    }
                }
                HeaderStep::Name if b == 0 => self.next_field(FNAME),
                HeaderStep::Comment if b == 0 => self.next_field(FCOMMENT),
                s @ (HeaderStep::Name | HeaderStep::Comment) => s,
                HeaderStep::Hcrc { have, crc } => {
                    let crc = crc | (u16::from(b) << (8 * have));
                    if have == 0 {
                        HeaderStep::Hcrc { have: 1, crc }
                    } else {
                        let want = (self.header_crc.sum() & 0xffff) as u16;
                        if crc != want {
                            return Err(Self::corrupt(
                                off - 1,
                                format!("header CRC16 mismatch (stored {crc:#06x}, computed {want:#06x})"),
                            ));
                        }
                        HeaderStep::Done
                    }
                }
                HeaderStep::Done => unreachable!("header parsing continued past its end"),
            };
            if matches!(self.step, HeaderStep::Done) {
                break;
            }
        }
        Ok(i)
    }

    /// The step after the optional field whose flag is `done` (0 = after the
    /// fixed part). The flag values happen to be in RFC 1952 field order.
    fn next_field(&self, done: u8) -> HeaderStep {
        let f = self.flags;
        if done < FEXTRA && f & FEXTRA != 0 {
            HeaderStep::ExtraLen { have: 0, len: 0 }
        } else if done < FNAME && f & FNAME != 0 {
            HeaderStep::Name
        } else if done < FCOMMENT && f & FCOMMENT != 0 {
            HeaderStep::Comment
        } else if f & FHCRC != 0 {
            HeaderStep::Hcrc { have: 0, crc: 0 }
        } else {
            HeaderStep::Done
        }
    }

    /// Inflate from `input` until it is used up or the member's deflate data
    /// ends; write what was decoded. Returns the bytes consumed.
    fn body<W: Write>(
        &mut self,
        input: &[u8],
        at: u64,
        sink: &mut Sink<W>,
    ) -> Result<usize, CodecError> {
        let mut pos = 0;
        let mut filled = 0;
        loop {
            let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
            let status = self
                .inflate
                .decompress(
                    &input[pos..],
                    &mut self.out[filled..],
                    flate2::FlushDecompress::None,
                )
                .map_err(|e| {
                    Self::corrupt(at + pos as u64, format!("corrupt deflate data ({e})"))
                })?;
            // Both deltas are bounded by the slice lengths passed in.
            let used = (self.inflate.total_in() - in0) as usize;
            let made = (self.inflate.total_out() - out0) as usize;
            self.data_crc.update(&self.out[filled..filled + made]);
            pos += used;
            filled += made;
            if status == flate2::Status::StreamEnd {
                self.state = GzState::Trailer;
                self.trailer_len = 0;
                break;
            }
            if filled == self.out.len() {
                sink.write(&self.out[..filled])?;
                filled = 0;
                // The decoder may hold more output for this input: go on.
                continue;
            }
            // Input used up is not "nothing more to write": miniz_oxide
            // stops at each 32 KiB wrap of its window even when the input it
            // already consumed decodes further (a long match in progress), so
            // ask again until it makes no more. Stopping at once held those
            // bytes back until more input came, for good at a cut stream.
            if pos == input.len() && made == 0 {
                break;
            }
            if used == 0 && made == 0 {
                return Err(Self::corrupt(
                    at + pos as u64,
                    "deflate decoder stopped making progress",
                ));
            }
        }
        sink.write(&self.out[..filled])?;
        Ok(pos)
    }

    fn check_trailer(&self, at: u64) -> Result<(), CodecError> {
        let crc = u32::from_le_bytes([
            self.trailer[0],
            self.trailer[1],
            self.trailer[2],
            self.trailer[3],
        ]);
        let size = u32::from_le_bytes([
            self.trailer[4],
            self.trailer[5],
            self.trailer[6],
            self.trailer[7],
        ]);
        if crc != self.data_crc.sum() {
            return Err(Self::corrupt(
                at,
                format!(
                    "CRC32 mismatch in member {} (stored {crc:#010x}, decoded data has {:#010x})",
                    self.members + 1,
                    self.data_crc.sum()
                ),
            ));
        }
        // ISIZE is the length modulo 2^32, as is Crc::amount().
        if size != self.data_crc.amount() {
            return Err(Self::corrupt(
                at + 4,
                format!(
                    "length mismatch in member {} (stored {size}, decoded {})",
                    self.members + 1,
                    self.data_crc.amount()
                ),
            ));
        }
        Ok(())
    }
}

// ---- zstd ------------------------------------------------------------------------

struct ZstdDecoder {
    dctx: zstd::zstd_safe::DCtx<'static>,
    /// Bytes of a frame have been fed and its end not reached yet.
    in_frame: bool,
    frames: u64,
    out: Vec<u8>,
}

impl ZstdDecoder {
    fn new() -> Self {
        ZstdDecoder {
            // The default window limit (128 MiB) bounds memory; zstd's own
            // CLI refuses larger windows without --long too.
            dctx: zstd::zstd_safe::DCtx::create(),
            in_frame: false,
            frames: 0,
            out: vec![0; OUTPUT_BUF],
        }
    }

    fn feed<W: Write>(
        &mut self,
        input: &[u8],
        at: u64,
        sink: &mut Sink<W>,
    ) -> Result<(), CodecError> {
        use zstd::zstd_safe::{InBuffer, OutBuffer};
        let mut pos = 0;
        let mut filled = 0;
        loop {
            // zstd reports no position on error, so feed it in slices: an
            // error is then placed within one slice of the input.
            let end = input.len().min(pos + ZSTD_SLICE);
            let mut inb = InBuffer::around(&input[pos..end]);
            let mut outb = OutBuffer::around_pos(&mut self.out[..], filled);
            let res = self.dctx.decompress_stream(&mut outb, &mut inb);
            let made = outb.pos() - filled;
            let used = inb.pos();
            let hint = res.map_err(|code| self.error(code, at + pos as u64))?;
            pos += used;
            filled += made;
            if used > 0 || made > 0 {
                if hint == 0 {
                    self.frames += 1;
                }
                self.in_frame = hint != 0;
            }
            if filled == self.out.len() {
                sink.write(&self.out[..filled])?;
                filled = 0;
                // zstd may hold more decoded output for this input: go on.
                continue;
            }
            if pos == input.len() {
                break;
            }
            if used == 0 && made == 0 && hint != 0 {
                return Err(CodecError::CorruptZstd {
                    offset: at + pos as u64,
                    detail: "the decoder stopped making progress".into(),
                });
            }
        }
        sink.write(&self.out[..filled])
    }

    fn error(&self, code: usize, offset: u64) -> CodecError {
        let name = zstd::zstd_safe::get_error_name(code);
        // zstd returns its error codes negated, as a size_t.
        let window =
            zstd::zstd_safe::zstd_sys::ZSTD_ErrorCode::ZSTD_error_frameParameter_windowTooLarge;
        if code.wrapping_neg() == window as usize {
            return CodecError::ZstdWindowTooLarge { offset };
        }
        let detail = if self.frames > 0 && !self.in_frame {
            format!(
                "data after frame {} is not another zstd frame ({name})",
                self.frames
            )
        } else {
            name.to_string()
        };
        CodecError::CorruptZstd { offset, detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_signatures() {
        assert_eq!(sniff(b""), Sniffed::TooShort);
        assert_eq!(sniff(&[0x1f]), Sniffed::TooShort);
        assert_eq!(sniff(&[0x1f, 0x8b]), Sniffed::Gzip);
        assert_eq!(sniff(&[0x1f, 0x8c]), Sniffed::Unknown);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f]), Sniffed::TooShort);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Sniffed::Zstd);
        assert_eq!(sniff(&[0x5e, 0x2a, 0x4d, 0x18]), Sniffed::Zstd);
        assert_eq!(sniff(b"P"), Sniffed::TooShort);
        assert_eq!(sniff(b"P1WAL00"), Sniffed::TooShort);
        assert_eq!(sniff(b"P1WAL001"), Sniffed::Wal1);
        assert_eq!(sniff(b"P2WAL001\0\0"), Sniffed::Wal2);
        assert_eq!(sniff(b"P1WAL002"), Sniffed::Unknown);
        assert_eq!(sniff(b"GET / HTTP/1.1"), Sniffed::Unknown);
    }

    #[test]
    fn compression_names_round_trip() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Zstd,
            Compression::Auto,
        ] {
            assert_eq!(c.to_string().parse::<Compression>(), Ok(c));
        }
        assert_eq!(" GZIP ".parse::<Compression>(), Ok(Compression::Gzip));
        assert_eq!("".parse::<Compression>(), Ok(Compression::None));
        assert!("lz4".parse::<Compression>().is_err());
    }

    fn wal(n: usize) -> Vec<u8> {
        let mut v = WAL_MAGIC.to_vec();
        v.extend((0..n).map(|i| (i * 7 % 251) as u8));
        v
    }

    fn run(input: &[u8], mode: Compression) -> Result<(UnzipOutcome, Vec<u8>), CodecError> {
        let mut out = Vec::new();
        let o = unzip(input, &mut out, mode)?;
        Ok((o, out))
    }

    #[test]
    fn gzip_header_optional_fields() {
        let data = wal(5000);
        let mut enc = flate2::GzBuilder::new()
            .filename("stream.wal")
            .comment("a comment")
            .extra(vec![1, 2, 3, 4])
            .write(Vec::new(), flate2::Compression::default());
        enc.write_all(&data).unwrap();
        let mut gz = enc.finish().unwrap();
        // flate2 never sets FHCRC: add it by hand (CRC32 of the header, low 16 bits).
        let hdr_len = gz.len() - {
            let mut tail =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            tail.write_all(&data).unwrap();
            tail.finish().unwrap().len() + 8
        };
        gz[3] |= FHCRC;
        let mut crc = flate2::Crc::new();
        crc.update(&gz[..hdr_len]);
        let c16 = (crc.sum() & 0xffff) as u16;
        let mut with = gz[..hdr_len].to_vec();
        with.extend_from_slice(&c16.to_le_bytes());
        with.extend_from_slice(&gz[hdr_len..]);
        let (o, out) = run(&with, Compression::Gzip).unwrap();
        assert_eq!(out, data);
        assert!(!o.truncated);

        with[hdr_len] ^= 1;
        let err = run(&with, Compression::Gzip).unwrap_err();
        assert!(err.to_string().contains("header CRC16 mismatch"), "{err}");
    }

    #[test]
    fn zstd_skippable_frames_are_skipped() {
        let data = wal(3000);
        let mut input = vec![0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 9, 9, 9];
        input.extend(zstd::encode_all(&data[..1000], 3).unwrap());
        input.extend([0x5f, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]);
        input.extend(zstd::encode_all(&data[1000..], 3).unwrap());
        let (o, out) = run(&input, Compression::Auto).unwrap();
        assert_eq!(out, data);
        assert_eq!(o.detected, Compression::Zstd);
        assert!(!o.truncated);
    }

    #[test]
    fn compressed_non_wal_and_2x_are_refused() {
        let gz = |d: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(d).unwrap();
            e.finish().unwrap()
        };
        let err = run(&gz(b"hello, world"), Compression::Auto).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the gzip data does not decode to a QuiverDB 1.x WAL stream (first decoded bytes: \
             68 65 6c 6c 6f 2c 20 77 = \"hello, w\"): check that the leader sends wal-ship output"
        );
        let err = run(
            &zstd::encode_all(&b"P2WAL001\0\0\0\0\0\0\0\0"[..], 1).unwrap(),
            Compression::Auto,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "input is a zstd-compressed QuiverDB 2.x WAL stream (P2WAL001), which is not supported: \
             quiverdb-follower applies 1.x streams"
        );
        // A decoded stream shorter than the magic but fitting it is a cut stream: passed on.
        let (o, out) = run(&gz(b"P1WA"), Compression::Gzip).unwrap();
        assert_eq!(out, b"P1WA");
        assert_eq!(o.bytes_out, 4);
    }

    #[test]
    fn empty_input() {
        let (o, out) = run(b"", Compression::Auto).unwrap();
        assert!(out.is_empty());
        assert_eq!((o.bytes_in, o.bytes_out, o.truncated), (0, 0, false));
    }

    #[test]
    fn cut_prefix_resolves_to_the_chosen_mode() {
        // One byte 'P' fits the WAL magic and a zstd skippable frame.
        let (o, out) = run(b"P", Compression::Auto).unwrap();
        assert_eq!((o.detected, out.as_slice()), (Compression::None, &b"P"[..]));
        let (o, out) = run(b"P", Compression::Zstd).unwrap();
        assert_eq!(
            (o.detected, o.truncated, out.len()),
            (Compression::Zstd, true, 0)
        );
        let (o, _) = run(&[0x1f], Compression::Gzip).unwrap();
        assert!(o.truncated);
        assert!(matches!(
            run(&[0x1f], Compression::Zstd),
            Err(CodecError::ModeMismatch { .. })
        ));
    }

    #[test]
    fn gzip_isize_mismatch_is_corruption() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&wal(100)).unwrap();
        let mut gz = e.finish().unwrap();
        let n = gz.len();
        gz[n - 1] ^= 0x80;
        let err = run(&gz, Compression::Auto).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("gzip: length mismatch in member 1"),
            "{err}"
        );
    }

    /// Random damage to valid streams gives Ok or a typed error, never a
    /// panic or a hang, and Ok output is always a prefix of the original
    /// when the damage was a cut only.
    #[test]
    fn damaged_streams_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let data = wal(20_000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&data[..], 3).unwrap();
        for stream in [&gz, &zst] {
            for _ in 0..300 {
                let mut s = stream.clone();
                let cut = (next() as usize) % (s.len() + 1);
                s.truncate(cut);
                if let Ok((_, out)) = run(&s, Compression::Auto) {
                    assert!(data.starts_with(&out));
                }
                for _ in 0..(next() % 4) {
                    if !s.is_empty() {
                        let i = (next() as usize) % s.len();
                        s[i] = next() as u8;
                    }
                }
                let _ = run(&s, Compression::Auto);
            }
        }
    }

    #[test]
    fn write_errors_are_distinguishable() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let err = unzip(&wal(10)[..], Closed, Compression::None).unwrap_err();
        assert!(err.is_broken_pipe());
        assert!(matches!(err, CodecError::Write(_)));
    }
}
