//! `qdb-unzip`: flags. The help texts here are also the man page.

use clap::Parser;

use crate::transport::codec::{Compression, UnzipOptions, DEFAULT_ZSTD_WINDOW_LOG_MAX};

#[derive(Debug, Parser)]
#[command(
    name = "qdb-unzip",
    version,
    about = "Decompress a gzip or zstd QuiverDB 1.x WAL stream from stdin to stdout, as it arrives",
    long_about = "Decompress a QuiverDB 1.x WAL stream from stdin to stdout, as sent by \
`quiverdb wal-ship --compress gzip|zstd`, or made by the gzip and zstd command-line tools \
(multi-member gzip and multi-frame zstd included). An uncompressed stream (starting with \
P1WAL001) is copied through unchanged, so the tool can sit in a pipeline whatever the leader \
sends.\n\n\
Streaming: `wal-ship --follow` never finishes its compressed stream, it only flushes it after \
each record. Every byte that can be decoded is written to stdout (and flushed) as soon as it \
arrives, so each record reaches the next stage at once.\n\n\
A compressed stream that is cut off (the sender died, the connection dropped) is a partial \
tail, as in QuiverDB 1.x: everything decodable is written, a warning is logged and the exit \
status is 0. Input that is not what --decompress asks for, or a QuiverDB 2.x stream, is refused \
before anything is written. Corrupt compressed data is an error as soon as it is detected; what \
was written before stays written (the WAL record CRCs checked by qdb-apply catch damage in it). \
When the reader of stdout goes away, qdb-unzip stops quietly.",
    after_help = "EXIT STATUS:\n  0  the input was decoded to its end, or to the end of a partial tail, \
or stdout was closed by its reader\n  1  the input is not what --decompress asks for, or is corrupt, \
or reading/writing failed\n  2  usage error\n\n\
EXAMPLES:\n  qdb-unzip < stream.wal.zst | qdb-apply --path ./follower\n  \
socat -u TCP-LISTEN:9999,reuseaddr STDOUT | qdb-unzip | qdb-apply --path ./follower\n  \
ssh leader quiverdb wal-ship --path /db --compress zstd --follow | qdb-unzip -d zstd | qdb-apply --path ./follower\n\n\
Logs go to stderr; set RUST_LOG=info to see the detected format and the byte counts."
)]
pub struct Args {
    /// How stdin is compressed: auto detects gzip, zstd or an uncompressed stream from the first bytes; an explicit value refuses any other input
    #[arg(
        long,
        short = 'd',
        value_enum,
        default_value = "auto",
        value_name = "FORMAT"
    )]
    pub decompress: Compression,

    /// Refuse zstd frames whose window is over 2^N bytes (default 23 = 8 MiB, 4x what wal-ship uses); raise it (up to 31) for a stream made with `zstd --long=N`: the decoder's memory grows to about 2^N bytes
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_ZSTD_WINDOW_LOG_MAX,
        value_parser = clap::value_parser!(u32).range(10..=31)
    )]
    pub zstd_window_log_max: u32,
}

impl Args {
    pub fn options(&self) -> UnzipOptions {
        UnzipOptions {
            zstd_window_log_max: self.zstd_window_log_max,
        }
    }
}
