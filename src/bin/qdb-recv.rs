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
    let shutdown = match cli::signals() {
        Ok(signals) => signals.shutdown,
        Err(e) => return cli::report(&format!("cannot install the SIGTERM/SIGINT handlers: {e}")),
    };
    let mut out = io::stdout().lock();
    match recv::run(&args, &mut out, &shutdown) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => {
            log::info!("the reader of stdout went away; stopping");
            ExitCode::SUCCESS
        }
        Err(e) => cli::report(&e),
    }
}
