//! The one list of child kinds. [`Children::fold`] visits every kind the
//! operator owns, in one fixed order, and the three places that used to list
//! them each follow it:
//!
//! - `apply` server-side applies the built objects of each kind, then prunes
//!   the objects of each kind that the spec no longer asks for;
//! - the controller watches each kind (`Controller::owns`), so a hand edit or
//!   deletion of a child reconciles its tenant at once.
//!
//! A new kind is one field of [`Children`], one `impl ChildKind` and one line
//! in [`Children::fold`]: it cannot be applied without being pruned, or
//! pruned without being watched. The fields are read nowhere else, so a
//! field left out of the list is dead code (a warning, an error in CI).
//!
//! Two kinds are special, and the list says so in one place each:
//! - `Secret`: watched, but applied by the database and auth steps (their
//!   content comes from there) and never pruned (a deleted Secret would lose
//!   the only copy of a password or key), so [`ChildKind::PRUNED`] is false.
//! - Gateway API `HTTPRoute`: a dynamic kind that may not be served, so it is
//!   applied and pruned only when it is ([`KindFold::http_route`]) and not
//!   watched (a watch of a kind the apiserver does not serve fails).

use std::fmt::Debug;

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::Deployment,
        autoscaling::v2::HorizontalPodAutoscaler,
        batch::v1::CronJob,
        core::v1::{Secret, Service},
        networking::v1::{Ingress, NetworkPolicy},
        policy::v1::PodDisruptionBudget,
    },
};
use kube::{Resource, core::DynamicObject};
use serde::{Serialize, de::DeserializeOwned};

/// A typed kind of child object.
pub trait ChildKind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// Whether objects of this kind that the spec no longer asks for are
    /// deleted.
    const PRUNED: bool = true;

    /// Whether the objects of this kind are applied one after another, in
    /// the order built, rather than at once.
    const APPLIED_IN_ORDER: bool = false;
}

/// The stable slot's Deployment is built first and applied first: an abort
/// or rollback scales it up before the other slot down, and when its apply
/// fails the other slot is left as it was (never both at zero).
impl ChildKind for Deployment {
    const APPLIED_IN_ORDER: bool = true;
}
impl ChildKind for Service {}
impl ChildKind for PodDisruptionBudget {}
impl ChildKind for NetworkPolicy {}
impl ChildKind for HorizontalPodAutoscaler {}
impl ChildKind for Ingress {}
impl ChildKind for CronJob {}
impl ChildKind for Secret {
    const PRUNED: bool = false;
}

/// Something done once per child kind, in the order of [`Children::fold`]
/// (a fold, so a builder such as `Controller` can be threaded through).
pub trait KindFold<'c>: Sized {
    /// Visits kind `K` with its built objects (none for `Secret`).
    fn kind<K: ChildKind>(self, built: &'c [K]) -> Self;
    /// Visits the Gateway API HTTPRoute, built or not.
    fn http_route(self, built: Option<&'c DynamicObject>) -> Self;
}

/// Every child object the spec asks for. Secrets are not here: their
/// content comes from the database and auth steps, which apply them.
/// `Children::default()` holds no object; folding it visits every kind.
#[derive(Clone, Debug, Default)]
pub struct Children {
    /// `<name>-blue`, `<name>-green`.
    pub(crate) deployments: Vec<Deployment>,
    /// `<name>`, `<name>-blue`, `<name>-green`, `<name>-preview`.
    pub(crate) services: Vec<Service>,
    /// `<name>`.
    pub(crate) pdb: Option<PodDisruptionBudget>,
    /// `<name>-default-deny`, `<name>-allow` when isolation is on.
    pub(crate) network_policies: Vec<NetworkPolicy>,
    /// `<name>` when autoscaling is on.
    pub(crate) hpa: Option<HorizontalPodAutoscaler>,
    /// `<name>` when exposed without a gateway.
    pub(crate) ingress: Option<Ingress>,
    /// `<name>` when exposed through a gateway.
    pub(crate) http_route: Option<DynamicObject>,
    /// `<name>`, the backup CronJob, when `spec.backup` is set.
    pub(crate) backup: Option<CronJob>,
}

impl Children {
    /// The one list: visits every child kind with its built objects, in the
    /// order they are applied, pruned and watched.
    pub fn fold<'c, F: KindFold<'c>>(&'c self, f: F) -> F {
        f.kind(&self.deployments)
            .kind(&self.services)
            .kind(self.pdb.as_slice())
            .kind(&self.network_policies)
            .kind(self.hpa.as_slice())
            .kind(self.ingress.as_slice())
            .kind(self.backup.as_slice())
            .kind::<Secret>(&[])
            .http_route(self.http_route.as_ref())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records `Kind/count` of each visit, `+` for pruned kinds.
    #[derive(Default)]
    pub(crate) struct Visits(pub(crate) Vec<String>);

    impl<'c> KindFold<'c> for Visits {
        fn kind<K: ChildKind>(mut self, built: &'c [K]) -> Self {
            let pruned = if K::PRUNED { "+" } else { "" };
            self.0
                .push(format!("{}/{}{pruned}", K::kind(&()), built.len()));
            self
        }
        fn http_route(mut self, built: Option<&'c DynamicObject>) -> Self {
            self.0
                .push(format!("HTTPRoute/{}", usize::from(built.is_some())));
            self
        }
    }

    #[test]
    fn the_list_of_kinds_in_order() {
        assert_eq!(
            Children::default().fold(Visits::default()).0,
            [
                "Deployment/0+",
                "Service/0+",
                "PodDisruptionBudget/0+",
                "NetworkPolicy/0+",
                "HorizontalPodAutoscaler/0+",
                "Ingress/0+",
                "CronJob/0+",
                "Secret/0",
                "HTTPRoute/0",
            ]
        );
    }
}
