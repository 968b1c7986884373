//! `product-update-service send FILE`: the backfill tool. It streams a
//! file of events (NDJSON, one event per line, the body of `POST /events`)
//! to a running service in batch requests, and shows its progress.
//!
//! ```text
//!  FILE ──read a batch (≤ --batch events, ≤ --max-bytes)──▶ POST /events (NDJSON) ──202/200──▶ FILE.progress
//!                                                            │ 503, connection lost: wait (Retry-After, or
//!                                                            │ doubling from 0.5 s to 10 s), send it again
//!                                                            └ 400, 409, 413: name the file's lines, stop
//! ```
//!
//! - **Bounded memory**: one batch is in memory at a time, whatever the
//!   file's size.
//! - **Resumable**: after each batch the service took, `FILE.progress`
//!   records where the next one starts; a new run starts there. The batch
//!   that was in flight when a run stopped is sent again: with `event_id`s
//!   its events are answered as duplicates, not applied twice (the
//!   service remembers ids for `IDEMPOTENCY_TTL`). `--restart` ignores the
//!   file; it is removed once everything is sent.
//! - **Errors name the line**: a batch the service refuses stops the run,
//!   with each failing line as `FILE:LINE: code: detail`; nothing of that
//!   batch was taken (all or nothing), and a run after the fix resumes at
//!   its first line.

mod client;

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use client::{Answer, Client, Target};

/// Exit codes: done; a batch refused or the service unreachable; a usage error.
const DONE: u8 = 0;
const REFUSED: u8 = 1;
const USAGE: u8 = 2;

const USAGE_TEXT: &str = "usage: product-update-service send FILE [--url http://HOST:PORT] [--batch N] [--max-bytes N] [--token TOKEN] [--retries N] [--restart]
  FILE          events, one JSON object per line (- for standard input: no resume)
  --url         the service (default http://127.0.0.1:8080)
  --batch       events per request (default 1000; at most the service's MAX_BATCH_EVENTS)
  --max-bytes   bytes per request (default 1048576; at most the service's MAX_BATCH_BYTES)
  --token       an API token that may write (default: $API_TOKEN)
  --retries     attempts per batch on 503 or a lost connection (default 30)
  --restart     send the whole file again, ignoring FILE.progress
";

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub file: PathBuf,
    pub url: String,
    pub batch: usize,
    pub max_bytes: usize,
    pub token: Option<String>,
    pub retries: u32,
    pub restart: bool,
}

/// Reads the arguments after `send`; `token` is `$API_TOKEN`.
pub fn parse(args: &[String], token: Option<String>) -> Result<Options, String> {
    let mut options = Options {
        file: PathBuf::new(),
        url: "http://127.0.0.1:8080".to_owned(),
        batch: 1000,
        max_bytes: 1024 * 1024,
        token,
        retries: 30,
        restart: false,
    };
    let mut file = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, text: String| {
            text.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name} {text:?} is not a whole number above 0"))
        };
        match arg.as_str() {
            "--url" => options.url = value("--url")?,
            "--batch" => options.batch = number("--batch", value("--batch")?)?,
            "--max-bytes" => options.max_bytes = number("--max-bytes", value("--max-bytes")?)?,
            "--token" => options.token = Some(value("--token")?),
            "--retries" => {
                let n = number("--retries", value("--retries")?)?;
                options.retries = u32::try_from(n).unwrap_or(u32::MAX);
            }
            "--restart" => options.restart = true,
            "-h" | "--help" => return Err(String::new()),
            other if other.starts_with("--") => return Err(format!("unknown option {other:?}")),
            other if file.is_none() => file = Some(PathBuf::from(other)),
            other => return Err(format!("one FILE only; {other:?} is a second")),
        }
    }
    options.file = file.ok_or("no FILE given")?;
    Ok(options)
}

/// Runs `send` with `args`; returns the exit code. Progress goes to
/// `stderr` (redrawn in place on a terminal), the summary to `stdout`.
pub fn command(args: &[String], stdout: &mut dyn Write, stderr: &mut dyn Write) -> u8 {
    let options = match parse(args, std::env::var("API_TOKEN").ok()) {
        Ok(options) => options,
        Err(e) if e.is_empty() => {
            let _ = write!(stdout, "{USAGE_TEXT}");
            return DONE;
        }
        Err(e) => {
            let _ = write!(stderr, "send: {e}\n{USAGE_TEXT}");
            return USAGE;
        }
    };
    match run(&options, stdout, stderr) {
        Ok(()) => DONE,
        Err(Stop { code, message }) => {
            let _ = writeln!(stderr, "send: {message}");
            code
        }
    }
}

/// Why a run stopped early.
struct Stop {
    code: u8,
    message: String,
}

impl Stop {
    fn usage(message: String) -> Stop {
        Stop {
            code: USAGE,
            message,
        }
    }

    fn refused(message: String) -> Stop {
        Stop {
            code: REFUSED,
            message,
        }
    }
}

/// Where the next batch starts: written after each batch taken.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Progress {
    /// Byte offset in the file, and the line there (1-based).
    offset: u64,
    line: usize,
    /// Events the service took (new) and recognised (duplicates) so far.
    events: u64,
    duplicates: u64,
    /// The last line taken: a fingerprint, its length, and the offset
    /// where it ends. A file changed there is not resumed; lines after it
    /// may change (a fix of a refused line).
    last_line: u64,
    last_len: u64,
    last_end: u64,
}

/// One batch request: the NDJSON body, each event's line in the file.
struct Batch {
    body: Vec<u8>,
    lines: Vec<usize>,
}

fn run(options: &Options, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Result<(), Stop> {
    let target = Target::parse(&options.url).map_err(Stop::usage)?;
    let from_stdin = options.file == Path::new("-");
    let name = options.file.display().to_string();
    let progress_path = PathBuf::from(format!("{name}.progress"));
    let (input, size): (Box<dyn Read>, u64) = if from_stdin {
        (Box::new(io::stdin().lock()), 0)
    } else {
        let file = File::open(&options.file).map_err(|e| Stop::usage(format!("{name}: {e}")))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(file), size)
    };
    let mut progress = Progress {
        line: 1,
        ..Progress::default()
    };
    let mut input = input;
    if !from_stdin
        && !options.restart
        && let Some(saved) = read_progress(&progress_path)?
    {
        let mut file =
            File::open(&options.file).map_err(|e| Stop::usage(format!("{name}: {e}")))?;
        let mut last = vec![0; usize::try_from(saved.last_len).unwrap_or(0)];
        let start = saved.last_end.saturating_sub(saved.last_len);
        let same = file
            .seek(SeekFrom::Start(start))
            .and_then(|_| file.read_exact(&mut last))
            .is_ok_and(|()| fingerprint(&last) == saved.last_line);
        if !same {
            return Err(Stop::usage(format!(
                "{name} is not the file {} was written for (line {} differs): it cannot resume; --restart sends it all again",
                progress_path.display(),
                saved.line.saturating_sub(1)
            )));
        }
        // On from where the next batch starts (past any blank lines after
        // the last line taken).
        file.seek(SeekFrom::Start(saved.offset))
            .map_err(|e| Stop::usage(format!("{name}: {e}")))?;
        input = Box::new(file);
        let _ = writeln!(
            stderr,
            "send: resuming {name} at line {} ({} events sent before; --restart to start over)",
            saved.line, saved.events
        );
        progress = saved;
    }
    let mut reader = Reader {
        input: BufReader::with_capacity(256 * 1024, input),
        line: progress.line,
        offset: progress.offset,
        carried: None,
        last_taken: Vec::new(),
        last_taken_end: 0,
        name: name.clone(),
    };
    let mut client = Client::new(target, options.token.clone());
    // On a terminal the line is redrawn in place; otherwise (a log) a line
    // every 10 s.
    let mut meter = Meter::new(io::stderr().is_terminal(), progress.offset, size);
    let started = Instant::now();
    let (events_before, duplicates_before) = (progress.events, progress.duplicates);
    loop {
        let batch = reader.next_batch(options.batch, options.max_bytes)?;
        if batch.lines.is_empty() {
            break;
        }
        let answer = send_batch(&mut client, &batch, options.retries, stderr)?;
        let taken: Taken = serde_json::from_slice(&answer.body).unwrap_or_default();
        progress.events += taken.count;
        progress.duplicates += taken.duplicates.len() as u64;
        progress.offset = reader.offset_of_batch_end();
        progress.line = reader.line_of_batch_end();
        progress.last_line = fingerprint(&reader.last_taken);
        progress.last_len = reader.last_taken.len() as u64;
        progress.last_end = reader.last_taken_end;
        if !from_stdin {
            write_progress(&progress_path, &progress)?;
        }
        meter.show(stderr, &progress, false);
    }
    meter.show(stderr, &progress, true);
    if !from_stdin {
        let _ = std::fs::remove_file(&progress_path);
    }
    let took = started.elapsed().as_secs_f64();
    let sent = progress.events - events_before;
    let _ = writeln!(
        stdout,
        "sent {name}: {sent} events taken, {} duplicates, in {took:.1} s ({:.0} events/s)",
        progress.duplicates - duplicates_before,
        sent as f64 / took.max(1e-9)
    );
    Ok(())
}

/// The part of a 202 or 200 the tool counts.
#[derive(Default, Deserialize)]
struct Taken {
    #[serde(default)]
    count: u64,
    #[serde(default)]
    duplicates: Vec<serde_json::Value>,
}

/// Sends one batch until the service takes it (202, or 200 for a batch of
/// duplicates), retrying 503s and lost connections; a refusal stops the
/// run naming the lines.
fn send_batch(
    client: &mut Client,
    batch: &Batch,
    retries: u32,
    stderr: &mut dyn Write,
) -> Result<Answer, Stop> {
    let first_line = batch.lines.first().copied().unwrap_or(0);
    let mut wait = Duration::from_millis(500);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let why = match client.post(&batch.body) {
            Ok(answer) if matches!(answer.status, 200 | 202) => return Ok(answer),
            Ok(answer) if matches!(answer.status, 429 | 503) => {
                if let Some(seconds) = answer.retry_after {
                    wait = Duration::from_secs(seconds.clamp(1, 60));
                }
                describe(&answer)
            }
            Ok(answer) => return Err(refusal(&answer, batch, first_line)),
            Err(e) => format!("the connection failed: {e}"),
        };
        if attempt >= retries {
            return Err(Stop::refused(format!(
                "gave up on the batch starting at line {first_line} after {attempt} attempts: {why}; run again to resume there"
            )));
        }
        let _ = writeln!(
            stderr,
            "\nsend: batch at line {first_line}: {why}; again in {:.1} s (attempt {attempt} of {retries})",
            wait.as_secs_f64()
        );
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

/// A problem's `code` and `detail`, or the status.
fn describe(answer: &Answer) -> String {
    let problem: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    match (problem["code"].as_str(), problem["detail"].as_str()) {
        (Some(code), Some(detail)) => format!("{} {code}: {detail}", answer.status),
        _ => format!(
            "status {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body).trim()
        ),
    }
}

/// The stop for a batch the service refused: its failing lines, as the
/// file numbers them.
fn refusal(answer: &Answer, batch: &Batch, first_line: usize) -> Stop {
    let problem: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
    let mut message = format!(
        "the service refused the batch starting at line {first_line} ({}); nothing of it was taken",
        describe(answer)
    );
    for error in problem["errors"].as_array().into_iter().flatten() {
        let line = error["line"]
            .as_u64()
            .and_then(|k| usize::try_from(k).ok())
            .and_then(|k| batch.lines.get(k.wrapping_sub(1)))
            .map_or("?".to_owned(), |line| line.to_string());
        message.push_str(&format!(
            "\n  line {line}: {}: {}",
            error["code"].as_str().unwrap_or("?"),
            error["detail"].as_str().unwrap_or("?")
        ));
    }
    message.push_str(&format!(
        "\nfix the file and run again: it resumes at line {first_line}"
    ));
    let code = if matches!(answer.status, 401 | 403) {
        USAGE
    } else {
        REFUSED
    };
    Stop { code, message }
}

/// FNV-1a, 64 bits: enough to tell an edited line from the one taken.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn read_progress(path: &Path) -> Result<Option<Progress>, Stop> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Stop::usage(format!(
                "{} is not a progress file ({e}); remove it, or --restart",
                path.display()
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Stop::usage(format!("{}: {e}", path.display()))),
    }
}

/// Writes the progress beside the file, replacing the last (a rename, so a
/// crash leaves the old one or the new one).
fn write_progress(path: &Path, progress: &Progress) -> Result<(), Stop> {
    let temporary = PathBuf::from(format!("{}.tmp", path.display()));
    let written = serde_json::to_vec(progress)
        .map_err(io::Error::other)
        .and_then(|bytes| std::fs::write(&temporary, bytes))
        .and_then(|()| std::fs::rename(&temporary, path));
    written.map_err(|e| Stop::refused(format!("{}: {e}", path.display())))
}

/// Reads the file a batch at a time.
struct Reader {
    input: BufReader<Box<dyn Read>>,
    /// The next line's number, and its byte offset.
    line: usize,
    offset: u64,
    /// A line read that did not fit in the last batch: (its number, its
    /// offset, its bytes).
    carried: Option<(usize, u64, Vec<u8>)>,
    /// The last line put in a batch, as read (with its line end), and the
    /// offset where it ends.
    last_taken: Vec<u8>,
    last_taken_end: u64,
    name: String,
}

impl Reader {
    /// Up to `events` lines (blank ones skipped) in at most `max_bytes`.
    fn next_batch(&mut self, events: usize, max_bytes: usize) -> Result<Batch, Stop> {
        let mut batch = Batch {
            body: Vec::new(),
            lines: Vec::new(),
        };
        while batch.lines.len() < events {
            let (number, offset, line) = match self.carried.take() {
                Some(carried) => carried,
                None => {
                    let mut line = Vec::new();
                    let read = self
                        .input
                        .read_until(b'\n', &mut line)
                        .map_err(|e| Stop::refused(format!("{}: {e}", self.name)))?;
                    if read == 0 {
                        break;
                    }
                    let (number, offset) = (self.line, self.offset);
                    self.line += 1;
                    self.offset += read as u64;
                    (number, offset, line)
                }
            };
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if text.iter().all(|b| matches!(b, b' ' | b'\t')) {
                continue;
            }
            if text.len() + 1 > max_bytes {
                return Err(Stop::usage(format!(
                    "{}:{number}: the line is {} bytes, over --max-bytes {max_bytes}",
                    self.name,
                    text.len()
                )));
            }
            if batch.body.len() + text.len() + 1 > max_bytes {
                self.carried = Some((number, offset, line));
                break;
            }
            batch.body.extend_from_slice(text);
            batch.body.push(b'\n');
            batch.lines.push(number);
            self.last_taken_end = offset + line.len() as u64;
            self.last_taken = line;
        }
        Ok(batch)
    }

    /// Where the batch just read ends: before a carried line, if any.
    fn offset_of_batch_end(&self) -> u64 {
        self.carried
            .as_ref()
            .map_or(self.offset, |(_, offset, _)| *offset)
    }

    fn line_of_batch_end(&self) -> usize {
        self.carried
            .as_ref()
            .map_or(self.line, |(line, _, _)| *line)
    }
}

/// The progress line: events sent, events/s, and (for a file) time left.
struct Meter {
    terminal: bool,
    started: Instant,
    shown: Instant,
    start_offset: u64,
    size: u64,
    start_events: Option<u64>,
}

impl Meter {
    fn new(terminal: bool, start_offset: u64, size: u64) -> Meter {
        Meter {
            terminal,
            started: Instant::now(),
            shown: Instant::now(),
            start_offset,
            size,
            start_events: None,
        }
    }

    fn show(&mut self, out: &mut dyn Write, progress: &Progress, last: bool) {
        let start_events = *self.start_events.get_or_insert(progress.events);
        let every = if self.terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(10)
        };
        if !last && self.shown.elapsed() < every {
            return;
        }
        self.shown = Instant::now();
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = (progress.events - start_events) as f64 / elapsed;
        let mut text = format!(
            "{} events sent ({} duplicates), {rate:.0} events/s",
            progress.events, progress.duplicates
        );
        if self.size > 0 {
            let done = progress.offset.saturating_sub(self.start_offset) as f64;
            let left = self.size.saturating_sub(progress.offset) as f64;
            let percent = progress.offset as f64 * 100.0 / self.size as f64;
            text.push_str(&format!(", {percent:.0}%"));
            if done > 0.0 && !last {
                text.push_str(&format!(", {:.0} s left", left * elapsed / done));
            }
        }
        let _ = if self.terminal {
            write!(out, "\r{text}\x1b[K{}", if last { "\n" } else { "" })
        } else {
            writeln!(out, "send: {text}")
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn options_have_defaults_and_bad_ones_are_named() {
        let options = parse(&args("events.ndjson"), None).expect("valid");
        assert_eq!(options.file, PathBuf::from("events.ndjson"));
        assert_eq!((options.batch, options.max_bytes), (1000, 1024 * 1024));
        let options = parse(
            &args("f --batch 10 --url http://h:1 --restart"),
            Some("t".into()),
        )
        .expect("valid");
        assert_eq!((options.batch, options.restart), (10, true));
        assert_eq!(options.token.as_deref(), Some("t"));
        assert!(
            parse(&args("f --batch 0"), None)
                .unwrap_err()
                .contains("--batch")
        );
        assert!(
            parse(&args("f --nope"), None)
                .unwrap_err()
                .contains("--nope")
        );
        assert!(parse(&args(""), None).unwrap_err().contains("FILE"));
    }

    #[test]
    fn batches_respect_both_limits_and_keep_the_file_s_line_numbers() {
        let text = b"{\"a\":1}\n\n{\"b\":22}\r\n{\"c\":333}\n{\"d\":4}".to_vec();
        let mut reader = Reader {
            input: BufReader::new(Box::new(io::Cursor::new(text)) as Box<dyn Read>),
            line: 1,
            offset: 0,
            carried: None,
            last_taken: Vec::new(),
            last_taken_end: 0,
            name: "f".into(),
        };
        let first = reader.next_batch(10, 20).ok().map(|b| (b.body, b.lines));
        assert_eq!(
            first,
            Some((b"{\"a\":1}\n{\"b\":22}\n".to_vec(), vec![1, 3]))
        );
        assert_eq!(reader.line_of_batch_end(), 4);
        let second = reader.next_batch(1, 20).ok().map(|b| b.lines);
        assert_eq!(second, Some(vec![4]));
        let third = reader.next_batch(10, 20).ok().map(|b| b.lines);
        assert_eq!(third, Some(vec![5]));
        assert_eq!(reader.offset_of_batch_end(), 36, "the whole file");
    }
}
