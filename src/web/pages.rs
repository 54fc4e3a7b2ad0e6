//! Page templates (askama, checked at compile time against these structs).

use askama::Template;
use http::{Response, StatusCode};

use crate::error::Error;
use crate::http_util::{Body, html_response};

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub prefix: String,
    pub user: Option<String>,
    pub xsrf: String,
    pub next_encoded: String,
    pub username: String,
    pub error: Option<String>,
    /// The identity provider's name, when sign-in through it is on.
    pub provider: Option<String>,
    /// Whether the password form is shown: there are local users, or no other way in.
    pub passwords: bool,
}

/// Asks before signing out when the request to sign out came from elsewhere (a link on a
/// user's server).
#[derive(Template)]
#[template(path = "signout.html")]
pub struct SignOutPage {
    pub prefix: String,
    pub user: Option<String>,
    pub xsrf: String,
}

pub struct MyServerRow {
    pub label: String,
    pub url: String,
    pub share_url: String,
    /// Who it is shared with ("nina, group analysts and 2 more"); empty: nobody.
    pub sharees: String,
}

pub struct SharedRow {
    pub label: String,
    pub key: String,
    pub owner: String,
    pub role: String,
    pub since: String,
    pub url: String,
    /// Shared with the user by name (not via a group), so the user may leave it.
    pub direct: bool,
}

#[derive(Template)]
#[template(path = "home.html")]
pub struct HomePage {
    pub prefix: String,
    pub user: Option<String>,
    pub xsrf: String,
    pub notice: Option<String>,
    pub servers: Vec<MyServerRow>,
    pub shared: Vec<SharedRow>,
}

pub struct NewLink {
    pub url: String,
    pub role: String,
    pub expires_iso: String,
    pub expires_epoch: i64,
}

/// The direct-share form's fields: empty with the usual choices, or as sent when the page
/// shows an error to correct (so a typo costs one fix, not the whole form).
pub struct ShareForm {
    pub kind: String,
    pub name: String,
    pub role: String,
}

impl Default for ShareForm {
    fn default() -> Self {
        ShareForm {
            kind: "user".into(),
            name: String::new(),
            role: "use".into(),
        }
    }
}

impl ShareForm {
    /// The fields of a sent form (shown escaped, like every value on a page).
    pub fn sent(form: &[(String, String)]) -> ShareForm {
        let field = |name: &str| crate::http_util::form_value(form, name).map(str::to_owned);
        let default = ShareForm::default();
        ShareForm {
            kind: field("kind").unwrap_or(default.kind),
            name: field("name").unwrap_or(default.name),
            role: field("role").unwrap_or(default.role),
        }
    }
}

pub struct LinkRow {
    pub id: String,
    pub role: String,
    pub created: String,
    /// The creation time for a screen reader: "2026-12-07 06:50 UTC".
    pub created_label: String,
    pub created_by: String,
    pub expires_iso: String,
    pub expires_epoch: i64,
    pub uses: u64,
    pub last_used: Option<String>,
}

pub struct GrantRow {
    pub kind: String,
    pub name: String,
    pub role: String,
    pub since: String,
    pub expires: Option<String>,
    pub via: String,
    pub connected: bool,
}

pub struct Lifetime {
    pub seconds: u64,
    pub label: String,
    pub selected: bool,
}

#[derive(Template)]
#[template(path = "sharing.html")]
pub struct SharingPage {
    pub prefix: String,
    pub user: Option<String>,
    pub xsrf: String,
    pub server_label: String,
    pub page_url: String,
    pub action_url: String,
    pub running: bool,
    pub is_owner: bool,
    pub error: Option<String>,
    pub notice: Option<String>,
    /// Access was just revoked while invite links are still active (they admit again).
    pub links_still_admit: bool,
    pub new_link: Option<NewLink>,
    pub share: ShareForm,
    pub lifetimes: Vec<Lifetime>,
    pub links: Vec<LinkRow>,
    pub grants: Vec<GrantRow>,
}

pub struct NewToken {
    pub token: String,
    pub id: String,
    pub note: String,
    pub expires_iso: String,
}

pub struct TokenRow {
    pub id: String,
    pub note: String,
    pub created: String,
    pub expires: Option<String>,
}

#[derive(Template)]
#[template(path = "tokens.html")]
pub struct TokensPage {
    pub prefix: String,
    pub user: Option<String>,
    pub xsrf: String,
    /// latchkey's own origin, for the command line's `LATCHKEY_URL`.
    pub origin: String,
    pub action_url: String,
    pub error: Option<String>,
    pub notice: Option<String>,
    pub new_token: Option<NewToken>,
    pub max_note: usize,
    pub lifetimes: Vec<Lifetime>,
    pub tokens: Vec<TokenRow>,
}

#[derive(Template)]
#[template(path = "accept.html")]
pub struct AcceptPage {
    pub prefix: String,
    pub user: Option<String>,
    pub xsrf: String,
    pub user_name: String,
    pub inviter: String,
    pub server_label: String,
    pub role: String,
    pub role_explain: String,
    pub expires_iso: String,
    pub expires_epoch: i64,
    pub code: String,
    pub next: String,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub prefix: String,
    pub user: Option<String>,
    pub xsrf: String,
    pub status: u16,
    pub title: String,
    pub message: String,
    pub request_id: String,
    pub show_login: bool,
}

/// Renders a template into a response; a rendering failure is a bug, logged and shown as 500.
pub fn render<T: Template>(status: StatusCode, page: &T) -> Response<Body> {
    match page.render() {
        Ok(html) => html_response(status, html),
        Err(e) => {
            tracing::error!(error = %e, "template failed to render");
            html_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "<!doctype html><title>Error</title><p>Something went wrong.</p>".into(),
            )
        }
    }
}

pub fn error_page(
    err: &Error,
    request_id: &str,
    prefix: &str,
    viewer: Option<&crate::error::Viewer>,
) -> Response<Body> {
    render(
        err.status(),
        &ErrorPage {
            prefix: prefix.to_owned(),
            user: viewer.map(|v| v.name.clone()),
            xsrf: viewer.and_then(|v| v.xsrf.clone()).unwrap_or_default(),
            status: err.status().as_u16(),
            title: err.title().into(),
            message: err.message(),
            request_id: request_id.into(),
            show_login: viewer.is_none()
                && matches!(
                    err,
                    Error::Unauthorized | Error::NotShared { .. } | Error::InviteInvalid
                ),
        },
    )
}
