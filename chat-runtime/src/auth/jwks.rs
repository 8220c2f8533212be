//! The tenant's JSON Web Key Set, from a file (read at start; a bad file
//! stops start-up) or an HTTPS URL (fetched at start, hourly, and when a
//! token names an unknown `kid`).
//!
//! A URL that fails never takes working keys away: the last keys loaded keep
//! serving, however old, and fetches are attempted at most every
//! [`MIN_REFETCH`] (one at a time; concurrent requests wait for it or use
//! what is cached), so an outage of the identity provider costs no request
//! a 10-second fetch.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::{Algorithm, DecodingKey, jwk::JwkSet};
use tokio::sync::{Mutex, RwLock};

use crate::config::JwksSource;

/// Keys older than this are refetched (and kept if the fetch fails).
pub const REFRESH_EVERY: Duration = Duration::from_secs(3600);
/// Fetches are attempted at most this often, whatever happens.
pub const MIN_REFETCH: Duration = Duration::from_secs(30);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BYTES: usize = 1 << 20;

/// The last fetch attempt.
#[derive(Default)]
struct Attempt {
    at: Option<Instant>,
    error: Option<String>,
}

/// Cached keys.
pub struct JwksCache {
    source: JwksSource,
    refresh_every: Duration,
    min_refetch: Duration,
    keys: RwLock<Option<(JwkSet, Instant)>>,
    attempt: Mutex<Attempt>,
}

impl JwksCache {
    /// A cache that has not loaded anything yet.
    pub fn new(source: JwksSource) -> Self {
        Self::with_timing(source, REFRESH_EVERY, MIN_REFETCH)
    }

    /// A cache with other refresh intervals (tests).
    pub fn with_timing(source: JwksSource, refresh_every: Duration, min_refetch: Duration) -> Self {
        Self {
            source,
            refresh_every,
            min_refetch,
            keys: RwLock::new(None),
            attempt: Mutex::new(Attempt::default()),
        }
    }

    /// Whether the keys come from a file.
    pub fn is_file(&self) -> bool {
        matches!(self.source, JwksSource::File(_))
    }

    async fn load(&self) -> Result<JwkSet, String> {
        let (text, what) = match &self.source {
            JwksSource::File(path) => (
                tokio::fs::read_to_string(path).await.map_err(|e| {
                    format!(
                        "CHAT_EXTERNAL_JWKS_FILE: cannot read {}: {e}",
                        path.display()
                    )
                })?,
                format!("CHAT_EXTERNAL_JWKS_FILE: {}", path.display()),
            ),
            JwksSource::Url(url) => (fetch(url).await?, format!("JWKS {url}")),
        };
        let set: JwkSet = serde_json::from_str(&text)
            .map_err(|e| format!("{what} is not a JSON Web Key Set: {e}"))?;
        if !set.keys.iter().any(|k| DecodingKey::from_jwk(k).is_ok()) {
            return Err(format!("{what} has no usable RS256/ES256 key"));
        }
        Ok(set)
    }

    /// Fetches the keys now (`force`), or when the last attempt is at least
    /// `min_refetch` old. Waits for a fetch already in flight instead of
    /// starting another. On failure the cached keys stay.
    pub async fn refresh(&self, force: bool) -> Result<(), String> {
        let mut attempt = self.attempt.lock().await;
        if !force
            && let Some(at) = attempt.at
            && at.elapsed() < self.min_refetch
        {
            return match &attempt.error {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            };
        }
        attempt.at = Some(Instant::now());
        match self.load().await {
            Ok(set) => {
                *self.keys.write().await = Some((set, Instant::now()));
                attempt.error = None;
                Ok(())
            }
            Err(e) => {
                if !force {
                    tracing::warn!(error = %e, "JWKS refresh failed; the cached keys keep serving");
                }
                attempt.error = Some(e.clone());
                Err(e)
            }
        }
    }

    fn find(
        set: &JwkSet,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Option<Result<DecodingKey, String>> {
        let jwk = match kid {
            Some(kid) => set.find(kid)?,
            None => {
                let mut candidates = set.keys.iter().filter(|k| {
                    k.common
                        .key_algorithm
                        .is_none_or(|a| format!("{a:?}") == format!("{alg:?}"))
                });
                let first = candidates.next()?;
                if candidates.next().is_some() {
                    return Some(Err(
                        "the token has no kid and the JWKS has several keys".into()
                    ));
                }
                first
            }
        };
        Some(DecodingKey::from_jwk(jwk).map_err(|e| format!("JWKS key unusable: {e}")))
    }

    /// The key for `kid`. Stale keys or an unknown `kid` trigger a refetch
    /// (rate-limited); when that fails, the cached keys still answer.
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, String> {
        if let Some((set, at)) = &*self.keys.read().await
            && let Some(found) = Self::find(set, kid, alg)
            && at.elapsed() < self.refresh_every
        {
            return found;
        }
        let refreshed = self.refresh(false).await;
        match &*self.keys.read().await {
            Some((set, _)) => Self::find(set, kid, alg).unwrap_or_else(|| match refreshed {
                Ok(()) => Err(format!("no key {kid:?} in the JWKS")),
                Err(e) => Err(format!("no key {kid:?} in the cached JWKS ({e})")),
            }),
            None => Err(match refreshed {
                Ok(()) => "the JWKS could not be loaded".into(),
                Err(e) => format!("the JWKS could not be loaded: {e}"),
            }),
        }
    }
}

async fn fetch(url: &str) -> Result<String, String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Empty<bytes_alias::Bytes>>(https);
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("bad JWKS URL {url}: {e}"))?;
    let request = http::Request::get(uri)
        .header("accept", "application/json")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let body = tokio::time::timeout(FETCH_TIMEOUT, async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("cannot fetch JWKS {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("JWKS {url} answered {}", response.status()));
        }
        Limited::new(response.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading JWKS {url}: {e}"))
    })
    .await
    .map_err(|_| {
        format!(
            "JWKS {url} did not answer within {}s",
            FETCH_TIMEOUT.as_secs()
        )
    })??
    .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| format!("JWKS {url} is not UTF-8"))
}

mod bytes_alias {
    pub use hyper::body::Bytes;
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };

    use jsonwebtoken::{EncodingKey, jwk::Jwk};

    use super::*;

    fn key_set() -> serde_json::Value {
        let key = EncodingKey::from_ec_pem(include_bytes!("../../tests/fixtures/ec-test-key.pem"))
            .unwrap();
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some("ec-1".into());
        serde_json::to_value(JwkSet { keys: vec![jwk] }).unwrap()
    }

    /// Serves the key set until `down` is set; counts requests.
    async fn provider(down: Arc<AtomicBool>, hits: Arc<AtomicUsize>) -> String {
        let set = key_set();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (set, down, hits) = (set.clone(), down.clone(), hits.clone());
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    if down.load(Ordering::SeqCst) {
                        Err(axum::http::StatusCode::SERVICE_UNAVAILABLE)
                    } else {
                        Ok(axum::Json(set))
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/jwks.json")
    }

    #[tokio::test]
    async fn an_outage_keeps_the_cached_keys_and_fetches_at_most_every_interval() {
        let (down, hits) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let url = provider(down.clone(), hits.clone()).await;
        let cache = JwksCache::with_timing(
            JwksSource::Url(url),
            Duration::from_millis(50),
            Duration::from_millis(400),
        );
        cache.refresh(true).await.unwrap();
        assert!(cache.key(Some("ec-1"), Algorithm::ES256).await.is_ok());
        assert_eq!(hits.load(Ordering::SeqCst), 1);

        // The provider goes down and the keys go stale: they keep serving.
        down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(450)).await;
        for _ in 0..20 {
            assert!(
                cache.key(Some("ec-1"), Algorithm::ES256).await.is_ok(),
                "stale keys still verify during an outage"
            );
        }
        assert_eq!(
            hits.load(Ordering::SeqCst),
            2,
            "twenty requests, one fetch attempt"
        );
        // An unknown kid does not hammer the provider either.
        assert!(cache.key(Some("nope"), Algorithm::ES256).await.is_err());
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        // After the interval, one new attempt; back up, fresh keys again.
        down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(cache.key(Some("ec-1"), Algorithm::ES256).await.is_ok());
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_bad_file_is_an_error_naming_the_variable() {
        let dir = std::env::temp_dir().join(format!("jwks-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.json");
        std::fs::write(&file, "{\"keys\": \"nope\"}").unwrap();
        let cache = JwksCache::new(JwksSource::File(file.clone()));
        let e = cache.refresh(true).await.unwrap_err();
        assert!(e.starts_with("CHAT_EXTERNAL_JWKS_FILE"), "{e}");
        std::fs::write(&file, "{\"keys\": []}").unwrap();
        let e = cache.refresh(true).await.unwrap_err();
        assert!(e.contains("no usable"), "{e}");
        let e = JwksCache::new(JwksSource::File(dir.join("missing.json")))
            .refresh(true)
            .await
            .unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
