//! `qdb-restore`: heal a follower from a backup made by the leader's own
//! `quiverdb backup --path L --out B [--since-lsn N]`.
//!
//! The backup format (`../shared/peers/README.md`): `pages.bin`, frames of
//! `[page_id u64][page_lsn u64][len u32][crc32 u32]` + the page, the CRC over
//! the 20 header bytes before it and the page; `dir.bin`, a copy of the
//! leader's `dir` when it has one; `manifest.json` with `snapshot_lsn`,
//! `since_lsn` (null for a full backup), `page_size`, `pages_emitted`,
//! `dir_present`.
//!
//! The rules are qdb-apply's, with the [`Follower`] doing the work:
//! * everything about the backup is checked before the follower is touched:
//!   the manifest, every frame's CRC and length (one read of `pages.bin`,
//!   without keeping it), the page CRC of every page, `dir.bin`; then a
//!   second read applies the frames, so a bad backup changes nothing;
//! * each page is gated by its LSN exactly as a stream's page image is;
//! * durability order: pages durable (a commit), then `dir`, then
//!   `meta.last_lsn` = the snapshot LSN, then the complete LSN;
//! * memory is bounded whatever the backup size: frames are streamed, and a
//!   tar on stdin is spooled to a folder beside the follower first (a stream
//!   cannot be read twice).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::error::{BackupError, Error, Result};
use crate::format::dir::Directory;
use crate::format::layout::{is_valid_page_size, le_u32, le_u64, DIR_FILE};
use crate::format::page::{self, PageCrc};
use crate::replica::apply::{ApplyOptions, Follower, SessionStats, DEFAULT_MAX_PAGES};
use crate::replica::complete;
use crate::storage::fs::Fs;
use crate::storage::meta::{self, replace_file};
use crate::storage::store::FsyncPolicy;
use crate::transport::codec::{self, Sniffed};

/// The three files of a `quiverdb backup` folder.
pub const PAGES_FILE: &str = "pages.bin";
pub const DIR_BIN_FILE: &str = "dir.bin";
pub const MANIFEST_FILE: &str = "manifest.json";

/// `[page_id u64][page_lsn u64][len u32][crc32 u32]`.
const FRAME_HEADER_LEN: usize = 24;
/// A manifest is a one-line JSON object of about 150 bytes; anything this
/// large is not one, and is refused before it is read into memory.
const MAX_MANIFEST_LEN: u64 = 1 << 20;
/// The largest dir QuiverDB writes: 24 + 8 x 2^24 buckets.
const MAX_DIR_LEN: u64 = 24 + 8 * (1 << 24);

/// `manifest.json`, as QuiverDB 1.2.6 writes it. Unknown fields are allowed
/// (a later 1.x may add some); the ones restore relies on are required.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub snapshot_lsn: u64,
    /// `None` (JSON null): a full backup.
    pub since_lsn: Option<u64>,
    pub page_size: u32,
    #[serde(default)]
    pub pages_emitted: Option<u64>,
    #[serde(default)]
    pub dir_present: Option<bool>,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> std::result::Result<Manifest, BackupError> {
        let malformed = |reason: String| BackupError::Malformed {
            what: "the backup's manifest.json is not a QuiverDB backup manifest".into(),
            reason,
        };
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        if !is_valid_page_size(m.page_size) {
            return Err(malformed(format!(
                "page_size {} is not a QuiverDB page size (4096, 8192, 16384 or 32768)",
                m.page_size
            )));
        }
        if let Some(s) = m.since_lsn {
            if s > m.snapshot_lsn {
                return Err(malformed(format!(
                    "since_lsn {s} is above snapshot_lsn {}",
                    m.snapshot_lsn
                )));
            }
        }
        Ok(m)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct RestoreOptions {
    /// Keep DIR/dir maintained for this many buckets (as `--buckets` of
    /// qdb-apply); without it, the backup's `dir.bin` is installed.
    pub buckets: Option<u32>,
    /// Restore an incremental backup that starts above the complete LSN.
    pub force: bool,
    pub wait_lock: bool,
    pub fsync: FsyncPolicy,
    pub max_pages: u64,
    /// Commit (fsync) after this many bytes of restored pages.
    pub batch_bytes: u64,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            buckets: None,
            force: false,
            wait_lock: false,
            fsync: FsyncPolicy::Batch,
            max_pages: DEFAULT_MAX_PAGES,
            batch_bytes: 64 << 20,
        }
    }
}

/// What a restore did.
#[derive(Clone, Debug, Default)]
pub struct RestoreReport {
    pub snapshot_lsn: u64,
    pub since_lsn: Option<u64>,
    pub frames: u64,
    pub applied: u64,
    pub skipped: u64,
    /// The backup's dir.bin replaced DIR/dir.
    pub dir_installed: bool,
    /// meta.last_lsn afterwards.
    pub last_lsn: u64,
    /// The complete LSN afterwards.
    pub complete_lsn: u64,
}

impl std::fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "frames={} applied={} skipped={} snapshot_lsn={} since_lsn={} dir_installed={} last_lsn={} complete_lsn={}",
            self.frames,
            self.applied,
            self.skipped,
            self.snapshot_lsn,
            self.since_lsn.map_or("null".to_string(), |s| s.to_string()),
            self.dir_installed,
            self.last_lsn,
            self.complete_lsn
        )
    }
}

fn backup_io(what: &'static str, path: &Path, e: io::Error) -> Error {
    Error::io(what, path, e)
}

/// Read at most `buf.len()` bytes; fewer only at the end of the input.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Walk every frame of `pages.bin`, checking its length, frame CRC, page id
/// bound, LSN and page CRC, and hand each good one to `visit`. The first bad
/// frame stops the walk with its error. Returns the number of frames.
fn walk_frames(
    path: &Path,
    m: &Manifest,
    max_pages: u64,
    mut visit: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<u64> {
    let f = File::open(path).map_err(|e| backup_io("cannot open", path, e))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let ps = m.page_size as usize;
    let mut hdr = [0u8; FRAME_HEADER_LEN];
    let mut page = vec![0u8; ps];
    let mut offset = 0u64;
    let mut frames = 0u64;
    let read_err = |e| backup_io("cannot read", path, e);
    loop {
        let n = read_full(&mut r, &mut hdr).map_err(read_err)?;
        if n == 0 {
            break;
        }
        if n < FRAME_HEADER_LEN {
            return Err(BackupError::Truncated {
                offset,
                got: n as u64,
                want: FRAME_HEADER_LEN as u64,
            }
            .into());
        }
        let page_id = le_u64(&hdr, 0);
        let lsn = le_u64(&hdr, 8);
        let len = le_u32(&hdr, 16);
        let stored = le_u32(&hdr, 20);
        // Bound the length before reading: a corrupt one must not make us
        // read (or allocate) gigabytes.
        if len != m.page_size {
            return Err(BackupError::FrameLen {
                offset,
                page_id,
                len,
                page_size: m.page_size,
            }
            .into());
        }
        let n = read_full(&mut r, &mut page).map_err(read_err)?;
        if n < ps {
            return Err(BackupError::Truncated {
                offset,
                got: (FRAME_HEADER_LEN + n) as u64,
                want: (FRAME_HEADER_LEN + ps) as u64,
            }
            .into());
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&hdr[..20]);
        h.update(&page);
        let computed = h.finalize();
        if computed != stored {
            return Err(BackupError::FrameCrc {
                offset,
                page_id,
                stored,
                computed,
            }
            .into());
        }
        if page_id >= max_pages {
            return Err(BackupError::PageIdTooLarge {
                offset,
                page_id,
                max_pages,
            }
            .into());
        }
        if lsn > m.snapshot_lsn {
            return Err(BackupError::Malformed {
                what: format!("the backup's pages.bin frame at byte {offset} (page {page_id})"),
                reason: format!(
                    "page lsn {lsn} is above the manifest's snapshot_lsn {}",
                    m.snapshot_lsn
                ),
            }
            .into());
        }
        if let PageCrc::Mismatch { stored, computed } = page::check_page_crc(&page) {
            return Err(BackupError::CorruptPage {
                offset,
                page_id,
                stored,
                computed,
            }
            .into());
        }
        visit(page_id, &page)?;
        frames += 1;
        offset += (FRAME_HEADER_LEN + ps) as u64;
    }
    Ok(frames)
}

/// A backup folder, checked whole.
struct Checked {
    manifest: Manifest,
    pages: PathBuf,
    dir: Option<Vec<u8>>,
    frames: u64,
}

fn read_capped(path: &Path, cap: u64) -> Result<Option<Vec<u8>>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(backup_io("cannot open", path, e)),
    };
    let mut b = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut b)
        .map_err(|e| backup_io("cannot read", path, e))?;
    if b.len() as u64 > cap {
        return Err(BackupError::Malformed {
            what: format!("{}", path.display()),
            reason: format!("larger than {cap} bytes, which no QuiverDB backup writes"),
        }
        .into());
    }
    Ok(Some(b))
}

/// Check everything about the backup folder `b` without writing anything.
fn check_backup(b: &Path, max_pages: u64) -> Result<Checked> {
    let manifest =
        read_capped(&b.join(MANIFEST_FILE), MAX_MANIFEST_LEN)?.ok_or(BackupError::Missing {
            name: MANIFEST_FILE,
        })?;
    let manifest = Manifest::parse(&manifest)?;
    let pages = b.join(PAGES_FILE);
    if !pages.is_file() {
        return Err(BackupError::Missing { name: PAGES_FILE }.into());
    }
    let dir = read_capped(&b.join(DIR_BIN_FILE), MAX_DIR_LEN)?;
    match (&dir, manifest.dir_present) {
        (None, Some(true)) => return Err(BackupError::Missing { name: DIR_BIN_FILE }.into()),
        (Some(bytes), _) => {
            Directory::parse(bytes).map_err(|e| BackupError::Malformed {
                what: "the backup's dir.bin is not a QuiverDB 1.x directory file".into(),
                reason: e.to_string(),
            })?;
        }
        _ => {}
    }
    let frames = walk_frames(&pages, &manifest, max_pages, |_, _| Ok(()))?;
    if let Some(want) = manifest.pages_emitted {
        if want != frames {
            return Err(BackupError::Malformed {
                what: "the backup's pages.bin does not match its manifest".into(),
                reason: format!(
                    "it holds {frames} frames, the manifest says pages_emitted {want} (truncated or mixed up with another backup?)"
                ),
            }
            .into());
        }
    }
    Ok(Checked {
        manifest,
        pages,
        dir,
        frames,
    })
}

/// Restore the backup folder `backup` into the follower at `root`.
pub fn restore_dir(
    fs: Arc<dyn Fs>,
    root: &Path,
    backup: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let c = check_backup(backup, opts.max_pages)?;
    let m = &c.manifest;
    // Refusals, before the lock (which would create a missing folder) and
    // again under it (an applier may have committed in between).
    let refuse = |fs: &dyn Fs| -> Result<()> {
        let Some(have) = meta::read_meta(fs, root)? else {
            return check_hole(root, m, 0, opts.force);
        };
        if have.page_size != m.page_size {
            return Err(BackupError::PageSize {
                path: root.to_path_buf(),
                backup: m.page_size,
                follower: have.page_size,
            }
            .into());
        }
        let complete = complete::complete_lsn(fs, root, &have)?;
        check_hole(root, m, complete, opts.force)
    };
    refuse(&*fs)?;
    let mut f = Follower::open(
        fs.clone(),
        root,
        ApplyOptions {
            fsync: opts.fsync,
            max_pages: opts.max_pages,
            page_size: Some(m.page_size),
            create: true,
            wait_lock: opts.wait_lock,
            batch_bytes: opts.batch_bytes,
            buckets: opts.buckets,
            ..ApplyOptions::default()
        },
    )?;
    refuse(&*fs)?;
    let before = *f.meta().expect("created with the backup's page size");
    let complete_before = complete::complete_lsn(&*fs, root, &before)?;

    let mut stats = SessionStats::default();
    let frames = walk_frames(&c.pages, m, opts.max_pages, |id, page| {
        f.restore_page(id, page, &mut stats)
    })?;
    if frames != c.frames {
        // pages.bin changed between the check and the apply.
        return Err(BackupError::Malformed {
            what: format!("{}", c.pages.display()),
            reason: format!(
                "changed while being restored ({} then {frames} frames)",
                c.frames
            ),
        }
        .into());
    }
    // 1. Every restored page durable (meta's next_page_id grows with them).
    f.commit(&mut stats)?;
    // 2. dir, now that the pages its heads point at are durable.
    let mut dir_installed = false;
    if opts.buckets.is_none() {
        if let Some(bytes) = &c.dir {
            replace_file(&*fs, root, std::ffi::OsStr::new(DIR_FILE), bytes)?;
            dir_installed = true;
        }
    }
    // 3. meta.last_lsn covers the snapshot.
    f.advance_to(m.snapshot_lsn);
    f.commit(&mut stats)?;
    let after = *f.meta().expect("db exists");
    // 4. The complete LSN, last: only a backup that starts at or below it
    //    leaves no hole (with --force it may, and then it stays put).
    let gap_free = m.since_lsn.map_or(true, |s| s <= complete_before);
    let complete_lsn = if gap_free && m.snapshot_lsn > complete_before {
        complete::advance_complete_lsn(&*fs, root, m.snapshot_lsn)?;
        m.snapshot_lsn
    } else {
        complete_before
    };
    Ok(RestoreReport {
        snapshot_lsn: m.snapshot_lsn,
        since_lsn: m.since_lsn,
        frames,
        applied: stats.applied,
        skipped: stats.skipped,
        dir_installed,
        last_lsn: after.last_lsn,
        complete_lsn,
    })
}

fn check_hole(root: &Path, m: &Manifest, complete: u64, force: bool) -> Result<()> {
    match m.since_lsn {
        Some(since) if since > complete && !force => Err(BackupError::Hole {
            path: root.to_path_buf(),
            since,
            complete,
        }
        .into()),
        _ => Ok(()),
    }
}

/// Restore from a tar of a backup folder's contents (`tar -C B -c .`), plain,
/// gzip or zstd (detected from the first bytes, as qdb-unzip does). The
/// three files are spooled into a fresh folder inside `spool_in` (removed
/// afterwards), then restored as a folder.
pub fn restore_tar<R: Read>(
    fs: Arc<dyn Fs>,
    root: &Path,
    input: R,
    spool_in: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let spool = tempfile::Builder::new()
        .prefix(".qdb-restore-")
        .tempdir_in(spool_in)
        .map_err(|e| Error::io("cannot create a spool folder in", spool_in, e))?;
    unpack_backup_tar(input, spool.path())?;
    let res = restore_dir(fs, root, spool.path(), opts);
    // Best effort: a leftover spool holds nothing of the follower.
    let _ = spool.close();
    res
}

fn tar_error(e: io::Error) -> Error {
    BackupError::Malformed {
        what: "the backup tar stream on stdin cannot be read".into(),
        reason: e.to_string(),
    }
    .into()
}

/// Copy the three backup files out of a (possibly compressed) tar stream
/// into `out`. Other members are ignored; nothing outside `out` is written
/// whatever the member names say.
pub fn unpack_backup_tar<R: Read>(input: R, out: &Path) -> Result<()> {
    let mut input = BufReader::with_capacity(1 << 16, input);
    let head = input.fill_buf().map_err(tar_error)?;
    let reader: Box<dyn Read> = match codec::sniff(&head[..head.len().min(8)]) {
        Sniffed::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Sniffed::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(input).map_err(tar_error)?)
        }
        _ => Box::new(input),
    };
    let mut ar = tar::Archive::new(reader);
    for entry in ar.entries().map_err(tar_error)? {
        let mut e = entry.map_err(tar_error)?;
        let name = {
            let p = e.path().map_err(tar_error)?;
            let mut parts = p.components().filter(|c| !matches!(c, Component::CurDir));
            match (parts.next(), parts.next()) {
                (Some(Component::Normal(n)), None) => n.to_string_lossy().into_owned(),
                _ => continue,
            }
        };
        if ![PAGES_FILE, DIR_BIN_FILE, MANIFEST_FILE].contains(&name.as_str())
            || !e.header().entry_type().is_file()
        {
            continue;
        }
        let want = e.header().size().map_err(tar_error)?;
        let path = out.join(&name);
        let mut w = File::create(&path).map_err(|e| Error::io("cannot create", &path, e))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0u64;
        loop {
            let n = match e.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(tar_error(err)),
            };
            w.write_all(&buf[..n])
                .map_err(|e| Error::io("cannot write", &path, e))?;
            got += n as u64;
        }
        // The tar reader ends a member quietly when its input ends early.
        if got != want {
            return Err(BackupError::Malformed {
                what: "the backup tar stream on stdin is truncated".into(),
                reason: format!("member {name} ends after {got} of its {want} bytes"),
            }
            .into());
        }
    }
    for name in [MANIFEST_FILE, PAGES_FILE] {
        if !out.join(name).exists() {
            return Err(BackupError::Missing { name }.into());
        }
    }
    Ok(())
}
