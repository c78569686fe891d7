//! Putting the test servers on a cluster for a run or for `deploy`, and taking them away.

use std::time::Duration;

use anyhow::{Result, bail};

use super::manifests::{self, Options};
use super::{Cluster, ops};

/// `--cleanup` after a run: a failure is told, not returned, so the run's record is still saved.
pub async fn cleanup_after_run(c: &Cluster) {
    match ops::cleanup(c).await {
        Ok(deleted) => eprintln!("svclb: cleanup: deleted {}", deleted.join(", ")),
        Err(e) => eprintln!(
            "svclb: cleanup failed ({e:#}): run `kubectl svclb cleanup -n {}` later",
            c.namespace
        ),
    }
}

/// How long a measuring run waits for the servers it deployed (or found not ready).
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Server-side applies `objs`, telling each object applied.
async fn apply_told(c: &Cluster, objs: &[serde_json::Value]) -> Result<()> {
    for name in ops::apply(c, objs).await? {
        eprintln!("svclb: applied {name} in {} (context {})", c.namespace, c.context);
    }
    Ok(())
}

/// The servers a measuring run needs (`apps`; each app's Deployment and Service carry its name):
/// those missing are deployed as rendered from `o` while what exists is left as it is (a tserver
/// deployed with other options keeps them), or refused with `no_deploy`; then all are waited for.
pub async fn ensure_servers(c: &Cluster, apps: &[&str], o: &Options, no_deploy: bool) -> Result<()> {
    let mut missing: Vec<&str> = Vec::new();
    for app in apps {
        if !ops::deployment_exists(c, app).await? {
            missing.push(app);
        }
    }
    if !missing.is_empty() {
        if no_deploy {
            bail!(
                "no {} deployment in namespace {} (context {}): run `kubectl svclb deploy{}` or drop --no-deploy",
                missing.join(" or "),
                c.namespace,
                c.context,
                if missing.contains(&manifests::AFFINITY) {
                    " --affinity-server"
                } else {
                    ""
                }
            );
        }
        let mut objs = manifests::render(o)?;
        objs.retain(|obj| missing.iter().any(|m| obj["metadata"]["name"] == *m));
        eprintln!("svclb: deploying {} in {}", missing.join(" and "), c.namespace);
        apply_told(c, &objs).await?;
    }
    for app in apps {
        ops::wait_ready(c, app, READY_TIMEOUT, Duration::from_secs(1)).await?;
    }
    Ok(())
}

/// Applies the rendered servers and waits for them (`deploy`).
pub async fn deploy_servers(c: &Cluster, o: &Options, wait: Option<Duration>) -> Result<()> {
    apply_told(c, &manifests::render(o)?).await?;
    if let Some(timeout) = wait {
        ops::wait_ready(c, manifests::TSERVER, timeout, Duration::from_secs(1)).await?;
        if o.affinity_server {
            ops::wait_ready(c, manifests::AFFINITY, timeout, Duration::from_secs(1)).await?;
        }
        eprintln!(
            "svclb: {} pod(s) ready",
            o.replicas * if o.affinity_server { 2 } else { 1 }
        );
    }
    Ok(())
}
