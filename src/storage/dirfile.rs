//! Reading and atomically replacing the bucket-head directory file.

use std::io;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::dir::Directory;
use crate::format::layout::*;
use crate::storage::fs::Fs;
use crate::storage::meta::replace_file;

/// The raw bytes of `<root>/dir`, or `None` when there is none.
pub fn read_dir_bytes(fs: &dyn Fs, root: &Path) -> Result<Option<Vec<u8>>> {
    let path = root.join(DIR_FILE);
    match fs.read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}

/// `<root>/dir`, parsed; `None` when there is none.
pub fn read_dir(fs: &dyn Fs, root: &Path) -> Result<Option<Directory>> {
    match read_dir_bytes(fs, root)? {
        None => Ok(None),
        Some(b) => Directory::parse(&b).map(Some).map_err(|e| Error::BadDir {
            path: root.join(DIR_FILE),
            reason: e.to_string(),
        }),
    }
}

/// Replace `<root>/dir` atomically (exclusive temporary file, fsync, rename, folder fsync).
pub fn write_dir(fs: &dyn Fs, root: &Path, dir: &Directory) -> Result<()> {
    replace_file(fs, root, std::ffi::OsStr::new(DIR_FILE), &dir.encode())
}
