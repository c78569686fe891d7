//! `spread --lab`: the storm runs inside lab namespaces (storm agents), the results merge here.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::spread::{KnownBackend, SpreadArgs, build_record, finish};
use crate::backend::lab::LabBackend;
use crate::backend::{Agent, Backend};
use crate::lab::{Lab, LabConfig};
use crate::record::{SourceRun, SpreadRun, TargetInfo, add_buckets};
use crate::report::RunFormat;
use crate::storm::{BackendCount, Failures, Outcome, Proto, Stop, new_histogram};

/// A lab made for one run: removed when dropped (end of run, error, or Ctrl-C).
struct Ephemeral(String);

impl Drop for Ephemeral {
    fn drop(&mut self) {
        let name = &self.0;
        match crate::lab::down_by_name(name) {
            Ok(()) => eprintln!("svclb: removed lab {name}"),
            Err(e) => eprintln!("svclb: removing lab {name} failed: {e:#}; run `kubectl svclb lab down --name {name}`"),
        }
    }
}

/// Opens the named lab, the only running lab, or builds an ephemeral default one.
async fn open_lab(name: &str, interrupted: &AtomicBool) -> Result<(Lab, bool)> {
    if !name.is_empty() {
        return Ok((Lab::open(name)?, false));
    }
    // Labs this user can open (state under the labs directory); `lab list` also shows remnants.
    let running = Lab::saved();
    match running.as_slice() {
        [one] => return Ok((Lab::open(one)?, false)),
        [] => {}
        many => bail!(
            "several labs are running ({}): pick one with --lab NAME",
            many.join(", ")
        ),
    }
    let cfg = LabConfig {
        name: format!("run{}", std::process::id()),
        ..LabConfig::default()
    };
    eprintln!(
        "svclb: no lab running: building lab {} ({} nodes, {} pods) for this run",
        cfg.name, cfg.nodes, cfg.pods
    );
    let lab = tokio::task::spawn_blocking(move || Lab::up(&cfg)).await??;
    if interrupted.load(Ordering::Relaxed) {
        drop(Ephemeral(lab.name().to_string()));
        bail!("interrupted while the lab was being built; it was removed");
    }
    Ok((lab, true))
}

pub(super) fn run(args: &SpreadArgs, name: &str) -> Result<ExitCode> {
    crate::lab::require_host()?;
    if !name.is_empty() {
        crate::lab::validate_name(name)?;
    }
    super::raise_nofile();
    let rt = super::runtime(0)?;
    let (run, ephemeral) = rt.block_on(async {
        let (interrupted, signal) = super::watch_interrupt();
        let (lab, made) = open_lab(name, &interrupted).await?;
        let ephemeral = made.then(|| Ephemeral(lab.name().to_string()));
        let result = match LabBackend::new(&lab) {
            Ok(target) => storm(args, &target, signal).await,
            Err(e) => Err(e),
        };
        anyhow::Ok((result, ephemeral))
    })?;
    let run = run?;
    // The lab (if made for this run) goes before the verdict is printed.
    drop(ephemeral);
    finish(run, &args.record, args.output)
}

/// Plans the storm through the target, runs its agents (forwarding `signal` as an interrupt),
/// and merges their records exactly (shared by the lab and the cluster paths).
pub(super) async fn storm<T: Backend>(
    args: &SpreadArgs,
    target: &T,
    signal: tokio::task::JoinHandle<()>,
) -> Result<SpreadRun> {
    let proto = if args.udp { Proto::Udp } else { Proto::Tcp };
    let plan = target.plan(&args.from(), &args.path(), proto)?;
    let meta = target.meta();
    let agent_args = args.agent_args(plan.address);
    let started_at = jiff::Timestamp::now();
    let mut agents: Vec<Agent> = plan
        .sources
        .iter()
        .map(|s| Agent::start(target, s, &agent_args))
        .collect::<Result<_>>()?;
    let interrupts: Vec<_> = agents
        .iter_mut()
        .map(|a| std::mem::replace(&mut a.interrupt, Box::new(|| ())))
        .collect();
    let handles: Vec<_> = agents
        .iter_mut()
        .map(|a| tokio::spawn(std::mem::replace(&mut a.output, Box::pin(async { Ok(Vec::new()) }))))
        .collect();
    let all = async {
        let mut outs = Vec::new();
        for h in handles {
            outs.push(h.await.context("storm agent task failed")?);
        }
        anyhow::Ok(outs)
    };
    tokio::pin!(all);
    let outputs = tokio::select! {
        outs = &mut all => outs?,
        _ = signal => {
            eprintln!("svclb: interrupted: stopping the storm agents, then saving what was measured");
            for i in &interrupts { i(); }
            all.await?
        }
    };
    let mut runs = Vec::new();
    for (agent, out) in agents.iter().zip(outputs) {
        let out = out?;
        let run: SpreadRun = serde_json::from_slice(&out)
            .with_context(|| format!("storm agent in {} returned no run record", agent.source.name))?;
        runs.push((agent.source.clone(), run));
    }

    let mut latency = new_histogram();
    let mut failures = Failures::default();
    let mut backends: BTreeMap<String, BackendCount> = BTreeMap::new();
    let (mut attempted, mut ok, mut elapsed, mut stopped) = (0, 0, Duration::ZERO, None);
    let mut sources = Vec::new();
    for (source, r) in &runs {
        add_buckets(&mut latency, r.latency_histogram_us.as_deref().unwrap_or_default());
        failures.merge(&r.failed.kinds);
        attempted += r.conns;
        ok += r.ok;
        elapsed = elapsed.max(Duration::from_secs_f64(r.duration_s));
        stopped = stopped.or(r.stopped);
        for b in &r.backends {
            backends
                .entry(b.name.clone())
                .and_modify(|x| x.count += b.count)
                .or_insert_with(|| b.clone());
        }
        sources.push(SourceRun {
            name: source.name.clone(),
            node: source.node.clone(),
            zone: source.zone.clone(),
            conns: r.conns,
            ok: r.ok,
            failed: r.failed,
            backends: r.backends.clone(),
        });
    }
    if interrupted_any(&runs) {
        stopped = Some(Stop::Interrupted);
    }
    let outcome = Outcome {
        attempted,
        ok,
        failures,
        backends: backends.into_values().collect(),
        latency,
        elapsed,
        stopped,
    };
    let known: Vec<KnownBackend> = plan
        .expected
        .iter()
        .map(|e| KnownBackend {
            name: e.name.clone(),
            node: e.node.clone(),
            zone: e.zone.clone(),
        })
        .collect();
    let source = match plan.sources.as_slice() {
        [one] => one.name.clone(),
        many => format!("per-node ({} pods)", many.len()),
    };
    let info = TargetInfo {
        address: format!("{} ({})", plan.address, args.path().describe()),
        // A cluster run says where it stormed from (`pod` or `host`); a lab run says `lab`.
        mode: match (meta.mode.as_str(), args.from()) {
            ("lab", _) => meta.mode,
            (_, crate::backend::From::Host) => "host".into(),
            (_, crate::backend::From::Pods { .. }) => "pod".into(),
        },
        protocol: proto,
        service: Some(meta.service),
        source: Some(source),
        lab: meta.name,
    };
    let mut params = args.params();
    params.conns *= plan.sources.len() as u64;
    let mut record = build_record(
        args.tag(started_at),
        started_at,
        info,
        params,
        &outcome,
        &known,
        &args.criteria(),
    );
    if sources.len() > 1 {
        record.sources = sources;
    }
    record.environment.proxy_mode = meta.proxy_mode;
    record.environment.context = meta.context;
    record.environment.server_version = meta.server_version;
    if args.output == RunFormat::Table {
        eprintln!(
            "svclb: {} connection(s) from {} source(s) to {}",
            record.conns,
            plan.sources.len(),
            plan.address
        );
    }
    Ok(record)
}

fn interrupted_any(runs: &[(crate::backend::Source, SpreadRun)]) -> bool {
    runs.iter().any(|(_, r)| r.stopped == Some(Stop::Interrupted))
}
