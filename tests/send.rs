//! The backfill tool, `product-update-service send FILE`, run as the real
//! binary against a service started in this process: a whole file sent
//! in batches, a refused batch naming the file's line, 503s waited out,
//! and a run killed with SIGKILL resumed without applying anything twice.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use common::{TestServer, scratch_dir, test_config, wait_until};
use product_update_service::Config;

const BINARY: &str = env!("CARGO_BIN_EXE_product-update-service");

/// A file of `count` events with event ids: product `p-{n % 100}`, stock `n`.
fn write_events(path: &Path, count: usize) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    for n in 0..count {
        writeln!(
            file,
            r#"{{"product_id":"p-{}","stock":{n},"event_id":"e-{n}"}}"#,
            n % 100
        )
        .expect("write");
    }
    file.flush().expect("flush");
}

fn command(server: &TestServer, file: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .arg("send")
        .arg(file)
        .args(["--url", &server.url("")])
        .args(extra)
        .env_remove("API_TOKEN");
    command
}

/// Runs the tool to its end.
fn send(server: &TestServer, file: &Path, extra: &[&str]) -> Output {
    command(server, file, extra).output().expect("run send")
}

/// Starts the tool, its output piped.
fn spawn_send(server: &TestServer, file: &Path, extra: &[&str]) -> Child {
    command(server, file, extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run send")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn metric(server: &TestServer, name: &str) -> u64 {
    let body = server.get("/metrics").body;
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

#[test]
fn a_file_is_sent_in_batches_and_every_event_applied_once() {
    let server = TestServer::start(test_config());
    let dir = scratch_dir("send-all");
    let file = dir.join("events.ndjson");
    write_events(&file, 5000);
    let output = send(&server, &file, &["--batch", "700"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("5000 events taken, 0 duplicates"),
        "{stdout}"
    );
    assert_eq!(metric(&server, "batch_requests_total"), 8);
    assert_eq!(metric(&server, "events_accepted_total"), 5000);
    server.wait_applied();
    // The newest event of each product: stock 4900..4999.
    let p7 = server.get("/products/p-7");
    assert_eq!(p7.json()["stock"], 4907, "{}", p7.body);
    assert!(
        !dir.join("events.ndjson.progress").exists(),
        "removed when done"
    );

    // Sent again from the start: every event a duplicate, nothing applied.
    let again = send(&server, &file, &["--batch", "700"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("0 events taken, 5000 duplicates"));
    assert_eq!(metric(&server, "events_accepted_total"), 5000);
    server.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_refused_batch_names_the_file_s_line_and_a_run_after_the_fix_resumes_there() {
    let server = TestServer::start(test_config());
    let dir = scratch_dir("send-refused");
    let file = dir.join("events.ndjson");
    write_events(&file, 1000);
    // Line 734 misspells a member.
    let text_of_file = std::fs::read_to_string(&file).expect("read");
    let broken: Vec<String> = text_of_file
        .lines()
        .enumerate()
        .map(|(i, line)| {
            if i == 733 {
                line.replace("\"stock\"", "\"stok\"")
            } else {
                line.to_owned()
            }
        })
        .collect();
    std::fs::write(&file, broken.join("\n") + "\n").expect("write");
    let output = send(&server, &file, &["--batch", "300"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("line 734: unknown_field") && stderr.contains("resumes at line 601"),
        "{stderr}"
    );
    // Batches 1-300 and 301-600 were taken; nothing of 601-900.
    assert_eq!(metric(&server, "events_accepted_total"), 600);

    std::fs::write(&file, text_of_file).expect("the fix");
    let output = send(&server, &file, &["--batch", "300"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("resuming"),
        "{}",
        text(&output.stderr)
    );
    assert!(text(&output.stdout).contains("400 events taken, 0 duplicates"));
    assert_eq!(metric(&server, "events_accepted_total"), 1000);
    server.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_full_queue_is_waited_out() {
    let server = TestServer::start(Config {
        queue_size: 100,
        workers: 1,
        ..test_config()
    });
    let dir = scratch_dir("send-503");
    let file = dir.join("events.ndjson");
    write_events(&file, 400);
    let paused = server.running.pause_workers();
    let mut child = spawn_send(&server, &file, &["--batch", "60"]);
    // The second batch does not fit while the workers are paused.
    let mut stderr = BufReader::new(child.stderr.take().expect("piped"));
    let mut line = String::new();
    while !line.contains("queue_full") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).expect("read") > 0,
            "send ended without a 503"
        );
    }
    assert!(line.contains("again in"), "{line}");
    drop(paused);
    let output = child.wait_with_output().expect("send ends");
    assert_eq!(output.status.code(), Some(0));
    assert!(text(&output.stdout).contains("400 events taken"));
    server.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

/// Killed while it waits out a full queue (the workers paused), so that
/// the kill lands in the middle of the file whatever the machine's speed.
#[test]
fn a_run_killed_with_sigkill_resumes_without_applying_anything_twice() {
    let server = TestServer::start(Config {
        queue_size: 2500,
        workers: 1,
        ..test_config()
    });
    let dir = scratch_dir("send-kill");
    let file = dir.join("events.ndjson");
    write_events(&file, 20_000);
    let progress = dir.join("events.ndjson.progress");
    let paused = server.running.pause_workers();
    let mut child = spawn_send(&server, &file, &["--batch", "100"]);
    wait_until("the queue full and the tool waiting", || {
        (metric(&server, "events_rejected_total{reason=\"queue_full\"}") > 0).then_some(())
    });
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    drop(paused);
    let taken = metric(&server, "events_accepted_total");
    assert!(
        (2000..=2500).contains(&taken),
        "{taken} taken before the kill"
    );
    assert!(progress.exists());

    let output = send(&server, &file, &["--batch", "100"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("resuming"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(
        metric(&server, "events_accepted_total"),
        20_000,
        "each event once"
    );
    assert_eq!(metric(&server, "events_duplicate_total"), 0);
    server.wait_applied();
    assert_eq!(server.get("/products/p-42").json()["stock"], 19_942);
    server.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}

/// Blank lines between the last line of a batch and a line held back for
/// the next (by `--max-bytes`): a resume starts at that line, and later
/// refusals still name the file's lines.
#[test]
fn a_resume_after_blank_lines_keeps_the_file_s_line_numbers() {
    let server = TestServer::start(test_config());
    let dir = scratch_dir("send-blank");
    let file = dir.join("events.ndjson");
    let event = |n: usize| format!(r#"{{"product_id":"q-{n}","stock":{n},"event_id":"q-{n}"}}"#);
    let broken = |n: usize| event(n).replace("\"stock\"", "\"stok\"");
    // Lines 3 and 4 are blank; two lines fit in a request.
    let lines = |bad: Option<usize>| -> String {
        (1..=12)
            .map(|n| match n {
                3 | 4 => String::new(),
                n if Some(n) == bad => broken(n),
                n => event(n),
            })
            .map(|line| line + "\n")
            .collect()
    };
    let max_bytes = (event(10).len() + 1) * 2;
    let options = ["--max-bytes", &max_bytes.to_string()].map(str::to_owned);
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    std::fs::write(&file, lines(Some(6))).expect("write");
    let first = send(&server, &file, &options);
    assert_eq!(first.status.code(), Some(1));
    assert!(
        text(&first.stderr).contains("line 6: unknown_field"),
        "{}",
        text(&first.stderr)
    );

    std::fs::write(&file, lines(Some(9))).expect("fix line 6, break line 9");
    let second = send(&server, &file, &options);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        text(&second.stderr).contains("line 9: unknown_field"),
        "{}",
        text(&second.stderr)
    );

    std::fs::write(&file, lines(None)).expect("fix line 9");
    let third = send(&server, &file, &options);
    assert_eq!(third.status.code(), Some(0), "{}", text(&third.stderr));
    assert_eq!(
        metric(&server, "events_accepted_total"),
        10,
        "each event once"
    );
    assert_eq!(metric(&server, "events_duplicate_total"), 0);
    server.shutdown();
    let _ = std::fs::remove_dir_all(dir);
}
