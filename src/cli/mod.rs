//! Command-line definitions of every binary, kept in the library so that the
//! man pages in `man/` can be generated from them and checked by a test
//! (`tests/man.rs`), and so that the daemon can share argument types with the
//! tools. Each binary in `src/bin/` parses its `Args`, calls the library, and
//! reports errors through [`report`].

pub mod apply;
pub mod ckpt;
pub mod follower;
pub mod inspect;
pub mod promote;
pub mod recv;
pub mod restore;
pub mod ship;
pub mod unzip;

use std::fmt::Display;

use clap::builder::PossibleValue;

use crate::storage::store::FsyncPolicy;
use crate::transport::codec::Compression;
use std::io;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

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

pub use crate::transport::is_broken_pipe;

/// Exit status for a usage or configuration error (as clap uses).
pub const EXIT_USAGE: u8 = 2;

/// The signal flags of a process, registered in one place for every tool.
pub struct Signals {
    /// Set by SIGTERM and SIGINT: stop taking data, finish cleanly. A second
    /// one while the first is handled ends the process at once (status 1),
    /// in case stopping ever hangs.
    pub shutdown: Arc<AtomicBool>,
    /// Set by SIGHUP, which would otherwise kill the process: reload what
    /// can be reloaded.
    pub hangup: Arc<AtomicBool>,
}

/// Install the handlers behind [`Signals`].
pub fn signals() -> io::Result<Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let shutdown = Arc::new(AtomicBool::new(false));
    let hangup = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&shutdown))?;
        signal_hook::flag::register(sig, Arc::clone(&shutdown))?;
    }
    signal_hook::flag::register(SIGHUP, Arc::clone(&hangup))?;
    Ok(Signals { shutdown, hangup })
}

/// Exit status for a bad stream or backup, or a refusal (the follower is intact).
pub const EXIT_STREAM: u8 = 1;
/// Exit status for a local failure (disk, permissions, lock).
pub const EXIT_LOCAL: u8 = 3;

/// Report a library error with the exit status its kind calls for.
pub fn report_error(err: &crate::Error) -> ExitCode {
    report(err);
    if err.is_input_error() {
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
/// The link's security flags, shared by `qdb-recv` and the daemon. All
/// optional, so that the daemon can tell what the command line set (CLI >
/// config file > defaults); names and values as QuiverDB 1.3-alpha's
/// follower, plus this project's additions.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LinkArgs {
    /// TLS on the link: none (plain TCP), server (accept TLS; with --listen), client (connect with TLS; with
    /// --connect) [default: none]
    #[arg(long, value_name = "MODE", value_parser = ["none", "server", "client"])]
    pub tls: Option<String>,

    /// Server mode: this side's certificate chain (PEM, leaf first). Client mode: a client certificate to
    /// present, for a server with --tls-client-ca
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, RSA or EC); must match the certificate
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Client mode: the CA certificate(s) (PEM) that sign the server's certificate
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Client mode: the name the server's certificate must be valid for (also sent as SNI)
    #[arg(long, value_name = "NAME")]
    pub tls_domain: Option<String>,

    /// Server mode: require every client to present a certificate signed by this CA (PEM): mutual TLS
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<std::path::PathBuf>,

    /// Shared token (16 to 1024 bytes; surrounding whitespace ignored): the connecting side sends it, the
    /// listening side requires it (docs/protocol.md). Needs TLS unless --allow-plaintext-token
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<std::path::PathBuf>,

    /// Allow --auth-token-file on a link without TLS (the token then travels in the clear)
    #[arg(long)]
    pub allow_plaintext_token: bool,

    /// Close a connection that has not finished TLS, the token and the 16-byte WAL header within SECS
    /// [default: 10]
    #[arg(long, value_name = "SECS")]
    pub handshake_timeout_secs: Option<u64>,
}

impl LinkArgs {
    /// The settings with defaults for what the command line left out.
    pub fn settings(&self) -> crate::transport::link::LinkSettings {
        let d = crate::transport::link::LinkSettings::default();
        crate::transport::link::LinkSettings {
            // clap allows only the three values.
            tls: self
                .tls
                .as_deref()
                .map_or(d.tls, |t| t.parse().unwrap_or_default()),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_domain: self.tls_domain.clone(),
            tls_client_ca: self.tls_client_ca.clone(),
            auth_token_file: self.auth_token_file.clone(),
            allow_plaintext_token: self.allow_plaintext_token,
            handshake_timeout_secs: self
                .handshake_timeout_secs
                .unwrap_or(d.handshake_timeout_secs),
        }
    }
}
