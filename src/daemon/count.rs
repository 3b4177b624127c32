//! Byte counters between the daemon's pipeline stages, feeding the
//! metrics (received from the network, decoded for apply).

use std::io::{self, Read, Write};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::replica::apply::Input;

/// A writer that counts what passes through as received bytes (the
/// network stage's output).
pub struct CountWrites<W> {
    pub inner: W,
    pub metrics: Metrics,
}

impl<W: Write> Write for CountWrites<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.metrics.add_received(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An apply input that counts what apply reads as decoded bytes.
pub struct CountReads<I> {
    pub inner: I,
    pub metrics: Metrics,
}

impl<I: Read> Read for CountReads<I> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.metrics.add_decoded(n as u64);
        Ok(n)
    }
}

impl<I: Input> Input for CountReads<I> {
    fn live(&self) -> bool {
        self.inner.live()
    }
    fn buffered(&mut self, want: usize) -> usize {
        self.inner.buffered(want)
    }
    fn peek(&mut self, buf: &mut [u8]) -> usize {
        self.inner.peek(buf)
    }
    fn wait(&mut self, timeout: Duration) -> bool {
        self.inner.wait(timeout)
    }
    fn closed(&mut self) -> bool {
        self.inner.closed()
    }
}
