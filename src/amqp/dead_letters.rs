//! `product-update-service dead-letters`: look at the dead-letter queue,
//! and replay its messages after a fix. A command, not a thread of the
//! service: it connects with the service's settings (`AMQP_URL`,
//! `AMQP_EXCHANGE`), does its work and exits.
//!
//! - `dead-letters list [--limit N]` prints each dead letter as one JSON
//!   object per line (its routing key, reason, attempts, message id and
//!   body) and leaves the queue as it was: it takes the messages without
//!   acknowledging them, so they go back when it disconnects.
//! - `dead-letters replay [--code CODE] [--limit N]` publishes each dead
//!   letter (of that reason only, with `--code`) back to the exchange with
//!   its original routing key and without the service's headers, waits for
//!   the broker's confirm, and only then removes it from the dead-letter
//!   queue. A crash in between leaves a message in both places: replayed
//!   twice, which its `message_id` makes a duplicate.

use std::io::Write;

use futures_lite::future::block_on;
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use serde::Serialize;

use super::topology::{self, Message, Topology};
use crate::config::Config;

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    List { limit: usize },
    Replay { code: Option<String>, limit: usize },
}

/// At most this many messages by default: a list is for a person to read.
const DEFAULT_LIMIT: usize = 1000;

/// Reads `list|replay [--code CODE] [--limit N]`.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let usage = "usage: product-update-service dead-letters list [--limit N] | replay [--code CODE] [--limit N]";
    let (verb, mut rest) = match args.split_first() {
        Some((verb, rest)) => (verb.as_str(), rest),
        None => return Err(usage.to_owned()),
    };
    let (mut code, mut limit) = (None, DEFAULT_LIMIT);
    while let Some((flag, after)) = rest.split_first() {
        let Some((value, after)) = after.split_first() else {
            return Err(format!("{flag} needs a value; {usage}"));
        };
        match flag.as_str() {
            "--limit" => {
                limit =
                    value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("--limit {value:?}: expected a whole number above 0")
                    })?;
            }
            "--code" if verb == "replay" => code = Some(value.clone()),
            other => return Err(format!("unknown option {other:?}; {usage}")),
        }
        rest = after;
    }
    match verb {
        "list" => Ok(Command::List { limit }),
        "replay" => Ok(Command::Replay { code, limit }),
        other => Err(format!("unknown command {other:?}; {usage}")),
    }
}

/// One dead letter, as `list` prints it.
#[derive(Serialize)]
struct Listed<'a> {
    routing_key: Option<String>,
    code: Option<String>,
    detail: Option<String>,
    attempts: u32,
    message_id: Option<&'a str>,
    body: std::borrow::Cow<'a, str>,
}

/// Runs the command; returns how many messages it listed or replayed.
/// The error is one line for the operator.
pub fn run(config: &Config, command: &Command, out: &mut dyn Write) -> Result<usize, String> {
    let url = config.amqp_url.as_ref().ok_or(
        "AMQP_URL is not set: set it (and AMQP_EXCHANGE, if not the default) as for the service",
    )?;
    let topology = Topology {
        exchange: config.amqp_exchange.clone(),
        shards: config.amqp_shards,
        max_attempts: config.amqp_max_attempts,
        retry_delay: config.amqp_retry_delay,
    };
    let broker = |e: lapin::Error| format!("RabbitMQ at {url}: {e}");
    let connection = block_on(Connection::connect(
        url.expose(),
        ConnectionProperties::default(),
    ))
    .map_err(broker)?;
    let channel = block_on(connection.create_channel()).map_err(broker)?;
    block_on(channel.confirm_select(ConfirmSelectOptions::default())).map_err(broker)?;
    let queue = topology.dead_queue();
    // No more than were there when it began: a replayed message that fails
    // again comes back to this queue, and must not be replayed twice.
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let waiting =
        block_on(channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()))
            .map_err(broker)?
            .message_count() as usize;
    let limit = command_limit(command).min(waiting);
    let mut done = 0;
    // Messages taken and not acknowledged stay taken until the connection
    // closes, so none is seen twice.
    let mut seen = 0;
    while seen < limit {
        let get = channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false });
        let Some(message) = block_on(get).map_err(broker)? else {
            break;
        };
        seen += 1;
        let delivery = &message.delivery;
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        let text = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(s)) => Some(s.to_string()),
            Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
            _ => None,
        };
        let routing_key = text(topology::ORIGINAL_ROUTING_KEY);
        match command {
            Command::List { .. } => {
                let listed = Listed {
                    routing_key,
                    code: text(topology::PROBLEM_CODE),
                    detail: text(topology::PROBLEM_DETAIL),
                    attempts: topology::attempts(&delivery.properties),
                    message_id: delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|id| id.as_str()),
                    body: String::from_utf8_lossy(&delivery.data),
                };
                let line = serde_json::to_string(&listed).map_err(|e| e.to_string())?;
                writeln!(out, "{line}").map_err(|e| format!("cannot write: {e}"))?;
                done += 1;
            }
            Command::Replay { code, .. } => {
                if code.is_some() && text(topology::PROBLEM_CODE) != *code {
                    continue;
                }
                let routing_key = routing_key.unwrap_or_default();
                let copy = Message {
                    routing_key: &routing_key,
                    properties: &delivery.properties,
                    body: &delivery.data,
                };
                block_on(topology.publish_replay(&channel, &copy)).map_err(broker)?;
                block_on(delivery.acker.ack(BasicAckOptions::default())).map_err(broker)?;
                done += 1;
            }
        }
    }
    let _ = block_on(connection.close(200, "done".into()));
    Ok(done)
}

fn command_limit(command: &Command) -> usize {
    match command {
        Command::List { limit } | Command::Replay { limit, .. } => *limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_the_two_commands_and_their_options() {
        assert_eq!(parse(&args("list")), Ok(Command::List { limit: 1000 }));
        assert_eq!(
            parse(&args("list --limit 5")),
            Ok(Command::List { limit: 5 })
        );
        assert_eq!(
            parse(&args("replay --code product_limit_reached")),
            Ok(Command::Replay {
                code: Some("product_limit_reached".to_owned()),
                limit: 1000
            })
        );
        for bad in [
            "",
            "drop",
            "list --limit 0",
            "list --limit",
            "list --code x",
            "replay --nope 1",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
