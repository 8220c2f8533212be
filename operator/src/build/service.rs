//! Services: serving `<name>`, per-slot `<name>-blue` / `<name>-green`, and
//! `<name>-preview` (the non-stable slot). Slot Services have fixed
//! selectors; only the serving Service follows the stable slot.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Service, ServicePort, ServiceSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::meta::{ADMIN_PORT, HTTP_PORT, child_meta};
use crate::{
    model::{Slot, Tenant},
    names::{labels, slot_labels, slot_selector, tenant_selector},
    rollout::Plan,
};

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

fn service(
    t: &Tenant,
    name: String,
    labels: BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
    admin: bool,
) -> Service {
    let mut ports = vec![port("http", HTTP_PORT)];
    if admin {
        ports.push(port("admin", ADMIN_PORT));
    }
    Service {
        metadata: child_meta(t, name, labels),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// All four Services.
pub fn build_services(t: &Tenant, plan: &Plan) -> Vec<Service> {
    let serving_selector = if plan.serve_both_slots {
        tenant_selector(t)
    } else {
        slot_selector(t, plan.stable.slot)
    };
    let slot_service = |slot: Slot| {
        service(
            t,
            format!("{}-{}", t.name, slot.as_str()),
            slot_labels(t, slot),
            slot_selector(t, slot),
            true,
        )
    };
    vec![
        service(t, t.name.clone(), labels(t), serving_selector, false),
        slot_service(Slot::Blue),
        slot_service(Slot::Green),
        service(
            t,
            format!("{}-preview", t.name),
            labels(t),
            slot_selector(t, plan.other.slot),
            false,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::tenant_and_plan;

    fn selector(s: &Service) -> BTreeMap<String, String> {
        s.spec.as_ref().unwrap().selector.clone().unwrap()
    }

    #[test]
    fn four_services_with_stable_selectors() {
        let (t, plan) = tenant_and_plan(|_| {});
        let svcs = build_services(&t, &plan);
        let names: Vec<_> = svcs
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["acme", "acme-blue", "acme-green", "acme-preview"]);
        assert_eq!(
            selector(&svcs[0])
                .get("chorus.dev/slot")
                .map(String::as_str),
            Some("blue")
        );
        assert_eq!(
            selector(&svcs[1])
                .get("chorus.dev/slot")
                .map(String::as_str),
            Some("blue")
        );
        assert_eq!(
            selector(&svcs[2])
                .get("chorus.dev/slot")
                .map(String::as_str),
            Some("green")
        );
        assert_eq!(
            selector(&svcs[3])
                .get("chorus.dev/slot")
                .map(String::as_str),
            Some("green")
        );
        assert_eq!(
            svcs[0].spec.as_ref().unwrap().ports.as_ref().unwrap().len(),
            1,
            "admin port not on the serving Service"
        );
        assert_eq!(
            svcs[1].spec.as_ref().unwrap().ports.as_ref().unwrap().len(),
            2
        );
    }
}
