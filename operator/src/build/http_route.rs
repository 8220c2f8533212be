//! Gateway API HTTPRoute `<name>` (gateway.networking.k8s.io/v1). Gateway API
//! types are not in k8s-openapi, so the route is a `DynamicObject`; the
//! operator checks that the CRD is served before applying it.

use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::meta::{HTTP_PORT, child_meta};
use crate::{model::Tenant, names::labels, rollout::Plan};

/// The HTTPRoute API resource.
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// The HTTPRoute, or `None` unless `spec.exposure.gateway` is set. Weights go
/// to the per-slot Services, so moving traffic never changes a selector.
pub fn build_http_route(t: &Tenant, plan: &Plan) -> Option<DynamicObject> {
    let exposure = t.spec.exposure.as_ref()?;
    let gateway = exposure.gateway.as_ref()?;
    let mut parent = json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway.parent_ref.name});
    if let Some(ns) = &gateway.parent_ref.namespace {
        parent["namespace"] = json!(ns);
    }
    if let Some(section) = &gateway.parent_ref.section_name {
        parent["sectionName"] = json!(section);
    }
    let backend = |slot: &str, weight: i32| json!({"kind": "Service", "name": format!("{}-{}", t.name, slot), "port": HTTP_PORT, "weight": weight});
    let canary = plan.canary_weight.clamp(0, 100);
    let backends = vec![
        backend(plan.stable.slot.as_str(), 100 - canary),
        backend(plan.other.slot.as_str(), canary),
    ];
    let ar = http_route_resource();
    let mut obj = DynamicObject::new(&t.name, &ar);
    obj.metadata = child_meta(t, t.name.clone(), labels(t));
    obj.data = json!({
        "spec": {
            "parentRefs": [parent],
            "hostnames": [exposure.host],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": backends,
            }],
        }
    });
    Some(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::tenant_and_plan;

    #[test]
    fn route_weights_point_at_slot_services() {
        let (t, plan) = tenant_and_plan(|ct| {
            ct.spec.exposure = serde_json::from_value(serde_json::json!({
                "host": "acme.example.com",
                "gateway": {"parentRef": {"name": "public", "namespace": "gateways"}}
            }))
            .unwrap();
        });
        let route = build_http_route(&t, &plan).unwrap();
        let spec = &route.data["spec"];
        assert_eq!(spec["parentRefs"][0]["name"], "public");
        assert_eq!(spec["parentRefs"][0]["namespace"], "gateways");
        assert_eq!(spec["hostnames"][0], "acme.example.com");
        let backends = spec["rules"][0]["backendRefs"].as_array().unwrap();
        assert_eq!(backends[0]["name"], "acme-blue");
        assert_eq!(backends[0]["weight"], 100);
        assert_eq!(backends[1]["name"], "acme-green");
        assert_eq!(backends[1]["weight"], 0);
    }
}
