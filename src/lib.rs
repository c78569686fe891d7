//! svclb: how Kubernetes Services really balance load.
