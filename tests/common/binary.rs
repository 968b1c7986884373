//! The real binary as a child process: started with an environment, its
//! log read line by line, signalled, waited for. Never left running: drop
//! kills it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::DEADLINE;

/// The real binary, started with `env`, its log read line by line.
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
    log: mpsc::Receiver<String>,
    /// Every log line read so far.
    pub lines: Vec<String>,
}

impl Binary {
    pub fn start(env: &[(&str, &str)]) -> Binary {
        let mut command = Command::new(env!("CARGO_BIN_EXE_product-update-service"));
        command
            .env_clear()
            .env("PORT", "0")
            .env("BIND_ADDR", "127.0.0.1")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn the binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (line_tx, log) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut binary = Binary {
            child,
            addr: "0.0.0.0:0".parse().expect("literal"),
            log,
            lines: Vec::new(),
        };
        let line = binary.wait_for_log("listening on ");
        let addr = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address in the startup line");
        binary.addr = addr.parse().expect("socket address");
        binary
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A counter's or gauge's value in its `GET /metrics` (0 while it is
    /// not there).
    pub fn metric(&self, name: &str) -> u64 {
        let reply = super::read_reply(
            super::agent()
                .get(format!("{}/metrics", self.base()))
                .call(),
        );
        reply
            .body
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    /// Waits for a log line containing `needle` and returns it.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        if let Some(line) = self.lines.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => {
                    self.lines.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line containing {needle:?} within {DEADLINE:?}; log so far:\n{}",
                    self.lines.join("\n")
                ),
            }
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Collect the rest of the log for the assertions.
                while let Ok(line) = self.log.recv_timeout(Duration::from_secs(5)) {
                    self.lines.push(line);
                }
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "the binary did not exit within {DEADLINE:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        // Never leave a process behind when a test fails.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary's exit code and stderr when it does not start (it must exit
/// by itself, at startup, within [`DEADLINE`]: a start that hangs fails the
/// test, and the process is killed).
pub fn failed_start(env: &[(&str, &str)]) -> (Option<i32>, String) {
    struct KillOnDrop(Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_product-update-service"))
            .env_clear()
            .env("PORT", "0")
            .env("BIND_ADDR", "127.0.0.1")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the binary"),
    );
    // Read meanwhile, so that a long log cannot fill the pipe and stall it.
    let mut stderr = child.0.stderr.take().expect("piped stderr");
    let log = thread::spawn(move || {
        let mut log = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut log);
        log
    });
    let status = super::wait_until("the binary to exit at startup", || {
        child.0.try_wait().expect("wait for the binary")
    });
    (status.code(), log.join().expect("the log reader"))
}
