//! Bounded in-process byte pipes between pipeline stages (receive, decode,
//! apply), so the stages run on their own threads and overlap while memory
//! stays bounded by `capacity × chunk size`.
//!
//! The reading side can tell whether more input is available *right now*
//! ([`ChunkReader::idle`]): apply uses that to commit a batch exactly when
//! the sender pauses, instead of waiting for a timer.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

/// Size of the chunks the writer fills before handing them over.
pub const CHUNK_SIZE: usize = 128 * 1024;

/// Make a pipe holding at most `capacity` chunks in flight.
pub fn pipe(capacity: usize) -> (ChunkWriter, ChunkReader) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    // Spent buffers flow back to the writer, so steady state allocates nothing.
    let (back_tx, back_rx) = mpsc::sync_channel(capacity + 2);
    (
        ChunkWriter {
            tx,
            back: back_rx,
            buf: Vec::with_capacity(CHUNK_SIZE),
        },
        ChunkReader {
            rx,
            back: back_tx,
            cur: Vec::new(),
            pos: 0,
            eof: false,
            stop: None,
        },
    )
}

/// The sending end. `write` batches into chunks; `flush` hands over what is
/// buffered at once (a flushed frame must not wait for more data). Dropping
/// it ends the stream (the reader sees EOF after the buffered data).
pub struct ChunkWriter {
    tx: SyncSender<Vec<u8>>,
    back: Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = match self.back.try_recv() {
            Ok(mut b) => {
                b.clear();
                b
            }
            Err(_) => Vec::with_capacity(CHUNK_SIZE),
        };
        let full = std::mem::replace(&mut self.buf, next);
        self.tx.send(full).map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the next pipeline stage stopped")
        })
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK_SIZE - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK_SIZE {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        let _ = self.send();
    }
}

/// The receiving end: a `Read` over the chunks.
pub struct ChunkReader {
    rx: Receiver<Vec<u8>>,
    back: SyncSender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    eof: bool,
    stop: Option<Arc<AtomicBool>>,
}

impl ChunkReader {
    /// Once `stop` is set, the reader returns what is already buffered in
    /// the pipe and then reports end of input, even if the writer is still
    /// blocked upstream (e.g. in a read of stdin or of a socket).
    pub fn with_stop(mut self, stop: Arc<AtomicBool>) -> ChunkReader {
        self.stop = Some(stop);
        self
    }

    fn take(&mut self, chunk: Vec<u8>) {
        let spent = std::mem::replace(&mut self.cur, chunk);
        self.pos = 0;
        if spent.capacity() > 0 {
            let _ = self.back.try_send(spent);
        }
    }

    fn stopping(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// True when no byte can be read without waiting for the sender.
    pub fn idle(&mut self) -> bool {
        if self.pos < self.cur.len() || self.eof {
            return false;
        }
        match self.rx.try_recv() {
            Ok(chunk) => {
                self.take(chunk);
                false
            }
            Err(TryRecvError::Empty) => true,
            Err(TryRecvError::Disconnected) => {
                self.eof = true;
                false
            }
        }
    }

    /// Wait up to `timeout` for input to become available. True if it did
    /// (or the stream ended, which is also something to act on).
    pub fn wait(&mut self, timeout: Duration) -> bool {
        if !self.idle() {
            return true;
        }
        match self.rx.recv_timeout(timeout) {
            Ok(chunk) => {
                self.take(chunk);
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => {
                self.eof = true;
                true
            }
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.cur.len() {
            if self.eof {
                return Ok(0);
            }
            if self.stop.is_some() {
                match self.rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(chunk) => self.take(chunk),
                    Err(RecvTimeoutError::Timeout) => {
                        if self.stopping() {
                            self.eof = true;
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => self.eof = true,
                }
            } else {
                match self.rx.recv() {
                    Ok(chunk) => self.take(chunk),
                    Err(_) => self.eof = true,
                }
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Copy `src` into `dst` on the calling thread, handing over each read as it
/// arrives; used to feed a pipe from stdin. Returns bytes copied.
pub fn pump_reader<R: Read>(mut src: R, dst: &mut ChunkWriter) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        dst.flush()?;
        total += n as u64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_flow_in_order_and_end() {
        let (mut w, mut r) = pipe(2);
        let t = std::thread::spawn(move || {
            for i in 0..1000u32 {
                w.write_all(&i.to_le_bytes()).unwrap();
                if i % 7 == 0 {
                    w.flush().unwrap();
                }
            }
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        t.join().unwrap();
        let want: Vec<u8> = (0..1000u32).flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn idle_reflects_flushes() {
        let (mut w, mut r) = pipe(4);
        assert!(r.idle());
        w.write_all(b"abc").unwrap();
        assert!(r.idle(), "unflushed bytes are not visible yet");
        w.flush().unwrap();
        assert!(!r.idle());
        let mut b = [0u8; 3];
        r.read_exact(&mut b).unwrap();
        assert!(r.idle());
        drop(w);
        assert!(!r.idle(), "end of stream is not idle");
    }

    #[test]
    fn writer_fails_when_reader_is_gone() {
        let (mut w, r) = pipe(1);
        drop(r);
        w.write_all(b"x").unwrap();
        assert_eq!(w.flush().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
