//! Opening the backend of a run: resolving an address, opening a lab (the one named, the only
//! one running, or an ephemeral one built for the run), or connecting to a cluster and deploying
//! the servers the run needs. An interrupt during setup removes what the run built; afterwards
//! [`Opened::close`] removes an ephemeral lab and, when asked, what the run deployed.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, bail};
use ipnet::IpNet;

use super::Interrupt;
use crate::agent::Request;
use crate::backend::address::AddressBackend;
use crate::backend::kube::{ClusterView, KubeBackend, LocalRun, PodExec};
use crate::backend::lab::LabBackend;
use crate::backend::{Backend, Endpoint, From, Meta, Path, Plan, Source, Stream};
use crate::cluster::manifests::{DEFAULT_IMAGE, Options, TSERVER};
use crate::cluster::{self, Connection};
use crate::lab::{Lab, LabConfig};
use crate::service::IpFamily;
use crate::storm::Proto;

/// Where a run goes.
#[derive(Debug, Clone)]
pub enum Place {
    /// `HOST:PORT`; with a source CIDR, an address of its family is preferred.
    Address {
        address: String,
        family_of: Option<IpNet>,
    },
    /// A lab: `name`, or (empty) the only one running; with none or several running,
    /// `build_if_none` builds a default lab for this run and removes it afterwards (as `new` always
    /// does).
    Lab {
        name: String,
        build_if_none: bool,
    },
    Cluster(Box<ClusterPlace>),
}

/// A cluster run: the Service under test, where agents run, what to deploy.
#[derive(Debug, Clone)]
pub struct ClusterPlace {
    pub connection: Connection,
    /// The Service under test (also the app name of its pods).
    pub service: &'static str,
    /// The app whose pods run agents.
    pub clients: &'static str,
    /// Apps deployed (from `options`, namespace filled in) when missing, or refused with `no_deploy`.
    pub apps: Vec<&'static str>,
    pub options: Options,
    pub no_deploy: bool,
    /// Delete what the plugin made in the namespace after the run.
    pub cleanup: bool,
}

impl Place {
    /// A run against the test servers: the lab `lab` names (a default one built for the run
    /// when none or several run), or else the cluster's tserver Service with its own pods as
    /// clients, deployed from `image` (the bundled default without one) when missing.
    pub fn tserver(
        lab: Option<&str>,
        connection: Connection,
        image: Option<&str>,
        no_deploy: bool,
        cleanup: bool,
    ) -> Place {
        if let Some(name) = lab {
            return Place::Lab {
                name: name.to_string(),
                build_if_none: true,
            };
        }
        Place::Cluster(Box::new(ClusterPlace {
            connection,
            service: TSERVER,
            clients: TSERVER,
            apps: vec![TSERVER],
            options: Options {
                image: image.map_or_else(|| DEFAULT_IMAGE.into(), str::to_string),
                ..Options::default()
            },
            no_deploy,
            cleanup,
        }))
    }
}

/// A lab made for one run: removed when dropped (end of run, error, or Ctrl-C).
pub struct Ephemeral(String);

impl Drop for Ephemeral {
    fn drop(&mut self) {
        let name = &self.0;
        match crate::lab::down_by_name(name) {
            Ok(()) => eprintln!("svclb: removed lab {name}"),
            Err(e) => eprintln!("svclb: removing lab {name} failed: {e:#}; run `kubectl svclb lab down --name {name}`"),
        }
    }
}

/// An opened backend.
pub enum Opened {
    Address(AddressBackend),
    Lab {
        backend: Box<LabBackend>,
        /// Declared after the backend: the lab goes once the backend is dropped.
        ephemeral: Option<Ephemeral>,
    },
    Cluster {
        backend: Box<KubeBackend<PodExec, LocalRun>>,
        cleanup: bool,
    },
}

/// Resolves HOST:PORT, preferring an address of `family_of` when given (e.g. the --srccidr family);
/// with every address the name has.
pub async fn resolve(address: &str, family_of: Option<IpNet>) -> Result<(SocketAddr, Vec<SocketAddr>)> {
    let bad = || anyhow::anyhow!("bad --address {address:?}: want HOST:PORT, e.g. 127.0.0.1:5001 or [::1]:5001");
    let (_, port) = address.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot resolve --address {address:?}: {e}"))?
        .collect();
    let preferred = family_of.and_then(|net| addrs.iter().find(|a| a.is_ipv4() == net.addr().is_ipv4()));
    let chosen = preferred.or(addrs.first()).copied().ok_or_else(bad)?;
    Ok((chosen, addrs))
}

/// Checks what can be checked before anything runs (lab host and name).
pub fn check(place: &Place) -> Result<()> {
    if let Place::Lab { name, .. } = place {
        crate::lab::require_host()?;
        if !name.is_empty() && name != NEW_LAB {
            crate::lab::validate_name(name)?;
        }
    }
    Ok(())
}

/// `--lab new`: always a fresh lab for the run.
pub const NEW_LAB: &str = "new";

/// Opens the named lab, or the only running lab; otherwise (when allowed: `spread`), and always for
/// `--lab new`, builds a default lab for this run and removes it afterwards. Says which.
async fn open_lab(name: &str, build_if_none: bool, interrupt: &Interrupt) -> Result<(Lab, Option<Ephemeral>)> {
    if !name.is_empty() && name != NEW_LAB {
        let lab = Lab::open(name)?;
        lab.check_complete()?;
        return Ok((lab, None));
    }
    // Labs built for runs that were killed before they could remove them.
    for (lab, pid) in Lab::reap_orphans() {
        eprintln!("svclb: removed lab {lab}, built for a run that is gone (pid {pid})");
    }
    let why = if name == NEW_LAB {
        "--lab new".to_string()
    } else {
        // Labs this user can open (state under the labs directory); `lab list` also shows remnants.
        match Lab::saved().as_slice() {
            [one] => {
                eprintln!("svclb: using lab {one} (the only one running)");
                let lab = Lab::open(one)?;
                lab.check_complete()?;
                return Ok((lab, None));
            }
            [] if !build_if_none => bail!(
                "no lab running: start one, e.g. `kubectl svclb lab up --name demo --affinity clientip`, then --lab demo"
            ),
            many if !build_if_none => bail!(
                "several labs are running ({}): pick one with --lab NAME",
                many.join(", ")
            ),
            [] => "no lab running".to_string(),
            many => format!(
                "{} labs running ({}; --lab NAME picks one)",
                many.len(),
                many.join(", ")
            ),
        }
    };
    let cfg = LabConfig {
        name: format!("run{}", std::process::id()),
        ephemeral: true,
        ..LabConfig::default()
    };
    eprintln!(
        "svclb: {why}: building lab {} ({} nodes, {} pods) for this run",
        cfg.name, cfg.nodes, cfg.pods
    );
    let lab = tokio::task::spawn_blocking(move || Lab::up(&cfg)).await??;
    let ephemeral = Ephemeral(lab.name().to_string());
    if interrupt.is_set() {
        drop(ephemeral);
        bail!("interrupted while the lab was being built; it was removed");
    }
    Ok((lab, Some(ephemeral)))
}

impl Opened {
    /// Opens `place`; `interrupt` aborts a setup in progress (the lab built for the run is
    /// removed, a deploy stops waiting).
    pub async fn open(place: Place, interrupt: &Interrupt) -> Result<Opened> {
        match place {
            Place::Address { address, family_of } => {
                let (address, resolved) = resolve(&address, family_of).await?;
                Ok(Opened::Address(AddressBackend { address, resolved }))
            }
            Place::Lab { name, build_if_none } => {
                let (lab, ephemeral) = open_lab(&name, build_if_none, interrupt).await?;
                Ok(Opened::Lab {
                    backend: Box::new(LabBackend::new(lab)?),
                    ephemeral,
                })
            }
            Place::Cluster(p) => {
                let (c, version) = cluster::connect(&p.connection).await?;
                let opened = async {
                    let o = Options {
                        namespace: c.namespace.clone(),
                        ..p.options.clone()
                    };
                    tokio::select! {
                        r = cluster::deploy::ensure_servers(&c, &p.apps, &o, p.no_deploy) => r?,
                        () = interrupt.wait() => bail!("interrupted while the test servers were being deployed"),
                    }
                    let view = ClusterView::load(&c, version, p.service, p.clients).await?;
                    // The Service's primary family until the run asks for one (an IPv6-only
                    // cluster's Service has no IPv4 address).
                    let family = view.service.families().first().copied().unwrap_or_default();
                    Ok(Box::new(KubeBackend {
                        view,
                        cluster: c.clone(),
                        pods: PodExec {
                            cluster: c.clone(),
                            container: "tserver".into(),
                        },
                        host: LocalRun {
                            program: std::env::current_exe()?,
                        },
                        family,
                    }))
                }
                .await;
                match opened {
                    Ok(backend) => Ok(Opened::Cluster {
                        backend,
                        cleanup: p.cleanup,
                    }),
                    Err(e) => {
                        if p.cleanup {
                            cluster::deploy::cleanup_after_run(&c).await;
                        }
                        Err(e)
                    }
                }
            }
        }
    }

    /// Points the run at the target addresses of `family` (the Service's ClusterIP of that
    /// family, its LB IP, the nodes' addresses); refused in one line when the target has none.
    pub fn set_family(&mut self, family: IpFamily) -> Result<()> {
        match self {
            Opened::Address(b) => b.set_family(family),
            Opened::Lab { backend, .. } => backend.set_family(family),
            Opened::Cluster { backend, .. } => backend.set_family(family),
        }
    }

    /// Ends the run's hold on its backend: removes an ephemeral lab, and with `--cleanup` what
    /// the plugin made in the cluster's namespace. Failures are told, not returned: the run's
    /// record still gets saved.
    pub async fn close(self) {
        match self {
            Opened::Address(_) => {}
            Opened::Lab { backend, ephemeral } => {
                drop(backend);
                drop(ephemeral);
            }
            Opened::Cluster { backend, cleanup } => {
                if cleanup {
                    cluster::deploy::cleanup_after_run(&backend.cluster).await;
                }
            }
        }
    }
}

/// Evaluates `$e` with `$b` bound to whichever backend is open.
macro_rules! each {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            Opened::Address($b) => $e,
            Opened::Lab { backend: $b, .. } => $e,
            Opened::Cluster { backend: $b, .. } => $e,
        }
    };
}

impl Backend for Opened {
    fn meta(&self) -> Meta {
        each!(self, b => b.meta())
    }

    fn endpoints(&self) -> Result<Vec<Endpoint>> {
        each!(self, b => b.endpoints())
    }

    fn plan(&self, from: &From, path: &Path, proto: Proto) -> Result<Plan> {
        each!(self, b => b.plan(from, path, proto))
    }

    fn start_agent(&self, source: &Source, request: &Request) -> Result<Stream> {
        each!(self, b => b.start_agent(source, request))
    }

    async fn pool(&self) -> Option<BTreeSet<String>> {
        each!(self, b => b.pool().await)
    }

    fn pool_slack(&self, poll: Duration) -> Duration {
        each!(self, b => b.pool_slack(poll))
    }

    async fn preflight(&self, from: &From, path: &Path) -> Result<()> {
        each!(self, b => b.preflight(from, path).await)
    }

    async fn service_view(&self) -> Result<crate::zones::ServiceView> {
        each!(self, b => b.service_view().await)
    }
}
