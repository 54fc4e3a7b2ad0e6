//! Sign-in through an OpenID Connect provider: the authorization code flow with PKCE (S256)
//! and a nonce, the ID token verified against the keys the provider publishes.
//!
//! Nothing is stored while a sign-in runs. The browser holds one random secret in a cookie of
//! latchkey's (never in a URL); the `state` sent to the provider, the PKCE verifier and the
//! nonce are each derived from it with SHA-256 and a label. So the callback can check the
//! state and finish the exchange on any instance, and what travels in URLs (the state, the
//! code) reveals neither the verifier nor the nonce.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RequestTokenError, Scope, TokenResponse,
};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::Identity;
use crate::config::OidcConfig;
use crate::error::{Error, Result};
use crate::secret;

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// How long the provider's metadata and keys are used before they are read again (sooner
/// after an ID token fails verification: the provider may have rotated its keys).
const METADATA_TTL: Duration = Duration::from_secs(600);
/// Each request to the provider (discovery, token, userinfo).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Oidc {
    config: OidcConfig,
    http: openidconnect::reqwest::Client,
    provider: Mutex<Option<(Arc<Provider>, Instant)>>,
}

struct Provider {
    client: Client,
    userinfo: Option<String>,
}

impl Oidc {
    pub fn new(config: OidcConfig) -> std::result::Result<Self, String> {
        // No redirects: the provider's endpoints answer directly (and following them would let
        // a provider send latchkey's requests anywhere).
        let http = openidconnect::reqwest::ClientBuilder::new()
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot set up the OpenID Connect client: {e}"))?;
        Ok(Oidc {
            config,
            http,
            provider: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// The provider's metadata and keys, read at the first sign-in and every
    /// [`METADATA_TTL`] after (latchkey starts while the provider is away).
    async fn provider(&self) -> Result<Arc<Provider>> {
        if let Some((p, at)) = self.lock().as_ref()
            && at.elapsed() < METADATA_TTL
        {
            return Ok(p.clone());
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| {
            tracing::error!(error = %e, "oidc.issuer is not a URL");
            Error::IdentityProvider
        })?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| {
                let cause = causes(&e);
                if matches!(e, openidconnect::DiscoveryError::Validation(_)) {
                    tracing::error!(issuer = %self.config.issuer, error = %cause, "OpenID Connect discovery: the provider's metadata does not match oidc.issuer, which must be exactly its \"issuer\" (a trailing slash included)");
                } else {
                    tracing::warn!(issuer = %self.config.issuer, error = %cause, "OpenID Connect discovery failed");
                }
                Error::IdentityProvider
            })?;
        let userinfo = metadata.userinfo_endpoint().map(|u| u.url().to_string());
        let redirect = RedirectUrl::new(self.config.redirect_url.clone()).map_err(|e| {
            tracing::error!(error = %e, "oidc.redirect_url is not a URL");
            Error::IdentityProvider
        })?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            self.config.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect);
        let provider = Arc::new(Provider { client, userinfo });
        *self.lock() = Some((provider.clone(), Instant::now()));
        Ok(provider)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Arc<Provider>, Instant)>> {
        self.provider.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where to send the browser whose cookie holds `secret`, to come back to `next`.
    pub async fn authorize_url(&self, secret: &str, next: &str) -> Result<String> {
        let provider = self.provider().await?;
        let verifier = PkceCodeVerifier::new(derive(secret, "pkce"));
        let state = state_for(secret, next);
        let nonce = derive(secret, "nonce");
        let mut request = provider
            .client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .set_pkce_challenge(PkceCodeChallenge::from_code_verifier_sha256(&verifier));
        for scope in &self.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        Ok(request.url().0.to_string())
    }

    /// Exchanges the provider's code for tokens and returns the verified ID token's claims,
    /// with the user name and groups claims taken from the userinfo endpoint when the ID token
    /// lacks them.
    pub async fn finish(&self, secret: &str, code: &str) -> Result<Map<String, Value>> {
        let provider = self.provider().await?;
        let request = provider
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| {
                tracing::error!(error = %e, "the provider names no token endpoint");
                Error::IdentityProvider
            })?;
        let tokens = request
            .set_pkce_verifier(PkceCodeVerifier::new(derive(secret, "pkce")))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                // The code: used already, expired, or not this browser's.
                RequestTokenError::ServerResponse(r)
                    if matches!(r.error(), openidconnect::core::CoreErrorResponseType::InvalidGrant) =>
                {
                    tracing::info!(error = %r.error(), "the provider refused the code");
                    Error::bad_request(
                        "This sign-in was already completed or took too long. Sign in again.",
                    )
                }
                // latchkey itself: its client id or secret, most likely.
                RequestTokenError::ServerResponse(r) => {
                    tracing::error!(error = %r.error(), description = r.error_description().map(String::as_str).unwrap_or(""), "the provider refused latchkey's token request: check oidc.client_id and the client secret");
                    Error::IdentityProvider
                }
                e => {
                    tracing::warn!(error = %causes(&e), "token request to the provider failed");
                    Error::IdentityProvider
                }
            })?;
        let Some(id_token) = tokens.id_token() else {
            tracing::warn!("the provider's token response has no ID token");
            return Err(Error::IdentityProvider);
        };
        let verified = id_token.claims(
            &provider.client.id_token_verifier(),
            &Nonce::new(derive(secret, "nonce")),
        );
        if let Err(e) = verified {
            tracing::warn!(error = %e, "the provider's ID token did not verify");
            // Read the keys again next time: they may have been rotated.
            *self.lock() = None;
            return Err(Error::IdentityProvider);
        }
        // Verified above; the claims latchkey reads may be any (the configured names).
        let mut claims = jwt_payload(&id_token.to_string()).ok_or_else(|| {
            tracing::warn!("the provider's ID token has no readable payload");
            Error::IdentityProvider
        })?;
        let wanted = [
            Some(self.config.username_claim.as_str()),
            self.config.groups_claim.as_deref(),
        ];
        if let Some(url) = &provider.userinfo
            && wanted.iter().flatten().any(|c| !claims.contains_key(*c))
        {
            let extra = self
                .userinfo(url, tokens.access_token().secret(), claims.get("sub"))
                .await?;
            for claim in wanted.into_iter().flatten() {
                if !claims.contains_key(claim)
                    && let Some(v) = extra.get(claim)
                {
                    claims.insert(claim.to_owned(), v.clone());
                }
            }
        }
        if let Some(claim) = self.config.groups_claim.as_deref()
            && !claims.contains_key(claim)
        {
            tracing::warn!(
                claim,
                "the provider sent no groups claim: many providers send it only for a scope of its own (add it to oidc.scopes), or set oidc.groups_claim = \"\""
            );
        }
        Ok(claims)
    }

    /// The userinfo endpoint's claims, for the subject the ID token names.
    async fn userinfo(
        &self,
        url: &str,
        access_token: &str,
        sub: Option<&Value>,
    ) -> Result<Map<String, Value>> {
        let failed = |what: &str| {
            tracing::warn!(what, "userinfo request to the provider failed");
            Error::IdentityProvider
        };
        let response = self
            .http
            .get(url)
            .bearer_auth(access_token)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|_| failed("no answer"))?;
        if !response.status().is_success() {
            return Err(failed("status"));
        }
        let bytes = response.bytes().await.map_err(|_| failed("no body"))?;
        let body: Map<String, Value> =
            serde_json::from_slice(&bytes).map_err(|_| failed("not JSON"))?;
        // The userinfo response belongs to the ID token's subject or to nobody (OpenID Connect
        // Core, 5.3.2).
        if sub.is_none() || body.get("sub") != sub {
            return Err(failed("another subject"));
        }
        Ok(body)
    }
}

/// The `state` sent to the provider: the page to come back to, and a MAC of it under the
/// browser's secret.
fn state_for(secret: &str, next: &str) -> String {
    format!(
        "{}.{}",
        derive(secret, &format!("state\0{next}")),
        URL_SAFE_NO_PAD.encode(next)
    )
}

/// An error with its causes, for the log ("error sending request: ...: connection refused").
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The page to come back to, when `state` (as the provider returned it) was made for the
/// browser's `secret`.
pub fn check_state(secret: &str, state: &str) -> Option<String> {
    let (_, encoded) = state.split_once('.')?;
    let next = String::from_utf8(URL_SAFE_NO_PAD.decode(encoded).ok()?).ok()?;
    secret::constant_time_eq(state.as_bytes(), state_for(secret, &next).as_bytes()).then_some(next)
}

/// `label`'s value for this secret: 43 base64url characters (also a valid PKCE verifier).
fn derive(secret: &str, label: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"latchkey-oidc\0");
    h.update(label.as_bytes());
    h.update(b"\0");
    h.update(secret.as_bytes());
    URL_SAFE_NO_PAD.encode(h.finalize())
}

fn jwt_payload(jwt: &str) -> Option<Map<String, Value>> {
    let payload = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// Who the claims say the user is: the provider's subject, the user name claim (lower-cased)
/// and the groups claim (names latchkey cannot use are left out). Refused, with a message for
/// the person, when the name is missing or unusable (or an email address the provider has not
/// verified), or the user is in none of the allowed groups.
pub fn identity_from_claims(
    claims: &Map<String, Value>,
    config: &OidcConfig,
) -> std::result::Result<(Identity, String), String> {
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("The sign-in provider did not say who you are (no \"sub\").")?
        .to_owned();
    let claim = &config.username_claim;
    if claim == "email" && claims.get("email_verified") != Some(&Value::Bool(true)) {
        return Err(
            "Your email address at the sign-in provider is not verified, so it cannot be your user name here.".into(),
        );
    }
    let raw = claims.get(claim).and_then(Value::as_str).ok_or_else(|| {
        format!("Your account at the sign-in provider has no {claim:?} to use as your user name.")
    })?;
    let name = super::external_name(raw).ok_or_else(|| {
        format!(
            "Your user name at the sign-in provider ({claim:?}) cannot be used here: latchkey's names are 1 to 64 letters, digits, '.', '_', '-' or '@'."
        )
    })?;
    let groups = match config.groups_claim.as_ref().and_then(|c| claims.get(c)) {
        Some(Value::Array(list)) => super::external_groups(list.iter().filter_map(Value::as_str)),
        Some(Value::String(g)) => super::external_groups(std::iter::once(g.as_str())),
        _ => vec![],
    };
    if !config.admits(&groups) {
        return Err(format!(
            "{name} is not in a group that may use this service. Ask an administrator to add you to one."
        ));
    }
    Ok((Identity { name, groups }, subject))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::GroupName;
    use serde_json::json;

    fn config(allowed: &[&str]) -> OidcConfig {
        OidcConfig {
            issuer: "https://id.example.org".into(),
            client_id: "latchkey".into(),
            client_secret: None,
            redirect_url: "https://share.example.org/hub/oauth_callback".into(),
            scopes: vec![],
            username_claim: "preferred_username".into(),
            groups_claim: Some("groups".into()),
            allowed_groups: allowed
                .iter()
                .map(|g| GroupName::parse(g).unwrap())
                .collect(),
            display_name: "Example".into(),
            session_max_age: 3600,
            logout_url: None,
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_name_is_lower_cased_and_groups_are_kept_when_usable() {
        let (id, sub) = identity_from_claims(
            &claims(json!({
                "sub": "1234",
                "preferred_username": "Nina",
                "groups": ["/physics", "lab", "has space", "lab"],
            })),
            &config(&[]),
        )
        .unwrap();
        assert_eq!(sub, "1234");
        assert_eq!(id.name.as_str(), "nina");
        let groups: Vec<&str> = id.groups.iter().map(|g| g.as_str()).collect();
        assert_eq!(groups, ["lab", "physics"], "Keycloak's leading '/' dropped");
    }

    #[test]
    fn a_missing_or_unusable_name_is_refused_with_a_reason() {
        let e = identity_from_claims(&claims(json!({"sub": "1"})), &config(&[])).unwrap_err();
        assert!(e.contains("\"preferred_username\""), "{e}");
        let e = identity_from_claims(
            &claims(json!({"sub": "1", "preferred_username": "nina smith"})),
            &config(&[]),
        )
        .unwrap_err();
        assert!(e.contains("cannot be used here"), "{e}");
        let e = identity_from_claims(&claims(json!({"preferred_username": "nina"})), &config(&[]))
            .unwrap_err();
        assert!(e.contains("no \"sub\""), "{e}");
    }

    #[test]
    fn an_email_address_is_a_name_only_when_the_provider_verified_it() {
        let mut c = config(&[]);
        c.username_claim = "email".into();
        for verified in [json!(false), json!("true"), Value::Null] {
            let e = identity_from_claims(
                &claims(
                    json!({"sub": "1", "email": "Nina@Example.org", "email_verified": verified}),
                ),
                &c,
            )
            .unwrap_err();
            assert!(e.contains("not verified"), "{e}");
        }
        let (id, _) = identity_from_claims(
            &claims(json!({"sub": "1", "email": "Nina@Example.org", "email_verified": true})),
            &c,
        )
        .unwrap();
        assert_eq!(id.name.as_str(), "nina@example.org");
    }

    #[test]
    fn allowed_groups_admit_members_only() {
        let c = config(&["lab"]);
        assert!(
            identity_from_claims(
                &claims(json!({"sub": "1", "preferred_username": "nina", "groups": ["lab"]})),
                &c
            )
            .is_ok()
        );
        let e = identity_from_claims(
            &claims(json!({"sub": "2", "preferred_username": "eve", "groups": ["other"]})),
            &c,
        )
        .unwrap_err();
        assert!(e.contains("eve is not in a group"), "{e}");
        assert!(
            identity_from_claims(
                &claims(json!({"sub": "2", "preferred_username": "eve"})),
                &c
            )
            .is_err()
        );
    }

    #[test]
    fn the_state_belongs_to_one_secret_and_carries_the_page_to_return_to() {
        let secret = crate::secret::Secret::generate();
        let state = state_for(secret.expose(), "/hub/accept-share?code=x");
        assert_eq!(
            check_state(secret.expose(), &state).as_deref(),
            Some("/hub/accept-share?code=x")
        );
        let other = crate::secret::Secret::generate();
        assert_eq!(check_state(other.expose(), &state), None);
        assert_eq!(check_state(secret.expose(), "no-dot"), None);
        // The page to come back to is covered by the MAC: another one is refused.
        let (mac, _) = state.split_once('.').unwrap();
        let moved = format!("{mac}.{}", URL_SAFE_NO_PAD.encode("/hub/token"));
        assert_eq!(check_state(secret.expose(), &moved), None);
        // The values sent in URLs say nothing of the verifier or the nonce.
        assert_ne!(
            derive(secret.expose(), "pkce"),
            derive(secret.expose(), "state")
        );
        assert_ne!(
            derive(secret.expose(), "nonce"),
            derive(secret.expose(), "pkce")
        );
        assert_eq!(
            derive(secret.expose(), "pkce").len(),
            43,
            "a valid PKCE verifier"
        );
    }
}
