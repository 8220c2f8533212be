//! The images `make images` builds without Docker describe the same container
//! as the Dockerfiles users build with Docker: entrypoint, default arguments,
//! user and exposed ports. Both are read from the artifacts themselves: the
//! Dockerfile's instructions, and the image config inside the archive that
//! the node's containerd imports.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use chorus_e2e::manifests::repo_root;
use serde_json::Value;

/// What both sources say about a container.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    user: String,
    ports: BTreeSet<String>,
}

fn dockerfile(path: &str) -> Shape {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    // The final stage only.
    let last = text.rsplit("\nFROM ").next().unwrap();
    let mut shape = Shape {
        entrypoint: vec![],
        cmd: vec![],
        user: String::new(),
        ports: BTreeSet::new(),
    };
    for line in last.lines() {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "ENTRYPOINT" => shape.entrypoint = serde_json::from_str(rest).unwrap(),
            "CMD" => shape.cmd = serde_json::from_str(rest).unwrap(),
            "USER" => shape.user = rest.trim().to_string(),
            "EXPOSE" => shape
                .ports
                .extend(rest.split_whitespace().map(|p| format!("{p}/tcp"))),
            _ => {}
        }
    }
    shape
}

/// The image config (`config` of the OCI/Docker image config JSON) inside
/// the archive `make images` wrote.
fn archive_config(name: &str) -> Value {
    let cache = std::env::var("CHORUS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/chorus"));
    let tar = cache.join("images").join(name);
    assert!(
        tar.exists(),
        "{} is missing: run make images",
        tar.display()
    );
    let read = |member: &str| {
        let out = Command::new("tar")
            .arg("-xOf")
            .arg(&tar)
            .arg(member)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let manifest: Value = serde_json::from_slice(&read("manifest.json")).unwrap();
    let config: Value =
        serde_json::from_slice(&read(manifest[0]["Config"].as_str().unwrap())).unwrap();
    config["config"].clone()
}

fn archive(name: &str) -> Shape {
    let c = &archive_config(name);
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    Shape {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        user: c["User"].as_str().unwrap_or_default().to_string(),
        ports: c["ExposedPorts"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
    }
}

#[test]
fn the_runtime_image_and_its_dockerfile_agree() {
    let built = archive("chat-runtime.tar");
    assert_eq!(built, dockerfile("chat-runtime/Dockerfile"));
    assert_eq!(built.user, "65532:65532", "non-root");
}

#[test]
fn the_operator_image_and_its_dockerfile_agree() {
    let built = archive("chorus-operator.tar");
    assert_eq!(built, dockerfile("operator/Dockerfile"));
    assert_eq!(built.user, "65532:65532", "non-root");
}

/// Both builds of the operator image keep glibc's malloc to 2 arenas
/// (docs/operations.md, "Scale").
#[test]
fn the_operator_image_keeps_two_malloc_arenas() {
    let env = archive_config("chorus-operator.tar")["Env"].clone();
    assert!(
        env.as_array()
            .is_some_and(|e| e.iter().any(|v| v == "MALLOC_ARENA_MAX=2")),
        "{env}"
    );
    let text = std::fs::read_to_string(repo_root().join("operator/Dockerfile")).unwrap();
    let last = text.rsplit("\nFROM ").next().unwrap();
    assert!(last.lines().any(|l| l.trim() == "ENV MALLOC_ARENA_MAX=2"));
}

#[test]
fn the_backup_image_and_its_dockerfile_agree() {
    let built = archive("chorus-backup.tar");
    assert_eq!(built, dockerfile("backup/Dockerfile"));
    assert_eq!(built.user, "65532:65532", "non-root");
}

/// The backup image carries what its Jobs and the restore procedure run:
/// the script, the PostgreSQL client binaries (with their libraries) and a
/// shell with the tools the script calls.
#[test]
fn the_backup_image_holds_the_client_binaries_and_a_shell() {
    let cache = std::env::var("CHORUS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/chorus"));
    let tar = cache.join("images/chorus-backup.tar");
    let manifest = Command::new("tar")
        .arg("-xOf")
        .arg(&tar)
        .arg("manifest.json")
        .output()
        .unwrap();
    let manifest: Value = serde_json::from_slice(&manifest.stdout).unwrap();
    let layer = manifest[0]["Layers"][0].as_str().unwrap().to_string();
    let list = Command::new("sh")
        .arg("-c")
        .arg(format!("tar -xOf '{}' '{layer}' | tar -tzf - 2>/dev/null || tar -xOf '{}' '{layer}' | tar -tf -", tar.display(), tar.display()))
        .output()
        .unwrap();
    let files: BTreeSet<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    for f in [
        "usr/local/bin/chorus-backup",
        "usr/local/bin/pg_dump",
        "usr/local/bin/pg_restore",
        "usr/local/bin/psql",
        "bin/busybox",
        "bin/sh",
        "bin/date",
        "bin/awk",
        "etc/passwd",
    ] {
        assert!(files.contains(f), "{f} is missing from the backup image");
    }
    assert!(
        files.iter().any(|f| f.contains("libpq.so")),
        "libpq is missing"
    );
}
