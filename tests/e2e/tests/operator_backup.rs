//! Backups on the real node: a tenant with `spec.backup` gets a CronJob whose
//! Jobs (the backup image, imported into the node's containerd) dump the
//! tenant's database as its own role into a claim backed by a hostPath
//! PersistentVolume on the node; `status.backup` reports the time and size
//! the Job controller and the kubelet reported; retention keeps the newest
//! dumps; the restore Job of docs/operations.md brings deleted messages back;
//! a missing claim sets `BackupHealthy=False` with an Event; removing
//! `spec.backup` deletes the CronJob and the status.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::{os::unix::fs::PermissionsExt, path::PathBuf, time::Duration};

use chorus_e2e::{
    chat::{create_room, reachable_service_url, request, signup},
    manifests::repo_root,
    operator::{OperatorEnv, wait_gone, wait_present},
    wait_for,
};
use k8s_openapi::api::{
    batch::v1::{CronJob, Job},
    core::v1::{PersistentVolume, PersistentVolumeClaim, Pod},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(180);

/// A directory on the node (this machine) with `mode` (0o777: writable by
/// the Job's user), a PersistentVolume on it pinned to the real node, and
/// claim `claim` bound to it. The local cluster has no provisioner: users need a StorageClass.
async fn host_claim(env: &OperatorEnv, claim: &str, mode: u32) -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("chorus-backups-{}", env.ns));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
    let pv_name = format!("{}-{claim}", env.ns);
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": dir.to_str().unwrap(), "type": "Directory"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["chorus-node"]}
            ]}]}},
        }
    }))
    .unwrap();
    Api::<PersistentVolume>::all(env.client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .unwrap();
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": claim},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "volumeName": pv_name,
            "resources": {"requests": {"storage": "1Gi"}},
        }
    }))
    .unwrap();
    env.api::<PersistentVolumeClaim>()
        .create(&PostParams::default(), &pvc)
        .await
        .unwrap();
    (dir, pv_name)
}

/// What `kubectl create job --from=cronjob/<cj> <name>` creates: the
/// CronJob's Job template, owned by the CronJob.
async fn run_job_from(env: &OperatorEnv, cj: &CronJob, name: &str) -> Job {
    let tmpl = cj.spec.job_template.clone();
    let job = Job {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: tmpl.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: Some(
                [("cronjob.kubernetes.io/instantiate".into(), "manual".into())].into(),
            ),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name: cj.name_any(),
                uid: cj.uid().unwrap(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        spec: tmpl.spec,
        status: None,
    };
    env.api::<Job>()
        .create(&PostParams::default(), &job)
        .await
        .unwrap()
}

/// Waits until `status.backup.lastSuccessfulTime` differs from `before`.
async fn wait_backup(env: &OperatorEnv, name: &str, before: Option<String>) -> Value {
    let api = env.api::<chorus_operator::crd::ChatTenant>();
    wait_for("a new successful backup in status.backup", T, || {
        let api = api.clone();
        let before = before.clone();
        async move {
            let ct = api.get(name).await.ok()?;
            let b = serde_json::to_value(ct.status?.backup?).ok()?;
            let t = b["lastSuccessfulTime"].as_str().map(str::to_string);
            (t.is_some() && t != before).then_some(b)
        }
    })
    .await
    .unwrap()
}

fn dumps_in(dir: &PathBuf, tenant: &str) -> Vec<(String, u64)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                e.metadata().unwrap().len(),
            )
        })
        .filter(|(n, _)| n.starts_with(&format!("{tenant}-")) && n.ends_with(".dump"))
        .collect();
    v.sort();
    v
}

/// The restore Job block of docs/operations.md, with its placeholders set.
fn documented_restore_job(name: &str, claim: &str, file: &str) -> Job {
    let doc = std::fs::read_to_string(repo_root().join("docs/operations.md")).unwrap();
    let block = doc
        .split("<!-- restore-job -->\n```yaml\n")
        .nth(1)
        .expect("docs/operations.md has the restore-job block")
        .split("\n```")
        .next()
        .unwrap()
        .replace("<name>", name)
        .replace("<claim>", claim)
        .replace("<file>", file);
    serde_yaml::from_str(&block).unwrap()
}

async fn set_replicas(env: &OperatorEnv, name: &str, n: i32) {
    env.api::<chorus_operator::crd::ChatTenant>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runtime": {"replicas": n}}})),
        )
        .await
        .unwrap();
}

async fn messages(url: &str, token: &str, room: i64) -> Vec<Value> {
    let (status, body) = request(
        "GET",
        &format!("{url}/api/v1/rooms/{room}/messages?limit=50"),
        Some(token),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    body["messages"].as_array().unwrap().clone()
}

#[tokio::test]
async fn backups_run_on_the_node_and_a_dump_restores_deleted_messages() {
    let env = OperatorEnv::new("bk", Duration::from_secs(300))
        .await
        .unwrap();
    let (dir, pv) = host_claim(&env, "dumps", 0o777).await;
    // A schedule that does not fire during the test: Jobs are started from
    // the CronJob by hand, so "the last dump" is known.
    let spec = "  backup: {schedule: \"0 0 1 1 *\", retention: {count: 2}, destination: {persistentVolumeClaim: {claimName: dumps}}}";
    env.ready_tenant("acme", spec).await.unwrap();
    let cj = wait_present(&env.api::<CronJob>(), "acme").await.unwrap();
    assert_eq!(cj.owner_references()[0].kind, "ChatTenant");
    let ct = env
        .wait_condition("acme", "BackupHealthy", "Unknown", Some("NoBackupYet"))
        .await
        .unwrap();
    assert!(
        ct.status
            .unwrap()
            .backup
            .unwrap()
            .last_successful_time
            .is_none()
    );

    // Some chat history.
    let url = reachable_service_url(&env.client, &env.ns, "acme", "http")
        .await
        .unwrap();
    let alice = signup(&url, "alice").await.unwrap();
    let room = create_room(&url, &alice, "general", "public")
        .await
        .unwrap();
    let mut seqs = Vec::new();
    for i in 0..3 {
        let (status, sent) = request(
            "POST",
            &format!("{url}/api/v1/rooms/{room}/messages"),
            Some(&alice),
            Some(json!({"client_msg_id": format!("m{i}"), "body": format!("keep me {i}")})),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{sent}");
        seqs.push(sent["seq"].as_i64().unwrap());
    }

    // Three backups; retention keeps the newest two.
    let mut last = None;
    for i in 1..=3 {
        run_job_from(&env, &cj, &format!("acme-manual-{i}")).await;
        let b = wait_backup(&env, "acme", last.clone()).await;
        last = b["lastSuccessfulTime"].as_str().map(str::to_string);
        // Distinct timestamps (second resolution) in the file names.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let ct = env
        .wait_condition("acme", "BackupHealthy", "True", Some("BackupSucceeded"))
        .await
        .unwrap();
    let b = ct.status.unwrap().backup.unwrap();
    let file = b.last_file.clone().unwrap();
    let size = b.last_size_bytes.unwrap();
    let on_disk = dumps_in(&dir, "acme");
    assert_eq!(on_disk.len(), 2, "retention count 2: {on_disk:?}");
    assert_eq!(
        on_disk[1],
        (file.clone(), u64::try_from(size).unwrap()),
        "status names the newest dump and its size"
    );
    assert!(
        size > 1000,
        "a custom-format dump of a migrated database: {size} bytes"
    );
    // The Job ran on the real node, as the tenant's role.
    let pods = env
        .api::<Pod>()
        .list(&ListParams::default().labels("chorus.dev/backup-of=acme"))
        .await
        .unwrap()
        .items;
    assert!(!pods.is_empty());
    for p in &pods {
        assert_eq!(
            p.spec.as_ref().unwrap().node_name.as_deref(),
            Some("chorus-node")
        );
        let env_vars = p.spec.as_ref().unwrap().containers[0].env.clone().unwrap();
        let url_from = env_vars
            .iter()
            .find(|e| e.name == "DATABASE_URL")
            .and_then(|e| e.value_from.clone())
            .and_then(|v| v.secret_key_ref)
            .unwrap();
        assert_eq!(
            url_from.name, "acme-db",
            "the tenant's Secret, not the server's"
        );
    }
    let events = env.events("acme").await.unwrap();
    assert!(
        events.iter().any(|(r, _)| r == "BackupSucceeded"),
        "{events:?}"
    );

    // Delete two messages: they become tombstones.
    for seq in &seqs[..2] {
        let (status, body) = request(
            "DELETE",
            &format!("{url}/api/v1/rooms/{room}/messages/{seq}"),
            Some(&alice),
            None,
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let now = messages(&url, &alice, room).await;
    assert_eq!(now.iter().filter(|m| m["deleted"] == true).count(), 2);

    // The documented restore: runtime to zero, the restore Job, runtime back.
    set_replicas(&env, "acme", 0).await;
    wait_for("the runtime pods to be gone", T, || {
        let pods = env.api::<Pod>();
        async move {
            let l = pods
                .list(&ListParams::default().labels("chorus.dev/tenant=acme"))
                .await
                .ok()?;
            l.items.is_empty().then_some(())
        }
    })
    .await
    .unwrap();
    let job = documented_restore_job("acme", "dumps", &file);
    env.api::<Job>()
        .create(&PostParams::default(), &job)
        .await
        .unwrap();
    let done = wait_for("the restore Job to finish", T, || {
        let jobs = env.api::<Job>();
        async move {
            let j = jobs.get("acme-restore").await.ok()?;
            let c = j.status?.conditions?;
            c.into_iter()
                .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        }
    })
    .await
    .unwrap();
    assert_eq!(done.type_, "Complete", "restore Job: {done:?}");
    set_replicas(&env, "acme", 1).await;
    let url = reachable_service_url(&env.client, &env.ns, "acme", "http")
        .await
        .unwrap();
    let restored = wait_for("the runtime to serve the restored room", T, || {
        let (url, alice) = (url.clone(), alice.clone());
        async move {
            let (status, body) = request(
                "GET",
                &format!("{url}/api/v1/rooms/{room}/messages?limit=50"),
                Some(&alice),
                None,
            )
            .await
            .ok()?;
            (status == 200).then(|| body["messages"].as_array().cloned())?
        }
    })
    .await
    .unwrap();
    let bodies: Vec<_> = restored
        .iter()
        .filter(|m| m["deleted"] == false)
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect();
    for i in 0..3 {
        assert!(
            bodies.contains(&format!("keep me {i}")),
            "message {i} is back: {restored:?}"
        );
    }

    // Removing spec.backup deletes the CronJob and status.backup; the dumps stay.
    env.api::<chorus_operator::crd::ChatTenant>()
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"backup": null}})),
        )
        .await
        .unwrap();
    wait_gone(&env.api::<CronJob>(), "acme").await.unwrap();
    wait_for("status.backup to go", T, || {
        let api = env.api::<chorus_operator::crd::ChatTenant>();
        async move {
            let s = api.get("acme").await.ok()?.status?;
            (s.backup.is_none() && s.conditions.iter().all(|c| c.type_ != "BackupHealthy"))
                .then_some(())
        }
    })
    .await
    .unwrap();
    assert_eq!(dumps_in(&dir, "acme").len(), 2);

    env.stop().await;
    let _ = Api::<PersistentVolume>::all(chorus_e2e::admin_client().await.unwrap())
        .delete(&pv, &DeleteParams::default())
        .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_missing_claim_sets_the_condition_and_an_event() {
    let env = OperatorEnv::new("bkf", Duration::from_secs(300))
        .await
        .unwrap();
    let spec = "  backup: {schedule: \"@daily\", retention: {days: 7}, destination: {persistentVolumeClaim: {claimName: nowhere}}}";
    let (yaml, _) = chorus_e2e::operator::tenant_yaml("beta", spec);
    chorus_e2e::operator::create_tenant(&env.client, &env.ns, &yaml)
        .await
        .unwrap();
    let ct = env
        .wait_condition("beta", "BackupHealthy", "False", Some("ClaimNotFound"))
        .await
        .unwrap();
    let msg = ct.status.unwrap().backup.unwrap().message.unwrap();
    assert!(
        msg.contains("spec.backup.destination.persistentVolumeClaim.claimName")
            && msg.contains("nowhere"),
        "{msg}"
    );
    let events = wait_for("a BackupFailed Event", T, || {
        let env = &env;
        async move {
            let e = env.events("beta").await.ok()?;
            e.iter()
                .any(|(r, m)| r == "BackupFailed" && m.contains("nowhere"))
                .then_some(e)
        }
    })
    .await
    .unwrap();
    assert!(!events.is_empty());
    // A bad schedule is refused at admission, naming the field.
    let err = env
        .api::<chorus_operator::crd::ChatTenant>()
        .patch(
            "beta",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"backup": {"schedule": "every day"}}})),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec.backup.schedule"), "{err}");
    let err = env
        .api::<chorus_operator::crd::ChatTenant>()
        .patch(
            "beta",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"backup": {"retention": {"count": 3, "days": 7}}}})),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec.backup.retention"), "{err}");

    // The claim appears, but user 65532 cannot write to it: the Job fails
    // (Job controller: BackoffLimitExceeded) and the condition quotes the
    // script's error from the pod's termination message.
    let (dir, pv) = host_claim(&env, "nowhere", 0o755).await;
    env.wait_condition("beta", "BackupHealthy", "Unknown", Some("NoBackupYet"))
        .await
        .unwrap();
    let cj = wait_present(&env.api::<CronJob>(), "beta").await.unwrap();
    run_job_from(&env, &cj, "beta-manual-1").await;
    let ct = env
        .wait_condition("beta", "BackupHealthy", "False", Some("BackupFailed"))
        .await
        .unwrap();
    let b = ct.status.unwrap().backup.unwrap();
    let msg = b.message.unwrap();
    assert!(
        msg.contains("beta-manual-1") && msg.contains("Permission denied"),
        "{msg}"
    );
    assert!(b.last_failure_time.is_some() && b.last_successful_time.is_none());
    wait_for("a BackupFailed Event for the Job", T, || {
        let env = &env;
        async move {
            let e = env.events("beta").await.ok()?;
            e.iter()
                .any(|(r, m)| r == "BackupFailed" && m.contains("beta-manual-1"))
                .then_some(())
        }
    })
    .await
    .unwrap();
    env.stop().await;
    let _ = Api::<PersistentVolume>::all(chorus_e2e::admin_client().await.unwrap())
        .delete(&pv, &DeleteParams::default())
        .await;
    let _ = std::fs::remove_dir_all(&dir);
}
