//! Ingress `<name>`: the public endpoint when no Gateway is named.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};

use super::meta::child_meta;
use crate::{model::Tenant, names::labels};

/// Annotations that keep WebSockets open through ingress-nginx; the user's
/// `spec.exposure.ingress.annotations` override them.
const WEBSOCKET_ANNOTATIONS: [(&str, &str); 3] = [
    ("nginx.ingress.kubernetes.io/proxy-read-timeout", "3600"),
    ("nginx.ingress.kubernetes.io/proxy-send-timeout", "3600"),
    ("nginx.ingress.kubernetes.io/proxy-body-size", "1m"),
];

/// The Ingress, or `None` without exposure or when a gateway is used.
pub fn build_ingress(t: &Tenant) -> Option<Ingress> {
    let exposure = t.spec.exposure.as_ref()?;
    if exposure.gateway.is_some() {
        return None;
    }
    let ingress = exposure.ingress.clone().unwrap_or_default();
    let mut annotations: BTreeMap<String, String> = WEBSOCKET_ANNOTATIONS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    annotations.extend(ingress.annotations.clone());
    let mut meta = child_meta(t, t.name.clone(), labels(t));
    meta.annotations = Some(annotations);
    Some(Ingress {
        metadata: meta,
        spec: Some(IngressSpec {
            ingress_class_name: ingress.class_name.clone(),
            tls: exposure.tls.as_ref().map(|tls| {
                vec![IngressTLS {
                    hosts: Some(vec![exposure.host.clone()]),
                    secret_name: Some(tls.secret_name.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(exposure.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: t.name.clone(),
                                port: Some(ServiceBackendPort {
                                    name: Some("http".into()),
                                    number: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            default_backend: None,
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::tenant_and_plan;

    #[test]
    fn ingress_with_tls_class_and_websocket_timeouts() {
        let (t, _) = tenant_and_plan(|ct| {
            ct.spec.exposure = serde_json::from_value(serde_json::json!({
                "host": "acme.chat.example.com",
                "tls": {"secretName": "acme-tls"},
                "ingress": {"className": "nginx", "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "7200"}}
            }))
            .unwrap();
        });
        let ing = build_ingress(&t).unwrap();
        let ann = ing.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            ann["nginx.ingress.kubernetes.io/proxy-read-timeout"],
            "7200"
        );
        assert_eq!(
            ann["nginx.ingress.kubernetes.io/proxy-send-timeout"],
            "3600"
        );
        let spec = ing.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        assert_eq!(
            spec.tls.unwrap()[0].secret_name.as_deref(),
            Some("acme-tls")
        );
        let rule = &spec.rules.unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("acme.chat.example.com"));
        assert_eq!(
            rule.http.as_ref().unwrap().paths[0]
                .backend
                .service
                .as_ref()
                .unwrap()
                .name,
            "acme"
        );
    }

    #[test]
    fn no_ingress_without_exposure_or_with_a_gateway() {
        let (t, _) = tenant_and_plan(|_| {});
        assert!(build_ingress(&t).is_none());
        let (t, _) = tenant_and_plan(|ct| {
            ct.spec.exposure = serde_json::from_value(serde_json::json!({
                "host": "acme.example.com", "gateway": {"parentRef": {"name": "public"}}
            }))
            .unwrap();
        });
        assert!(build_ingress(&t).is_none());
    }
}
