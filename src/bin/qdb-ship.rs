//! qdb-ship: the leader side. See `qdb-ship --help` and docs/protocol.md.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use quiverdb_follower::cli::{self, ship::Args};
use quiverdb_follower::leader::{self, serve, ShipOptions, Sink};
use quiverdb_follower::metrics::http::MetricsServer;
use quiverdb_follower::metrics::ShipMetrics;
use quiverdb_follower::net::AllowList;

/// `error: ...` and exit 2: a configuration that cannot work.
fn usage(err: &dyn std::fmt::Display) -> ExitCode {
    cli::report(err);
    ExitCode::from(cli::EXIT_USAGE)
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging("warn");
    // Validate everything before reading the leader, binding a port or
    // touching the sink: a bad --sink or TLS/token setup is exit 2.
    let sink = match args.sink.as_deref().map(Sink::parse).transpose() {
        Ok(s) => s.unwrap_or(Sink::Stdout),
        Err(e) => return usage(&e),
    };
    let link = match args.link_settings(&sink) {
        Ok((settings, listening)) => match settings.load(listening) {
            Ok(link) => link,
            Err(e) => return usage(&e),
        },
        Err(msg) => return usage(&msg),
    };
    if let Err(e) = leader::leader_meta(&args.path) {
        return cli::report(&e);
    }
    let signals = match cli::signals() {
        Ok(signals) => signals,
        Err(e) => return cli::report(&format!("cannot install the signal handlers: {e}")),
    };
    let stop = signals.shutdown;
    let metrics = args.metrics_addr.map(|_| ShipMetrics::new());
    // Kept until the end of main: dropping it stops the HTTP thread.
    let _metrics_server = match (args.metrics_addr, &metrics) {
        (Some(addr), Some(m)) => match MetricsServer::start(addr, Arc::new(m.clone())) {
            Ok(s) => Some(s),
            Err(e) => return cli::report(&e),
        },
        _ => None,
    };
    let opts = ShipOptions {
        path: args.path.clone(),
        follow: args.follow,
        compress: args.compress.into(),
        flush_every: args.flush_every,
        flush_bytes: args.flush_bytes,
        poll: Duration::from_millis(args.poll_ms),
        heartbeat: (args.heartbeat_ms > 0).then(|| Duration::from_millis(args.heartbeat_ms)),
        metrics: metrics.clone(),
    };
    let res = match &args.listen {
        Some(addr) => {
            let sopts = serve::ServeOptions {
                ship: opts,
                since_lsn: args.since_lsn,
                max_clients: args.max_clients as usize,
                resume_wait: Duration::from_millis(args.resume_wait_ms),
                allow: AllowList(args.allow.clone()),
                link,
            };
            serve::serve(addr, &sopts, stop, signals.hangup, |_| {})
        }
        None => sink.open(&link, &stop).and_then(|mut w| {
            if let Some(m) = &metrics {
                m.set_healthy(true);
                m.follower_connected();
            }
            let r = leader::ship(&opts, args.since_lsn, &mut w, &stop);
            if let Some(m) = &metrics {
                m.follower_disconnected();
                m.set_healthy(false);
            }
            r?;
            // A TLS follower reads close_notify as the clean end.
            if let Err(e) = w.close() {
                log::debug!("closing {sink}: {e}");
            }
            Ok(())
        }),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_disconnect() && sink == Sink::Stdout => {
            log::info!("the reader of stdout went away; stopping");
            ExitCode::SUCCESS
        }
        Err(e) => cli::report(&e),
    }
}
