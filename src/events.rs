//! The recent decisions kept in memory for GET /events, newest first, paged by sequence number.

use crate::sync::lock_recovering;
use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::Value;

pub(crate) struct EventRing {
    capacity: usize,
    inner: Mutex<(u64, VecDeque<(u64, Value)>)>,
}

/// One page of events and the cursor for the next (older) page.
#[derive(Debug, PartialEq)]
pub(crate) struct Page {
    pub events: Vec<Value>,
    pub next_before: Option<u64>,
}

impl EventRing {
    pub fn new(capacity: usize) -> EventRing {
        EventRing {
            capacity: capacity.max(1),
            inner: Mutex::new((0, VecDeque::new())),
        }
    }

    /// Stores an event; its sequence number is added as `seq`.
    pub fn push(&self, mut event: Value) {
        let mut guard = lock_recovering(&self.inner);
        let (next_seq, events) = &mut *guard;
        *next_seq += 1;
        if let Value::Object(map) = &mut event {
            map.insert("seq".into(), Value::from(*next_seq));
        }
        events.push_back((*next_seq, event));
        while events.len() > self.capacity {
            events.pop_front();
        }
    }

    /// Up to `limit` events with a sequence number below `before` (all when `None`), newest first.
    pub fn page(&self, limit: usize, before: Option<u64>) -> Page {
        let guard = lock_recovering(&self.inner);
        let selected: Vec<&(u64, Value)> = guard
            .1
            .iter()
            .rev()
            .filter(|(seq, _)| before.is_none_or(|b| *seq < b))
            .take(limit)
            .collect();
        let oldest = selected.last().map(|(seq, _)| *seq);
        let more = oldest.is_some_and(|o| guard.1.front().is_some_and(|(first, _)| *first < o));
        Page {
            events: selected.into_iter().map(|(_, v)| v.clone()).collect(),
            next_before: if more { oldest } else { None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pages_go_from_newest_to_oldest_and_old_events_fall_off() {
        let ring = EventRing::new(5);
        for i in 1..=7 {
            ring.push(json!({ "n": i }));
        }
        let first = ring.page(2, None);
        assert_eq!(
            first.events,
            vec![json!({"n": 7, "seq": 7}), json!({"n": 6, "seq": 6})]
        );
        assert_eq!(first.next_before, Some(6));
        let second = ring.page(10, first.next_before);
        let ns: Vec<_> = second
            .events
            .iter()
            .map(|e| e["n"].as_u64().unwrap())
            .collect();
        assert_eq!(ns, vec![5, 4, 3]);
        assert_eq!(second.next_before, None);
    }
}
