//! qdb-unzip: compressed WAL stream on stdin -> WAL stream on stdout.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;

use clap::Parser;
use quiverdb_follower::cli::{self, unzip::Args};
use quiverdb_follower::codec;

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging("warn");
    // Plain file handles on fds 0 and 1: Rust's stdout is line-buffered,
    // which splits every binary chunk at its last newline into extra writes.
    // The decoder does its own buffering and flushes after each chunk.
    let input: Box<dyn Read> = match io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(File::from(fd)),
        Err(_) => Box::new(io::stdin().lock()),
    };
    let output: Box<dyn Write> = match io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(File::from(fd)),
        Err(_) => Box::new(io::stdout().lock()),
    };
    match codec::unzip_with(input, output, args.decompress, args.options()) {
        Ok(o) => {
            log::info!(
                "{}: read {} bytes, wrote {} bytes",
                o.detected,
                o.bytes_in,
                o.bytes_out
            );
            if o.bytes_in == 0 {
                log::warn!("the input was empty: nothing to decode");
            } else if o.truncated {
                log::warn!(
                    "the {} stream ended before its end marker (partial tail): wrote {} decoded bytes",
                    o.detected,
                    o.bytes_out
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) if e.is_broken_pipe() => {
            log::info!("stdout was closed by its reader: stopping");
            ExitCode::SUCCESS
        }
        Err(e) => cli::report(&e),
    }
}
