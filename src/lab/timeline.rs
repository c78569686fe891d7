//! What happened to endpoints and nodes' rules during a change, on one time axis: the lab's
//! endpoint events (ready, terminating, not serving, removed) and when each node's kube-proxy
//! applied a rules generation. A caller running traffic at the same time (a disruption run)
//! places them on its own axis from [`Timeline::start`].

use std::fmt;
use std::time::{Duration, Instant};

/// An endpoint's step through its life, as the EndpointSlice shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EndpointEvent {
    /// Its server answers (and the ready delay has passed): ready and serving.
    Ready,
    /// Deleted: not ready; serving while its server drains.
    Terminating,
    /// Its server closed its listeners: no longer serving.
    NotServing,
    /// Gone from the EndpointSlice (its server exited or was killed).
    Removed,
}

impl fmt::Display for EndpointEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointEvent::Ready => "ready",
            EndpointEvent::Terminating => "terminating",
            EndpointEvent::NotServing => "not-serving",
            EndpointEvent::Removed => "removed",
        })
    }
}

/// One endpoint event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Since [`Timeline::start`].
    pub at: Duration,
    pub pod: String,
    pub event: EndpointEvent,
}

/// A node's kube-proxy applied rules generation `generation` (its rules and its conntrack
/// cleanup are done).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSync {
    /// Since [`Timeline::start`].
    pub at: Duration,
    pub node: String,
    pub generation: u64,
}

/// The events of one change, in order.
#[derive(Clone, Debug)]
pub struct Timeline {
    pub start: Instant,
    pub events: Vec<Event>,
    pub syncs: Vec<NodeSync>,
}

impl Timeline {
    pub fn new(start: Instant) -> Timeline {
        Timeline {
            start,
            events: Vec::new(),
            syncs: Vec::new(),
        }
    }

    /// Records `event` of every pod in `pods`, seen at `seen`.
    pub(super) fn push<'a>(&mut self, pods: impl IntoIterator<Item = &'a str>, event: EndpointEvent, seen: Instant) {
        let at = seen.saturating_duration_since(self.start);
        for pod in pods {
            self.events.push(Event {
                at,
                pod: pod.to_string(),
                event,
            });
        }
    }

    /// Adds node syncs and keeps them in time order.
    pub(super) fn add_syncs(&mut self, syncs: impl IntoIterator<Item = NodeSync>) {
        self.syncs.extend(syncs);
        self.syncs.sort_by_key(|s| s.at);
    }

    /// Takes in the events and syncs of `other` (another change, e.g. one made at the same time
    /// from another thread), placed on this timeline's axis; events stay in time order.
    pub fn absorb(&mut self, other: Timeline) {
        let shift = |at: Duration| (other.start + at).saturating_duration_since(self.start);
        for e in other.events {
            self.events.push(Event { at: shift(e.at), ..e });
        }
        self.events.sort_by_key(|e| e.at);
        let syncs: Vec<NodeSync> = other
            .syncs
            .into_iter()
            .map(|s| NodeSync { at: shift(s.at), ..s })
            .collect();
        self.add_syncs(syncs);
    }

    /// When `pod` went through `event`.
    pub fn at(&self, pod: &str, event: EndpointEvent) -> Option<Duration> {
        self.events
            .iter()
            .find(|e| e.pod == pod && e.event == event)
            .map(|e| e.at)
    }

    /// When the last node applied the last change.
    pub fn applied(&self) -> Option<Duration> {
        self.syncs.iter().map(|s| s.at).max()
    }

    /// The pods the events are about, in the order they first appear.
    pub fn pods(&self) -> Vec<&str> {
        let mut pods: Vec<&str> = Vec::new();
        for e in &self.events {
            if !pods.contains(&e.pod.as_str()) {
                pods.push(&e.pod);
            }
        }
        pods
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(ms: u64, node: &str, generation: u64) -> NodeSync {
        NodeSync {
            at: Duration::from_millis(ms),
            node: node.into(),
            generation,
        }
    }

    #[test]
    fn events_keep_their_order_and_are_found_per_pod() {
        let mut t = Timeline::new(Instant::now());
        t.push(["pod-002", "pod-001"], EndpointEvent::Terminating, Instant::now());
        std::thread::sleep(Duration::from_millis(5));
        t.push(["pod-001"], EndpointEvent::NotServing, Instant::now());
        t.push(["pod-001"], EndpointEvent::Removed, Instant::now());
        assert_eq!(t.pods(), ["pod-002", "pod-001"]);
        let term = t.at("pod-001", EndpointEvent::Terminating).unwrap();
        let not_serving = t.at("pod-001", EndpointEvent::NotServing).unwrap();
        assert!(not_serving >= term + Duration::from_millis(5));
        assert!(t.at("pod-001", EndpointEvent::Removed).unwrap() >= not_serving);
        assert_eq!(t.at("pod-002", EndpointEvent::Removed), None);
        assert_eq!(EndpointEvent::NotServing.to_string(), "not-serving");
    }

    #[test]
    fn a_timeline_absorbs_another_on_its_own_axis() {
        let t0 = Instant::now();
        let mut a = Timeline::new(t0);
        a.push(["pod-1"], EndpointEvent::Terminating, t0 + Duration::from_millis(100));
        a.push(["pod-1"], EndpointEvent::Removed, t0 + Duration::from_millis(900));
        let mut b = Timeline::new(t0 + Duration::from_millis(300));
        b.push(["pod-2"], EndpointEvent::Ready, t0 + Duration::from_millis(500));
        b.add_syncs([sync(250, "node1", 7)]);
        a.absorb(b);
        let got: Vec<(u64, &str)> = a
            .events
            .iter()
            .map(|e| (e.at.as_millis() as u64, e.pod.as_str()))
            .collect();
        assert_eq!(got, [(100, "pod-1"), (500, "pod-2"), (900, "pod-1")]);
        assert_eq!(a.syncs[0].at, Duration::from_millis(550));
        // One that started before: its early events are at the start, not before it.
        let mut c = Timeline::new(t0 + Duration::from_secs(1));
        c.absorb(a);
        assert_eq!(c.events[0].at, Duration::ZERO);
    }

    #[test]
    fn node_syncs_are_sorted_and_the_last_one_is_when_all_applied() {
        let mut t = Timeline::new(Instant::now());
        assert_eq!(t.applied(), None);
        t.add_syncs([sync(30, "node2", 4), sync(10, "node1", 4)]);
        t.add_syncs([sync(20, "node1", 5)]);
        let order: Vec<(&str, u64)> = t.syncs.iter().map(|s| (s.node.as_str(), s.generation)).collect();
        assert_eq!(order, [("node1", 4), ("node1", 5), ("node2", 4)]);
        assert_eq!(t.applied(), Some(Duration::from_millis(30)));
    }
}
