//! qdb-ckpt: print (or write) a follower's resume point, its complete LSN.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use quiverdb_follower::cli::{self, ckpt::Args};
use quiverdb_follower::complete;
use quiverdb_follower::Error;
use quiverdb_follower::StdFs;

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging("warn");
    if let Some(file) = &args.write {
        // Refuse a symlink (or a path without a file name) before reading
        // anything, and clear what an interrupted write left there.
        let ok = quiverdb_follower::check_checkpoint_path(&StdFs, file).and_then(|()| {
            let name = file.file_name().expect("checked above");
            let dir = match file.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            quiverdb_follower::remove_stale_temps(&StdFs, dir, name).map(|_| ())
        });
        if let Err(e) = ok {
            return cli::report_error(&e);
        }
    }
    let m = match quiverdb_follower::read_meta(&StdFs, &args.path) {
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
        if let Err(e) = quiverdb_follower::write_checkpoint(&StdFs, file, complete) {
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
            complete,
            m.clean_shutdown != 0
        );
    } else {
        println!("{complete}");
    }
    ExitCode::SUCCESS
}
