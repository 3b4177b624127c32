//! qdb-inspect: check, list and read a follower; rebuild its dir.

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use quiverdb_follower::cli::{
    self,
    inspect::{Args, Command, EXIT_DAMAGE},
};
use quiverdb_follower::inspect::{self, CheckOptions, Db, HeadsFrom, ReadOptions, RebuildOptions};
use quiverdb_follower::Error;
use quiverdb_follower::{Fs, StdFs};

fn main() -> ExitCode {
    let args = Args::parse();
    cli::init_logging("warn");
    let fs: Arc<dyn Fs> = Arc::new(StdFs);
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match run(args.command, fs, &mut out) {
        Ok(code) => code,
        Err(Error::Io { source, .. }) if cli::is_broken_pipe(&source) => ExitCode::SUCCESS,
        Err(e @ Error::Damaged { .. }) => {
            cli::report(&e);
            ExitCode::from(EXIT_DAMAGE)
        }
        Err(e) => cli::report_error(&e),
    }
}

fn run(cmd: Command, fs: Arc<dyn Fs>, out: &mut dyn Write) -> Result<ExitCode, Error> {
    let out_err = |e| Error::Io {
        what: "cannot write to",
        path: "standard output".into(),
        source: e,
    };
    match cmd {
        Command::Check { db, buckets } => {
            let report = inspect::check(fs, &db.path, CheckOptions { buckets })?;
            report.print(out)?;
            if report.is_clean() {
                return Ok(ExitCode::SUCCESS);
            }
            cli::report(&format!(
                "{} is damaged: {} problems (see the report on standard output)",
                db.path.display(),
                report.damage.len()
            ));
            Ok(ExitCode::from(EXIT_DAMAGE))
        }
        Command::Dump {
            db,
            values,
            scan,
            buckets,
        } => {
            let mut db = Db::open(fs, &db.path)?;
            let from = inspect::dump(&mut db, ReadOptions { scan, buckets }, values, out)?;
            if from == HeadsFrom::Scan && !scan {
                log::warn!("no dir: keys were listed by reading every page in id order (the page-scan oracle); pass --buckets N, the leader's bucket count, to read chains the way QuiverDB does");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get {
            db,
            key,
            hex,
            json,
            scan,
            buckets,
        } => {
            let key_bytes = if hex {
                match inspect::parse_hex(&key) {
                    Some(k) => k,
                    None => {
                        cli::report(&format!(
                            "--hex: {key:?} is not an even number of hex digits"
                        ));
                        return Ok(ExitCode::from(cli::EXIT_USAGE));
                    }
                }
            } else {
                key.clone().into_bytes()
            };
            let mut db = Db::open(fs, &db.path)?;
            match inspect::get(&mut db, &key_bytes, ReadOptions { scan, buckets })? {
                Some(v) if json => inspect::print_json_value(out, &key_bytes, &v)?,
                Some(v) => out.write_all(&v).map_err(out_err)?,
                None => {
                    cli::report(&format!("key {key:?} not found"));
                    return Ok(ExitCode::from(EXIT_DAMAGE));
                }
            }
            out.flush().map_err(out_err)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pages { db, json } => {
            let mut db = Db::open(fs, &db.path)?;
            inspect::pages(&mut db, json, out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::RebuildDir {
            db,
            buckets,
            force,
            wait_lock,
        } => {
            let r = inspect::rebuild_dir(
                fs,
                &db.path,
                RebuildOptions {
                    buckets,
                    force,
                    wait_lock,
                },
            )?;
            let heads = r.dir.heads.iter().filter(|&&h| h != u64::MAX).count();
            let changed = match &r.previous {
                Some(p) if p.heads.len() == r.dir.heads.len() => {
                    let n = p
                        .heads
                        .iter()
                        .zip(&r.dir.heads)
                        .filter(|(a, b)| a != b)
                        .count();
                    format!("{n} heads changed")
                }
                Some(_) => "bucket count changed".to_string(),
                None => "new".to_string(),
            };
            writeln!(
                out,
                "dir: {} buckets, {heads} heads ({changed}); {} pages with keys, {} ambiguous buckets, {} cyclic buckets",
                r.dir.buckets(),
                r.stats.member_pages,
                r.stats.ambiguous,
                r.stats.cyclic
            )
            .and_then(|()| out.flush())
            .map_err(out_err)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
