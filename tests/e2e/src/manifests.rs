//! Applying YAML manifests (examples, rendered Helm charts) with the kube
//! client, and running the chart tools built by `make tools`.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    core::{DynamicObject, GroupVersionKind},
    discovery::{Scope, pinned_kind},
};

use crate::{HarnessError, Result};

/// Every document of a multi-document YAML stream, skipping empty ones.
pub fn documents(yaml: &str) -> Result<Vec<DynamicObject>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        out.push(serde_yaml::from_value(value)?);
    }
    Ok(out)
}

use serde::Deserialize;

/// Server-side applies `obj` (namespaced kinds go to its namespace, else
/// `default_ns`), as field manager `manager`.
pub async fn apply_object(
    client: &Client,
    default_ns: &str,
    obj: &DynamicObject,
    manager: &str,
) -> Result<DynamicObject> {
    let types = obj
        .types
        .as_ref()
        .ok_or_else(|| HarnessError::Manifest("a document has no apiVersion/kind".into()))?;
    let gvk = GroupVersionKind::try_from(types).map_err(|e| {
        HarnessError::Manifest(format!("bad apiVersion {}: {e}", types.api_version))
    })?;
    let (ar, caps) = pinned_kind(client, &gvk).await?;
    let name = obj
        .metadata
        .name
        .clone()
        .ok_or_else(|| HarnessError::Manifest(format!("a {} has no name", types.kind)))?;
    let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
        let ns = obj
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| default_ns.to_string());
        Api::namespaced_with(client.clone(), &ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(obj),
        )
        .await?)
}

/// A tool built by `make tools` / `make control-plane`: `CHORUS_TOOLS_BIN`
/// (set by `make test`) or `~/.cache/chorus/...`.
pub fn tool(name: &str) -> Result<PathBuf> {
    let dirs = [
        std::env::var("CHORUS_TOOLS_BIN").ok(),
        std::env::var("CHORUS_CP_BIN").ok(),
    ];
    for dir in dirs.into_iter().flatten() {
        let p = PathBuf::from(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(HarnessError::Manifest(format!(
        "{name} not found in CHORUS_TOOLS_BIN or CHORUS_CP_BIN: run the suites with `make test` (it builds helm, kubeconform and openapi2jsonschema)"
    )))
}

/// Runs `program args`, failing with its output when it exits non-zero.
pub fn run(program: &PathBuf, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    use std::io::Write;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| HarnessError::Manifest(format!("cannot run {}: {e}", program.display())))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| HarnessError::Manifest(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| HarnessError::Manifest(e.to_string()))?;
    if !out.status.success() {
        return Err(HarnessError::Manifest(format!(
            "{} {} failed ({}):\n{}\n{}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out)
}

/// The repository root (for charts/ and examples/).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}
