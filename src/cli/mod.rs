//! Command-line definitions of every binary, kept in the library so that the
//! man pages in `man/` can be generated from them and checked by a test
//! (`tests/man.rs`), and so that the daemon can share argument types with the
//! tools. Each binary in `src/bin/` parses its `Args`, calls the library, and
//! reports errors through [`report`].

pub mod apply;
pub mod ckpt;
pub mod follower;
pub mod inspect;
pub mod recv;
pub mod unzip;

use std::fmt::Display;

use clap::builder::PossibleValue;

use crate::storage::store::FsyncPolicy;
use crate::transport::codec::Compression;
use std::io;
use std::process::ExitCode;

/// Initialise env_logger: `RUST_LOG` wins, else `default` (e.g. "warn" for the
/// quiet pipeline tools, "info" for the daemon). Logs go to stderr.
pub fn init_logging(default: &str) {
    let env = env_logger::Env::default().default_filter_or(default);
    env_logger::Builder::from_env(env).init();
}

/// Print `error: <msg>` on one line of stderr and return exit status 1.
/// Errors are printed with Display, never Debug, so the line stays one line
/// even with RUST_BACKTRACE set.
pub fn report(err: &dyn Display) -> ExitCode {
    let msg = err.to_string().replace('\n', " ");
    eprintln!("error: {msg}");
    ExitCode::from(1)
}

/// True when a write failed because the reader of our stdout went away; Unix
/// tools treat that as a normal end, not an error.
pub fn is_broken_pipe(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::BrokenPipe
}

/// Exit status for a bad stream (the follower is intact).
pub const EXIT_STREAM: u8 = 1;
/// Exit status for a local failure (disk, permissions, lock).
pub const EXIT_LOCAL: u8 = 3;

/// Report a library error with the exit status its kind calls for.
pub fn report_error(err: &crate::Error) -> ExitCode {
    report(err);
    if err.is_stream_error() {
        ExitCode::from(EXIT_STREAM)
    } else {
        ExitCode::from(EXIT_LOCAL)
    }
}

// The core enums know nothing of clap; their flag values are declared here,
// with the help each value shows.
impl clap::ValueEnum for FsyncPolicy {
    fn value_variants<'a>() -> &'a [Self] {
        &FsyncPolicy::ALL
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self {
            FsyncPolicy::Batch => {
                "fsync each dirty segment once per batch, before meta.last_lsn covers it"
            }
            FsyncPolicy::Always => "fsync the segment after every page write, as QuiverDB 1.x does",
            FsyncPolicy::Never => {
                "never fsync segments (meta is still replaced atomically); test use only"
            }
        };
        Some(PossibleValue::new(self.as_str()).help(help))
    }
}

impl clap::ValueEnum for Compression {
    fn value_variants<'a>() -> &'a [Self] {
        &Compression::ALL
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self {
            Compression::None => {
                "Uncompressed 1.x WAL stream, copied through (refuses gzip/zstd input)"
            }
            Compression::Gzip => {
                "Single or multi-member gzip (wal-ship --compress gzip, the gzip CLI)"
            }
            Compression::Zstd => {
                "Single or multi-frame zstd (wal-ship --compress zstd, the zstd CLI)"
            }
            Compression::Auto => "Detect gzip, zstd or an uncompressed stream from the first bytes",
        };
        Some(PossibleValue::new(self.as_str()).help(help))
    }
}
