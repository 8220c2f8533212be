//! NetworkPolicies `<name>-default-deny` and `<name>-allow`: nothing reaches
//! or leaves the runtime pods except chat traffic from the named namespaces,
//! metrics scrapes, DNS, the database server and the NATS servers of the
//! NATS broker (plus listed egress CIDRs).
//! With `spec.rollout.analysis`, the operator's own pods (label
//! `app.kubernetes.io/name: chorus-operator`, any namespace) may scrape the
//! admin port too: the release analysis reads `/metrics` by pod IP.

use std::net::IpAddr;

use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule,
        NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{
    Inputs,
    meta::{ADMIN_PORT, HTTP_PORT, child_meta},
};
use crate::{
    crd::NamespacePeer,
    model::Tenant,
    names::{labels, tenant_selector},
};

/// The label of the operator's pods (the chart's `chorus.labels`).
pub const OPERATOR_LABEL: (&str, &str) = ("app.kubernetes.io/name", "chorus-operator");

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some("TCP".into()),
        port: Some(IntOrString::Int(port)),
        ..NetworkPolicyPort::default()
    }
}

/// `ip/32` (or `/128`) when `host` is an IP address: a rule's destination
/// pinned to it. `None` for a DNS name (NetworkPolicy cannot match names,
/// so such a rule allows the port to any destination).
fn pinned(host: &str) -> Option<Vec<NetworkPolicyPeer>> {
    let ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()?;
    let len = if ip.is_ipv4() { 32 } else { 128 };
    Some(vec![NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: format!("{ip}/{len}"),
            except: None,
        }),
        ..NetworkPolicyPeer::default()
    }])
}

/// Egress to the NATS servers of `spec.runtime.broker.nats.url` (comma-
/// separated `nats://` / `tls://` URLs, port 4222 when none is given): one
/// rule per server, to the destination [`destination`] allows. Without it a tenant with
/// a NetworkPolicy and the NATS broker could not reach NATS. Servers a NATS
/// cluster announces later (gossiped cluster URLs) are not known here: list
/// their CIDR under `allowEgressTo`.
fn nats_egress(t: &Tenant, url: &str) -> Vec<NetworkPolicyEgressRule> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .filter_map(|u| u.parse::<http::Uri>().ok())
        .filter_map(|uri| {
            let host = uri.host()?.to_string();
            let port = uri.port_u16().unwrap_or(4222);
            Some(NetworkPolicyEgressRule {
                to: destination(t, &host),
                ports: Some(vec![tcp(i32::from(port))]),
            })
        })
        .collect()
}

fn namespace_peer(ns: &NamespacePeer) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(
                [(
                    "kubernetes.io/metadata.name".to_string(),
                    ns.namespace.clone(),
                )]
                .into(),
            ),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn pods(t: &Tenant) -> LabelSelector {
    LabelSelector {
        match_labels: Some(tenant_selector(t)),
        ..LabelSelector::default()
    }
}

/// Both policies, or none when `spec.networkPolicy` is absent.
pub fn build_network_policies(t: &Tenant, inputs: &Inputs) -> Vec<NetworkPolicy> {
    let Some(np) = &t.spec.network_policy else {
        return Vec::new();
    };
    let deny = NetworkPolicy {
        metadata: child_meta(t, format!("{}-default-deny", t.name), labels(t)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods(t)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ..NetworkPolicySpec::default()
        }),
    };

    let mut ingress = Vec::new();
    if !np.allow_ingress_from.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(np.allow_ingress_from.iter().map(namespace_peer).collect()),
            ports: Some(vec![tcp(HTTP_PORT)]),
        });
    }
    if !np.allow_metrics_from.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(np.allow_metrics_from.iter().map(namespace_peer).collect()),
            ports: Some(vec![tcp(ADMIN_PORT)]),
        });
    }

    if t.spec.rollout.analysis.is_some() {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(LabelSelector::default()),
                pod_selector: Some(LabelSelector {
                    match_labels: Some(
                        [(OPERATOR_LABEL.0.to_string(), OPERATOR_LABEL.1.to_string())].into(),
                    ),
                    ..LabelSelector::default()
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(vec![tcp(ADMIN_PORT)]),
        });
    }

    let dns_ports = vec![
        NetworkPolicyPort {
            protocol: Some("UDP".into()),
            port: Some(IntOrString::Int(53)),
            ..NetworkPolicyPort::default()
        },
        tcp(53),
    ];
    let mut egress = vec![NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector::default()),
            ..NetworkPolicyPeer::default()
        }]),
        ports: Some(dns_ports),
    }];
    // The database: pinned to its address when the server Secret names an
    // IP; by port only when it names a host (NetworkPolicy cannot match DNS
    // names; add a CIDR under allowEgressTo to pin it).
    egress.push(NetworkPolicyEgressRule {
        to: pinned(inputs.database_host),
        ports: Some(vec![tcp(i32::from(inputs.database_port))]),
    });
    if let Some(crate::crd::BrokerSpec {
        kind: crate::crd::BrokerType::Nats,
        nats: Some(nats),
    }) = t.spec.runtime.broker.as_deref()
    {
        egress.extend(nats_egress(t, &nats.url));
    }
    if let Some(rule) = tracing_egress(t) {
        egress.push(rule);
    }
    for peer in &np.allow_egress_to {
        egress.push(NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: peer.cidr.clone(),
                    except: None,
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: (!peer.ports.is_empty()).then(|| peer.ports.iter().copied().map(tcp).collect()),
        });
    }

    let allow = NetworkPolicy {
        metadata: child_meta(t, format!("{}-allow", t.name), labels(t)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods(t)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    };
    vec![deny, allow]
}

/// The OTLP receiver of `spec.runtime.tracing`: pinned to its address when
/// the endpoint names an IP, to its namespace when it names a Service
/// (`<service>.<namespace>.svc[.<cluster domain>]`, or a bare `<service>` of
/// the tenant's namespace), by port only otherwise (NetworkPolicy cannot
/// match DNS names; add a CIDR under allowEgressTo to pin it).
fn tracing_egress(t: &Tenant) -> Option<NetworkPolicyEgressRule> {
    let (host, port) = t.spec.runtime.tracing.as_ref()?.host_port()?;
    Some(NetworkPolicyEgressRule {
        to: destination(t, &host),
        ports: Some(vec![tcp(i32::from(port))]),
    })
}

/// Where an egress rule to `host` may go: its address when `host` is an IP;
/// the Service's namespace for `<service>` (the tenant's own namespace) and
/// `<service>.<namespace>.svc[.<cluster domain>]`; anywhere (port only) for
/// other names, which NetworkPolicy cannot match.
fn destination(t: &Tenant, host: &str) -> Option<Vec<NetworkPolicyPeer>> {
    if let Some(ip) = pinned(host) {
        return Some(ip);
    }
    let labels: Vec<&str> = host.trim_end_matches('.').split('.').collect();
    let namespace = match labels.as_slice() {
        [_service] => Some(t.namespace.clone()),
        [_service, ns, "svc", ..] => Some((*ns).to_string()),
        _ => None,
    };
    namespace.map(|namespace| vec![namespace_peer(&NamespacePeer { namespace })])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::{inputs, tenant_and_plan};

    #[test]
    fn absent_spec_means_no_policies() {
        let (t, plan) = tenant_and_plan(|_| {});
        assert!(build_network_policies(&t, &inputs(&plan)).is_empty());
    }

    #[test]
    fn default_deny_plus_named_namespaces_dns_and_database() {
        let (t, plan) = tenant_and_plan(|ct| {
            ct.spec.network_policy = serde_json::from_value(serde_json::json!({
                "allowIngressFrom": [{"namespace": "ingress-nginx"}],
                "allowMetricsFrom": [{"namespace": "monitoring"}],
                "allowEgressTo": [{"cidr": "10.9.0.0/16", "ports": [443]}]
            }))
            .unwrap();
        });
        let nps = build_network_policies(&t, &inputs(&plan));
        assert_eq!(nps.len(), 2);
        let deny = nps[0].spec.as_ref().unwrap();
        assert!(deny.ingress.is_none() && deny.egress.is_none());
        let allow = nps[1].spec.as_ref().unwrap();
        let ingress = allow.ingress.as_ref().unwrap();
        assert_eq!(ingress.len(), 2);
        let from_ns = ingress[0].from.as_ref().unwrap()[0]
            .namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(
            from_ns
                .get("kubernetes.io/metadata.name")
                .map(String::as_str),
            Some("ingress-nginx")
        );
        assert_eq!(
            ingress[0].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(8080))
        );
        let egress = allow.egress.as_ref().unwrap();
        assert_eq!(egress.len(), 3, "dns, database, extra cidr");
        // No analysis: the operator does not scrape.
        assert!(
            ingress
                .iter()
                .all(|r| r.from.as_ref().unwrap()[0].pod_selector.is_none())
        );
        let db = &egress[1];
        assert_eq!(
            db.to.as_ref().unwrap()[0].ip_block.as_ref().unwrap().cidr,
            "127.0.0.1/32"
        );
        assert_eq!(
            db.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(5432))
        );
    }

    #[test]
    fn the_nats_servers_are_reachable_through_the_policy() {
        let (t, plan) = tenant_and_plan(|ct| {
            ct.spec.network_policy = serde_json::from_value(serde_json::json!({})).unwrap();
            ct.spec.runtime.broker = serde_json::from_value(serde_json::json!({
                "type": "Nats",
                "nats": {"url": "nats://nats.example.com:4223, tls://u:p@10.1.2.3, nats://[fd00::7]:4300"}
            }))
            .unwrap();
        });
        let nps = build_network_policies(&t, &inputs(&plan));
        let egress = nps[1].spec.as_ref().unwrap().egress.clone().unwrap();
        let nats: Vec<(Option<String>, Option<IntOrString>)> = egress[2..]
            .iter()
            .map(|r| {
                (
                    r.to.as_ref()
                        .map(|to| to[0].ip_block.as_ref().unwrap().cidr.clone()),
                    r.ports.as_ref().unwrap()[0].port.clone(),
                )
            })
            .collect();
        assert_eq!(
            nats,
            vec![
                (None, Some(IntOrString::Int(4223))),
                (Some("10.1.2.3/32".into()), Some(IntOrString::Int(4222))),
                (Some("fd00::7/128".into()), Some(IntOrString::Int(4300))),
            ]
        );
    }

    #[test]
    fn the_tracing_receiver_is_reachable_and_pinned_where_it_can_be() {
        let rule = |endpoint: &str| {
            let (t, plan) = tenant_and_plan(|ct| {
                ct.spec.network_policy = serde_json::from_value(serde_json::json!({})).unwrap();
                ct.spec.runtime.tracing = Some(
                    serde_json::from_value(serde_json::json!({"endpoint": endpoint})).unwrap(),
                );
            });
            let nps = build_network_policies(&t, &inputs(&plan));
            let egress = nps[1].spec.as_ref().unwrap().egress.clone().unwrap();
            assert_eq!(egress.len(), 3, "dns, database, tracing");
            egress[2].clone()
        };
        let port = |r: &NetworkPolicyEgressRule| r.ports.as_ref().unwrap()[0].port.clone();
        let namespace = |r: &NetworkPolicyEgressRule| {
            r.to.as_ref().unwrap()[0]
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["kubernetes.io/metadata.name"]
                .clone()
        };
        let svc = rule("http://otel-collector.observability.svc.cluster.local:4318");
        assert_eq!(namespace(&svc), "observability");
        assert_eq!(port(&svc), Some(IntOrString::Int(4318)));
        let bare = rule("http://collector");
        assert_eq!(namespace(&bare), "tenants");
        assert_eq!(port(&bare), Some(IntOrString::Int(4318)));
        let ip = rule("http://10.1.2.3:14318/");
        assert_eq!(
            ip.to.as_ref().unwrap()[0].ip_block.as_ref().unwrap().cidr,
            "10.1.2.3/32"
        );
        assert_eq!(port(&ip), Some(IntOrString::Int(14318)));
        let external = rule("https://otlp.example.com");
        assert!(external.to.is_none(), "by port only");
        assert_eq!(port(&external), Some(IntOrString::Int(443)));
    }

    #[test]
    fn the_operator_may_scrape_when_analysis_is_on() {
        let (t, plan) = tenant_and_plan(|ct| {
            ct.spec.network_policy = serde_json::from_value(serde_json::json!({})).unwrap();
            ct.spec.rollout.analysis = Some(Box::default());
        });
        let nps = build_network_policies(&t, &inputs(&plan));
        let ingress = nps[1].spec.as_ref().unwrap().ingress.clone().unwrap();
        assert_eq!(ingress.len(), 1);
        let peer = &ingress[0].from.as_ref().unwrap()[0];
        assert_eq!(peer.namespace_selector, Some(LabelSelector::default()));
        let labels = peer
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .clone()
            .unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "chorus-operator");
        assert_eq!(
            ingress[0].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(9090))
        );
    }
}
