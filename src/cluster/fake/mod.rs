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

mod deployments;
mod endpoints;
mod exec;
mod objects;
mod rbac;
mod services;

pub use deployments::{GONE_STEPS, SERVING_STEPS, STARTING_STEPS};
pub use exec::exec_server;
pub use objects::{for_app, kube_proxy_configmap, node, path_of, pod, service, slice};
pub use rbac::{Attributes, rbac_allows};

use deployments::{Rollouts, evict, step, terminate};
use endpoints::endpoint_slice_controller;
use services::allocate;

type Full = http_body_util::Full<bytes::Bytes>;

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

/// An open watch: the collection it lists, its label selector, where its events go.
struct Watcher {
    collection: String,
    selector: Option<String>,
    tx: mpsc::UnboundedSender<Bytes>,
}

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
