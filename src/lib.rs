//! svclb: how Kubernetes Services really balance load.

pub mod commands;
pub mod lab;
