//! The daemon's configuration: a TOML file merged with command-line flags
//! (CLI > config file > defaults), validated into [`Settings`].
//!
//! The TOML keys are those of the product README (`path`, `listen`,
//! `connect`, `decompress`, `reconnect_ms`, `backoff_cap_ms`,
//! `checkpoint_file`) plus this project's extensions, each mirroring a flag.
//! Unknown keys and wrong types are errors that name the file, the key and
//! what is allowed: a typo in a replication config must not be ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::apply::DEFAULT_MAX_PAGES;
use crate::codec::Compression;
use crate::store::FsyncPolicy;

/// Listen address used when neither listen nor connect is given (1.x default).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9999";
pub const DEFAULT_RECONNECT_MS: u64 = 1000;
pub const DEFAULT_BACKOFF_CAP_MS: u64 = 15000;
pub const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 1000;
/// The 1.x daemon never waits less than this between connect attempts.
pub const MIN_RECONNECT_MS: u64 = 100;

/// Every key a config file may hold, all optional.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub path: Option<PathBuf>,
    pub listen: Option<String>,
    pub connect: Option<String>,
    pub decompress: Option<String>,
    pub reconnect_ms: Option<u64>,
    pub backoff_cap_ms: Option<u64>,
    pub checkpoint_file: Option<PathBuf>,
    pub checkpoint_interval_ms: Option<u64>,
    pub allow: Option<Vec<String>>,
    pub fsync: Option<String>,
    pub max_pages: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub keepalive: Option<bool>,
    pub buckets: Option<u32>,
    pub resume_request: Option<bool>,
}

/// The same settings as given on the command line (all optional there too).
#[derive(Debug, Default, Clone)]
pub struct CliValues {
    pub path: Option<PathBuf>,
    pub listen: Option<String>,
    pub connect: Option<String>,
    pub decompress: Option<Compression>,
    pub reconnect_ms: Option<u64>,
    pub backoff_cap_ms: Option<u64>,
    pub checkpoint_file: Option<PathBuf>,
    pub checkpoint_interval_ms: Option<u64>,
    pub allow: Vec<String>,
    pub fsync: Option<FsyncPolicy>,
    pub max_pages: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub no_keepalive: bool,
    pub buckets: Option<u32>,
    pub resume_request: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Listen(String),
    Connect(String),
}

/// Fully resolved daemon settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub path: PathBuf,
    pub mode: Mode,
    /// True when the listen address is the built-in default (worth a log line).
    pub default_mode: bool,
    pub decompress: Compression,
    pub reconnect: Duration,
    pub backoff_cap: Duration,
    pub checkpoint_file: Option<PathBuf>,
    pub checkpoint_interval: Duration,
    pub allow: Vec<crate::net::Cidr>,
    pub fsync: FsyncPolicy,
    pub max_pages: u64,
    pub idle_timeout: Option<Duration>,
    pub keepalive: bool,
    pub buckets: Option<u32>,
    /// Connect mode: send qdb-ship's resume request (docs/protocol.md).
    pub resume_request: bool,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {}: {msg}", path.display())]
    Parse { path: PathBuf, msg: String },
    #[error("{}", value_msg(key, msg, file))]
    Value {
        key: &'static str,
        msg: String,
        file: Option<PathBuf>,
    },
    #[error("no follower database path: give --path DIR or set path = \"DIR\" in the config file")]
    NoPath,
    #[error(
        "both listen ({listen}) and connect ({connect}) are set{}: choose one",
        both_origin(file)
    )]
    BothModes {
        listen: String,
        connect: String,
        file: Option<PathBuf>,
    },
}

/// Name a bad value the way the user wrote it: a key in the file, or a flag.
fn value_msg(key: &str, msg: &str, file: &Option<PathBuf>) -> String {
    match file {
        Some(p) => format!("config file {}: key `{key}`: {msg}", p.display()),
        None => format!("--{}: {msg}", key.replace('_', "-")),
    }
}

fn both_origin(file: &Option<PathBuf>) -> String {
    match file {
        Some(p) => format!(" in config file {}", p.display()),
        None => String::new(),
    }
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        ConfigFile::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let mut msg = e.message().replace('\n', " ");
            if let Some(span) = e.span() {
                let start = span.start.min(text.len());
                let line_no = text[..start].matches('\n').count() + 1;
                let line = text.lines().nth(line_no - 1).unwrap_or("");
                // toml names the key only for unknown fields; name it for
                // wrong types too, from the line the error points at.
                match line.split_once('=') {
                    Some((key, _)) if !msg.starts_with("unknown field") => {
                        msg = format!("line {line_no}: key `{}`: {msg}", key.trim());
                    }
                    _ => msg = format!("line {line_no}: {msg}"),
                }
            }
            ConfigError::Parse {
                path: path.to_path_buf(),
                msg,
            }
        })
    }
}

/// Merge: CLI value if present, else config value, else default; then validate.
pub fn resolve(
    cli: &CliValues,
    file: Option<(&Path, ConfigFile)>,
) -> Result<Settings, ConfigError> {
    let (cfg_path, cfg) = match file {
        Some((p, c)) => (Some(p.to_path_buf()), c),
        None => (None, ConfigFile::default()),
    };
    // Where a value came from, for messages: the file only if the CLI did not set it.
    let from = |cli_set: bool| if cli_set { None } else { cfg_path.clone() };

    let path = cli.path.clone().or(cfg.path).ok_or(ConfigError::NoPath)?;

    let listen = cli.listen.clone().or(cfg.listen);
    let connect = cli.connect.clone().or(cfg.connect);
    // A CLI mode flag replaces the config's mode entirely: `--connect X`
    // with `listen = ...` in the file means connect, as an operator expects.
    let (listen, connect) = match (&cli.listen, &cli.connect) {
        (Some(_), None) => (listen, None),
        (None, Some(_)) => (None, connect),
        _ => (listen, connect),
    };
    let (mode, default_mode) = match (listen, connect) {
        (Some(l), Some(c)) => {
            return Err(ConfigError::BothModes {
                listen: l,
                connect: c,
                file: cfg_path,
            })
        }
        (Some(l), None) => (Mode::Listen(l), false),
        (None, Some(c)) => (Mode::Connect(c), false),
        (None, None) => (Mode::Listen(DEFAULT_LISTEN.to_string()), true),
    };

    let decompress = match (cli.decompress, cfg.decompress) {
        (Some(d), _) => d,
        (None, Some(s)) => s
            .trim()
            .parse::<Compression>()
            .map_err(|_| ConfigError::Value {
                key: "decompress",
                msg: format!("{s:?} is not one of \"none\", \"gzip\", \"zstd\", \"auto\""),
                file: cfg_path.clone(),
            })?,
        (None, None) => Compression::None,
    };

    let reconnect_ms = cli
        .reconnect_ms
        .or(cfg.reconnect_ms)
        .unwrap_or(DEFAULT_RECONNECT_MS);
    let backoff_cap_ms = cli
        .backoff_cap_ms
        .or(cfg.backoff_cap_ms)
        .unwrap_or(DEFAULT_BACKOFF_CAP_MS);
    if reconnect_ms < MIN_RECONNECT_MS {
        return Err(ConfigError::Value {
            key: "reconnect_ms",
            msg: format!("{reconnect_ms} is below the minimum of {MIN_RECONNECT_MS} ms"),
            file: from(cli.reconnect_ms.is_some()),
        });
    }
    if backoff_cap_ms < reconnect_ms {
        return Err(ConfigError::Value {
            key: "backoff_cap_ms",
            msg: format!("{backoff_cap_ms} is below reconnect_ms ({reconnect_ms}): the cap must be at least the initial backoff"),
            file: from(cli.backoff_cap_ms.is_some()),
        });
    }
    let checkpoint_interval_ms = cli
        .checkpoint_interval_ms
        .or(cfg.checkpoint_interval_ms)
        .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL_MS);
    if checkpoint_interval_ms == 0 {
        return Err(ConfigError::Value {
            key: "checkpoint_interval_ms",
            msg: "must be at least 1".into(),
            file: from(cli.checkpoint_interval_ms.is_some()),
        });
    }

    let allow_src = if cli.allow.is_empty() {
        cfg.allow.unwrap_or_default()
    } else {
        cli.allow.clone()
    };
    let mut allow = Vec::new();
    for a in &allow_src {
        allow.push(
            a.parse::<crate::net::Cidr>()
                .map_err(|e| ConfigError::Value {
                    key: "allow",
                    msg: e.to_string(),
                    file: from(!cli.allow.is_empty()),
                })?,
        );
    }

    let fsync = match (cli.fsync, cfg.fsync) {
        (Some(f), _) => f,
        (None, Some(s)) => {
            <FsyncPolicy as clap::ValueEnum>::from_str(s.trim(), true).map_err(|_| {
                ConfigError::Value {
                    key: "fsync",
                    msg: format!("{s:?} is not one of \"batch\", \"always\", \"never\""),
                    file: cfg_path.clone(),
                }
            })?
        }
        (None, None) => FsyncPolicy::Batch,
    };
    let max_pages = cli.max_pages.or(cfg.max_pages).unwrap_or(DEFAULT_MAX_PAGES);
    if max_pages == 0 {
        return Err(ConfigError::Value {
            key: "max_pages",
            msg: "must be at least 1".into(),
            file: from(cli.max_pages.is_some()),
        });
    }
    let idle_timeout = match cli.idle_timeout_secs.or(cfg.idle_timeout_secs) {
        None | Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
    };
    let keepalive = if cli.no_keepalive {
        false
    } else {
        cfg.keepalive.unwrap_or(true)
    };
    let buckets = cli.buckets.or(cfg.buckets);
    if buckets == Some(0) {
        return Err(ConfigError::Value {
            key: "buckets",
            msg: "must be at least 1".into(),
            file: from(cli.buckets.is_some()),
        });
    }

    Ok(Settings {
        path,
        mode,
        default_mode,
        decompress,
        reconnect: Duration::from_millis(reconnect_ms),
        backoff_cap: Duration::from_millis(backoff_cap_ms),
        checkpoint_file: cli.checkpoint_file.clone().or(cfg.checkpoint_file),
        checkpoint_interval: Duration::from_millis(checkpoint_interval_ms),
        allow,
        fsync,
        max_pages,
        idle_timeout,
        keepalive,
        buckets,
        resume_request: cli.resume_request || cfg.resume_request.unwrap_or(false),
    })
}

impl Settings {
    /// The effective settings as TOML (for `--print-config`).
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let q = |v: &str| format!("{v:?}");
        s += &format!("path = {}\n", q(&self.path.to_string_lossy()));
        match &self.mode {
            Mode::Listen(a) => s += &format!("listen = {}\n", q(a)),
            Mode::Connect(a) => s += &format!("connect = {}\n", q(a)),
        }
        s += &format!("decompress = {}\n", q(self.decompress.as_str()));
        s += &format!("reconnect_ms = {}\n", self.reconnect.as_millis());
        s += &format!("backoff_cap_ms = {}\n", self.backoff_cap.as_millis());
        if let Some(f) = &self.checkpoint_file {
            s += &format!("checkpoint_file = {}\n", q(&f.to_string_lossy()));
        }
        s += &format!(
            "checkpoint_interval_ms = {}\n",
            self.checkpoint_interval.as_millis()
        );
        let allow: Vec<String> = self.allow.iter().map(|c| q(&c.to_string())).collect();
        s += &format!("allow = [{}]\n", allow.join(", "));
        let fsync = match self.fsync {
            FsyncPolicy::Batch => "batch",
            FsyncPolicy::Always => "always",
            FsyncPolicy::Never => "never",
        };
        s += &format!("fsync = {}\n", q(fsync));
        s += &format!("max_pages = {}\n", self.max_pages);
        s += &format!(
            "idle_timeout_secs = {}\n",
            self.idle_timeout.map_or(0, |d| d.as_secs())
        );
        s += &format!("keepalive = {}\n", self.keepalive);
        if let Some(b) = self.buckets {
            s += &format!("buckets = {b}\n");
        }
        if self.resume_request {
            s += "resume_request = true\n";
        }
        s
    }
}
