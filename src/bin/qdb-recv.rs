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
    let reload = match cli::reload_flag() {
        Ok(flag) => flag,
        Err(e) => return cli::report(&format!("cannot install the SIGHUP handler: {e}")),
    };
    let shutdown = match recv::shutdown_flag() {
        Ok(flag) => flag,
        Err(e) => return cli::report(&format!("cannot install the SIGTERM/SIGINT handlers: {e}")),
    };
    let mut out = io::stdout().lock();
    match recv::run(&args, &link, &mut out, &shutdown, Some(reload)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => {
            log::info!("the reader of stdout went away; stopping");
            ExitCode::SUCCESS
        }
        Err(e) => cli::report(&e),
    }
}
