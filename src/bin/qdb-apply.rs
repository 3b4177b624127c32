//! qdb-apply: WAL stream on stdin -> follower DB.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use quiverdb_follower::cli::{self, apply::Args};
use quiverdb_follower::format::wal::StreamEnd;
use quiverdb_follower::pipe;
use quiverdb_follower::StdFs;
use quiverdb_follower::{Follower, SessionStats};

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging("warn");
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A signal stops the intake; what is already buffered is applied and committed.
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    let mut opts = args.options();
    // --wait-lock must end on SIGINT/SIGTERM (exit 3, nothing applied):
    // the handlers above keep the signals from killing the process.
    opts.stop = Some(stop.clone());
    let mut follower = match Follower::open(Arc::new(StdFs), &args.path, opts) {
        Ok(f) => f,
        Err(e) => return cli::report_error(&e),
    };
    let (mut tx, rx) = pipe::pipe(32);
    // Reading stdin on its own thread overlaps input with disk writes and
    // lets apply see when the sender pauses (the group-commit trigger).
    std::thread::spawn(move || {
        if let Err(e) = pipe::pump_reader(std::io::stdin().lock(), &mut tx) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                log::warn!("reading stdin failed: {e}; treating it as the end of the stream");
            }
        }
    });
    let started = Instant::now();
    let mut stats = SessionStats::default();
    let res = follower.apply(rx.with_stop(stop), &mut stats);
    if let Some(StreamEnd::PartialTail { bytes }) = stats.end {
        log::info!("stream ended inside a record (partial tail): its {bytes} bytes were ignored");
    }
    log::info!("{stats} elapsed={:.3}s", started.elapsed().as_secs_f64());
    if res.is_ok() && follower.meta().is_none() {
        log::warn!(
            "the stream carried no page image, so the follower at {} was not created",
            args.path.display()
        );
    }
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::report_error(&e),
    }
}
