//! `ServiceProcess`: one long-running process of a test (etcd, s3s-fs, a gateway, a compactor)
//! with its stderr in a log file, a readiness wait, signals, and SIGKILL on drop.
//!
//! Every wait is bounded and panics with the process's name, pid and log tail, so a failing
//! test says what the process was doing.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// A spawned process: stdin closed, stdout read by a thread (its first line is kept for
/// `wait_for_url`, the rest discarded), stderr written to `log`. Killed (SIGKILL) on drop.
pub struct ServiceProcess {
    name: String,
    child: Child,
    log: PathBuf,
    /// Behind a mutex only to keep `ServiceProcess` `Sync`.
    first_line: Mutex<mpsc::Receiver<String>>,
}

impl ServiceProcess {
    /// Spawns `cmd`, its stderr truncating `log`. `name` identifies it in panic messages.
    pub fn spawn(name: impl Into<String>, mut cmd: Command, log: &Path) -> Self {
        let name = name.into();
        let stderr = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("create {name}'s log {}: {e}", log.display()));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, first_line) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {} // keep the pipe drained
        });
        ServiceProcess {
            name,
            child,
            log: log.to_path_buf(),
            first_line: Mutex::new(first_line),
        }
    }

    /// Waits until `127.0.0.1:port` accepts connections.
    pub fn wait_for_port(&mut self, port: u16, timeout: Duration) {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + timeout;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            self.assert_running("listening");
            if Instant::now() >= deadline {
                self.fail(&format!("did not listen on port {port} within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the first line on stdout and returns its last word, an `http://` or `https://` URL (the
    /// gateway prints "… listening on URL", the compactor "… metrics on URL").
    pub fn wait_for_url(&mut self, timeout: Duration) -> String {
        let line = match self.first_line.lock().unwrap().recv_timeout(timeout) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.fail(&format!("did not print its URL within {timeout:?}"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.fail("closed its stdout without printing its URL")
            }
        };
        let url = line.rsplit(' ').next().unwrap_or_default();
        if !url.starts_with("http://") && !url.starts_with("https://") {
            self.fail(&format!("unexpected ready line: {line}"));
        }
        url.to_string()
    }

    /// The first line on stdout if one arrives within `timeout`: `None` once the process has
    /// exited without printing one (or after `wait_for_url` took it).
    pub fn printed_line(&self, timeout: Duration) -> Option<String> {
        self.first_line.lock().unwrap().recv_timeout(timeout).ok()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit status once it exits. Panics if it has not within `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("did not exit within {timeout:?} of SIGTERM"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the process dies at once, nothing flushed. Returns once it is reaped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP. Returns once every thread of the process has stopped: the signal is delivered
    /// asynchronously, and on a loaded machine a thread can still answer a request for a few
    /// milliseconds after `kill` returned.
    pub fn pause(&self) {
        self.signal("STOP");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(self.pid()) {
            if Instant::now() >= deadline {
                self.fail("did not stop within 10s of SIGSTOP");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT, after `pause`.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.log.display()))
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -{sig} {} ({}) failed",
            self.name,
            self.pid()
        );
    }

    /// The exit status, if the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits (without blocking the runtime) until the process exits; panics with `what` if it
    /// has not within `timeout`.
    pub async fn wait_for_exit(&mut self, timeout: Duration, what: &str) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("still running after {timeout:?}: {what}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Panics if the process has exited.
    fn assert_running(&mut self, doing: &str) {
        if let Some(status) = self.exit_status() {
            self.fail(&format!("exited ({status}) before {doing}"));
        }
    }

    /// Panics with `what` and the log tail (unwinding drops, so kills, the process).
    fn fail(&self, what: &str) -> ! {
        panic!(
            "{} (pid {}) {what}; log {}:\n{}",
            self.name,
            self.pid(),
            self.log.display(),
            self.log_tail()
        )
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last 80 lines of the file at `path` (empty if it cannot be read).
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc/{pid}/task/*/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        // "tid (comm) S ...": the state follows the last ')', as comm may hold one.
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                == Some('T')
        })
    })
}
