//! qdb-restore: a leader's `quiverdb backup` (folder or tar on stdin) -> follower DB.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use quiverdb_follower::cli::{self, restore::Args};
use quiverdb_follower::{restore_dir, restore_tar, StdFs};

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging("warn");
    let fs = Arc::new(StdFs);
    let opts = args.options();
    let res = match &args.from {
        Some(dir) => restore_dir(fs, &args.path, dir, &opts),
        None => restore_tar(
            fs,
            &args.path,
            std::io::stdin().lock(),
            &args.spool_dir(),
            &opts,
        ),
    };
    match res {
        Ok(report) => {
            log::info!("restored {}: {report}", args.path.display());
            ExitCode::SUCCESS
        }
        Err(e) => cli::report_error(&e),
    }
}
