//! OAuth2 access tokens for Google's APIs, minted from a service-account key the way
//! Google's own libraries do: a JWT naming the account, the scopes and the key's own
//! `token_uri`, signed with the key (RS256), exchanged at `token_uri` for an access
//! token. Tokens are cached and replaced [`REFRESH_MARGIN`] before they expire, or at
//! once when a service refuses one. Neither the key nor a token is ever logged.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::info;

use super::StoreError;

/// A token is replaced this long before it expires.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Scopes of the Realtime Database.
pub const DATABASE_SCOPES: &[&str] =
    &["https://www.googleapis.com/auth/firebase.database", "https://www.googleapis.com/auth/userinfo.email"];
/// Scopes of Firestore.
pub const FIRESTORE_SCOPES: &[&str] = &["https://www.googleapis.com/auth/datastore"];
const LIFETIME_SECS: u64 = 3600;

/// Where access tokens come from.
pub trait AccessTokens: Send + Sync + 'static {
    /// A valid token, or `None` where none is needed (an emulator).
    fn token(&self) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
    /// The database refused the last token: the next call must fetch a new one.
    fn invalidate(&self);
}

/// A fixed token, or none.
pub struct FixedToken(pub Option<String>);

impl AccessTokens for FixedToken {
    async fn token(&self) -> Result<Option<String>, StoreError> {
        Ok(self.0.clone())
    }

    fn invalidate(&self) {}
}

/// Shared tokens: one cache for every holder.
impl<A: AccessTokens> AccessTokens for std::sync::Arc<A> {
    async fn token(&self) -> Result<Option<String>, StoreError> {
        A::token(self).await
    }

    fn invalidate(&self) {
        A::invalidate(self)
    }
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: String,
    private_key: String,
    token_uri: String,
}

/// Checks that `path` holds a usable service-account key, without using it.
pub fn check_key_file(path: &Path) -> Result<(), StoreError> {
    read_key_file(path).map(drop)
}

fn read_key_file(path: &Path) -> Result<(KeyFile, EncodingKey), StoreError> {
    let bad = |reason: String| StoreError::Credentials { path: path.to_owned(), reason };
    let text = std::fs::read_to_string(path).map_err(|err| bad(format!("cannot read it: {err}")))?;
    let file: KeyFile = serde_json::from_str(&text).map_err(|err| {
        bad(format!(
            "not a service-account key (JSON with client_email, private_key, token_uri): {}",
            err.classify_message()
        ))
    })?;
    if file.kind != "service_account" {
        return Err(bad(format!("its type is {:?}, not \"service_account\"", file.kind)));
    }
    let key = EncodingKey::from_rsa_pem(file.private_key.as_bytes())
        .map_err(|_| bad("private_key is not an RSA private key in PEM".into()))?;
    Ok((file, key))
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: String,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

pub struct ServiceAccountTokens {
    http: reqwest::Client,
    email: String,
    token_uri: String,
    key: EncodingKey,
    scopes: String,
    cached: Mutex<Option<(String, Instant)>>,
}

impl ServiceAccountTokens {
    /// Reads a service-account key file (JSON, as the Google Cloud console makes it).
    pub fn from_file(path: &Path, scopes: &[&str]) -> Result<Self, StoreError> {
        let (file, key) = read_key_file(path)?;
        let bad = |reason: String| StoreError::Credentials { path: path.to_owned(), reason };
        crate::tls::use_ring();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|err| bad(err.without_url().to_string()))?;
        Ok(Self {
            http,
            email: file.client_email,
            token_uri: file.token_uri,
            key,
            scopes: scopes.join(" "),
            cached: Mutex::new(None),
        })
    }

    async fn mint(&self) -> Result<(String, Instant), StoreError> {
        let failed = |status: Option<u16>, message: String| StoreError::Remote {
            operation: format!("get an access token from {}", self.token_uri),
            status,
            message,
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let claims = Claims {
            iss: &self.email,
            scope: self.scopes.clone(),
            aud: &self.token_uri,
            iat: now,
            exp: now + LIFETIME_SECS,
        };
        let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|err| failed(None, format!("cannot sign the request: {err}")))?;
        let asked = Instant::now();
        let response = self
            .http
            .post(&self.token_uri)
            .form(&[("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion.as_str())])
            .send()
            .await
            .map_err(|err| failed(None, err.without_url().to_string()))?;
        let status = response.status();
        let text = response.text().await.map_err(|err| failed(Some(status.as_u16()), err.without_url().to_string()))?;
        if !status.is_success() {
            let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let message = match (json["error"].as_str(), json["error_description"].as_str()) {
                (Some(error), Some(description)) => format!("{error}: {description}"),
                (Some(error), None) => error.to_owned(),
                _ => text.chars().take(200).collect(),
            };
            return Err(failed(Some(status.as_u16()), format!("HTTP {status}: {message}")));
        }
        let token: TokenResponse = serde_json::from_str(&text)
            .map_err(|err| failed(Some(status.as_u16()), format!("unexpected answer: {}", err.classify_message())))?;
        info!(account = self.email, expires_in_secs = token.expires_in, "access token minted");
        Ok((token.access_token, asked + Duration::from_secs(token.expires_in)))
    }
}

/// serde_json's message without the offending input, which may hold a key.
trait ClassifyMessage {
    fn classify_message(&self) -> String;
}

impl ClassifyMessage for serde_json::Error {
    fn classify_message(&self) -> String {
        format!("{:?} error at line {} column {}", self.classify(), self.line(), self.column())
    }
}

impl AccessTokens for ServiceAccountTokens {
    async fn token(&self) -> Result<Option<String>, StoreError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, expires)) = cached.as_ref()
            && expires.saturating_duration_since(Instant::now()) > REFRESH_MARGIN
        {
            return Ok(Some(token.clone()));
        }
        let (token, expires) = self.mint().await?;
        *cached = Some((token.clone(), expires));
        Ok(Some(token))
    }

    fn invalidate(&self) {
        if let Ok(mut cached) = self.cached.try_lock() {
            *cached = None;
        }
    }
}
