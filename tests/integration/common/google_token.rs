//! A local stand-in for Google's OAuth2 token endpoint: it checks the signed JWT of a
//! service account (signature, audience, issuer, scope) with the account's public key,
//! and answers with an access token, or with `invalid_grant` as Google does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;

pub const EMAIL: &str = "smarthomed@test-project.iam.gserviceaccount.com";

/// Makes an RSA key pair with openssl; returns (private PEM, public PEM).
pub fn key_pair(dir: &Path) -> (String, String) {
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let made = Command::new("openssl")
        .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
        .arg(&private)
        .stderr(Stdio::null())
        .status()
        .expect("openssl (Debian package openssl; scripts/test installs it)");
    assert!(made.success());
    let exported = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(exported.success());
    (std::fs::read_to_string(private).unwrap(), std::fs::read_to_string(public).unwrap())
}

#[derive(Default)]
struct Inner {
    minted: usize,
    expires_in: u64,
}

#[derive(Clone)]
pub struct TokenServer {
    pub token_uri: String,
    inner: Arc<Mutex<Inner>>,
}

#[derive(serde::Deserialize)]
struct Grant {
    grant_type: String,
    assertion: String,
}

#[derive(serde::Deserialize)]
struct Claims {
    scope: String,
}

impl TokenServer {
    /// Accepts JWTs signed by the key whose public half is `public_pem`; hands out
    /// `token` valid for `expires_in` seconds.
    pub async fn start(public_pem: &str, token: &str, expires_in: u64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let token_uri = format!("http://{addr}/token");
        let inner = Arc::new(Mutex::new(Inner { minted: 0, expires_in }));
        let key = DecodingKey::from_rsa_pem(public_pem.as_bytes()).unwrap();
        let state = (key, token_uri.clone(), token.to_string(), inner.clone());
        let app = Router::new().route("/token", post(grant)).with_state(Arc::new(state));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { token_uri, inner }
    }

    pub fn minted(&self) -> usize {
        self.inner.lock().unwrap().minted
    }

    /// A service-account key file for this server, as the Cloud console makes them.
    pub fn key_file(&self, dir: &Path, private_pem: &str) -> PathBuf {
        let path = dir.join("service-account.json");
        let key = json!({
            "type": "service_account", "project_id": "test-project",
            "private_key": private_pem, "client_email": EMAIL, "client_id": "1",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": self.token_uri,
        });
        std::fs::write(&path, key.to_string()).unwrap();
        path
    }
}

type Shared = Arc<(DecodingKey, String, String, Arc<Mutex<Inner>>)>;

async fn grant(State(state): State<Shared>, Form(grant): Form<Grant>) -> Response {
    let (key, token_uri, token, inner) = &*state;
    let refuse = |description: &str| {
        (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant", "error_description": description})))
            .into_response()
    };
    if grant.grant_type != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        return refuse("Unsupported grant type");
    }
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[token_uri]);
    validation.set_issuer(&[EMAIL]);
    let Ok(claims) = jsonwebtoken::decode::<Claims>(&grant.assertion, key, &validation) else {
        return refuse("Invalid JWT Signature.");
    };
    if !claims.claims.scope.contains("https://www.googleapis.com/auth/firebase.database") {
        return refuse("Invalid scope");
    }
    let mut inner = inner.lock().unwrap();
    inner.minted += 1;
    Json(json!({"access_token": token, "expires_in": inner.expires_in, "token_type": "Bearer"})).into_response()
}
