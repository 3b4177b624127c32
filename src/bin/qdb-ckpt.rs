//! qdb-ckpt: print (or write) a follower's meta.last_lsn.

use std::process::ExitCode;

use clap::Parser;
use quiverdb_follower::cli::{self, ckpt::Args};
use quiverdb_follower::Error;
use quiverdb_follower::StdFs;

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging("warn");
    let m = match quiverdb_follower::read_meta(&StdFs, &args.path) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return cli::report_error(&Error::NoDatabase {
                path: args.path.clone(),
            })
        }
        Err(e) => return cli::report_error(&e),
    };
    if let Some(file) = &args.write {
        if let Err(e) = quiverdb_follower::write_checkpoint(&StdFs, file, m.last_lsn) {
            return cli::report_error(&e);
        }
    }
    if args.json {
        // complete_lsn is last_lsn until the complete-LSN file exists; the
        // leader's LSN (and so the lag) is known only to the running daemon
        // (its /metrics and STATUS line), never to a reader of the files.
        println!(
            "{{\"page_size\":{},\"next_page_id\":{},\"last_lsn\":{},\"complete_lsn\":{},\"clean_shutdown\":{}}}",
            m.page_size,
            m.next_page_id,
            m.last_lsn,
            m.last_lsn,
            m.clean_shutdown != 0
        );
    } else {
        println!("{}", m.last_lsn);
    }
    ExitCode::SUCCESS
}
