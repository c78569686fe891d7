//! The spread engine: from a storm's outcome and the backends known to exist to a judged
//! [`SpreadRun`] (zero-count backends listed, the target's view of node and zone winning over what
//! a server reports, an interrupted storm failing). The verdict itself is [`crate::stats`]'.

use crate::record::{Environment, Latency, Params, SPREAD_KIND, SPREAD_VERSION, SpreadRun, TargetInfo};
use crate::stats::{Criteria, Verdict, evaluate};
use crate::storm::{BackendCount, Outcome, Stop};

/// A backend known to exist (from a lab or a cluster), so zero-count backends can be listed.
#[derive(Debug, Clone)]
pub struct KnownBackend {
    pub name: String,
    pub node: String,
    pub zone: String,
}

/// Merges observed counts with the known backends (zero-filled) and judges them.
pub fn build_record(
    tag: String,
    started_at: jiff::Timestamp,
    target: TargetInfo,
    params: Params,
    outcome: &Outcome,
    known: &[KnownBackend],
    criteria: &Criteria,
) -> SpreadRun {
    let mut backends: Vec<BackendCount> = outcome.backends.clone();
    for k in known {
        match backends.iter_mut().find(|b| b.name == k.name) {
            // The target's view (a lab's state, the API's pod -> node -> zone) wins over what a
            // server reports: a tserver cannot read its node's zone label and reports its hostname.
            Some(b) => {
                if !k.node.is_empty() {
                    b.node.clone_from(&k.node);
                }
                if !k.zone.is_empty() {
                    b.zone.clone_from(&k.zone);
                }
            }
            None => backends.push(BackendCount {
                name: k.name.clone(),
                node: k.node.clone(),
                zone: k.zone.clone(),
                count: 0,
            }),
        }
    }
    backends.sort_by(|a, b| a.name.cmp(&b.name));
    let criteria = Criteria {
        expect_backends: criteria.expect_backends.or((!known.is_empty()).then_some(known.len())),
        ..*criteria
    };
    // Backends that must exist but never answered, when their names are unknown (--address runs):
    // listed with 0 so the tables and the frequency table show them.
    let missing = criteria.expect_backends.unwrap_or(0).saturating_sub(backends.len());
    backends.extend((1..=missing).map(|i| BackendCount {
        name: format!("<missing-{i}>"),
        node: String::new(),
        zone: String::new(),
        count: 0,
    }));
    let counts: Vec<(&str, u64)> = backends.iter().map(|b| (b.name.as_str(), b.count)).collect();
    let mut stats = evaluate(&counts, outcome.failures.total(), &criteria);
    if outcome.stopped == Some(Stop::Interrupted) {
        stats.verdict = Verdict::Fail;
        stats.reasons.push(format!(
            "interrupted after {} of {} connections",
            outcome.attempted, params.conns
        ));
    }
    SpreadRun {
        kind: SPREAD_KIND.into(),
        version: SPREAD_VERSION,
        tag,
        started_at,
        duration_s: outcome.elapsed.as_secs_f64(),
        target,
        params,
        conns: outcome.attempted,
        ok: outcome.ok,
        failed: outcome.failures.into(),
        stopped: outcome.stopped,
        backends,
        sources: Vec::new(),
        latency_ms: Latency::from_histogram(&outcome.latency),
        latency_histogram_us: None,
        stats,
        environment: Environment::local(),
    }
}
