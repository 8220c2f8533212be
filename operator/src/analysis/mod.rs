//! Release analysis from the runtime's own metrics (docs/operations.md,
//! "Analysis"). Pure: [`counters`] reads one pod's `/metrics` text and
//! subtracts two scrapes; [`judge`] turns the candidate's (and the stable
//! slot's) events over one interval into a verdict with its figures;
//! [`advance`] keeps the run of passes and failures in `status.analysis`;
//! [`targets`] says which slots are measured. The scraping is in
//! `controller/analysis.rs`; what a verdict does to the release is in
//! [`crate::rollout`].

pub mod counters;

use crate::{
    crd::{AnalysisSpec, AnalysisStatus, ChatTenantStatus, ReleaseState},
    model::{Slot, Tenant},
    rollout::{format_time, parse_time},
};
pub use counters::Counters;

/// The verdict on one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every threshold held.
    Pass,
    /// A threshold was crossed.
    Fail,
    /// Too few events, or nothing could be scraped: neither.
    Inconclusive,
}

impl Verdict {
    /// `status.analysis.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "Pass",
            Verdict::Fail => "Fail",
            Verdict::Inconclusive => "Inconclusive",
        }
    }
}

/// One interval judged, with the figures.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    /// The verdict.
    pub verdict: Verdict,
    /// What was measured against what, for people.
    pub message: String,
    /// Failed events over events of the candidate.
    pub error_ratio: Option<f64>,
    /// The candidate's send→ack p99, seconds.
    pub ack_p99: Option<f64>,
    /// The stable slot's send→ack p99, seconds.
    pub stable_ack_p99: Option<f64>,
    /// Events of the candidate.
    pub samples: i64,
}

/// Judges the candidate's events over one interval against `spec`.
/// `candidate` is `None` when none of its pods could be scraped; `stable`
/// is only used by `maxAckP99Ratio`.
pub fn judge(
    spec: &AnalysisSpec,
    candidate: Option<&Counters>,
    stable: Option<&Counters>,
) -> Judgement {
    let Some(c) = candidate else {
        return Judgement {
            verdict: Verdict::Inconclusive,
            message: "no candidate pod could be scraped".into(),
            error_ratio: None,
            ack_p99: None,
            stable_ack_p99: None,
            samples: 0,
        };
    };
    let events = c.events();
    // Counts are whole numbers; the cast only drops a fraction that is 0.
    #[allow(clippy::cast_possible_truncation)]
    let samples = events.round() as i64;
    let min = spec.min_samples as f64;
    let ack_p99 = c.ack_quantile(0.99);
    let stable_ack_p99 = stable
        .filter(|s| s.acked >= min)
        .and_then(|s| s.ack_quantile(0.99));
    let mut j = Judgement {
        verdict: Verdict::Pass,
        message: String::new(),
        error_ratio: None,
        ack_p99,
        stable_ack_p99,
        samples,
    };
    if events < min {
        j.verdict = Verdict::Inconclusive;
        j.message = format!(
            "{samples} events of the candidate in the interval, fewer than minSamples {}",
            spec.min_samples
        );
        return j;
    }
    let ratio = c.failures() / events;
    j.error_ratio = Some(ratio);
    let mut failed = Vec::new();
    let mut figures = vec![format!(
        "error ratio {ratio:.4} ({} failed of {samples} events: {} failed sends, {} HTTP 5xx, {} abnormal WebSocket closes; maxErrorRatio {})",
        c.failures(),
        c.send_faults,
        c.responses_5xx,
        c.closes_abnormal,
        spec.max_error_ratio
    )];
    if ratio > spec.max_error_ratio {
        failed.push(0);
    }
    if let Some(p99) = ack_p99.filter(|_| c.acked >= min) {
        let mut text = format!("send→ack p99 {p99:.4}s of {} acks", c.acked);
        if let Some(max) = spec.max_ack_p99_seconds {
            text += &format!(" (maxAckP99Seconds {max})");
            if p99 > max {
                failed.push(figures.len());
            }
        }
        if let (Some(max), Some(base)) = (spec.max_ack_p99_ratio, stable_ack_p99) {
            text += &format!(", stable's {base:.4}s (maxAckP99Ratio {max})");
            if base > 0.0 && p99 > max * base {
                failed.push(figures.len());
            }
        }
        figures.push(text);
    }
    if failed.is_empty() {
        j.message = figures.join("; ");
    } else {
        j.verdict = Verdict::Fail;
        failed.dedup();
        j.message = failed
            .iter()
            .filter_map(|i| figures.get(*i).cloned())
            .collect::<Vec<_>>()
            .join("; ");
    }
    j
}

/// `status.analysis` after `judgement` on release `release` at `now`: a
/// pass extends the run of passes and ends a run of failures, a failure the
/// other way round, an inconclusive interval changes neither. The runs of
/// another release start from zero.
pub fn advance(
    prev: Option<&AnalysisStatus>,
    release: i64,
    judgement: &Judgement,
    now: i64,
) -> AnalysisStatus {
    let (mut failures, mut passes) = prev
        .filter(|p| p.release == release)
        .map_or((0, 0), |p| (p.consecutive_failures, p.consecutive_passes));
    match judgement.verdict {
        Verdict::Pass => (failures, passes) = (0, passes.saturating_add(1)),
        Verdict::Fail => (failures, passes) = (failures.saturating_add(1), 0),
        Verdict::Inconclusive => {}
    }
    AnalysisStatus {
        release,
        phase: judgement.verdict.as_str().into(),
        message: Some(judgement.message.clone()),
        error_ratio: judgement.error_ratio,
        ack_p99_seconds: judgement.ack_p99,
        stable_ack_p99_seconds: judgement.stable_ack_p99,
        samples: judgement.samples,
        at: format_time(now),
        consecutive_failures: failures,
        consecutive_passes: passes,
    }
}

/// Which slots an analysis measures now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Targets {
    /// The slot running the release's image.
    pub candidate: Slot,
    /// The slot it is compared with (stable before the cut-over, the
    /// draining previous stable after it).
    pub baseline: Slot,
    /// `status.release.revision`: the scrapes of one release are compared
    /// only with each other.
    pub revision: String,
}

/// The slots to scrape: with `spec.rollout.analysis`, while the open
/// release runs before its cut-over (candidate = the non-stable slot), and
/// after it while the previous slot drains (candidate = the new stable
/// slot). `None` otherwise.
pub fn targets(t: &Tenant, status: Option<&ChatTenantStatus>, now: i64) -> Option<Targets> {
    let r = &t.spec.rollout;
    r.analysis.as_ref()?;
    let candidate = r.candidate.as_ref()?;
    let rel = status?
        .release
        .as_ref()
        .filter(|rel| rel.closed_at.is_none() && rel.image == candidate.image)?;
    let stable = t.stable_slot;
    let (candidate, baseline) = match rel.state {
        ReleaseState::Progressing | ReleaseState::Promoting => (stable.other(), stable),
        ReleaseState::Promoted => {
            let d = status?.draining.as_ref()?;
            let end = match d.since.as_deref().and_then(parse_time) {
                Some(since) => since + r.drain_seconds,
                None => parse_time(&d.until)?,
            };
            if end <= now || d.slot != stable.other().as_str() {
                return None;
            }
            (stable, stable.other())
        }
        ReleaseState::Aborted => return None,
    };
    Some(Targets {
        candidate,
        baseline,
        revision: rel.revision.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(
        acked: f64,
        p99_bucket: usize,
        faults: f64,
        http: f64,
        h5xx: f64,
        closes: f64,
        abnormal: f64,
    ) -> Counters {
        // All acks in bucket `p99_bucket` of [0.01, 0.1, 1.0, +Inf].
        let les = [0.01, 0.1, 1.0, f64::INFINITY];
        Counters {
            acked,
            ack_buckets: les
                .iter()
                .enumerate()
                .map(|(i, le)| (*le, if i >= p99_bucket { acked } else { 0.0 }))
                .collect(),
            send_errors: faults,
            send_faults: faults,
            responses: http,
            responses_5xx: h5xx,
            closes,
            closes_abnormal: abnormal,
        }
    }

    /// (name, candidate, stable, verdict, message contains)
    type Row = (
        &'static str,
        Option<Counters>,
        Option<Counters>,
        Verdict,
        &'static str,
    );

    #[test]
    fn judgements() {
        let spec = AnalysisSpec {
            max_ack_p99_seconds: Some(0.5),
            max_ack_p99_ratio: Some(3.0),
            ..AnalysisSpec::default()
        };
        let fast = window(100.0, 0, 0.0, 10.0, 0.0, 2.0, 0.0);
        let rows: Vec<Row> = vec![
            (
                "healthy",
                Some(fast.clone()),
                Some(fast.clone()),
                Verdict::Pass,
                "error ratio 0.0000",
            ),
            (
                "nothing scraped",
                None,
                Some(fast.clone()),
                Verdict::Inconclusive,
                "no candidate pod",
            ),
            (
                "too few events",
                Some(window(5.0, 0, 0.0, 2.0, 0.0, 0.0, 0.0)),
                None,
                Verdict::Inconclusive,
                "7 events of the candidate in the interval, fewer than minSamples 20",
            ),
            (
                "failed sends",
                Some(window(10.0, 0, 90.0, 0.0, 0.0, 0.0, 0.0)),
                None,
                Verdict::Fail,
                "error ratio 0.9000 (90 failed of 100 events: 90 failed sends",
            ),
            (
                "5xx and abnormal closes count",
                Some(window(90.0, 0, 0.0, 5.0, 3.0, 5.0, 3.0)),
                None,
                Verdict::Fail,
                "6 failed of 100 events: 0 failed sends, 3 HTTP 5xx, 3 abnormal WebSocket closes",
            ),
            (
                "at the threshold passes",
                Some(window(95.0, 0, 5.0, 0.0, 0.0, 0.0, 0.0)),
                None,
                Verdict::Pass,
                "error ratio 0.0500",
            ),
            (
                "slow acks",
                Some(window(100.0, 2, 0.0, 0.0, 0.0, 0.0, 0.0)),
                None,
                Verdict::Fail,
                "(maxAckP99Seconds 0.5)",
            ),
            (
                "slower than stable",
                Some(window(100.0, 1, 0.0, 0.0, 0.0, 0.0, 0.0)),
                Some(fast.clone()),
                Verdict::Fail,
                "stable's 0.0099s (maxAckP99Ratio 3)",
            ),
            (
                "no ratio check when stable has too few acks",
                Some(window(100.0, 1, 0.0, 0.0, 0.0, 0.0, 0.0)),
                Some(window(3.0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)),
                Verdict::Pass,
                "send→ack p99 0.0991s of 100 acks (maxAckP99Seconds 0.5)",
            ),
        ];
        for (name, cand, stable, verdict, text) in rows {
            let j = judge(&spec, cand.as_ref(), stable.as_ref());
            assert_eq!(j.verdict, verdict, "{name}: {j:?}");
            assert!(
                j.message.contains(text),
                "{name}: {:?} lacks {text:?}",
                j.message
            );
        }
    }

    #[test]
    fn runs_of_passes_and_failures() {
        let j = |verdict| Judgement {
            verdict,
            message: String::new(),
            error_ratio: None,
            ack_p99: None,
            stable_ack_p99: None,
            samples: 0,
        };
        let mut s: Option<AnalysisStatus> = None;
        let mut runs = Vec::new();
        for v in [
            Verdict::Pass,
            Verdict::Pass,
            Verdict::Inconclusive,
            Verdict::Fail,
            Verdict::Fail,
            Verdict::Pass,
        ] {
            let next = advance(s.as_ref(), 1, &j(v), 0);
            runs.push((next.consecutive_passes, next.consecutive_failures));
            s = Some(next);
        }
        assert_eq!(runs, [(1, 0), (2, 0), (2, 0), (0, 1), (0, 2), (1, 0)]);
        // Another release starts from zero.
        let other = advance(s.as_ref(), 2, &j(Verdict::Fail), 0);
        assert_eq!(
            (other.consecutive_passes, other.consecutive_failures),
            (0, 1)
        );
    }
}
