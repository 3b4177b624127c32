//! qdb-recv: receive a QuiverDB 1.x WAL stream over TCP and write it to stdout.
//! See `qdb-recv --help` and docs/tools/qdb-recv.md.

use std::io;
use std::process::ExitCode;

use clap::Parser;
use quiverdb_follower::cli::{self, recv};

fn main() -> ExitCode {
    let args = recv::Args::parse();
    // Quiet by default like any filter; RUST_LOG=info shows the connection story.
    cli::init_logging("warn");
    // Checked and read before anything is bound: a bad TLS or token setup is
    // a usage error (exit 2), never a receiver that refuses every leader.
    let link = match args.link.settings().load(args.listen.is_some()) {
        Ok(l) => l,
        Err(e) => {
            cli::report(&e);
            return ExitCode::from(cli::EXIT_USAGE);
        }
    };
    let signals = match cli::signals() {
        Ok(signals) => signals,
        Err(e) => return cli::report(&format!("cannot install the signal handlers: {e}")),
    };
    let mut out = io::stdout().lock();
    match recv::run(&args, &link, &mut out, &signals.shutdown, signals.hangup) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => {
            log::info!("the reader of stdout went away; stopping");
            ExitCode::SUCCESS
        }
        Err(e) => cli::report(&e),
    }
}
