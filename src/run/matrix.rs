//! The matrix run over a [`MatrixPlace`]: for each Service variant the backend applies it, then
//! every source's agent probes all of its cells at once (both protocols, bounded), the engine
//! ([`crate::matrix`]) judges each cell, and inconclusive cells that expected a connection are
//! probed again, up to `attempts` rounds. The Service is restored afterwards, also after an
//! error or an interrupt (which stops the agents and keeps what was measured).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use regex::Regex;

use super::agents::{AgentSet, check, no_result};
use super::open::Opened;
use super::{Interrupt, SaveTo, environment};
use crate::agent::{Output, Probe, ProbesRequest, Request, StormResult};
use crate::backend::kube::matrix::{KubeMatrix, MatrixOptions};
use crate::backend::kube::{AgentRunner, KubeBackend};
use crate::backend::{Applied, MatrixPlace, Source};
use crate::matrix::{self, Cluster, Expect, IcmpBudget, Measured, Observed, PortCursor, Variant};
use crate::record::{
    Environment, Mark, MatrixCell, MatrixParams, MatrixRun, MatrixScenario, MatrixSource, MatrixTarget, TargetInfo,
    TargetKind,
};
use crate::storm::{Proto, Stop, StormConfig};

/// What a matrix run does.
#[derive(Debug, Clone)]
pub struct MatrixJob {
    pub test: Option<Regex>,
    pub protos: Vec<Proto>,
    /// Connections per cell and round.
    pub conns: u64,
    /// Rounds at most for an inconclusive cell.
    pub attempts: u32,
    pub timeout: Duration,
    /// Cells in flight at most per source.
    pub parallel: usize,
    pub save: SaveTo,
    /// Say on stderr what runs.
    pub announce: bool,
}

/// Hairpin: enough connections that the pod draws itself among its `n` endpoints (missing it
/// with 3n tries has a chance of about e^-3; the cell is then inconclusive and measured again).
fn hairpin_conns(conns: u64, n: usize) -> u64 {
    conns.max(3 * n as u64).min(1000)
}

/// Headless: at least one connection to every address the name gives (the agent spreads them
/// evenly over the addresses).
fn headless_conns(conns: u64, n: usize) -> u64 {
    conns.max(n as u64).min(1000)
}

/// One scenario's cells being measured.
struct Pending {
    variant: Variant,
    proto: Proto,
    targets: Vec<MatrixTarget>,
    /// Per source × target: the expectation, the last cell, the rounds so far.
    cells: Vec<Vec<(Expect, Option<MatrixCell>, u32)>>,
    started: Instant,
}

/// The run's sources; per source, where its next UDP probes take their source ports; and what
/// is left of the nodes' ICMP budget towards them.
struct Sources {
    list: Vec<MatrixSource>,
    ports: Vec<PortCursor>,
    icmp: IcmpBudget,
}

/// A source's storms in a round: the source, (scenario, target) of each storm, the storms.
type SourcePlan = (usize, Vec<(usize, usize)>, Vec<Probe>);

/// One round: every source probes the cells of `pending` that need it. Returns false when
/// interrupted.
async fn round<B: MatrixPlace>(
    backend: &B,
    job: &MatrixJob,
    sources: &mut Sources,
    cluster: &Cluster,
    pending: &mut [Pending],
    interrupt: &Interrupt,
) -> Result<bool> {
    // Per source: (scenario, target) of each storm, and the storms.
    let mut plan: Vec<SourcePlan> = Vec::new();
    for si in 0..sources.list.len() {
        let (mut which, mut storms) = (Vec::new(), Vec::new());
        for (pi, p) in pending.iter().enumerate() {
            for (ti, t) in p.targets.iter().enumerate() {
                let (e, cell, rounds) = &p.cells[si][ti];
                if !matrix::needs_round(e, cell.as_ref(), *rounds, job.attempts) {
                    continue;
                }
                // An expected failure is probed once: every refusal is an ICMP error, and a
                // node sends a few to one address before its ICMP rate limit turns the rest into
                // timeouts (`net.ipv4.icmp_ratelimit`, a burst of 6, then one per second).
                let conns = match e.mark {
                    Mark::Refused | Mark::Timeout => 1,
                    _ if e.hairpin => hairpin_conns(job.conns, e.allowed.len()),
                    _ if t.kind == TargetKind::Headless => headless_conns(job.conns, e.allowed.len()),
                    _ => job.conns,
                };
                which.push((pi, ti));
                let src_ports = (p.proto == Proto::Udp).then(|| sources.ports[si].take(conns));
                let storm = StormConfig {
                    target: t.address,
                    proto: p.proto,
                    conns,
                    // ClientIP affinity is remembered by the first connection's packet as it
                    // passes its endpoint's rule (`update @affinity` / `-m recent --set`): a
                    // second SYN racing it on another CPU can miss the entry and draw its own
                    // endpoint, in kube-proxy as in the lab. One at a time measures the
                    // stickiness, not that race.
                    parallel: if e.sticky { 1 } else { conns.min(50) as usize },
                    rate: None,
                    timeout: job.timeout,
                    deadline: None,
                    srccidr: None,
                    graceful_close: false,
                    session: format!("{:08x}", rand::random::<u32>()),
                    fetch_bytes: None,
                    src_ports,
                };
                storms.push(Probe {
                    storm,
                    resolve: (!t.host.is_empty()).then(|| t.host.clone()),
                });
            }
        }
        if !storms.is_empty() {
            plan.push((si, which, storms));
        }
    }
    if plan.is_empty() {
        return Ok(true);
    }
    let jobs = plan
        .iter_mut()
        .map(|(si, _, storms)| {
            let s = &sources.list[*si];
            let source = Source {
                name: s.name.clone(),
                node: s.node.clone(),
                zone: s.zone.clone(),
            };
            let req = Request::Probes(ProbesRequest {
                storms: std::mem::take(storms),
                parallel: job.parallel,
            });
            (source, req)
        })
        .collect();
    let mut agents = AgentSet::start(backend, jobs)?;
    let mut results: Vec<Option<Vec<StormResult>>> = vec![None; agents.sources.len()];
    let mut stopping = interrupt.is_set();
    if stopping {
        agents.interrupt();
    }
    loop {
        tokio::select! {
            line = agents.next() => match line {
                Some((i, line)) => match check(&agents.sources[i], line)? {
                    Output::Progress { .. } => {}
                    Output::Probes { results: r } => results[i] = Some(r),
                    other => bail!("the probe agent in {} sent {other:?}", agents.sources[i].name),
                },
                None => break,
            },
            () = interrupt.wait(), if !stopping => {
                stopping = true;
                eprintln!("svclb: interrupted: finishing the probes in flight, then restoring the Service and saving what was measured");
                agents.interrupt();
            }
        }
    }
    let started = agents.sources.clone();
    let last = agents.finish().await;
    for (((si, which, _), r), (s, last)) in plan.iter().zip(results).zip(started.iter().zip(&last)) {
        let Some(r) = r else {
            if stopping {
                continue;
            }
            return Err(no_result(s, last));
        };
        for (&(pi, ti), res) in which.iter().zip(r) {
            if res.stopped == Some(Stop::Interrupted) && res.attempted == 0 {
                continue;
            }
            let p = &mut pending[pi];
            let o = Observed {
                attempted: res.attempted,
                ok: res.ok,
                failures: res.failures,
                backends: res.backends,
                resolved: res.resolved,
                resolve_error: res.resolve_error,
            };
            let slot = &mut p.cells[*si][ti];
            slot.2 += 1;
            slot.1 = Some(matrix::judge(
                cluster,
                &sources.list[*si],
                &p.targets[ti],
                &slot.0,
                &o,
                slot.2,
            ));
        }
    }
    Ok(!stopping)
}

/// The cells of one variant's scenarios, measured until decided or out of rounds.
async fn variant<B: MatrixPlace>(
    backend: &B,
    job: &MatrixJob,
    sources: &mut Sources,
    v: &Variant,
    protos: &[Proto],
    interrupt: &Interrupt,
    out: &mut Vec<MatrixScenario>,
) -> Result<bool> {
    let applied = tokio::select! {
        a = backend.apply(v) => a?,
        () = interrupt.wait() => return Ok(false),
    };
    let cluster = match applied {
        Applied::Measure(c) => c,
        Applied::Skip(why) => {
            out.extend(protos.iter().map(|&p| matrix::skipped(v, p, why.clone())));
            backend.release().await?;
            return Ok(true);
        }
    };
    let mut pending = Vec::new();
    for &proto in protos {
        let targets = backend.matrix_targets(proto)?;
        let cells = sources
            .list
            .iter()
            .map(|s| targets.iter().map(|t| (cluster.expect(s, t), None, 0)).collect())
            .collect();
        pending.push(Pending {
            variant: v.clone(),
            proto,
            targets,
            cells,
            started: Instant::now(),
        });
    }
    // One protocol at a time, for the same ICMP rate limit.
    let mut completed = true;
    'protos: for p in pending.iter_mut() {
        // Expected refusals are ICMP errors: wait until the nodes' per-peer budget covers
        // this round's, else the ones that do not fit arrive as timeouts.
        let need = cluster.icmp_need(
            p.cells
                .iter()
                .zip(&sources.list)
                .flat_map(|(row, s)| row.iter().zip(&p.targets).map(move |((e, _, _), t)| (s, t, e))),
        );
        let wait = sources.icmp.wait(Instant::now(), need);
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = interrupt.wait() => {
                    completed = false;
                    break 'protos;
                }
            }
        }
        for attempt in 0..job.attempts {
            let finished = round(backend, job, sources, &cluster, std::slice::from_mut(p), interrupt).await?;
            if attempt == 0 {
                // Only the first round probes expected refusals (they are never retried).
                sources.icmp.spend(Instant::now(), need);
            }
            if !finished {
                completed = false;
                break 'protos;
            }
        }
    }
    for p in pending {
        let cells: Vec<MatrixCell> = p
            .cells
            .into_iter()
            .enumerate()
            .flat_map(|(si, row)| {
                let (src, targets, cluster) = (&sources.list[si], &p.targets, &cluster);
                row.into_iter().enumerate().filter_map(move |(ti, (e, cell, _))| {
                    // Not a path of this source: shown as such; not measured (interrupted): left out.
                    cell.or_else(|| {
                        (e.mark == Mark::NotApplicable)
                            .then(|| matrix::judge(cluster, src, &targets[ti], &e, &Observed::default(), 0))
                    })
                })
            })
            .collect();
        out.push(matrix::scenario(
            &p.variant,
            p.proto,
            p.targets,
            cells,
            p.started.elapsed().as_secs_f64(),
        ));
    }
    backend.release().await?;
    Ok(completed)
}

/// The run on what was opened: the lab's Service changed per scenario, or on a cluster one
/// Service per scenario ([`on_cluster`]).
pub async fn run_opened(
    opened: &Opened,
    job: &MatrixJob,
    cluster: MatrixOptions,
    interrupt: &Interrupt,
) -> Result<(MatrixRun, Option<String>)> {
    match opened {
        Opened::Lab { backend, .. } => run(backend.as_ref(), job, interrupt).await,
        Opened::Cluster { backend, .. } => on_cluster(backend.as_ref(), job, cluster, interrupt).await,
        Opened::Address(_) => bail!("matrix needs a lab or a cluster: its Service changes per scenario"),
    }
}

/// The run on a cluster ([`KubeMatrix`]): its probe pods started and waited for, the run, and
/// then its Services and pods deleted whatever happened (an error, an interrupt while the pods
/// start or during the run).
pub async fn on_cluster<P: AgentRunner, H: AgentRunner>(
    backend: &KubeBackend<P, H>,
    job: &MatrixJob,
    opts: MatrixOptions,
    interrupt: &Interrupt,
) -> Result<(MatrixRun, Option<String>)> {
    let mut place = KubeMatrix::new(backend, opts);
    let prepared = tokio::select! {
        r = place.prepare() => r,
        () = interrupt.wait() => Err(anyhow::anyhow!("interrupted while the probe pods were starting")),
    };
    let result = match prepared {
        Ok(()) => run(&place, job, interrupt).await,
        Err(e) => Err(e),
    };
    // Deletes again what the run's own restore could not: what is left is what close says.
    let left = place.close().await;
    match result {
        Ok((record, _)) => Ok((record, left)),
        Err(e) => Err(match left {
            Some(l) => e.context(format!("and {l}")),
            None => e,
        }),
    }
}

/// Runs `job` on `backend`; the Service is restored before this returns, whatever happened.
/// With the record comes why the restore failed, if it did (the record is saved first).
pub async fn run<B: MatrixPlace>(
    backend: &B,
    job: &MatrixJob,
    interrupt: &Interrupt,
) -> Result<(MatrixRun, Option<String>)> {
    let chosen = matrix::scenarios(job.test.as_ref(), &job.protos);
    if chosen.is_empty() {
        let names: Vec<String> = matrix::scenarios(None, &job.protos)
            .iter()
            .map(|(v, p)| matrix::scenario_name(v, *p))
            .collect();
        bail!(
            "--test {:?} selects no scenario: the scenarios are {}",
            job.test.as_ref().map(Regex::as_str).unwrap_or_default(),
            names.join(", ")
        );
    }
    let list = backend.matrix_sources()?;
    let ports = list.iter().map(|_| PortCursor::new(rand::random())).collect();
    let mut sources = Sources {
        list,
        ports,
        icmp: IcmpBudget::default(),
    };
    let meta = backend.meta();
    let started_at = jiff::Timestamp::now();
    let t0 = Instant::now();
    if job.announce {
        eprintln!(
            "svclb: {} scenario(s), {} source(s), {} connection(s) per cell",
            chosen.len(),
            sources.list.len(),
            job.conns
        );
    }
    let mut scenarios = Vec::new();
    let mut stopped = None;
    let mut result = Ok(());
    let variants = matrix::variants();
    for v in &variants {
        let protos: Vec<Proto> = chosen
            .iter()
            .filter(|(c, _)| c.name == v.name)
            .map(|(_, p)| *p)
            .collect();
        if protos.is_empty() {
            continue;
        }
        if interrupt.is_set() {
            stopped = Some(Stop::Interrupted);
            break;
        }
        match variant(backend, job, &mut sources, v, &protos, interrupt, &mut scenarios).await {
            Ok(true) => {}
            Ok(false) => {
                stopped = Some(Stop::Interrupted);
                break;
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let restored = backend.restore().await;
    if let Err(e) = result {
        return Err(match restored {
            Ok(()) => e,
            Err(r) => e.context(format!("and {r:#}")),
        });
    }
    let info = TargetInfo {
        address: format!("{} scenario(s)", scenarios.len()),
        mode: meta.mode.clone(),
        protocol: job.protos[0],
        service: meta.service.clone(),
        source: Some(format!("matrix ({} sources)", sources.list.len())),
        lab: meta.name.clone(),
        ip_family: meta.ip_family,
    };
    let mut env = Environment::local();
    environment(&mut env, meta);
    let record = matrix::build(Measured {
        tag: job.save.tag("matrix", started_at),
        started_at,
        duration_s: t0.elapsed().as_secs_f64(),
        target: info,
        params: MatrixParams {
            protocols: job.protos.clone(),
            test: job.test.as_ref().map(|r| r.as_str().to_string()),
            conns: job.conns,
            attempts: job.attempts,
            timeout_s: job.timeout.as_secs_f64(),
            parallel: job.parallel,
        },
        sources: sources.list,
        scenarios,
        stopped,
        notes: backend.matrix_notes(),
        environment: env,
    });
    Ok((record, restored.err().map(|e| format!("{e:#}"))))
}

#[cfg(test)]
mod tests;
