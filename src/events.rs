//! The engine's event bus: what happened to containers and images, in every object
//! namespace, for the front ends' event streams (Docker's `/events`; the CRI's
//! `GetContainerEvents` later) and for front-end housekeeping (the Docker API removes
//! a container's files when it is destroyed, whoever removed it).
//!
//! A `tokio::sync::broadcast` channel carries live events; the last [`REPLAY`] are
//! kept for `since` replays. Publishing never blocks: a subscriber that falls behind
//! loses the oldest events (and is told so), the publisher never waits.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use tokio::sync::broadcast;

/// How many past events are kept for replay: dockerd's 256 (`eventsLimit`). Each is
/// also held by the broadcast channel's slots until overwritten, and a container's
/// carry its labels (kubelet's pods have many): the daemon's memory pays for both.
pub const REPLAY: usize = 256;
/// How many events a slow subscriber may lag before it loses some.
const CHANNEL: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Container,
    Image,
    Volume,
    Network,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Container => "container",
            EventKind::Image => "image",
            EventKind::Volume => "volume",
            EventKind::Network => "network",
        }
    }
}

/// One event. `action` uses Docker's words (`create`, `start`, `die`, `kill`, `stop`,
/// `destroy`, `pull`, `tag`, `untag`, `delete`); `attributes` carry details such as
/// `exitCode`, `signal`, `name`, `image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Nanoseconds since the Unix epoch.
    pub time: i64,
    pub namespace: String,
    pub kind: EventKind,
    pub action: String,
    pub id: String,
    pub attributes: BTreeMap<String, String>,
}

impl Event {
    pub fn new(namespace: &str, kind: EventKind, action: &str, id: &str) -> Event {
        Event {
            time: crate::runtime::records::now_nanos(),
            namespace: namespace.to_string(),
            kind,
            action: action.to_string(),
            id: id.to_string(),
            attributes: BTreeMap::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> Event {
        self.attributes.insert(key.to_string(), value.into());
        self
    }
}

#[derive(Debug)]
pub struct EventBus {
    sender: broadcast::Sender<Event>,
    recent: Mutex<VecDeque<Event>>,
    /// Events published, by namespace, kind and action (the metrics' counters: exact,
    /// where a subscriber could lag and miss some).
    counts: Mutex<HashMap<(String, EventKind, String), u64>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            sender: broadcast::channel(CHANNEL).0,
            recent: Mutex::new(VecDeque::new()),
            counts: Mutex::new(HashMap::new()),
        }
    }
}

impl EventBus {
    pub fn publish(&self, event: Event) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() == REPLAY {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            // The action's word only (`exec_start: sh -c ...` is `exec_start`): a
            // bounded set of keys.
            let action = event.action.split(':').next().unwrap_or_default();
            let key = (event.namespace.clone(), event.kind, action.to_string());
            *counts.entry(key).or_default() += 1;
        }
        // No subscriber is not an error.
        let _ = self.sender.send(event);
    }

    /// The kept past events and a receiver of what comes next, taken together so that
    /// no event falls between them (one published meanwhile may appear in both; the
    /// receiver's copies older than the last replayed one are to be skipped by time).
    pub fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let receiver = self.sender.subscribe();
        (recent.iter().cloned().collect(), receiver)
    }

    /// A receiver of the events published from now on.
    /// How many events of each namespace, kind and action were published.
    pub fn counts(&self) -> Vec<((String, EventKind, String), u64)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub fn receiver(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_replay_and_live_events() {
        let bus = EventBus::default();
        bus.publish(Event::new("docker", EventKind::Container, "create", "a"));
        let (past, mut live) = bus.subscribe();
        assert_eq!(past.len(), 1);
        bus.publish(Event::new("docker", EventKind::Container, "start", "a").with("name", "web"));
        let event = live.recv().await.unwrap();
        assert_eq!(event.action, "start");
        assert_eq!(event.attributes["name"], "web");
        for i in 0..REPLAY + 10 {
            bus.publish(Event::new(
                "docker",
                EventKind::Image,
                "pull",
                &i.to_string(),
            ));
        }
        assert_eq!(bus.subscribe().0.len(), REPLAY);
    }
}
