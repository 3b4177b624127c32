//! The boundary to the follower's **complete LSN** (issue 9): the highest
//! LSN L such that every change up to L is applied.
//!
//! Issue 9 (branch `ship`, not merged yet) records it durably in a follower
//! file of our own beside `meta`. Until that lands, these two functions are
//! the only places restore and promote read or advance it, so the merge is a
//! two-line change here: [`complete_lsn`] reads the file, and
//! [`advance_complete_lsn`] writes it through the same atomic replacement.

use std::path::Path;

use crate::error::Result;
use crate::storage::meta::Meta;
use crate::storage::store::Fs;

/// The follower's complete LSN. Issue 9: until its file exists this is
/// `meta.last_lsn`, the best this tree knows (it cannot tell a hole from a
/// gap-free history), so the hole checks of restore and promote never fire
/// on their own yet.
pub(crate) fn complete_lsn(_fs: &dyn Fs, _root: &Path, meta: &Meta) -> Result<u64> {
    Ok(meta.last_lsn)
}

/// Record that every change up to `lsn` is applied. The caller has already
/// made the pages durable and covered them with `meta` (the durability
/// order). Issue 9: a no-op until its file exists, because today the
/// complete LSN *is* `meta.last_lsn`, which the caller has just written.
pub(crate) fn advance_complete_lsn(_fs: &dyn Fs, _root: &Path, _lsn: u64) -> Result<()> {
    Ok(())
}
