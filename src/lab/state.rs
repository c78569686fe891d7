//! A lab's saved state (`state.json` under [`labs_dir`]), the lock on its directory, and
//! loading, saving and listing labs.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::netns;
use super::{Lab, LabFamilies, Node, Pod, ProxyMode, SyncDelay, labs_dir, validate_name};
use crate::service::ServiceOptions;

/// The saved state of a lab (`state.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) kind: String,
    pub(super) version: u32,
    pub(super) name: String,
    pub(super) created: jiff::Timestamp,
    pub(super) proxy_mode: ProxyMode,
    /// The Service's IP families (state files from before it: IPv4).
    #[serde(default)]
    pub(super) families: LabFamilies,
    pub(super) ecmp: bool,
    pub(super) zones: usize,
    pub(super) server: PathBuf,
    pub(super) options: ServiceOptions,
    pub(super) nodes: Vec<Node>,
    pub(super) pods: Vec<Pod>,
    pub(super) next_pod: usize,
    /// The rules generation: one more at every change of the Service or its endpoints.
    #[serde(default)]
    pub(super) generation: u64,
    /// What each node's kube-proxy last applied (by node name; none yet: nothing).
    #[serde(default)]
    pub(super) applied: BTreeMap<String, Applied>,
    #[serde(default)]
    pub(super) sync_delay: SyncDelay,
    /// The generation of the last change of the Service's endpoints (kube-proxy cleans UDP
    /// conntrack entries only after those: `ConntrackCleanupRequired`).
    #[serde(default)]
    pub(super) endpoints_generation: u64,
    /// The command building the lab or adding pods (`lab up`, `lab scale`) until it finished:
    /// still set, the lab is incomplete (being built, or that command was interrupted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) building: Option<String>,
    /// Per node, the pod address it handed out last (the next pod gets the next free one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) last_ip: BTreeMap<String, std::net::Ipv4Addr>,
    /// The process a lab built for one run belongs to (`spread --lab` without a running lab).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) owner: Option<Owner>,
}

/// One process: its pid and when it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Owner {
    pub(super) pid: u32,
    pub(super) start: u64,
}

impl Owner {
    pub(super) fn this_process() -> Option<Owner> {
        let pid = std::process::id();
        netns::process_start(pid).map(|start| Owner { pid, start })
    }

    fn alive(&self) -> bool {
        netns::process_start(self.pid) == Some(self.start) && netns::alive(self.pid)
    }
}

/// What a change touched: the Service's spec only, or its endpoints (their EndpointSlices).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Changed {
    Service,
    Endpoints,
}

/// What one node's kube-proxy last applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Applied {
    pub(super) generation: u64,
    /// The affinity timeout its nftables affinity sets were made with (a new one needs new sets).
    pub(super) affinity_timeout: Option<u32>,
}

impl State {
    /// The Service or its endpoints changed: a new generation, and the delay after which each
    /// node's kube-proxy applies it (in the order of `nodes`).
    pub(super) fn bump(&mut self, what: Changed) -> Vec<(String, Duration)> {
        self.generation += 1;
        if what == Changed::Endpoints {
            self.endpoints_generation = self.generation;
        }
        let mut rng = rand::rng();
        self.nodes
            .iter()
            .map(|n| (n.name.clone(), self.sync_delay.pick(&mut rng)))
            .collect()
    }

    /// The generation `node` has applied.
    pub(super) fn applied_generation(&self, node: &str) -> u64 {
        self.applied.get(node).map_or(0, |a| a.generation)
    }

    /// True when the endpoints changed since `node` last applied: its sync then cleans UDP
    /// conntrack entries (a Service-only change does not, as in kube-proxy).
    pub(super) fn endpoints_changed_for(&self, node: &str) -> bool {
        self.endpoints_generation > self.applied_generation(node)
    }
}

pub(super) fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// An exclusive lock on a lab's directory, held while its namespaces or rules change.
pub(super) struct DirLock(File);

impl DirLock {
    pub(super) fn take(dir: &Path) -> Result<DirLock> {
        let f = File::create(dir.join("lock")).with_context(|| format!("cannot lock {}", dir.display()))?;
        // SAFETY: flock on a valid fd; released when the file is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("cannot lock {}: {}", dir.display(), std::io::Error::last_os_error());
        }
        Ok(DirLock(f))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // SAFETY: unlocking the fd we locked; closing would release it too.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

pub(super) fn read_state(dir: &Path, name: &str) -> Result<State> {
    let text = std::fs::read_to_string(state_path(dir))
        .map_err(|_| anyhow::anyhow!("no lab named {name}; run `kubectl svclb lab up --name {name}`"))?;
    serde_json::from_str(&text).with_context(|| format!("corrupt lab state {}", state_path(dir).display()))
}

/// Writes a lab file whole or not at all (`PATH.tmp`, then renamed): another process reading it
/// (a node's health agent, the load balancer, a concurrent command) never sees half of it.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", Path::new(&tmp).display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

impl Lab {
    pub(super) fn save(&self) -> Result<()> {
        write_atomic(&state_path(&self.dir), &serde_json::to_vec_pretty(&self.state)?)
    }

    /// Loads a running lab.
    pub fn open(name: &str) -> Result<Lab> {
        validate_name(name)?;
        let dir = labs_dir().join(name);
        let state = read_state(&dir, name)?;
        Ok(Lab { dir, state })
    }

    /// Takes the lab's lock and reads its state again: what another command changed since this
    /// one opened the lab is kept, so two changes at once never lose one.
    pub(super) fn lock(&mut self) -> Result<DirLock> {
        let lock = DirLock::take(&self.dir)?;
        self.reload()?;
        Ok(lock)
    }

    /// Reads the state again (what this process's own threads and other commands saved).
    pub(super) fn reload(&mut self) -> Result<()> {
        self.state = read_state(&self.dir, &self.state.name)?;
        Ok(())
    }

    /// Changes the lab's current state under its lock (re-read first) and saves it.
    pub(super) fn change<T>(&mut self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let _lock = self.lock()?;
        let out = f(&mut self.state)?;
        self.save()?;
        Ok(out)
    }

    /// Names of the labs that can be opened: those with state under [`labs_dir`], sorted.
    pub fn saved() -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(labs_dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("state.json").exists())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Records that `what` (`lab up`, `lab scale`) builds the lab, or (None) that it finished.
    pub(super) fn mark_building(&mut self, what: Option<&str>) -> Result<()> {
        self.change(|s| {
            s.building = what.map(str::to_string);
            Ok(())
        })
    }

    /// The command that has not finished building this lab (`lab up`, `lab scale`), if one.
    pub fn incomplete(&self) -> Option<&str> {
        self.state.building.as_deref()
    }

    /// The pid of the process this lab was built for, when that process is gone: nobody will
    /// remove the lab but the next run ([`Lab::reap_orphans`]) or `lab down`.
    pub fn orphaned_by(&self) -> Option<u32> {
        self.state.owner.filter(|o| !o.alive()).map(|o| o.pid)
    }

    /// Removes the labs built for a run whose process is gone; returns them with that pid.
    pub fn reap_orphans() -> Vec<(String, u32)> {
        Lab::saved()
            .into_iter()
            .filter_map(|n| {
                let pid = Lab::open(&n).ok()?.orphaned_by()?;
                super::down_by_name(&n).ok()?;
                Some((n, pid))
            })
            .collect()
    }

    /// Why a run cannot use this lab, if it cannot: it is incomplete.
    pub fn check_complete(&self) -> Result<()> {
        match self.incomplete() {
            Some(what) => bail!(
                "lab {name} is incomplete (`{what}` did not finish, or still runs): `kubectl svclb lab down --name {name}`",
                name = self.state.name
            ),
            None => Ok(()),
        }
    }

    /// Names of the labs on this machine (with state or with namespaces left).
    pub fn list() -> Result<Vec<String>> {
        let mut names = Lab::saved();
        for ns in netns::list_with_prefix("svclb-") {
            if let Some((lab, _)) = ns["svclb-".len()..].split_once('.') {
                names.push(lab.to_string());
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(nodes: usize, sync_delay: SyncDelay) -> State {
        State {
            kind: "SvclbLab".into(),
            version: 1,
            name: "t".into(),
            created: jiff::Timestamp::UNIX_EPOCH,
            proxy_mode: ProxyMode::Nftables,
            families: LabFamilies::Ipv4,
            ecmp: false,
            zones: 1,
            server: "serve".into(),
            options: ServiceOptions::default(),
            nodes: (1..=nodes)
                .map(|i| Node {
                    name: format!("node{i}"),
                    zone: "zone-a".into(),
                    ip: std::net::Ipv4Addr::new(172, 31, 0, 10 + i as u8),
                    pod_cidr: format!("10.244.{i}.0/24").parse().unwrap(),
                    netns: format!("svclb-t.node{i}"),
                })
                .collect(),
            pods: Vec::new(),
            next_pod: 1,
            generation: 0,
            applied: BTreeMap::new(),
            sync_delay,
            endpoints_generation: 0,
            building: None,
            owner: None,
            last_ip: BTreeMap::new(),
        }
    }

    #[test]
    fn a_change_is_a_new_generation_with_a_delay_for_every_node() {
        let ms = Duration::from_millis;
        let mut s = state(3, SyncDelay::new(ms(10), ms(20)).unwrap());
        let delays = s.bump(Changed::Endpoints);
        assert_eq!(s.generation, 1);
        let nodes: Vec<&str> = delays.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(nodes, ["node1", "node2", "node3"]);
        assert!(delays.iter().all(|(_, d)| (ms(10)..=ms(20)).contains(d)));
        s.bump(Changed::Service);
        assert_eq!(s.generation, 2);
        // Nothing applied yet: generation 0; then what the node recorded.
        assert_eq!(s.applied_generation("node2"), 0);
        s.applied.insert(
            "node2".into(),
            Applied {
                generation: 2,
                affinity_timeout: Some(10_800),
            },
        );
        assert_eq!(s.applied_generation("node2"), 2);
        // The endpoints last changed at 1: node2 (at 2) has nothing to clean, node1 (at 0) has.
        assert_eq!(s.endpoints_generation, 1);
        assert!(!s.endpoints_changed_for("node2"));
        assert!(s.endpoints_changed_for("node1"));
    }

    #[test]
    fn state_files_from_before_generations_and_conditions_still_load() {
        let mut v = serde_json::to_value(state(1, SyncDelay::default())).unwrap();
        let o = v.as_object_mut().unwrap();
        for gone in [
            "generation",
            "applied",
            "sync_delay",
            "endpoints_generation",
            "families",
        ] {
            o.remove(gone);
        }
        o.insert(
            "pods".into(),
            serde_json::json!([{"name": "pod-001", "node": "node1", "zone": "zone-a",
                "ip": "10.244.1.2", "netns": "svclb-t.pod-001", "veth": "vp1", "pid": 42, "hint": null}]),
        );
        let s: State = serde_json::from_value(v).unwrap();
        assert_eq!((s.generation, s.applied_generation("node1")), (0, 0));
        assert_eq!(s.endpoints_generation, 0);
        assert_eq!(s.sync_delay, SyncDelay::default());
        assert_eq!(s.pods[0].conditions, crate::lab::Conditions::READY);
        assert_eq!(s.families, LabFamilies::Ipv4);
    }
}
