//! Home Assistant MQTT discovery: the retained config messages that make a door appear in Home
//! Assistant (lock state, lockdown, door contact and its alarms, last person let in, counters) with
//! its availability. Pure.

use serde_json::{json, Value};

use super::Topics;

/// One retained discovery message.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryMessage {
    pub topic: String,
    pub payload: Value,
}

/// The discovery configs of one door. Entities read the retained `door` and `stats` topics; the
/// door contact and its problem sensor (forced or held open) only when `door_contact` is fitted.
pub fn messages(
    discovery_prefix: &str,
    door_id: &str,
    topics: &Topics,
    door_contact: bool,
) -> Vec<DiscoveryMessage> {
    let node = format!("facegate_{door_id}");
    let device = json!({
        "identifiers": [node],
        "name": format!("facegate {door_id}"),
        "manufacturer": "facegate",
        "model": "face recognition door",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let entity = |component: &str, object: &str, name: &str, fields: Value| {
        let mut payload = json!({
            "name": name,
            "unique_id": format!("{node}_{object}"),
            "object_id": format!("{node}_{object}"),
            "device": device,
            "availability_topic": topics.availability,
            "payload_available": "online",
            "payload_not_available": "offline",
        });
        if let (Value::Object(target), Value::Object(extra)) = (&mut payload, fields) {
            target.extend(extra);
        }
        DiscoveryMessage {
            topic: format!("{discovery_prefix}/{component}/{node}/{object}/config"),
            payload,
        }
    };
    let counter = |object: &str, name: &str, field: &str| {
        entity(
            "sensor",
            object,
            name,
            json!({
                "state_topic": topics.stats,
                "value_template": format!("{{{{ value_json.{field} }}}}"),
                "state_class": "total_increasing",
                "icon": "mdi:counter",
            }),
        )
    };
    let contact = [
        entity(
            "binary_sensor",
            "contact",
            "Door",
            json!({
                "device_class": "door",
                "state_topic": topics.door,
                "value_template": "{% if value_json.contact == 'open' %}ON{% elif value_json.contact == 'closed' %}OFF{% else %}None{% endif %}",
            }),
        ),
        entity(
            "binary_sensor",
            "door_alarm",
            "Door alarm",
            json!({
                "device_class": "problem",
                "state_topic": topics.door,
                "value_template": "{{ 'ON' if value_json.alarm else 'OFF' }}",
                "json_attributes_topic": topics.door,
                "json_attributes_template": "{{ {'alarm': value_json.alarm} | tojson }}",
            }),
        ),
    ];
    let mut messages = vec![
        // The relay as a lock sensor: HA's lock class reads "on" as unlocked. Read-only on purpose:
        // commands need an HMAC that Home Assistant does not compute.
        entity(
            "binary_sensor",
            "lock",
            "Lock",
            json!({
                "device_class": "lock",
                "state_topic": topics.door,
                "value_template": "{{ value_json.state }}",
                "payload_on": "unlocked",
                "payload_off": "locked",
            }),
        ),
        entity(
            "binary_sensor",
            "lockdown",
            "Lockdown",
            json!({
                "device_class": "safety",
                "state_topic": topics.door,
                "value_template": "{{ 'ON' if value_json.lockdown else 'OFF' }}",
            }),
        ),
        entity(
            "sensor",
            "last_person",
            "Last person let in",
            json!({
                "state_topic": topics.stats,
                "value_template": "{{ value_json.last_person or 'none' }}",
                "icon": "mdi:account-key",
            }),
        ),
        counter("granted", "Granted", "granted"),
        counter("refused", "Refused", "refused"),
        counter("dropped", "MQTT messages dropped", "dropped"),
    ];
    if door_contact {
        messages.extend(contact);
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entity_has_availability_a_unique_id_and_a_state_topic_of_this_door() {
        let topics = Topics::new("facegate", "front");
        let messages = messages("homeassistant", "front", &topics, true);
        let topics_seen: Vec<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
        assert!(topics_seen.contains(&"homeassistant/binary_sensor/facegate_front/lock/config"));
        assert!(topics_seen.contains(&"homeassistant/sensor/facegate_front/last_person/config"));
        let mut ids = std::collections::HashSet::new();
        for m in &messages {
            let p = &m.payload;
            assert_eq!(
                p["availability_topic"], "facegate/front/availability",
                "{}",
                m.topic
            );
            assert_eq!(p["payload_not_available"], "offline");
            assert!(ids.insert(p["unique_id"].as_str().unwrap().to_string()));
            let state = p["state_topic"].as_str().unwrap();
            assert!(state.starts_with("facegate/front/"), "{state}");
            assert_eq!(p["device"]["identifiers"][0], "facegate_front");
        }
        let counters: Vec<_> = messages
            .iter()
            .filter(|m| m.payload["state_class"] == "total_increasing")
            .collect();
        assert_eq!(counters.len(), 3);
        let contact = messages
            .iter()
            .find(|m| m.topic == "homeassistant/binary_sensor/facegate_front/contact/config")
            .expect("the door contact");
        assert_eq!(contact.payload["device_class"], "door");
        let alarm = messages
            .iter()
            .find(|m| m.topic == "homeassistant/binary_sensor/facegate_front/door_alarm/config")
            .expect("the forced / held problem sensor");
        assert_eq!(alarm.payload["device_class"], "problem");
    }

    #[test]
    fn a_door_without_a_contact_has_no_contact_entities() {
        let topics = Topics::new("facegate", "front");
        let messages = messages("homeassistant", "front", &topics, false);
        assert!(messages
            .iter()
            .all(|m| !m.topic.contains("/contact/") && !m.topic.contains("/door_alarm/")));
    }
}
