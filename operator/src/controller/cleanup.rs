//! Deletion: the finalizer's cleanup applies `spec.database.reclaimPolicy`.
//! `Retain` keeps the database and role; `Delete` drops them, unless they are
//! not this tenant's. While the server cannot be reached the ChatTenant stays
//! (the finalizer holds it), with a condition that says how to let it go.
//! Children need no cleanup: their owner references delete them.

use std::sync::Arc;

use kube::{Api, runtime::controller::Action};

use super::{
    Context, ServerSecretError,
    dereference::{fresh_tenant, load_server},
    events::Event,
    now,
};
use crate::{
    crd::{ChatTenant, ReclaimPolicy},
    database::{DropOutcome, Ident},
    error::Result,
    status,
    validate::validate,
};

/// Applies the reclaim policy of a ChatTenant being deleted.
pub(super) async fn cleanup(
    ct: Arc<ChatTenant>,
    ctx: &Context,
    api: &Api<ChatTenant>,
) -> Result<Action> {
    let db_name = &ct.spec.database.name;
    let shared = ct.spec.database.shared_database().map(String::from);
    if ct.spec.database.reclaim_policy == ReclaimPolicy::Retain {
        let event = Event::DatabaseRetained {
            database: db_name.clone(),
            shared,
        };
        ctx.publish(&ct, event).await;
        return Ok(Action::await_change());
    }
    if Ident::new(db_name).is_err() {
        // An invalid name was never provisioned.
        return Ok(Action::await_change());
    }
    match drop_database(ctx, &ct).await {
        Ok(DropOutcome {
            left_alone: Some(why),
            ..
        }) => {
            let why = why.to_string();
            ctx.publish(&ct, Event::DatabaseLeftAlone { why }).await;
            Ok(Action::await_change())
        }
        Ok(outcome) => {
            ctx.metrics
                .ddl_statements
                .inc_by(outcome.executed.len() as u64);
            let event = Event::DatabaseDropped {
                database: db_name.clone(),
                shared,
            };
            ctx.publish(&ct, event).await;
            Ok(Action::await_change())
        }
        Err(e) => {
            let message = format!(
                "deletion waits: cannot drop {} {db_name} ({e}); the ChatTenant stays until the server is reachable. To keep the data instead, set spec.database.reclaimPolicy to Retain",
                if shared.is_some() {
                    "schema"
                } else {
                    "database"
                }
            );
            // The cached tenant carries no status (`cache::slim_tenant`):
            // the condition goes onto the stored one, if it is still there.
            if let Some(stored) = fresh_tenant(api, &ct).await? {
                let new = deletion_blocked(&stored, &message);
                ctx.write_status(api, &stored, &new).await?;
            }
            ctx.publish(&ct, Event::DeletionBlocked { message }).await;
            Err(e)
        }
    }
}

async fn drop_database(ctx: &Context, ct: &ChatTenant) -> Result<DropOutcome> {
    let t = validate(ct).map_err(ServerSecretError::InvalidSpec)?;
    let server = load_server(ctx, &t).await?;
    Ok(ctx.databases.drop_tenant(&server, &t.database).await?)
}

/// The status while deletion waits for the server. Pure (but for the clock).
fn deletion_blocked(ct: &ChatTenant, message: &str) -> crate::crd::ChatTenantStatus {
    let generation = ct.metadata.generation.unwrap_or(0);
    let mut new = ct.status.as_deref().cloned().unwrap_or_default();
    status::set_condition(
        &mut new.conditions,
        status::types::DATABASE_READY,
        false,
        "DeletionBlocked",
        message,
        generation,
        &now(),
    );
    status::set_condition(
        &mut new.conditions,
        status::types::READY,
        false,
        "Deleting",
        "see condition DatabaseReady",
        generation,
        &now(),
    );
    new
}
