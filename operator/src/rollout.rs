//! The two-slot model: which slot is stable, what runs in the other one, how
//! replicas and traffic are split, and where the release in flight stands.
//! A pure function of the spec, the last status and the observed candidate
//! slot; it is the only place that decides a cut-over, an abort or a step.
//!
//! Rules (see docs/operations.md):
//! - Without `spec.rollout.candidate`, the stable slot runs
//!   `spec.runtime.image` with all replicas; the other slot is at zero
//!   (or still draining after a cut-over). The last release is closed.
//! - Each appearance of a candidate, or a change of its image, starts a new
//!   release: `status.release.number` counts up and the release gets its own
//!   revision (a hash of the tenant uid, the number and the image). Only
//!   that revision in `promoteRevision`/`abortRevision` acts on it, so a
//!   value left in Git never acts on a later release, even of the same image.
//! - Canary: the candidate gets `ceil(replicas * weight / 100)` pods, the
//!   weight being `canary.weight` or the last `setWeight` step reached. By
//!   replica ratio the stable slot gives up only as many pods as the
//!   candidate has available;
//!   BlueGreen: `previewReplicas` behind `<name>-preview`.
//! - Steps: `setWeight` is done when the candidate's updated pods for that
//!   weight are available; a timed pause when its time has passed (counted
//!   from when the step began, with the duration now in the spec); an
//!   indefinite pause when `promoteRevision` names the release. After the
//!   last step the release promotes.
//! - `promoteRevision` (without steps) or the end of the steps promotes: the
//!   candidate slot is scaled to full size and, once its Deployment has
//!   observed that spec and all its pods are updated and available, becomes
//!   stable. The old slot keeps its pods for `drainSeconds` counted from the
//!   cut-over with the current spec value, then goes to zero.
//! - `abortRevision` before the cut-over always wins (even over a promotion
//!   in progress): all traffic to stable, the candidate explicitly at zero.
//!   After the cut-over, while the old slot still drains, it rolls back:
//!   the old slot is stable again at once, the candidate goes to zero.
//! - Before the cut-over, a candidate short of available updated pods for
//!   `progressDeadlineSeconds`, or with a pod restarted more than
//!   `maxRestarts` times, aborts by itself (`CandidateUnhealthy`).
//! - With `spec.rollout.analysis`, each judgement of the candidate's
//!   metrics (made by the controller, [`crate::analysis`]) extends a run of
//!   passes or failures in `status.analysis`; `failureLimit` failures in a
//!   row abort the release (`AnalysisFailed`) before the cut-over, and
//!   after it, within the rollback window, roll it back at once. An
//!   `analysis` step is done after its `passes` passing intervals in a row
//!   (counted from the step's start).
//! - An aborted release stays aborted; start another by changing the
//!   candidate's image or `attempt`, or by removing and re-adding it.
//! - The progress deadline counts from the last progress: it restarts each
//!   time one more updated candidate pod is available.

use sha2::{Digest, Sha256};

use crate::{
    analysis::{Judgement, advance},
    crd::{
        AnalysisStatus, CanaryStep, ChatTenantStatus, DrainStatus, PauseStep, ReleaseState,
        ReleaseStatus, RolloutStrategy,
    },
    model::{Slot, Tenant},
    validate::revision_of,
};

/// `status.release.reason` of an abort by `abortRevision`.
pub const ABORT_REQUESTED: &str = "AbortRequested";
/// `status.release.reason` of an automatic abort.
pub const CANDIDATE_UNHEALTHY: &str = "CandidateUnhealthy";
/// `status.release.reason` of an abort after the cut-over.
pub const ROLLED_BACK: &str = "RolledBack";
/// `status.release.reason` of an abort (or a rollback after the cut-over)
/// by a failing analysis.
pub const ANALYSIS_FAILED: &str = "AnalysisFailed";
/// `status.release.reason` of a promotion by `promoteRevision`.
pub const PROMOTE_REQUESTED: &str = "PromoteRequested";
/// `status.release.reason` of a promotion at the end of the steps.
pub const STEPS_DONE: &str = "StepsDone";

/// How often an in-flight release is looked at even when nothing it owns
/// changes (candidate pods restarting are not watched).
pub const POLL_SECONDS: i64 = 10;

/// What one slot should run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotSpec {
    /// Which slot.
    pub slot: Slot,
    /// Image.
    pub image: String,
    /// Revision of the image (pod template annotation; independent of the
    /// release, so finishing a release restarts nothing).
    pub revision: String,
    /// Deployment replicas.
    pub replicas: i32,
}

fn slot_spec(slot: Slot, image: &str, replicas: i32) -> SlotSpec {
    SlotSpec {
        slot,
        image: image.to_string(),
        revision: revision_of(image),
        replicas,
    }
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
    /// Promotion started; the candidate is scaling up before the cut-over.
    Promoting,
    /// The candidate became stable; waiting for the spec to catch up
    /// (move the image to `spec.runtime.image`, remove the candidate).
    Promoted,
    /// The release was aborted (or rolled back); the candidate is at zero.
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
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The stable slot.
    pub stable: SlotSpec,
    /// The other slot (candidate, draining old stable, or idle at zero).
    pub other: SlotSpec,
    /// Release phase.
    pub phase: Phase,
    /// The release record to store in `status.release`.
    pub release: Option<ReleaseStatus>,
    /// Percent of traffic to the other slot, as enforced.
    pub canary_weight: i32,
    /// How traffic is split.
    pub provider: Provider,
    /// True when the serving Service must select both slots.
    pub serve_both_slots: bool,
    /// Set when this reconcile performs the cut-over.
    pub cut_over: bool,
    /// The old slot kept running after a cut-over (`status.draining`).
    pub draining: Option<DrainStatus>,
    /// The release waits for `promoteRevision` (no steps, or an indefinite
    /// pause).
    pub awaiting_promotion: bool,
    /// Seconds since the epoch at which the plan changes by time alone (a
    /// pause, a drain or a progress deadline ends).
    pub wake_at: Option<i64>,
    /// A release is in flight: look again every [`POLL_SECONDS`].
    pub poll: bool,
    /// `status.analysis`: the last judgement and the runs of passes and
    /// failures.
    pub analysis: Option<AnalysisStatus>,
}

impl Plan {
    /// Revision of the open release (what promote/abort must name).
    pub fn candidate_revision(&self) -> Option<&str> {
        self.release
            .as_ref()
            .filter(|r| r.closed_at.is_none())
            .map(|r| r.revision.as_str())
    }
}

/// What one candidate pod reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodObservation {
    /// Pod name.
    pub name: String,
    /// Image of its runtime container (from the pod spec).
    pub image: String,
    /// Ready condition.
    pub ready: bool,
    /// Restarts of the runtime container.
    pub restarts: i32,
    /// Why it is not serving, when known (`CrashLoopBackOff`, `exit code 1`,
    /// `running, not ready`).
    pub problem: Option<String>,
}

/// What the non-stable slot's Deployment and pods report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotObservation {
    /// Image of the Deployment's pod template (`None`: no Deployment).
    pub image: Option<String>,
    /// `spec.replicas`.
    pub spec_replicas: i32,
    /// `status.observedGeneration >= metadata.generation`.
    pub caught_up: bool,
    /// `status.replicas`.
    pub replicas: i32,
    /// `status.updatedReplicas`.
    pub updated: i32,
    /// `status.availableReplicas`.
    pub available: i32,
    /// The slot's pods (read only while a release is in flight).
    pub pods: Vec<PodObservation>,
}

impl SlotObservation {
    /// True when the Deployment runs `image` with `want` replicas, its
    /// controller has observed that spec, every pod is of the current
    /// template and `want` of them are available. Counts only updated pods:
    /// available pods of an older template never make a slot ready.
    pub fn ready(&self, image: &str, want: i32) -> bool {
        if want <= 0 {
            return true;
        }
        self.image.as_deref() == Some(image)
            && self.spec_replicas == want
            && self.caught_up
            && self.updated >= want
            && self.replicas == self.updated
            && self.available >= want
    }
}

/// The revision of release `number` of `image` on the tenant with `uid`:
/// 10 hex digits of SHA-256.
pub fn release_revision(uid: &str, number: i64, image: &str) -> String {
    let digest = Sha256::digest(format!("{uid}\n{number}\n{image}").as_bytes());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

/// The drain of `other` recorded in status, if still running at `now`. The
/// end is the cut-over time plus the current `drainSeconds`; a record
/// without `since` (older operators) keeps its fixed `until`.
fn active_drain(
    status: Option<&ChatTenantStatus>,
    other: Slot,
    drain_seconds: i64,
    now: i64,
) -> Option<DrainStatus> {
    let d = status?.draining.as_ref()?;
    if d.slot != other.as_str() {
        return None;
    }
    let end = match d.since.as_deref().and_then(parse_time) {
        Some(since) => since + drain_seconds,
        None => parse_time(&d.until)?,
    };
    (end > now).then(|| DrainStatus {
        until: format_time(end),
        ..d.clone()
    })
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The weight of the last `setWeight` among the first `upto + 1` steps.
fn weight_at(steps: &[CanaryStep], upto: usize) -> i32 {
    steps
        .iter()
        .take(upto + 1)
        .filter_map(|s| s.set_weight)
        .next_back()
        .unwrap_or(0)
        .clamp(0, 100)
}

fn clear_timers(rel: &mut ReleaseStatus) {
    rel.pause_until = None;
    rel.unavailable_since = None;
    rel.available_at_progress = None;
}

/// Decides the layout. `now` is seconds since the epoch; `judgement` is
/// the analysis of an interval that ended now (see [`crate::analysis`]),
/// if one did.
pub fn plan(
    t: &Tenant,
    status: Option<&ChatTenantStatus>,
    observed: &SlotObservation,
    gateway: bool,
    now: i64,
    judgement: Option<&Judgement>,
) -> Plan {
    let spec = &t.spec;
    let r = &spec.rollout;
    let total = spec.runtime.replicas.max(0);
    let provider = if gateway {
        Provider::GatewayApi
    } else {
        Provider::ReplicaRatio
    };
    let stable_slot = t.stable_slot;
    let other_slot = stable_slot.other();
    let prev_stable = status.and_then(|s| s.stable.as_ref());
    let prev_release = status.and_then(|s| s.release.as_ref());
    let drain = active_drain(status, other_slot, r.drain_seconds, now);
    // The stable image while a release is in flight: what status recorded,
    // falling back to spec.runtime.image.
    let stable_image = prev_stable
        .filter(|s| s.slot == stable_slot.as_str())
        .map_or(spec.runtime.image.as_str(), |s| s.image.as_str())
        .to_string();

    let prev_analysis = status.and_then(|s| s.analysis.as_ref());
    let mut base = Plan {
        stable: slot_spec(stable_slot, &spec.runtime.image, total),
        other: slot_spec(other_slot, &spec.runtime.image, 0),
        phase: Phase::Idle,
        release: None,
        canary_weight: 0,
        provider,
        serve_both_slots: false,
        cut_over: false,
        draining: None,
        awaiting_promotion: false,
        wake_at: None,
        poll: false,
        analysis: prev_analysis.cloned(),
    };
    let with_drain = |mut p: Plan| -> Plan {
        if let Some(d) = &drain {
            p.other = slot_spec(other_slot, &d.image, d.replicas);
            p.wake_at = earliest(p.wake_at, parse_time(&d.until));
            p.draining = Some(d.clone());
        }
        p
    };

    let Some(candidate) = r.candidate.as_ref() else {
        // No release in flight: stable runs spec.runtime.image; the other
        // slot keeps its old image while it drains, then goes to zero. The
        // last release is closed: nothing in the spec acts on it again.
        let release = prev_release.cloned().map(|mut rel| {
            if rel.closed_at.is_none() {
                rel.closed_at = Some(format_time(now));
            }
            clear_timers(&mut rel);
            rel.step = None;
            rel
        });
        let other_image = prev_stable
            .filter(|s| s.slot == other_slot.as_str())
            .map_or(spec.runtime.image.as_str(), |s| s.image.as_str());
        return with_drain(Plan {
            other: slot_spec(other_slot, other_image, 0),
            release,
            ..base
        });
    };

    // Which release: the open one of this image and attempt, or a new one.
    let steps: &[CanaryStep] = match (r.strategy, r.canary.as_ref()) {
        (RolloutStrategy::Canary, Some(c)) => &c.steps,
        _ => &[],
    };
    let mut rel = match prev_release.filter(|p| {
        p.closed_at.is_none() && p.image == candidate.image && p.attempt == candidate.attempt
    }) {
        Some(open) => open.clone(),
        None => {
            let number = prev_release.map_or(0, |p| p.number) + 1;
            let uid = t.owner.uid.as_str();
            ReleaseStatus {
                number,
                revision: release_revision(uid, number, &candidate.image),
                image: candidate.image.clone(),
                attempt: candidate.attempt,
                started_at: format_time(now),
                state: ReleaseState::Progressing,
                current_step_index: (!steps.is_empty()).then_some(0),
                step_started_at: (!steps.is_empty()).then(|| format_time(now)),
                ..ReleaseStatus::default()
            }
        }
    };
    let rev = rel.revision.clone();
    let abort_asked = r.abort_revision == rev;
    let promote_asked = r.promote_revision == rev;
    // The analysis: this interval's judgement extends the runs of the open
    // release (the controller judges only while one is measured).
    let mut analysis = match (judgement, &r.analysis) {
        (Some(j), Some(_)) if rel.state != ReleaseState::Aborted => {
            Some(advance(prev_analysis, rel.number, j, now))
        }
        _ => prev_analysis.cloned(),
    };
    let analysis_failure = r.analysis.as_ref().and_then(|a| {
        let s = analysis.as_ref().filter(|s| s.release == rel.number)?;
        (s.consecutive_failures >= a.failure_limit).then(|| {
            format!(
                "analysis failed {} intervals in a row (failureLimit {}): {}",
                s.consecutive_failures,
                a.failure_limit,
                s.message.as_deref().unwrap_or_default()
            )
        })
    });
    base.analysis = analysis.clone();

    let aborted = |rel: ReleaseStatus| Plan {
        stable: slot_spec(stable_slot, &stable_image, total),
        other: slot_spec(other_slot, &candidate.image, 0),
        phase: Phase::Aborted,
        release: Some(rel),
        ..base.clone()
    };

    match rel.state {
        ReleaseState::Aborted => return aborted(rel),
        ReleaseState::Promoted => {
            if let Some(d) = drain
                .as_ref()
                .filter(|_| abort_asked || analysis_failure.is_some())
            {
                // Rollback window: the old slot still has its pods, so
                // traffic goes back to it at once.
                let (reason, why) = match &analysis_failure {
                    Some(failure) if !abort_asked => (ANALYSIS_FAILED, failure.clone()),
                    _ => (ROLLED_BACK, format!("abortRevision {rev}")),
                };
                rel.state = ReleaseState::Aborted;
                rel.reason = Some(reason.into());
                rel.message = Some(format!(
                    "{why} after the cut-over, within the rollback window: {} in slot {} is stable again; {} in slot {} goes to zero",
                    d.image,
                    other_slot.as_str(),
                    candidate.image,
                    stable_slot.as_str()
                ));
                return Plan {
                    stable: slot_spec(other_slot, &d.image, total),
                    other: slot_spec(stable_slot, &candidate.image, 0),
                    phase: Phase::Aborted,
                    release: Some(rel),
                    ..base
                };
            }
            return with_drain(Plan {
                stable: slot_spec(stable_slot, &candidate.image, total),
                phase: Phase::Promoted,
                release: Some(rel),
                // The analysis goes on in the rollback window.
                poll: r.analysis.is_some() && drain.is_some(),
                ..base
            });
        }
        ReleaseState::Progressing | ReleaseState::Promoting => {}
    }

    // Before the cut-over an abort always wins, even over a promotion.
    if abort_asked {
        rel.state = ReleaseState::Aborted;
        rel.reason = Some(ABORT_REQUESTED.into());
        rel.message = Some(format!(
            "abortRevision {rev}: candidate {} is at zero; all traffic is on {stable_image}",
            candidate.image
        ));
        clear_timers(&mut rel);
        return aborted(rel);
    }
    if let Some(failure) = analysis_failure {
        rel.state = ReleaseState::Aborted;
        rel.reason = Some(ANALYSIS_FAILED.into());
        rel.message = Some(format!(
            "{failure}; candidate {} is at zero; all traffic is on {stable_image}",
            candidate.image
        ));
        clear_timers(&mut rel);
        return aborted(rel);
    }

    let mut weight = match r.strategy {
        RolloutStrategy::Canary => r
            .canary
            .as_ref()
            .and_then(|c| c.weight)
            .unwrap_or(0)
            .clamp(0, 100),
        RolloutStrategy::BlueGreen => 0,
    };
    let mut awaiting = false;
    if !steps.is_empty() {
        let len = steps.len();
        let mut idx = usize::try_from(rel.current_step_index.unwrap_or(0).max(0))
            .unwrap_or(0)
            .min(len);
        let mut started = rel
            .step_started_at
            .as_deref()
            .and_then(parse_time)
            .unwrap_or(now);
        rel.pause_until = None;
        if rel.state == ReleaseState::Progressing {
            while idx < len {
                let done = match &steps[idx] {
                    CanaryStep {
                        set_weight: Some(w),
                        ..
                    } => observed.ready(&candidate.image, canary_replicas(total, *w)),
                    CanaryStep {
                        pause:
                            Some(PauseStep {
                                duration_seconds: Some(d),
                            }),
                        ..
                    } => {
                        let end = started + d;
                        if now < end {
                            rel.pause_until = Some(format_time(end));
                        }
                        now >= end
                    }
                    CanaryStep { pause: Some(_), .. } => {
                        awaiting = !promote_asked;
                        promote_asked
                    }
                    CanaryStep {
                        analysis: Some(a), ..
                    } => analysis.as_ref().is_some_and(|s| {
                        s.release == rel.number && s.consecutive_passes >= a.passes
                    }),
                    // Neither field (refused at admission): nothing to do.
                    CanaryStep { .. } => true,
                };
                if !done {
                    break;
                }
                idx += 1;
                started = now;
                // An analysis step counts its passes from its start.
                if steps.get(idx).is_some_and(|s| s.analysis.is_some())
                    && let Some(a) = analysis.as_mut()
                {
                    a.consecutive_passes = 0;
                }
            }
            if idx >= len {
                rel.state = ReleaseState::Promoting;
                rel.reason = Some(STEPS_DONE.into());
            }
        }
        weight = weight_at(steps, idx.min(len - 1));
        rel.current_step_index = i32::try_from(idx).ok();
        rel.step_started_at = Some(format_time(started));
        rel.step = Some(if idx < len {
            format!("{}/{len}", idx + 1)
        } else {
            "done".into()
        });
    } else if rel.state == ReleaseState::Progressing {
        if promote_asked {
            rel.state = ReleaseState::Promoting;
            rel.reason = Some(PROMOTE_REQUESTED.into());
        } else {
            awaiting = true;
        }
    }

    // The size the candidate is asked to have, and whether it has it.
    let canary_pods = canary_replicas(total, weight);
    let preview = r.blue_green.as_ref().map_or(1, |b| b.preview_replicas);
    let target = match (rel.state, r.strategy) {
        (ReleaseState::Promoting, _) => total,
        (_, RolloutStrategy::Canary) => canary_pods,
        (_, RolloutStrategy::BlueGreen) => preview,
    };
    let ready = observed.ready(&candidate.image, target);
    // The progress clock: restarted whenever one more updated pod of the
    // candidate is available, as a Deployment's progress deadline does.
    let available_updated = if observed.image.as_deref() == Some(candidate.image.as_str()) {
        observed.available.min(observed.updated).max(0)
    } else {
        0
    };
    if ready {
        rel.unavailable_since = None;
        rel.available_at_progress = None;
    } else if rel.unavailable_since.is_none()
        || rel
            .available_at_progress
            .is_some_and(|before| available_updated > before)
    {
        rel.unavailable_since = Some(format_time(now));
        rel.available_at_progress = Some(available_updated);
    }

    // Health: a candidate that does not come up aborts by itself.
    if let Some(message) = unhealthy(r, candidate.image.as_str(), target, observed, &rel, now) {
        rel.state = ReleaseState::Aborted;
        rel.reason = Some(CANDIDATE_UNHEALTHY.into());
        rel.message = Some(message);
        clear_timers(&mut rel);
        return aborted(rel);
    }

    if rel.state == ReleaseState::Promoting && ready {
        // Cut-over: the candidate slot is stable from now on.
        rel.state = ReleaseState::Promoted;
        rel.cut_over_at = Some(format_time(now));
        clear_timers(&mut rel);
        let draining = (r.drain_seconds > 0).then(|| DrainStatus {
            slot: stable_slot.as_str().to_string(),
            image: stable_image.clone(),
            replicas: total,
            since: Some(format_time(now)),
            until: format_time(now + r.drain_seconds),
        });
        return Plan {
            stable: slot_spec(other_slot, &candidate.image, total),
            other: slot_spec(
                stable_slot,
                &stable_image,
                if draining.is_some() { total } else { 0 },
            ),
            phase: Phase::Promoted,
            release: Some(rel),
            cut_over: true,
            poll: r.analysis.is_some() && draining.is_some(),
            analysis,
            wake_at: draining.as_ref().and_then(|d| parse_time(&d.until)),
            draining,
            ..base
        };
    }

    let wake_at = earliest(
        rel.pause_until.as_deref().and_then(parse_time),
        rel.unavailable_since
            .as_deref()
            .and_then(parse_time)
            .map(|s| s + r.progress_deadline_seconds),
    );
    let ratio = provider == Provider::ReplicaRatio;
    let (phase, stable_pods, other_pods, effective, both) = match (rel.state, r.strategy) {
        (ReleaseState::Promoting, RolloutStrategy::Canary) => {
            let eff = if ratio { 50 } else { weight };
            (Phase::Promoting, total, total, eff, ratio)
        }
        (ReleaseState::Promoting, RolloutStrategy::BlueGreen) => {
            (Phase::Promoting, total, total, 0, false)
        }
        (_, RolloutStrategy::Canary) => {
            if ratio {
                // Pods carry the split: stable shrinks by what the canary
                // takes, but only by candidate pods already available, so a
                // candidate that does not come up never costs capacity.
                let taken = canary_pods.min(observed.available.max(0));
                let stable = (total - taken).max(if weight < 100 { 1 } else { 0 });
                let all = stable + canary_pods;
                let eff = if all == 0 {
                    0
                } else {
                    (canary_pods * 100 + all / 2) / all
                };
                (Phase::Canary, stable, canary_pods, eff, true)
            } else {
                // Exact weights on the route; stable keeps full capacity.
                (Phase::Canary, total, canary_pods, weight, false)
            }
        }
        (_, RolloutStrategy::BlueGreen) => (Phase::Preview, total, preview, 0, false),
    };
    Plan {
        stable: slot_spec(stable_slot, &stable_image, stable_pods),
        other: slot_spec(other_slot, &candidate.image, other_pods),
        phase,
        release: Some(rel),
        canary_weight: effective,
        serve_both_slots: both,
        awaiting_promotion: awaiting,
        wake_at,
        poll: true,
        analysis,
        ..base
    }
}

/// Why the candidate counts as unhealthy, with the pods and figures; `None`
/// while it is fine or still within its deadline.
fn unhealthy(
    r: &crate::crd::RolloutSpec,
    image: &str,
    target: i32,
    observed: &SlotObservation,
    rel: &ReleaseStatus,
    now: i64,
) -> Option<String> {
    let pods: Vec<&PodObservation> = observed.pods.iter().filter(|p| p.image == image).collect();
    let describe = |p: &PodObservation| {
        format!(
            "{} ({}, {} restarts)",
            p.name,
            p.problem
                .as_deref()
                .unwrap_or(if p.ready { "ready" } else { "not ready" }),
            p.restarts
        )
    };
    let crashing: Vec<String> = pods
        .iter()
        .filter(|p| p.restarts > r.max_restarts)
        .map(|p| describe(p))
        .collect();
    if !crashing.is_empty() {
        return Some(format!(
            "candidate {image}: containers restarted more than maxRestarts {}: {}",
            r.max_restarts,
            crashing.join(", ")
        ));
    }
    let since = rel.unavailable_since.as_deref().and_then(parse_time)?;
    if now - since < r.progress_deadline_seconds {
        return None;
    }
    let waiting: Vec<String> = pods
        .iter()
        .filter(|p| !p.ready)
        .take(10)
        .map(|p| describe(p))
        .collect();
    Some(format!(
        "candidate {image}: {}/{target} updated pods available after {}s (progressDeadlineSeconds {}){}{}",
        observed.available.min(observed.updated),
        now - since,
        r.progress_deadline_seconds,
        if waiting.is_empty() { "" } else { ": " },
        waiting.join(", ")
    ))
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
    //! The state machine as a table: each row is a scenario of spec edits,
    //! cluster events and clock moves, with the layout expected after each
    //! reconcile. The simulated operator keeps nothing in memory: every
    //! reconcile starts from the ChatTenant (spec and status) as the
    //! apiserver would return it (a JSON round trip) and the Deployments, so
    //! each row also proves that an operator restarted at any point carries
    //! on from the cluster alone.

    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::{
        analysis::Verdict,
        controller::events::{Event, rollout_events},
        crd::{CanaryStep, ChatTenant, ChatTenantSpec, PauseStep},
        status::{self, DatabaseState, DeploymentObservation, Observations},
        validate::{tests::sample, validate},
    };

    const NOW: i64 = 1_800_000_000;
    const V1: &str = "ghcr.io/chorus-dev/chat-runtime:0.1.0";
    const V2: &str = "ghcr.io/chorus-dev/chat-runtime:0.2.0";
    const V3: &str = "ghcr.io/chorus-dev/chat-runtime:0.3.0";
    use Slot::{Blue as B, Green as G};

    /// A simulated cluster: the stored ChatTenant and both Deployments.
    struct Sim {
        ct: ChatTenant,
        deps: BTreeMap<&'static str, SlotObservation>,
        now: i64,
        gateway: bool,
        events: Vec<Event>,
        remembered: String,
        /// The analysis judgement the next reconcile gets.
        judgement: Option<Judgement>,
    }

    fn dep(s: &mut Sim, slot: Slot) -> &mut SlotObservation {
        s.deps.entry(slot.as_str()).or_default()
    }

    impl Sim {
        fn new(f: impl FnOnce(&mut ChatTenantSpec)) -> Self {
            let mut ct = sample();
            ct.spec.runtime.replicas = 4;
            ct.spec.rollout.drain_seconds = 300;
            f(&mut ct.spec);
            let mut s = Sim {
                ct,
                deps: BTreeMap::new(),
                now: NOW,
                gateway: false,
                events: Vec::new(),
                remembered: String::new(),
                judgement: None,
            };
            s.reconcile();
            s.settle();
            s.reconcile();
            s.events.clear();
            s
        }

        /// One reconcile from the stored state only.
        fn reconcile(&mut self) -> Plan {
            let stored: ChatTenant =
                serde_json::from_value(serde_json::to_value(&self.ct).unwrap()).unwrap();
            let t = validate(&stored).unwrap();
            let other = dep(self, t.stable_slot.other()).clone();
            let judgement = self.judgement.take();
            let p = plan(
                &t,
                stored.status.as_deref(),
                &other,
                self.gateway,
                self.now,
                judgement.as_ref(),
            );
            let observe = |d: &SlotObservation| DeploymentObservation {
                available: d.available,
                rolling: !d.caught_up,
            };
            let obs = Observations {
                database: DatabaseState::Ready,
                stable: observe(dep(self, p.stable.slot)),
                other: observe(dep(self, p.other.slot)),
                problems: vec![],
                password_changed_at: None,
                rotation_request_handled: None,
            };
            let now = Time(jiff::Timestamp::from_second(self.now).unwrap());
            let new = status::compute(stored.status.as_deref(), &t, &p, &obs, &now);
            self.events
                .extend(rollout_events(stored.status.as_deref(), &p));
            self.ct.status = Some(Box::new(new));
            for s in [&p.stable, &p.other] {
                let d = dep(self, s.slot);
                if d.image.as_deref() != Some(s.image.as_str()) {
                    // A new template: pods of the old one linger until they
                    // are replaced.
                    d.image = Some(s.image.clone());
                    d.updated = 0;
                    d.caught_up = false;
                }
                if d.spec_replicas != s.replicas {
                    d.spec_replicas = s.replicas;
                    d.caught_up = false;
                }
            }
            p
        }

        /// Every pod comes up.
        fn settle(&mut self) {
            for d in self.deps.values_mut() {
                let image = d.image.clone().unwrap_or_default();
                *d = SlotObservation {
                    caught_up: true,
                    replicas: d.spec_replicas,
                    updated: d.spec_replicas,
                    available: d.spec_replicas,
                    pods: (0..d.spec_replicas)
                        .map(|i| PodObservation {
                            name: format!("pod-{i}"),
                            image: image.clone(),
                            ready: true,
                            restarts: 0,
                            problem: None,
                        })
                        .collect(),
                    ..d.clone()
                };
            }
        }

        fn candidate(&mut self) -> &mut SlotObservation {
            let stable = self
                .ct
                .status
                .as_ref()
                .unwrap()
                .stable
                .as_ref()
                .unwrap()
                .slot
                .clone();
            let other = Slot::parse(&stable).unwrap().other();
            dep(self, other)
        }

        fn revision(&self) -> String {
            self.ct
                .status
                .as_ref()
                .and_then(|s| s.release.as_ref())
                .filter(|r| r.closed_at.is_none())
                .map(|r| r.revision.clone())
                .unwrap_or_default()
        }
    }

    /// One thing that happens in a scenario.
    enum Op {
        /// The SRE (or the HPA) edits the spec.
        Edit(fn(&mut ChatTenantSpec)),
        /// promoteRevision / abortRevision := status.release.revision.
        Promote,
        Abort,
        /// Remember status.candidate.revision; later set it as promoteRevision.
        Remember,
        PromoteRemembered,
        /// Every pod of both slots becomes available.
        Settle,
        /// The candidate's pods run the new template but never become ready.
        Stall,
        /// The candidate's pods restart this many times.
        Crash(i32),
        /// The candidate's Deployment reports available pods of an older
        /// template only (its rollout has not finished).
        OnlyOldPodsAvailable,
        /// One more of the candidate's updated pods is available.
        OneMoreAvailable,
        /// The clock moves.
        Wait(i64),
        /// A reconcile, then: phase, stable (slot, image, replicas), other
        /// (slot, image, replicas), canary weight.
        Expect(
            Phase,
            (Slot, &'static str, i32),
            (Slot, &'static str, i32),
            i32,
        ),
        /// `Progressing` reason after the last reconcile.
        Reason(&'static str),
        /// `status.release`: number and step.
        Release(i64, Option<&'static str>),
        /// Events since the last check: (reason, release number) in order.
        Events(&'static [(&'static str, i64)]),
        /// `status.draining` present (with `until` seconds from now) or not.
        Draining(Option<i64>),
        /// AwaitingPromotion.
        Awaiting(bool),
        /// The next reconcile gets an analysis judgement with this verdict.
        Judge(Verdict),
        /// `status.analysis`: (consecutive passes, failures).
        Runs(i32, i32),
    }
    use Op::*;

    fn canary(spec: &mut ChatTenantSpec, image: &str, weight: i32) {
        spec.rollout.candidate = Some(crate::crd::Candidate {
            image: image.into(),
            attempt: None,
        });
        spec.rollout.canary = Some(crate::crd::CanarySpec {
            weight: Some(weight),
            steps: vec![],
        });
    }

    fn steps(spec: &mut ChatTenantSpec, image: &str, list: &[(Option<i32>, Option<Option<i64>>)]) {
        spec.rollout.candidate = Some(crate::crd::Candidate {
            image: image.into(),
            attempt: None,
        });
        spec.rollout.canary = Some(crate::crd::CanarySpec {
            weight: None,
            steps: list
                .iter()
                .map(|(w, p)| CanaryStep {
                    set_weight: *w,
                    pause: p.map(|d| PauseStep {
                        duration_seconds: d,
                    }),
                    analysis: None,
                })
                .collect(),
        });
    }

    fn finish(spec: &mut ChatTenantSpec, image: &str) {
        spec.runtime.image = image.into();
        spec.rollout.candidate = None;
        spec.rollout.canary = None;
    }

    /// The scenario so far: canary of V2 at 25 %, promoted, settled
    /// (stable G on V2, B kept at 4 for the rollback window), then `then`.
    fn after_promoted_canary(then: Vec<Op>) -> Vec<Op> {
        let mut ops = vec![
            Edit(|s| canary(s, V2, 25)),
            Expect(Phase::Canary, (B, V1, 4), (G, V2, 1), 20),
            Promote,
            Settle,
            Expect(Phase::Promoting, (B, V1, 4), (G, V2, 4), 50),
            Settle,
            Expect(Phase::Promoted, (G, V2, 4), (B, V1, 4), 0),
        ];
        ops.extend(then);
        ops
    }

    fn run(name: &str, setup: fn(&mut ChatTenantSpec), ops: &[Op]) {
        let mut sim = Sim::new(setup);
        let mut last: Option<Plan> = None;
        for (i, op) in ops.iter().enumerate() {
            let at = format!("{name}, op {i}");
            match op {
                Edit(f) => f(&mut sim.ct.spec),
                Promote => sim.ct.spec.rollout.promote_revision = sim.revision(),
                Abort => sim.ct.spec.rollout.abort_revision = sim.revision(),
                Remember => sim.remembered = sim.revision(),
                PromoteRemembered => sim.ct.spec.rollout.promote_revision = sim.remembered.clone(),
                Settle => sim.settle(),
                Stall => {
                    let d = sim.candidate();
                    let image = d.image.clone().unwrap_or_default();
                    d.caught_up = true;
                    d.replicas = d.spec_replicas;
                    d.updated = d.spec_replicas;
                    d.available = 0;
                    d.pods = (0..d.spec_replicas)
                        .map(|i| PodObservation {
                            name: format!("acme-green-{i}"),
                            image: image.clone(),
                            ready: false,
                            restarts: 0,
                            problem: Some("running, not ready".into()),
                        })
                        .collect();
                }
                Crash(n) => {
                    for p in &mut sim.candidate().pods {
                        p.restarts = *n;
                        p.ready = false;
                        p.problem = Some("CrashLoopBackOff".into());
                    }
                }
                OnlyOldPodsAvailable => {
                    let d = sim.candidate();
                    d.caught_up = true;
                    d.replicas = d.spec_replicas + 1;
                    d.updated = 1;
                    d.available = d.spec_replicas;
                }
                OneMoreAvailable => {
                    let d = sim.candidate();
                    d.available += 1;
                    if let Some(p) = d.pods.iter_mut().find(|p| !p.ready) {
                        p.ready = true;
                        p.problem = None;
                    }
                }
                Wait(s) => sim.now += s,
                Expect(phase, (ss, si, sr), (os, oi, or), w) => {
                    let p = sim.reconcile();
                    assert_eq!(p.phase, *phase, "{at}: phase; {p:#?}");
                    assert_eq!(
                        (p.stable.slot, p.stable.image.as_str(), p.stable.replicas),
                        (*ss, *si, *sr),
                        "{at}: stable"
                    );
                    assert_eq!(
                        (p.other.slot, p.other.image.as_str(), p.other.replicas),
                        (*os, *oi, *or),
                        "{at}: other"
                    );
                    assert_eq!(p.canary_weight, *w, "{at}: weight");
                    if p.phase == Phase::Aborted {
                        assert_eq!(p.other.replicas, 0, "{at}: an aborted candidate is at zero");
                        assert!(!p.serve_both_slots, "{at}: all traffic on stable");
                    }
                    last = Some(p);
                }
                Reason(r) => {
                    let c = sim.ct.status.as_ref().unwrap().conditions.iter();
                    let reason = c
                        .clone()
                        .find(|c| c.type_ == "Progressing")
                        .map(|c| c.reason.clone());
                    assert_eq!(reason.as_deref(), Some(*r), "{at}: Progressing reason");
                }
                Release(n, step) => {
                    let r = sim.ct.status.as_ref().unwrap().release.clone().unwrap();
                    assert_eq!(
                        (r.number, r.step.as_deref()),
                        (*n, *step),
                        "{at}: release {r:#?}"
                    );
                }
                Events(want) => {
                    let got: Vec<(&str, i64)> = sim
                        .events
                        .iter()
                        .map(|e| {
                            let n = e
                                .action()
                                .trim_start_matches("Release")
                                .split("Step")
                                .next()
                                .unwrap_or("0")
                                .parse()
                                .unwrap_or(0);
                            (e.reason(), n)
                        })
                        .collect();
                    assert_eq!(&got[..], *want, "{at}: events {:?}", sim.events);
                    sim.events.clear();
                }
                Draining(want) => {
                    let d = sim.ct.status.as_ref().unwrap().draining.clone();
                    let left = d.map(|d| parse_time(&d.until).unwrap() - sim.now);
                    assert_eq!(left, *want, "{at}: draining");
                }
                Judge(verdict) => {
                    sim.judgement = Some(Judgement {
                        verdict: *verdict,
                        message: format!("judged {}", verdict.as_str()),
                        error_ratio: Some(0.5),
                        ack_p99: None,
                        stable_ack_p99: None,
                        samples: 100,
                    });
                }
                Runs(passes, failures) => {
                    let a = sim.ct.status.as_ref().unwrap().analysis.clone().unwrap();
                    assert_eq!(
                        (a.consecutive_passes, a.consecutive_failures),
                        (*passes, *failures),
                        "{at}: analysis {a:#?}"
                    );
                }
                Awaiting(want) => {
                    assert_eq!(
                        last.as_ref().unwrap().awaiting_promotion,
                        *want,
                        "{at}: awaiting promotion"
                    );
                }
            }
        }
    }

    /// A scenario: name, tenant setup, what happens.
    type Row = (&'static str, fn(&mut ChatTenantSpec), Vec<Op>);

    #[test]
    fn transitions() {
        let none = |_: &mut ChatTenantSpec| {};
        let table: Vec<Row> = vec![
            (
                "weight changes by replica ratio",
                none,
                vec![
                    Edit(|s| canary(s, V2, 25)),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 1), 20),
                    Events(&[("ReleaseStarted", 1)]),
                    Awaiting(true),
                    Settle,
                    Edit(|s| canary(s, V2, 50)),
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 2), 40),
                    Settle,
                    Expect(Phase::Canary, (B, V1, 2), (G, V2, 2), 50),
                    Edit(|s| canary(s, V2, 10)),
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 1), 25),
                    Events(&[]),
                ],
            ),
            (
                "promote: scale up, cut over on updated pods only, drain",
                none,
                vec![
                    Edit(|s| canary(s, V2, 25)),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 1), 20),
                    Settle,
                    Promote,
                    Expect(Phase::Promoting, (B, V1, 4), (G, V2, 4), 50),
                    OnlyOldPodsAvailable,
                    Expect(Phase::Promoting, (B, V1, 4), (G, V2, 4), 50),
                    Settle,
                    Expect(Phase::Promoted, (G, V2, 4), (B, V1, 4), 0),
                    Events(&[("ReleaseStarted", 1), ("Promoted", 1)]),
                    Draining(Some(300)),
                    Wait(100),
                    Expect(Phase::Promoted, (G, V2, 4), (B, V1, 4), 0),
                    Draining(Some(200)),
                    Edit(|s| finish(s, V2)),
                    Expect(Phase::Idle, (G, V2, 4), (B, V1, 4), 0),
                    Wait(201),
                    // Drained: the idle slot is at zero (on the spec's image).
                    Expect(Phase::Idle, (G, V2, 4), (B, V2, 0), 0),
                    Draining(None),
                    Events(&[]),
                ],
            ),
            (
                "a drain follows the current drainSeconds",
                none,
                after_promoted_canary(vec![
                    Edit(|s| s.rollout.drain_seconds = 600),
                    Wait(10),
                    Expect(Phase::Promoted, (G, V2, 4), (B, V1, 4), 0),
                    Draining(Some(590)),
                    Edit(|s| s.rollout.drain_seconds = 0),
                    Expect(Phase::Promoted, (G, V2, 4), (B, V1, 0), 0),
                    Draining(None),
                ]),
            ),
            (
                "abort before promote",
                none,
                vec![
                    Edit(|s| canary(s, V2, 50)),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 2), 33),
                    Settle,
                    Abort,
                    Expect(Phase::Aborted, (B, V1, 4), (G, V2, 0), 0),
                    Reason("Aborted"),
                    Events(&[("ReleaseStarted", 1), ("Aborted", 1)]),
                    // A promoteRevision for the aborted release does nothing.
                    Promote,
                    Expect(Phase::Aborted, (B, V1, 4), (G, V2, 0), 0),
                    Events(&[]),
                ],
            ),
            (
                "abort after promote, before the cut-over, wins",
                none,
                vec![
                    Edit(|s| canary(s, V2, 25)),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 1), 20),
                    Stall,
                    Promote,
                    Expect(Phase::Promoting, (B, V1, 4), (G, V2, 4), 50),
                    Stall,
                    Abort,
                    Expect(Phase::Aborted, (B, V1, 4), (G, V2, 0), 0),
                    Reason("Aborted"),
                ],
            ),
            (
                "abort after the cut-over rolls back within the drain window",
                none,
                after_promoted_canary(vec![
                    Wait(60),
                    Abort,
                    Expect(Phase::Aborted, (B, V1, 4), (G, V2, 0), 0),
                    Reason("RolledBack"),
                    Events(&[("ReleaseStarted", 1), ("Promoted", 1), ("RolledBack", 1)]),
                    Settle,
                    Expect(Phase::Aborted, (B, V1, 4), (G, V2, 0), 0),
                    Edit(|s| {
                        s.rollout.candidate = None;
                        s.rollout.canary = None;
                    }),
                    Expect(Phase::Idle, (B, V1, 4), (G, V1, 0), 0),
                ]),
            ),
            (
                "abort after the drain window does nothing",
                none,
                after_promoted_canary(vec![
                    Wait(301),
                    Abort,
                    Expect(Phase::Promoted, (G, V2, 4), (B, V1, 0), 0),
                    Reason("Promoted"),
                ]),
            ),
            (
                "stale promoteRevision of another release does nothing",
                none,
                vec![
                    Edit(|s| {
                        canary(s, V2, 50);
                        s.rollout.promote_revision = revision_of(V2);
                    }),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 2), 33),
                    Settle,
                    Expect(Phase::Canary, (B, V1, 2), (G, V2, 2), 50),
                ],
            ),
            (
                "a leftover promoteRevision never promotes a later release of the same image",
                none,
                after_promoted_canary(vec![
                    Edit(|s| finish(s, V2)),
                    Expect(Phase::Idle, (G, V2, 4), (B, V1, 4), 0),
                    // Rollback by image: the stable slot rolls in place.
                    Edit(|s| s.runtime.image = V1.into()),
                    Expect(Phase::Idle, (G, V1, 4), (B, V1, 4), 0),
                    Settle,
                    // 0.2.0 again as a 10% canary, promoteRevision still set.
                    // (blue still has the drained release's pods available)
                    Edit(|s| canary(s, V2, 10)),
                    Expect(Phase::Canary, (G, V1, 3), (B, V2, 1), 25),
                    Release(2, None),
                    Settle,
                    Expect(Phase::Canary, (G, V1, 3), (B, V2, 1), 25),
                    Events(&[
                        ("ReleaseStarted", 1),
                        ("Promoted", 1),
                        ("ReleaseStarted", 2),
                    ]),
                ]),
            ),
            (
                "a superseded candidate is a new release; the old revision does nothing",
                none,
                vec![
                    Edit(|s| canary(s, V2, 25)),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 1), 20),
                    Remember,
                    Settle,
                    Edit(|s| canary(s, V3, 25)),
                    Expect(Phase::Canary, (B, V1, 3), (G, V3, 1), 25),
                    Release(2, None),
                    PromoteRemembered,
                    Settle,
                    Expect(Phase::Canary, (B, V1, 3), (G, V3, 1), 25),
                    Events(&[("ReleaseStarted", 1), ("ReleaseStarted", 2)]),
                ],
            ),
            (
                "HPA resize mid-canary re-splits; abort then resize keeps the candidate at zero",
                none,
                vec![
                    Edit(|s| canary(s, V2, 25)),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 1), 20),
                    Settle,
                    Edit(|s| s.runtime.replicas = 8),
                    Expect(Phase::Canary, (B, V1, 7), (G, V2, 2), 22),
                    Settle,
                    Expect(Phase::Canary, (B, V1, 6), (G, V2, 2), 25),
                    Settle,
                    Abort,
                    Expect(Phase::Aborted, (B, V1, 8), (G, V2, 0), 0),
                    Edit(|s| s.runtime.replicas = 12),
                    Expect(Phase::Aborted, (B, V1, 12), (G, V2, 0), 0),
                ],
            ),
            (
                "steps: setWeight waits for pods, timed and indefinite pauses, then promotion",
                none,
                vec![
                    Edit(|s| {
                        steps(
                            s,
                            V2,
                            &[
                                (Some(25), None),
                                (None, Some(Some(60))),
                                (Some(50), None),
                                (None, Some(None)),
                            ],
                        )
                    }),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 1), 20),
                    Release(1, Some("1/4")),
                    Awaiting(false),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 1), 20),
                    Release(1, Some("1/4")),
                    Settle,
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 1), 25),
                    Release(1, Some("2/4")),
                    Wait(30),
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 1), 25),
                    Release(1, Some("2/4")),
                    Wait(31),
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 2), 40),
                    Release(1, Some("3/4")),
                    Settle,
                    Expect(Phase::Canary, (B, V1, 2), (G, V2, 2), 50),
                    Release(1, Some("4/4")),
                    Awaiting(true),
                    Wait(3600),
                    Expect(Phase::Canary, (B, V1, 2), (G, V2, 2), 50),
                    Promote,
                    Expect(Phase::Promoting, (B, V1, 4), (G, V2, 4), 50),
                    Release(1, Some("done")),
                    Settle,
                    Expect(Phase::Promoted, (G, V2, 4), (B, V1, 4), 0),
                    Events(&[
                        ("ReleaseStarted", 1),
                        ("CanaryStep", 1),
                        ("CanaryStep", 1),
                        ("CanaryStep", 1),
                        ("CanaryStep", 1),
                        ("CanaryStep", 1),
                        ("Promoted", 1),
                    ]),
                ],
            ),
            (
                "steps: shortening the list mid-release keeps the index, clamped (promotes)",
                none,
                vec![
                    Edit(|s| {
                        steps(
                            s,
                            V2,
                            &[(Some(25), None), (None, Some(None)), (Some(75), None)],
                        )
                    }),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 1), 20),
                    Settle,
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 1), 25),
                    Release(1, Some("2/3")),
                    Edit(|s| steps(s, V2, &[(Some(25), None), (None, Some(Some(10)))])),
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 1), 25),
                    Release(1, Some("2/2")),
                    Wait(11),
                    Expect(Phase::Promoting, (B, V1, 4), (G, V2, 4), 50),
                    Edit(|s| steps(s, V2, &[(Some(25), None)])),
                    Expect(Phase::Promoting, (B, V1, 4), (G, V2, 4), 50),
                ],
            ),
            (
                "automatic abort: candidate pods never become available",
                |s| s.rollout.progress_deadline_seconds = 120,
                vec![
                    Edit(|s| canary(s, V2, 25)),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 1), 20),
                    Stall,
                    Wait(60),
                    // No candidate pod available: stable keeps all its pods.
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 1), 20),
                    Wait(61),
                    Expect(Phase::Aborted, (B, V1, 4), (G, V2, 0), 0),
                    Reason("CandidateUnhealthy"),
                    Events(&[("ReleaseStarted", 1), ("CandidateUnhealthy", 1)]),
                ],
            ),
            (
                "automatic abort: restarts above the threshold, even while promoting",
                none,
                vec![
                    Edit(|s| canary(s, V2, 25)),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 1), 20),
                    Promote,
                    Stall,
                    Expect(Phase::Promoting, (B, V1, 4), (G, V2, 4), 50),
                    Stall,
                    Crash(3),
                    Expect(Phase::Promoting, (B, V1, 4), (G, V2, 4), 50),
                    Crash(4),
                    Expect(Phase::Aborted, (B, V1, 4), (G, V2, 0), 0),
                    Reason("CandidateUnhealthy"),
                ],
            ),
            (
                "blue-green: preview, promote, rollback window",
                |s| s.rollout.strategy = RolloutStrategy::BlueGreen,
                vec![
                    Edit(|s| {
                        s.rollout.candidate = Some(crate::crd::Candidate {
                            image: V2.into(),
                            attempt: None,
                        })
                    }),
                    Expect(Phase::Preview, (B, V1, 4), (G, V2, 1), 0),
                    Awaiting(true),
                    Settle,
                    Promote,
                    Expect(Phase::Promoting, (B, V1, 4), (G, V2, 4), 0),
                    Expect(Phase::Promoting, (B, V1, 4), (G, V2, 4), 0),
                    Settle,
                    Expect(Phase::Promoted, (G, V2, 4), (B, V1, 4), 0),
                    Wait(30),
                    Abort,
                    Expect(Phase::Aborted, (B, V1, 4), (G, V2, 0), 0),
                    Reason("RolledBack"),
                ],
            ),
            (
                "a slow but progressing candidate is not aborted; attempt retries an aborted release",
                |s| s.rollout.progress_deadline_seconds = 100,
                vec![
                    Edit(|s| canary(s, V2, 100)),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 4), 50),
                    Stall,
                    Wait(90),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 4), 50),
                    OneMoreAvailable,
                    Wait(90),
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 4), 57),
                    Wait(90),
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 4), 57),
                    Wait(11),
                    Expect(Phase::Aborted, (B, V1, 4), (G, V2, 0), 0),
                    Reason("CandidateUnhealthy"),
                    Edit(|s| {
                        if let Some(c) = s.rollout.candidate.as_mut() {
                            c.attempt = Some(1);
                        }
                    }),
                    // (the aborted pods' Deployment still reports one available)
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 4), 57),
                    Release(2, None),
                ],
            ),
            (
                "analysis: failing intervals in a row abort the canary; inconclusive ones change nothing",
                |s| s.rollout.analysis = Some(Box::default()),
                vec![
                    Edit(|s| canary(s, V2, 25)),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 1), 20),
                    Settle,
                    Judge(Verdict::Fail),
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 1), 25),
                    Runs(0, 1),
                    Judge(Verdict::Inconclusive),
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 1), 25),
                    Runs(0, 1),
                    Judge(Verdict::Pass),
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 1), 25),
                    Runs(1, 0),
                    Judge(Verdict::Fail),
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 1), 25),
                    Judge(Verdict::Fail),
                    Expect(Phase::Aborted, (B, V1, 4), (G, V2, 0), 0),
                    Reason("AnalysisFailed"),
                    Events(&[("ReleaseStarted", 1), ("AnalysisFailed", 1)]),
                    // Further judgements of the aborted release change nothing.
                    Judge(Verdict::Pass),
                    Expect(Phase::Aborted, (B, V1, 4), (G, V2, 0), 0),
                    Events(&[]),
                ],
            ),
            (
                "analysis failing while promoting aborts before the cut-over",
                |s| {
                    s.rollout.analysis = Some(Box::new(crate::crd::AnalysisSpec {
                        failure_limit: 1,
                        ..Default::default()
                    }))
                },
                vec![
                    Edit(|s| canary(s, V2, 25)),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 1), 20),
                    Promote,
                    Stall,
                    Expect(Phase::Promoting, (B, V1, 4), (G, V2, 4), 50),
                    Judge(Verdict::Fail),
                    Expect(Phase::Aborted, (B, V1, 4), (G, V2, 0), 0),
                    Reason("AnalysisFailed"),
                ],
            ),
            (
                "analysis step: waits for passes counted from its start, then the steps go on",
                |s| s.rollout.analysis = Some(Box::default()),
                vec![
                    Edit(|s| {
                        steps(s, V2, &[(Some(25), None), (None, None), (Some(50), None)]);
                        if let Some(c) = s.rollout.canary.as_mut() {
                            c.steps[1].analysis = Some(crate::crd::AnalysisStep { passes: 2 });
                        }
                    }),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 1), 20),
                    Release(1, Some("1/3")),
                    // A pass before the analysis step does not count for it.
                    Judge(Verdict::Pass),
                    Expect(Phase::Canary, (B, V1, 4), (G, V2, 1), 20),
                    Runs(1, 0),
                    Settle,
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 1), 25),
                    Release(1, Some("2/3")),
                    Runs(0, 0),
                    Judge(Verdict::Pass),
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 1), 25),
                    Release(1, Some("2/3")),
                    Judge(Verdict::Inconclusive),
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 1), 25),
                    Release(1, Some("2/3")),
                    Judge(Verdict::Pass),
                    Expect(Phase::Canary, (B, V1, 3), (G, V2, 2), 40),
                    Release(1, Some("3/3")),
                    Settle,
                    Expect(Phase::Promoting, (B, V1, 4), (G, V2, 4), 50),
                    Settle,
                    Expect(Phase::Promoted, (G, V2, 4), (B, V1, 4), 0),
                ],
            ),
            (
                "analysis failing in the rollback window rolls back at once; after it, nothing",
                |s| s.rollout.analysis = Some(Box::default()),
                after_promoted_canary(vec![
                    Judge(Verdict::Fail),
                    Expect(Phase::Promoted, (G, V2, 4), (B, V1, 4), 0),
                    Judge(Verdict::Fail),
                    Expect(Phase::Aborted, (B, V1, 4), (G, V2, 0), 0),
                    Reason("AnalysisFailed"),
                    Events(&[
                        ("ReleaseStarted", 1),
                        ("Promoted", 1),
                        ("AnalysisFailed", 1),
                    ]),
                    Edit(|s| {
                        s.rollout.candidate = None;
                        s.rollout.canary = None;
                    }),
                    Expect(Phase::Idle, (B, V1, 4), (G, V1, 0), 0),
                ]),
            ),
            (
                "analysis failures after the rollback window do nothing",
                |s| s.rollout.analysis = Some(Box::default()),
                after_promoted_canary(vec![
                    Wait(301),
                    Judge(Verdict::Fail),
                    Expect(Phase::Promoted, (G, V2, 4), (B, V1, 0), 0),
                    Judge(Verdict::Fail),
                    Expect(Phase::Promoted, (G, V2, 4), (B, V1, 0), 0),
                    Reason("Promoted"),
                ]),
            ),
            (
                "rollback by image without a release rolls the stable slot in place",
                none,
                vec![
                    Edit(|s| s.runtime.image = V2.into()),
                    Expect(Phase::Idle, (B, V2, 4), (G, V2, 0), 0),
                    Settle,
                    Edit(|s| s.runtime.image = V1.into()),
                    Expect(Phase::Idle, (B, V1, 4), (G, V1, 0), 0),
                    Events(&[]),
                ],
            ),
        ];
        for (name, setup, ops) in table {
            run(name, setup, &ops);
        }
    }

    #[test]
    fn canary_with_gateway_keeps_exact_weight_and_full_stable() {
        let mut sim = Sim::new(|s| canary(s, V1, 0));
        sim.gateway = true;
        canary(&mut sim.ct.spec, V2, 10);
        let p = sim.reconcile();
        assert_eq!((p.stable.replicas, p.other.replicas), (4, 1));
        assert_eq!(p.canary_weight, 10);
        assert!(!p.serve_both_slots);
    }

    #[test]
    fn unhealthy_message_names_pods_and_cause() {
        let mut sim = Sim::new(|s| s.rollout.progress_deadline_seconds = 30);
        canary(&mut sim.ct.spec, V2, 50);
        sim.reconcile();
        {
            let d = sim.candidate();
            d.caught_up = true;
            d.replicas = 2;
            d.updated = 2;
            d.available = 1;
            d.pods = vec![
                PodObservation {
                    name: "acme-green-a".into(),
                    image: V2.into(),
                    ready: true,
                    restarts: 0,
                    problem: None,
                },
                PodObservation {
                    name: "acme-green-b".into(),
                    image: V2.into(),
                    ready: false,
                    restarts: 1,
                    problem: Some("running, not ready".into()),
                },
            ];
        }
        // One pod came up: progress, the clock restarts.
        sim.now += 29;
        assert_eq!(sim.reconcile().phase, Phase::Canary);
        sim.now += 31;
        let p = sim.reconcile();
        assert_eq!(p.phase, Phase::Aborted);
        let msg = p.release.unwrap().message.unwrap();
        assert!(
            msg.contains("1/2 updated pods available after 31s")
                && msg.contains("acme-green-b (running, not ready, 1 restarts)")
                && !msg.contains("acme-green-a"),
            "{msg}"
        );
    }

    #[test]
    fn release_revisions_differ_per_release_and_tenant() {
        let a = release_revision("uid-1", 1, V2);
        assert_eq!(a.len(), 10);
        assert_ne!(a, release_revision("uid-1", 2, V2));
        assert_ne!(a, release_revision("uid-2", 1, V2));
        assert_ne!(a, revision_of(V2));
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
