//! quiverdb-follower: the daemon (receive, decompress, apply in one process).

use std::process::ExitCode;

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
                return ExitCode::from(cli::EXIT_USAGE);
            }
        },
        None => None,
    };
    let settings = match config::resolve(&args.values, file) {
        Ok(s) => s,
        Err(e) => {
            cli::report(&e);
            return ExitCode::from(cli::EXIT_USAGE);
        }
    };
    if args.print_config {
        print!("{}", settings.to_toml());
        return ExitCode::SUCCESS;
    }
    // Certificates, keys and the token are read and checked here, before the
    // database is locked or the port bound: a bad TLS setup is exit 2.
    let listening = matches!(settings.mode, config::Mode::Listen(_));
    let link = match settings.link.load(listening) {
        Ok(l) => l,
        Err(e) => {
            cli::report(&e);
            return ExitCode::from(cli::EXIT_USAGE);
        }
    };
    // The checkpoint path too: a folder that is missing, a folder or a
    // symlink in its place, would otherwise fail only after a session.
    if let Err(e) = quiverdb_follower::daemon_preflight(&settings) {
        cli::report(&e);
        return ExitCode::from(cli::EXIT_USAGE);
    }
    let signals = match cli::signals() {
        Ok(s) => s,
        Err(e) => {
            cli::report(&format!("cannot install the signal handlers: {e}"));
            return ExitCode::from(cli::EXIT_LOCAL);
        }
    };
    match quiverdb_follower::run_daemon(&settings, &link, signals.shutdown, signals.hangup) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            cli::report(&e);
            ExitCode::from(cli::EXIT_LOCAL)
        }
    }
}
