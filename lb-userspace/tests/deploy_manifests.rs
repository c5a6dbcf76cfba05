//! The manifests in deploy/ parse into the Kubernetes API types and hold the
//! invariants the agent depends on: RBAC granting exactly what the agent
//! sends (its only cluster-wide write the LoadBalancer status), a
//! DaemonSet whose arguments the real `xdplb agent` parser accepts, and the
//! host access the data plane needs. No cluster runs here, so this is what
//! stands between an edit of deploy/ and a broken install.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use clap::Parser;
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, PodSpec, ServiceAccount},
        rbac::v1::{
            ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity, apis::meta::v1::ObjectMeta, util::intstr::IntOrString,
    },
};
use lb_userspace::cli::{AgentArgs, Cli, Command};
use serde::Deserialize;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[derive(Default)]
struct Manifests {
    files: Vec<String>,
    accounts: Vec<ServiceAccount>,
    roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    ns_roles: Vec<Role>,
    ns_bindings: Vec<RoleBinding>,
    daemonsets: Vec<DaemonSet>,
}

fn parse<T: serde::de::DeserializeOwned>(file: &str, doc: serde_yaml::Value) -> T {
    serde_yaml::from_value(doc)
        .unwrap_or_else(|e| panic!("{file}: not a valid {}: {e}", std::any::type_name::<T>()))
}

/// Every document of every deploy/*.yaml except the kustomization, each
/// into the type its `kind` names.
fn manifests() -> Manifests {
    let mut out = Manifests::default();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    paths.sort();
    for path in paths {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
            if doc.is_null() {
                continue;
            }
            match doc["kind"].as_str() {
                Some("ServiceAccount") => out.accounts.push(parse(&file, doc)),
                Some("ClusterRole") => out.roles.push(parse(&file, doc)),
                Some("ClusterRoleBinding") => out.bindings.push(parse(&file, doc)),
                Some("Role") => out.ns_roles.push(parse(&file, doc)),
                Some("RoleBinding") => out.ns_bindings.push(parse(&file, doc)),
                Some("DaemonSet") => out.daemonsets.push(parse(&file, doc)),
                other => panic!("{file}: unexpected kind {other:?}"),
            }
        }
        out.files.push(file);
    }
    out
}

fn the<'a, T>(items: &'a [T], what: &str) -> &'a T {
    assert_eq!(items.len(), 1, "expected exactly one {what}");
    &items[0]
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod template")
}

fn agent_container(ds: &DaemonSet) -> &Container {
    pod_spec(ds)
        .containers
        .iter()
        .find(|c| c.name == "xdplb")
        .expect("a container named xdplb")
}

/// The agent's arguments as the binary would see them: the image's
/// entrypoint is `xdplb`, so the container's args follow it.
fn agent_args(c: &Container) -> AgentArgs {
    assert!(
        c.command.is_none(),
        "the container must keep the image's xdplb entrypoint"
    );
    let argv = std::iter::once("xdplb".to_string()).chain(c.args.clone().unwrap_or_default());
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Agent(args),
        }) => *args,
        Ok(other) => panic!("the DaemonSet runs {:?}, not the agent", other.command),
        Err(e) => panic!("xdplb rejects the DaemonSet's arguments:\n{e}"),
    }
}

#[test]
fn every_manifest_parses_and_the_kustomization_lists_them_all() {
    let m = manifests();
    assert_eq!(m.accounts.len(), 1);
    assert_eq!(m.roles.len(), 1);
    assert_eq!(m.bindings.len(), 1);
    assert_eq!(m.daemonsets.len(), 1);

    let text = std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap();
    let kustomization: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let files: BTreeSet<String> = m.files.into_iter().collect();
    assert_eq!(listed, files, "kustomization.yaml must list every manifest");
}

/// (apiGroup, resource, verb) of every rule, refusing wildcards and
/// named resources.
fn granted(rules: &[PolicyRule]) -> BTreeSet<(&str, &str, &str)> {
    let mut granted = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "unexpected rule shape: {rule:?}"
        );
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    granted.insert((group.as_str(), resource.as_str(), verb.as_str()));
                }
            }
        }
    }
    for &(group, resource, verb) in &granted {
        assert!(
            ![group, resource, verb].contains(&"*"),
            "wildcard in {group}/{resource}/{verb}"
        );
    }
    granted
}

fn flattened(
    rules: &'static [(&str, &str, &[&str])],
) -> BTreeSet<(&'static str, &'static str, &'static str)> {
    rules
        .iter()
        .flat_map(|&(group, resource, verbs)| verbs.iter().map(move |&v| (group, resource, v)))
        .collect()
}

#[test]
fn cluster_role_grants_exactly_what_the_agent_uses_and_writes_only_statuses() {
    let m = manifests();
    let role = the(&m.roles, "ClusterRole");
    let granted = granted(role.rules.as_deref().unwrap_or_default());
    for &(group, resource, verb) in &granted {
        assert!(
            ["get", "list", "watch"].contains(&verb) || resource == "services/status",
            "write verb {verb} on {group}/{resource}: only Service statuses may be written cluster-wide"
        );
    }
    // Exactly the requests the agent makes (the API server double's tests
    // record every request and compare them to this).
    assert_eq!(granted, flattened(lb_userspace::source::kube::RBAC_RULES));
}

#[test]
fn role_grants_exactly_the_lease_requests_in_the_agents_namespace() {
    let m = manifests();
    let (role, binding) = (the(&m.ns_roles, "Role"), the(&m.ns_bindings, "RoleBinding"));
    let (account, ds) = (
        the(&m.accounts, "ServiceAccount"),
        the(&m.daemonsets, "DaemonSet"),
    );
    let granted = granted(role.rules.as_deref().unwrap_or_default());
    assert_eq!(
        granted,
        flattened(lb_userspace::source::kube::RBAC_NAMESPACED_RULES)
    );
    assert_eq!(role.metadata.namespace, ds.metadata.namespace);
    assert_eq!(binding.metadata.namespace, ds.metadata.namespace);
    binds_role_to_account(
        &binding.role_ref,
        &role.metadata,
        &binding.subjects,
        account,
    );
    assert_eq!(binding.role_ref.kind, "Role");
    // The agent holds its leases in the namespace the Role covers.
    let env = agent_container(ds).env.as_deref().unwrap_or_default();
    let namespace = env
        .iter()
        .find(|e| e.name == "POD_NAMESPACE")
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(namespace, Some("metadata.namespace"));
}

/// A binding's role reference names `role`, and its subjects include
/// `account`.
fn binds_role_to_account(
    role_ref: &RoleRef,
    role: &ObjectMeta,
    subjects: &Option<Vec<Subject>>,
    account: &ServiceAccount,
) {
    assert_eq!(role_ref.api_group, "rbac.authorization.k8s.io");
    assert_eq!(Some(&role_ref.name), role.name.as_ref());
    let subjects = subjects.as_deref().unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && Some(&s.name) == account.metadata.name.as_ref()
            && s.namespace == account.metadata.namespace),
        "{subjects:?}"
    );
}

#[test]
fn binding_gives_the_role_to_the_daemonsets_service_account() {
    let m = manifests();
    let account = the(&m.accounts, "ServiceAccount");
    let role = the(&m.roles, "ClusterRole");
    let binding = the(&m.bindings, "ClusterRoleBinding");
    let ds = the(&m.daemonsets, "DaemonSet");

    binds_role_to_account(
        &binding.role_ref,
        &role.metadata,
        &binding.subjects,
        account,
    );
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        pod_spec(ds).service_account_name,
        account.metadata.name,
        "the DaemonSet must run as the bound ServiceAccount"
    );
    assert_eq!(account.metadata.namespace, ds.metadata.namespace);
}

#[test]
fn daemonset_arguments_are_accepted_by_the_agent_and_match_its_ports() {
    let m = manifests();
    let ds = the(&m.daemonsets, "DaemonSet");
    let c = agent_container(ds);
    let args = agent_args(c);
    assert!(!args.external_ifaces.is_empty());
    assert!(
        !args.cleanup,
        "the DaemonSet must not tear the data plane down"
    );
    assert!(
        args.manifests.is_none(),
        "in a cluster the agent reads the API"
    );

    let port = |name: &str| {
        c.ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
    };
    assert_eq!(port("healthz"), Some(i32::from(args.healthz_addr.port())));
    // Deliberate: the metrics name every Service, and a hostNetwork pod's
    // node address is reachable from every pod.
    assert!(
        args.metrics_addr.ip().is_loopback(),
        "metrics on {} would show every Service to every pod",
        args.metrics_addr
    );
    assert_eq!(
        port("metrics"),
        None,
        "no port may advertise metrics that only the node itself can reach"
    );
    // As kube-proxy's: a node on its way out fails /healthz, which must
    // not restart its proxy.
    for (what, probe, path) in [
        ("readiness", c.readiness_probe.as_ref(), "/healthz"),
        ("liveness", c.liveness_probe.as_ref(), "/livez"),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("a {what} probe over HTTP"));
        assert_eq!(get.path.as_deref(), Some(path), "{what}");
        assert_eq!(
            get.port,
            IntOrString::Int(i32::from(args.healthz_addr.port())),
            "{what}"
        );
    }

    let bpffs = c
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.name == "bpffs")
        .expect("the bpffs mount");
    assert!(
        args.pin.pin_path.starts_with(&bpffs.mount_path),
        "the pin path {} must be on the bpffs mounted at {}",
        args.pin.pin_path.display(),
        bpffs.mount_path
    );

    let env = c.env.as_deref().unwrap_or_default();
    let node_name = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME from the downward API");
    assert_eq!(field.field_path, "spec.nodeName");
}

#[test]
fn daemonset_runs_on_the_host_network_with_bpffs_on_every_node() {
    let m = manifests();
    let ds = the(&m.daemonsets, "DaemonSet");
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
    let spec = ds.spec.as_ref().unwrap();
    let pod = pod_spec(ds);

    assert_eq!(pod.host_network, Some(true));
    let privileged =
        |c: &Container| c.security_context.as_ref().and_then(|s| s.privileged) == Some(true);

    let volume = pod
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.name == "bpffs")
        .expect("a bpffs volume");
    let host = volume.host_path.as_ref().expect("bpffs is a hostPath");
    assert_eq!(host.path, "/sys/fs/bpf");
    let modules = pod
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| {
            v.host_path
                .as_ref()
                .is_some_and(|h| h.path == "/lib/modules")
        })
        .expect("a /lib/modules volume");
    let containers = pod.init_containers.iter().flatten().chain(&pod.containers);
    for c in containers {
        for mount in c.volume_mounts.as_deref().unwrap_or_default() {
            if mount.name == "bpffs" {
                assert_eq!(mount.mount_path, "/sys/fs/bpf", "{}", c.name);
                // The API server rejects Bidirectional anywhere else.
                if mount.mount_propagation.as_deref() == Some("Bidirectional") {
                    assert!(privileged(c), "{}: Bidirectional needs privileged", c.name);
                }
            }
            if mount.name == modules.name {
                assert_eq!(mount.read_only, Some(true), "{}", c.name);
            }
        }
    }
    // The init container mounts a missing bpffs on the host; the agent
    // only needs to see it.
    let mounter = pod
        .init_containers
        .iter()
        .flatten()
        .find(|c| {
            c.volume_mounts.iter().flatten().any(|m| {
                m.name == "bpffs" && m.mount_propagation.as_deref() == Some("Bidirectional")
            })
        })
        .expect("an init container that mounts the bpffs on the host");
    assert!(privileged(mounter));
    let agent_mounts = agent_container(ds)
        .volume_mounts
        .clone()
        .unwrap_or_default();
    let agent_mount = |name: &str| {
        agent_mounts
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("the agent mounts {name}"))
    };
    assert_eq!(
        agent_mount("bpffs").mount_propagation.as_deref(),
        Some("HostToContainer"),
        "the agent sees a bpffs mounted after it started"
    );
    assert_eq!(
        agent_mount("host-cgroup").read_only,
        Some(true),
        "attaching to a cgroup writes nothing there"
    );
    assert!(agent_container(ds)
        .volume_mounts
        .iter()
        .flatten()
        .any(|v| v.name == modules.name && v.mount_path == "/lib/modules"));

    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "must tolerate every taint: {tolerations:?}"
    );

    let strategy = spec.update_strategy.as_ref().expect("an update strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.clone()),
        Some(IntOrString::Int(1))
    );

    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert!(!selector.is_empty());
    assert!(
        selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the selector must match the pod template's labels"
    );
}

/// tests/agent_deployment.rs runs the agent under exactly this security
/// context; here the set stays the measured one, so widening it is a
/// deliberate edit of this test too.
#[test]
fn daemonset_agent_runs_unprivileged_with_the_measured_capabilities() {
    let m = manifests();
    let ds = the(&m.daemonsets, "DaemonSet");
    let c = agent_container(ds);
    let security = c.security_context.as_ref().expect("a securityContext");
    assert_ne!(
        security.privileged,
        Some(true),
        "the agent is not privileged"
    );
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let caps = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON"]));

    // The runtime's default AppArmor profile denies writes and locks under
    // /sys/fs/bpf, which privileged used to lift.
    let annotations = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        annotations
            .get(&format!(
                "container.apparmor.security.beta.kubernetes.io/{}",
                c.name
            ))
            .map(String::as_str),
        Some("unconfined")
    );
}

#[test]
fn daemonset_agent_has_a_memory_request_and_limit_and_no_cpu_limit() {
    let m = manifests();
    let c = agent_container(the(&m.daemonsets, "DaemonSet"));
    let resources = c.resources.as_ref().expect("resources");
    let get = |set: &Option<BTreeMap<String, Quantity>>, what: &str| {
        set.as_ref().and_then(|s| s.get(what)).map(|q| q.0.clone())
    };
    let mebibytes = |q: Option<String>| -> u64 {
        let q = q.expect("a memory quantity");
        if let Some(n) = q.strip_suffix("Mi") {
            n.parse().unwrap()
        } else if let Some(n) = q.strip_suffix("Gi") {
            n.parse::<u64>().unwrap() * 1024
        } else {
            panic!("memory {q}: write it in Mi or Gi")
        }
    };
    let request = mebibytes(get(&resources.requests, "memory"));
    let limit = mebibytes(get(&resources.limits, "memory"));
    // As measured (the manifest has the figures): 338 MiB idle, 333 of it
    // the maps, charged to the agent that creates them, and 483 MiB with
    // 10,000 Services. Under a limit the maps do not fit the agent cannot
    // start at all.
    assert!(request >= 338, "memory request {request}Mi");
    assert!(limit >= 2 * 483, "memory limit {limit}Mi");
    assert!(get(&resources.requests, "cpu").is_some());
    assert_eq!(
        get(&resources.limits, "cpu"),
        None,
        "throttling only delays syncs"
    );
}
