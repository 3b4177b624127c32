//! meta v3 (spec §2): parse, encode, atomic replacement; and the checkpoint
//! file, which is replaced the same way.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::layout::*;
use crate::storage::fs::Fs;

/// The 41-byte meta v3 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    pub flags: u32,
    pub next_page_id: u64,
    pub hash_kind: u32,
    pub last_lsn: u64,
    /// Kept as the raw byte: 1.x reads any non-zero value as clean, and a
    /// follower never changes it, so we write back exactly what we read.
    pub clean_shutdown: u8,
}

impl Meta {
    /// What `quiverdb init --page-size N` writes (§1.1 step 5).
    pub fn new_init(page_size: u32) -> Meta {
        Meta {
            page_size,
            flags: 0,
            next_page_id: 0,
            hash_kind: HASH_KIND_XXH64,
            last_lsn: 0,
            clean_shutdown: 1,
        }
    }

    /// Parse meta v3; `Err` carries the reason for a message.
    pub fn parse(b: &[u8]) -> std::result::Result<Meta, String> {
        if b.len() < 8 || &b[..8] != META_MAGIC {
            return Err(format!(
                "bad magic (expected P1DBMETA, got {})",
                crate::format::wal::describe_bytes(b)
            ));
        }
        if b.len() < 12 {
            return Err(format!("only {} bytes long", b.len()));
        }
        let version = le_u32(b, META_OFF_VERSION);
        if version != META_VERSION {
            return Err(format!(
                "meta version {version} (this tool reads and writes version 3 only; open the database once with QuiverDB 1.x to upgrade it)"
            ));
        }
        if b.len() < META_LEN {
            return Err(format!(
                "only {} bytes long, meta v3 has {META_LEN}",
                b.len()
            ));
        }
        let m = Meta {
            page_size: le_u32(b, META_OFF_PAGE_SIZE),
            flags: le_u32(b, META_OFF_FLAGS),
            next_page_id: le_u64(b, META_OFF_NEXT_PAGE_ID),
            hash_kind: le_u32(b, META_OFF_HASH_KIND),
            last_lsn: le_u64(b, META_OFF_LAST_LSN),
            clean_shutdown: b[META_OFF_CLEAN],
        };
        if m.hash_kind != HASH_KIND_XXH64 {
            return Err(format!("unknown hash_kind {}", m.hash_kind));
        }
        if !is_valid_page_size(m.page_size) {
            return Err(format!("invalid page_size {}", m.page_size));
        }
        Ok(m)
    }

    pub fn encode(&self) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        b[..8].copy_from_slice(META_MAGIC);
        b[8..12].copy_from_slice(&META_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.page_size.to_le_bytes());
        b[16..20].copy_from_slice(&self.flags.to_le_bytes());
        b[20..28].copy_from_slice(&self.next_page_id.to_le_bytes());
        b[28..32].copy_from_slice(&self.hash_kind.to_le_bytes());
        b[32..40].copy_from_slice(&self.last_lsn.to_le_bytes());
        b[40] = self.clean_shutdown;
        b
    }
}

pub fn meta_path(root: &Path) -> PathBuf {
    root.join(META_FILE)
}

/// Read `<root>/meta`. `Ok(None)` when there is no meta file.
pub fn read_meta(fs: &dyn Fs, root: &Path) -> Result<Option<Meta>> {
    let path = meta_path(root);
    let bytes = match fs.read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    Meta::parse(&bytes)
        .map(Some)
        .map_err(|reason| Error::BadMeta { path, reason })
}

/// Replace `<root>/meta` atomically, as 1.x does (§2) but through a
/// temporary file with an unpredictable name: write it whole, fsync it,
/// rename it over meta, fsync the folder. Unlike 1.x we do not ignore a
/// failing folder fsync: until it succeeds the rename may not survive a
/// crash, so the caller must not report the new last_lsn as durable.
pub fn write_meta(fs: &dyn Fs, root: &Path, meta: &Meta) -> Result<()> {
    replace_file(fs, root, OsStr::new(META_FILE), &meta.encode())
}

/// Write a checkpoint file: last_lsn as decimal ASCII without a newline (the
/// 1.x daemon's format), replaced atomically. The path is used as given,
/// bytes and all (a non-UTF-8 name is written under that very name). A
/// symbolic link is refused ([`Error::CheckpointSymlink`]): the rename would
/// replace the link itself and leave its target stale.
pub fn write_checkpoint(fs: &dyn Fs, file: &Path, last_lsn: u64) -> Result<()> {
    let (dir, name) = checkpoint_parts(fs, file)?;
    replace_file(fs, &dir, name, last_lsn.to_string().as_bytes())
}

/// Check a checkpoint path before any work is done (a tool's startup), so
/// that a path that can never be written fails at once instead of after a
/// whole session was applied: it has a file name, is not a symbolic link nor
/// a folder, and its folder exists and takes new files (probed by creating
/// and removing a temporary file exactly as [`write_checkpoint`] will).
pub fn check_checkpoint_path(fs: &dyn Fs, file: &Path) -> Result<()> {
    let (dir, name) = checkpoint_parts(fs, file)?;
    let bad = |reason: String| Error::CheckpointPath {
        path: file.to_path_buf(),
        reason,
    };
    // Listing is the seam's only way to ask "is this a folder?" (the
    // simulated file system has no metadata call); both folders are small.
    if let Err(e) = fs.list_dir(&dir) {
        return Err(bad(if e.kind() == io::ErrorKind::NotFound {
            format!(
                "its folder {} does not exist (create it, or choose another path)",
                dir.display()
            )
        } else {
            format!("cannot use its folder {}: {e}", dir.display())
        }));
    }
    if fs.list_dir(file).is_ok() {
        return Err(bad(
            "it is a folder (give the path of a file, e.g. FOLDER/last_lsn)".into(),
        ));
    }
    let (prefix, suffix) = temp_affixes(name);
    match fs.create_temp(&dir, &prefix, suffix) {
        Ok((tmp, f)) => {
            drop(f);
            let _ = fs.remove_file(&tmp);
            Ok(())
        }
        Err(e) => Err(bad(format!(
            "cannot create a file in its folder {}: {e}",
            dir.display()
        ))),
    }
}

/// The folder of a checkpoint path (`.` for a bare file name).
pub fn checkpoint_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn checkpoint_parts<'a>(fs: &dyn Fs, file: &'a Path) -> Result<(PathBuf, &'a OsStr)> {
    let dir = checkpoint_dir(file);
    let name = file.file_name().ok_or_else(|| {
        Error::io(
            "checkpoint file has no file name:",
            file,
            io::Error::from(io::ErrorKind::InvalidInput),
        )
    })?;
    if fs.is_symlink(file) {
        return Err(Error::CheckpointSymlink {
            path: file.to_path_buf(),
        });
    }
    Ok((dir, name))
}

/// The temporary files `replace_file` makes for `name`: `.NAME.` + 12
/// random characters + `.tmp`.
fn temp_affixes(name: &OsStr) -> (OsString, &'static str) {
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    (prefix, ".tmp")
}

/// Exclusive temporary file with an unpredictable name in `dir` + write +
/// fsync + rename over `dir/name` + fsync(folder). The temporary file is
/// never a name another user could have planted (no symlink is followed).
pub fn replace_file(fs: &dyn Fs, dir: &Path, name: &OsStr, bytes: &[u8]) -> Result<()> {
    let dst = dir.join(name);
    let (prefix, suffix) = temp_affixes(name);
    let (tmp, mut f) = fs
        .create_temp(dir, &prefix, suffix)
        .map_err(|e| Error::io("cannot create a temporary file in", dir, e))?;
    let res = (|| {
        f.write_all_at(bytes, 0)
            .map_err(|e| Error::io("cannot write", &tmp, e))?;
        f.sync_all()
            .map_err(|e| Error::io("cannot fsync", &tmp, e))?;
        drop(f);
        fs.rename(&tmp, &dst)
            .map_err(|e| Error::io("cannot rename into place", &dst, e))
    })();
    if res.is_err() {
        // Best effort: a later open removes what is left (remove_stale_temps).
        let _ = fs.remove_file(&tmp);
    }
    res?;
    fs.sync_dir(dir)
        .map_err(|e| Error::io("cannot fsync folder", dir, e))?;
    Ok(())
}

/// Remove the temporary files an interrupted `replace_file` of `dir/name`
/// left behind (only names of our own pattern, plus the fixed `NAME.tmp`
/// of earlier versions). Call it only while nothing else may be replacing
/// that file (under the DB lock, or for a checkpoint at a tool's start).
/// Returns how many were removed; the removals become durable with the
/// next folder fsync.
pub fn remove_stale_temps(fs: &dyn Fs, dir: &Path, name: &OsStr) -> Result<usize> {
    let (prefix, suffix) = temp_affixes(name);
    let prefix = prefix.as_bytes();
    let mut legacy = name.to_os_string();
    legacy.push(".tmp");
    let legacy = legacy.as_bytes();
    let names = match fs.list_dir(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("cannot list", dir, e)),
    };
    let mut removed = 0;
    for n in names {
        let b = n.as_bytes();
        let ours = (b.len() > prefix.len() + suffix.len()
            && b.starts_with(prefix)
            && b.ends_with(suffix.as_bytes()))
            || b == legacy;
        if !ours {
            continue;
        }
        let path = dir.join(&n);
        match fs.remove_file(&path) {
            Ok(()) => {
                log::info!("removed {}, left by an interrupted write", path.display());
                removed += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Housekeeping only (the name is never written to again): a
            // leftover that cannot be removed must not stop the follower.
            Err(e) => log::warn!("cannot remove {}: {e}", path.display()),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_meta_bytes_match_spec() {
        // Spec §11.5: meta after `init --page-size 4096`.
        let want = [
            0x50, 0x31, 0x44, 0x42, 0x4d, 0x45, 0x54, 0x41, 0x03, 0, 0, 0, 0x00, 0x10, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
        ];
        assert_eq!(Meta::new_init(4096).encode(), want);
        assert_eq!(Meta::parse(&want).unwrap(), Meta::new_init(4096));
    }

    #[test]
    fn rejects_non_meta() {
        assert!(Meta::parse(b"P2DBMETA\x04\0\0\0").is_err());
        let mut m = Meta::new_init(4096).encode();
        m[28] = 2;
        assert!(Meta::parse(&m).unwrap_err().contains("hash_kind"));
        assert!(Meta::parse(&m[..20]).is_err());
    }
}
