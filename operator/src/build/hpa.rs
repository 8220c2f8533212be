//! HorizontalPodAutoscaler `<name>` targeting the ChatTenant's /scale.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};

use super::meta::child_meta;
use crate::{crd::AutoscalingSpec, model::Tenant, names::labels};

/// The HPA, or `None` when autoscaling is off.
pub fn build_hpa(t: &Tenant) -> Option<HorizontalPodAutoscaler> {
    let a = t.spec.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: child_meta(t, t.name.clone(), labels(t)),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("chorus.dev/v1alpha1".into()),
                kind: "ChatTenant".into(),
                name: t.name.clone(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(vec![
                resource("cpu", a.target_cpu_utilization_percentage),
                resource("memory", a.target_memory_utilization_percentage),
            ]),
            behavior: Some(behavior(a.behavior.as_ref())),
        },
        status: None,
    })
}

fn resource(name: &str, utilization: i32) -> MetricSpec {
    MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: name.into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(utilization),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }
}

/// The spec's behaviour with Chorus's defaults ([`default_behavior`]) filled
/// in field by field, per direction: a field the spec leaves out gets
/// Chorus's value, never Kubernetes' own default (which for scale-down
/// policies is 100% every 15 s). `policies` is one field: a list given
/// replaces the default list.
fn behavior(spec: Option<&HorizontalPodAutoscalerBehavior>) -> HorizontalPodAutoscalerBehavior {
    let defaults = default_behavior();
    let spec = spec.cloned().unwrap_or_default();
    HorizontalPodAutoscalerBehavior {
        scale_up: Some(rules(spec.scale_up, defaults.scale_up.unwrap_or_default())),
        scale_down: Some(rules(
            spec.scale_down,
            defaults.scale_down.unwrap_or_default(),
        )),
    }
}

/// One direction: each field from `spec` when set, else from `default`.
fn rules(spec: Option<HPAScalingRules>, default: HPAScalingRules) -> HPAScalingRules {
    let Some(spec) = spec else { return default };
    HPAScalingRules {
        policies: spec.policies.filter(|p| !p.is_empty()).or(default.policies),
        select_policy: spec.select_policy.or(default.select_policy),
        stabilization_window_seconds: spec
            .stabilization_window_seconds
            .or(default.stabilization_window_seconds),
        tolerance: spec.tolerance.or(default.tolerance),
    }
}

/// Up by 100% every 15 s; down by 50% every 60 s after a 5-minute window.
pub fn default_behavior() -> HorizontalPodAutoscalerBehavior {
    HorizontalPodAutoscalerBehavior {
        scale_up: Some(HPAScalingRules {
            stabilization_window_seconds: Some(0),
            select_policy: Some("Max".into()),
            policies: Some(vec![HPAScalingPolicy {
                type_: "Percent".into(),
                value: 100,
                period_seconds: 15,
            }]),
            ..HPAScalingRules::default()
        }),
        scale_down: Some(HPAScalingRules {
            stabilization_window_seconds: Some(300),
            select_policy: Some("Max".into()),
            policies: Some(vec![HPAScalingPolicy {
                type_: "Percent".into(),
                value: 50,
                period_seconds: 60,
            }]),
            ..HPAScalingRules::default()
        }),
    }
}

/// Bounds of the HPA, for tests and status messages.
pub fn bounds(a: &AutoscalingSpec) -> (i32, i32) {
    (a.min_replicas, a.max_replicas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::tenant_and_plan;

    #[test]
    fn no_autoscaling_no_hpa() {
        let (t, _) = tenant_and_plan(|_| {});
        assert!(build_hpa(&t).is_none());
    }

    #[test]
    fn hpa_targets_the_chattenant_with_seed_defaults() {
        let (t, _) = tenant_and_plan(|ct| {
            ct.spec.autoscaling = serde_json::from_value(serde_json::json!({})).unwrap();
        });
        let hpa = build_hpa(&t).unwrap();
        let spec = hpa.spec;
        assert_eq!(spec.scale_target_ref.kind, "ChatTenant");
        assert_eq!(spec.scale_target_ref.name, "acme");
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 9));
        let targets: Vec<_> = spec
            .metrics
            .unwrap()
            .into_iter()
            .map(|m| {
                let r = m.resource.unwrap();
                (r.name, r.target.average_utilization.unwrap())
            })
            .collect();
        assert_eq!(
            targets,
            [("cpu".to_string(), 70), ("memory".to_string(), 80)]
        );
        let b = spec.behavior.unwrap();
        let up = b.scale_up.unwrap().policies.unwrap();
        assert_eq!((up[0].value, up[0].period_seconds), (100, 15));
        let down = b.scale_down.unwrap();
        assert_eq!(down.stabilization_window_seconds, Some(300));
        let down = down.policies.unwrap();
        assert_eq!((down[0].value, down[0].period_seconds), (50, 60));
    }

    /// (direction, what the spec sets, expected (policies, selectPolicy,
    /// stabilizationWindowSeconds)).
    #[test]
    fn defaults_are_filled_field_by_field_per_direction() {
        let pct = |value, period_seconds| HPAScalingPolicy {
            type_: "Percent".into(),
            value,
            period_seconds,
        };
        let chorus_down = (vec![pct(50, 60)], "Max", 300);
        let chorus_up = (vec![pct(100, 15)], "Max", 0);
        type Case = (
            &'static str,
            serde_json::Value,
            (Vec<HPAScalingPolicy>, &'static str, i32),
            (Vec<HPAScalingPolicy>, &'static str, i32),
        );
        let cases: Vec<Case> = vec![
            (
                "nothing",
                serde_json::json!({}),
                chorus_up.clone(),
                chorus_down.clone(),
            ),
            (
                "the issue: only a scale-down window",
                serde_json::json!({"scaleDown": {"stabilizationWindowSeconds": 900}}),
                chorus_up.clone(),
                (vec![pct(50, 60)], "Max", 900),
            ),
            (
                "only scale-down policies",
                serde_json::json!({"scaleDown": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 30}]}}),
                chorus_up.clone(),
                (
                    vec![HPAScalingPolicy {
                        type_: "Pods".into(),
                        value: 1,
                        period_seconds: 30,
                    }],
                    "Max",
                    300,
                ),
            ),
            (
                "only a scale-down selectPolicy",
                serde_json::json!({"scaleDown": {"selectPolicy": "Min"}}),
                chorus_up.clone(),
                (vec![pct(50, 60)], "Min", 300),
            ),
            (
                "an empty policy list",
                serde_json::json!({"scaleDown": {"policies": []}}),
                chorus_up.clone(),
                chorus_down.clone(),
            ),
            (
                "only a scale-up window",
                serde_json::json!({"scaleUp": {"stabilizationWindowSeconds": 60}}),
                (vec![pct(100, 15)], "Max", 60),
                chorus_down.clone(),
            ),
        ];
        for (what, spec, up, down) in cases {
            let spec: HorizontalPodAutoscalerBehavior = serde_json::from_value(spec).unwrap();
            let b = behavior(Some(&spec));
            for (dir, got, want) in [("up", b.scale_up, up), ("down", b.scale_down, down)] {
                let got = got.unwrap();
                assert_eq!(
                    (
                        got.policies.unwrap(),
                        got.select_policy.unwrap().as_str(),
                        got.stabilization_window_seconds.unwrap()
                    ),
                    (want.0, want.1, want.2),
                    "{what}: scale {dir}"
                );
            }
        }
    }

    #[test]
    fn a_partial_behavior_keeps_the_default_for_the_other_direction() {
        let up_only = HorizontalPodAutoscalerBehavior {
            scale_up: Some(HPAScalingRules {
                stabilization_window_seconds: Some(30),
                ..HPAScalingRules::default()
            }),
            scale_down: None,
        };
        let b = behavior(Some(&up_only));
        assert_eq!(b.scale_up.unwrap().stabilization_window_seconds, Some(30));
        assert_eq!(
            b.scale_down.unwrap().stabilization_window_seconds,
            Some(300),
            "scale-down keeps Chorus's 5-minute window"
        );
    }
}
