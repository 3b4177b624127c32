//! qdb-ckpt: print (or write) a follower's resume point, its complete LSN.

use std::process::ExitCode;

use clap::Parser;
use quiverdb_follower::cli::{self, ckpt::Args};
use quiverdb_follower::store::StdFs;
use quiverdb_follower::Error;
use quiverdb_follower::{complete, meta};

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging("warn");
    let m = match meta::read_meta(&StdFs, &args.path) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return cli::report_error(&Error::NoDatabase {
                path: args.path.clone(),
            })
        }
        Err(e) => return cli::report_error(&e),
    };
    // The resume point is the complete LSN (src/complete.rs), not last_lsn.
    let complete = match complete::load(&StdFs, &args.path, Some(&m)) {
        Ok(c) => c,
        Err(e) => return cli::report_error(&e),
    };
    if let Some(file) = &args.write {
        if let Err(e) = meta::write_checkpoint(&StdFs, file, complete) {
            return cli::report_error(&e);
        }
    }
    if args.json {
        println!(
            "{{\"page_size\":{},\"next_page_id\":{},\"last_lsn\":{},\"complete_lsn\":{},\"clean_shutdown\":{}}}",
            m.page_size,
            m.next_page_id,
            m.last_lsn,
            complete,
            m.clean_shutdown != 0
        );
    } else {
        println!("{complete}");
    }
    ExitCode::SUCCESS
}
