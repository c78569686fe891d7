//! RBAC as the API server's authorizer decides it: a request's [`Attributes`] and whether
//! Roles, ClusterRoles and their bindings allow it ([`rbac_allows`]).

use serde_json::Value;

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
