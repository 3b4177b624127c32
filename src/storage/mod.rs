//! The storage layer: a follower's files on disk.
//!
//! Every byte goes through the [`Fs`]/[`FileIo`] seam, so tests can inject
//! faults and simulate power loss without touching the code above it.
//! [`Store`] addresses pages in segment files and knows what is durable;
//! `meta`, `dir` and checkpoint files are replaced atomically; [`DbLock`] is
//! the `flock` on `DIR/LOCK` that QuiverDB 1.x uses.

pub(crate) mod dirfile;
pub(crate) mod fs;
pub(crate) mod lock;
pub(crate) mod meta;
pub(crate) mod store;

use crate::error::Result;
use crate::format::kv::PageSource;
use crate::format::page::Unreadable;

pub use fs::{FileIo, Fs, OpenMode, StdFs};
pub use lock::DbLock;
pub use meta::{
    check_checkpoint_path, read_meta, remove_stale_temps, replace_file, write_checkpoint,
    write_meta, Meta,
};
pub use store::{init_db, FsyncPolicy, Store};

impl PageSource for Store {
    fn page_size(&self) -> u32 {
        Store::page_size(self)
    }
    fn page_count(&self) -> u64 {
        self.next_page_id()
    }
    fn read_page(
        &mut self,
        id: u64,
        buf: &mut [u8],
    ) -> Result<std::result::Result<(), Unreadable>> {
        Store::read_page(self, id, buf)
    }
}
