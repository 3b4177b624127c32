//! `qdb-inspect`: flags.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Exit status when `check` finds damage, `get` finds no such key, or a
/// read runs into damage.
pub const EXIT_DAMAGE: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "qdb-inspect",
    version,
    about = "Check, list and read a QuiverDB 1.x follower; rebuild its bucket-head directory",
    long_about = "Look inside a QuiverDB 1.x database, typically a follower kept by qdb-apply or \
quiverdb-follower, without changing it: check its pages, chains and overflow chains, list every \
live key in the format of `quiverdb db-scan --json`, read one value the way QuiverDB's reader \
finds it, or list its pages.\n\n\
QuiverDB 1.x never replicates its bucket-head directory (DIR/dir), so a follower built from the \
WAL stream alone has none and QuiverDB cannot read it. `rebuild-dir` infers every bucket's head \
from the pages and writes DIR/dir; `qdb-apply --buckets N` keeps it up to date while applying.\n\n\
check, dump, get and pages take no lock and never write, so they work while an applier runs. \
They read meta once, at the start, and look only at the pages it counts; a page the applier \
rewrites during the read can look damaged, so run `check` again before acting on a single CRC \
report. rebuild-dir writes DIR/dir and takes the database lock, like an applier.",
    after_help = "EXIT STATUS:\n  0  success; check found no damage\n  \
1  check found damage, get found no such key, or dump/get ran into damage\n  \
2  usage error\n  3  local error (no database, unreadable file, lock held by another process)\n\n\
EXAMPLES:\n  qdb-inspect check --path ./follower\n  \
qdb-inspect dump --path ./follower > follower.jsonl\n  \
qdb-inspect get --path ./follower user:000123 | sha256sum\n  \
qdb-inspect get --path ./follower --hex 00ff10\n  \
qdb-inspect pages --path ./follower | awk -F'\\t' '$2 == \"kv\"'\n  \
qdb-inspect rebuild-dir --path ./follower --buckets 1024\n\n\
VERIFYING A FOLLOWER AGAINST ITS LEADER:\n  \
Let the follower catch up (qdb-ckpt --path F prints the leader's `quiverdb cdc-last-lsn`), then\n  \
qdb-inspect check --path F\n  \
diff <(qdb-inspect dump --path LEADER) <(qdb-inspect dump --path F)\n  \
cmp LEADER/dir F/dir      (with qdb-apply --buckets, or after rebuild-dir)\n\n\
Logs go to stderr; RUST_LOG=debug shows how each ambiguous bucket head was chosen."
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct Db {
    /// Database folder
    #[arg(long, value_name = "DIR")]
    pub path: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every page's CRC and structure, the segments against meta, the bucket chains and the overflow chains
    #[command(
        long_about = "Check the database and print a report: meta against the segment files \
(missing or cut-off segments), every page's CRC and structure (slot table, records, fingerprints, \
one bucket per page), every bucket chain (from DIR/dir, or from heads inferred from the pages: a \
head that is not a KV_RH page, a cycle, a page on two chains, keys in the wrong bucket), and the \
overflow chain of every live value (readable OVERFLOW pages, length equal to the placeholder's). \
Lines starting `damage:` are problems that make QuiverDB's reader fail or return wrong data; \
`warning:` lines are states that can be normal (pages written after the last commit, stale images \
of pages the leader freed, a dir that lags the pages). The last line says `result: clean` or \
`result: damaged`.",
        after_help = "EXIT STATUS:\n  0  no damage (warnings allowed)\n  1  damage found\n  3  the check could not run"
    )]
    Check {
        #[command(flatten)]
        db: Db,
        /// The leader's bucket count, to check chains of a database without DIR/dir
        #[arg(long, value_name = "N")]
        buckets: Option<u32>,
    },
    /// Print every live key as JSON lines, like `quiverdb db-scan --json`, sorted by key
    #[command(
        long_about = "Print every live key as one JSON object per line, sorted by key bytes: \
{\"key_hex\",\"len\",\"sha256\"} plus \"value_hex\" when the value is at most 64 bytes long; the \
format of `quiverdb db-scan --json` as stored in leader/scan.jsonl, so the output of a leader and \
of its follower can be compared with diff or cmp.\n\n\
With DIR/dir, keys are found the way QuiverDB scans: bucket by bucket along each chain, the last \
record of a key along a chain winning. Without DIR/dir, --buckets N walks the chains from heads \
inferred from the pages (what `rebuild-dir` would write), with the same result.\n\n\
Without DIR/dir and --buckets (or with --scan), every readable KV_RH page is read in page-id \
order and later pages win: the page-scan oracle of QuiverDB's own follower tests. It differs from \
QuiverDB's reader when a key has records on two pages of one chain that are not in id order, and \
it shows keys of stale non-empty pages no chain reaches."
    )]
    Dump {
        #[command(flatten)]
        db: Db,
        /// Print value_hex for every value, not only for values of at most 64 bytes
        #[arg(long)]
        values: bool,
        /// Read every page in id order instead of walking DIR/dir
        #[arg(long, conflicts_with = "buckets")]
        scan: bool,
        /// The leader's bucket count: without DIR/dir, walk chains from heads inferred from the pages
        #[arg(long, value_name = "N")]
        buckets: Option<u32>,
    },
    /// Print the value of one key, found through DIR/dir as QuiverDB's reader finds it
    #[command(
        long_about = "Print the value of KEY on standard output, as raw bytes. The key is looked \
up as QuiverDB's Db::get does: its bucket's head from DIR/dir, then along the chain, the last \
match winning; overflow values are read through their chains. Without DIR/dir, pass --buckets N \
(the leader's bucket count) to use heads inferred from the pages. With --scan, no chain is used: \
the last readable KV_RH page in id order that holds the key wins.",
        after_help = "EXIT STATUS:\n  0  found\n  1  no such key, or damage on the way\n  3  local error"
    )]
    Get {
        #[command(flatten)]
        db: Db,
        /// The key (UTF-8 text; with --hex, hex digits)
        #[arg(value_name = "KEY")]
        key: String,
        /// KEY is hex, for binary keys (e.g. 00ff10)
        #[arg(long)]
        hex: bool,
        /// Print one JSON line (key_hex, len, sha256, value_hex) instead of the raw value
        #[arg(long)]
        json: bool,
        /// Find the key by reading every page in id order instead of through DIR/dir
        #[arg(long, conflicts_with = "buckets")]
        scan: bool,
        /// The leader's bucket count: without DIR/dir, use heads inferred from the pages
        #[arg(long, value_name = "N")]
        buckets: Option<u32>,
    },
    /// List every page: id, type, lsn, next, used_slots
    #[command(
        long_about = "Print one line per page up to meta.next_page_id: a header line, then \
tab-separated `id type lsn next used_slots`. type is kv, overflow, zero (never written), other \
(another magic, version or type), bad-crc or unreadable (missing or short segment). lsn and next \
come from the page header (`none` is the end of a chain); `-` marks a field the page does not \
have. --json prints one JSON object per page instead, leaving such fields out."
    )]
    Pages {
        #[command(flatten)]
        db: Db,
        /// One JSON object per line instead of tab-separated columns
        #[arg(long)]
        json: bool,
    },
    /// Infer every bucket head from the pages and write DIR/dir (takes the database lock)
    #[command(
        long_about = "Infer every bucket's head from the pages, from scratch, and replace DIR/dir \
atomically (dir.tmp, fsync, rename, folder fsync), so QuiverDB can read the follower. A \
non-empty KV_RH page belongs to the bucket of its keys; a bucket's head is its page that no other \
page of the bucket links to. On a follower that has caught up with its leader, the result is \
byte-identical to the leader's dir. Use the leader's bucket count: its dir file is 24 + 8 x \
buckets bytes long (QuiverDB's default is 1024).\n\n\
This writes, so it takes the database lock (DIR/LOCK) like an applier, and fails if one is \
running: with qdb-apply, pass --buckets instead to keep DIR/dir up to date."
    )]
    RebuildDir {
        #[command(flatten)]
        db: Db,
        /// The leader's bucket count (default: that of the existing DIR/dir)
        #[arg(long, value_name = "N")]
        buckets: Option<u32>,
        /// Replace an existing DIR/dir that has another bucket count or cannot be read
        #[arg(long)]
        force: bool,
        /// Wait for the database lock instead of failing when another process holds it
        #[arg(long)]
        wait_lock: bool,
    },
}
