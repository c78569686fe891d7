//! The zones run over any backend: a client on every node (or in every zone) storms the
//! Service's clusterIP, once or every `--watch` interval; each cycle reads the Service and its
//! EndpointSlices again for kube-proxy's expectation, and the engine ([`crate::zones`]) judges
//! and builds the record. An interrupt stops the agents; what was measured is kept.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::agents::{AgentSet, check, no_result};
use super::{Interrupt, SaveTo, environment, target_info};
use crate::agent::{Output, Request, StormResult};
use crate::backend::{Backend, From, Path};
use crate::record::{Environment, Price, ZonesCycle, ZonesParams, ZonesRun};
use crate::storm::{Proto, Stop, StormConfig};
use crate::zones::{Measured, Part, Placed, build, cycle, expect};

/// What a zones run does.
#[derive(Debug, Clone)]
pub struct ZonesJob {
    /// One client per zone (else one per node).
    pub per_zone: bool,
    /// Each source's storm (`target` and `session` are set per source); `fetch_bytes` for
    /// `--bytes`.
    pub storm: StormConfig,
    pub prices: Vec<Price>,
    /// Connections per second the cost is projected to a month at.
    pub rate: Option<f64>,
    /// With `cycles` > 1: a cycle starts every `interval`.
    pub interval: Option<Duration>,
    pub cycles: u32,
    pub save: SaveTo,
    /// Say on stderr what is about to be stormed.
    pub announce: bool,
}

impl ZonesJob {
    fn params(&self) -> ZonesParams {
        ZonesParams {
            conns_per_source: self.storm.conns,
            sources: if self.per_zone { "per-zone" } else { "per-node" }.into(),
            parallel: self.storm.parallel,
            timeout_s: self.storm.timeout.as_secs_f64(),
            bytes: self.storm.fetch_bytes,
            rate: self.rate,
            watch_interval_s: self.interval.map(|d| d.as_secs_f64()),
            cycles: self.cycles,
        }
    }
}

/// One cycle's storms: every source at once. `None` for a source the interrupt left without a
/// result.
async fn storms<B: Backend>(
    backend: &B,
    jobs: Vec<(crate::backend::Source, Request)>,
    interrupt: &Interrupt,
) -> Result<Vec<Option<StormResult>>> {
    let mut agents = AgentSet::start(backend, jobs)?;
    let mut results: Vec<Option<StormResult>> = vec![None; agents.sources.len()];
    let mut stopping = interrupt.is_set();
    if stopping {
        agents.interrupt();
    }
    loop {
        tokio::select! {
            line = agents.next() => match line {
                Some((i, line)) => match check(&agents.sources[i], line)? {
                    Output::Progress { .. } => {}
                    Output::Storm(r) => results[i] = Some(r),
                    other => bail!("the storm agent in {} sent {other:?}", agents.sources[i].name),
                },
                None => break,
            },
            () = interrupt.wait(), if !stopping => {
                stopping = true;
                eprintln!("svclb: interrupted: finishing connections in flight, then saving what was measured");
                agents.interrupt();
            }
        }
    }
    let sources = agents.sources.clone();
    let last = agents.finish().await;
    for ((s, r), last) in sources.iter().zip(&results).zip(&last) {
        if r.is_none() && !stopping {
            return Err(no_result(s, last));
        }
    }
    Ok(results)
}

/// Runs `job` on `backend`; `on_cycle` gets each cycle's line as it ends (the watch output).
pub async fn run<B: Backend>(
    backend: &B,
    job: &ZonesJob,
    interrupt: &Interrupt,
    on_cycle: &mut dyn FnMut(&ZonesCycle),
) -> Result<ZonesRun> {
    let from = From::Nodes { per_zone: job.per_zone };
    let plan = backend.plan(&from, &Path::ClusterIp, Proto::Tcp)?;
    if plan.sources.is_empty() {
        bail!("no node has a client pod to storm from: `kubectl svclb deploy` (its pods are the clients)");
    }
    let address = match job.storm.fetch_bytes {
        Some(_) => plan
            .http
            .ok_or_else(|| anyhow::anyhow!("the Service has no HTTP port for --bytes (/bytes?n=): drop --bytes"))?,
        None => plan.address,
    };
    let meta = backend.meta();
    let placed: Vec<Placed> = plan
        .sources
        .iter()
        .map(|s| Placed {
            name: s.name.clone(),
            node: s.node.clone(),
            zone: s.zone.clone(),
        })
        .collect();
    if job.announce {
        eprintln!(
            "svclb: {} connection(s) from each of {} source(s) ({}) to {address}{}",
            job.storm.conns,
            placed.len(),
            if job.per_zone { "one per zone" } else { "one per node" },
            if job.cycles > 1 {
                format!(", {} cycles", job.cycles)
            } else {
                String::new()
            }
        );
    }
    let started_at = jiff::Timestamp::now();
    let t0 = Instant::now();
    let mut parts: Vec<Vec<Part>> = vec![Vec::new(); placed.len()];
    let mut lines = Vec::new();
    let mut stopped = None;
    let mut view = backend.service_view().await?;
    for n in 1..=job.cycles {
        let expectations: Vec<_> = placed.iter().map(|s| expect(&view, &s.node, &s.zone)).collect();
        let requests = plan
            .sources
            .iter()
            .map(|s| {
                let storm = StormConfig {
                    target: address,
                    session: format!("{:08x}", rand::random::<u32>()),
                    ..job.storm.clone()
                };
                (s.clone(), Request::Storm(storm))
            })
            .collect();
        let results = storms(backend, requests, interrupt).await?;
        let mut this = Vec::new();
        let mut this_sources = Vec::new();
        for ((i, r), e) in results.into_iter().enumerate().zip(expectations) {
            let Some(r) = r else { continue };
            stopped = match (stopped, r.stopped) {
                (Some(Stop::Interrupted), _) | (_, Some(Stop::Interrupted)) => Some(Stop::Interrupted),
                (s, t) => s.or(t),
            };
            let part = Part {
                expectation: e,
                attempted: r.attempted,
                ok: r.ok,
                failures: r.failures,
                backends: r.backends,
            };
            this.push(part.clone());
            this_sources.push(placed[i].clone());
            parts[i].push(part);
        }
        let line = cycle(&view, n, t0.elapsed().as_secs_f64(), &this_sources, &this);
        if job.cycles > 1 {
            on_cycle(&line);
            lines.push(line);
        }
        if interrupt.is_set() {
            stopped = Some(Stop::Interrupted);
            break;
        }
        if n < job.cycles {
            let next = t0 + job.interval.unwrap_or_default() * n;
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                () = interrupt.wait() => {
                    stopped = Some(Stop::Interrupted);
                    break;
                }
            }
            view = backend.service_view().await?;
        }
    }
    let info = target_info(&meta, address, &from, &Path::ClusterIp, Proto::Tcp, &plan.sources);
    let mut env = Environment::local();
    environment(&mut env, meta);
    Ok(build(Measured {
        tag: job.save.tag("zones", started_at),
        started_at,
        duration_s: t0.elapsed().as_secs_f64(),
        target: info,
        params: job.params(),
        view: &view,
        sources: placed.into_iter().zip(parts).collect(),
        cycles: lines,
        prices: job.prices.clone(),
        stopped,
        environment: env,
    }))
}

#[cfg(test)]
mod tests {
    //! The cluster flow against the in-memory API: sources per zone from the pods' nodes,
    //! kube-proxy's reasons from the EndpointSlices, storm agents run locally (the real binary)
    //! against one loopback server standing in for the clusterIP.
    use serde_json::json;

    use super::*;
    use crate::backend::kube::{KubeBackend, LocalRun};
    use crate::cluster::fake::{self, FakeApi, Pods};
    use crate::cluster::manifests::TSERVER;
    use crate::record::Locality;
    use crate::stats::Verdict;
    use crate::testing::{local_target, serve};

    /// Two nodes in two zones, a tserver pod on each, the clusterIP on loopback; the
    /// EndpointSlice's zone hints as given.
    async fn target(cluster_ip: &str, hint_b: &[&str]) -> KubeBackend<LocalRun, LocalRun> {
        let api = FakeApi::new(Pods::Ready);
        api.put(fake::node("node-1", "zone-a", "127.78.0.1"));
        api.put(fake::node("node-2", "zone-b", "127.78.0.2"));
        api.put(fake::pod("svclb-tserver-a1", TSERVER, "node-1", "10.244.1.10", true));
        api.put(fake::pod("svclb-tserver-b1", TSERVER, "node-2", "10.244.2.10", true));
        api.put(fake::service(
            "ClusterIP",
            cluster_ip,
            json!({"trafficDistribution": "PreferSameZone"}),
            None,
        ));
        api.put(fake::slice(&[
            ("svclb-tserver-a1", "10.244.1.10", "zone-a", &["zone-a"]),
            ("svclb-tserver-b1", "10.244.2.10", "zone-b", hint_b),
        ]));
        local_target(&api, TSERVER).await
    }

    fn job() -> ZonesJob {
        ZonesJob {
            per_zone: true,
            storm: StormConfig {
                target: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                proto: Proto::Tcp,
                conns: 200,
                parallel: 20,
                rate: None,
                timeout: Duration::from_secs(2),
                deadline: None,
                srccidr: None,
                graceful_close: false,
                session: String::new(),
                fetch_bytes: None,
            },
            prices: Vec::new(),
            rate: None,
            interval: None,
            cycles: 1,
            save: SaveTo {
                tag: None,
                dir: "saves".into(),
                no_save: true,
            },
            announce: false,
        }
    }

    #[tokio::test]
    async fn reasons_come_from_the_endpoint_slices() {
        // Only a1 answers (it is the clusterIP here), so zone-b's client is served in zone-a.
        let server = serve("127.78.1.10:5001", None, "svclb-tserver-a1");
        let t = target("127.78.1.10", &[]).await;
        let r = run(&t, &job(), &Interrupt::default(), &mut |_| {}).await.unwrap();
        let sources: Vec<(&str, &str, Locality, &str)> = r
            .sources
            .iter()
            .map(|s| (s.name.as_str(), s.zone.as_str(), s.locality, s.why.as_str()))
            .collect();
        let why = "using all endpoints: endpoint svclb-tserver-b1 has no zone hint";
        assert_eq!(
            sources,
            [
                ("svclb-tserver-a1", "zone-a", Locality::Any, why),
                ("svclb-tserver-b1", "zone-b", Locality::Any, why)
            ]
        );
        assert_eq!((r.ok, r.cross_zone_conns), (400, 200));
        assert_eq!(r.target.mode, "pod");
        assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.reasons);

        // Every endpoint hinted: zone-b's client must stay in zone-b, and it did not.
        let t = target("127.78.1.10", &["zone-b"]).await;
        let r = run(&t, &job(), &Interrupt::default(), &mut |_| {}).await.unwrap();
        server.abort();
        assert_eq!(r.sources[1].why, "endpoints hinted for zone zone-b");
        assert_eq!(r.sources[1].expected, ["svclb-tserver-b1"]);
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(
            r.reasons,
            [
                "svclb-tserver-b1 on node-2 (zone-b): 200 of 200 connections left, though kube-proxy keeps them in zone-b (endpoints hinted for zone zone-b)"
            ]
        );
    }
}
