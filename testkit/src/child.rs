//! The one child-process harness of the tests: a binary run as a child with
//! its stderr read on a thread into lines, waits for log lines with a
//! deadline, kill on drop, and runs to completion with a timeout or with
//! bytes on stdin.
//!
//! Binary paths come from the caller: an integration test passes
//! `env!("CARGO_BIN_EXE_<name>")` (only integration tests see those).
//! Every wait has a deadline, so a bug fails the test instead of hanging it.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A command for `program`: `args`, `RUST_LOG` and `NOTIFY_SOCKET` removed
/// (the binary's defaults) unless `env` sets them, then `env`.
pub fn command<S: AsRef<OsStr>>(
    program: impl AsRef<OsStr>,
    args: &[S],
    env: &[(&str, &str)],
) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The name a failure message gives a command (its program).
fn name_of(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// stderr as lines so far, and whether the pipe has closed.
#[derive(Default)]
struct Log {
    lines: Vec<String>,
    closed: bool,
}

/// A running child whose stderr lines are collected by a thread, so a test
/// can wait (with a deadline) for log lines while the process runs. Stdin
/// and stdout are null. Killed (and reaped) on drop.
pub struct Child {
    process: std::process::Child,
    name: String,
    log: Arc<(Mutex<Log>, Condvar)>,
    reader: Option<JoinHandle<()>>,
    /// Lines consumed by [`Child::wait_next`].
    cursor: usize,
}

impl Child {
    /// Spawn `cmd` with stdin and stdout null and stderr read into lines.
    pub fn spawn(mut cmd: Command) -> Child {
        let name = name_of(&cmd);
        let mut process = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stderr = process.stderr.take().expect("stderr is piped");
        let log = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(l) = line else { break };
                sink.0.lock().unwrap().lines.push(l);
                sink.1.notify_all();
            }
            sink.0.lock().unwrap().closed = true;
            sink.1.notify_all();
        });
        Child {
            process,
            name,
            log,
            reader: Some(reader),
            cursor: 0,
        }
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.process.id()
    }

    /// Every stderr line so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.0.lock().unwrap().lines.clone()
    }

    /// Every stderr line so far, each ended by a newline.
    pub fn stderr(&self) -> String {
        self.lines().iter().map(|l| format!("{l}\n")).collect()
    }

    /// How many log lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Wait until `pick` finds a line in the log (it sees all lines and
    /// returns the index of the one it wants); panic past `timeout` or when
    /// stderr closes first.
    fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(&[String]) -> Option<usize>,
    ) -> (usize, String) {
        let end = Instant::now() + timeout;
        let (lock, cv) = &*self.log;
        let mut log = lock.lock().unwrap();
        loop {
            if let Some(i) = pick(&log.lines) {
                return (i, log.lines[i].clone());
            }
            let all = || {
                log.lines
                    .iter()
                    .map(|l| format!("{l}\n"))
                    .collect::<String>()
            };
            if log.closed {
                panic!(
                    "{} closed stderr (exited?) before {what}; stderr:\n{}",
                    self.name,
                    all()
                );
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "timed out after {timeout:?} waiting for {what} from {}; stderr so far:\n{}",
                    self.name,
                    all()
                );
            }
            log = cv.wait_timeout(log, left).unwrap().0;
        }
    }

    /// Wait (up to `timeout`) until `n` lines contain `needle`; returns the n-th.
    pub fn wait_log_n(&self, needle: &str, n: usize, timeout: Duration) -> String {
        assert!(n > 0, "wait_log_n counts from 1");
        let what = format!("{n} log line(s) containing {needle:?}");
        self.wait_until(&what, timeout, |lines| {
            lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.contains(needle))
                .nth(n - 1)
                .map(|(i, _)| i)
        })
        .1
    }

    /// Wait (up to `timeout`) for a line containing `needle`; returns the first.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_log_n(needle, 1, timeout)
    }

    /// The next line containing `needle` after those consumed by earlier
    /// calls (a cursor over the log, for a sequence of events).
    pub fn wait_next(&mut self, needle: &str, timeout: Duration) -> String {
        let from = self.cursor;
        let what = format!("a log line containing {needle:?} (after line {from})");
        let (i, l) = self.wait_until(&what, timeout, |lines| {
            (from..lines.len()).find(|&i| lines[i].contains(needle))
        });
        self.cursor = i + 1;
        l
    }

    /// The lines consumed by [`Child::wait_next`] so far.
    pub fn consumed(&self) -> Vec<String> {
        let log = self.log.0.lock().unwrap();
        log.lines[..self.cursor.min(log.lines.len())].to_vec()
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        self.process.try_wait().unwrap().is_none()
    }

    /// Send `sig` (e.g. `libc::SIGTERM`) to the child.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let r = unsafe { libc::kill(self.process.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill({sig})");
    }

    /// SIGKILL the child (`std::process::Child::kill`).
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.process.kill()
    }

    /// Wait for the exit without a deadline (after [`Child::kill`]).
    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.process.wait()
    }

    /// Wait up to `timeout` for the exit (killing the child and failing the
    /// test if it does not come), then for all of stderr.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.process.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > end {
                let _ = self.process.kill();
                let _ = self.process.wait();
                panic!(
                    "{} did not exit within {timeout:?}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        status
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.process.try_wait().ok().flatten().is_none() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

fn drain(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Run `cmd` to completion with stdin null, stdout and stderr collected, but
/// fail the test (after killing it) if it has not exited within `timeout`:
/// for runs that must end at once, where a bug would otherwise leave a
/// daemon serving forever.
pub fn run_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let name = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let end = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
            panic!("{name} did not exit within {timeout:?}; stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Run `cmd` to completion with `stdin` bytes, stdout and stderr collected.
/// The bytes are written on a thread: the child may exit early (an error)
/// and close its stdin, which is not a failure of the run.
pub fn run_with_input(mut cmd: Command, stdin: &[u8]) -> Output {
    let name = name_of(&cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let mut sin = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let w = std::thread::spawn(move || {
        let _ = sin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    w.join().unwrap();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    fn sh(script: &str) -> Command {
        command("sh", &["-c", script], &[])
    }

    #[test]
    fn log_lines_are_waited_for_in_order_and_by_count() {
        let mut c = Child::spawn(sh("echo a 1 >&2; echo b >&2; echo a 2 >&2; exec sleep 30"));
        assert_eq!(c.wait_log_n("a ", 2, T), "a 2");
        assert_eq!(c.wait_next("a ", T), "a 1");
        assert_eq!(c.wait_next("a ", T), "a 2");
        assert_eq!(c.consumed(), ["a 1", "b", "a 2"]);
        assert_eq!(c.count("a "), 2);
        assert!(c.running());
        c.signal(libc::SIGTERM);
        assert!(!c.wait_exit(T).success());
    }

    #[test]
    #[should_panic(expected = "closed stderr")]
    fn a_wait_fails_when_the_child_is_gone() {
        let c = Child::spawn(sh("echo only >&2"));
        c.wait_log("never", T);
    }

    #[test]
    fn runs_collect_output() {
        let o = run_timeout(sh("echo out; echo err >&2; exit 3"), T);
        assert_eq!(
            (o.status.code(), &o.stdout[..], &o.stderr[..]),
            (Some(3), &b"out\n"[..], &b"err\n"[..])
        );
        let o = run_with_input(command("cat", &[] as &[&str], &[]), b"bytes");
        assert_eq!(o.stdout, b"bytes");
    }

    #[test]
    #[should_panic(expected = "did not exit within")]
    fn a_run_past_its_timeout_fails() {
        run_timeout(sh("sleep 30"), Duration::from_millis(100));
    }
}
