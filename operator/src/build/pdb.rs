//! PodDisruptionBudget `<name>`: node drains take at most `maxUnavailable`
//! serving pods at a time.

use k8s_openapi::{
    api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::meta::child_meta;
use crate::{
    model::Tenant,
    names::{labels, slot_selector},
    rollout::Plan,
};

/// The PDB over the stable slot's pods.
pub fn build_pdb(t: &Tenant, plan: &Plan) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: child_meta(t, t.name.clone(), labels(t)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(t.spec.disruption.max_unavailable)),
            selector: Some(LabelSelector {
                match_labels: Some(slot_selector(t, plan.stable.slot)),
                ..LabelSelector::default()
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::tenant_and_plan;

    #[test]
    fn pdb_covers_the_stable_slot() {
        let (t, plan) = tenant_and_plan(|_| {});
        let pdb = build_pdb(&t, &plan);
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        let sel = spec.selector.unwrap().match_labels.unwrap();
        assert_eq!(sel.get("chorus.dev/slot").map(String::as_str), Some("blue"));
    }
}
