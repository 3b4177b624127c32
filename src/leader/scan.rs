//! Catch-up from the leader's data segments: every page whose v2 page LSN
//! is above `since`, as PAGE_IMAGE records carrying that page LSN, in
//! ascending LSN order, between a begin and an end marker.
//!
//! Why this is complete up to `upto` = meta.last_lsn read *before* the scan:
//! the leader writes a page before the meta that covers it (spec §5.3), so
//! every commit up to `upto` is on disk when the scan reads; a page that
//! changes after we read it gets an LSN above `upto`, and is sent by the WAL
//! tail or the next catch-up. Because the order is ascending, a stream cut
//! after page LSN x leaves a follower complete up to min(x, upto).
//!
//! Memory is bounded whatever the size of the DB: pass 1 reads the segments
//! sequentially and keeps (lsn, page id) pairs (16 bytes a page) and, up to
//! [`KEEP_PAGES_BYTES`], the page bytes themselves; beyond that budget,
//! pass 2 reads each page again (and sends it only if its LSN is unchanged).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use crate::format::layout::{pages_per_segment, segment_file_name, WAL_TYPE_PAGE_IMAGE};
use crate::format::page::{self, PageCrc};
use crate::format::wal::record_header;

/// Page bytes kept from pass 1 (so small and medium catch-ups read once).
pub const KEEP_PAGES_BYTES: usize = 64 << 20;
/// A page whose CRC fails is being written: read it again this many times.
const TORN_RETRIES: u32 = 200;

/// Receives each page record as (28-byte header, page).
pub type Emit<'a> = dyn FnMut(&[u8], &[u8]) -> io::Result<()> + 'a;

/// What a catch-up sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CatchUp {
    pub since: u64,
    pub upto: u64,
    pub pages: u64,
    pub bytes: u64,
}

/// Read one page until its CRC holds (a torn read while the writer writes
/// it); `Ok(false)` if it never does (a damaged page: left out).
fn read_page_stable(f: &File, off: u64, buf: &mut [u8]) -> io::Result<bool> {
    for i in 0..TORN_RETRIES {
        f.read_exact_at(buf, off)?;
        if !matches!(page::check_page_crc(buf), PageCrc::Mismatch { .. }) {
            return Ok(true);
        }
        if i > 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(false)
}

/// Run one catch-up of the leader at `root` for a follower that holds
/// everything up to `since`, with `upto` = the leader's meta.last_lsn read
/// by the caller *before* calling. `emit` gets each page record as
/// (header, page) in ascending LSN order.
pub fn scan(
    root: &Path,
    page_size: u32,
    since: u64,
    upto: u64,
    emit: &mut Emit<'_>,
) -> io::Result<CatchUp> {
    let ps = page_size as usize;
    let pps = pages_per_segment(page_size);
    // (lsn, page id, index into `kept` or u32::MAX)
    let mut found: Vec<(u64, u64, u32)> = Vec::new();
    let mut kept: Vec<u8> = Vec::new();
    let mut keep = true;
    let mut buf = vec![0u8; ps * 256];
    let mut seg_no = 1u64;
    loop {
        let path = root.join(segment_file_name(seg_no));
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(e),
        };
        let mut index = 0u64;
        'seg: loop {
            // Fill whole pages; a short tail (a segment being grown) ends it.
            let mut got = 0;
            while got < buf.len() {
                match f.read(&mut buf[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let whole = got / ps;
            for i in 0..whole {
                let p = &mut buf[i * ps..(i + 1) * ps];
                let id = (seg_no - 1) * pps + index + i as u64;
                let Some(lsn) = page::v2_page_lsn(p) else {
                    continue;
                };
                if lsn <= since {
                    continue;
                }
                if matches!(page::check_page_crc(p), PageCrc::Mismatch { .. })
                    && !read_page_stable(&f, (index + i as u64) * ps as u64, p)?
                {
                    log::warn!("page {id} keeps failing its CRC: left out of this catch-up");
                    continue;
                }
                // Re-read pages may have moved on: take the LSN they have now.
                let Some(lsn) = page::v2_page_lsn(p) else {
                    continue;
                };
                if lsn <= since {
                    continue;
                }
                let slot = if keep && kept.len() + ps <= KEEP_PAGES_BYTES {
                    kept.extend_from_slice(p);
                    (kept.len() / ps - 1) as u32
                } else {
                    if keep {
                        // Over budget: from now on every page is read again.
                        keep = false;
                        kept = Vec::new();
                        for e in found.iter_mut() {
                            e.2 = u32::MAX;
                        }
                    }
                    u32::MAX
                };
                found.push((lsn, id, slot));
            }
            index += whole as u64;
            if got < buf.len() || index >= pps {
                break 'seg;
            }
        }
        seg_no += 1;
    }
    found.sort_unstable();
    let mut out = CatchUp {
        since,
        upto,
        ..CatchUp::default()
    };
    let mut page_buf = vec![0u8; ps];
    let mut open: Option<(u64, File)> = None;
    for (lsn, id, slot) in found {
        let page: &[u8] = if slot != u32::MAX {
            &kept[slot as usize * ps..(slot as usize + 1) * ps]
        } else {
            let seg = id / pps + 1;
            if open.as_ref().map(|(s, _)| *s) != Some(seg) {
                open = Some((seg, File::open(root.join(segment_file_name(seg)))?));
            }
            let f = &open.as_ref().unwrap().1;
            if !read_page_stable(f, (id % pps) * ps as u64, &mut page_buf)?
                || page::v2_page_lsn(&page_buf) != Some(lsn)
            {
                // Changed since pass 1: its new LSN is above `upto`.
                continue;
            }
            &page_buf
        };
        let h = record_header(WAL_TYPE_PAGE_IMAGE, lsn, id, page_size, page);
        emit(&h, page)?;
        out.pages += 1;
        out.bytes += (h.len() + page.len()) as u64;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::layout::le_u64;

    #[test]
    fn sends_pages_above_since_in_ascending_lsn_order() {
        let d = tempfile::tempdir().unwrap();
        let lsns = [5u64, 2, 9, 0, 7, 3];
        let mut seg = Vec::new();
        for (id, &lsn) in lsns.iter().enumerate() {
            if lsn == 0 {
                seg.extend_from_slice(&[0; 4096]); // allocated, never written
            } else {
                seg.extend(page::overflow_page(4096, id as u64, u64::MAX, lsn, b"x"));
            }
        }
        std::fs::write(d.path().join(segment_file_name(1)), &seg).unwrap();
        let mut got = Vec::new();
        let r = scan(d.path(), 4096, 2, 9, &mut |h, p| {
            assert_eq!(le_u64(p, 36), le_u64(h, 4), "record lsn = page lsn");
            got.push((le_u64(h, 4), le_u64(h, 12)));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec![(3, 5), (5, 0), (7, 4), (9, 2)]);
        assert_eq!(r.pages, 4);
    }
}
