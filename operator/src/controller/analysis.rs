//! The release analysis' I/O: scrapes `/metrics` of the candidate's and the
//! baseline slot's pods directly by pod IP (admin port 9090; no Prometheus),
//! keeps the last scrape of each pod in memory, and every
//! `spec.rollout.analysis.intervalSeconds` judges the events in between
//! with the pure [`crate::analysis::judge`].
//!
//! Memory only: after an operator restart (or a leader change) the first
//! reconcile takes a fresh scrape and the next judgement comes one interval
//! later; the runs of passes and failures are in `status.analysis` and
//! survive. A pod that cannot be scraped is left out of that interval (its
//! last scrape is kept); a pod that appeared since the last scrape counts
//! from zero (it started within the interval).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::Duration,
};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt, api::ListParams};

use super::Context;
use crate::{
    analysis::{self, Counters, Judgement},
    build::meta::ADMIN_PORT,
    crd::ChatTenantStatus,
    model::{Slot, Tenant},
    names::{selector_string, slot_selector},
};

/// Longest wait for one pod's `/metrics`.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest `/metrics` body read.
const MAX_BODY: usize = 4 << 20;

/// Last scrapes by pod name.
type PodScrapes = BTreeMap<String, Counters>;

/// One release's last scrape of both slots.
struct Taken {
    revision: String,
    at: i64,
    candidate: PodScrapes,
    baseline: PodScrapes,
}

/// The last scrape of every measured tenant (by namespace and name).
pub struct Scrapes {
    last: Mutex<HashMap<(String, String), Taken>>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Scrapes {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(SCRAPE_TIMEOUT));
        Self {
            last: Mutex::new(HashMap::new()),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }
}

/// Why one pod's `/metrics` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// Connecting or the request failed.
    #[error("GET {url}: {source}")]
    Request {
        /// The URL.
        url: String,
        /// The client error.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// No answer within [`SCRAPE_TIMEOUT`].
    #[error("GET {url}: no answer within {}s", SCRAPE_TIMEOUT.as_secs())]
    Timeout {
        /// The URL.
        url: String,
    },
    /// A status other than 200, or a body that could not be read.
    #[error("GET {url}: {what}")]
    Response {
        /// The URL.
        url: String,
        /// What was wrong.
        what: String,
    },
    /// The body is not the Prometheus text format.
    #[error("GET {url}: {source}")]
    Parse {
        /// The URL.
        url: String,
        /// The parser's error.
        #[source]
        source: analysis::counters::ParseError,
    },
}

impl Scrapes {
    /// The judgement of the interval that ends now, if one does: `None`
    /// while nothing is measured (no `spec.rollout.analysis`, no open
    /// release, after the rollback window), on the first scrape of a
    /// release, and until `intervalSeconds` have passed since the last
    /// judgement.
    pub(super) async fn judge(
        &self,
        ctx: &Context,
        t: &Tenant,
        status: Option<&ChatTenantStatus>,
        now: i64,
    ) -> Option<Judgement> {
        let key = (t.namespace.clone(), t.name.clone());
        let Some(targets) = analysis::targets(t, status, now) else {
            self.forget(&key);
            return None;
        };
        let spec = t.spec.rollout.analysis.as_ref()?;
        let due = self.with_last(&key, |last| {
            last.as_ref().is_none_or(|l| {
                l.revision != targets.revision || now - l.at >= spec.interval_seconds
            })
        });
        if !due {
            return None;
        }
        let candidate = self.scrape_slot(ctx, t, targets.candidate).await;
        let baseline = self.scrape_slot(ctx, t, targets.baseline).await;
        self.with_last(&key, |last| {
            let prev = last.take().filter(|l| l.revision == targets.revision);
            let (cand_scrapes, cand_window) = merge(prev.as_ref().map(|p| &p.candidate), candidate);
            let (base_scrapes, base_window) = merge(prev.as_ref().map(|p| &p.baseline), baseline);
            *last = Some(Taken {
                revision: targets.revision.clone(),
                at: now,
                candidate: cand_scrapes,
                baseline: base_scrapes,
            });
            // The first scrape of a release only starts the window.
            prev.map(|_| analysis::judge(spec, cand_window.as_ref(), base_window.as_ref()))
        })
    }

    fn forget(&self, key: &(String, String)) {
        if let Ok(mut last) = self.last.lock() {
            last.remove(key);
        }
    }

    fn with_last<R>(&self, key: &(String, String), f: impl FnOnce(&mut Option<Taken>) -> R) -> R {
        let mut map = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let mut entry = map.remove(key);
        let result = f(&mut entry);
        if let Some(e) = entry {
            map.insert(key.clone(), e);
        }
        result
    }

    /// Every listed pod of `slot`: its counters, or `None` when it could not
    /// be scraped (logged).
    async fn scrape_slot(
        &self,
        ctx: &Context,
        t: &Tenant,
        slot: Slot,
    ) -> BTreeMap<String, Option<Counters>> {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &t.namespace);
        let selector = selector_string(&slot_selector(t, slot));
        let list = match pods.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(error = %e, slot = slot.as_str(), "analysis: cannot list the slot's pods");
                return BTreeMap::new();
            }
        };
        let mut out = BTreeMap::new();
        for pod in list {
            let name = pod.name_any();
            let ip = pod
                .status
                .as_ref()
                .filter(|s| s.phase.as_deref() == Some("Running"))
                .and_then(|s| s.pod_ip.clone());
            let Some(ip) = ip else { continue };
            let url = format!("http://{ip}:{ADMIN_PORT}/metrics");
            let counters = match self.scrape(&url).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, pod = %name, "analysis: cannot scrape the pod");
                    None
                }
            };
            out.insert(name, counters);
        }
        out
    }

    async fn scrape(&self, url: &str) -> Result<Counters, ScrapeError> {
        let uri: http::Uri =
            url.parse()
                .map_err(|e: http::uri::InvalidUri| ScrapeError::Response {
                    url: url.into(),
                    what: e.to_string(),
                })?;
        let response = tokio::time::timeout(SCRAPE_TIMEOUT, self.client.get(uri))
            .await
            .map_err(|_| ScrapeError::Timeout { url: url.into() })?
            .map_err(|source| ScrapeError::Request {
                url: url.into(),
                source,
            })?;
        if response.status() != http::StatusCode::OK {
            return Err(ScrapeError::Response {
                url: url.into(),
                what: format!("status {}", response.status()),
            });
        }
        let body = tokio::time::timeout(
            SCRAPE_TIMEOUT,
            Limited::new(response.into_body(), MAX_BODY).collect(),
        )
        .await
        .map_err(|_| ScrapeError::Timeout { url: url.into() })?
        .map_err(|e| ScrapeError::Response {
            url: url.into(),
            what: format!("reading the body: {e}"),
        })?
        .to_bytes();
        Counters::parse(&String::from_utf8_lossy(&body)).map_err(|source| ScrapeError::Parse {
            url: url.into(),
            source,
        })
    }
}

/// The slot's new last scrapes and its events since `prev`: a pod scraped
/// now counts what it gained since its last scrape (all of it when it is
/// new); a pod not scraped now keeps its last scrape and counts nothing; a
/// pod no longer listed is dropped. The window is `None` when no pod was
/// scraped. Pure.
fn merge(
    prev: Option<&PodScrapes>,
    now: BTreeMap<String, Option<Counters>>,
) -> (PodScrapes, Option<Counters>) {
    let mut kept = PodScrapes::new();
    let mut window: Option<Counters> = None;
    for (pod, scraped) in now {
        let before = prev.and_then(|p| p.get(&pod));
        match scraped {
            Some(c) => {
                let gained = before.map_or_else(|| c.clone(), |b| c.since(b));
                window.get_or_insert_with(Counters::default).add(&gained);
                kept.insert(pod, c);
            }
            None => {
                if let Some(b) = before {
                    kept.insert(pod, b.clone());
                }
            }
        }
    }
    (kept, window)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(acked: f64, faults: f64) -> Counters {
        Counters {
            acked,
            send_errors: faults,
            send_faults: faults,
            ..Counters::default()
        }
    }

    #[test]
    fn merging_scrapes_counts_gains_new_pods_and_skips_unscraped_ones() {
        let prev: PodScrapes = [
            ("a".to_string(), c(10.0, 1.0)),
            ("b".to_string(), c(5.0, 0.0)),
            ("gone".to_string(), c(3.0, 3.0)),
        ]
        .into();
        let now: BTreeMap<String, Option<Counters>> = [
            ("a".to_string(), Some(c(15.0, 2.0))),
            ("b".to_string(), None),
            ("new".to_string(), Some(c(4.0, 0.0))),
        ]
        .into();
        let (kept, window) = merge(Some(&prev), now);
        let window = window.unwrap();
        assert_eq!((window.acked, window.send_faults), (5.0 + 4.0, 1.0));
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["a", "b", "new"]);
        assert_eq!(
            kept["b"],
            c(5.0, 0.0),
            "an unscraped pod keeps its last scrape"
        );
        let (_, none) = merge(Some(&prev), [("a".to_string(), None)].into());
        assert_eq!(none, None, "nothing scraped: no window");
    }
}
