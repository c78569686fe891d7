//! Test support: an in-memory API server behind kube's tower-test mock (no network). Objects are
//! stored by their API path; GET (item, or list with a label selector), server-side apply
//! (PATCH), create (POST), DELETE and `/version` behave as the API server does for the calls the
//! plugin makes. A fake Deployment controller makes pods for applied Deployments, ready or
//! failing; a fake kubelet starts created pods after a few reads (or fails them).
//!
//! Merge and strategic merge patches merge into the stored object; a list `?watch=true` streams
//! the changes after its resourceVersion (every change has one); with [`FakeApi::rollouts`] the
//! Deployment controller also follows changes as it would over time, one step per read: it scales,
//! rolls a changed pod template out one surge pod at a time, replaces deleted and evicted pods,
//! lets pods terminate (serving, then not serving, then gone), honours cordoned nodes, and keeps
//! the Service's EndpointSlice in step.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A response body: whole, or a watch's stream of events.
type FakeBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

use super::Cluster;

/// What the fake controller does with an applied Deployment's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pods {
    Ready,
    ImagePullBackOff,
    /// Created pods never start (the kubelet is slow); Deployments' pods are not ready.
    Pending,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    log: Vec<String>,
    forbid: Option<(String, String, String)>,
    /// Created pods not started yet: reads of pods left before the kubelet starts each.
    starting: BTreeMap<String, u32>,
    /// What the kubelet does with created pods (`None`: as with Deployments' pods).
    created_pods: Option<Pods>,
    /// Every object created (POST), as it was sent.
    created: Vec<Value>,
    /// Every object applied (PATCH), as it was sent.
    applied: Vec<Value>,
    /// RBAC objects every request is authorized against (see [`FakeApi::enforce_rbac`]).
    rbac: Option<Vec<Value>>,
    /// Requests RBAC refused: `verb resource/name in namespace`.
    denied: Vec<String>,
    /// Services applied through the API get addresses and EndpointSlices (see
    /// [`FakeApi::run_controllers`]).
    controllers: Option<Controllers>,
    /// Pods with `hostNetwork: true` are refused as Pod Security admission does.
    refuse_host_network: bool,
    /// `METHOD path` and body of every PATCH, POST and DELETE, in order.
    bodies: Vec<(String, Value)>,
    /// The last resourceVersion handed out; every change gets the next.
    rv: u64,
    /// Every change: (resourceVersion, ADDED/MODIFIED/DELETED, path, object).
    changes: Vec<(u64, &'static str, String, Value)>,
    watchers: Vec<Watcher>,
    /// The live Deployment controller ([`FakeApi::rollouts`]).
    rollouts: Option<Rollouts>,
}

/// What the fake's Service allocator and EndpointSlice controller do.
#[derive(Debug, Clone, Default)]
pub struct Controllers {
    /// LoadBalancer Services get an ingress IP.
    pub lb_ips: bool,
    /// `spec.trafficDistribution` PreferSameZone/PreferSameNode: taken, dropped (an API server
    /// without the feature), or refused (422).
    pub td: TdSupport,
    /// Lists of a Service's EndpointSlices before the controller has made them.
    pub slice_reads: u32,
    /// Allocated so far (addresses and nodePorts are numbered from it).
    pub(crate) allocated: u32,
    /// Applied Services with a selector → lists of their slices left before the slice appears.
    pub(crate) pending: BTreeMap<String, u32>,
}

/// How the fake API server takes a `trafficDistribution` of PreferSameZone or PreferSameNode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TdSupport {
    #[default]
    Accept,
    /// Dropped from the stored object, as an API server with the feature gate off does.
    Drop,
    /// 422 Unsupported value, as an API server that predates the values does.
    Refuse,
}

/// What RBAC authorizes: a request's verb, API group, resource (and subresource), name and
/// namespace (empty for cluster-scoped resources).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub name: String,
    pub namespace: String,
}

impl std::fmt::Display for Attributes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if !self.name.is_empty() {
            write!(f, "/{}", self.name)?;
        }
        if !self.namespace.is_empty() {
            write!(f, " in {}", self.namespace)?;
        }
        Ok(())
    }
}

impl Attributes {
    /// The attributes of a request to a resource path (`None` for other paths, like `/version`).
    pub fn of(method: &str, path: &str, query: &str) -> Option<Attributes> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest) = match parts.as_slice() {
            ["api", _version, rest @ ..] => (String::new(), rest),
            ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
            rest => (String::new(), rest),
        };
        let (resource, name) = match rest {
            [resource] => (resource.to_string(), String::new()),
            [resource, name] => (resource.to_string(), name.to_string()),
            [resource, name, sub] => (format!("{resource}/{sub}"), name.to_string()),
            _ => return None,
        };
        let verb = match (method, name.is_empty()) {
            ("GET", _) if query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1") => "watch",
            ("GET", false) => "get",
            ("GET", true) => "list",
            ("POST", _) => "create",
            ("PATCH", _) => "patch",
            ("PUT", _) => "update",
            ("DELETE", false) => "delete",
            ("DELETE", true) => "deletecollection",
            _ => return None,
        };
        Some(Attributes {
            verb: verb.into(),
            group,
            resource,
            name,
            namespace,
        })
    }
}

/// Whether RBAC objects allow a request, as the API server's RBAC authorizer decides: a rule of a
/// Role bound in the request's namespace, or of a ClusterRole bound cluster-wide, that lists the
/// verb, the API group, the resource (with its subresource) and, when it lists resourceNames, the
/// name. A create by POST has no name yet, so a rule with resourceNames never allows it.
pub fn rbac_allows(rbac: &[Value], a: &Attributes) -> bool {
    let has = |list: &Value, want: &str| {
        list.as_array()
            .is_some_and(|l| l.iter().any(|v| v.as_str() == Some(want) || v.as_str() == Some("*")))
    };
    let bound = |kind: &str, role: &Value| {
        let binding = if kind == "Role" {
            "RoleBinding"
        } else {
            "ClusterRoleBinding"
        };
        rbac.iter().any(|b| {
            b["kind"] == binding
                && b["roleRef"]["kind"] == kind
                && b["roleRef"]["name"] == role["metadata"]["name"]
                && (kind != "Role" || b["metadata"]["namespace"] == role["metadata"]["namespace"])
        })
    };
    rbac.iter()
        .filter(|r| match r["kind"].as_str() {
            Some("Role") => !a.namespace.is_empty() && r["metadata"]["namespace"] == a.namespace.as_str(),
            Some("ClusterRole") => true,
            _ => false,
        })
        .filter(|r| bound(r["kind"].as_str().unwrap_or_default(), r))
        .flat_map(|r| r["rules"].as_array().cloned().unwrap_or_default())
        .any(|rule| {
            has(&rule["verbs"], &a.verb)
                && has(&rule["apiGroups"], &a.group)
                && has(&rule["resources"], &a.resource)
                && match rule.get("resourceNames").and_then(Value::as_array) {
                    Some(names) if !names.is_empty() => names.iter().any(|n| n.as_str() == Some(a.name.as_str())),
                    _ => true,
                }
        })
}

/// An open watch: the collection it lists, its label selector, where its events go.
struct Watcher {
    collection: String,
    selector: Option<String>,
    tx: mpsc::UnboundedSender<Bytes>,
}

/// The live controller's pods in transition, by path: steps (reads) left in their phase.
#[derive(Default)]
struct Rollouts {
    /// Starting: not ready yet.
    starting: BTreeMap<String, u32>,
    /// Terminating: serving for the first steps, then not serving, then gone.
    terminating: BTreeMap<String, u32>,
    /// Pods made so far (names are `<deployment>-<hash>-<n>`).
    made: u32,
    /// Pods the controller makes never become ready.
    stuck: bool,
    /// Evictions refused with 429 (a PodDisruptionBudget) before one is allowed.
    refuse_evictions: u32,
}

/// Steps a live pod takes to become ready; to stop serving once terminating; to go.
pub const STARTING_STEPS: u32 = 2;
pub const SERVING_STEPS: u32 = 2;
pub const GONE_STEPS: u32 = 4;

impl State {
    /// Stores `obj` at `path` as a change (watchers see it).
    fn set(&mut self, path: &str, obj: Value) {
        let kind = if self.objects.contains_key(path) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.objects.insert(path.to_string(), obj.clone());
        self.changed(kind, path, obj);
    }

    /// Removes the object at `path` as a change.
    fn unset(&mut self, path: &str) -> Option<Value> {
        let obj = self.objects.remove(path)?;
        self.changed("DELETED", path, obj.clone());
        Some(obj)
    }

    fn changed(&mut self, kind: &'static str, path: &str, mut obj: Value) {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let line = watch_line(kind, &obj);
        self.watchers
            .retain(|w| !w.matches(path, &obj) || w.tx.send(line.clone()).is_ok());
        self.changes.push((self.rv, kind, path.to_string(), obj));
    }
}

impl Watcher {
    fn matches(&self, path: &str, obj: &Value) -> bool {
        path.rsplit_once('/')
            .is_some_and(|(parent, _)| parent == self.collection)
            && self.selector.as_deref().is_none_or(|s| matches(obj, s))
    }
}

fn watch_line(kind: &str, obj: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap();
    line.push(b'\n');
    Bytes::from(line)
}

/// Reads of pods a created pod stays Pending for.
pub const START_READS: u32 = 2;

#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    pods: Pods,
}

pub const NS: &str = "svclb-test";

impl FakeApi {
    pub fn new(pods: Pods) -> Self {
        Self {
            state: Arc::default(),
            pods,
        }
    }

    /// Stores `obj` at its API path.
    pub fn put(&self, obj: Value) {
        let path = path_of(&obj);
        self.state.lock().unwrap().set(&path, obj);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    /// Every stored object whose API path starts with `prefix`.
    pub fn list(&self, prefix: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// `METHOD path?query` of every request, in order.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// Refuses `method` on paths containing `fragment` as RBAC would, for `user`.
    pub fn forbid(&self, method: &str, fragment: &str, user: &str) {
        self.state.lock().unwrap().forbid = Some((method.into(), fragment.into(), user.into()));
    }

    /// Authorizes every request from now on against `rbac` (Roles, ClusterRoles and their
    /// bindings, as `manifests --rbac` renders them, bound to the user making the requests), the
    /// way the API server's RBAC authorizer does; a refusal is a 403 and is kept in [`Self::denied`].
    pub fn enforce_rbac(&self, rbac: Vec<Value>) {
        self.state.lock().unwrap().rbac = Some(rbac);
    }

    /// The requests RBAC refused so far: `verb resource[/subresource][/name] in namespace`.
    pub fn denied(&self) -> Vec<String> {
        self.state.lock().unwrap().denied.clone()
    }

    /// What the kubelet does with pods created from now on (default: as with Deployments' pods).
    pub fn created_pods(&self, pods: Pods) {
        self.state.lock().unwrap().created_pods = Some(pods);
    }

    /// Every object created (POST) so far, as the client sent it.
    pub fn created(&self) -> Vec<Value> {
        self.state.lock().unwrap().created.clone()
    }

    /// `METHOD path` and body of every PATCH, POST and DELETE so far.
    pub fn bodies(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().bodies.clone()
    }

    /// From now on the Deployment controller is live (see the module's documentation); `stuck`:
    /// the pods it makes never become ready.
    pub fn rollouts(&self, stuck: bool) {
        self.state.lock().unwrap().rollouts = Some(Rollouts {
            stuck,
            ..Rollouts::default()
        });
    }

    /// Whether the pods the live controller makes from now on stay not ready.
    pub fn stuck(&self, stuck: bool) {
        if let Some(r) = self.state.lock().unwrap().rollouts.as_mut() {
            r.stuck = stuck;
        }
    }

    /// The next `n` evictions are refused with 429, as a PodDisruptionBudget would.
    pub fn refuse_evictions(&self, n: u32) {
        if let Some(r) = self.state.lock().unwrap().rollouts.as_mut() {
            r.refuse_evictions = n;
        }
    }

    /// Runs the live controller `steps` times (as that many reads would).
    pub fn step(&self, steps: u32) {
        let mut st = self.state.lock().unwrap();
        for _ in 0..steps {
            step(&mut st);
        }
    }

    /// Every object applied server-side (PATCH) so far, as the client sent it.
    pub fn applied(&self) -> Vec<Value> {
        self.state.lock().unwrap().applied.clone()
    }

    /// From now on, a Service applied through the API (PATCH) gets a clusterIP (unless headless
    /// or ExternalName), nodePorts (NodePort, LoadBalancer), maybe an ingress IP, and an
    /// EndpointSlice made from the pods its selector matches (conditions from their readiness,
    /// node, zone, and the hints of its trafficDistribution), as the API server and the
    /// EndpointSlice controller do.
    pub fn run_controllers(&self, c: Controllers) {
        self.state.lock().unwrap().controllers = Some(c);
    }

    /// Refuses pods with `hostNetwork: true` from now on, as a namespace at Pod Security level
    /// `baseline` or `restricted` does.
    pub fn refuse_host_network(&self) {
        self.state.lock().unwrap().refuse_host_network = true;
    }

    /// `METHOD path` of every request, in order, without queries.
    pub fn requests(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .map(|l| l.split('?').next().unwrap_or_default().to_string())
            .collect()
    }

    /// A client whose requests this fake answers.
    pub fn cluster(&self) -> Cluster {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<FakeBody>>();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let method = req.method().to_string();
                let uri = req.uri().clone();
                let content_type = req
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let body = req.into_body().collect_bytes().await.unwrap_or_default();
                let query = uri.query().unwrap_or("");
                if method == "GET" && query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1") {
                    send.send_response(me.watch(uri.path(), query));
                    continue;
                }
                let (code, v) = me.handle(&method, uri.path(), query, &content_type, &body);
                let resp = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(serde_json::to_vec(&v).unwrap())).boxed_unsync())
                    .unwrap();
                send.send_response(resp);
            }
        });
        Cluster {
            client: Client::new(svc, NS),
            context: "kind-test".into(),
            namespace: NS.into(),
        }
    }

    /// A watch of the collection at `path`: the changes after its resourceVersion, then every
    /// change as it happens, one JSON event a line.
    fn watch(&self, path: &str, query: &str) -> Response<FakeBody> {
        let mut st = self.state.lock().unwrap();
        st.log.push(format!("GET {path}?{query}"));
        if let Some(rbac) = &st.rbac
            && let Some(a) = Attributes::of("GET", path, query)
            && !rbac_allows(rbac, &a)
        {
            let what = a.to_string();
            st.denied.push(what.clone());
            let (code, v) = status(
                403,
                "Forbidden",
                &format!(
                    "{what} is forbidden: User \"dev\" cannot {} resource \"{}\" in API group \"{}\" in the namespace \"{}\"",
                    a.verb, a.resource, a.group, a.namespace
                ),
            );
            return Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(serde_json::to_vec(&v).unwrap())).boxed_unsync())
                .unwrap();
        }
        let param = |k: &str| query.split('&').find_map(|kv| kv.strip_prefix(k)).map(decode);
        let since: u64 = param("resourceVersion=").and_then(|v| v.parse().ok()).unwrap_or(st.rv);
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let w = Watcher {
            collection: path.to_string(),
            selector: param("labelSelector="),
            tx,
        };
        for (rv, kind, p, obj) in &st.changes {
            if *rv > since && w.matches(p, obj) {
                let _ = w.tx.send(watch_line(kind, obj));
            }
        }
        st.watchers.push(w);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(StreamBody::new(stream).boxed_unsync())
            .unwrap()
    }

    fn handle(&self, method: &str, path: &str, query: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
        let mut st = self.state.lock().unwrap();
        st.log.push(if query.is_empty() {
            format!("{method} {path}")
        } else {
            format!("{method} {path}?{query}")
        });
        if method != "GET" {
            let parsed = serde_json::from_slice(body).unwrap_or(Value::Null);
            st.bodies.push((format!("{method} {path}"), parsed));
        }
        if let Some((m, frag, user)) = &st.forbid
            && m == method
            && path.contains(frag.as_str())
        {
            let verb = match method {
                "PATCH" => "patch",
                "DELETE" => "delete",
                "POST" => "create",
                _ => "list",
            };
            let msg = format!(
                "{frag} is forbidden: User \"{user}\" cannot {verb} resource \"{frag}\" in API group \"\" in the namespace \"{NS}\""
            );
            return status(403, "Forbidden", &msg);
        }
        if path == "/version" {
            return (200, json!({"major": "1", "minor": "33", "gitVersion": "v1.33.1"}));
        }
        if let Some(rbac) = &st.rbac
            && let Some(attrs) = Attributes::of(method, path, query)
        {
            // A server-side apply (PATCH) that creates the object is also authorized as `create`,
            // with the object's name (apiserver's handlers/patch.go, createAuthorizerAttributes).
            let creates = method == "PATCH" && !st.objects.contains_key(path);
            let refused = std::iter::once(attrs.clone())
                .chain(creates.then(|| Attributes {
                    verb: "create".into(),
                    ..attrs.clone()
                }))
                .find(|a| !rbac_allows(rbac, a));
            if let Some(a) = refused {
                let what = a.to_string();
                st.denied.push(what.clone());
                return status(
                    403,
                    "Forbidden",
                    &format!(
                        "{what} is forbidden: User \"dev\" cannot {} resource \"{}\" in API group \"{}\" in the namespace \"{}\"",
                        a.verb, a.resource, a.group, a.namespace
                    ),
                );
            }
        }
        if method == "GET" && path.contains("/pods") {
            self.kubelet(&mut st);
        }
        if method == "GET" && path.ends_with("/endpointslices") {
            endpoint_slice_controller(&mut st, query);
        }
        if method == "GET" && st.rollouts.is_some() {
            step(&mut st);
        }
        if method == "POST" && path.ends_with("/eviction") {
            return evict(&mut st, path.trim_end_matches("/eviction"));
        }
        if method == "DELETE" && path.contains("/pods/") && st.rollouts.is_some() && st.objects.contains_key(path) {
            return (200, terminate(&mut st, path));
        }
        let merge = content_type.starts_with("application/merge-patch")
            || content_type.starts_with("application/strategic-merge-patch");
        if method == "PATCH" && merge {
            let Some(mut obj) = st.objects.get(path).cloned() else {
                return status(404, "NotFound", &format!("{path} not found"));
            };
            let patch: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let spec_before = obj["spec"].clone();
            merge_patch(&mut obj, &patch);
            if obj["spec"] != spec_before {
                let g = obj["metadata"]["generation"].as_i64().unwrap_or(1);
                obj["metadata"]["generation"] = json!(g + 1);
            }
            st.set(path, obj.clone());
            return (200, obj);
        }
        match method {
            "GET" => {
                if let Some(obj) = st.objects.get(path).cloned() {
                    let obj = self.reconcile(&mut st, path, obj);
                    return (200, obj);
                }
                let selector = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("labelSelector="))
                    .map(|s| s.replace("%3D", "=").replace("%2C", ",").replace("%2F", "/"));
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|(p, _)| p.rsplit_once('/').is_some_and(|(parent, _)| parent == path))
                    .map(|(_, o)| o.clone())
                    .filter(|o| selector.as_deref().is_none_or(|s| matches(o, s)))
                    .collect();
                if items.is_empty() && is_item_path(path) {
                    return status(404, "NotFound", &format!("{path} not found"));
                }
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
                )
            }
            "PATCH" => {
                let mut obj: Value = serde_json::from_slice(body).unwrap();
                st.applied.push(obj.clone());
                obj["metadata"]["generation"] = json!(1);
                obj["metadata"]["uid"] = json!(format!("uid-{}", st.objects.len()));
                if obj["kind"] == "Service"
                    && st.controllers.is_some()
                    && let Err(refused) = allocate(&mut st, path, &mut obj)
                {
                    return refused;
                }
                st.set(path, obj.clone());
                (200, obj)
            }
            "POST" => {
                let mut obj: Value = serde_json::from_slice(body).unwrap();
                st.created.push(obj.clone());
                let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
                    return status(422, "Invalid", "metadata.name: Required value");
                };
                let item = format!("{path}/{name}");
                if st.objects.contains_key(&item) {
                    return status(409, "AlreadyExists", &format!("{item} already exists"));
                }
                obj["metadata"]["uid"] = json!(format!("uid-{name}"));
                obj["metadata"]["namespace"] = json!(NS);
                if obj["kind"] == "Pod" && st.refuse_host_network && obj["spec"]["hostNetwork"] == true {
                    return status(
                        403,
                        "Forbidden",
                        &format!(
                            "pods \"{name}\" is forbidden: violates PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true)"
                        ),
                    );
                }
                if obj["kind"] == "Pod" {
                    obj["status"] =
                        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]});
                    st.starting.insert(item.clone(), START_READS);
                }
                st.set(&item, obj.clone());
                (201, obj)
            }
            "DELETE" => match st.unset(path) {
                Some(o) => {
                    if o["kind"] == "Service" {
                        // Its EndpointSlices go with it (garbage collection by owner).
                        let name = o["metadata"]["name"].as_str().unwrap_or_default().to_string();
                        st.objects
                            .retain(|_, v| v["metadata"]["labels"]["kubernetes.io/service-name"] != name.as_str());
                        if let Some(c) = st.controllers.as_mut() {
                            c.pending.remove(&name);
                        }
                    }
                    (200, o)
                }
                None => status(404, "NotFound", &format!("{path} not found")),
            },
            _ => status(405, "MethodNotAllowed", method),
        }
    }

    /// The fake kubelet, at every read of pods: a created pod starts (Running and Ready, with an
    /// IP) or fails to pull its image after [`START_READS`] reads.
    fn kubelet(&self, st: &mut State) {
        let outcome = st.created_pods.unwrap_or(self.pods);
        if outcome == Pods::Pending {
            return;
        }
        let mut started = Vec::new();
        for (path, left) in st.starting.iter_mut() {
            *left -= 1;
            if *left == 0 {
                started.push(path.clone());
            }
        }
        for path in started {
            st.starting.remove(&path);
            let node_ip = st.objects.get(&path).and_then(|pod| {
                let node = pod["spec"]["nodeName"].as_str()?;
                let n = st.objects.get(&format!("/api/v1/nodes/{node}"))?;
                n["status"]["addresses"][0]["address"].as_str().map(str::to_string)
            });
            let Some(pod) = st.objects.get_mut(&path) else { continue };
            let n = pod["spec"]["nodeName"].as_str().unwrap_or_default();
            let last = n.rsplit('-').next().unwrap_or("9");
            let ip = match node_ip {
                Some(ip) if pod["spec"]["hostNetwork"] == true => ip,
                _ => format!("10.244.{last}.200"),
            };
            pod["status"] = match outcome {
                Pods::Ready => {
                    json!({"phase": "Running", "podIP": ip, "hostIP": "172.18.0.2",
                    "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"},
                                   {"type": "ContainersReady", "status": "True"}]})
                }
                Pods::ImagePullBackOff | Pods::Pending => json!({"phase": "Pending",
                    "conditions": [{"type": "PodScheduled", "status": "True"}],
                    "containerStatuses": [{"name": "client", "ready": false, "restartCount": 0, "image": pod["spec"]["containers"][0]["image"], "imageID": "",
                        "state": {"waiting": {"reason": "ImagePullBackOff",
                            "message": format!("Back-off pulling image {}", pod["spec"]["containers"][0]["image"])}}}]}),
            };
        }
    }

    /// The fake Deployment controller: an applied Deployment gets its pods and status.
    fn reconcile(&self, st: &mut State, path: &str, mut obj: Value) -> Value {
        if obj["kind"] != "Deployment" || obj.get("status").is_some() {
            return obj;
        }
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let replicas = obj["spec"]["replicas"].as_u64().unwrap_or(1);
        let ready = self.pods == Pods::Ready;
        for i in 0..replicas {
            let node = format!("node-{}", i % 2 + 1);
            let mut p = pod(
                &format!("{name}-7d9f-{i}"),
                &name,
                &node,
                &format!("10.244.{}.{}", i % 2 + 1, i + 10),
                ready,
            );
            if self.pods == Pods::ImagePullBackOff {
                p["status"]["containerStatuses"] = json!([{
                    "name": "tserver", "ready": false, "restartCount": 0, "image": "bad/image:none", "imageID": "",
                    "state": {"waiting": {"reason": "ImagePullBackOff",
                        "message": "Back-off pulling image \"bad/image:none\""}}
                }]);
            }
            st.set(&path_of(&p), p);
        }
        let n = if ready { replicas } else { 0 };
        obj["status"] = json!({"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": n, "availableReplicas": n});
        st.set(path, obj.clone());
        obj
    }
}

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
fn allocate(st: &mut State, path: &str, obj: &mut Value) -> Result<(), (u16, Value)> {
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

/// The EndpointSlice controller, at every list of EndpointSlices by Service: an applied Service
/// with a selector gets its slice once `slice_reads` lists of it went by, made from the pods
/// its selector matches (pod IP, readiness, node, the node's zone, and the hints of its
/// trafficDistribution: each endpoint its own zone, with PreferSameNode its own node too).
fn endpoint_slice_controller(st: &mut State, query: &str) {
    let Some(service) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("labelSelector="))
        .map(|s| s.replace("%3D", "=").replace("%2F", "/"))
        .and_then(|s| s.strip_prefix("kubernetes.io/service-name=").map(str::to_string))
    else {
        return;
    };
    let Some(c) = st.controllers.as_mut() else { return };
    match c.pending.get_mut(&service) {
        None => return,
        Some(left) if *left > 0 => {
            *left -= 1;
            return;
        }
        Some(_) => {}
    }
    let Some(svc) = st
        .objects
        .get(&format!("/api/v1/namespaces/{NS}/services/{service}"))
        .cloned()
    else {
        return;
    };
    let selector: Vec<(String, String)> = svc["spec"]["selector"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let td = svc["spec"]["trafficDistribution"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let families: Vec<String> = svc["spec"]["ipFamilies"]
        .as_array()
        .map(|f| f.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
        .unwrap_or_else(|| vec!["IPv4".into()]);
    let pods: Vec<Value> = st
        .objects
        .iter()
        .filter(|(p, _)| p.starts_with(&format!("/api/v1/namespaces/{NS}/pods/")))
        .map(|(_, o)| o.clone())
        .filter(|o| selector.iter().all(|(k, v)| o["metadata"]["labels"][k] == v.as_str()))
        .collect();
    // One slice per family, each endpoint at its pod's IP of that family.
    for family in families {
        let mut endpoints = Vec::new();
        for p in &pods {
            let ips: Vec<&str> = match p["status"]["podIPs"].as_array() {
                Some(ips) => ips.iter().filter_map(|i| i["ip"].as_str()).collect(),
                None => p["status"]["podIP"].as_str().into_iter().collect(),
            };
            let Some(ip) = ips.into_iter().find(|ip| ip.contains(':') == (family == "IPv6")) else {
                continue;
            };
            let ready = p["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
            let node = p["spec"]["nodeName"].as_str().unwrap_or_default();
            let zone = st
                .objects
                .get(&format!("/api/v1/nodes/{node}"))
                .and_then(|n| n["metadata"]["labels"]["topology.kubernetes.io/zone"].as_str())
                .unwrap_or_default()
                .to_string();
            let mut e = json!({"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": false},
            "nodeName": node, "zone": zone,
            "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": NS}});
            if td.starts_with("Prefer") && !zone.is_empty() {
                e["hints"] = json!({"forZones": [{"name": zone}]});
                if td == "PreferSameNode" {
                    e["hints"]["forNodes"] = json!([{"name": node}]);
                }
            }
            endpoints.push(e);
        }
        let name = if family == "IPv6" {
            format!("{service}-auto-v6")
        } else {
            format!("{service}-auto")
        };
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": NS,
                "labels": {"kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": family,
            "endpoints": endpoints,
            "ports": [{"name": "tcp", "port": 5001, "protocol": "TCP"}, {"name": "udp", "port": 5001, "protocol": "UDP"}]
        });
        let path = path_of(&slice);
        if st.objects.get(&path) != Some(&slice) {
            st.set(&path, slice);
        }
    }
}

/// RFC 7386: `patch` merged into `target` (null removes a key). A strategic merge patch of
/// maps (labels, annotations, replicas, unschedulable) is the same.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// `%3D` and friends in a query value.
fn decode(v: &str) -> String {
    form_urlencoded::parse(format!("v={v}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The eviction of the pod at `pod`: terminating as a deletion, or 429 while refused.
fn evict(st: &mut State, pod: &str) -> (u16, Value) {
    if !st.objects.contains_key(pod) {
        return status(404, "NotFound", &format!("{pod} not found"));
    }
    if let Some(r) = st.rollouts.as_mut()
        && r.refuse_evictions > 0
    {
        r.refuse_evictions -= 1;
        return status(
            429,
            "TooManyRequests",
            "Cannot evict pod as it would violate the pod's disruption budget.",
        );
    }
    if st.rollouts.is_some() {
        terminate(st, pod);
    } else {
        st.unset(pod);
    }
    (201, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
}

/// A pod is deleted: it terminates (its deletionTimestamp set) and goes after a few steps.
fn terminate(st: &mut State, path: &str) -> Value {
    let mut pod = st.objects[path].clone();
    if pod["metadata"].get("deletionTimestamp").is_none() {
        pod["metadata"]["deletionTimestamp"] = json!("2026-11-24T10:00:00Z");
        let r = st.rollouts.as_mut().expect("live");
        r.starting.remove(path);
        r.terminating.insert(path.to_string(), SERVING_STEPS + GONE_STEPS);
        st.set(path, pod.clone());
    }
    pod
}

/// A short stable hash of a pod template (its annotations change with `rollout restart`).
fn template_hash(d: &Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    d["spec"]["template"].to_string().hash(&mut h);
    format!("{:06x}", h.finish() & 0xff_ffff)
}

/// One step of the live Deployment controller (and kubelet, and EndpointSlice controller).
fn step(st: &mut State) {
    let Some(mut r) = st.rollouts.take() else { return };
    // Pods in transition move on.
    for left in r.starting.values_mut().chain(r.terminating.values_mut()) {
        *left = left.saturating_sub(1);
    }
    let started: Vec<String> = r
        .starting
        .iter()
        .filter(|(_, l)| **l == 0)
        .map(|(p, _)| p.clone())
        .collect();
    for p in started {
        r.starting.remove(&p);
        if let Some(mut pod) = st.objects.get(&p).cloned() {
            pod["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}]);
            st.set(&p, pod);
        }
    }
    let gone: Vec<String> = r
        .terminating
        .iter()
        .filter(|(_, l)| **l == 0)
        .map(|(p, _)| p.clone())
        .collect();
    for p in gone {
        r.terminating.remove(&p);
        st.unset(&p);
    }
    let deployments: Vec<(String, Value)> = st
        .objects
        .iter()
        .filter(|(_, o)| o["kind"] == "Deployment")
        .map(|(p, o)| (p.clone(), o.clone()))
        .collect();
    let nodes: Vec<(String, bool)> = st
        .objects
        .values()
        .filter(|o| o["kind"] == "Node")
        .map(|n| {
            (
                n["metadata"]["name"].as_str().unwrap_or("").to_string(),
                n["spec"]["unschedulable"] == true,
            )
        })
        .collect();
    for (path, mut d) in deployments {
        let name = d["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let want = d["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let hash = template_hash(&d);
        let pods: Vec<(String, Value)> = st
            .objects
            .iter()
            .filter(|(_, o)| o["kind"] == "Pod" && o["metadata"]["labels"]["app.kubernetes.io/name"] == name.as_str())
            .filter(|(_, o)| o["metadata"].get("deletionTimestamp").is_none())
            .map(|(p, o)| (p.clone(), o.clone()))
            .collect();
        let ready = |o: &Value| {
            o["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        };
        let (new, old): (Vec<_>, Vec<_>) = pods
            .iter()
            .partition(|(_, o)| o["metadata"]["labels"]["pod-template-hash"] == hash.as_str());
        let ready_count = pods.iter().filter(|(_, o)| ready(o)).count();
        // Old pods go as new ones are ready (maxUnavailable 0); extra new ones go (scale down).
        if !old.is_empty() && ready_count > want {
            terminate_in(st, &mut r, &old[0].0);
        } else if old.is_empty() && new.len() > want {
            terminate_in(st, &mut r, &new[new.len() - 1].0);
        }
        // New pods up to the replicas, one over while old ones remain (maxSurge 1).
        let total = new.len() + old.len();
        let cap = if old.is_empty() { want } else { want + 1 };
        if new.len() < want && total < cap {
            let schedulable: Vec<&String> = nodes.iter().filter(|(_, c)| !c).map(|(n, _)| n).collect();
            if let Some(node) = schedulable.get(r.made as usize % schedulable.len().max(1)) {
                r.made += 1;
                while st
                    .objects
                    .keys()
                    .any(|k| k.ends_with(&format!("/pods/{name}-{hash}-{}", r.made)))
                {
                    r.made += 1;
                }
                let n = node.rsplit('-').next().unwrap_or("9").parse::<u32>().unwrap_or(9);
                let mut p = pod(
                    &format!("{name}-{hash}-{}", r.made),
                    &name,
                    node,
                    &format!("10.244.{n}.{}", 100 + r.made),
                    false,
                );
                p["metadata"]["labels"]["pod-template-hash"] = json!(hash);
                let pp = path_of(&p);
                if !r.stuck {
                    r.starting.insert(pp.clone(), STARTING_STEPS);
                }
                st.set(&pp, p);
            }
        }
        // Status, as the controller reports it.
        let pods_now: Vec<Value> = st
            .objects
            .values()
            .filter(|o| o["kind"] == "Pod" && o["metadata"]["labels"]["app.kubernetes.io/name"] == name.as_str())
            .filter(|o| o["metadata"].get("deletionTimestamp").is_none())
            .cloned()
            .collect();
        let updated = pods_now
            .iter()
            .filter(|o| o["metadata"]["labels"]["pod-template-hash"] == hash.as_str())
            .count();
        let ready_now = pods_now.iter().filter(|o| ready(o)).count();
        let status = json!({"observedGeneration": d["metadata"]["generation"].clone(), "replicas": pods_now.len(),
            "updatedReplicas": updated, "readyReplicas": ready_now, "availableReplicas": ready_now});
        if d["status"] != status {
            d["status"] = status;
            st.set(&path, d);
        }
        // The Service's EndpointSlice: every pod with an IP, its conditions from its phase.
        let slice_path = format!("/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices/{name}-abcde");
        let mut eps = Vec::new();
        for (pp, o) in st
            .objects
            .iter()
            .filter(|(_, o)| o["kind"] == "Pod" && o["metadata"]["labels"]["app.kubernetes.io/name"] == name.as_str())
        {
            let term = o["metadata"].get("deletionTimestamp").is_some();
            let serving = if term {
                r.terminating.get(pp).is_some_and(|l| *l > GONE_STEPS)
            } else {
                ready(o)
            };
            eps.push(json!({"addresses": [o["status"]["podIP"]],
                "conditions": {"ready": ready(o) && !term, "serving": serving, "terminating": term},
                "nodeName": o["spec"]["nodeName"],
                "targetRef": {"kind": "Pod", "name": o["metadata"]["name"], "namespace": NS}}));
        }
        let mut slice = st.objects.get(&slice_path).cloned().unwrap_or_else(|| {
            let mut s = slice(&[]);
            s["metadata"]["name"] = json!(format!("{name}-abcde"));
            s["metadata"]["labels"]["kubernetes.io/service-name"] = json!(name);
            s
        });
        if slice["endpoints"] != json!(eps) {
            slice["endpoints"] = json!(eps);
            st.set(&slice_path, slice);
        }
    }
    st.rollouts = Some(r);
}

/// [`terminate`] while the controller holds its state.
fn terminate_in(st: &mut State, r: &mut Rollouts, path: &str) {
    let mut pod = st.objects[path].clone();
    pod["metadata"]["deletionTimestamp"] = json!("2026-11-24T10:00:00Z");
    r.starting.remove(path);
    r.terminating.insert(path.to_string(), SERVING_STEPS + GONE_STEPS);
    st.set(path, pod);
}

fn is_item_path(path: &str) -> bool {
    // /api/v1/namespaces/NS/KIND/NAME or /apis/G/V/namespaces/NS/KIND/NAME
    let n = path.trim_start_matches('/').split('/').count();
    (path.starts_with("/api/") && n == 6) || (path.starts_with("/apis/") && n == 7)
}

fn matches(obj: &Value, selector: &str) -> bool {
    selector.split(',').all(|kv| match kv.split_once('=') {
        Some((k, v)) => obj["metadata"]["labels"][k] == v,
        None => true,
    })
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

/// The API path of an object.
pub fn path_of(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap();
    let kind = obj["kind"].as_str().unwrap();
    let name = obj["metadata"]["name"].as_str().unwrap();
    let plural = match kind {
        "EndpointSlice" => "endpointslices".to_string(),
        "ConfigMap" => "configmaps".to_string(),
        k => format!("{}s", k.to_lowercase()),
    };
    let prefix = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{prefix}/namespaces/{ns}/{plural}/{name}"),
        None => format!("{prefix}/{plural}/{name}"),
    }
}

pub fn node(name: &str, zone: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "topology.kubernetes.io/zone": zone}},
        "spec": {"podCIDR": "10.244.1.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

pub fn pod(name: &str, app: &str, node: &str, ip: &str, ready: bool) -> Value {
    let r = if ready { "True" } else { "False" };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "labels": {"app.kubernetes.io/name": app, "app.kubernetes.io/managed-by": "kubectl-svclb",
                       "pod-template-hash": "7d9f"}},
        "spec": {"nodeName": node, "containers": [{"name": "tserver", "image": "ghcr.io/kubectl-svclb/kubectl-svclb:v0.1.0"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "172.18.0.2",
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": r},
                           {"type": "ContainersReady", "status": r}]}
    })
}

/// The tserver Service as the API returns it (allocated clusterIP and nodePorts).
pub fn service(type_: &str, cluster_ip: &str, spec_extra: Value, lb_ip: Option<&str>) -> Value {
    let mut spec = json!({
        "type": type_, "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
        "selector": {"app.kubernetes.io/name": "svclb-tserver"}, "sessionAffinity": "None",
        "externalTrafficPolicy": "Cluster", "internalTrafficPolicy": "Cluster",
        "ports": [
            {"name": "tcp", "port": 5001, "protocol": "TCP", "targetPort": "tcp", "nodePort": 30501},
            {"name": "udp", "port": 5001, "protocol": "UDP", "targetPort": "udp", "nodePort": 30501},
            {"name": "http", "port": 8080, "protocol": "TCP", "targetPort": "http", "nodePort": 30880}]
    });
    for (k, v) in spec_extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let ingress = lb_ip
        .map(|ip| json!([{"ip": ip, "ipMode": "VIP"}]))
        .unwrap_or(json!([]));
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "svclb-tserver", "namespace": NS,
            "labels": {"app.kubernetes.io/name": "svclb-tserver", "app.kubernetes.io/managed-by": "kubectl-svclb"}},
        "spec": spec,
        "status": {"loadBalancer": {"ingress": ingress}}
    })
}

/// An EndpointSlice of the tserver Service: `(pod, ip, zone, hints)`.
pub fn slice(endpoints: &[(&str, &str, &str, &[&str])]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(pod, ip, zone, hints)| {
            let mut e = json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}, "zone": zone});
            if !hints.is_empty() {
                e["hints"] = json!({"forZones": hints.iter().map(|z| json!({"name": z})).collect::<Vec<_>>()});
            }
            e
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "svclb-tserver-abcde", "namespace": NS,
            "labels": {"kubernetes.io/service-name": "svclb-tserver", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "tcp", "port": 5001, "protocol": "TCP"}]
    })
}

/// `service(...)` or `slice(...)` made for another app (`svclb-affinity`): name, labels, selector.
pub fn for_app(mut obj: Value, app: &str) -> Value {
    let name = if obj["kind"] == "EndpointSlice" {
        obj["metadata"]["labels"]["kubernetes.io/service-name"] = json!(app);
        format!("{app}-abcde")
    } else {
        obj["metadata"]["labels"]["app.kubernetes.io/name"] = json!(app);
        obj["spec"]["selector"]["app.kubernetes.io/name"] = json!(app);
        app.to_string()
    };
    obj["metadata"]["name"] = json!(name);
    obj
}

pub fn kube_proxy_configmap(mode: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
        "data": {"config.conf": format!("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: {mode}\n")}
    })
}

/// The exec subresource for real: an HTTP server on loopback that upgrades
/// `GET /api/v1/namespaces/NS/pods/POD/exec?command=...` to a websocket (`v4.channel.k8s.io`) and
/// runs the command here, `program` standing in for the image's binary (the command's first
/// word): stdout/stderr go out on channels 1/2, channel 0 feeds its stdin, channel 3 carries the
/// final Status. Pods named `forbidden-*` get a 403 Status instead. Returns a client for it.
pub async fn exec_server(program: std::path::PathBuf) -> Cluster {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let program = program.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| upgrade(req, program.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    let mut config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    config.default_namespace = NS.into();
    Cluster {
        client: Client::try_from(config).unwrap(),
        context: "exec-test".into(),
        namespace: NS.into(),
    }
}

type Full = http_body_util::Full<bytes::Bytes>;

async fn upgrade(
    mut req: Request<hyper::body::Incoming>,
    program: std::path::PathBuf,
) -> Result<Response<Full>, http::Error> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

    let path = req.uri().path().to_string();
    let pod = path
        .strip_suffix("/exec")
        .and_then(|p| p.rsplit('/').next())
        .unwrap_or("");
    if pod.starts_with("forbidden") {
        let (_, body) = status(
            403,
            "Forbidden",
            &format!(
                "pods \"{pod}\" is forbidden: User \"dev\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"{NS}\""
            ),
        );
        return Response::builder()
            .status(403)
            .header("content-type", "application/json")
            .body(Full::from(serde_json::to_vec(&body).unwrap()));
    }
    let command: Vec<String> = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.into_owned())
        .collect();
    let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                hyper_util::rt::TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            run_exec(ws, &program, &command).await;
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(&key))
        .header("sec-websocket-protocol", "v4.channel.k8s.io")
        .body(Full::default())
}

/// Runs the command as the container would, bridging its pipes to the websocket channels.
async fn run_exec<S>(ws: tokio_tungstenite::WebSocketStream<S>, program: &std::path::Path, command: &[String])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;

    let (mut sink, mut incoming) = ws.split();
    let mut child = tokio::process::Command::new(program)
        .args(command.iter().skip(1))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let pump = |mut from: Box<dyn tokio::io::AsyncRead + Unpin + Send>, channel: u8| {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = from.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut frame = vec![channel];
                frame.extend_from_slice(&buf[..n]);
                if tx.send(frame).await.is_err() {
                    break;
                }
            }
        })
    };
    let out = pump(Box::new(child.stdout.take().unwrap()), 1);
    let err = pump(Box::new(child.stderr.take().unwrap()), 2);
    drop(tx);
    // Channel 0 → the process' stdin, as long as the client sends.
    let feeder = tokio::spawn(async move {
        while let Some(Ok(msg)) = incoming.next().await {
            if let Message::Binary(b) = msg
                && b.first() == Some(&0)
                && (stdin.write_all(&b[1..]).await.is_err() || stdin.flush().await.is_err())
            {
                break;
            }
        }
    });
    while let Some(frame) = rx.recv().await {
        if sink.send(Message::binary(frame)).await.is_err() {
            break;
        }
    }
    let _ = (out.await, err.await);
    let code = child.wait().await.map(|s| s.code().unwrap_or(-1)).unwrap_or(-1);
    let status = if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
               "message": format!("command terminated with non-zero exit code: {code}")})
    };
    let mut frame = vec![3u8];
    frame.extend_from_slice(&serde_json::to_vec(&status).unwrap());
    let _ = sink.send(Message::binary(frame)).await;
    let _ = sink.close().await;
    feeder.abort();
}
