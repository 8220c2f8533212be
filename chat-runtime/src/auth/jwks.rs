//! The tenant's JSON Web Key Set, from a file (read at start) or an HTTPS URL
//! (fetched at start, hourly, and when a token names an unknown `kid`, at
//! most every 30 seconds).

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::{Algorithm, DecodingKey, jwk::JwkSet};
use tokio::sync::RwLock;

use crate::config::JwksSource;

const REFRESH_EVERY: Duration = Duration::from_secs(3600);
const MIN_REFETCH: Duration = Duration::from_secs(30);
const MAX_BYTES: usize = 1 << 20;

/// Cached keys.
pub struct JwksCache {
    source: JwksSource,
    state: RwLock<Option<(JwkSet, Instant)>>,
}

impl JwksCache {
    /// A cache that has not loaded anything yet.
    pub fn new(source: JwksSource) -> Self {
        Self {
            source,
            state: RwLock::new(None),
        }
    }

    async fn load(&self) -> Result<JwkSet, String> {
        let text = match &self.source {
            JwksSource::File(path) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| format!("cannot read JWKS file {}: {e}", path.display()))?,
            JwksSource::Url(url) => fetch(url).await?,
        };
        serde_json::from_str(&text).map_err(|e| format!("the JWKS is not a JSON Web Key Set: {e}"))
    }

    /// Reloads the keys (`force`: even if loaded recently).
    pub async fn refresh(&self, force: bool) -> Result<(), String> {
        if !force
            && let Some((_, at)) = &*self.state.read().await
            && at.elapsed() < MIN_REFETCH
        {
            return Ok(());
        }
        let set = self.load().await?;
        *self.state.write().await = Some((set, Instant::now()));
        Ok(())
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

    /// The key for `kid` (refetching once when it is unknown or stale).
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, String> {
        let stale = match &*self.state.read().await {
            Some((set, at)) => {
                if let Some(found) = Self::find(set, kid, alg)
                    && at.elapsed() < REFRESH_EVERY
                {
                    return found;
                }
                true
            }
            None => true,
        };
        if stale {
            self.refresh(false).await?;
        }
        match &*self.state.read().await {
            Some((set, _)) => Self::find(set, kid, alg)
                .unwrap_or_else(|| Err(format!("no key {kid:?} in the JWKS"))),
            None => Err("the JWKS could not be loaded".into()),
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
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| format!("JWKS {url} did not answer within 10s"))?
        .map_err(|e| format!("cannot fetch JWKS {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("JWKS {url} answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading JWKS {url}: {e}"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| format!("JWKS {url} is not UTF-8"))
}

mod bytes_alias {
    pub use hyper::body::Bytes;
}
