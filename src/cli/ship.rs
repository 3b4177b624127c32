//! `qdb-ship`: flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::leader::Sink;
use crate::transport::codec::Compression;
use crate::transport::link::LinkSettings;
use crate::transport::net::Cidr;
use crate::transport::tls::TlsMode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShipCompress {
    /// Raw WAL v1 stream
    None,
    /// gzip, framed as wal-ship does (flate2 level 1, a sync flush per flush point)
    Gzip,
    /// zstd, framed as wal-ship does (level 0, an end-of-block flush per flush point)
    Zstd,
}

impl From<ShipCompress> for Compression {
    fn from(c: ShipCompress) -> Compression {
        match c {
            ShipCompress::None => Compression::None,
            ShipCompress::Gzip => Compression::Gzip,
            ShipCompress::Zstd => Compression::Zstd,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "qdb-ship",
    version,
    about = "Ship a QuiverDB 1.x leader's changes as a WAL v1 stream, never skipping a frame",
    long_about = "Run on the leader host. Reads the leader's files only (no lock: its writer keeps \
running) and sends a WAL v1 stream that QuiverDB's wal-apply, its 1.3-alpha follower and \
quiverdb-follower all apply. Options mean what they mean for `quiverdb wal-ship`. Unlike wal-ship, \
qdb-ship notices every truncation and rewrite of the WAL, and when frames may have been missed \
(a truncation it did not read, a --since-lsn older than the WAL, an unreadable WAL) it sends every \
page of the data segments above the follower's LSN, in ascending LSN order, then a marker saying \
the follower is complete. So `qdb-ship --since-lsn $(qdb-ckpt --path F)` always heals a follower, \
and `--since-lsn 0` seeds a new one (or makes a streaming backup). The stream format is in \
docs/protocol.md.\n\n\
Securing the link: --sink tls://HOST:PORT connects with TLS (verifying the follower against \
--tls-ca and --tls-domain, presenting --tls-cert/--tls-key if given) and, with --auth-token-file, \
sends the token before the stream, as quiverdb-follower --listen --tls server expects. --listen \
with --tls server (and --tls-client-ca to require client certificates) serves TLS; with \
--auth-token-file every client must send the token; --allow limits the peers. A client is served \
only once TLS and the token are done, within --handshake-timeout-secs; its resume request comes \
after them. Refused peers are logged at most once per address per 10 s. SIGHUP re-reads the \
server certificate and key.\n\n\
Monitoring: --metrics-addr ADDR serves /metrics (Prometheus text: quiverdb_ship_shipped_lsn, \
quiverdb_ship_leader_lsn, catch-up scans and pages, truncations, bytes, refusals, connected \
followers) and /healthz (200 while the sink is open or the listener is bound).",
    after_help = "EXAMPLES:\n  \
qdb-ship --path ./leader_db --follow --compress zstd --sink tcp://follower:9999 --since-lsn 42\n  \
qdb-ship --path ./leader_db --follow --sink tls://follower:9999 --tls-ca ca.pem \\\n      \
--tls-domain follower --tls-cert leader.pem --tls-key leader.key --auth-token-file token\n  \
qdb-ship --path ./leader_db --listen 0.0.0.0:9999 --follow --allow 10.1.0.0/16\n  \
qdb-ship --path ./leader_db --listen 0.0.0.0:9999 --follow --tls server --tls-cert ship.pem \\\n      \
--tls-key ship.key --tls-client-ca followers-ca.pem --metrics-addr 127.0.0.1:9101\n  \
qdb-ship --path ./leader_db --since-lsn 0 --compress zstd > base.wal.zst\n  \
qdb-unzip < base.wal.zst | qdb-apply --path ./restored\n\n\
Exit status: 0 at the end of the stream (without --follow), on SIGTERM/SIGINT, or when the \
reader of stdout goes away; 1 when the leader cannot be read, the sink cannot be opened (including \
a failed TLS handshake or a refused token) or fails, or an address cannot be bound; 2 for bad \
usage, including a bad --sink and a bad TLS or token configuration (reported before the leader is \
read or anything is bound)."
)]
pub struct Args {
    /// The leader's database folder (read only, no lock)
    #[arg(long, value_name = "DIR")]
    pub path: PathBuf,

    /// Send only changes with LSN > N (exclusive, as wal-ship); 0 sends everything
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub since_lsn: u64,

    /// Keep following the leader's WAL (without it: one pass, then exit)
    #[arg(long)]
    pub follow: bool,

    /// tcp://HOST:PORT, tls://HOST:PORT (TLS client: needs --tls-ca and --tls-domain) or file://PATH
    /// (default: stdout)
    #[arg(long, value_name = "URL", conflicts_with = "listen")]
    pub sink: Option<String>,

    /// Serve each follower that connects to ADDR (HOST:PORT) its own stream
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Compress the whole stream
    #[arg(long, value_enum, default_value = "none", value_name = "MODE")]
    pub compress: ShipCompress,

    /// Flush after this many frames
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub flush_every: u32,

    /// Also flush after this many bytes (0: off)
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub flush_bytes: u64,

    /// With --follow: send a heartbeat with the leader's last_lsn this often (0: never)
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub heartbeat_ms: u64,

    /// How often an idle tail looks at the WAL again
    #[arg(long, default_value_t = 2, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub poll_ms: u64,

    /// With --listen: at most this many followers at once
    #[arg(long, default_value_t = 16, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_clients: u64,

    /// With --listen: how long to wait for a client's resume request (after TLS and the token)
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub resume_wait_ms: u64,

    /// With --listen: accept only peers in CIDR (e.g. 10.0.0.0/8, 192.0.2.7, fd00::/8); repeatable.
    /// Others are logged (rate-limited) and closed. Without it every peer is accepted
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<Cidr>,

    /// Serve /metrics (Prometheus text) and /healthz on ADDR (e.g. 127.0.0.1:9101); off by default
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    #[command(flatten)]
    pub link: ShipLinkArgs,
}

/// The link's security flags, with the names and meanings of
/// quiverdb-follower's and qdb-recv's; here the connecting side is
/// `--sink tcp://` or `tls://`, the listening side `--listen`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ShipLinkArgs {
    /// TLS: none, server (with --listen), client (implied by --sink tls://) [default: none, or client
    /// with --sink tls://]
    #[arg(long, value_name = "MODE", value_parser = ["none", "server", "client"])]
    pub tls: Option<String>,

    /// --tls server: this side's certificate chain (PEM, leaf first). --sink tls://: a client certificate
    /// to present to a follower with --tls-client-ca
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, RSA or EC); must match the certificate
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// --sink tls://: the CA certificate(s) (PEM) that sign the follower's certificate
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// --sink tls://: the name the follower's certificate must be valid for (also sent as SNI)
    #[arg(long, value_name = "NAME")]
    pub tls_domain: Option<String>,

    /// --tls server: require every client to present a certificate signed by this CA (PEM): mutual TLS
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Shared token (16 to 1024 bytes; surrounding whitespace ignored): sent before the stream with
    /// --sink, required from every client with --listen (docs/protocol.md). Needs TLS unless
    /// --allow-plaintext-token
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// Allow --auth-token-file on a link without TLS (the token then travels in the clear)
    #[arg(long)]
    pub allow_plaintext_token: bool,

    /// Give up on a connection that has not finished TLS and the token within SECS (--sink: then exit 1;
    /// --listen: close it) [default: 10]
    #[arg(long, value_name = "SECS")]
    pub handshake_timeout_secs: Option<u64>,
}

impl Args {
    /// The link settings for this run (and `--allow`), checked against the mode (`--sink`
    /// or `--listen`): the flag combinations that cannot work here are
    /// usage errors, named in qdb-ship's own terms. The files are read by
    /// [`LinkSettings::load`] (with `listening` as returned).
    pub fn link_settings(&self, sink: &Sink) -> Result<(LinkSettings, bool), String> {
        let l = &self.link;
        let d = LinkSettings::default();
        let given: Option<TlsMode> = l.tls.as_deref().map(|t| t.parse().unwrap_or_default());
        let listening = self.listen.is_some();
        if !listening && !self.allow.is_empty() {
            return Err("--allow needs --listen (it filters the peers that connect)".into());
        }
        let tls = match (listening, sink, given) {
            (true, _, Some(TlsMode::Client)) => {
                return Err(
                    "--tls client is for --sink tls://; with --listen use --tls server".into(),
                )
            }
            (true, _, g) => g.unwrap_or(TlsMode::None),
            (false, Sink::Tls(_), None | Some(TlsMode::Client)) => TlsMode::Client,
            (false, Sink::Tls(_), Some(m)) => {
                return Err(format!(
                    "--sink tls:// connects with TLS (client mode), but --tls is {m}: drop --tls"
                ))
            }
            (false, _, Some(TlsMode::Server)) => return Err("--tls server needs --listen".into()),
            (false, _, Some(TlsMode::Client)) => {
                return Err(format!(
                    "--tls client needs --sink tls://HOST:PORT (the sink is {sink})"
                ))
            }
            (false, _, _) => TlsMode::None,
        };
        let set = [
            ("--tls-cert", l.tls_cert.is_some()),
            ("--tls-key", l.tls_key.is_some()),
            ("--tls-ca", l.tls_ca.is_some()),
            ("--tls-domain", l.tls_domain.is_some()),
            ("--tls-client-ca", l.tls_client_ca.is_some()),
            ("--auth-token-file", l.auth_token_file.is_some()),
        ];
        if !listening && !sink.is_network() {
            if let Some((flag, _)) = set.iter().find(|(_, on)| *on) {
                return Err(format!(
                    "{flag} needs a network link: --sink tls://HOST:PORT, --sink tcp://HOST:PORT or --listen                      (the sink is {sink})"
                ));
            }
        }
        if tls == TlsMode::Client && (l.tls_ca.is_none() || l.tls_domain.is_none()) {
            return Err("--sink tls:// needs --tls-ca and --tls-domain".into());
        }
        Ok((
            LinkSettings {
                tls,
                tls_cert: l.tls_cert.clone(),
                tls_key: l.tls_key.clone(),
                tls_ca: l.tls_ca.clone(),
                tls_domain: l.tls_domain.clone(),
                tls_client_ca: l.tls_client_ca.clone(),
                auth_token_file: l.auth_token_file.clone(),
                allow_plaintext_token: l.allow_plaintext_token,
                handshake_timeout_secs: l
                    .handshake_timeout_secs
                    .unwrap_or(d.handshake_timeout_secs),
            },
            listening,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Args::command().debug_assert();
    }

    fn settings(args: &[&str]) -> Result<LinkSettings, String> {
        let mut v = vec!["qdb-ship", "--path", "L"];
        v.extend_from_slice(args);
        let a = Args::try_parse_from(v).map_err(|e| e.to_string())?;
        let sink = a
            .sink
            .as_deref()
            .map(Sink::parse)
            .transpose()
            .map_err(|e| e.to_string())?
            .unwrap_or(Sink::Stdout);
        a.link_settings(&sink).map(|(s, _)| s)
    }

    #[test]
    fn tls_mode_follows_the_sink_or_listen() {
        let ca = ["--tls-ca", "ca.pem", "--tls-domain", "f"];
        let mut a = vec!["--sink", "tls://f:1"];
        a.extend_from_slice(&ca);
        assert_eq!(settings(&a).unwrap().tls, TlsMode::Client);
        assert!(settings(&["--sink", "tls://f:1"])
            .unwrap_err()
            .contains("needs --tls-ca and --tls-domain"));
        assert!(settings(&["--sink", "tcp://f:1", "--tls", "client"])
            .unwrap_err()
            .contains("needs --sink tls://"));
        assert!(settings(&["--listen", "a:1", "--tls", "client"])
            .unwrap_err()
            .contains("with --listen use --tls server"));
        assert!(settings(&["--tls-ca", "ca.pem"])
            .unwrap_err()
            .contains("needs a network link"));
        assert_eq!(
            settings(&["--listen", "a:1", "--tls", "server"])
                .unwrap()
                .tls,
            TlsMode::Server
        );
        assert!(settings(&["--sink", "tcp://f:1", "--allow", "10.0.0.0/8"]).is_err());
    }
}
