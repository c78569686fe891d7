//! The Services a `matrix` run makes on a cluster: one per scenario (`svclb-mx-<variant>`, the
//! variant's options, selecting the tserver pods, or no pod at all for `no-endpoints`), its
//! ExternalName alias (`svclb-mx-<variant>-alias`, a CNAME of the scenario Service's name), and
//! one headless Service per run (`svclb-mx-headless`, the tserver pods by DNS).
//!
//! They are server-side applied under fixed names, so the Role can name them (`resourceNames`:
//! an apply that creates is authorized as `create` with the name), and carry the plugin's
//! managed-by label and the run's instance label (`cleanup` deletes leftovers). One name per
//! variant, not one name for all: a LoadBalancer Service may take its time to go (the cloud's
//! finalizer), and the next scenario must not wait for it nor meet it.

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use super::manifests::{MANAGED_BY, TSERVER};
use super::ops::FIELD_MANAGER;
use super::{ApiResult, Cluster, not_found};
use crate::service::{IpFamily, ServiceOptions, SessionAffinity};

/// The app name of the matrix Services.
pub const APP: &str = "svclb-matrix";
/// The run's headless Service.
pub const HEADLESS: &str = "svclb-mx-headless";
/// The variants a run may make a Service for: the names of `matrix::variants()` (a test keeps
/// them the same; the Role names their Services).
pub const VARIANTS: &[&str] = &[
    "default",
    "etp-local",
    "itp-local",
    "both-local",
    "affinity",
    "no-endpoints",
    "terminating",
    "prefer-same-zone",
    "prefer-same-node",
];
/// The selector of a Service that must have no endpoint: no pod carries this name.
pub const NO_POD: &str = "svclb-matrix-no-endpoints";

/// The scenario Service of `variant`.
pub fn service_name(variant: &str) -> String {
    format!("svclb-mx-{variant}")
}

/// The ExternalName alias of `variant`'s Service.
pub fn alias_name(variant: &str) -> String {
    format!("svclb-mx-{variant}-alias")
}

/// Every name a matrix run may give a Service (what the Role lists).
pub fn all_names() -> Vec<String> {
    let mut out: Vec<String> = VARIANTS.iter().flat_map(|v| [service_name(v), alias_name(v)]).collect();
    out.push(HEADLESS.to_string());
    out
}

/// The name a pod resolves for the Service `name` in `namespace`: relative, so the pod's search
/// path (`<ns>.svc.<cluster domain>`) completes it whatever the cluster domain.
pub fn dns_name(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}.svc")
}

fn labels(run: &str) -> Value {
    json!({
        "app.kubernetes.io/name": APP,
        "app.kubernetes.io/component": "matrix",
        "app.kubernetes.io/instance": run,
        MANAGED_BY.0: MANAGED_BY.1,
    })
}

/// The tserver's ports (TCP and UDP 5001, by the container's port names).
fn ports() -> Value {
    json!([
        {"name": "tcp", "port": 5001, "targetPort": "tcp", "protocol": "TCP"},
        {"name": "udp", "port": 5001, "targetPort": "udp", "protocol": "UDP"},
    ])
}

/// A scenario's Service.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioService {
    pub variant: String,
    pub options: ServiceOptions,
    /// Selects the tserver pods (else no pod: the Service has no endpoint).
    pub selects_servers: bool,
    /// LoadBalancer (else NodePort).
    pub load_balancer: bool,
    pub namespace: String,
    /// The run's instance label.
    pub run: String,
    /// The run's family: the Service is single-stack of it.
    pub family: IpFamily,
}

/// A Service of the run's family only: its clusterIP and slices are of the family the run measures.
fn single_stack(spec: &mut Value, family: IpFamily) {
    spec["ipFamilyPolicy"] = json!("SingleStack");
    spec["ipFamilies"] = json!([family.kube()]);
}

impl ScenarioService {
    pub fn name(&self) -> String {
        service_name(&self.variant)
    }

    /// The Service object: the variant's options, TCP and UDP 5001 to the tserver's ports.
    pub fn object(&self) -> Value {
        let o = &self.options;
        let app = if self.selects_servers { TSERVER } else { NO_POD };
        let mut spec = json!({
            "type": if self.load_balancer { "LoadBalancer" } else { "NodePort" },
            "selector": {"app.kubernetes.io/name": app},
            "ports": ports(),
            "sessionAffinity": o.affinity.to_string(),
            "externalTrafficPolicy": o.external_traffic_policy.to_string(),
            "internalTrafficPolicy": o.internal_traffic_policy.to_string(),
        });
        if o.affinity == SessionAffinity::ClientIp {
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": o.affinity_timeout}});
        }
        if let Some(td) = o.traffic_distribution {
            spec["trafficDistribution"] = json!(td.to_string());
        }
        single_stack(&mut spec, self.family);
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": self.name(), "namespace": self.namespace, "labels": labels(&self.run)},
            "spec": spec,
        })
    }
}

/// The ExternalName alias of `variant`'s Service: a CNAME of its full name (a CNAME's target
/// is absolute, so it needs the cluster domain).
pub fn alias(variant: &str, namespace: &str, cluster_domain: &str, run: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": alias_name(variant), "namespace": namespace, "labels": labels(run)},
        "spec": {
            "type": "ExternalName",
            "externalName": format!("{}.{namespace}.svc.{cluster_domain}", service_name(variant)),
            "ports": ports(),
        },
    })
}

/// The run's headless Service of the tserver pods: its name resolves to their pod IPs of
/// `family`.
pub fn headless(namespace: &str, run: &str, family: IpFamily) -> Value {
    let mut spec = json!({
        "clusterIP": "None",
        "selector": {"app.kubernetes.io/name": TSERVER},
        "ports": ports(),
    });
    single_stack(&mut spec, family);
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": HEADLESS, "namespace": namespace, "labels": labels(run)},
        "spec": spec,
    })
}

/// Why a Service of that name may not be applied by run `run`: it exists and is not this run's
/// (another matrix run in the namespace, a leftover, or not the plugin's at all).
pub fn foreign(existing: &Service, run: &str) -> Option<String> {
    let name = existing.metadata.name.as_deref().unwrap_or("?");
    let labels = existing.metadata.labels.clone().unwrap_or_default();
    if labels.get(MANAGED_BY.0).map(String::as_str) != Some(MANAGED_BY.1) {
        return Some(format!(
            "a Service {name} that kubectl-svclb did not make is in the way: rename or delete it, or use another namespace"
        ));
    }
    match labels.get("app.kubernetes.io/instance") {
        Some(other) if other != run => Some(format!(
            "Service {name} belongs to matrix run {other} (another run in this namespace, or one that was killed): \
             wait for it, or `kubectl svclb cleanup` removes what a killed run left"
        )),
        _ => None,
    }
}

/// The Service `name`, if it exists.
pub async fn get(c: &Cluster, name: &str) -> Result<Option<Service>> {
    let api: Api<Service> = Api::namespaced(c.client.clone(), &c.namespace);
    api.get_opt(name).await.api("get", "services", &c.namespace)
}

/// Applies `obj` server-side (creating it, or taking over the run's own) and returns the
/// Service as the API server stored it (allocated addresses; fields it dropped are missing),
/// or, when the API server refused the object itself (400/422: e.g. a `trafficDistribution`
/// value it does not know), its message.
pub async fn apply(c: &Cluster, obj: &Value) -> Result<std::result::Result<Service, String>> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        bail!("a matrix Service without a name");
    }
    let api: Api<Service> = Api::namespaced(c.client.clone(), &c.namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch(name, &params, &Patch::Apply(obj)).await {
        Ok(s) => Ok(Ok(s)),
        Err(kube::Error::Api(s)) if matches!(s.code, 400 | 422) => Ok(Err(s.message.clone())),
        Err(e) => Err(super::api_error("apply (create/patch)", "services", &c.namespace, e)),
    }
}

/// Deletes the Service `name` (already gone is fine).
pub async fn delete(c: &Cluster, name: &str) -> Result<()> {
    let api: Api<Service> = Api::namespaced(c.client.clone(), &c.namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(e) if not_found(&e) => Ok(()),
        Err(e) => Err(super::api_error("delete", "services", &c.namespace, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{TrafficDistribution, TrafficPolicy};

    #[test]
    fn a_scenario_service_carries_the_variant_and_selects_the_servers_or_nothing() {
        let s = ScenarioService {
            variant: "affinity".into(),
            options: ServiceOptions {
                affinity: SessionAffinity::ClientIp,
                affinity_timeout: 60,
                external_traffic_policy: TrafficPolicy::Local,
                traffic_distribution: Some(TrafficDistribution::PreferSameNode),
                ..ServiceOptions::default()
            },
            selects_servers: true,
            load_balancer: true,
            namespace: "svclb".into(),
            run: "r1".into(),
            family: IpFamily::Ipv6,
        };
        let o = s.object();
        assert_eq!(o["metadata"]["name"], "svclb-mx-affinity");
        assert_eq!(o["metadata"]["labels"]["app.kubernetes.io/instance"], "r1");
        assert_eq!(o["metadata"]["labels"][MANAGED_BY.0], MANAGED_BY.1);
        let spec = &o["spec"];
        assert_eq!(spec["type"], "LoadBalancer");
        assert_eq!(spec["selector"], json!({"app.kubernetes.io/name": TSERVER}));
        assert_eq!(spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"], 60);
        assert_eq!(spec["externalTrafficPolicy"], "Local");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        assert_eq!(spec["trafficDistribution"], "PreferSameNode");
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert_eq!(spec["ipFamilies"], json!(["IPv6"]));
        let none = ScenarioService {
            variant: "no-endpoints".into(),
            options: ServiceOptions::default(),
            selects_servers: false,
            load_balancer: false,
            ..s
        }
        .object();
        assert_eq!(none["spec"]["type"], "NodePort");
        assert_eq!(none["spec"]["selector"], json!({"app.kubernetes.io/name": NO_POD}));
        assert!(none["spec"].get("trafficDistribution").is_none());
        assert!(none["spec"].get("sessionAffinityConfig").is_none());
        // The alias is a CNAME of the full name; the headless Service has no clusterIP.
        let a = alias("default", "svclb", "cluster.local", "r1");
        assert_eq!(a["spec"]["externalName"], "svclb-mx-default.svclb.svc.cluster.local");
        assert_eq!(a["metadata"]["name"], "svclb-mx-default-alias");
        let h = headless("svclb", "r1", IpFamily::Ipv4);
        assert_eq!(h["spec"]["clusterIP"], "None");
        assert_eq!(h["spec"]["ipFamilies"], json!(["IPv4"]));
        assert_eq!(dns_name(HEADLESS, "svclb"), "svclb-mx-headless.svclb.svc");
        assert_eq!(all_names().len(), 2 * VARIANTS.len() + 1);
    }

    #[test]
    fn the_role_names_a_service_for_every_variant() {
        let names: Vec<&str> = crate::matrix::variants().iter().map(|v| v.name).collect();
        assert_eq!(names, VARIANTS);
        // Service names are DNS-1035 labels: at most 63 characters.
        assert!(
            all_names()
                .iter()
                .all(|n| n.len() <= 63 && super::super::manifests::is_dns_label(n))
        );
    }

    #[test]
    fn another_runs_or_someone_elses_service_is_in_the_way() {
        let svc = |labels: Value| -> Service {
            serde_json::from_value(json!({"metadata": {"name": "svclb-mx-default", "labels": labels}})).unwrap()
        };
        let ours = json!({MANAGED_BY.0: MANAGED_BY.1, "app.kubernetes.io/instance": "r1"});
        assert_eq!(foreign(&svc(ours.clone()), "r1"), None);
        let e = foreign(&svc(ours), "r2").unwrap();
        assert!(e.contains("matrix run r1") && e.contains("cleanup"), "{e}");
        let e = foreign(&svc(json!({})), "r2").unwrap();
        assert!(e.contains("did not make"), "{e}");
    }
}
