//! Pure builders: one file per child kind, each `fn build_x(&Tenant, ..) -> X`.
//! Nothing here talks to the apiserver or the database. [`build_children`]
//! fills [`Children`], whose kinds are listed once in [`crate::children`].

pub mod backup;
pub mod deployment;
pub mod hpa;
pub mod http_route;
pub mod ingress;
pub mod meta;
pub mod network_policy;
pub mod pdb;
pub mod secret;
pub mod service;

use crate::{children::Children, model::Tenant, rollout::Plan};

/// What the builders need besides the tenant.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// The slot layout.
    pub plan: &'a Plan,
    /// Database server host (for the egress rule).
    pub database_host: &'a str,
    /// Database server port.
    pub database_port: u16,
    /// When the database password last changed (pod template annotation).
    pub password_changed_at: Option<&'a str>,
    /// Checksum of the JWT key the pods read from a Secret (pod template
    /// annotation), when there is one.
    pub auth_key_hash: Option<&'a str>,
    /// Checksum of the connection URI in `<name>-db` (pod template
    /// annotation).
    pub database_uri_hash: Option<&'a str>,
    /// Checksum of the Secret and ConfigMap values `spec.runtime.env` reads
    /// (pod template annotation), when it reads any.
    pub env_refs_hash: Option<&'a str>,
}

/// Builds every child for `t`.
pub fn build_children(t: &Tenant, inputs: &Inputs) -> Children {
    let plan = inputs.plan;
    Children {
        deployments: vec![
            deployment::build_deployment(t, &plan.stable, inputs),
            deployment::build_deployment(t, &plan.other, inputs),
        ],
        services: service::build_services(t, plan),
        hpa: hpa::build_hpa(t),
        pdb: Some(pdb::build_pdb(t, plan)),
        network_policies: network_policy::build_network_policies(t, inputs),
        ingress: ingress::build_ingress(t),
        http_route: http_route::build_http_route(t, plan),
        backup: backup::build_backup(t),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        crd::ChatTenant,
        rollout::{SlotObservation, plan},
        validate::{tests::sample, validate},
    };

    /// A validated sample tenant (after `f` edits it) and its idle plan.
    pub(crate) fn tenant_and_plan(f: impl FnOnce(&mut ChatTenant)) -> (Tenant, Plan) {
        let mut ct = sample();
        f(&mut ct);
        let t = validate(&ct).unwrap();
        let p = plan(
            &t,
            ct.status.as_deref(),
            &SlotObservation::default(),
            false,
            0,
            None,
        );
        (t, p)
    }

    pub(crate) fn inputs(plan: &Plan) -> Inputs<'_> {
        Inputs {
            plan,
            database_host: "127.0.0.1",
            database_port: 5432,
            password_changed_at: None,
            auth_key_hash: None,
            database_uri_hash: None,
            env_refs_hash: None,
        }
    }

    #[test]
    fn every_child_is_owned_and_labelled() {
        let (t, plan) = tenant_and_plan(|ct| {
            ct.spec.autoscaling = serde_json::from_value(serde_json::json!({})).unwrap();
            ct.spec.network_policy = serde_json::from_value(serde_json::json!({})).unwrap();
            ct.spec.exposure =
                serde_json::from_value(serde_json::json!({"host": "acme.example.com"})).unwrap();
        });
        let c = build_children(&t, &inputs(&plan));
        let mut metas: Vec<_> = c.pdb.iter().map(|d| d.metadata.clone()).collect();
        metas.extend(c.deployments.iter().map(|d| d.metadata.clone()));
        metas.extend(c.services.iter().map(|d| d.metadata.clone()));
        metas.extend(c.network_policies.iter().map(|d| d.metadata.clone()));
        metas.extend(c.hpa.iter().map(|d| d.metadata.clone()));
        metas.extend(c.ingress.iter().map(|d| d.metadata.clone()));
        assert_eq!(metas.len(), 1 + 2 + 4 + 2 + 1 + 1);
        // Admission and `validate` keep exactly these names valid.
        let allowed = crate::names::child_names(&t.name);
        for m in &metas {
            let name = m.name.as_deref().unwrap();
            assert!(
                allowed.iter().any(|a| a == name),
                "{name} is not in names::child_names"
            );
        }
        for m in metas {
            let owner = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str()),
                ("ChatTenant", "acme")
            );
            assert_eq!(owner.controller, Some(true));
            let labels = m.labels.as_ref().unwrap();
            assert_eq!(labels["chorus.dev/tenant"], "acme");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "chorus-operator");
            assert_eq!(m.namespace.as_deref(), Some("tenants"));
        }
    }
}
