//! The operator's own view of a tenant: [`Tenant`] (the checked, defaulted
//! spec that every pure step reads) and [`Slot`] (one of the two runtime
//! slots). [`crate::validate`] is the only producer of a `Tenant`; the steps
//! after it never look at the raw `ChatTenant` spec again.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::{crd::ChatTenantSpec, database::TenantDatabase};

/// One of the two runtime slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slot {
    /// `<name>-blue`.
    Blue,
    /// `<name>-green`.
    Green,
}

impl Slot {
    /// Lowercase name used in object names and the `chorus.dev/slot` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Blue => "blue",
            Slot::Green => "green",
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::Blue => Slot::Green,
            Slot::Green => Slot::Blue,
        }
    }

    /// Parses `blue`/`green`.
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "blue" => Some(Slot::Blue),
            "green" => Some(Slot::Green),
            _ => None,
        }
    }
}

/// The checked view of one ChatTenant.
#[derive(Clone, Debug, PartialEq)]
pub struct Tenant {
    /// `metadata.name`; children are named `<name>`, `<name>-blue`, ...
    pub name: String,
    /// Namespace of the ChatTenant and all its children.
    pub namespace: String,
    /// `metadata.generation`.
    pub generation: i64,
    /// The spec, with schema defaults applied.
    pub spec: ChatTenantSpec,
    /// Database and role to provision.
    pub database: TenantDatabase,
    /// Controller owner reference pointing at the ChatTenant.
    pub owner: OwnerReference,
    /// The slot that serves stable traffic.
    pub stable_slot: Slot,
}
