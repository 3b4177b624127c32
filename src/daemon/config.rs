//! The daemon's settings, each declared once in [`SETTINGS`]: its TOML key
//! (the flag is the key with dashes), value name, default, help text, how a
//! value is read and what makes it valid. The command line (built from the
//! table in `cli/follower.rs`), the config file, `--print-config`, the help
//! text and the man page all come from that one table.
//!
//! Effective value = the command-line flag if given, else the config file's
//! key, else the default. Everything is validated here, before the daemon
//! touches the disk or the network: a typo in a replication config must not
//! surface after a whole session was applied.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::replica::apply::DEFAULT_MAX_PAGES;
use crate::storage::store::FsyncPolicy;
use crate::transport::codec::{Compression, DEFAULT_ZSTD_WINDOW_LOG_MAX, ZSTD_WINDOW_LOG_RANGE};
use crate::transport::link::LinkSettings;
use crate::transport::net::Cidr;
use crate::transport::tls::TlsMode;

/// The 1.x daemon never waits less than this between connect attempts.
pub const MIN_RECONNECT_MS: u64 = 100;
/// A config file larger than this is refused before it is read: a daemon
/// pointed at `/dev/zero` must fail, not grow.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Listen(String),
    Connect(String),
}

/// Fully resolved and validated daemon settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub path: PathBuf,
    pub mode: Mode,
    /// True when the listen address is the built-in default (worth a log line).
    pub default_mode: bool,
    pub decompress: Compression,
    /// zstd frames whose window exceeds 2^this bytes are refused.
    pub zstd_window_log_max: u32,
    pub reconnect: Duration,
    pub backoff_cap: Duration,
    pub checkpoint_file: Option<PathBuf>,
    pub checkpoint_interval: Duration,
    pub allow: Vec<Cidr>,
    pub fsync: FsyncPolicy,
    pub max_pages: u64,
    pub idle_timeout: Option<Duration>,
    pub keepalive: bool,
    pub buckets: Option<u32>,
    /// Connect mode: send qdb-ship's resume request (docs/protocol.md).
    pub resume_request: bool,
    /// TLS, token and handshake settings; loaded and checked by
    /// [`LinkSettings::load`] before the daemon binds or locks anything.
    pub link: LinkSettings,
    /// Serve `/metrics` and `/healthz` here (off when `None`).
    pub metrics_addr: Option<SocketAddr>,
}

/// The shape of a setting's value, shared by the command line and TOML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A string (TOML string).
    Text,
    /// A file or folder; kept as bytes from the command line (paths need not be UTF-8).
    Path,
    /// A whole number (TOML integer).
    Number,
    /// One of a fixed set of words (TOML string).
    Choice(&'static [&'static str]),
    /// A switch that is on by default: the flag is `--no-KEY`, the TOML value a boolean.
    OnByDefault,
    /// A switch that is off by default: the flag is `--KEY`, the TOML value a boolean.
    Switch,
    /// A repeatable flag; a TOML array of strings.
    List,
}

/// A value as given, before the setting reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Text(OsString),
    Number(u64),
    Bool(bool),
    List(Vec<String>),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::Text(s) => s.to_string_lossy().into_owned(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::List(l) => l.join(","),
        }
    }
}

/// How a setting reads its value into [`Settings`]; the error says what
/// is allowed (the key or flag is added by the caller).
type Setter = fn(&mut Settings, &Value) -> Result<(), String>;
/// The effective value as a TOML literal, for `--print-config`.
type Shower = fn(&Settings) -> Option<String>;

/// One daemon setting, declared once.
pub struct Setting {
    /// TOML key; the flag is `--` + the key with `_` replaced by `-`
    /// (`--no-` + that for [`Kind::OnByDefault`]).
    pub key: &'static str,
    pub kind: Kind,
    pub value_name: &'static str,
    /// The default as the user would write it; `None`: unset by default.
    pub default: Option<&'static str>,
    pub help: &'static str,
    set: Setter,
    show: Shower,
}

impl Setting {
    /// The long flag name, without dashes.
    pub fn flag(&self) -> String {
        let name = self.key.replace('_', "-");
        match self.kind {
            Kind::OnByDefault => format!("no-{name}"),
            _ => name,
        }
    }
}

fn number<T: TryFrom<u64>>(v: &Value) -> Result<T, String> {
    match v {
        Value::Number(n) => T::try_from(*n).map_err(|_| format!("{n} is too large")),
        Value::Text(s) => {
            let s = s.to_string_lossy();
            let n: u64 = s
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a whole number"))?;
            T::try_from(n).map_err(|_| format!("{n} is too large"))
        }
        other => Err(format!("{} is not a whole number", other.text())),
    }
}

fn path(v: &Value) -> Result<PathBuf, String> {
    match v {
        Value::Text(s) if s.is_empty() => Err("must not be empty".into()),
        Value::Text(s) => Ok(PathBuf::from(s)),
        other => Err(format!("{} is not a path", other.text())),
    }
}

/// A TCP address to listen on or connect to: `HOST:PORT` with a port. Host
/// names are allowed for connect (resolved at each attempt), so only the
/// shape is checked there; a listen address must be an IP address.
fn address(v: &Value, must_be_ip: bool) -> Result<String, String> {
    let s = v.text().trim().to_string();
    if s.is_empty() {
        return Err("must not be empty: use HOST:PORT, e.g. 0.0.0.0:9999".into());
    }
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(s);
    }
    let bad = || format!("{s:?} is not HOST:PORT (e.g. 0.0.0.0:9999 or [::]:9999)");
    if must_be_ip {
        return Err(bad());
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(s),
        _ => Err(bad()),
    }
}

fn toml_str(s: &str) -> String {
    format!("{s:?}")
}

fn words(s: &[&str]) -> String {
    s.iter()
        .map(|w| format!("\"{w}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

const FSYNC_WORDS: &[&str] = &["batch", "always", "never"];
const DECOMPRESS_WORDS: &[&str] = &["none", "gzip", "zstd", "auto"];
const TLS_WORDS: &[&str] = &["none", "server", "client"];

/// Every daemon setting. The order is the order of `--help` and of
/// `--print-config`.
pub static SETTINGS: &[Setting] = &[
    Setting {
        key: "path",
        kind: Kind::Path,
        value_name: "DIR",
        default: None,
        help: "Follower database root (created on the first page image if missing); locked for the daemon's lifetime",
        set: |s, v| {
            s.path = path(v)?;
            Ok(())
        },
        show: |s| Some(toml_str(&s.path.to_string_lossy())),
    },
    Setting {
        key: "listen",
        kind: Kind::Text,
        value_name: "ADDR",
        default: Some("0.0.0.0:9999"),
        help: "Server mode: accept the leader's wal-ship connection on ADDR",
        set: |s, v| {
            s.mode = Mode::Listen(address(v, true)?);
            s.default_mode = false;
            Ok(())
        },
        show: |s| match &s.mode {
            Mode::Listen(a) => Some(toml_str(a)),
            Mode::Connect(_) => None,
        },
    },
    Setting {
        key: "connect",
        kind: Kind::Text,
        value_name: "ADDR",
        default: None,
        help: "Client mode: connect to a server (relay, qdb-ship --listen) that emits the WAL stream",
        set: |s, v| {
            s.mode = Mode::Connect(address(v, false)?);
            s.default_mode = false;
            Ok(())
        },
        show: |s| match &s.mode {
            Mode::Connect(a) => Some(toml_str(a)),
            Mode::Listen(_) => None,
        },
    },
    Setting {
        key: "decompress",
        kind: Kind::Choice(DECOMPRESS_WORDS),
        value_name: "MODE",
        default: Some("none"),
        help: "Stream compression; must match the leader's wal-ship --compress (auto detects it)",
        set: |s, v| {
            s.decompress = v.text().parse::<Compression>().map_err(|_| {
                format!("{:?} is not one of {}", v.text(), words(DECOMPRESS_WORDS))
            })?;
            Ok(())
        },
        show: |s| Some(toml_str(s.decompress.as_str())),
    },
    Setting {
        key: "reconnect_ms",
        kind: Kind::Number,
        value_name: "MS",
        default: Some("1000"),
        help: "Client mode: initial reconnect backoff in ms (at least 100), doubled after each failure",
        set: |s, v| {
            let ms: u64 = number(v)?;
            if ms < MIN_RECONNECT_MS {
                return Err(format!(
                    "{ms} is below the minimum of {MIN_RECONNECT_MS} ms"
                ));
            }
            s.reconnect = Duration::from_millis(ms);
            Ok(())
        },
        show: |s| Some(s.reconnect.as_millis().to_string()),
    },
    Setting {
        key: "backoff_cap_ms",
        kind: Kind::Number,
        value_name: "MS",
        default: Some("15000"),
        help: "Client mode: backoff cap in ms",
        set: |s, v| {
            s.backoff_cap = Duration::from_millis(number(v)?);
            Ok(())
        },
        show: |s| Some(s.backoff_cap.as_millis().to_string()),
    },
    Setting {
        key: "checkpoint_file",
        kind: Kind::Path,
        value_name: "FILE",
        default: None,
        help: "Write the follower's resume LSN to FILE after each session and periodically during one",
        set: |s, v| {
            s.checkpoint_file = Some(path(v)?);
            Ok(())
        },
        show: |s| {
            s.checkpoint_file
                .as_ref()
                .map(|f| toml_str(&f.to_string_lossy()))
        },
    },
    Setting {
        key: "checkpoint_interval_ms",
        kind: Kind::Number,
        value_name: "MS",
        default: Some("1000"),
        help: "How often to refresh the checkpoint file during a session, in ms",
        set: |s, v| {
            let ms: u64 = number(v)?;
            if ms == 0 {
                return Err("must be at least 1".into());
            }
            s.checkpoint_interval = Duration::from_millis(ms);
            Ok(())
        },
        show: |s| Some(s.checkpoint_interval.as_millis().to_string()),
    },
    Setting {
        key: "allow",
        kind: Kind::List,
        value_name: "CIDR",
        default: None,
        help: "Server mode: accept leaders only from this network (repeatable; default: any)",
        set: |s, v| {
            let Value::List(items) = v else {
                return Err(format!("{} is not a list of networks", v.text()));
            };
            s.allow = items
                .iter()
                .map(|a| a.parse::<Cidr>().map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?;
            Ok(())
        },
        show: |s| {
            let items: Vec<String> = s.allow.iter().map(|c| toml_str(&c.to_string())).collect();
            Some(format!("[{}]", items.join(", ")))
        },
    },
    Setting {
        key: "fsync",
        kind: Kind::Choice(FSYNC_WORDS),
        value_name: "POLICY",
        default: Some("batch"),
        help: "When segment data is fsynced: batch (group commit), always (every page, as 1.x), never (unsafe, tests)",
        set: |s, v| {
            s.fsync = v.text().parse::<FsyncPolicy>().map_err(|_| {
                format!("{:?} is not one of {}", v.text(), words(FSYNC_WORDS))
            })?;
            Ok(())
        },
        show: |s| Some(toml_str(s.fsync.as_str())),
    },
    Setting {
        key: "max_pages",
        kind: Kind::Number,
        value_name: "PAGES",
        default: Some("268435456"),
        help: "Refuse page images for page ids at or beyond this",
        set: |s, v| {
            let n: u64 = number(v)?;
            if n == 0 {
                return Err("must be at least 1".into());
            }
            s.max_pages = n;
            Ok(())
        },
        show: |s| Some(s.max_pages.to_string()),
    },
    Setting {
        key: "zstd_window_log_max",
        kind: Kind::Number,
        value_name: "N",
        default: Some("23"),
        help: "Refuse zstd frames whose window is over 2^N bytes (23 = 8 MiB, 4x what wal-ship uses); raise it (up to 31) for a stream made with `zstd --long=N`: each session's decoder then takes about 2^N bytes of memory",
        set: |s, v| {
            let n: u32 = number(v)?;
            if !ZSTD_WINDOW_LOG_RANGE.contains(&n) {
                return Err(format!(
                    "{n} is outside {}..={} (zstd's window logs)",
                    ZSTD_WINDOW_LOG_RANGE.start(),
                    ZSTD_WINDOW_LOG_RANGE.end()
                ));
            }
            s.zstd_window_log_max = n;
            Ok(())
        },
        show: |s| Some(s.zstd_window_log_max.to_string()),
    },
    Setting {
        key: "idle_timeout_secs",
        kind: Kind::Number,
        value_name: "SECS",
        default: Some("0"),
        help: "End a session when the leader sends nothing for SECS seconds (0 = never)",
        set: |s, v| {
            let secs: u64 = number(v)?;
            s.idle_timeout = (secs > 0).then(|| Duration::from_secs(secs));
            Ok(())
        },
        show: |s| Some(s.idle_timeout.map_or(0, |d| d.as_secs()).to_string()),
    },
    Setting {
        key: "keepalive",
        kind: Kind::OnByDefault,
        value_name: "",
        default: Some("true"),
        help: "Do not enable TCP keepalive on leader connections (TOML: keepalive = false)",
        set: |s, v| match v {
            Value::Bool(b) => {
                s.keepalive = *b;
                Ok(())
            }
            other => Err(format!("{} is not true or false", other.text())),
        },
        show: |s| Some(s.keepalive.to_string()),
    },
    Setting {
        key: "buckets",
        kind: Kind::Number,
        value_name: "N",
        default: None,
        help: "Maintain DIR/dir (the bucket-head directory) for a leader with N buckets, so QuiverDB's reader and qdb-inspect get work on the follower",
        set: |s, v| {
            let n: u32 = number(v)?;
            if n == 0 {
                return Err("must be at least 1".into());
            }
            s.buckets = Some(n);
            Ok(())
        },
        show: |s| s.buckets.map(|b| b.to_string()),
    },
    Setting {
        key: "resume_request",
        kind: Kind::Switch,
        value_name: "",
        default: Some("false"),
        help: "With --connect to a `qdb-ship --listen` server: first send a resume request with the complete LSN, so the server resumes after it (docs/protocol.md). Off by default: a server that never reads it and closes the connection makes the kernel reset it, which can cut the stream's tail",
        set: |s, v| match v {
            Value::Bool(b) => {
                s.resume_request = *b;
                Ok(())
            }
            other => Err(format!("{} is not true or false", other.text())),
        },
        show: |s| Some(s.resume_request.to_string()),
    },
    // TLS and authentication. The first five keys and their values are
    // QuiverDB 1.3-alpha's follower's, so its config files work unchanged.
    Setting {
        key: "tls",
        kind: Kind::Choice(TLS_WORDS),
        value_name: "MODE",
        default: Some("none"),
        help: "TLS on the link: none (plain TCP), server (accept TLS; with --listen), client (connect with TLS; with --connect)",
        set: |s, v| {
            s.link.tls = v.text().parse::<TlsMode>()?;
            Ok(())
        },
        show: |s| Some(toml_str(s.link.tls.as_str())),
    },
    Setting {
        key: "tls_cert",
        kind: Kind::Path,
        value_name: "FILE",
        default: None,
        help: "Server mode: this side's certificate chain (PEM, leaf first). Client mode: a client certificate to present, for a server with --tls-client-ca",
        set: |s, v| {
            s.link.tls_cert = Some(path(v)?);
            Ok(())
        },
        show: |s| s.link.tls_cert.as_ref().map(|f| toml_str(&f.to_string_lossy())),
    },
    Setting {
        key: "tls_key",
        kind: Kind::Path,
        value_name: "FILE",
        default: None,
        help: "The private key of --tls-cert (PEM: PKCS#8, RSA or EC); must match the certificate",
        set: |s, v| {
            s.link.tls_key = Some(path(v)?);
            Ok(())
        },
        show: |s| s.link.tls_key.as_ref().map(|f| toml_str(&f.to_string_lossy())),
    },
    Setting {
        key: "tls_ca",
        kind: Kind::Path,
        value_name: "FILE",
        default: None,
        help: "Client mode: the CA certificate(s) (PEM) that sign the server's certificate",
        set: |s, v| {
            s.link.tls_ca = Some(path(v)?);
            Ok(())
        },
        show: |s| s.link.tls_ca.as_ref().map(|f| toml_str(&f.to_string_lossy())),
    },
    Setting {
        key: "tls_domain",
        kind: Kind::Text,
        value_name: "NAME",
        default: None,
        help: "Client mode: the name the server's certificate must be valid for (also sent as SNI)",
        set: |s, v| {
            let d = v.text().trim().to_string();
            if d.is_empty() {
                return Err("must not be empty".into());
            }
            s.link.tls_domain = Some(d);
            Ok(())
        },
        show: |s| s.link.tls_domain.as_deref().map(toml_str),
    },
    Setting {
        key: "tls_client_ca",
        kind: Kind::Path,
        value_name: "FILE",
        default: None,
        help: "Server mode: require every leader to present a certificate signed by this CA (PEM): mutual TLS",
        set: |s, v| {
            s.link.tls_client_ca = Some(path(v)?);
            Ok(())
        },
        show: |s| {
            s.link
                .tls_client_ca
                .as_ref()
                .map(|f| toml_str(&f.to_string_lossy()))
        },
    },
    Setting {
        key: "auth_token_file",
        kind: Kind::Path,
        value_name: "FILE",
        default: None,
        help: "Shared token (16 to 1024 bytes): the connecting side sends it, the listening side requires it (docs/protocol.md); needs TLS unless --allow-plaintext-token",
        set: |s, v| {
            s.link.auth_token_file = Some(path(v)?);
            Ok(())
        },
        show: |s| {
            s.link
                .auth_token_file
                .as_ref()
                .map(|f| toml_str(&f.to_string_lossy()))
        },
    },
    Setting {
        key: "allow_plaintext_token",
        kind: Kind::Switch,
        value_name: "",
        default: None,
        help: "Allow --auth-token-file on a link without TLS (the token then travels in the clear)",
        set: |s, v| {
            s.link.allow_plaintext_token = matches!(v, Value::Bool(true));
            Ok(())
        },
        show: |s| Some(s.link.allow_plaintext_token.to_string()),
    },
    Setting {
        key: "handshake_timeout_secs",
        kind: Kind::Number,
        value_name: "SECS",
        default: Some("10"),
        help: "Close a connection that has not finished TLS, the token and the 16-byte WAL header within SECS",
        set: |s, v| {
            let secs: u64 = number(v)?;
            if secs == 0 {
                return Err("must be at least 1".into());
            }
            s.link.handshake_timeout_secs = secs;
            Ok(())
        },
        show: |s| Some(s.link.handshake_timeout_secs.to_string()),
    },
    Setting {
        key: "metrics_addr",
        kind: Kind::Text,
        value_name: "ADDR",
        default: None,
        help: "Serve Prometheus metrics on http://ADDR/metrics and a health check on /healthz (e.g. 127.0.0.1:9901; off by default)",
        set: |s, v| {
            // An IP address, checked here so that a typo fails before the
            // database is locked or the leader's port is bound.
            let a = address(v, true)?;
            s.metrics_addr = Some(a.parse().map_err(|_| format!("{a:?} is not IP:PORT"))?);
            Ok(())
        },
        show: |s| s.metrics_addr.map(|a| toml_str(&a.to_string())),
    },
];

/// The setting a key names.
pub fn setting(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {} is larger than {MAX_CONFIG_BYTES} bytes: is it the right file?", path.display())]
    TooLarge { path: PathBuf },
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
        None => match setting(key) {
            Some(s) => format!("--{}: {msg}", s.flag()),
            None => format!("--{}: {msg}", key.replace('_', "-")),
        },
    }
}

fn both_origin(file: &Option<PathBuf>) -> String {
    match file {
        Some(p) => format!(" in config file {}", p.display()),
        None => String::new(),
    }
}

/// A parsed config file: each key checked against [`SETTINGS`] and read
/// into a [`Value`] of the setting's kind.
#[derive(Debug, Default)]
pub struct ConfigFile {
    path: Option<PathBuf>,
    values: Vec<(&'static str, Value)>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        use std::io::Read;
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        // Read at most one byte past the cap: a FIFO or /dev/zero has no
        // meaningful size, so the length is what was actually read.
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| ConfigError::Parse {
            path: path.to_path_buf(),
            msg: "not UTF-8 text".into(),
        })?;
        ConfigFile::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, ConfigError> {
        let parse_err = |msg: String| ConfigError::Parse {
            path: path.to_path_buf(),
            msg,
        };
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let mut msg = e.message().replace('\n', " ");
            if let Some(span) = e.span() {
                let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
                msg = format!("line {line_no}: {msg}");
            }
            parse_err(msg)
        })?;
        let mut values = Vec::new();
        for (key, raw) in table {
            let Some(s) = setting(&key) else {
                let known: Vec<String> = SETTINGS.iter().map(|s| format!("`{}`", s.key)).collect();
                return Err(parse_err(format!(
                    "{}unknown field `{key}`, expected one of {}",
                    line_of(text, &key),
                    known.join(", ")
                )));
            };
            let value = toml_value(s, &raw)
                .map_err(|msg| parse_err(format!("{}key `{key}`: {msg}", line_of(text, &key))))?;
            values.push((s.key, value));
        }
        Ok(ConfigFile {
            path: Some(path.to_path_buf()),
            values,
        })
    }
}

/// `line N: ` for the line that sets `key` (toml's table keeps no spans).
fn line_of(text: &str, key: &str) -> String {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(String::new(), |i| format!("line {}: ", i + 1))
}

/// A TOML value checked against a setting's kind.
fn toml_value(s: &Setting, raw: &toml::Value) -> Result<Value, String> {
    let want = |what: &str| {
        let got = match raw {
            toml::Value::String(t) => format!("string {t:?}"),
            toml::Value::Integer(n) => format!("integer `{n}`"),
            toml::Value::Boolean(b) => format!("boolean `{b}`"),
            other => other.type_str().to_string(),
        };
        format!("invalid type: {got}, expected {what}")
    };
    match (s.kind, raw) {
        (Kind::Text | Kind::Path | Kind::Choice(_), toml::Value::String(t)) => {
            Ok(Value::Text(t.into()))
        }
        (Kind::Text | Kind::Path, _) => Err(want("a string")),
        (Kind::Choice(w), _) => Err(want(&format!("one of {}", words(w)))),
        (Kind::Number, toml::Value::Integer(n)) => u64::try_from(*n)
            .map(Value::Number)
            .map_err(|_| format!("{n} is negative")),
        (Kind::Number, _) => Err(want("u64")),
        (Kind::OnByDefault | Kind::Switch, toml::Value::Boolean(b)) => Ok(Value::Bool(*b)),
        (Kind::OnByDefault | Kind::Switch, _) => Err(want("a boolean")),
        (Kind::List, toml::Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| want("a sequence of strings"))
            })
            .collect::<Result<_, _>>()
            .map(Value::List),
        (Kind::List, _) => Err(want("a sequence")),
    }
}

/// The built-in defaults, read through the same setters as any value.
fn defaults() -> Settings {
    let mut s = Settings {
        path: PathBuf::new(),
        mode: Mode::Listen(String::new()),
        default_mode: true,
        decompress: Compression::None,
        zstd_window_log_max: DEFAULT_ZSTD_WINDOW_LOG_MAX,
        reconnect: Duration::ZERO,
        backoff_cap: Duration::ZERO,
        checkpoint_file: None,
        checkpoint_interval: Duration::ZERO,
        allow: Vec::new(),
        fsync: FsyncPolicy::Batch,
        max_pages: DEFAULT_MAX_PAGES,
        idle_timeout: None,
        keepalive: true,
        buckets: None,
        resume_request: false,
        link: LinkSettings::default(),
        metrics_addr: None,
    };
    for setting in SETTINGS {
        if let Some(d) = setting.default {
            let v = match setting.kind {
                Kind::OnByDefault | Kind::Switch => Value::Bool(d == "true"),
                _ => Value::Text(d.into()),
            };
            (setting.set)(&mut s, &v).expect("built-in defaults are valid");
        }
    }
    s.default_mode = true;
    s
}

/// Merge the command line (`cli`: key and value, as given) over the config
/// file over the defaults, then check what no single setting can check.
pub fn resolve(
    cli: &[(&'static str, Value)],
    file: Option<ConfigFile>,
) -> Result<Settings, ConfigError> {
    let file = file.unwrap_or_default();
    let mut s = defaults();
    let cli_has = |key: &str| cli.iter().any(|(k, _)| *k == key);
    // A mode flag on the command line replaces the file's mode entirely:
    // `--connect X` with `listen = ...` in the file means connect.
    let cli_mode = cli_has("listen") || cli_has("connect");
    let mut file_listen = None;
    let mut file_connect = None;
    let mut has_path = false;
    for (key, v) in &file.values {
        match *key {
            "listen" if cli_mode => continue,
            "connect" if cli_mode => continue,
            "listen" => file_listen = Some(v.text()),
            "connect" => file_connect = Some(v.text()),
            "path" => has_path = true,
            _ => {}
        }
        if cli_has(key) {
            continue;
        }
        set(&mut s, key, v, file.path.clone())?;
    }
    if let (Some(listen), Some(connect)) = (file_listen, file_connect) {
        return Err(ConfigError::BothModes {
            listen,
            connect,
            file: file.path,
        });
    }
    let mut cli_listen = None;
    for (key, v) in cli {
        match *key {
            "path" => has_path = true,
            "listen" => cli_listen = Some(v.text()),
            "connect" => {
                if let Some(listen) = cli_listen.take() {
                    return Err(ConfigError::BothModes {
                        listen,
                        connect: v.text(),
                        file: None,
                    });
                }
            }
            _ => {}
        }
        set(&mut s, key, v, None)?;
    }
    if !has_path {
        return Err(ConfigError::NoPath);
    }
    if s.backoff_cap < s.reconnect {
        let from_file = !cli_has("backoff_cap_ms") && !cli_has("reconnect_ms");
        return Err(ConfigError::Value {
            key: "backoff_cap_ms",
            msg: format!(
                "{} is below reconnect_ms ({}): the cap must be at least the initial backoff",
                s.backoff_cap.as_millis(),
                s.reconnect.as_millis()
            ),
            file: if from_file { file.path } else { None },
        });
    }
    Ok(s)
}

fn set(
    s: &mut Settings,
    key: &'static str,
    v: &Value,
    file: Option<PathBuf>,
) -> Result<(), ConfigError> {
    let setting = setting(key).expect("keys come from SETTINGS");
    (setting.set)(s, v).map_err(|msg| ConfigError::Value { key, msg, file })
}

impl Settings {
    /// The effective settings as TOML (for `--print-config`): every key of
    /// [`SETTINGS`] that has a value, in table order.
    pub fn to_toml(&self) -> String {
        SETTINGS
            .iter()
            .filter_map(|s| (s.show)(self).map(|v| format!("{} = {v}\n", s.key)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, Value)> {
        pairs
            .iter()
            .map(|(k, v)| (*k, Value::Text((*v).into())))
            .collect()
    }

    #[test]
    fn defaults_come_from_the_table() {
        let s = resolve(&cli(&[("path", "/db")]), None).unwrap();
        assert_eq!(s.mode, Mode::Listen("0.0.0.0:9999".into()));
        assert!(s.default_mode);
        assert_eq!(s.reconnect, Duration::from_millis(1000));
        assert_eq!(s.backoff_cap, Duration::from_millis(15000));
        assert_eq!(s.checkpoint_interval, Duration::from_millis(1000));
        assert_eq!(s.max_pages, DEFAULT_MAX_PAGES);
        assert!(s.keepalive);
        assert_eq!(s.fsync, FsyncPolicy::Batch);
    }

    #[test]
    fn cli_beats_file_beats_default() {
        let f = ConfigFile::parse(
            "path = \"/f\"\nreconnect_ms = 200\nbackoff_cap_ms = 300\nlisten = \"127.0.0.1:1\"\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let s = resolve(&cli(&[("reconnect_ms", "250")]), Some(f)).unwrap();
        assert_eq!(s.path, PathBuf::from("/f"));
        assert_eq!(s.reconnect, Duration::from_millis(250));
        assert_eq!(s.backoff_cap, Duration::from_millis(300));
        assert_eq!(s.mode, Mode::Listen("127.0.0.1:1".into()));
        assert!(!s.default_mode);
    }

    #[test]
    fn a_cli_mode_replaces_the_file_mode() {
        let f =
            ConfigFile::parse("path = \"/f\"\nlisten = \"127.0.0.1:1\"\n", Path::new("c")).unwrap();
        let s = resolve(&cli(&[("connect", "relay:9")]), Some(f)).unwrap();
        assert_eq!(s.mode, Mode::Connect("relay:9".into()));
    }

    #[test]
    fn bad_values_name_the_key_or_the_flag() {
        let e = ConfigFile::parse("path = \"\"\n", Path::new("c.toml")).unwrap();
        let err = resolve(&[], Some(e)).unwrap_err().to_string();
        assert!(err.contains("key `path`: must not be empty"), "{err}");
        for bad in ["garbage", "127.0.0.1", ":99999", ""] {
            let err = resolve(&cli(&[("path", "/db"), ("listen", bad)]), None)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("--listen: "), "{bad}: {err}");
        }
        let err = ConfigFile::parse("listen = 5\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 1: key `listen`: invalid type: integer `5`, expected a string"),
            "{err}"
        );
        let err = ConfigFile::parse("colour = 1\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field `colour`, expected one of `path`"),
            "{err}"
        );
    }

    #[test]
    fn zstd_window_log_max_is_checked_and_defaults_to_the_codecs() {
        let s = resolve(&cli(&[("path", "/db")]), None).unwrap();
        assert_eq!(s.zstd_window_log_max, DEFAULT_ZSTD_WINDOW_LOG_MAX);
        let f =
            ConfigFile::parse("path = \"/f\"\nzstd_window_log_max = 27\n", Path::new("c")).unwrap();
        assert_eq!(resolve(&[], Some(f)).unwrap().zstd_window_log_max, 27);
        for bad in ["9", "32"] {
            let err = resolve(&cli(&[("path", "/db"), ("zstd_window_log_max", bad)]), None)
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!("--zstd-window-log-max: {bad} is outside 10..=31 (zstd's window logs)")
            );
        }
    }

    #[test]
    fn print_config_round_trips() {
        let s = resolve(&cli(&[("path", "/db"), ("allow", "")]), None);
        assert!(s.is_err(), "allow takes a list");
        let s = resolve(
            &[
                ("path", Value::Text("/db".into())),
                ("allow", Value::List(vec!["10.0.0.0/8".into()])),
                ("buckets", Value::Text("64".into())),
            ],
            None,
        )
        .unwrap();
        let text = s.to_toml();
        let again = resolve(&[], Some(ConfigFile::parse(&text, Path::new("p")).unwrap()))
            .unwrap()
            .to_toml();
        assert_eq!(text, again);
    }
}
