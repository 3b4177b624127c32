//! The file-system seam: every byte the follower reads or writes goes
//! through [`Fs`] / [`FileIo`], so tests can inject faults (short writes,
//! ENOSPC, EIO on fsync, failing renames) and simulate power loss in the
//! real code paths. [`StdFs`] is the real implementation.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How a file is opened through the seam.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    ReadWrite,
    /// Read and write; create it if missing, never truncate.
    Create,
    /// Fail if the file exists.
    CreateNew,
    /// Create or truncate.
    CreateTruncate,
}

/// One open file. Positional I/O only, so no seek state is shared.
pub trait FileIo: Send {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize>;
    fn write_all_at(&mut self, buf: &[u8], off: u64) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    fn size(&self) -> io::Result<u64>;
    /// fdatasync: data plus the metadata needed to read it back (the size).
    fn sync_data(&mut self) -> io::Result<()>;
    fn sync_all(&mut self) -> io::Result<()>;
    /// The first offset at or after `off` that may hold data (`None`: only
    /// a hole follows). The default knows of no holes.
    fn next_data(&self, off: u64) -> io::Result<Option<u64>> {
        Ok(Some(off))
    }
    /// Start writing a range back to disk without waiting for it, so the
    /// next fsync has little left to do. Only a hint: durability still
    /// comes from `sync_data`.
    fn start_writeback(&mut self, _off: u64, _len: u64) {}
}

/// The file system, as the follower uses it.
pub trait Fs: Send + Sync {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FileIo>>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    fn exists(&self, path: &Path) -> bool;

    /// Create a new file in `dir` named `prefix` + random characters +
    /// `suffix`, exclusively (O_CREAT|O_EXCL: an existing name, a symlink
    /// included, is never opened), for a file that is then renamed into
    /// place. A predictable name would let another local user plant a
    /// symlink there and have us overwrite its target.
    fn create_temp(
        &self,
        dir: &Path,
        prefix: &std::ffi::OsStr,
        suffix: &str,
    ) -> io::Result<(PathBuf, Box<dyn FileIo>)> {
        loop {
            let mut name = prefix.to_os_string();
            name.push(random_name());
            name.push(suffix);
            let path = dir.join(name);
            match self.open(&path, OpenMode::CreateNew) {
                Ok(f) => return Ok((path, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Names of the entries of `dir` (for removing our stale temporary files).
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
        fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    /// Is `path` a symbolic link (not followed)?
    fn is_symlink(&self, path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
    }
}

/// Twelve characters that another process cannot guess: std's randomly
/// seeded hasher, the time, the pid and a counter.
fn random_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    let mut v = h.finish();
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    (0..12)
        .map(|_| {
            let c = ALPHABET[(v % 62) as usize] as char;
            v /= 62;
            c
        })
        .collect()
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

struct StdFile(File);

impl FileIo for StdFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        self.0.read_at(buf, off)
    }
    fn write_all_at(&mut self, buf: &[u8], off: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.0, buf, off)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn next_data(&self, off: u64) -> io::Result<Option<u64>> {
        use std::os::fd::AsRawFd;
        // SAFETY: lseek on an fd we own; positional I/O never uses the offset.
        let r = unsafe { libc::lseek(self.0.as_raw_fd(), off as libc::off_t, libc::SEEK_DATA) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            // A file system without SEEK_DATA: assume data everywhere.
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some(off)),
            _ => Err(e),
        }
    }
    fn start_writeback(&mut self, off: u64, len: u64) {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on an fd we own; it only queues writeback.
        let rc = unsafe {
            libc::sync_file_range(
                self.0.as_raw_fd(),
                off as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc != 0 {
            log::debug!("sync_file_range: {}", io::Error::last_os_error());
        }
    }
}

impl Fs for StdFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn FileIo>> {
        let mut o = OpenOptions::new();
        match mode {
            OpenMode::Read => o.read(true),
            OpenMode::ReadWrite => o.read(true).write(true),
            OpenMode::Create => o.read(true).write(true).create(true),
            OpenMode::CreateNew => o.read(true).write(true).create_new(true),
            OpenMode::CreateTruncate => o.read(true).write(true).create(true).truncate(true),
        };
        Ok(Box::new(StdFile(o.open(path)?)))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn create_temp(
        &self,
        dir: &Path,
        prefix: &std::ffi::OsStr,
        suffix: &str,
    ) -> io::Result<(PathBuf, Box<dyn FileIo>)> {
        use std::os::unix::fs::PermissionsExt;
        // The mode a plain create gets (0666 less the umask), not tempfile's
        // 0600: QuiverDB tools running as another user must read meta.
        let (file, path) = tempfile::Builder::new()
            .prefix(prefix)
            .suffix(suffix)
            .permissions(fs::Permissions::from_mode(0o666))
            .tempfile_in(dir)?
            .keep()
            .map_err(|e| e.error)?;
        Ok((path, Box::new(StdFile(file))))
    }
}
