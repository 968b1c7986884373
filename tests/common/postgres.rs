//! A throwaway PostgreSQL server for one test: `initdb` in a fresh
//! directory, `pg_ctl start` on a free loopback port (and a Unix socket in
//! that directory only), stopped and removed on drop. Never a shared or
//! pre-existing server.
//!
//! The binaries are the system's PostgreSQL 15 ones (`PG_BIN`, or
//! `/usr/lib/postgresql/15/bin`, or `initdb` on `PATH`). When they are
//! missing, the test fails saying which package to install: in CI that is
//! a failure like any other (`.ci/run` installs them), never a skip.
//!
//! PostgreSQL refuses to run as root; as root (CI containers), the server
//! runs as the owner of the data directory, `nobody`, through `setpriv`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};

use super::scratch_dir;

/// The account the server runs as when the tests run as root.
const SERVER_USER: &str = "nobody";

/// A running throwaway server.
pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// The user to connect as (the server's superuser).
    user: String,
    as_root: bool,
}

impl Postgres {
    /// Starts a server with one database, `products`.
    pub fn start() -> Postgres {
        Postgres::new("postgres").init()
    }

    /// `initdb` only, for [`Shared`].
    fn start_stopped() -> Postgres {
        let server = Postgres::new("pgshared");
        server.initdb();
        server
    }

    fn new(tag: &str) -> Postgres {
        let bin = binaries();
        let dir = scratch_dir(tag);
        let as_root = is_root();
        let user = if as_root {
            SERVER_USER.to_owned()
        } else {
            std::env::var("USER").unwrap_or_else(|_| "postgres".to_owned())
        };
        if as_root {
            let owned = Command::new("chown")
                .arg(format!("{SERVER_USER}:"))
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(owned, "chown {} to {SERVER_USER}", dir.display());
        }
        Postgres {
            dir,
            bin,
            port: free_port(),
            user,
            as_root,
        }
    }

    fn init(self) -> Postgres {
        self.initdb();
        self.pg_start();
        let port = self.port.to_string();
        self.run(
            "createdb",
            &["-h", "127.0.0.1", "-p", &port, "-U", &self.user, "products"],
        );
        self
    }

    fn initdb(&self) {
        let data = self.data();
        self.run(
            "initdb",
            &[
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--username",
                &self.user,
                "-D",
                &data,
            ],
        );
    }

    /// The server's options: loopback only, its socket in its own
    /// directory, no fsync (a throwaway server needs no crash safety).
    fn options(&self) -> String {
        format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off -c max_connections=500",
            self.port,
            self.dir.display()
        )
    }

    fn command(&self, program: &str) -> Command {
        server_command(self.as_root, &self.bin.join(program))
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// Runs one of the server's binaries (as the server's user when root),
    /// failing the test with its output if it fails.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let output = self
            .command(program)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// The URL of the `products` database, as `DATABASE_URL` takes it.
    pub fn url(&self) -> String {
        format!("postgres://{}@127.0.0.1:{}/products", self.user, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (data, socket, log): removed on drop.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Runs SQL with `psql` and returns what it printed (unaligned, no
    /// headers): for tests that look at the database directly.
    pub fn psql(&self, sql: &str) -> String {
        let port = self.port.to_string();
        let output = self.run(
            "psql",
            &[
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                &self.user,
                "-d",
                "products",
                "-c",
                sql,
            ],
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Opens a psql session that runs `sql` in a transaction and keeps it
    /// open (with its locks) until the returned [`Held`] is dropped, which
    /// rolls it back.
    pub fn hold(&self, sql: &str) -> Held {
        let port = self.port.to_string();
        let mut child = self
            .command("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                &self.user,
                "-d",
                "products",
            ])
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run psql: {e}"));
        let mut stdin = child.stdin.take().expect("psql's stdin");
        writeln!(stdin, "BEGIN;\n{sql};\n\\echo held").expect("write to psql");
        stdin.flush().expect("write to psql");
        // Held once psql has run the statement and echoed the marker.
        let stdout = child.stdout.take().expect("psql's stdout");
        let held = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line == "held");
        assert!(held, "psql exited before holding {sql:?}");
        Held {
            child,
            stdin: Some(stdin),
        }
    }

    /// Stops the server (fast shutdown: open connections are cut).
    pub fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// Crashes the server: immediate shutdown, as if the machine lost
    /// power as far as PostgreSQL knows (no checkpoint; WAL not yet
    /// written by its processes is gone; the next start recovers).
    pub fn crash(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    /// Freezes the server (SIGSTOP to it and every backend), as a hung
    /// host looks to its clients: connections stay open, the kernel still
    /// takes what they send, nothing answers. Thawed when the returned
    /// [`Frozen`] is dropped.
    pub fn freeze(&self) -> Frozen {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .unwrap_or_else(|e| panic!("read postmaster.pid: {e}"));
        let postmaster = pid_file
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        // Thawed on drop from here on, whatever fails below. The postmaster
        // first: stopped, it starts no new backend while they are listed.
        let mut frozen = Frozen {
            pids: vec![postmaster.clone()],
        };
        assert!(
            signal("-STOP", &frozen.pids),
            "kill -STOP {postmaster} failed"
        );
        let children = Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .unwrap_or_else(|e| panic!("run pgrep: {e}"));
        let children: Vec<String> = String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        // A backend that exited meanwhile is not an error.
        signal("-STOP", &children);
        frozen.pids.extend(children);
        frozen
    }

    /// Starts it again on the same data and port.
    pub fn restart(&self) {
        self.pg_start();
    }

    fn pg_start(&self) {
        let (data, options) = (self.data(), self.options());
        let log = self.dir.join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &options, "-w", "-t", "30", "start",
            ],
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where `initdb` and `pg_ctl` are; fails the test saying what to install.
fn binaries() -> PathBuf {
    let candidates = std::env::var_os("PG_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/usr/lib/postgresql/15/bin")])
        .chain(
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default(),
        );
    for dir in candidates {
        if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
            return dir;
        }
    }
    panic!(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in PG_BIN, /usr/lib/postgresql/15/bin or PATH: \
         install them with `apt-get install postgresql-15` (Debian 12), or set PG_BIN to their directory"
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `path` to run as the server's user: through `setpriv` as root (the
/// server refuses root), as is otherwise.
fn server_command(as_root: bool, path: &std::path::Path) -> Command {
    if as_root {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            SERVER_USER,
            "--regid",
            "nogroup",
            "--clear-groups",
            "--",
        ])
        .arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One server for a whole test binary (`tests/postgres_suite.rs`; one per
/// included file, since each has its own copy of this module), each
/// test in a database of its own ([`Shared::database`]). `postgres` runs
/// under a shell that stops it and removes its directory once the test
/// process has exited (see [`Shared::spawn`]).
pub struct Shared {
    bin: PathBuf,
    port: u16,
    user: String,
    as_root: bool,
    next: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// The binary's server, started on first use.
    pub fn get() -> &'static Shared {
        static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("postgres-parent".to_owned())
                .spawn(move || {
                    // A failure to start (no binaries, say) is the test's
                    // message, not this thread's.
                    let started = std::panic::catch_unwind(Shared::spawn).map_err(|panic| {
                        panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_else(|| "starting the shared server panicked".to_owned())
                    });
                    match started {
                        Ok((shared, mut child)) => {
                            tx.send(Ok(shared)).expect("the test waits");
                            // The server's parent: it must outlive every test.
                            let _ = child.wait();
                        }
                        Err(message) => tx.send(Err(message)).expect("the test waits"),
                    }
                })
                .expect("spawn the server's thread");
            match rx.recv() {
                Ok(Ok(shared)) => shared,
                Ok(Err(message)) => panic!("{message}"),
                Err(_) => panic!("the shared PostgreSQL server's thread ended"),
            }
        })
    }

    fn spawn() -> (Shared, std::process::Child) {
        remove_orphans();
        // initdb as for a single server, then run postgres in the
        // foreground instead of through pg_ctl.
        let server = Postgres::start_stopped();
        let bin = server.bin.clone();
        // The server's parent is a shell that reads a pipe whose writing
        // end only this process holds: its end of input is this process's
        // exit (however it exits), on which it shuts the server down
        // (immediate shutdown: the backends go with it), waits for it,
        // and removes its directory.
        let mut command = Command::new("sh");
        command.args([
            "-c",
            r#"dir=$1; shift; "$@" </dev/null >/dev/null 2>&1 & server=$!; cat >/dev/null; kill -QUIT "$server" 2>/dev/null; wait "$server"; rm -rf "$dir""#,
            "sh",
        ]);
        command
            .arg(&server.dir)
            .arg("setpriv")
            .arg("--pdeathsig")
            .arg("KILL");
        if server.as_root {
            command.args([
                "--reuid",
                SERVER_USER,
                "--regid",
                "nogroup",
                "--clear-groups",
            ]);
        }
        command
            .arg("--")
            .arg(bin.join("postgres"))
            .arg("-D")
            .arg(server.data())
            .args(server.options().split(' '))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = command.spawn().expect("start postgres");
        // Held open until the process exits.
        std::mem::forget(child.stdin.take());
        let shared = Shared {
            bin,
            port: server.port,
            user: server.user.clone(),
            as_root: server.as_root,
            next: std::sync::atomic::AtomicUsize::new(0),
        };
        // Not dropped: the server and its directory live until the process
        // ends (then the shell above removes them).
        std::mem::forget(server);
        let deadline = std::time::Instant::now() + super::DEADLINE;
        while !shared.ready() {
            assert!(
                std::time::Instant::now() < deadline,
                "the shared PostgreSQL server did not start"
            );
            std::thread::yield_now();
        }
        (shared, child)
    }

    fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-t",
                "1",
            ])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A new empty database; its URL.
    pub fn database(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("t{n}");
        let port = self.port.to_string();
        let mut command = server_command(self.as_root, &self.bin.join("createdb"));
        let output = command
            .args(["-h", "127.0.0.1", "-p", &port, "-U", &self.user, &name])
            .current_dir(std::env::temp_dir())
            .output()
            .expect("run createdb");
        assert!(
            output.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        format!("postgres://{}@127.0.0.1:{}/{name}", self.user, self.port)
    }
}

/// Removes the directories of shared servers whose test process has
/// exited (left by a run that was killed before its shell could clean up).
fn remove_orphans() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("product-update-service-test-pgshared-") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A psql session holding a transaction open (see [`Postgres::hold`]).
pub struct Held {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Held {
    fn drop(&mut self) {
        // End of input: psql exits, and the server rolls the transaction
        // back.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// A frozen server (see [`Postgres::freeze`]): thawed on drop.
pub struct Frozen {
    pids: Vec<String>,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // Whatever of it still runs.
        signal("-CONT", &self.pids);
    }
}

/// Sends `signal` to `pids` with kill(1); whether every one got it.
fn signal(signal: &str, pids: &[String]) -> bool {
    Command::new("kill")
        .arg(signal)
        .args(pids)
        .status()
        .is_ok_and(|status| status.success())
}
