//! The two-slot model: which slot is stable, what runs in the other one, how
//! replicas and traffic are split. A pure function of the spec, the last
//! status and the observed Deployments; it is the only place that decides a
//! cut-over.
//!
//! Rules (see docs/operations.md):
//! - Without `spec.rollout.candidate`, the stable slot runs
//!   `spec.runtime.image` with all replicas; the other slot is at zero
//!   (or still draining after a cut-over).
//! - With a candidate, it runs in the other slot. Canary: the candidate gets
//!   `ceil(replicas * weight / 100)` pods; BlueGreen: `previewReplicas` behind
//!   `<name>-preview`.
//! - `promoteRevision == status.candidate.revision` promotes: the candidate
//!   slot is scaled to full size and, once available, becomes stable. The
//!   old slot keeps running for `drainSeconds`, then goes to zero.
//! - `abortRevision == status.candidate.revision` aborts: all traffic to
//!   stable, the candidate explicitly at zero.
//! - A revision that does not match the current candidate does nothing.

use crate::{
    crd::{ChatTenantStatus, RolloutStrategy},
    model::{Slot, Tenant},
    validate::revision_of,
};

/// What one slot should run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotSpec {
    /// Which slot.
    pub slot: Slot,
    /// Image.
    pub image: String,
    /// Revision of the image.
    pub revision: String,
    /// Deployment replicas.
    pub replicas: i32,
}

/// Where the release in flight stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No candidate.
    Idle,
    /// Canary: the candidate takes a share of traffic.
    Canary,
    /// BlueGreen: the candidate runs behind the preview Service.
    Preview,
    /// Promotion requested; the candidate is scaling up before the cut-over.
    Promoting,
    /// The candidate became stable; waiting for the spec to catch up
    /// (move the image to `spec.runtime.image`, remove the candidate).
    Promoted,
    /// The candidate was aborted and is at zero.
    Aborted,
}

/// How traffic reaches the slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// HTTPRoute backend weights (exact).
    GatewayApi,
    /// The serving Service selects both slots; the split follows pod counts.
    ReplicaRatio,
}

impl Provider {
    /// Name shown in `status.traffic.provider`.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GatewayApi => "GatewayAPI",
            Provider::ReplicaRatio => "ReplicaRatio",
        }
    }
}

/// The decided layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The stable slot.
    pub stable: SlotSpec,
    /// The other slot (candidate, draining old stable, or idle at zero).
    pub other: SlotSpec,
    /// Release phase.
    pub phase: Phase,
    /// Revision of the candidate, while one is in the spec.
    pub candidate_revision: Option<String>,
    /// Percent of traffic to the other slot, as enforced.
    pub canary_weight: i32,
    /// How traffic is split.
    pub provider: Provider,
    /// True when the serving Service must select both slots.
    pub serve_both_slots: bool,
    /// Set when this reconcile performs the cut-over: the new stable slot.
    pub cut_over: bool,
    /// RFC 3339 deadline until which the old slot keeps its pods.
    pub draining_until: Option<String>,
}

/// What the slots' Deployments report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotObservation {
    /// `status.availableReplicas` of the slot's Deployment.
    pub available: i32,
}

/// Decides the layout. `now` is seconds since the epoch.
pub fn plan(
    t: &Tenant,
    status: Option<&ChatTenantStatus>,
    observed_other: SlotObservation,
    gateway: bool,
    now: i64,
) -> Plan {
    let spec = &t.spec;
    let total = spec.runtime.replicas.max(0);
    let provider = if gateway {
        Provider::GatewayApi
    } else {
        Provider::ReplicaRatio
    };
    let prev_stable = status.and_then(|s| s.stable.as_ref());
    let stable_slot = t.stable_slot;
    let other_slot = stable_slot.other();
    let draining = status
        .and_then(|s| s.draining.as_ref())
        .filter(|d| d.slot == other_slot.as_str() && parse_time(&d.until).is_some_and(|u| u > now));

    let idle_other = |image: &str, replicas: i32| SlotSpec {
        slot: other_slot,
        image: image.to_string(),
        revision: revision_of(image),
        replicas,
    };
    let stable_spec = |image: &str, slot: Slot| SlotSpec {
        slot,
        image: image.to_string(),
        revision: revision_of(image),
        replicas: total,
    };

    let Some(candidate) = spec.rollout.candidate.as_ref() else {
        // No release in flight: stable runs spec.runtime.image; the other
        // slot keeps its old image while it drains, then goes to zero.
        let other = match draining {
            Some(d) => idle_other(&d.image, d.replicas),
            None => idle_other(
                prev_stable
                    .filter(|s| s.slot == other_slot.as_str())
                    .map_or(spec.runtime.image.as_str(), |s| s.image.as_str()),
                0,
            ),
        };
        return Plan {
            stable: stable_spec(&spec.runtime.image, stable_slot),
            other,
            phase: Phase::Idle,
            candidate_revision: None,
            canary_weight: 0,
            provider,
            serve_both_slots: false,
            cut_over: false,
            draining_until: draining.map(|d| d.until.clone()),
        };
    };

    let rev = revision_of(&candidate.image);
    let promote = spec.rollout.promote_revision == rev;
    let abort = spec.rollout.abort_revision == rev && !promote;

    // Already promoted: the candidate image is stable (recorded in status).
    if promote && prev_stable.is_some_and(|s| s.revision == rev) {
        let other = match draining {
            Some(d) => idle_other(&d.image, d.replicas),
            None => idle_other(&spec.runtime.image, 0),
        };
        return Plan {
            stable: stable_spec(&candidate.image, stable_slot),
            other,
            phase: Phase::Promoted,
            candidate_revision: Some(rev),
            canary_weight: 0,
            provider,
            serve_both_slots: false,
            cut_over: false,
            draining_until: draining.map(|d| d.until.clone()),
        };
    }

    // The stable image while the candidate is in flight: what status
    // recorded, falling back to spec.runtime.image.
    let stable_image = prev_stable
        .filter(|s| s.slot == stable_slot.as_str())
        .map_or(spec.runtime.image.as_str(), |s| s.image.as_str())
        .to_string();

    if abort {
        return Plan {
            stable: stable_spec(&stable_image, stable_slot),
            other: idle_other(&candidate.image, 0),
            phase: Phase::Aborted,
            candidate_revision: Some(rev),
            canary_weight: 0,
            provider,
            serve_both_slots: false,
            cut_over: false,
            draining_until: None,
        };
    }

    if promote {
        // Scale the candidate to full size; cut over once it is available.
        let ready = total == 0 || observed_other.available >= total;
        if ready {
            let until = now + spec.rollout.drain_seconds;
            return Plan {
                stable: SlotSpec {
                    slot: other_slot,
                    image: candidate.image.clone(),
                    revision: rev.clone(),
                    replicas: total,
                },
                other: SlotSpec {
                    slot: stable_slot,
                    image: stable_image.clone(),
                    revision: revision_of(&stable_image),
                    replicas: if spec.rollout.drain_seconds > 0 {
                        total
                    } else {
                        0
                    },
                },
                phase: Phase::Promoted,
                candidate_revision: Some(rev),
                canary_weight: 0,
                provider,
                serve_both_slots: false,
                cut_over: true,
                draining_until: (spec.rollout.drain_seconds > 0).then(|| format_time(until)),
            };
        }
        return Plan {
            stable: stable_spec(&stable_image, stable_slot),
            other: idle_other(&candidate.image, total),
            phase: Phase::Promoting,
            candidate_revision: Some(rev),
            canary_weight: current_weight(spec),
            provider,
            serve_both_slots: serve_both(spec.rollout.strategy, provider),
            cut_over: false,
            draining_until: None,
        };
    }

    match spec.rollout.strategy {
        RolloutStrategy::Canary => {
            let weight = spec
                .rollout
                .canary
                .as_ref()
                .and_then(|c| c.weight)
                .unwrap_or(0)
                .clamp(0, 100);
            let canary_pods = canary_replicas(total, weight);
            let (stable_pods, effective) = match provider {
                // Exact weights on the route; stable keeps full capacity.
                Provider::GatewayApi => (total, weight),
                // Pods carry the split: stable shrinks by what the canary takes.
                Provider::ReplicaRatio => {
                    let stable = (total - canary_pods).max(if weight < 100 { 1 } else { 0 });
                    let all = stable + canary_pods;
                    let eff = if all == 0 {
                        0
                    } else {
                        (canary_pods * 100 + all / 2) / all
                    };
                    (stable, eff)
                }
            };
            Plan {
                stable: SlotSpec {
                    replicas: stable_pods,
                    ..stable_spec(&stable_image, stable_slot)
                },
                other: idle_other(&candidate.image, canary_pods),
                phase: Phase::Canary,
                candidate_revision: Some(rev),
                canary_weight: effective,
                provider,
                serve_both_slots: provider == Provider::ReplicaRatio,
                cut_over: false,
                draining_until: None,
            }
        }
        RolloutStrategy::BlueGreen => {
            let preview = spec
                .rollout
                .blue_green
                .as_ref()
                .map_or(1, |b| b.preview_replicas);
            Plan {
                stable: stable_spec(&stable_image, stable_slot),
                other: idle_other(&candidate.image, preview),
                phase: Phase::Preview,
                candidate_revision: Some(rev),
                canary_weight: 0,
                provider,
                serve_both_slots: false,
                cut_over: false,
                draining_until: None,
            }
        }
    }
}

fn serve_both(strategy: RolloutStrategy, provider: Provider) -> bool {
    strategy == RolloutStrategy::Canary && provider == Provider::ReplicaRatio
}

fn current_weight(spec: &crate::crd::ChatTenantSpec) -> i32 {
    match spec.rollout.strategy {
        RolloutStrategy::Canary => spec
            .rollout
            .canary
            .as_ref()
            .and_then(|c| c.weight)
            .unwrap_or(0),
        RolloutStrategy::BlueGreen => 0,
    }
}

/// Candidate pods for a canary weight: `ceil(total * weight / 100)`, at
/// least one pod for any weight above zero.
pub fn canary_replicas(total: i32, weight: i32) -> i32 {
    if weight <= 0 || total <= 0 {
        return 0;
    }
    ((total * weight + 99) / 100).clamp(1, total)
}

/// Parses an RFC 3339 time into seconds since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// Formats seconds since the epoch as RFC 3339.
pub fn format_time(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        crd::{CanarySpec, Candidate, DrainStatus, SlotStatus},
        validate::{tests::sample, validate},
    };

    const NOW: i64 = 1_800_000_000;

    fn tenant(f: impl FnOnce(&mut crate::crd::ChatTenant)) -> (Tenant, crate::crd::ChatTenant) {
        let mut ct = sample();
        ct.spec.runtime.replicas = 4;
        f(&mut ct);
        (validate(&ct).unwrap(), ct)
    }

    fn stable_status(slot: &str, image: &str) -> ChatTenantStatus {
        ChatTenantStatus {
            stable: Some(SlotStatus {
                revision: revision_of(image),
                image: image.into(),
                slot: slot.into(),
                replicas: 4,
                available_replicas: 4,
            }),
            ..ChatTenantStatus::default()
        }
    }

    const OLD: &str = "ghcr.io/chorus-dev/chat-runtime:0.1.0";
    const NEW: &str = "ghcr.io/chorus-dev/chat-runtime:0.2.0";

    fn with_candidate(ct: &mut crate::crd::ChatTenant, weight: Option<i32>) {
        ct.spec.rollout.candidate = Some(Candidate { image: NEW.into() });
        ct.spec.rollout.canary = weight.map(|w| CanarySpec { weight: Some(w) });
    }

    #[test]
    fn idle_tenant_runs_everything_in_blue() {
        let (t, _) = tenant(|_| {});
        let p = plan(&t, None, SlotObservation::default(), false, NOW);
        assert_eq!(p.phase, Phase::Idle);
        assert_eq!((p.stable.slot, p.stable.replicas), (Slot::Blue, 4));
        assert_eq!((p.other.slot, p.other.replicas), (Slot::Green, 0));
        assert_eq!(p.stable.image, OLD);
    }

    #[test]
    fn canary_by_replica_ratio_rounds_to_pods() {
        let (t, _) = tenant(|ct| with_candidate(ct, Some(10)));
        let p = plan(
            &t,
            Some(&stable_status("blue", OLD)),
            SlotObservation::default(),
            false,
            NOW,
        );
        assert_eq!(p.phase, Phase::Canary);
        assert_eq!(p.other.image, NEW);
        assert_eq!((p.stable.replicas, p.other.replicas), (3, 1));
        assert_eq!(p.canary_weight, 25, "10% rounds to one pod of four");
        assert!(p.serve_both_slots);
    }

    #[test]
    fn canary_with_gateway_keeps_exact_weight_and_full_stable() {
        let (t, _) = tenant(|ct| with_candidate(ct, Some(10)));
        let p = plan(
            &t,
            Some(&stable_status("blue", OLD)),
            SlotObservation::default(),
            true,
            NOW,
        );
        assert_eq!((p.stable.replicas, p.other.replicas), (4, 1));
        assert_eq!(p.canary_weight, 10);
        assert!(!p.serve_both_slots);
    }

    #[test]
    fn stale_promote_revision_does_nothing() {
        let (t, _) = tenant(|ct| {
            with_candidate(ct, Some(50));
            ct.spec.rollout.promote_revision = revision_of("some:old-release");
        });
        let p = plan(
            &t,
            Some(&stable_status("blue", OLD)),
            SlotObservation { available: 4 },
            false,
            NOW,
        );
        assert_eq!(p.phase, Phase::Canary);
        assert!(!p.cut_over);
    }

    #[test]
    fn promotion_scales_up_then_cuts_over_and_drains() {
        let (t, _) = tenant(|ct| {
            with_candidate(ct, Some(50));
            ct.spec.rollout.promote_revision = revision_of(NEW);
        });
        let status = stable_status("blue", OLD);
        let waiting = plan(
            &t,
            Some(&status),
            SlotObservation { available: 2 },
            false,
            NOW,
        );
        assert_eq!(waiting.phase, Phase::Promoting);
        assert_eq!(waiting.other.replicas, 4);
        assert!(!waiting.cut_over);

        let done = plan(
            &t,
            Some(&status),
            SlotObservation { available: 4 },
            false,
            NOW,
        );
        assert!(done.cut_over);
        assert_eq!(
            (done.stable.slot, done.stable.image.as_str()),
            (Slot::Green, NEW)
        );
        assert_eq!((done.other.slot, done.other.replicas), (Slot::Blue, 4));
        assert_eq!(done.draining_until, Some(format_time(NOW + 600)));
    }

    #[test]
    fn after_promotion_the_spec_catching_up_changes_nothing() {
        // status after the cut-over: green is stable with NEW, blue draining.
        let mut status = stable_status("green", NEW);
        status.draining = Some(DrainStatus {
            slot: "blue".into(),
            image: OLD.into(),
            replicas: 4,
            until: format_time(NOW + 300),
        });
        let (promoted, _) = tenant(|ct| {
            with_candidate(ct, None);
            ct.spec.rollout.promote_revision = revision_of(NEW);
            ct.status = Some(status.clone());
        });
        let p = plan(
            &promoted,
            Some(&status),
            SlotObservation::default(),
            false,
            NOW,
        );
        assert_eq!(p.phase, Phase::Promoted);
        assert_eq!((p.stable.slot, p.stable.image.as_str()), (Slot::Green, NEW));
        assert_eq!((p.other.slot, p.other.replicas), (Slot::Blue, 4));

        // The SRE moves the image into spec.runtime.image and drops the candidate.
        let (caught_up, _) = tenant(|ct| {
            ct.spec.runtime.image = NEW.into();
            ct.status = Some(status.clone());
        });
        let q = plan(
            &caught_up,
            Some(&status),
            SlotObservation::default(),
            false,
            NOW,
        );
        assert_eq!(q.stable, p.stable);
        assert_eq!(q.other.replicas, 4, "still draining");
        let later = plan(
            &caught_up,
            Some(&status),
            SlotObservation::default(),
            false,
            NOW + 301,
        );
        assert_eq!(later.other.replicas, 0, "drained");
    }

    #[test]
    fn abort_scales_the_candidate_to_zero_explicitly() {
        let (t, _) = tenant(|ct| {
            with_candidate(ct, Some(50));
            ct.spec.rollout.abort_revision = revision_of(NEW);
        });
        let p = plan(
            &t,
            Some(&stable_status("blue", OLD)),
            SlotObservation { available: 2 },
            false,
            NOW,
        );
        assert_eq!(p.phase, Phase::Aborted);
        assert_eq!((p.stable.replicas, p.other.replicas), (4, 0));
        assert_eq!(p.canary_weight, 0);
    }

    #[test]
    fn blue_green_previews_then_promotes() {
        let (t, _) = tenant(|ct| {
            ct.spec.rollout.strategy = RolloutStrategy::BlueGreen;
            ct.spec.rollout.candidate = Some(Candidate { image: NEW.into() });
        });
        let p = plan(
            &t,
            Some(&stable_status("blue", OLD)),
            SlotObservation::default(),
            false,
            NOW,
        );
        assert_eq!(p.phase, Phase::Preview);
        assert_eq!(p.other.replicas, 1);
        assert_eq!(p.stable.replicas, 4);
    }

    #[test]
    fn canary_replica_math() {
        assert_eq!(canary_replicas(10, 10), 1);
        assert_eq!(canary_replicas(10, 41), 5);
        assert_eq!(canary_replicas(3, 1), 1);
        assert_eq!(canary_replicas(3, 100), 3);
        assert_eq!(canary_replicas(0, 50), 0);
        assert_eq!(canary_replicas(5, 0), 0);
    }
}
