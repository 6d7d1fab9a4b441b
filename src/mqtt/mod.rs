//! The door on an MQTT broker: decisions and door state out, signed commands and the building's
//! gallery in, Home Assistant discovery. Nothing here ever delays a decision or the relay.

pub mod command;
pub mod discovery;
mod link;
pub mod remote;

pub use link::{Incoming, LinkError, MqttLink};
pub use remote::{Remote, RemoteParts};

pub use crate::config::Broker;

use crate::config::Config;

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
    fn topics_follow_prefix_and_door() {
        let t = Topics::new("facegate", "front");
        assert_eq!(t.event, "facegate/front/event");
        assert_eq!(t.door, "facegate/front/door");
        assert_eq!(t.availability, "facegate/front/availability");
        assert_eq!(t.command, "facegate/front/command");
        assert_eq!(t.gallery, "facegate/gallery");
    }
}
