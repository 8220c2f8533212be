//! Counting one client's requests at the apiserver. API Priority and
//! Fairness classifies every request by the first FlowSchema that matches it
//! and counts the requests it dispatches per FlowSchema
//! (`apiserver_flowcontrol_dispatched_requests_total{flow_schema}`). Three
//! FlowSchemas of a test's own, matching only the group of its namespace's
//! ServiceAccounts (the operator under test impersonates one), split them
//! into writes (create, update, patch, delete), lists, and everything else.
//! Requests of other clients on the shared cluster are not counted.

use k8s_openapi::api::flowcontrol::v1::FlowSchema;
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

use crate::Result;

/// Requests counted so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// create, update, patch (server-side apply included), delete.
    pub writes: u64,
    /// list.
    pub lists: u64,
    /// get, watch and anything else.
    pub others: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            writes: self.writes.saturating_sub(o.writes),
            lists: self.lists.saturating_sub(o.lists),
            others: self.others.saturating_sub(o.others),
        }
    }
}

/// The three FlowSchemas of one test.
pub struct RequestCounter {
    client: Client,
    names: [String; 3],
}

impl RequestCounter {
    /// Installs FlowSchemas matching the ServiceAccounts of `namespace`.
    pub async fn install(client: &Client, namespace: &str) -> Result<Self> {
        let api: Api<FlowSchema> = Api::all(client.clone());
        let base = format!("count-{namespace}");
        let names = [
            format!("{base}-writes"),
            format!("{base}-lists"),
            format!("{base}-others"),
        ];
        let verbs: [&[&str]; 3] = [
            &["create", "update", "patch", "delete", "deletecollection"],
            &["list"],
            &["*"],
        ];
        for (i, (name, verbs)) in names.iter().zip(verbs).enumerate() {
            // Non-resource requests (/version, discovery) are reads.
            let non_resource = if i == 2 {
                json!([{"verbs": ["*"], "nonResourceURLs": ["*"]}])
            } else {
                json!([])
            };
            let fs: FlowSchema = serde_json::from_value(json!({
                "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
                "kind": "FlowSchema",
                "metadata": {"name": name, "labels": {"chorus.dev/test": "true"}},
                "spec": {
                    "matchingPrecedence": 50 + i,
                    "priorityLevelConfiguration": {"name": "workload-low"},
                    "rules": [{
                        "subjects": [{"kind": "Group", "group": {"name": format!("system:serviceaccounts:{namespace}")}}],
                        "resourceRules": [{"verbs": verbs, "apiGroups": ["*"], "resources": ["*"],
                                           "namespaces": ["*"], "clusterScope": true}],
                        "nonResourceRules": non_resource
                    }]
                }
            }))
            .map_err(|e| crate::HarnessError::Manifest(format!("FlowSchema {name}: {e}")))?;
            api.create(&PostParams::default(), &fs).await?;
        }
        Ok(Self {
            client: client.clone(),
            names,
        })
    }

    /// The counts now.
    pub async fn counts(&self) -> Result<Counts> {
        let request = http::Request::get("/metrics")
            .body(Vec::new())
            .map_err(|e| {
                crate::HarnessError::Manifest(format!("building the /metrics request: {e}"))
            })?;
        let text = self.client.request_text(request).await?;
        let count = |name: &str| -> u64 {
            let prefix =
                format!("apiserver_flowcontrol_dispatched_requests_total{{flow_schema=\"{name}\",");
            text.lines()
                .filter(|l| l.starts_with(&prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .map(|v| v as u64)
                .sum()
        };
        Ok(Counts {
            writes: count(&self.names[0]),
            lists: count(&self.names[1]),
            others: count(&self.names[2]),
        })
    }

    /// Deletes the FlowSchemas.
    pub async fn remove(self) {
        let api: Api<FlowSchema> = Api::all(self.client.clone());
        for name in &self.names {
            let _ = api.delete(name, &DeleteParams::default()).await;
        }
    }
}
