//! The binary: read the configuration, start the service, wait for SIGINT or
//! SIGTERM, shut down in order. A second signal exits at once.
//!
//! Exit codes: 0 after a shutdown (the log says if events were not applied),
//! 1 if the service could not start (a port in use, a durable store that is
//! locked, damaged or from a newer release, a PostgreSQL database that
//! cannot be reached or has a newer schema) or a thread had panicked, 2 for
//! a bad setting or argument (`DATA_DIR` that cannot be written, `DATA_DIR`
//! or `DATABASE_URL` set in a build without its feature, both set at once,
//! included), 130 on a second signal.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use product_update_service::config::LogFormat;
use product_update_service::{Config, start};

fn main() -> ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fixed_mmap_threshold();
    match std::env::args().nth(1).as_deref() {
        None => {}
        // `write!` rather than `print!`: a closed stdout (`--help | head -0`)
        // must not panic.
        Some("-h" | "--help") => {
            let _ = write!(std::io::stdout(), "{}", Config::help());
            return ExitCode::SUCCESS;
        }
        Some("-V" | "--version") => {
            let version = env!("CARGO_PKG_VERSION");
            let _ = writeln!(std::io::stdout(), "product-update-service {version}");
            return ExitCode::SUCCESS;
        }
        Some("dead-letters") => {
            let config = match Config::from_lookup(|name| std::env::var_os(name)) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let args: Vec<String> = std::env::args().skip(2).collect();
            let code = product_update_service::amqp::dead_letters_command(
                &args,
                &config,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            );
            return ExitCode::from(code);
        }
        Some("send") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            let code = product_update_service::send::command(
                &args,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            );
            return ExitCode::from(code);
        }
        Some(other) => {
            eprintln!(
                "error: unknown argument {other:?}; settings come from the environment (see --help)"
            );
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_lookup(|name| std::env::var_os(name)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logger(config.log_format);
    for retired in Config::retired_in(|name| std::env::var_os(name)) {
        log::warn!("{retired}");
    }

    // The handler runs on ctrlc's own thread: it only forwards the signal.
    // The first one goes to main, which does the shutdown; a second one means
    // "stop now", and there is nobody to forward it to.
    let (signal_tx, signal_rx) = crossbeam_channel::bounded::<()>(1);
    let signals = AtomicUsize::new(0);
    let handler = ctrlc::set_handler(move || {
        if signals.fetch_add(1, Ordering::SeqCst) == 0 {
            let _ = signal_tx.try_send(());
        } else {
            // Ignore a write error: a closed stderr must not stop the exit.
            let _ = writeln!(
                std::io::stderr(),
                "second signal: exiting immediately; queued events are lost"
            );
            std::process::exit(130);
        }
    });
    if let Err(e) = handler {
        eprintln!("error: cannot install the SIGINT/SIGTERM handler: {e}");
        return ExitCode::FAILURE;
    }

    let running = match start(config) {
        Ok(running) => running,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(e.exit_code());
        }
    };
    // The sender lives in the handler for the life of the process, so this
    // returns only when a signal arrives.
    let _ = signal_rx.recv();
    log::info!("signal received: shutting down (send it again to exit at once)");
    match running.shutdown() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// glibc's malloc serves a large allocation (a large request body) with
/// its own mapping, which goes back to the system when freed, but it raises
/// that threshold to the size of each such block freed, up to 32 MiB; from
/// then on large bodies come from the heap, and after a burst of them the
/// memory stays with the process (measured: 16 MiB bodies, 300 MB kept with
/// no connection open). Setting the threshold fixes it, and must be done
/// before the first allocation: so, if `MALLOC_MMAP_THRESHOLD_` is not set,
/// the binary runs itself again with it set to glibc's default, 128 KiB
/// (same process, same arguments). A value set by the operator is kept; if
/// the re-run fails, the service runs as it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fixed_mmap_threshold() {
    use std::os::unix::process::CommandExt;
    const VARIABLE: &str = "MALLOC_MMAP_THRESHOLD_";
    if std::env::var_os(VARIABLE).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // `exec` returns only if it failed.
    let _ = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VARIABLE, "131072")
        .exec();
}

/// `RUST_LOG` filters (default `info`); `LOG_FORMAT=json` writes each record
/// as one JSON object: `{"ts":…,"level":…,"target":…,"msg":…}`.
fn init_logger(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "ts": buf.timestamp_micros().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}
