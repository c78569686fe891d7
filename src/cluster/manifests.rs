//! The bundled manifests (`manifests/*.yaml`, compiled in) and their rendering: each file is a
//! valid set of Kubernetes objects with defaults; options are set structurally on the parsed
//! objects, so what is applied, printed and validated is the same YAML.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::service::{IpFamily, IpFamilyPolicy, MAX_AFFINITY_TIMEOUT, ServiceOptions, ServiceType, SessionAffinity};

pub const TSERVER_YAML: &str = include_str!("../../manifests/tserver.yaml");
pub const AFFINITY_YAML: &str = include_str!("../../manifests/affinity-server.yaml");
pub const RBAC_YAML: &str = include_str!("../../manifests/rbac.yaml");

/// The label on everything the plugin makes; `cleanup` deletes by it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kubectl-svclb");
/// Names of the objects (Deployment and Service share them).
pub const TSERVER: &str = "svclb-tserver";
pub const AFFINITY: &str = "svclb-affinity";
/// The app name of the client pods a `zones` run makes ([`super::clients`]).
pub const CLIENT: &str = "svclb-client";
/// The container image when `--image` is not given: the release of this version.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/kubectl-svclb/kubectl-svclb:v", env!("CARGO_PKG_VERSION"));
/// Where the binary sits in the image (the storm agent is exec'd there).
pub const IMAGE_BINARY: &str = "/usr/local/bin/kubectl-svclb";

/// How the tserver (and optionally the affinity server) is rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub namespace: String,
    pub image: String,
    pub replicas: u32,
    pub service_type: ServiceType,
    /// The tserver Service's load-balancing options.
    pub service: ServiceOptions,
    pub affinity_server: bool,
    /// `spec.ipFamilyPolicy` of every Service (the cluster's default when unset).
    pub ip_family_policy: Option<IpFamilyPolicy>,
    /// `spec.ipFamilies`, primary first (the cluster's default when empty).
    pub ip_families: Vec<IpFamily>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            image: DEFAULT_IMAGE.into(),
            replicas: 4,
            service_type: ServiceType::NodePort,
            service: ServiceOptions::default(),
            affinity_server: false,
            ip_family_policy: None,
            ip_families: Vec::new(),
        }
    }
}

/// Parses a multi-document YAML bundle into objects.
pub fn parse(yaml: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).context("bundled manifest is not valid YAML")?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Sets the namespace of namespaced objects (those that carry one, except kube-system's).
fn set_namespace(obj: &mut Value, ns: &str) {
    if let Some(meta) = obj.get_mut("metadata")
        && let Some(cur) = meta.get("namespace").and_then(Value::as_str)
        && cur != "kube-system"
    {
        meta["namespace"] = json!(ns);
    }
}

fn kind(obj: &Value) -> &str {
    obj["kind"].as_str().unwrap_or_default()
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

fn set_workload(obj: &mut Value, o: &Options) {
    if kind(obj) == "Deployment" {
        obj["spec"]["replicas"] = json!(o.replicas);
        if let Some(containers) = obj["spec"]["template"]["spec"]["containers"].as_array_mut() {
            for c in containers {
                c["image"] = json!(o.image);
            }
        }
    }
}

/// The IP families of a Service, when asked for.
fn set_families(obj: &mut Value, o: &Options) {
    if kind(obj) != "Service" {
        return;
    }
    if let Some(policy) = o.ip_family_policy {
        obj["spec"]["ipFamilyPolicy"] = json!(policy.to_string());
    }
    if !o.ip_families.is_empty() {
        let families: Vec<&str> = o.ip_families.iter().map(|f| f.kube()).collect();
        obj["spec"]["ipFamilies"] = json!(families);
    }
}

/// The tserver objects (Deployment, Service), and the affinity server's when asked.
pub fn render(o: &Options) -> Result<Vec<Value>> {
    validate(o)?;
    let mut objs = parse(TSERVER_YAML)?;
    for obj in &mut objs {
        set_namespace(obj, &o.namespace);
        set_workload(obj, o);
        set_families(obj, o);
        if kind(obj) == "Service" && name(obj) == TSERVER {
            let spec = &mut obj["spec"];
            let svc = &o.service;
            spec["type"] = json!(o.service_type.to_string());
            spec["sessionAffinity"] = json!(svc.affinity.to_string());
            if svc.affinity == SessionAffinity::ClientIp {
                spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": svc.affinity_timeout}});
            }
            if o.service_type != ServiceType::ClusterIP {
                spec["externalTrafficPolicy"] = json!(svc.external_traffic_policy.to_string());
            }
            spec["internalTrafficPolicy"] = json!(svc.internal_traffic_policy.to_string());
            if let Some(td) = svc.traffic_distribution {
                spec["trafficDistribution"] = json!(td.to_string());
            }
            if !svc.source_ranges.is_empty() {
                let ranges: Vec<String> = svc.source_ranges.iter().map(|r| r.to_string()).collect();
                spec["loadBalancerSourceRanges"] = json!(ranges);
            }
        }
    }
    if o.affinity_server {
        for mut obj in parse(AFFINITY_YAML)? {
            set_namespace(&mut obj, &o.namespace);
            set_workload(&mut obj, o);
            set_families(&mut obj, o);
            objs.push(obj);
        }
    }
    Ok(objs)
}

/// The RBAC objects for a user of the plugin in `namespace`.
pub fn render_rbac(namespace: &str) -> Result<Vec<Value>> {
    let mut objs = parse(RBAC_YAML)?;
    for obj in &mut objs {
        set_namespace(obj, namespace);
    }
    Ok(objs)
}

fn validate(o: &Options) -> Result<()> {
    if o.replicas == 0 {
        bail!("--replicas 0: give at least 1 server pod");
    }
    if o.image.trim().is_empty() || o.image.contains(char::is_whitespace) {
        bail!("--image {:?}: give an image reference, e.g. {DEFAULT_IMAGE}", o.image);
    }
    if !o.service.source_ranges.is_empty() && o.service_type != ServiceType::LoadBalancer {
        bail!("--lb-source-ranges applies to a LoadBalancer Service: add --service-type LoadBalancer");
    }
    validate_families(o.ip_family_policy, &o.ip_families)?;
    let t = o.service.affinity_timeout;
    if !(1..=MAX_AFFINITY_TIMEOUT).contains(&t) {
        bail!("--affinity-timeout {t}: give 1..{MAX_AFFINITY_TIMEOUT} seconds (Kubernetes' limit)");
    }
    if !is_dns_label(&o.namespace) {
        bail!(
            "namespace {:?} is not a valid name (lowercase letters, digits, '-')",
            o.namespace
        );
    }
    Ok(())
}

/// The combinations of `--ip-family-policy` and `--ip-families` the API server accepts.
fn validate_families(policy: Option<IpFamilyPolicy>, families: &[IpFamily]) -> Result<()> {
    let given = families.iter().map(|f| f.kube()).collect::<Vec<_>>().join(",");
    // Two families exist: a third entry, or a second equal to the first, is a repeat.
    if families.len() > 2 || (families.len() == 2 && families[0] == families[1]) {
        bail!("--ip-families {given}: give each family once (IPv4, IPv6 or IPv4,IPv6)");
    }
    if families.len() > 1 {
        match policy {
            Some(IpFamilyPolicy::SingleStack) => bail!(
                "--ip-family-policy SingleStack takes one family, not --ip-families {given}: \
                 give one, or use PreferDualStack or RequireDualStack"
            ),
            None => {
                bail!("--ip-families {given}: two families need --ip-family-policy PreferDualStack or RequireDualStack")
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// An RFC 1123 label, as Kubernetes namespaces are.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The objects as one multi-document YAML stream.
pub fn to_yaml(objs: &[Value]) -> Result<String> {
    let mut out = String::new();
    for obj in objs {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(obj)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{TrafficDistribution, TrafficPolicy};

    fn find<'a>(objs: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
        objs.iter()
            .find(|o| kind(o) == kind_ && name(o) == name_)
            .unwrap_or_else(|| panic!("no {kind_} {name_}"))
    }

    #[test]
    fn every_object_is_labelled_managed_by() {
        let mut all = parse(TSERVER_YAML).unwrap();
        all.extend(parse(AFFINITY_YAML).unwrap());
        all.extend(parse(RBAC_YAML).unwrap());
        assert_eq!(all.len(), 2 + 2 + 8);
        for o in &all {
            assert_eq!(o["metadata"]["labels"][MANAGED_BY.0], MANAGED_BY.1, "{}", name(o));
        }
    }

    #[test]
    fn pods_meet_the_restricted_profile() {
        let mut all = parse(TSERVER_YAML).unwrap();
        all.extend(parse(AFFINITY_YAML).unwrap());
        for d in all.iter().filter(|o| kind(o) == "Deployment") {
            let pod = &d["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
            assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
            assert_eq!(d["spec"]["template"]["metadata"]["labels"][MANAGED_BY.0], MANAGED_BY.1);
            for c in pod["containers"].as_array().unwrap() {
                let sc = &c["securityContext"];
                assert_eq!(sc["allowPrivilegeEscalation"], false);
                assert_eq!(sc["readOnlyRootFilesystem"], true);
                assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
                let env: Vec<&str> = c["env"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["name"].as_str().unwrap())
                    .collect();
                assert_eq!(env, ["POD_NAME", "NODE_NAME"]);
            }
        }
    }

    #[test]
    fn defaults_render_a_nodeport_service_without_affinity() {
        let objs = render(&Options::default()).unwrap();
        assert_eq!(objs.len(), 2);
        let d = find(&objs, "Deployment", TSERVER);
        assert_eq!(d["spec"]["replicas"], 4);
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], DEFAULT_IMAGE);
        let s = find(&objs, "Service", TSERVER);
        assert_eq!(s["spec"]["type"], "NodePort");
        assert_eq!(s["spec"]["sessionAffinity"], "None");
        assert!(s["spec"].get("trafficDistribution").is_none());
        let ports: Vec<(u64, &str)> = s["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["port"].as_u64().unwrap(), p["protocol"].as_str().unwrap()))
            .collect();
        assert_eq!(ports, [(5001, "TCP"), (5001, "UDP"), (8080, "TCP")]);
    }

    #[test]
    fn options_render_into_the_objects() {
        let o = Options {
            namespace: "lb-test".into(),
            image: "registry.example/svclb:dev".into(),
            replicas: 12,
            service_type: ServiceType::LoadBalancer,
            service: ServiceOptions {
                affinity: SessionAffinity::ClientIp,
                affinity_timeout: 30,
                external_traffic_policy: TrafficPolicy::Local,
                internal_traffic_policy: TrafficPolicy::Local,
                traffic_distribution: Some(TrafficDistribution::PreferClose),
                source_ranges: vec!["192.0.2.0/24".parse().unwrap()],
            },
            affinity_server: true,
            ip_family_policy: None,
            ip_families: Vec::new(),
        };
        let objs = render(&o).unwrap();
        assert_eq!(objs.len(), 4);
        for obj in &objs {
            assert_eq!(obj["metadata"]["namespace"], "lb-test");
        }
        let d = find(&objs, "Deployment", TSERVER);
        assert_eq!(d["spec"]["replicas"], 12);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"],
            "registry.example/svclb:dev"
        );
        let s = &find(&objs, "Service", TSERVER)["spec"];
        assert_eq!(s["type"], "LoadBalancer");
        assert_eq!(s["sessionAffinity"], "ClientIP");
        assert_eq!(s["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"], 30);
        assert_eq!(s["externalTrafficPolicy"], "Local");
        assert_eq!(s["internalTrafficPolicy"], "Local");
        assert_eq!(s["trafficDistribution"], "PreferClose");
        assert_eq!(s["loadBalancerSourceRanges"], serde_json::json!(["192.0.2.0/24"]));
        let a = &find(&objs, "Service", AFFINITY)["spec"];
        assert_eq!(a["type"], "LoadBalancer");
        assert_eq!(a["sessionAffinity"], "ClientIP");
        assert_eq!(a["externalTrafficPolicy"], "Local");
        let ad = find(&objs, "Deployment", AFFINITY);
        assert_eq!(
            ad["spec"]["template"]["spec"]["containers"][0]["image"],
            "registry.example/svclb:dev"
        );
    }

    #[test]
    fn ip_families_render_into_every_service_only_when_given() {
        let objs = render(&Options {
            affinity_server: true,
            ..Options::default()
        })
        .unwrap();
        for s in objs.iter().filter(|o| kind(o) == "Service") {
            assert!(s["spec"].get("ipFamilyPolicy").is_none() && s["spec"].get("ipFamilies").is_none());
        }
        let objs = render(&Options {
            affinity_server: true,
            ip_family_policy: Some(IpFamilyPolicy::PreferDualStack),
            ip_families: vec![IpFamily::Ipv6, IpFamily::Ipv4],
            ..Options::default()
        })
        .unwrap();
        for name_ in [TSERVER, AFFINITY] {
            let s = &find(&objs, "Service", name_)["spec"];
            assert_eq!(s["ipFamilyPolicy"], "PreferDualStack");
            assert_eq!(s["ipFamilies"], json!(["IPv6", "IPv4"]));
        }
        assert!(find(&objs, "Deployment", TSERVER)["spec"].get("ipFamilies").is_none());
        // A policy alone leaves the families to the cluster.
        let objs = render(&Options {
            ip_family_policy: Some(IpFamilyPolicy::RequireDualStack),
            ..Options::default()
        })
        .unwrap();
        let s = &find(&objs, "Service", TSERVER)["spec"];
        assert_eq!(s["ipFamilyPolicy"], "RequireDualStack");
        assert!(s.get("ipFamilies").is_none());
    }

    #[test]
    fn bad_ip_family_combinations_are_one_line_errors() {
        use IpFamily::{Ipv4, Ipv6};
        use IpFamilyPolicy::*;
        for (policy, families, want) in [
            (Some(SingleStack), vec![Ipv4, Ipv6], "SingleStack takes one family"),
            (Some(PreferDualStack), vec![Ipv4, Ipv4], "give each family once"),
            (Some(RequireDualStack), vec![Ipv6, Ipv4, Ipv6], "give each family once"),
            (None, vec![Ipv6, Ipv4], "two families need --ip-family-policy"),
        ] {
            let e = render(&Options {
                ip_family_policy: policy,
                ip_families: families,
                ..Options::default()
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains(want) && !e.contains('\n'), "{e}");
        }
        for (policy, families) in [
            (Some(SingleStack), vec![Ipv6]),
            (Some(RequireDualStack), vec![Ipv4]),
            (None, vec![Ipv6]),
        ] {
            render(&Options {
                ip_family_policy: policy,
                ip_families: families,
                ..Options::default()
            })
            .unwrap();
        }
    }

    #[test]
    fn rendered_yaml_parses_back_to_the_same_objects() {
        let objs = render(&Options {
            affinity_server: true,
            ..Options::default()
        })
        .unwrap();
        assert_eq!(parse(&to_yaml(&objs).unwrap()).unwrap(), objs);
    }

    #[test]
    fn servers_spread_over_nodes_and_zones() {
        // The tserver: the Service `spread` and `zones` measure.
        for d in parse(TSERVER_YAML).unwrap().iter().filter(|o| kind(o) == "Deployment") {
            let spread = d["spec"]["template"]["spec"]["topologySpreadConstraints"]
                .as_array()
                .unwrap();
            let keys: Vec<&str> = spread.iter().map(|c| c["topologyKey"].as_str().unwrap()).collect();
            assert_eq!(
                keys,
                ["kubernetes.io/hostname", "topology.kubernetes.io/zone"],
                "{}",
                name(d)
            );
            for c in spread {
                assert_eq!(c["maxSkew"], 1);
                // A single-node or single-zone cluster still gets all its pods.
                assert_eq!(c["whenUnsatisfiable"], "ScheduleAnyway");
                assert_eq!(
                    c["labelSelector"]["matchLabels"]["app.kubernetes.io/name"],
                    d["metadata"]["name"]
                );
            }
        }
    }

    #[test]
    fn the_role_may_create_and_delete_pods_in_its_namespace_only() {
        let objs = render_rbac("team-a").unwrap();
        let role = find(&objs, "Role", "svclb-user");
        assert_eq!(role["metadata"]["namespace"], "team-a");
        let rule = |resource: &str| {
            role["rules"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["resources"] == json!([resource]))
                .unwrap_or_else(|| panic!("no rule for {resource}"))["verbs"]
                .clone()
        };
        // zones' client pods: create and delete; no update, patch, watch or deletecollection.
        assert_eq!(rule("pods"), json!(["get", "list", "create", "delete"]));
        assert_eq!(rule("pods/exec"), json!(["create", "get"]));
        // disruption: evictions (drain-node) and the EndpointSlice watch.
        assert_eq!(rule("pods/eviction"), json!(["create"]));
        assert_eq!(rule("endpointslices"), json!(["list", "watch"]));
        // Nothing cluster-wide but reading nodes, and cordoning them in a role of its own.
        let cluster_role = find(&objs, "ClusterRole", "svclb-nodes-reader");
        assert_eq!(
            cluster_role["rules"],
            json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}])
        );
        let cordon = find(&objs, "ClusterRole", "svclb-nodes-cordon");
        assert_eq!(
            cordon["rules"],
            json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["patch"]}])
        );
    }

    #[test]
    fn the_role_limits_deployments_and_services_to_ours_by_name() {
        use crate::cluster::fake::{Attributes, rbac_allows};
        let rbac = render_rbac("team-a").unwrap();
        let may = |method: &str, path: &str| {
            let a = Attributes::of(method, path, "").unwrap();
            rbac_allows(&rbac, &a)
        };
        let deployments = "/apis/apps/v1/namespaces/team-a/deployments";
        let services = "/api/v1/namespaces/team-a/services";
        for base in [deployments, services] {
            for name in [TSERVER, AFFINITY] {
                for method in ["GET", "PATCH", "DELETE"] {
                    assert!(may(method, &format!("{base}/{name}")), "{method} {base}/{name}");
                }
                // Server-side apply creating it: `create` with the name.
                let create = Attributes {
                    verb: "create".into(),
                    ..Attributes::of("PATCH", &format!("{base}/{name}"), "").unwrap()
                };
                assert!(rbac_allows(&rbac, &create), "{create}");
            }
            assert!(may("GET", base), "list {base}");
            // Anyone else's, or a create by POST (no name to match), or in another namespace: no.
            for method in ["GET", "PATCH", "DELETE", "PUT"] {
                assert!(!may(method, &format!("{base}/theirs")), "{method} {base}/theirs");
            }
            assert!(!may("POST", base), "POST {base}");
            assert!(!may("DELETE", base), "deletecollection {base}");
            assert!(!may("GET", &base.replace("team-a", "prod")), "list in prod");
        }
        // The names the Role lists are the names the manifests use.
        let all = render(&Options {
            affinity_server: true,
            ..Options::default()
        })
        .unwrap();
        let role = find(&rbac, "Role", "svclb-user");
        for obj in all
            .iter()
            .filter(|o| o["kind"] == "Deployment" || o["kind"] == "Service")
        {
            let plural = if obj["kind"] == "Deployment" {
                "deployments"
            } else {
                "services"
            };
            let named = role["rules"].as_array().unwrap().iter().any(|r| {
                r["resources"] == json!([plural])
                    && r["resourceNames"]
                        .as_array()
                        .is_some_and(|n| n.contains(&obj["metadata"]["name"]))
            });
            assert!(
                named,
                "{plural}/{} is not in the Role's resourceNames",
                obj["metadata"]["name"]
            );
        }
        // matrix's Services: each by its name, created by server-side apply; nothing else.
        for name in crate::cluster::matrix::all_names() {
            for method in ["GET", "PATCH", "DELETE"] {
                assert!(may(method, &format!("{services}/{name}")), "{method} {services}/{name}");
            }
            let create = Attributes {
                verb: "create".into(),
                ..Attributes::of("PATCH", &format!("{services}/{name}"), "").unwrap()
            };
            assert!(rbac_allows(&rbac, &create), "{create}");
            assert!(!may("PATCH", &format!("{deployments}/{name}")), "deployments/{name}");
        }
        assert!(!may("PATCH", &format!("{services}/svclb-mx-other")));
        // Pods cannot be named (a ReplicaSet's, a run's): the whole namespace, hence the advice
        // of a dedicated one.
        assert!(may("POST", "/api/v1/namespaces/team-a/pods/anything/exec"));
        assert!(!may("POST", "/api/v1/namespaces/other/pods/anything/exec"));
        // The kube-proxy ConfigMap only, in kube-system only.
        assert!(may("GET", "/api/v1/namespaces/kube-system/configmaps/kube-proxy"));
        assert!(!may("GET", "/api/v1/namespaces/kube-system/configmaps/coredns"));
        assert!(may("GET", "/api/v1/nodes"));
    }

    #[test]
    fn rbac_renders_for_the_namespace_and_keeps_kube_system() {
        let objs = render_rbac("team-a").unwrap();
        let ns: Vec<Option<&str>> = objs.iter().map(|o| o["metadata"]["namespace"].as_str()).collect();
        assert_eq!(
            ns,
            [
                Some("team-a"),
                Some("team-a"),
                None,
                None,
                None,
                None,
                Some("kube-system"),
                Some("kube-system")
            ]
        );
    }

    #[test]
    fn bad_options_are_one_line_errors() {
        for (o, want) in [
            (
                Options {
                    replicas: 0,
                    ..Options::default()
                },
                "--replicas",
            ),
            (
                Options {
                    image: "a b".into(),
                    ..Options::default()
                },
                "--image",
            ),
            (
                Options {
                    service: ServiceOptions {
                        affinity_timeout: 0,
                        ..ServiceOptions::default()
                    },
                    ..Options::default()
                },
                "--affinity-timeout",
            ),
            (
                Options {
                    namespace: "Bad_NS".into(),
                    ..Options::default()
                },
                "namespace",
            ),
        ] {
            let e = render(&o).unwrap_err().to_string();
            assert!(e.contains(want) && !e.contains('\n'), "{e}");
        }
    }
}
