//! qdb-promote: a stopped follower -> a database QuiverDB opens as a leader.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use quiverdb_follower::cli::{self, promote::Args};
use quiverdb_follower::{promote, StdFs};

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging("warn");
    match promote(Arc::new(StdFs), &args.path, &args.options()) {
        Ok(report) => {
            log::info!("promoted {}: {report}", args.path.display());
            ExitCode::SUCCESS
        }
        Err(e) => cli::report_error(&e),
    }
}
