//! The Service allocator: what the API server sets when a Service is applied (families,
//! clusterIPs, nodePorts, trafficDistribution, ingress IPs).

use serde_json::{Value, json};

use super::{State, TdSupport, status};

/// A Service's families as a dual-stack API server sets them: `spec.ipFamilies` as given (IPv4
/// when not), the other family added under PreferDualStack and RequireDualStack;
/// `spec.ipFamilyPolicy` SingleStack when not given.
fn families(spec: &mut Value) -> Vec<String> {
    let policy = spec["ipFamilyPolicy"].as_str().unwrap_or("SingleStack").to_string();
    let mut families: Vec<String> = spec["ipFamilies"]
        .as_array()
        .map(|f| f.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if families.is_empty() {
        families.push("IPv4".into());
    }
    if policy != "SingleStack" && families.len() == 1 {
        let other = if families[0] == "IPv4" { "IPv6" } else { "IPv4" };
        families.push(other.into());
    }
    spec["ipFamilyPolicy"] = json!(policy);
    spec["ipFamilies"] = json!(families);
    families
}

/// The API server's part of applying a Service: its families and a clusterIP of each (not for
/// headless or ExternalName Services), nodePorts (NodePort and LoadBalancer; a re-apply keeps
/// what was allocated), the trafficDistribution as the server takes it, and an ingress IP of
/// each family when LBs are given.
pub(super) fn allocate(st: &mut State, path: &str, obj: &mut Value) -> Result<(), (u16, Value)> {
    let old = st.objects.get(path).cloned();
    let c = st.controllers.as_mut().expect("controllers on");
    let spec = &mut obj["spec"];
    if let Some(td) = spec["trafficDistribution"].as_str().map(str::to_string)
        && td.starts_with("PreferSame")
    {
        match c.td {
            TdSupport::Accept => {}
            TdSupport::Drop => {
                spec.as_object_mut().unwrap().remove("trafficDistribution");
            }
            TdSupport::Refuse => {
                return Err(status(
                    422,
                    "Invalid",
                    &format!(
                        "Service \"x\" is invalid: spec.trafficDistribution: Unsupported value: \"{td}\": supported values: \"PreferClose\""
                    ),
                ));
            }
        }
    }
    let type_ = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    let mut families_ = vec!["IPv4".to_string()];
    if type_ != "ExternalName" {
        families_ = families(spec);
        let kept: Option<Vec<Value>> = old
            .as_ref()
            .and_then(|o| o["spec"]["clusterIPs"].as_array().cloned())
            .filter(|ips| ips.len() == families_.len());
        let ips: Vec<Value> = match kept {
            Some(ips) => ips,
            None if spec["clusterIP"] == "None" => vec![json!("None")],
            None => families_
                .iter()
                .map(|f| {
                    c.allocated += 1;
                    let n = c.allocated;
                    json!(if f == "IPv6" {
                        format!("fd00:10:96::{n:x}")
                    } else {
                        format!("10.96.{}.{}", 100 + n / 250, n % 250 + 1)
                    })
                })
                .collect(),
        };
        spec["clusterIP"] = ips[0].clone();
        spec["clusterIPs"] = json!(ips);
    }
    if matches!(type_.as_str(), "NodePort" | "LoadBalancer")
        && let Some(ports) = spec["ports"].as_array_mut()
    {
        for (i, p) in ports.iter_mut().enumerate() {
            let kept = old.as_ref().and_then(|o| o["spec"]["ports"][i]["nodePort"].as_u64());
            let np = kept.unwrap_or_else(|| {
                c.allocated += 1;
                30000 + u64::from(c.allocated)
            });
            p["nodePort"] = json!(np);
        }
    }
    let ingress = if type_ == "LoadBalancer" && c.lb_ips {
        let ips: Vec<Value> = families_
            .iter()
            .map(|f| {
                c.allocated += 1;
                let n = c.allocated;
                let ip = if f == "IPv6" {
                    format!("fc00:f853:ccd:e793::{n:x}")
                } else {
                    format!("172.18.255.{}", n % 250 + 1)
                };
                json!({"ip": ip, "ipMode": "VIP"})
            })
            .collect();
        json!(ips)
    } else {
        json!([])
    };
    obj["status"] = json!({"loadBalancer": {"ingress": ingress}});
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    if obj["spec"]["selector"].is_object() {
        let reads = c.slice_reads;
        c.pending.entry(name).or_insert(reads);
    }
    Ok(())
}
