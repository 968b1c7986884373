//! `AMQP_URL`: the RabbitMQ connection URL, in every build (read and
//! printed without the `amqp` feature too). Like `DATABASE_URL`, it prints
//! with its password masked everywhere; [`AmqpUrl::expose`] is the one way
//! to the real text, for connecting.

use std::fmt;

use super::DatabaseUrl;

/// An AMQP 0-9-1 URL (`amqp://user:password@host:port/vhost`). Prints
/// with the password replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl(String);

impl AmqpUrl {
    /// Accepts `amqp://` URLs; the client checks the rest when the service
    /// connects. (`amqps://` needs TLS, which this build leaves out.)
    pub fn parse(url: &str) -> Option<AmqpUrl> {
        url.starts_with("amqp://").then(|| AmqpUrl(url.to_owned()))
    }

    /// The URL itself, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&DatabaseUrl::masked(&self.0))
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_prints() {
        let url = AmqpUrl::parse("amqp://app:hunter2@mq:5672/%2f").expect("amqp");
        assert_eq!(url.to_string(), "amqp://app:***@mq:5672/%2f");
        assert!(!format!("{url:?}").contains("hunter2"));
        assert_eq!(url.expose(), "amqp://app:hunter2@mq:5672/%2f");
        assert!(AmqpUrl::parse("amqps://mq").is_none());
        assert!(AmqpUrl::parse("http://mq").is_none());
    }
}
