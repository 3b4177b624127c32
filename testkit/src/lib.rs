//! Test support for quiverdb-follower, kept out of the production library
//! (a dev-dependency of the main crate and a dependency of the fuzz
//! targets).
//!
//! * [`fault`]: a simulated file system behind the library's `Fs` seam, with
//!   power loss and injected faults.
//! * [`stream`]: the stream builder for tests ([`stream::StreamBuilder`]),
//!   an independent index of a WAL stream's records
//!   ([`stream::StreamIndex`]), the `--since-lsn` slice, and the durability
//!   check [`stream::check_claims`].
//! * [`leader`]: a test leader that sends a stream the way `wal-ship` does
//!   (byte-identical gzip/zstd framing).
//! * [`fuzz`]: the bodies of the cargo-fuzz targets.
//! * [`rng`]: the one seeded PRNG every test uses.
//! * [`child`]: the one child-process harness (spawn, stderr lines, waits
//!   with a deadline, kill on drop, runs with a timeout or stdin bytes).

pub mod child;
pub mod fault;
pub mod fuzz;
pub mod leader;
pub mod rng;
pub mod stream;
