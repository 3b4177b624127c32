//! The real `quiverdb-follower` daemon as a child process, listening on
//! 127.0.0.1 (port chosen by the kernel), for the robustness tests
//! (`crash.rs`, `disconnect.rs`, `unzip_fuzz.rs`). Every wait has a
//! deadline; the child is killed on drop.
#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

pub const DAEMON: &str = env!("CARGO_BIN_EXE_quiverdb-follower");
/// Deadline of any single wait; only turns a hang into a failure.
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Daemon {
    /// The process, its stderr read into lines on a thread (so the pipe
    /// never fills) by the testkit harness.
    pub child: testkit::child::Child,
    pub addr: SocketAddr,
}

impl Daemon {
    /// `quiverdb-follower --path DB --listen 127.0.0.1:0 ARGS...` at log
    /// level info; returns once it logged "listening on ADDR".
    pub fn start(db: &Path, args: &[&str]) -> Daemon {
        let mut cmd = testkit::child::command(
            DAEMON,
            &["--path", db.to_str().unwrap(), "--listen", "127.0.0.1:0"],
            &[("RUST_LOG", "info"), ("RUST_BACKTRACE", "1")],
        );
        cmd.args(args);
        let mut d = Daemon {
            child: testkit::child::Child::spawn(cmd),
            addr: "127.0.0.1:1".parse().unwrap(),
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

    /// The next log line containing `needle` (after the lines earlier
    /// waits consumed).
    pub fn wait_line(&mut self, needle: &str) -> String {
        self.child.wait_next(needle, WAIT)
    }

    /// The lines consumed by waits so far (for failure messages).
    pub fn log(&self) -> Vec<String> {
        self.child.consumed()
    }

    /// Everything logged so far, including lines not consumed yet.
    pub fn all_log(&mut self) -> Vec<String> {
        self.child.lines()
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
        self.child.signal(sig);
    }

    /// Wait for the exit, failing past the deadline.
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.child.wait_exit(WAIT)
    }
}
