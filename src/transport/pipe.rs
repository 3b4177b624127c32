//! Bounded in-process byte pipes between pipeline stages (receive, decode,
//! apply), so the stages run on their own threads and overlap while memory
//! stays bounded by `capacity × chunk size`.
//!
//! The reading side can tell whether more input is available *right now*
//! ([`ChunkReader::buffered`]): apply uses that to commit a batch exactly when
//! the sender pauses, instead of waiting for a timer.

use std::collections::VecDeque;
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
            chunks: VecDeque::new(),
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
    /// Chunks taken from the channel and not yet fully read; the first is
    /// read from `pos`. Holds more than one only when [`ChunkReader::buffered`]
    /// looked ahead for a whole record, so it stays bounded by a record.
    chunks: VecDeque<Vec<u8>>,
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

    fn push(&mut self, chunk: Vec<u8>) {
        if !chunk.is_empty() {
            self.chunks.push_back(chunk);
        }
    }

    fn pop_front(&mut self) {
        if let Some(spent) = self.chunks.pop_front() {
            let _ = self.back.try_send(spent);
        }
        self.pos = 0;
    }

    fn stopping(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// Bytes readable now without waiting, looking ahead at most `want`.
    pub fn buffered(&mut self, want: usize) -> usize {
        loop {
            let have: usize = self.chunks.iter().map(Vec::len).sum::<usize>() - self.pos;
            if have >= want || self.eof {
                return have.min(want);
            }
            match self.rx.try_recv() {
                Ok(chunk) => self.push(chunk),
                Err(TryRecvError::Empty) => return have,
                Err(TryRecvError::Disconnected) => self.eof = true,
            }
        }
    }

    /// Copy up to `buf.len()` readable bytes into `buf` without consuming them.
    pub fn peek(&mut self, buf: &mut [u8]) -> usize {
        let n = self.buffered(buf.len());
        let mut got = 0;
        let mut skip = self.pos;
        for c in &self.chunks {
            if got == n {
                break;
            }
            let part = &c[skip..];
            skip = 0;
            let k = part.len().min(n - got);
            buf[got..got + k].copy_from_slice(&part[..k]);
            got += k;
        }
        got
    }

    /// True once the writer is gone: nothing beyond what is buffered will
    /// ever arrive (so waiting for the rest of a record is pointless).
    pub fn closed(&mut self) -> bool {
        if !self.eof {
            match self.rx.try_recv() {
                Ok(chunk) => self.push(chunk),
                Err(TryRecvError::Disconnected) => self.eof = true,
                Err(TryRecvError::Empty) => {}
            }
        }
        self.eof
    }

    /// Wait up to `timeout` for more input than is buffered now. True if
    /// some arrived or the stream ended.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        if self.eof {
            return true;
        }
        match self.rx.recv_timeout(timeout) {
            Ok(chunk) => {
                self.push(chunk);
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
        loop {
            if let Some(front) = self.chunks.front() {
                if self.pos < front.len() {
                    let n = out.len().min(front.len() - self.pos);
                    out[..n].copy_from_slice(&front[self.pos..self.pos + n]);
                    self.pos += n;
                    if self.pos == front.len() {
                        self.pop_front();
                    }
                    return Ok(n);
                }
                self.pop_front();
                continue;
            }
            if self.eof {
                return Ok(0);
            }
            if self.stop.is_some() {
                match self.rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(chunk) => self.push(chunk),
                    Err(RecvTimeoutError::Timeout) => {
                        if self.stopping() {
                            self.eof = true;
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => self.eof = true,
                }
            } else {
                match self.rx.recv() {
                    Ok(chunk) => self.push(chunk),
                    Err(_) => self.eof = true,
                }
            }
        }
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
    fn lookahead_sees_only_flushed_bytes_and_does_not_consume() {
        let (mut w, mut r) = pipe(4);
        assert_eq!(r.buffered(10), 0);
        w.write_all(b"abc").unwrap();
        assert_eq!(r.buffered(10), 0, "unflushed bytes are not visible yet");
        w.flush().unwrap();
        w.write_all(b"defg").unwrap();
        w.flush().unwrap();
        assert_eq!(r.buffered(10), 7);
        assert_eq!(r.buffered(5), 5);
        let mut p = [0u8; 5];
        assert_eq!(r.peek(&mut p), 5);
        assert_eq!(&p, b"abcde");
        let mut b = [0u8; 2];
        r.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ab");
        assert_eq!(r.peek(&mut p), 5);
        assert_eq!(&p, b"cdefg");
        assert!(!r.wait(Duration::from_millis(1)), "nothing more arrives");
        drop(w);
        assert!(
            r.wait(Duration::from_millis(1)),
            "the end is something to act on"
        );
        assert!(r.closed());
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"cdefg");
    }

    #[test]
    fn writer_fails_when_reader_is_gone() {
        let (mut w, r) = pipe(1);
        drop(r);
        w.write_all(b"x").unwrap();
        assert_eq!(w.flush().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
