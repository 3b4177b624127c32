//! quiverdb-follower: the daemon (receive, decompress, apply in one process).

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use quiverdb_follower::cli::{self, follower::Args};
use quiverdb_follower::config::{self, ConfigFile};

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging("info");
    let file = match &args.config {
        Some(p) => match ConfigFile::load(p) {
            Ok(c) => Some(c),
            Err(e) => {
                cli::report(&e);
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let settings = match config::resolve(&args.values, file) {
        Ok(s) => s,
        Err(e) => {
            cli::report(&e);
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", settings.to_toml());
        return ExitCode::SUCCESS;
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A second signal while stopping ends the process at once.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 1, shutdown.clone());
        let _ = signal_hook::flag::register(sig, shutdown.clone());
    }
    match quiverdb_follower::run_daemon(&settings, shutdown) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            cli::report(&e);
            ExitCode::from(cli::EXIT_LOCAL)
        }
    }
}
