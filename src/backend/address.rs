//! A bare address as a [`Backend`] (`--address HOST:PORT`): no Service around it, so no known
//! endpoints and no pool; the agent is a task of this process, speaking the same JSON lines as
//! agents elsewhere, so a run is the same code whatever it storms.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::sync::Notify;

use crate::zones::ServiceView;

use super::{Backend, Endpoint, From, Meta, Path, Plan, Source, Stream};
use crate::agent::{self, Request};
use crate::service::IpFamily;
use crate::storm::Proto;

/// Bytes of agent output buffered between the agent task and the run.
const BUFFER: usize = 1 << 16;

pub struct AddressBackend {
    pub address: SocketAddr,
    /// Every address the name resolved to (`address` is one of them).
    pub resolved: Vec<SocketAddr>,
}

impl AddressBackend {
    /// Storms the resolved address of `family` (`localhost` has both).
    pub fn set_family(&mut self, family: IpFamily) -> Result<()> {
        match self.resolved.iter().find(|a| IpFamily::of(&a.ip()) == family) {
            Some(a) => {
                self.address = *a;
                Ok(())
            }
            None => bail!(
                "--address {} has no {family} address: give one of that family (e.g. [::1]:5001, 127.0.0.1:5001) or drop --ip-family",
                self.address
            ),
        }
    }

    /// The only source: this process.
    pub fn source() -> Source {
        Source {
            name: "this-host".into(),
            node: String::new(),
            zone: String::new(),
        }
    }
}

impl Backend for AddressBackend {
    fn meta(&self) -> Meta {
        Meta {
            mode: "address".into(),
            ip_family: Some(IpFamily::of(&self.address.ip())),
            ..Meta::default()
        }
    }

    fn endpoints(&self) -> Result<Vec<Endpoint>> {
        Ok(Vec::new())
    }

    /// Whatever the path, the address; nothing is known to answer.
    fn plan(&self, _from: &From, _path: &Path, _proto: Proto) -> Result<Plan> {
        Ok(Plan {
            address: self.address,
            http: None,
            sources: vec![Self::source()],
            expected: Vec::new(),
        })
    }

    fn start_agent(&self, _source: &Source, request: &Request) -> Result<Stream> {
        let (reader, mut writer) = tokio::io::duplex(BUFFER);
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        let request = request.clone();
        let session = tokio::spawn(async move {
            match agent::run(request, async move { stopped.notified().await }, &mut writer).await {
                Ok(()) => String::new(),
                Err(e) => format!("{e:#}"),
            }
        });
        Ok(Stream::new(reader, session, stop))
    }

    /// Unknown: any change of serving backend counts.
    async fn pool(&self) -> Option<BTreeSet<String>> {
        None
    }

    fn pool_slack(&self, _poll: Duration) -> Duration {
        Duration::ZERO
    }

    /// A bare address has no Service to read.
    async fn service_view(&self) -> Result<ServiceView> {
        anyhow::bail!("an address has no Service, endpoints or zones to read: use a lab (--lab) or a cluster")
    }
}
