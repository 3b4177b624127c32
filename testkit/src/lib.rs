//! Test support for quiverdb-follower, kept out of the production library
//! (a dev-dependency of the main crate and a dependency of the fuzz
//! targets).
//!
//! * [`fault`]: a simulated file system behind the library's `Fs` seam, with
//!   power loss and injected faults.
//! * [`stream`]: an independent index of a WAL stream's records, the
//!   `--since-lsn` slice, and the durability check [`stream::check_claims`].
//! * [`leader`]: a test leader that sends a stream the way `wal-ship` does
//!   (byte-identical gzip/zstd framing).
//! * [`fuzz`]: the bodies of the cargo-fuzz targets.
//! * [`rng`]: the one seeded PRNG every test uses.

pub mod fault;
pub mod fuzz;
pub mod leader;
pub mod rng;
pub mod stream;
