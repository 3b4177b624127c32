//! qdb-ship: the leader side. See `qdb-ship --help` and docs/protocol.md.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use quiverdb_follower::cli::{self, ship::Args};
use quiverdb_follower::leader::{self, serve, ShipOptions, Sink};

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging("warn");
    // Validate everything before touching the network or the sink file.
    let sink = match args.sink.as_deref().map(Sink::parse).transpose() {
        Ok(s) => s.unwrap_or(Sink::Stdout),
        Err(e) => return cli::report(&e),
    };
    if let Err(e) = leader::leader_meta(&args.path) {
        return cli::report(&e);
    }
    let stop = match cli::signals() {
        Ok(signals) => signals.shutdown,
        Err(e) => return cli::report(&format!("cannot install the SIGTERM/SIGINT handlers: {e}")),
    };
    let opts = ShipOptions {
        path: args.path.clone(),
        follow: args.follow,
        compress: args.compress.into(),
        flush_every: args.flush_every,
        flush_bytes: args.flush_bytes,
        poll: Duration::from_millis(args.poll_ms),
        heartbeat: (args.heartbeat_ms > 0).then(|| Duration::from_millis(args.heartbeat_ms)),
    };
    let res = match &args.listen {
        Some(addr) => {
            let sopts = serve::ServeOptions {
                ship: opts,
                since_lsn: args.since_lsn,
                max_clients: args.max_clients as usize,
                resume_wait: Duration::from_millis(args.resume_wait_ms),
            };
            serve::serve(addr, &sopts, stop)
        }
        None => sink
            .open()
            .and_then(|w| leader::ship(&opts, args.since_lsn, w, &stop).map(|_| ())),
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
