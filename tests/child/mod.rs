//! The real `quiverdb-follower` daemon as a child process, listening on
//! 127.0.0.1 (port chosen by the kernel), for the robustness tests
//! (`crash.rs`, `disconnect.rs`, `unzip_fuzz.rs`). Every wait has a
//! deadline; the child is killed on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_quiverdb-follower");
/// Deadline of any single wait; only turns a hang into a failure.
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    /// stderr lines, read on a thread so the pipe never fills.
    lines: Receiver<String>,
    /// Lines consumed so far (for failure messages).
    pub log: Vec<String>,
}

impl Daemon {
    /// `quiverdb-follower --path DB --listen 127.0.0.1:0 ARGS...` at log
    /// level info; returns once it logged "listening on ADDR".
    pub fn start(db: &Path, args: &[&str]) -> Daemon {
        let mut child = Command::new(DAEMON)
            .args(["--path", db.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut d = Daemon {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            lines,
            log: Vec::new(),
        };
        let l = d.wait_line("listening on ");
        d.addr = l
            .rsplit("listening on ")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        d
    }

    /// The next log line containing `needle`.
    pub fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.log.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no {needle:?} from the daemon in {WAIT:?}; log: {:#?}",
                        self.log
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the daemon exited before {needle:?}; log: {:#?}", self.log)
                }
            }
        }
    }

    /// Everything logged so far, including lines not consumed yet.
    pub fn all_log(&mut self) -> Vec<String> {
        self.log.extend(self.lines.try_iter());
        self.log.clone()
    }

    /// A leader connection, as wal-ship opens it.
    pub fn connect(&self) -> TcpStream {
        let c = TcpStream::connect_timeout(&self.addr, WAIT).unwrap();
        c.set_nodelay(true).unwrap();
        c.set_write_timeout(Some(WAIT)).unwrap();
        c
    }

    /// Send `bytes` on a new connection and close it (FIN); wait for the
    /// daemon to end that session and return the last_lsn it logged.
    pub fn session(&mut self, bytes: &[u8]) -> u64 {
        let mut c = self.connect();
        // The daemon may refuse a bad prefix and close first: not our concern.
        let _ = c.write_all(bytes);
        drop(c);
        let l = self.wait_line(" ended: records=");
        let v = l.rsplit("last_lsn=").next().unwrap();
        v.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// A field of /proc/PID/status in KiB (VmHWM: peak RSS, VmRSS: now).
    pub fn status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let l = s
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} in {s}"));
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Wait for the exit, failing past the deadline.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "the daemon did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
