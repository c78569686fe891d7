//! The lab's pods as a Deployment's controllers would drive them, for `disruption`: a deleted
//! pod replaced at once (its ReplicaSet), a rolling restart (the Deployment controller's
//! `maxSurge`/`maxUnavailable` steps), a drained node (its pods evicted, their replacements
//! placed elsewhere). Every pod goes through the lab's own lifecycle (ready after its server
//! answers and the ready delay; terminating, not serving, removed on deletion, per node after
//! its sync delay), and each call returns when every node applied the last change, with one
//! timeline of all of it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Lab, LabTiming, Timeline};

/// How long a deletion may take to mark its pods terminating.
const MARK_TIMEOUT: Duration = Duration::from_secs(30);

/// A rolling update's step sizes, as the Deployment controller computes them from the
/// defaults (`maxSurge` 25% rounded up, `maxUnavailable` 25% rounded down; both 0 → one
/// unavailable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rollout {
    pub max_surge: usize,
    pub max_unavailable: usize,
}

impl Rollout {
    pub fn for_replicas(n: usize) -> Rollout {
        let (max_surge, max_unavailable) = (n.div_ceil(4), n / 4);
        if max_surge == 0 && max_unavailable == 0 {
            Rollout {
                max_surge: 0,
                max_unavailable: 1,
            }
        } else {
            Rollout {
                max_surge,
                max_unavailable,
            }
        }
    }
}

/// One step of a rolling update: old pods to delete now, new pods to add now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutStep {
    pub delete: usize,
    pub add: usize,
}

impl Rollout {
    /// The next step for `replicas` wanted, with `old` old pods left (not terminating),
    /// `created` new pods made and `ready` of them ready: scale the old ReplicaSet down as far
    /// as availability allows (`replicas - maxUnavailable` available), the new one up as far as
    /// the surge allows (`replicas + maxSurge` pods), as `rolling.go` does.
    pub fn step(&self, replicas: usize, old: usize, created: usize, ready: usize) -> RolloutStep {
        let min_available = replicas.saturating_sub(self.max_unavailable);
        let delete = (old + ready).saturating_sub(min_available).min(old);
        let total = old - delete + created;
        let add = (replicas + self.max_surge)
            .saturating_sub(total)
            .min(replicas.saturating_sub(created));
        RolloutStep { delete, add }
    }
}

/// The names of the lab's pods that are not terminating, oldest first.
fn live(lab: &Lab) -> Vec<String> {
    lab.pods()
        .iter()
        .filter(|p| !p.conditions.terminating)
        .map(|p| p.name.clone())
        .collect()
}

/// Deletes `pods` in a thread of its own (a deletion returns only once they are removed) and
/// waits until they are marked terminating, so that a scale started next counts without them.
fn delete_in_background(name: &str, pods: Vec<String>, timing: LabTiming) -> Result<JoinHandle<Result<Timeline>>> {
    let lab = name.to_string();
    let marked = pods.clone();
    let handle = std::thread::Builder::new()
        .name("lab-delete".into())
        .spawn(move || Lab::open(&lab)?.delete_pods_with(&pods, &timing))
        .context("cannot start a thread")?;
    let t0 = Instant::now();
    loop {
        let lab = Lab::open(name)?;
        let pending = marked
            .iter()
            .any(|m| lab.pods().iter().any(|p| &p.name == m && !p.conditions.terminating));
        if !pending || handle.is_finished() {
            return Ok(handle);
        }
        if t0.elapsed() > MARK_TIMEOUT {
            bail!(
                "the deletion of {} did not start within {}s",
                marked.join(", "),
                MARK_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Joins deletions, adding their timelines to `tl`; the first error wins.
fn join(deletions: Vec<JoinHandle<Result<Timeline>>>, tl: &mut Timeline) -> Result<()> {
    let mut first = None;
    for d in deletions {
        match d.join() {
            Ok(Ok(t)) => tl.absorb(t),
            Ok(Err(e)) => first = first.or(Some(e)),
            Err(_) => first = first.or(Some(anyhow::anyhow!("a deletion thread panicked"))),
        }
    }
    first.map_or(Ok(()), Err)
}

impl Lab {
    /// Deletes `pod` as [`Lab::delete_pod_with`] and, as its ReplicaSet would, adds a
    /// replacement at once (ready after its server answers and `timing.ready_delay`).
    pub fn replace_pod(&mut self, pod: &str, timing: &LabTiming) -> Result<Timeline> {
        self.reload()?;
        let lab = self.name().to_string();
        if !self.pods().iter().any(|p| p.name == pod && !p.conditions.terminating) {
            bail!("no running pod named {pod} in lab {lab}; see `kubectl svclb lab status --name {lab}`");
        }
        let replicas = live(self).len();
        let mut tl = Timeline::new(Instant::now());
        let deletion = delete_in_background(&lab, vec![pod.to_string()], *timing)?;
        let added = self.scale_with(replicas, timing);
        let deleted = join(vec![deletion], &mut tl);
        tl.absorb(added?);
        deleted?;
        self.reload()?;
        Ok(tl)
    }

    /// Evicts every pod of `node` (graceful deletions) and, as their ReplicaSet and the
    /// scheduler would, places replacements on the other nodes: the node counts as cordoned for
    /// this call (no new pod goes there), and is schedulable again afterwards.
    pub fn drain_node(&mut self, node: &str, timing: &LabTiming) -> Result<Timeline> {
        self.reload()?;
        let lab = self.name().to_string();
        if !self.nodes().iter().any(|n| n.name == node) {
            bail!("no node named {node} in lab {lab}; see `kubectl svclb lab status --name {lab}`");
        }
        let on_node: Vec<String> = self
            .pods()
            .iter()
            .filter(|p| p.node == node && !p.conditions.terminating)
            .map(|p| p.name.clone())
            .collect();
        let replicas = live(self).len();
        let mut tl = Timeline::new(Instant::now());
        if on_node.is_empty() {
            return Ok(tl);
        }
        let deletion = delete_in_background(&lab, on_node, *timing)?;
        let added = self.scale_avoiding(replicas, timing, &[node.to_string()]);
        let deleted = join(vec![deletion], &mut tl);
        tl.absorb(added?);
        deleted?;
        self.reload()?;
        Ok(tl)
    }

    /// Replaces every pod as a Deployment's rolling update does (`kubectl rollout restart`):
    /// in [`Rollout::for_replicas`] steps, new pods become ready before old ones go beyond the
    /// unavailability allowed; old pods are deleted newest first, without waiting for their
    /// removal (a ReplicaSet does not). `stop` ends it after the step in progress (the lab
    /// then has old and new pods; the caller restores the count).
    pub fn rollout_restart(&mut self, timing: &LabTiming, stop: &AtomicBool) -> Result<Timeline> {
        self.reload()?;
        let lab = self.name().to_string();
        let mut old = live(self);
        old.reverse();
        let replicas = old.len();
        if replicas == 0 {
            bail!("lab {lab} has no pods to restart: `kubectl svclb lab scale --name {lab} --pods N`");
        }
        let plan = Rollout::for_replicas(replicas);
        let mut tl = Timeline::new(Instant::now());
        let mut deletions = Vec::new();
        let (mut created, mut ready) = (0, 0);
        let result = loop {
            if stop.load(Ordering::SeqCst) || (old.is_empty() && created == replicas) {
                break Ok(());
            }
            let step = plan.step(replicas, old.len(), created, ready);
            if step.delete == 0 && step.add == 0 {
                break Err(anyhow::anyhow!(
                    "rolling update stuck at {} old and {created} new pods",
                    old.len()
                ));
            }
            if step.delete > 0 {
                let batch: Vec<String> = old.drain(..step.delete).collect();
                match delete_in_background(&lab, batch, *timing) {
                    Ok(d) => deletions.push(d),
                    Err(e) => break Err(e),
                }
            }
            if step.add > 0 {
                match self.scale_with(old.len() + created + step.add, timing) {
                    Ok(t) => tl.absorb(t),
                    Err(e) => break Err(e),
                }
                created += step.add;
                ready += step.add;
            }
        };
        let joined = join(deletions, &mut tl);
        result.and(joined)?;
        self.reload()?;
        Ok(tl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays a rolling update with ready-at-once pods: (old left, new made) after each step.
    fn play(replicas: usize) -> Vec<(usize, usize, usize)> {
        let plan = Rollout::for_replicas(replicas);
        let (mut old, mut created) = (replicas, 0);
        let mut out = Vec::new();
        while !(old == 0 && created == replicas) {
            let s = plan.step(replicas, old, created, created);
            assert!(s.delete + s.add > 0, "stuck at {old} old, {created} new");
            old -= s.delete;
            created += s.add;
            // Never more than replicas + surge, never fewer available than replicas - unavailable
            // (the new pods count once ready: after the step).
            assert!(old + created <= replicas + plan.max_surge);
            out.push((s.delete, old, created));
        }
        out
    }

    #[test]
    fn rolling_steps_follow_the_deployment_defaults() {
        assert_eq!(
            Rollout::for_replicas(4),
            Rollout {
                max_surge: 1,
                max_unavailable: 1
            }
        );
        assert_eq!(
            Rollout::for_replicas(1),
            Rollout {
                max_surge: 1,
                max_unavailable: 0
            }
        );
        assert_eq!(Rollout::for_replicas(10).max_surge, 3);
        assert_eq!(Rollout::for_replicas(10).max_unavailable, 2);
        // 3 replicas: surge 1, none unavailable: one new pod, then one old out, and so on.
        assert_eq!(play(3), [(0, 3, 1), (1, 2, 2), (1, 1, 3), (1, 0, 3)]);
        // 6: surge 2, one unavailable: one old out at once, three new, then the rest.
        assert_eq!(play(6), [(1, 5, 3), (3, 2, 6), (2, 0, 6)]);
        assert_eq!(play(1), [(0, 1, 1), (1, 0, 1)]);
    }
}
