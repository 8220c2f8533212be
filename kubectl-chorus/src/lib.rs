//! `kubectl chorus`: a small kubectl plugin for Chorus releases.
//!
//! ```text
//! kubectl chorus status  TENANT [-n NAMESPACE]   stable, candidate, weight, step, conditions
//! kubectl chorus promote TENANT [-n NAMESPACE]   spec.rollout.promoteRevision := status.release.revision
//! kubectl chorus abort   TENANT [-n NAMESPACE]   spec.rollout.abortRevision   := status.release.revision
//! kubectl chorus retry   TENANT [-n NAMESPACE]   spec.rollout.candidate.attempt += 1 (after an abort)
//! ```
//!
//! It reads the ChatTenant's status and patches only the spec fields an SRE
//! would set by hand (or in Git); it never touches a child object. The
//! revision it writes is the one of the release in flight, read from status,
//! so it cannot act on another release.

#![deny(missing_docs)]

use chorus_operator::crd::{ChatTenant, ReleaseState, ReleaseStatus};
use clap::{Parser, Subcommand};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

/// Field manager of the plugin's patches (visible in `managedFields`).
pub const FIELD_MANAGER: &str = "kubectl-chorus";

/// Command line.
#[derive(Debug, Parser, PartialEq, Eq)]
#[command(
    name = "kubectl-chorus",
    about = "Chorus releases: status, promote, abort, retry"
)]
pub struct Cli {
    /// Namespace of the ChatTenant (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand, PartialEq, Eq)]
pub enum Command {
    /// Stable and candidate slots, traffic weight, step and conditions.
    Status {
        /// ChatTenant name.
        tenant: String,
    },
    /// Promote the release in flight (sets spec.rollout.promoteRevision).
    Promote {
        /// ChatTenant name.
        tenant: String,
    },
    /// Abort the release in flight, or roll it back during its drain window
    /// (sets spec.rollout.abortRevision).
    Abort {
        /// ChatTenant name.
        tenant: String,
    },
    /// Start a new release of the aborted candidate (increments
    /// spec.rollout.candidate.attempt).
    Retry {
        /// ChatTenant name.
        tenant: String,
    },
}

impl Command {
    /// The ChatTenant the command is about.
    pub fn tenant(&self) -> &str {
        match self {
            Command::Status { tenant }
            | Command::Promote { tenant }
            | Command::Abort { tenant }
            | Command::Retry { tenant } => tenant,
        }
    }
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// No ChatTenant of that name.
    #[error("ChatTenant {namespace}/{name} not found")]
    NotFound {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Nothing to promote or abort.
    #[error(
        "ChatTenant {0} has no release in flight (status.release is closed or absent): set spec.rollout.candidate first"
    )]
    NoRelease(String),
    /// The release is over.
    #[error("release {number} ({revision}) of {tenant} is already {state}: {hint}")]
    Finished {
        /// ChatTenant name.
        tenant: String,
        /// Release number.
        number: i64,
        /// Its revision.
        revision: String,
        /// `promoted` or `aborted`.
        state: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// Retry asked while the release is not aborted.
    #[error("release {number} of {tenant} is {state:?}, not aborted: nothing to retry")]
    NotAborted {
        /// ChatTenant name.
        tenant: String,
        /// Release number.
        number: i64,
        /// Its state.
        state: ReleaseState,
    },
    /// The apiserver refused or failed.
    #[error("{0}")]
    Kube(#[from] kube::Error),
}

/// The two spec fields the plugin writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// `spec.rollout.promoteRevision`.
    Promote,
    /// `spec.rollout.abortRevision`.
    Abort,
}

/// The open release of `ct`, if any.
pub fn open_release(ct: &ChatTenant) -> Option<&ReleaseStatus> {
    ct.status
        .as_ref()?
        .release
        .as_ref()
        .filter(|r| r.closed_at.is_none())
}

/// The revision `decision` must name on `ct`, or why there is none. An
/// abort is accepted after the cut-over too (the operator rolls back while
/// the old slot drains, and ignores it after).
pub fn target_revision(ct: &ChatTenant, decision: Decision) -> Result<String, PluginError> {
    let name = ct.metadata.name.clone().unwrap_or_default();
    let rel = open_release(ct).ok_or_else(|| PluginError::NoRelease(name.clone()))?;
    let finished = |state, hint| PluginError::Finished {
        tenant: name.clone(),
        number: rel.number,
        revision: rel.revision.clone(),
        state,
        hint,
    };
    match (decision, rel.state) {
        (_, ReleaseState::Aborted) => Err(finished(
            "aborted",
            "start another release by changing or re-adding spec.rollout.candidate",
        )),
        (Decision::Promote, ReleaseState::Promoted) => Err(finished(
            "promoted",
            "move the image into spec.runtime.image and remove spec.rollout.candidate",
        )),
        _ => Ok(rel.revision.clone()),
    }
}

/// The merge patch that sets the field of `decision` to `revision`.
pub fn revision_patch(decision: Decision, revision: &str) -> Value {
    let field = match decision {
        Decision::Promote => "promoteRevision",
        Decision::Abort => "abortRevision",
    };
    json!({"spec": {"rollout": {field: revision}}})
}

/// Reads the ChatTenant and writes promoteRevision/abortRevision for its
/// release in flight; returns a line for the user.
pub async fn decide(
    api: &Api<ChatTenant>,
    name: &str,
    decision: Decision,
) -> Result<String, PluginError> {
    let ct = get(api, name).await?;
    let revision = target_revision(&ct, decision)?;
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).validation_strict(),
        &Patch::Merge(revision_patch(decision, &revision)),
    )
    .await?;
    let number = open_release(&ct).map_or(0, |r| r.number);
    Ok(match decision {
        Decision::Promote => format!(
            "chattenant/{name}: release {number} ({revision}) promoted: spec.rollout.promoteRevision={revision}"
        ),
        Decision::Abort => format!(
            "chattenant/{name}: release {number} ({revision}) aborted: spec.rollout.abortRevision={revision}"
        ),
    })
}

/// The merge patch that starts a new release of the same candidate image,
/// or why there is nothing to retry.
pub fn retry_patch(ct: &ChatTenant) -> Result<Value, PluginError> {
    let name = ct.metadata.name.clone().unwrap_or_default();
    let rel = open_release(ct).ok_or_else(|| PluginError::NoRelease(name.clone()))?;
    if rel.state != ReleaseState::Aborted {
        return Err(PluginError::NotAborted {
            tenant: name,
            number: rel.number,
            state: rel.state,
        });
    }
    let attempt = ct
        .spec
        .rollout
        .candidate
        .as_ref()
        .and_then(|c| c.attempt)
        .unwrap_or(0);
    Ok(json!({"spec": {"rollout": {"candidate": {"attempt": attempt + 1}}}}))
}

/// Starts a new release of the aborted candidate; returns a line for the
/// user.
pub async fn retry(api: &Api<ChatTenant>, name: &str) -> Result<String, PluginError> {
    let ct = get(api, name).await?;
    let patch = retry_patch(&ct)?;
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).validation_strict(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(format!(
        "chattenant/{name}: new release of the candidate requested: spec.rollout.candidate.attempt={}",
        patch["spec"]["rollout"]["candidate"]["attempt"]
    ))
}

async fn get(api: &Api<ChatTenant>, name: &str) -> Result<ChatTenant, PluginError> {
    api.get_opt(name)
        .await?
        .ok_or_else(|| PluginError::NotFound {
            namespace: api.namespace().unwrap_or_default().to_string(),
            name: name.to_string(),
        })
}

/// `kubectl chorus status` text for `ct`.
pub fn render_status(ct: &ChatTenant) -> String {
    let name = ct.metadata.name.clone().unwrap_or_default();
    let mut out = format!("ChatTenant {name}\n");
    let Some(s) = ct.status.as_ref() else {
        out.push_str("  no status yet: the operator has not reconciled it\n");
        return out;
    };
    let slot = |label: &str, sl: Option<&chorus_operator::crd::SlotStatus>| match sl {
        Some(sl) => format!(
            "  {label:<10}{} in slot {} ({}/{} available, revision {})\n",
            sl.image, sl.slot, sl.available_replicas, sl.replicas, sl.revision
        ),
        None => format!("  {label:<10}-\n"),
    };
    out.push_str(&slot("stable", s.stable.as_ref()));
    out.push_str(&slot("candidate", s.candidate.as_ref()));
    if let Some(t) = &s.traffic {
        out.push_str(&format!(
            "  {:<10}{}% candidate / {}% stable ({})\n",
            "weight", t.canary_weight, t.stable_weight, t.provider
        ));
    }
    if let Some(r) = &s.release {
        let state = format!("{:?}", r.state);
        out.push_str(&format!(
            "  {:<10}{} revision {} {}{}{}\n",
            "release",
            r.number,
            r.revision,
            if r.closed_at.is_some() {
                format!("{state} (closed)")
            } else {
                state
            },
            r.reason
                .as_deref()
                .map(|x| format!(" ({x})"))
                .unwrap_or_default(),
            r.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
        if let Some(step) = &r.step {
            out.push_str(&format!(
                "  {:<10}{step}{}\n",
                "step",
                r.pause_until
                    .as_deref()
                    .map(|u| format!(", paused until {u}"))
                    .unwrap_or_default()
            ));
        }
    }
    if let Some(d) = &s.draining {
        out.push_str(&format!(
            "  {:<10}slot {} ({}) x{} until {}\n",
            "draining", d.slot, d.image, d.replicas, d.until
        ));
    }
    if let Some(a) = &s.analysis {
        let figure = |v: Option<f64>, unit: &str| v.map_or("-".into(), |v| format!("{v:.4}{unit}"));
        out.push_str(&format!(
            "  {:<10}release {} {} at {}: error ratio {}, ack p99 {} (stable {}), {} events; {} passes / {} failures in a row{}\n",
            "analysis",
            a.release,
            a.phase,
            a.at,
            figure(a.error_ratio, ""),
            figure(a.ack_p99_seconds, "s"),
            figure(a.stable_ack_p99_seconds, "s"),
            a.samples,
            a.consecutive_passes,
            a.consecutive_failures,
            a.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    out.push_str("  conditions:\n");
    for c in &s.conditions {
        out.push_str(&format!(
            "    {:<18}{:<6}{:<26}{}\n",
            c.type_, c.status, c.reason, c.message
        ));
    }
    out
}

/// Runs `cli` against `client`; returns what to print.
pub async fn run(client: Client, cli: &Cli) -> Result<String, PluginError> {
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let api: Api<ChatTenant> = Api::namespaced(client, &namespace);
    let name = cli.command.tenant();
    match &cli.command {
        Command::Status { .. } => Ok(render_status(&get(&api, name).await?)),
        Command::Promote { .. } => decide(&api, name, Decision::Promote).await,
        Command::Abort { .. } => decide(&api, name, Decision::Abort).await,
        Command::Retry { .. } => retry(&api, name).await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chorus_operator::crd::ChatTenantStatus;

    fn tenant(release: Option<ReleaseStatus>) -> ChatTenant {
        let mut ct: ChatTenant = serde_json::from_value(json!({
            "apiVersion": "chorus.dev/v1alpha1", "kind": "ChatTenant",
            "metadata": {"name": "acme", "namespace": "tenants"},
            "spec": {"tenantId": "acme",
                "runtime": {"image": "ghcr.io/chorus-dev/chat-runtime:0.1.0"},
                "database": {"serverRef": {"name": "pg"}, "name": "chat_acme"}}
        }))
        .unwrap();
        ct.status = Some(Box::new(ChatTenantStatus {
            release,
            ..ChatTenantStatus::default()
        }));
        ct
    }

    fn release(state: ReleaseState, closed: bool) -> ReleaseStatus {
        ReleaseStatus {
            number: 3,
            revision: "0123456789".into(),
            image: "ghcr.io/chorus-dev/chat-runtime:0.2.0".into(),
            state,
            closed_at: closed.then(|| "2026-01-01T00:00:00Z".into()),
            ..ReleaseStatus::default()
        }
    }

    #[test]
    fn parses_the_subcommands_and_the_namespace() {
        let cli =
            Cli::try_parse_from(["kubectl-chorus", "promote", "acme", "-n", "tenants"]).unwrap();
        assert_eq!(
            cli,
            Cli {
                namespace: Some("tenants".into()),
                command: Command::Promote {
                    tenant: "acme".into()
                }
            }
        );
        let cli =
            Cli::try_parse_from(["kubectl-chorus", "--namespace", "x", "abort", "hooli"]).unwrap();
        assert_eq!(cli.command.tenant(), "hooli");
        assert_eq!(cli.namespace.as_deref(), Some("x"));
        let cli = Cli::try_parse_from(["kubectl-chorus", "status", "acme"]).unwrap();
        assert_eq!(cli.namespace, None);
        assert!(
            Cli::try_parse_from(["kubectl-chorus", "promote"]).is_err(),
            "tenant required"
        );
        assert!(Cli::try_parse_from(["kubectl-chorus", "rollback", "acme"]).is_err());
        assert!(Cli::try_parse_from(["kubectl-chorus", "promote", "a", "b"]).is_err());
    }

    #[test]
    fn the_patch_sets_only_the_revision_field() {
        assert_eq!(
            revision_patch(Decision::Promote, "0123456789"),
            json!({"spec": {"rollout": {"promoteRevision": "0123456789"}}})
        );
        assert_eq!(
            revision_patch(Decision::Abort, "0123456789"),
            json!({"spec": {"rollout": {"abortRevision": "0123456789"}}})
        );
    }

    #[test]
    fn the_revision_is_the_open_release_s() {
        let ct = tenant(Some(release(ReleaseState::Progressing, false)));
        assert_eq!(
            target_revision(&ct, Decision::Promote).unwrap(),
            "0123456789"
        );
        assert_eq!(target_revision(&ct, Decision::Abort).unwrap(), "0123456789");
        // After the cut-over an abort rolls back; a promote has nothing to do.
        let ct = tenant(Some(release(ReleaseState::Promoted, false)));
        assert!(target_revision(&ct, Decision::Abort).is_ok());
        let err = target_revision(&ct, Decision::Promote)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already promoted"), "{err}");
        let ct = tenant(Some(release(ReleaseState::Aborted, false)));
        assert!(target_revision(&ct, Decision::Promote).is_err());
        // A closed release (candidate removed) is never acted on.
        let ct = tenant(Some(release(ReleaseState::Progressing, true)));
        assert!(matches!(
            target_revision(&ct, Decision::Promote),
            Err(PluginError::NoRelease(_))
        ));
        assert!(matches!(
            target_revision(&tenant(None), Decision::Abort),
            Err(PluginError::NoRelease(_))
        ));
    }

    #[test]
    fn retry_bumps_the_attempt_of_an_aborted_release_only() {
        let mut ct = tenant(Some(release(ReleaseState::Aborted, false)));
        assert!(matches!(
            Cli::try_parse_from(["kubectl-chorus", "retry", "acme"])
                .unwrap()
                .command,
            Command::Retry { .. }
        ));
        ct.spec.rollout.candidate = Some(chorus_operator::crd::Candidate {
            image: "ghcr.io/chorus-dev/chat-runtime:0.2.0".into(),
            attempt: None,
        });
        assert_eq!(
            retry_patch(&ct).unwrap(),
            json!({"spec": {"rollout": {"candidate": {"attempt": 1}}}})
        );
        if let Some(c) = ct.spec.rollout.candidate.as_mut() {
            c.attempt = Some(4);
        }
        assert_eq!(
            retry_patch(&ct).unwrap()["spec"]["rollout"]["candidate"]["attempt"],
            5
        );
        let running = tenant(Some(release(ReleaseState::Progressing, false)));
        assert!(matches!(
            retry_patch(&running),
            Err(PluginError::NotAborted { .. })
        ));
    }

    #[test]
    fn status_shows_release_step_and_conditions() {
        let mut r = release(ReleaseState::Progressing, false);
        r.step = Some("2/4".into());
        r.pause_until = Some("2026-01-01T00:01:00Z".into());
        let text = render_status(&tenant(Some(r)));
        assert!(
            text.contains("release   3 revision 0123456789 Progressing"),
            "{text}"
        );
        assert!(
            text.contains("step      2/4, paused until 2026-01-01T00:01:00Z"),
            "{text}"
        );
        assert!(text.contains("candidate -"), "{text}");
    }

    #[test]
    fn status_shows_the_last_analysis() {
        let mut ct = tenant(Some(release(ReleaseState::Progressing, false)));
        if let Some(s) = ct.status.as_mut() {
            s.analysis = Some(chorus_operator::crd::AnalysisStatus {
                release: 3,
                phase: "Fail".into(),
                message: Some("error ratio 0.9000 above maxErrorRatio 0.05".into()),
                error_ratio: Some(0.9),
                ack_p99_seconds: Some(0.0123),
                stable_ack_p99_seconds: None,
                samples: 120,
                at: "2026-01-01T00:01:00Z".into(),
                consecutive_failures: 1,
                consecutive_passes: 0,
            });
        }
        let text = render_status(&ct);
        assert!(
            text.contains("analysis  release 3 Fail at 2026-01-01T00:01:00Z: error ratio 0.9000, ack p99 0.0123s (stable -), 120 events; 0 passes / 1 failures in a row: error ratio 0.9000 above"),
            "{text}"
        );
    }
}
