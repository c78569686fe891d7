//! svclb: how Kubernetes Services really balance load.
//!
//! The engine behind `kubectl svclb`: the test server ([`server`]), the storm engine ([`storm`]),
//! the run record ([`record`]), statistics and verdicts ([`stats`]) and reports ([`report`]);
//! session affinity checks ([`affinity`]); zone locality and its cost ([`zones`]); the emulated
//! cluster in network namespaces ([`lab`]).

pub mod affinity;
pub mod agent;
pub mod backend;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod disruption;
pub mod families;
pub mod host;
pub mod lab;
pub mod matrix;
pub mod record;
pub mod report;
pub mod run;
pub mod server;
pub mod service;
pub mod spread;
pub mod stats;
pub mod storm;
#[cfg(test)]
pub(crate) mod testing;
pub mod wire;
pub mod zones;
