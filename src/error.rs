//! The library's typed errors. Every message is one line that says what is
//! wrong and, where there is something to do, what to do; binaries print them
//! with Display (`error: ...`).

use std::io;
use std::path::PathBuf;

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Something wrong with the incoming WAL stream. These end a session; the
/// follower itself is intact (every page of the good prefix is durable).
#[derive(Debug, Error)]
pub enum StreamError {
    #[error("input ended after {got} bytes, before the 16-byte WAL stream header was complete: the sender sent nothing usable (is the leader running wal-ship, and did it start from the beginning of its stream?)")]
    ShortHeader { got: usize },
    #[error("input is a QuiverDB 2.x WAL stream (magic P2WAL001), which is not supported: quiverdb-follower applies QuiverDB 1.x streams (P1WAL001) only")]
    Wal2,
    #[error("input looks like {what} ({seen}), not a raw WAL stream: decompress it first, e.g. `qdb-unzip | qdb-apply`, or match the leader's --compress")]
    Compressed { what: &'static str, seen: String },
    #[error("input is not a QuiverDB 1.x WAL stream: expected the magic P1WAL001, got {seen}; check that the sender is `quiverdb wal-ship` and that --decompress matches its --compress")]
    BadMagic { seen: String },
    #[error("WAL record CRC mismatch at stream offset {offset} (type {rtype}, lsn {lsn}, page {page_id}): stored {stored:#010x}, computed {computed:#010x}; the stream is corrupt: nothing of this record was written, everything before it is durable")]
    CrcMismatch {
        offset: u64,
        rtype: u8,
        lsn: u64,
        page_id: u64,
        stored: u32,
        computed: u32,
    },
    #[error("page image for page {page_id} (lsn {lsn}) at stream offset {offset} has len {len}, but the follower's page size is {page_size}: the leader and follower page sizes differ (recreate the follower with the leader's page size) or the stream is corrupt")]
    PageLenMismatch {
        offset: u64,
        lsn: u64,
        page_id: u64,
        len: u32,
        page_size: u32,
    },
    #[error("page image at stream offset {offset} has len {len}, which is not a QuiverDB page size (4096, 8192, 16384 or 32768): the stream is corrupt")]
    InvalidPageLen { offset: u64, len: u32 },
    #[error("record of type {rtype} at stream offset {offset} has len {len}, more than the {cap}-byte limit for non-page records: the stream is corrupt")]
    RecordTooLong {
        offset: u64,
        rtype: u8,
        len: u32,
        cap: u32,
    },
    #[error("page image at stream offset {offset} targets page {page_id}, beyond the --max-pages limit of {max_pages} pages: refusing to grow the follower that far (raise --max-pages if the leader really is that large)")]
    PageIdTooLarge {
        offset: u64,
        page_id: u64,
        max_pages: u64,
    },
    #[error("page image for page {page_id} (lsn {lsn}) at stream offset {offset} carries a corrupt page: page CRC stored {stored:#010x}, computed {computed:#010x}; nothing of it was written")]
    CorruptPage {
        offset: u64,
        lsn: u64,
        page_id: u64,
        stored: u32,
        computed: u32,
    },
    #[error("reading the WAL stream failed: {0}")]
    Read(#[source] io::Error),
}

/// Something wrong with a `quiverdb backup` given to `qdb-restore`, or a
/// refusal of restore or promote. Nothing of the follower was changed.
#[derive(Debug, Error)]
pub enum BackupError {
    #[error("{what}: {reason}")]
    Malformed { what: String, reason: String },
    #[error("the backup has no {name}: a `quiverdb backup` folder holds pages.bin, manifest.json and (when the leader has a dir) dir.bin; pass that folder, or a tar of its contents on stdin")]
    Missing { name: &'static str },
    #[error("the backup's pages.bin is truncated: it ends inside the frame at byte {offset} ({got} of {want} bytes); make the backup again (nothing was written)")]
    Truncated { offset: u64, got: u64, want: u64 },
    #[error("the backup's pages.bin frame at byte {offset} (page {page_id}) fails its CRC: stored {stored:#010x}, computed {computed:#010x}; the backup is corrupt (nothing was written)")]
    FrameCrc {
        offset: u64,
        page_id: u64,
        stored: u32,
        computed: u32,
    },
    #[error("the backup's pages.bin frame at byte {offset} (page {page_id}) has len {len}, but the manifest's page size is {page_size}: the backup is corrupt (nothing was written)")]
    FrameLen {
        offset: u64,
        page_id: u64,
        len: u32,
        page_size: u32,
    },
    #[error("the backup's pages.bin frame at byte {offset} targets page {page_id}, beyond the --max-pages limit of {max_pages} pages (nothing was written)")]
    PageIdTooLarge {
        offset: u64,
        page_id: u64,
        max_pages: u64,
    },
    #[error("the backup's page {page_id} (frame at byte {offset}) is corrupt: page CRC stored {stored:#010x}, computed {computed:#010x} (nothing was written)")]
    CorruptPage {
        offset: u64,
        page_id: u64,
        stored: u32,
        computed: u32,
    },
    #[error("the backup has page size {backup}, but the follower {} has {follower}: a follower must have its leader's page size (nothing was written)", path.display())]
    PageSize {
        path: PathBuf,
        backup: u32,
        follower: u32,
    },
    #[error("the backup is incremental from LSN {since}, but the follower {} is complete only up to LSN {complete}: restoring it would leave the changes in between missing; make the backup with `quiverdb backup --since-lsn {complete}` (or a full one), or pass --force to restore it anyway", path.display())]
    Hole {
        path: PathBuf,
        since: u64,
        complete: u64,
    },
    #[error("the follower {} is complete only up to LSN {complete} but its meta.last_lsn is {last_lsn}: changes in between are missing; heal it first (`quiverdb backup --since-lsn {complete}` on the leader, then qdb-restore), or pass --force to promote it as it is", path.display())]
    Holes {
        path: PathBuf,
        complete: u64,
        last_lsn: u64,
    },
}

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no QuiverDB database at {} (no meta file): check --path, or let qdb-apply create the follower", path.display())]
    NoDatabase { path: PathBuf },
    #[error("{} is not a QuiverDB 1.x meta v3 file: {reason}", path.display())]
    BadMeta { path: PathBuf, reason: String },
    #[error("{} has data segment files but no meta: refusing to create a database over them (move them away, or restore the meta file)", path.display())]
    OrphanSegments { path: PathBuf },
    #[error("the follower database {} is locked by another process (flock on {}): another qdb-apply or quiverdb-follower is running on it; {hint}", path.display(), path.join(crate::format::layout::LOCK_FILE).display())]
    Locked {
        path: PathBuf,
        /// What to do about it, worded for the tool that failed.
        hint: LockHint,
    },
    #[error("interrupted by a signal while waiting for the lock on the follower database {}: nothing was applied", path.display())]
    LockWaitInterrupted { path: PathBuf },
    #[error("{} was deleted or replaced while this process held the lock on it: another applier may now be running on the follower, so this one stops before writing anything more (make sure only one applier runs, then restart it)", path.display())]
    LockLost { path: PathBuf },
    #[error("the checkpoint file {} is a symbolic link: it is replaced by a rename, which would replace the link and leave its target stale; give the real file's path instead", path.display())]
    CheckpointSymlink { path: PathBuf },
    #[error("the checkpoint file {} cannot be written: {reason}", path.display())]
    CheckpointPath { path: PathBuf, reason: String },
    #[error("the follower database {} stopped after an earlier local error (a failed write, fsync or rename): nothing more is applied or committed by this process; fix the cause, then restart to resume from meta.last_lsn", path.display())]
    Poisoned { path: PathBuf },
    #[error("page size {0} is not allowed by QuiverDB 1.x: use 4096, 8192, 16384 or 32768")]
    InvalidPageSize(u32),
    #[error("the follower database {} has page size {db}, but {requested} was requested: a follower must have its leader's page size", path.display())]
    PageSizeMismatch {
        path: PathBuf,
        db: u32,
        requested: u32,
    },
    #[error("{} holds {dir} buckets, but {requested} were asked for: use the leader's bucket count (its dir file is 24 + 8 x buckets bytes), or replace this dir with `qdb-inspect rebuild-dir --path DB --buckets {requested} --force`", path.display())]
    DirBucketsMismatch {
        path: PathBuf,
        dir: u32,
        requested: u32,
    },
    #[error("{} is not a QuiverDB 1.x directory file ({reason}): it holds only derived bucket heads, so rebuild it with `qdb-inspect rebuild-dir --path DB --buckets N --force`", path.display())]
    BadDir { path: PathBuf, reason: String },
    #[error("bucket count {0} is not allowed: use the leader's bucket count (1 to 16777216; QuiverDB's default is 1024)")]
    InvalidBuckets(u32),
    #[error("{} has no bucket-head directory (dir), so keys cannot be looked up the way QuiverDB reads them: create it with `qdb-inspect rebuild-dir --path DB --buckets N`, or pass --buckets N (N = the leader's bucket count) to read through heads inferred from the pages", path.display())]
    NoDir { path: PathBuf },
    #[error("the database at {} is damaged: {reason}; run `qdb-inspect check --path DB` for a full report", path.display())]
    Damaged { path: PathBuf, reason: String },
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// True for errors caused by the incoming stream (the session is bad, the
    /// follower is fine and the next session may proceed); false for local
    /// errors (disk, permissions, lock) that should stop a daemon.
    pub fn is_stream_error(&self) -> bool {
        matches!(self, Error::Stream(_))
    }

    /// True for errors caused by what the tool was given (a stream, a
    /// backup) or a refusal, with nothing changed: exit status 1. False for
    /// local errors (exit status 3).
    pub fn is_input_error(&self) -> bool {
        matches!(self, Error::Stream(_) | Error::Backup(_))
    }
}

/// What the "locked by another process" error tells the user to do: each
/// tool has its own way out (the daemon has no `--wait-lock`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LockHint {
    /// Tools with a `--wait-lock` flag (qdb-apply, qdb-inspect rebuild-dir).
    WaitLock,
    /// The daemon, and library users: stop the other process first.
    #[default]
    StopOther,
}

impl std::fmt::Display for LockHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LockHint::WaitLock => "stop it, or pass --wait-lock to wait",
            LockHint::StopOther => {
                "stop it first: only one applier may run on a follower (check `systemctl status` and `pgrep -a qdb-apply`)"
            }
        })
    }
}
