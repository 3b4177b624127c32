//! `qdb-recv`: receive a leader's WAL stream over TCP and write it to stdout.

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use log::{info, warn};

use crate::cli::LinkArgs;
use crate::transport::handshake::Expect;
use crate::transport::link::Link;
use crate::transport::net::{
    pump, pump_framed, AllowList, Backoff, Cidr, NetError, PeerStream, PumpOutcome, SessionEnd,
    SessionFramer, SessionOptions,
};
use crate::transport::serve::{serve, After, Endpoint, Secure};

const ABOUT: &str = "Receive a QuiverDB 1.x WAL stream over TCP and write it to stdout";

const LONG_ABOUT: &str = "\
Receive a QuiverDB 1.x WAL stream over TCP and write it to stdout, for qdb-unzip and qdb-apply \
further down a pipeline.

With --listen, wait for the leader's `quiverdb wal-ship --sink tcp://HOST:PORT` (wal-ship is \
always a TCP client). With --connect, connect to a server or relay that sends the stream, \
retrying with exponential backoff until it answers.

Every read is written to stdout and flushed at once, so a frame that wal-ship flushed reaches \
the next stage without delay.

One session per run: by default qdb-recv takes ONE connection, copies it until the leader \
closes it, and exits 0. Run it in a shell loop or under systemd (Restart=always) to take the \
next session. A session that ends mid-record therefore ends the whole pipeline, and qdb-apply \
treats that cut as a clean partial tail; it can never be glued to the next session's bytes.

--keep-serving serves sessions one after another in one process instead. That is only safe \
for uncompressed streams: each session must start with the 16-byte P1WAL001 header, only \
complete records are forwarded, and the part of a record that a cut session left behind is \
dropped with a warning (the leader sends it again when it resumes from the follower's LSN). \
Compressed sessions are refused.

With --tls server (and --tls-client-ca for client certificates) or --tls client, the link is TLS \
(rustls); with --auth-token-file the connecting side sends a token that the listening side \
requires. In listen mode a connection becomes the session only after it has finished TLS, the \
token and its first bytes within --handshake-timeout-secs, so silent peers never hold up the \
leader. SIGHUP re-reads certificates and keys. See \"Securing the link\" in the README.

Logs go to stderr. The default level is warn; set RUST_LOG=info to see \"listening on ADDR\", \
\"accepted from PEER\", \"connected to ADDR\" and the end of each session.";

const AFTER_HELP: &str = "Examples and exit status: qdb-recv --help";

const AFTER_LONG_HELP: &str = "\
Examples:
  Follower listens; only the leader's network may connect:
    qdb-recv --listen 0.0.0.0:9999 --allow 10.1.0.0/16 | qdb-apply --path /var/lib/follower
  Leader:
    quiverdb wal-ship --path /db --since-lsn \"$(qdb-ckpt --path /var/lib/follower)\" \\
        --sink tcp://follower:9999 --follow

  One session per run, restarted by a loop (scripts/recv-loop):
    while true; do
      qdb-recv --listen 0.0.0.0:9999 --allow 10.1.0.0/16 | qdb-unzip --decompress none \\
        | qdb-apply --path /var/lib/follower || sleep 1
    done

  Connect to a relay, give up after 5 failed attempts:
    qdb-recv --connect relay.example.com:9999 --max-retries 5 | qdb-apply --path db

  Mutual TLS: only leaders with a certificate from leaders-ca.pem are served:
    qdb-recv --listen 0.0.0.0:9999 --tls server --tls-cert follower.pem --tls-key follower.key \\
        --tls-client-ca leaders-ca.pem | qdb-apply --path db

  Secure the link with TLS terminated by socat, qdb-recv on loopback only:
    socat OPENSSL-LISTEN:9999,reuseaddr,fork,cert=follower.pem,cafile=leader-ca.pem,verify=1 \\
        TCP:127.0.0.1:9998 &
    qdb-recv --listen 127.0.0.1:9998 | qdb-apply --path db

Exit status: 0 when the session ended (leader closed the connection, SIGTERM or SIGINT, or \
stdout closed by the next stage); 2 on a usage error or a bad TLS or token configuration \
(reported before anything is bound); 1 on an error, reported as one line on stderr: the address \
is in use, does not resolve or may not be bound, connect attempts ran out (--max-retries), \
the idle timeout expired, or the connection failed.";

#[derive(Debug, Parser)]
#[command(
    name = "qdb-recv",
    version = env!("CARGO_PKG_VERSION"),
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    after_long_help = AFTER_LONG_HELP
)]
#[command(group(ArgGroup::new("mode").required(true).args(["listen", "connect"])))]
pub struct Args {
    /// Listen on ADDR (HOST:PORT, e.g. 0.0.0.0:9999 or `[::]:9999`) for the leader's wal-ship connection.
    /// Serves one connection at a time; port 0 picks a free port (see the "listening on" log line).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Connect to ADDR (HOST:PORT), a server or relay that sends the stream; retry with backoff until it
    /// answers.
    #[arg(long, value_name = "ADDR")]
    pub connect: Option<String>,

    /// With --listen, accept only peers in CIDR (e.g. 10.0.0.0/8, 192.0.2.7, fd00::/8); repeatable.
    /// Others are logged and closed. Without it every peer is accepted.
    #[arg(long = "allow", value_name = "CIDR", conflicts_with = "connect")]
    pub allow: Vec<Cidr>,

    /// With --connect to a `qdb-ship --listen` server: send a resume request with the complete LSN of
    /// the follower in DIR (read at each connect), so the server resumes after it. Other servers
    /// ignore it. See docs/protocol.md.
    #[arg(long, value_name = "DIR", requires = "connect")]
    pub resume_from: Option<std::path::PathBuf>,

    /// With --connect, wait this long before the first retry; each failed attempt doubles the wait.
    /// Values below 100 count as 100.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 1000,
        conflicts_with = "listen"
    )]
    pub reconnect_ms: u64,

    /// With --connect, the longest wait between attempts.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 15000,
        conflicts_with = "listen"
    )]
    pub backoff_cap_ms: u64,

    /// With --connect, give up after N failed retries in a row (N+1 attempts) and exit 1.
    /// Default: retry forever.
    #[arg(long, value_name = "N", conflicts_with = "listen")]
    pub max_retries: Option<u32>,

    /// End the session with an error (exit 1) when no byte arrives for SECS seconds. 0 = never, the
    /// default, because wal-ship --follow sends nothing while the leader is idle.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub idle_timeout: u64,

    /// Do not send TCP keepalive probes (by default a leader host that vanished without closing the
    /// connection is noticed after about 60 s).
    #[arg(long)]
    pub no_keepalive: bool,

    /// Serve sessions one after another in this process instead of exiting after one. Uncompressed
    /// streams only: forwards only complete records, drops a record cut off by a session's end.
    #[arg(long)]
    pub keep_serving: bool,

    #[command(flatten)]
    pub link: LinkArgs,
}

impl Args {
    pub fn session_options(&self) -> SessionOptions {
        SessionOptions {
            idle_timeout: (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout)),
            keepalive: !self.no_keepalive,
        }
    }
}

/// Receive as `args` say and write the stream to `out`. Returns after one
/// session, or with --keep-serving when `shutdown` is set or the output fails.
/// `link` is `args.link` loaded ([`crate::transport::link::LinkSettings::load`]);
/// `hangup` (SIGHUP) re-reads its certificates.
pub fn run<W: Write>(
    args: &Args,
    link: &Link,
    out: &mut W,
    shutdown: &Arc<AtomicBool>,
    hangup: Arc<AtomicBool>,
) -> Result<(), NetError> {
    let endpoint = match (&args.listen, &args.connect) {
        (Some(addr), _) => Endpoint::Listen {
            addr: addr.clone(),
            allow: AllowList(args.allow.clone()),
        },
        // clap requires one of the two; an empty address fails to resolve.
        (None, addr) => Endpoint::Connect {
            addr: addr.clone().unwrap_or_default(),
            backoff: Backoff::new(
                Duration::from_millis(args.reconnect_ms),
                Duration::from_millis(args.backoff_cap_ms),
            ),
            max_retries: args.max_retries,
        },
    };
    let secure = Secure {
        link: link.clone(),
        // Without --keep-serving the stream may be compressed: any first
        // byte proves the peer is sending.
        expect: if args.keep_serving {
            Expect::FramedWalHeader
        } else {
            Expect::AnyByte
        },
        session: args.session_options(),
        on_refused: None,
    };
    serve(
        endpoint,
        &secure,
        shutdown,
        hangup,
        |_| {},
        |mut stream, peer| {
            if let (Some(dir), Some(_)) = (&args.resume_from, &args.connect) {
                send_resume_request(&mut stream, dir);
            }
            let result = session(&mut stream, peer, args, out, shutdown);
            after(result, peer, args.keep_serving)
        },
    )
}

/// The resume request of docs/protocol.md, with DIR's complete LSN. A
/// failure is logged: the server then serves from its own --since-lsn.
fn send_resume_request(stream: &mut impl Write, dir: &std::path::Path) {
    let fs = crate::storage::fs::StdFs;
    let lsn = crate::storage::meta::read_meta(&fs, dir)
        .and_then(|m| crate::replica::complete::load(&fs, dir, m.as_ref()));
    match lsn {
        Ok(lsn) => {
            info!("asking to resume after lsn {lsn}");
            if let Err(e) = stream.write_all(&crate::format::marker::resume_request(lsn)) {
                warn!("cannot send the resume request: {e}");
            }
        }
        Err(e) => warn!("no resume request sent: {e}"),
    }
}

/// One session per run stops after any session; --keep-serving goes on
/// after anything but a signal or an output error (no later session could
/// be delivered either).
fn after(
    result: Result<PumpOutcome, NetError>,
    peer: &str,
    keep_serving: bool,
) -> Result<After, NetError> {
    match result {
        Ok(o) if o.ended == SessionEnd::Shutdown || !keep_serving => Ok(After::Stop),
        Ok(o) if o.bytes == 0 => {
            warn!("{peer} closed the connection without sending anything");
            Ok(After::NoProgress)
        }
        Ok(_) => Ok(After::Progress),
        Err(e) if !keep_serving || e.is_output() => Err(e),
        Err(e) => {
            warn!("{e}");
            Ok(After::NoProgress)
        }
    }
}

/// One session on a connection that is configured and, in listen mode,
/// proven (see [`crate::transport::handshake`]).
fn session<S: PeerStream, W: Write>(
    stream: &mut S,
    peer: &str,
    args: &Args,
    out: &mut W,
    shutdown: &AtomicBool,
) -> Result<PumpOutcome, NetError> {
    let opts = args.session_options();
    let outcome = if args.keep_serving {
        let mut framer = SessionFramer::new(peer);
        let result = pump_framed(stream, &mut framer, out, &opts, shutdown);
        let dropped = framer.pending_bytes();
        if dropped > 0 {
            warn!(
                "session from {peer} ended inside a record: dropped the {dropped} bytes of it that had arrived, so \
                 that the next session starts clean (the leader sends that record again when it resumes)"
            );
        }
        result?
    } else {
        pump(stream, out, &opts, shutdown)?
    };
    match outcome.ended {
        SessionEnd::Eof => info!("session from {peer} ended: {} bytes", outcome.bytes),
        SessionEnd::Shutdown => info!(
            "stopping on signal; session from {peer}: {} bytes",
            outcome.bytes
        ),
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn exactly_one_mode() {
        assert!(Args::try_parse_from(["qdb-recv"]).is_err());
        assert!(Args::try_parse_from(["qdb-recv", "--listen", "a:1", "--connect", "b:1"]).is_err());
        assert!(
            Args::try_parse_from(["qdb-recv", "--connect", "b:1", "--allow", "10.0.0.0/8"])
                .is_err()
        );
        assert!(
            Args::try_parse_from(["qdb-recv", "--listen", "a:1", "--max-retries", "3"]).is_err()
        );
        let a = Args::try_parse_from([
            "qdb-recv",
            "--listen",
            "a:1",
            "--allow",
            "10.0.0.0/8",
            "--allow",
            "::1",
        ])
        .unwrap();
        assert_eq!(a.allow.len(), 2);
        assert_eq!(a.session_options(), SessionOptions::default());
    }

    #[test]
    fn bad_allow_value_is_named() {
        let e = Args::try_parse_from(["qdb-recv", "--listen", "a:1", "--allow", "10.0.0.0/40"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("10.0.0.0/40"), "{e}");
    }
}
