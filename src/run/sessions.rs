//! The affinity run over any backend: one sessions agent at the source, its changes printed live
//! and judged against the backend pool, which is polled meanwhile; an interrupt stops the agent,
//! which then reports what it measured.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::agents::{AgentSet, check, no_result};
use super::{Interrupt, SaveTo, environment, target_info};
use crate::affinity::judge::{Finished, Judge, build_record};
use crate::affinity::{self, Done};
use crate::agent::{Output, Request, SessionsRequest};
use crate::backend::{Backend, From, Path};
use crate::record::{AffinityParams, AffinityRun, AffinitySample, MAX_SAMPLES};
use crate::report::live::Live;

/// What an affinity run does.
#[derive(Debug, Clone)]
pub struct SessionsJob {
    pub from: From,
    pub path: Path,
    /// The sessions (`address` and `prefix` are set for the run).
    pub config: affinity::Config,
    pub duration: Duration,
    pub stats_interval: Duration,
    pub save: SaveTo,
    /// Say on stderr what is about to run (the table output).
    pub announce: bool,
}

impl SessionsJob {
    fn params(&self) -> AffinityParams {
        let c = &self.config;
        AffinityParams {
            sessions: c.sessions,
            interval_s: c.interval.as_secs_f64(),
            timeout_s: c.timeout.as_secs_f64(),
            duration_s: Some(self.duration.as_secs_f64()),
            new_connection_per_message: c.new_connection_per_message,
            plain_udp: c.plain_udp,
        }
    }
}

/// Runs `job` on `backend` until its duration ends or `interrupt` fires.
pub async fn run<B: Backend>(
    backend: &B,
    job: &SessionsJob,
    live: &Live,
    interrupt: &Interrupt,
) -> Result<AffinityRun> {
    let plan = backend.plan(&job.from, &job.path, job.config.proto)?;
    let source = plan.sources.first().context("the plan has no source")?.clone();
    let meta = backend.meta();
    // The agent's stats lines are the record's timeline: one a second (longer runs: at most
    // MAX_SAMPLES), and at least as often as the live stats line, which is printed when due.
    let sample_every = job
        .duration
        .div_f64(MAX_SAMPLES as f64)
        .max(Duration::from_secs(1))
        .min(job.stats_interval);
    let request = Request::Sessions(SessionsRequest {
        config: affinity::Config {
            address: plan.address,
            prefix: format!("{:08x}", rand::random::<u32>()),
            ..job.config.clone()
        },
        duration: job.duration,
        stats_interval: sample_every,
    });
    let address_only = meta.mode == "address";
    if job.announce && !address_only {
        eprintln!(
            "svclb: {} {} session(s) from {} to {} ({})",
            job.config.sessions,
            job.config.proto,
            source.name,
            plan.address,
            job.path.describe()
        );
    }
    // The pool is polled as often as sessions send, within 100 ms..1 s.
    let poll_every = job
        .config
        .interval
        .clamp(Duration::from_millis(100), Duration::from_secs(1));
    let initial = if address_only {
        None
    } else {
        Some(backend.pool().await.context("cannot read the backend pool")?)
    };
    let mut judge = Judge::new(initial, backend.pool_slack(poll_every));
    let started_at = jiff::Timestamp::now();
    let mut agents = AgentSet::start(backend, vec![(source.clone(), request)])?;
    let mut poll = tokio::time::interval(poll_every);
    let (mut interrupted, mut done): (bool, Option<Done>) = (false, None);
    let mut timeline: Vec<AffinitySample> = Vec::new();
    let stats_every_ms = job.stats_interval.as_millis() as u64;
    let mut stats_printed_ms = affinity::now_ms();
    loop {
        tokio::select! {
            line = agents.next() => match line {
                Some((_, line)) => match check(&source, line)? {
                    Output::Change(c) => {
                        live.change(&c);
                        judge.push(c);
                    }
                    Output::Stats { at_ms, totals } => {
                        timeline.push(AffinitySample { at_ms, totals });
                        // Within half a sample of being due: sampling and printing tick together.
                        if at_ms + sample_every.as_millis() as u64 / 2 >= stats_printed_ms + stats_every_ms {
                            stats_printed_ms = at_ms;
                            live.stats(job.config.sessions, &totals);
                        }
                    }
                    Output::Done(d) => done = Some(d),
                    other => bail!("the sessions agent in {} sent {other:?}", source.name),
                },
                None => break,
            },
            _ = poll.tick(), if judge.pool_known => {
                if let Some(now) = backend.pool().await
                    && let Some(change) = judge.observe(now)
                {
                    live.pool(change);
                }
                judge.settle(false);
            }
            () = interrupt.wait(), if !interrupted => {
                interrupted = true;
                eprintln!("svclb: interrupted: stopping the sessions (in-flight messages get their timeout)");
                agents.interrupt();
            }
        }
    }
    let last = agents.finish().await;
    let done = done.ok_or_else(|| no_result(&source, &last[0]))?;
    let target = target_info(&meta, plan.address, &job.from, &job.path, job.config.proto, &[source]);
    let mut record = build_record(Finished {
        tag: job.save.tag("affinity", started_at),
        started_at,
        target,
        params: job.params(),
        done,
        judge,
        interrupted,
        timeline,
    });
    environment(&mut record.environment, meta);
    Ok(record)
}

#[cfg(test)]
mod tests {
    //! The cluster flow against the in-memory API, with the sessions agent run locally (the real
    //! binary, stopped through stdin) against loopback servers named like the pods.
    use serde_json::json;

    use super::*;
    use crate::affinity::Verdict;
    use crate::cluster::fake::{self, FakeApi, NS, Pods};
    use crate::cluster::manifests::{AFFINITY, TSERVER};
    use crate::report::RunFormat;
    use crate::storm::{Proto, Stop};
    use crate::testing::{local_target, serve};

    type Endpoints<'a> = &'a [(&'a str, &'a str, &'a str, &'a [&'a str])];

    const TWO: Endpoints = &[
        ("svclb-affinity-1", "10.244.1.20", "zone-a", &[]),
        ("svclb-affinity-2", "10.244.2.20", "zone-b", &[]),
    ];

    /// Two nodes; a tserver pod (agents run there) and two affinity pods; the affinity Service's
    /// clusterIP and node-1's address are loopback.
    fn api(cluster_ip: &str, node_ip: &str) -> FakeApi {
        let api = FakeApi::new(Pods::Ready);
        // Every API call as the Role of `manifests --rbac` allows it.
        api.enforce_rbac(crate::cluster::manifests::render_rbac(fake::NS).unwrap());
        api.put(fake::node("node-1", "zone-a", node_ip));
        api.put(fake::node("node-2", "zone-b", "127.78.0.2"));
        api.put(fake::pod("svclb-tserver-1", TSERVER, "node-1", "10.244.1.10", true));
        api.put(fake::pod("svclb-affinity-1", AFFINITY, "node-1", "10.244.1.20", true));
        api.put(fake::pod("svclb-affinity-2", AFFINITY, "node-2", "10.244.2.20", true));
        let spec = json!({"sessionAffinity": "ClientIP", "externalTrafficPolicy": "Local"});
        api.put(fake::for_app(
            fake::service("LoadBalancer", cluster_ip, spec, None),
            AFFINITY,
        ));
        api.put(fake::for_app(fake::slice(TWO), AFFINITY));
        api
    }

    fn job(from: From, path: Path, proto: Proto, sessions: u32, duration: Duration) -> SessionsJob {
        SessionsJob {
            from,
            path,
            config: affinity::Config {
                address: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                proto,
                sessions,
                interval: Duration::from_millis(100),
                timeout: Duration::from_millis(500),
                new_connection_per_message: false,
                plain_udp: false,
                prefix: String::new(),
            },
            duration,
            stats_interval: Duration::from_secs(10),
            save: SaveTo {
                tag: None,
                dir: "saves".into(),
                no_save: true,
            },
            announce: false,
        }
    }

    #[tokio::test]
    async fn from_pod_runs_in_a_tserver_pod_and_judges_against_endpoint_slices() {
        let server = serve("127.78.1.10:5001", None, "svclb-affinity-1");
        let api = api("127.78.1.10", "127.78.1.20");
        let t = local_target(&api, AFFINITY).await;
        let pods = From::Pods {
            pod: None,
            per_node: false,
        };
        let j = job(pods, Path::ClusterIp, Proto::Udp, 20, Duration::from_millis(1500));
        // svclb-affinity-2 leaves the Service's endpoints mid-run.
        let scaler = {
            let api = api.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                api.put(fake::for_app(fake::slice(&TWO[..1]), AFFINITY));
            })
        };
        let live = Live::new(RunFormat::Json);
        let record = run(&t, &j, &live, &Interrupt::default()).await.unwrap();
        scaler.await.unwrap();
        server.abort();
        let totals = &record.totals;
        assert!(totals.sent >= 200, "{totals:?}");
        assert_eq!((totals.answered, totals.lost), (totals.sent, 0), "{totals:?}");
        // One mode for every record: where a cluster run's agent ran.
        assert_eq!(record.target.mode, "pod");
        assert_eq!(record.target.source.as_deref(), Some("svclb-tserver-1"));
        assert_eq!(record.target.address, "127.78.1.10:5001 (clusterIP)");
        assert_eq!(record.target.service.as_deref(), Some(&*format!("{NS}/{AFFINITY}")));
        let pool = &record.pool_changes;
        assert_eq!(pool.len(), 1, "{pool:?}");
        assert_eq!(pool[0].removed, ["svclb-affinity-2"]);
        assert_eq!(record.environment.context.as_deref(), Some("kind-test"));

        assert_eq!(record.verdict, Verdict::Holds, "{:?}", record.reasons);
        assert!(record.pool_known);
        assert!(record.changes.is_empty());
        // Both pods of the pool at the start get a row.
        let served: Vec<(&str, u64)> = record.pods.iter().map(|p| (p.name.as_str(), p.sessions)).collect();
        assert_eq!(served, [("svclb-affinity-1", 20), ("svclb-affinity-2", 0)]);
        // A sample a second (1.5 s: one), then the totals at the end.
        let tl = &record.timeline;
        assert!(tl.len() >= 2, "{tl:?}");
        assert_eq!(tl.last().unwrap().totals, record.totals);
        assert!(
            tl.windows(2)
                .all(|w| w[0].at_ms <= w[1].at_ms && w[0].totals.sent <= w[1].totals.sent),
            "{tl:?}"
        );
    }

    #[tokio::test]
    async fn from_host_to_a_node_port_and_ctrl_c_stops_the_agent_through_stdin() {
        let server = serve("127.78.2.20:30501", None, "svclb-affinity-1");
        let api = api("127.78.2.10", "127.78.2.20");
        let t = local_target(&api, AFFINITY).await;
        let j = job(
            From::Host,
            Path::NodePort(Some("node-1".into())),
            Proto::Tcp,
            10,
            Duration::from_secs(60),
        );
        let live = Live::new(RunFormat::Json);
        let started = std::time::Instant::now();
        let record = run(&t, &j, &live, &Interrupt::after(Duration::from_millis(800)))
            .await
            .unwrap();
        server.abort();
        assert_eq!(record.stopped, Some(Stop::Interrupted));
        assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
        let totals = &record.totals;
        assert!(totals.sent >= 10, "{totals:?}");
        assert_eq!(totals.sent, totals.answered + totals.lost, "{totals:?}");
        assert_eq!(record.target.source.as_deref(), Some("this-host"));
        assert_eq!(record.target.address, "127.78.2.20:30501 (nodePort)");
        assert!(record.pool_changes.is_empty());
    }
}
