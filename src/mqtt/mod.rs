//! The door on an MQTT broker: decisions and door state out, signed commands and the building's
//! gallery in, Home Assistant discovery. Nothing here ever delays a decision or the relay.

pub mod command;
pub mod discovery;
mod link;
pub mod remote;

pub use link::{Incoming, LinkError, MqttLink};
pub use remote::{Remote, RemoteParts};

use crate::config::Config;

/// Where the broker is, from `mqtt.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Broker {
    /// Parses `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]` (8883); an IPv6
    /// address goes in brackets. Credentials belong in `mqtt.username`/`password`, not the URL.
    pub fn parse(url: &str) -> Result<Broker, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(format!("must start with mqtt:// or mqtts://, not {url:?}"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('@') {
            return Err("must not carry credentials: use mqtt.username and mqtt.password".into());
        }
        if authority.contains(['/', '?', '#']) {
            return Err(format!("must be scheme://host[:port] only, not {url:?}"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("has an unclosed IPv6 bracket: {url:?}"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("has no host: {url:?}"));
        }
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("has a bad port {port:?}"))?,
            None if tls => 8883,
            None => 1883,
        };
        Ok(Broker {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

/// The topics of one door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub event: String,
    pub door: String,
    pub stats: String,
    pub availability: String,
    pub command: String,
    pub gallery: String,
}

impl Topics {
    pub fn new(prefix: &str, door_id: &str) -> Topics {
        let base = format!("{prefix}/{door_id}");
        Topics {
            event: format!("{base}/event"),
            door: format!("{base}/door"),
            stats: format!("{base}/stats"),
            availability: format!("{base}/availability"),
            command: format!("{base}/command"),
            gallery: format!("{prefix}/gallery"),
        }
    }

    pub fn of(config: &Config) -> Topics {
        Topics::new(&config.mqtt.topic_prefix, &config.mqtt.door_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let ok = [
            ("mqtt://broker", false, "broker", 1883),
            ("mqtts://broker.lan", true, "broker.lan", 8883),
            ("mqtt://127.0.0.1:1884/", false, "127.0.0.1", 1884),
            ("mqtts://[::1]:8884", true, "::1", 8884),
            ("mqtt://[fe80::1]", false, "fe80::1", 1883),
        ];
        for (url, tls, host, port) in ok {
            assert_eq!(
                Broker::parse(url).unwrap(),
                Broker {
                    tls,
                    host: host.into(),
                    port
                },
                "{url}"
            );
        }
        let bad = [
            ("http://broker", "mqtt://"),
            ("mqtt://user:pw@broker", "credentials"),
            ("mqtt://", "no host"),
            ("mqtt://broker:0", "port"),
            ("mqtt://broker:99999", "port"),
            ("mqtt://broker/topic", "host[:port] only"),
            ("mqtt://[::1", "bracket"),
        ];
        for (url, problem) in bad {
            let err = Broker::parse(url).unwrap_err();
            assert!(err.contains(problem), "{url}: {err}");
        }
    }

    #[test]
    fn topics_follow_prefix_and_door() {
        let t = Topics::new("facegate", "front");
        assert_eq!(t.event, "facegate/front/event");
        assert_eq!(t.door, "facegate/front/door");
        assert_eq!(t.availability, "facegate/front/availability");
        assert_eq!(t.command, "facegate/front/command");
        assert_eq!(t.gallery, "facegate/gallery");
    }
}
