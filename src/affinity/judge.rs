//! Judging changes against the backend pool while a run goes on, and building the run's record.
//!
//! A change of serving pod or reflective address is excused when the pool changed between the last
//! reply with the old value and the first with the new one (± the slack: the polling period, plus
//! the proxy's sync delay on a cluster). A session that leaves a pod the pool had already lost is
//! excused however late it moves (the data plane lags the pool: rules, then conntrack), and so is
//! its reflective address changing in the same reply. A change can be judged once no pool change
//! that would excuse it can still be detected: when it is older than twice the slack.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use super::{Change, ChangeKind, Done, PoolChange, during_pool_change, now_ms};
use crate::record::{
    AFFINITY_KIND, AFFINITY_VERSION, AffinityParams, AffinityRun, AffinitySample, Environment, MAX_CHANGES,
    MAX_SESSION_ROWS, PodSessions, TargetInfo,
};
use crate::storm::Stop;

/// Changes and pool changes of one run, classified as they become judgeable.
#[derive(Debug)]
pub struct Judge {
    /// The pool is watched (lab, cluster); when not, every change counts.
    pub pool_known: bool,
    slack_ms: u64,
    /// The pool now, and the names it had at the start (they get rows even when they served nothing).
    current: BTreeSet<String>,
    pub initial: Vec<String>,
    pub pool: Vec<PoolChange>,
    queue: VecDeque<Change>,
    /// (session, at_ms) of the pod changes away from a removed pod: the address change of the
    /// same reply follows it.
    left_removed: BTreeSet<(u32, u64)>,
    pub kept: Vec<Change>,
    pub dropped: u64,
    pub during_pool_change: u64,
    /// Pod and address changes while the pool was unchanged.
    pub violating: (u64, u64),
}

impl Judge {
    /// A judge for a pool of `initial` names (`None`: the pool is unknown).
    pub fn new(initial: Option<BTreeSet<String>>, slack: Duration) -> Self {
        Judge {
            pool_known: initial.is_some(),
            slack_ms: slack.as_millis() as u64,
            initial: initial.iter().flatten().cloned().collect(),
            current: initial.unwrap_or_default(),
            pool: Vec::new(),
            queue: VecDeque::new(),
            left_removed: BTreeSet::new(),
            kept: Vec::new(),
            dropped: 0,
            during_pool_change: 0,
            violating: (0, 0),
        }
    }

    pub fn push(&mut self, c: Change) {
        self.queue.push_back(c);
        if !self.pool_known {
            self.settle(true);
        }
    }

    /// The pool as read now: a change is recorded (and returned) when it differs.
    pub fn observe(&mut self, now: BTreeSet<String>) -> Option<&PoolChange> {
        if now == self.current {
            return None;
        }
        self.pool.push(PoolChange {
            at_ms: now_ms(),
            added: now.difference(&self.current).cloned().collect(),
            removed: self.current.difference(&now).cloned().collect(),
        });
        self.current = now;
        self.pool.last()
    }

    /// Judges the changes old enough (all of them when `all`).
    pub fn settle(&mut self, all: bool) {
        let horizon = now_ms().saturating_sub(2 * self.slack_ms);
        while let Some(c) = self.queue.front() {
            if !all && c.at_ms > horizon {
                break;
            }
            let mut c = self.queue.pop_front().expect("front exists");
            let left_removed = match c.kind {
                ChangeKind::Pod => {
                    let left = self
                        .pool
                        .iter()
                        .any(|p| p.at_ms <= c.at_ms + self.slack_ms && p.removed.contains(&c.old));
                    if left {
                        self.left_removed.insert((c.session, c.at_ms));
                    }
                    left
                }
                ChangeKind::Address => self.left_removed.remove(&(c.session, c.at_ms)),
            };
            c.during_pool_change =
                self.pool_known && (left_removed || during_pool_change(&c, &self.pool, self.slack_ms));
            if c.during_pool_change {
                self.during_pool_change += 1;
            } else {
                match c.kind {
                    ChangeKind::Pod => self.violating.0 += 1,
                    ChangeKind::Address => self.violating.1 += 1,
                }
            }
            if self.kept.len() < MAX_CHANGES {
                self.kept.push(c);
            } else {
                self.dropped += 1;
            }
        }
    }
}

/// What a finished run hands to [`build_record`].
pub struct Finished {
    pub tag: String,
    pub started_at: jiff::Timestamp,
    pub target: TargetInfo,
    pub params: AffinityParams,
    pub done: Done,
    pub judge: Judge,
    pub interrupted: bool,
    /// The counters as the run went (the final totals are added at the end).
    pub timeline: Vec<AffinitySample>,
}

/// The run's record: per-pod sessions (zero-session pods of a known pool included), the change log,
/// and the verdict.
pub fn build_record(f: Finished) -> AffinityRun {
    let Finished {
        tag,
        started_at,
        target,
        params,
        done,
        mut judge,
        interrupted,
        mut timeline,
    } = f;
    if timeline.last().is_none_or(|s| s.totals != done.totals) {
        let at_ms = timeline.last().map_or(0, |s| s.at_ms).max(now_ms());
        timeline.push(AffinitySample {
            at_ms,
            totals: done.totals,
        });
    }
    judge.settle(true);
    let rows = done.sessions;
    let blank = |name: &str| PodSessions {
        name: name.to_string(),
        sessions: 0,
        answered: 0,
    };
    let mut pods: BTreeMap<String, PodSessions> = judge.initial.iter().map(|n| (n.clone(), blank(n))).collect();
    for r in &rows {
        for (pod, n) in &r.pods {
            pods.entry(pod.clone()).or_insert_with(|| blank(pod)).answered += n;
        }
        if let Some(last) = &r.last_pod {
            pods.entry(last.clone()).or_insert_with(|| blank(last)).sessions += 1;
        }
    }
    let (verdict, reasons) = super::judge(params.new_connection_per_message, &done.totals, &rows, judge.violating);
    AffinityRun {
        kind: AFFINITY_KIND.into(),
        version: AFFINITY_VERSION,
        tag,
        started_at,
        duration_s: done.elapsed_s,
        target,
        sessions: params.sessions,
        params,
        session_prefix: done.prefix,
        stopped: interrupted.then_some(Stop::Interrupted),
        totals: done.totals,
        changes_during_pool_change: judge.during_pool_change,
        pool_known: judge.pool_known,
        pool_changes: judge.pool,
        pods: pods.into_values().collect(),
        changes: judge.kept,
        changes_dropped: judge.dropped,
        session_detail: if rows.len() <= MAX_SESSION_ROWS {
            rows
        } else {
            Vec::new()
        },
        timeline,
        verdict,
        reasons,
        environment: Environment::local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affinity::{SessionRow, Totals, Verdict};
    use crate::storm::Proto;

    fn change(at_ms: u64, since_ms: u64, kind: ChangeKind) -> Change {
        Change {
            at_ms,
            since_ms,
            session: 1,
            kind,
            old: "a".into(),
            new: "b".into(),
            during_pool_change: false,
        }
    }

    fn names(n: &[&str]) -> BTreeSet<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn changes_during_a_pool_change_are_excused_and_others_violate() {
        let mut j = Judge::new(Some(names(&["a", "b"])), Duration::from_millis(100));
        assert!(j.observe(names(&["a", "b"])).is_none());
        let p = j.observe(names(&["b", "c"])).unwrap().clone();
        assert_eq!((p.added, p.removed), (vec!["c".to_string()], vec!["a".to_string()]));
        let at = p.at_ms;
        // The pool changed between its last old and first new reply: excused.
        j.push(change(at + 50, at - 500, ChangeKind::Pod));
        // Long after the pool change: a violation.
        j.push(change(at + 5_000, at + 4_000, ChangeKind::Address));
        j.settle(true);
        assert_eq!(j.during_pool_change, 1);
        assert_eq!(j.violating, (0, 1));
        assert!(j.kept[0].during_pool_change && !j.kept[1].during_pool_change);
        assert_eq!(j.initial, ["a", "b"]);
    }

    #[test]
    fn leaving_a_removed_pod_is_excused_however_late_with_its_address_change() {
        let mut j = Judge::new(Some(names(&["a", "b"])), Duration::from_millis(100));
        let at = j.observe(names(&["b"])).unwrap().at_ms;
        // The data plane lagged the pool by 700 ms: the old pod answered after its removal.
        j.push(change(at + 900, at + 700, ChangeKind::Pod));
        j.push(change(at + 900, at + 700, ChangeKind::Address));
        // Another session moving off a pod still in the pool, as late: a violation.
        let mut other = change(at + 900, at + 700, ChangeKind::Pod);
        (other.session, other.old) = (2, "b".into());
        j.push(other);
        j.settle(true);
        assert_eq!(j.during_pool_change, 2);
        assert_eq!(j.violating, (1, 0));
        // A pod removed only after the move excuses nothing beyond the window.
        let mut j = Judge::new(Some(names(&["a", "b"])), Duration::from_millis(100));
        j.push(change(now_ms() - 5_000, now_ms() - 5_200, ChangeKind::Pod));
        j.observe(names(&["b"]));
        j.settle(true);
        assert_eq!(j.violating, (1, 0));
    }

    #[test]
    fn recent_changes_wait_until_no_pool_change_can_excuse_them() {
        let mut j = Judge::new(Some(names(&["a"])), Duration::from_secs(10));
        j.push(change(now_ms(), now_ms() - 1, ChangeKind::Pod));
        j.settle(false);
        assert_eq!((j.kept.len(), j.violating), (0, (0, 0)));
        j.settle(true);
        assert_eq!(j.violating, (1, 0));
    }

    #[test]
    fn with_an_unknown_pool_every_change_counts_at_once() {
        let mut j = Judge::new(None, Duration::ZERO);
        j.push(change(1, 0, ChangeKind::Pod));
        assert!(!j.pool_known);
        assert_eq!(j.violating, (1, 0));
    }

    #[test]
    fn the_record_lists_idle_pods_and_judges() {
        let mut j = Judge::new(Some(names(&["p1", "p2"])), Duration::ZERO);
        j.push(change(1, 0, ChangeKind::Pod));
        let row = SessionRow {
            session: 0,
            sent: 3,
            answered: 3,
            lost: 0,
            late: 0,
            pods: [("p1".to_string(), 3)].into(),
            last_pod: Some("p1".into()),
            last_address: None,
            streak: 3,
        };
        let totals = Totals {
            sent: 3,
            answered: 3,
            ..Totals::default()
        };
        let run = build_record(Finished {
            tag: "t".into(),
            started_at: jiff::Timestamp::UNIX_EPOCH,
            target: TargetInfo {
                address: "127.0.0.1:1".into(),
                mode: "address".into(),
                protocol: Proto::Udp,
                service: None,
                source: None,
                lab: None,
                ip_family: None,
            },
            params: AffinityParams {
                sessions: 1,
                interval_s: 1.0,
                timeout_s: 1.0,
                duration_s: None,
                new_connection_per_message: false,
                plain_udp: false,
            },
            done: Done {
                prefix: "x".into(),
                elapsed_s: 1.0,
                totals,
                sessions: vec![row],
            },
            judge: j,
            interrupted: true,
            timeline: vec![AffinitySample {
                at_ms: 1_000,
                totals: Totals {
                    sent: 2,
                    answered: 2,
                    ..Totals::default()
                },
            }],
        });
        // The timeline ends at the totals.
        assert_eq!(run.timeline.len(), 2);
        assert_eq!(run.timeline[1].totals, totals);
        assert!(run.timeline[1].at_ms >= 1_000);
        let pods: Vec<(&str, u64, u64)> = run
            .pods
            .iter()
            .map(|p| (p.name.as_str(), p.sessions, p.answered))
            .collect();
        assert_eq!(pods, [("p1", 1, 3), ("p2", 0, 0)]);
        assert_eq!(run.verdict, Verdict::Violated);
        assert_eq!(run.stopped, Some(Stop::Interrupted));
        assert_eq!(run.session_detail.len(), 1);
    }
}
