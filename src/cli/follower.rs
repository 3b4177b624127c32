//! `quiverdb-follower`: the command line, built from the daemon's settings
//! table ([`crate::config::SETTINGS`]), so a flag, its TOML key, default and
//! help are declared once.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::parser::ValueSource;
use clap::{value_parser, Arg, ArgAction, ArgMatches, Command};

use crate::daemon::config::{Kind, Setting, Value, SETTINGS};

/// The command-line definition (also rendered as the man page).
pub fn command() -> Command {
    let mut cmd = Command::new("quiverdb-follower")
        .version(env!("CARGO_PKG_VERSION"))
        .about(ABOUT)
        .long_about(LONG_ABOUT)
        .after_help(AFTER_HELP);
    for s in SETTINGS {
        cmd = cmd.arg(arg(s));
    }
    cmd.arg(
        Arg::new("config")
            .long("config")
            .value_name("FILE")
            .value_parser(value_parser!(PathBuf))
            .help("TOML configuration file (CLI > config > defaults)"),
    )
    .arg(
        Arg::new("print_config")
            .long("print-config")
            .action(ArgAction::SetTrue)
            .help("Print the effective configuration as TOML and exit"),
    )
}

fn arg(s: &'static Setting) -> Arg {
    let help = match s.default {
        Some(d) if !matches!(s.kind, Kind::OnByDefault | Kind::Switch) => {
            format!("{} [default: {d}]", s.help)
        }
        _ => s.help.to_string(),
    };
    let a = Arg::new(s.key).long(s.flag()).help(help);
    let a = match s.kind {
        Kind::OnByDefault | Kind::Switch => a.action(ArgAction::SetTrue),
        Kind::List => a
            .value_name(s.value_name)
            .action(ArgAction::Append)
            .value_parser(value_parser!(String)),
        Kind::Choice(words) => a
            .value_name(s.value_name)
            .value_parser(PossibleValuesParser::new(words.iter().copied()))
            .hide_possible_values(false),
        Kind::Text | Kind::Path | Kind::Number => a
            .value_name(s.value_name)
            .value_parser(value_parser!(OsString)),
    };
    // The one pair of settings that exclude each other on the command line.
    match s.key {
        "listen" => a.conflicts_with("connect"),
        "resume_request" => a.requires("connect"),
        _ => a,
    }
}

/// What the command line said.
#[derive(Debug)]
pub struct Args {
    pub config: Option<PathBuf>,
    pub print_config: bool,
    /// The settings given as flags, in table order.
    pub values: Vec<(&'static str, Value)>,
}

impl Args {
    /// Parse `std::env::args`, exiting with a usage error (status 2) as clap does.
    pub fn parse() -> Args {
        Args::from_matches(&command().get_matches())
    }

    pub fn from_matches(m: &ArgMatches) -> Args {
        let mut values = Vec::new();
        for s in SETTINGS {
            if m.value_source(s.key) != Some(ValueSource::CommandLine) {
                continue;
            }
            let v = match s.kind {
                Kind::OnByDefault => Value::Bool(!m.get_flag(s.key)),
                Kind::Switch => Value::Bool(m.get_flag(s.key)),
                Kind::List => Value::List(
                    m.get_many::<String>(s.key)
                        .map(|i| i.cloned().collect())
                        .unwrap_or_default(),
                ),
                Kind::Choice(_) => Value::Text(
                    m.get_one::<String>(s.key)
                        .cloned()
                        .unwrap_or_default()
                        .into(),
                ),
                Kind::Text | Kind::Path | Kind::Number => {
                    Value::Text(m.get_one::<OsString>(s.key).cloned().unwrap_or_default())
                }
            };
            values.push((s.key, v));
        }
        Args {
            config: m.get_one::<PathBuf>("config").cloned(),
            print_config: m.get_flag("print_config"),
            values,
        }
    }
}

const ABOUT: &str =
    "Keep a follower copy of a QuiverDB 1.x database in sync with its leader's WAL stream";

const LONG_ABOUT: &str =
    "Keep a follower copy of a QuiverDB 1.x database in sync by applying the WAL stream its \
leader ships with `quiverdb wal-ship --sink tcp://HOST:PORT [--compress gzip|zstd] --follow`.\n\n\
The daemon holds an exclusive lock on the follower database (flock on DIR/LOCK) for its whole \
lifetime. In server mode (--listen, the default, on 0.0.0.0:9999) it serves one leader connection \
at a time; in client mode (--connect) it connects to a relay that serves the stream, reconnecting \
with exponential backoff. Each connection is one stream with its own header and, with \
--decompress, its own decoder. Receiving, decompressing and applying run concurrently with bounded \
buffers; pages are fsynced in batches before meta.last_lsn covers them.\n\n\
With --checkpoint-file, the daemon writes its resume point, the complete LSN (decimal, no \
newline), to that file, replaced atomically, when it moved: after a session and every \
--checkpoint-interval-ms during one, so the leader can resume with \
`wal-ship --since-lsn $(cat FILE)`. The path is checked at startup (its folder must exist and take \
new files; a folder or a symbolic link in its place is refused).\n\n\
Settings come from the command line, else from the --config TOML file, else from the defaults. \
Each TOML key is its flag's name with underscores (--reconnect-ms is reconnect_ms; --no-keepalive \
is keepalive = false; --allow is a list).";

const AFTER_HELP: &str = "SIGNALS:\n  SIGTERM, SIGINT  stop taking data, make everything received durable, write the checkpoint, exit 0\n  \
SIGHUP           re-read the TLS certificates and keys (if any), log one line, keep running\n\n\
EXIT STATUS:\n  0  stopped by a signal\n  2  usage or configuration error (bad settings, TLS files, a checkpoint path that cannot be written), \
before the database is locked or a port bound\n  \
3  local error (disk, permissions, lock held by another process, port in use)\n\n\
EXAMPLES:\n  quiverdb-follower --path ./follower_db --listen 0.0.0.0:9999 --decompress gzip --checkpoint-file ./last_lsn\n  \
quiverdb-follower --config /etc/quiverdb/follower.toml\n  \
quiverdb-follower --path ./follower_db --connect relay.example:9999 --decompress zstd\n\n\
Logs go to stderr through env_logger; RUST_LOG overrides the default level (info).";
