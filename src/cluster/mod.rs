//! A real cluster through kube-rs: connecting the way kubectl does (kubeconfig, context,
//! namespace, impersonation), the bundled manifests, and deploy/status/cleanup.

pub mod clients;
pub mod deploy;
pub mod disrupt;
#[cfg(test)]
pub mod fake;
pub mod manifests;
pub mod matrix;
pub mod ops;

use anyhow::{Result, anyhow};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Installs ring as the process' rustls crypto provider. kube (feature `ring`) and reqwest
/// (`rustls-no-provider`) then agree on one provider; a second provider would panic at client
/// creation. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How to reach a cluster, as kubectl's flags say it: kubeconfig files (a `:`-separated list,
/// merged), context, namespace, impersonation. Empty fields take kubectl's defaults.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    pub kubeconfig: Option<std::path::PathBuf>,
    pub context: Option<String>,
    pub namespace: Option<String>,
    pub as_user: Option<String>,
    pub as_group: Vec<String>,
}

/// A connected client and what was chosen: context (for messages and records) and namespace.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub context: String,
    pub namespace: String,
}

/// Reads the kubeconfig files of `--kubeconfig` / `KUBECONFIG` (a `:`-separated list, merged
/// as kubectl does), or `~/.kube/config`.
fn read_kubeconfig(flags: &Connection) -> Result<Option<Kubeconfig>> {
    let Some(paths) = &flags.kubeconfig else {
        return match Kubeconfig::read() {
            Ok(k) => Ok(Some(k)),
            Err(_) if flags.context.is_none() => Ok(None),
            Err(e) => Err(anyhow!("cannot read the kubeconfig (~/.kube/config): {e}")),
        };
    };
    let mut merged: Option<Kubeconfig> = None;
    for p in std::env::split_paths(paths.as_os_str()).filter(|p| !p.as_os_str().is_empty()) {
        let k = Kubeconfig::read_from(&p).map_err(|e| anyhow!("cannot read kubeconfig {}: {e}", p.display()))?;
        merged = Some(match merged {
            Some(m) => m.merge(k)?,
            None => k,
        });
    }
    merged
        .map(Some)
        .ok_or_else(|| anyhow!("--kubeconfig / KUBECONFIG names no file"))
}

/// Builds the client config the way kubectl would for these flags.
pub async fn config(flags: &Connection) -> Result<(Config, String)> {
    let (mut config, context) = match read_kubeconfig(flags)? {
        Some(kc) => {
            let context = flags
                .context
                .clone()
                .or_else(|| kc.current_context.clone())
                .ok_or_else(|| anyhow!("the kubeconfig has no current context: give --context NAME"))?;
            let opts = KubeConfigOptions {
                context: Some(context.clone()),
                ..KubeConfigOptions::default()
            };
            let config = Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| anyhow!("context {context}: {e}"))?;
            (config, context)
        }
        None => {
            let config = Config::incluster().map_err(|_| {
                anyhow!("no kubeconfig (~/.kube/config, KUBECONFIG or --kubeconfig) and not running in a pod")
            })?;
            (config, "in-cluster".to_string())
        }
    };
    if let Some(user) = &flags.as_user {
        config.auth_info.impersonate = Some(user.clone());
    }
    if !flags.as_group.is_empty() {
        if flags.as_user.is_none() {
            anyhow::bail!("--as-group needs --as USER (as kubectl)");
        }
        config.auth_info.impersonate_groups = Some(flags.as_group.clone());
    }
    if let Some(ns) = &flags.namespace {
        config.default_namespace.clone_from(ns);
    }
    Ok((config, context))
}

/// Connects: reads the config and checks the API server answers (its version), so an
/// unreachable cluster is one error naming the context.
pub async fn connect(flags: &Connection) -> Result<(Cluster, String)> {
    install_crypto_provider();
    let (config, context) = config(flags).await?;
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|e| anyhow!("context {context}: {e}"))?;
    let version = client
        .apiserver_version()
        .await
        .map_err(|e| anyhow!("context {context}: cannot reach the API server: {}", describe(&e)))?;
    Ok((
        Cluster {
            client,
            context,
            namespace,
        },
        version.git_version,
    ))
}

/// One line for a kube error (the API's message for API errors).
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => {
            let mut parts = vec![other.to_string()];
            let mut src = std::error::Error::source(other);
            while let Some(s) = src {
                let t = s.to_string();
                if !parts.iter().any(|p| p.contains(&t)) {
                    parts.push(t);
                }
                src = s.source();
            }
            parts.join(": ")
        }
    }
}

/// Maps a failed API call to one line: RBAC refusals name the verb and resource that are
/// missing and where the needed rules are.
pub fn api_error(verb: &str, resource: &str, namespace: &str, e: kube::Error) -> anyhow::Error {
    match &e {
        kube::Error::Api(s) if s.code == 403 => anyhow!(
            "forbidden: you may not {verb} {resource} in namespace {namespace} ({}); \
             `kubectl svclb manifests --rbac` prints the Role the plugin needs",
            s.message
        ),
        _ => anyhow!("cannot {verb} {resource} in namespace {namespace}: {}", describe(&e)),
    }
}

/// `Result` helper: `.api("list", "pods", ns)?`.
pub trait ApiResult<T> {
    fn api(self, verb: &str, resource: &str, namespace: &str) -> Result<T>;
}

impl<T> ApiResult<T> for std::result::Result<T, kube::Error> {
    fn api(self, verb: &str, resource: &str, namespace: &str) -> Result<T> {
        self.map_err(|e| api_error(verb, resource, namespace, e))
    }
}

/// Is this a 404 from the API?
pub fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}
