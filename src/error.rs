//! The one error type, its status map, and the one place it is rendered for clients.

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

use crate::http_util::{Body, full};
use crate::sharing::EndReason;
use crate::web::pages;

/// Everything that can go wrong while answering a request. Messages in variants are written
/// for the person making the request; internal causes are logged where they happen and never
/// stored here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Not an error for the user: a browser that must sign in first is sent here (a path on
    /// latchkey's own origin).
    Redirect(String),
    /// The request is malformed; the message says what to fix.
    BadRequest(String),
    /// Nobody is signed in, or the token is not valid.
    Unauthorized,
    /// The XSRF token is missing or does not match the `_xsrf` cookie.
    XsrfMismatch,
    /// A state-changing request or WebSocket came from another site.
    CrossOrigin,
    /// The caller is known but may not do this; the message says why.
    Forbidden(String),
    /// A server is not shared with the caller (any more).
    NotShared {
        server: String,
        reason: Option<EndReason>,
    },
    /// The caller has role `view` and the request would change something.
    ViewOnly {
        server: String,
    },
    NotFound(String),
    /// Unknown, expired and revoked invite codes all look the same.
    InviteInvalid,
    MethodNotAllowed,
    PayloadTooLarge,
    UriTooLong,
    TooManyRequests {
        retry_after: u64,
    },
    /// Too much of one kind of work at once (sign-ins waiting for a password check); the client
    /// may try again after `retry_after` seconds.
    Busy {
        retry_after: u64,
    },
    /// The server exists but is not running (no route), so it cannot be shared right now.
    ServerNotRunning(String),
    UpstreamUnavailable,
    UpstreamTimeout,
    StoreUnavailable,
    /// The OpenID Connect provider could not be reached or did not complete the sign-in (the
    /// cause is logged).
    IdentityProvider,
    /// A bug or an unexpected failure; the cause was logged with the request id.
    Internal,
}

impl Error {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Error::BadRequest(msg.into())
    }

    /// Access ended after the request's access check, before the upstream's answer.
    pub fn access_ended_meanwhile() -> Self {
        Error::Forbidden(
            "Your access to this server ended while the request was on its way.".into(),
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::Redirect(_) => StatusCode::FOUND,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::XsrfMismatch => StatusCode::FORBIDDEN,
            Error::CrossOrigin => StatusCode::FORBIDDEN,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotShared { .. } => StatusCode::FORBIDDEN,
            Error::ViewOnly { .. } => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::InviteInvalid => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UriTooLong => StatusCode::URI_TOO_LONG,
            Error::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::ServerNotRunning(_) => StatusCode::CONFLICT,
            Error::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Error::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Error::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Error::IdentityProvider => StatusCode::BAD_GATEWAY,
            Error::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short title for the error page.
    pub fn title(&self) -> &'static str {
        match self {
            Error::Redirect(_) => "Redirecting",
            Error::BadRequest(_) => "Bad request",
            Error::Unauthorized => "Please sign in",
            Error::XsrfMismatch => "Form expired",
            Error::CrossOrigin => "Cross-site request refused",
            Error::Forbidden(_) => "Not allowed",
            Error::NotShared {
                reason: Some(_), ..
            } => "Access ended",
            Error::NotShared { reason: None, .. } => "Not shared with you",
            Error::ViewOnly { .. } => "View only",
            Error::NotFound(_) => "Not found",
            Error::InviteInvalid => "Invite link not valid",
            Error::MethodNotAllowed => "Method not allowed",
            Error::PayloadTooLarge => "Request too large",
            Error::UriTooLong => "Address too long",
            Error::TooManyRequests { .. } => "Too many attempts",
            Error::Busy { .. } => "Too busy",
            Error::ServerNotRunning(_) => "Server not running",
            Error::UpstreamUnavailable => "Server not reachable",
            Error::UpstreamTimeout => "Server did not answer",
            Error::StoreUnavailable => "Temporarily unavailable",
            Error::IdentityProvider => "Sign-in provider failed",
            Error::Internal => "Something went wrong",
        }
    }

    /// What the person should know, in a sentence or two.
    pub fn message(&self) -> String {
        match self {
            Error::Redirect(to) => format!("Continue at {to}"),
            Error::BadRequest(m) | Error::Forbidden(m) | Error::NotFound(m) => m.clone(),
            Error::Unauthorized => "Sign in, or send a valid API token.".into(),
            Error::XsrfMismatch => {
                "The form's XSRF token is missing or does not match the _xsrf cookie. Reload the page and try again.".into()
            }
            Error::CrossOrigin => {
                "This request came from another site, so latchkey refused it.".into()
            }
            Error::NotShared {
                server,
                reason: Some(r),
            } => r.explain(server),
            Error::NotShared { server, reason: None } => format!(
                "{server} is not shared with you. Ask its owner for an invite link."
            ),
            Error::ViewOnly { server } => format!(
                "You may look at {server} but not change it: it was shared with you with role view."
            ),
            Error::InviteInvalid => {
                "This invite link is unknown, has expired or was revoked. Ask the owner for a new one.".into()
            }
            Error::MethodNotAllowed => "This method is not allowed here.".into(),
            Error::PayloadTooLarge => "The request body is too large.".into(),
            Error::UriTooLong => "The request address is too long.".into(),
            Error::TooManyRequests { retry_after } => {
                format!("Too many failed attempts. Try again in {retry_after} seconds.")
            }
            Error::Busy { retry_after } => format!(
                "Too many sign-ins are waiting to be checked. Try again in {retry_after} seconds."
            ),
            Error::ServerNotRunning(server) => {
                format!("{server} is not running, so it cannot be shared right now.")
            }
            Error::UpstreamUnavailable => {
                "The server behind this address refused the connection. It may be starting or stopped.".into()
            }
            Error::UpstreamTimeout => "The server behind this address did not answer in time.".into(),
            Error::StoreUnavailable => {
                "latchkey cannot reach its store right now. Try again in a moment; you stay signed in.".into()
            }
            Error::IdentityProvider => {
                "The sign-in provider could not be reached or did not complete the sign-in. Try again in a moment.".into()
            }
            Error::Internal => "An unexpected error happened. It has been logged.".into(),
        }
    }

    /// Whether the page for this error names who is signed in: not for a redirect, and not
    /// when the store or latchkey itself failed or is overloaded (naming them would ask the
    /// store again).
    pub fn names_viewer(&self) -> bool {
        !matches!(
            self,
            Error::Redirect(_)
                | Error::StoreUnavailable
                | Error::Internal
                | Error::Busy { .. }
                | Error::TooManyRequests { .. }
        )
    }

    /// Renders the error for the client: JSON for API and script clients, an HTML page for
    /// browsers. Both carry the request id so that a report can be matched with the logs.
    pub fn render(&self, request_id: &str, json: bool) -> Response<Body> {
        self.render_with_prefix(request_id, json, crate::paths::HUB, None)
    }

    /// Renders with links under the configured hub prefix; an HTML page shows `viewer`, when
    /// known, in its header.
    pub fn render_with_prefix(
        &self,
        request_id: &str,
        json: bool,
        prefix: &str,
        viewer: Option<&Viewer>,
    ) -> Response<Body> {
        if let Error::Redirect(to) = self {
            let mut r = crate::http_util::redirect(to);
            *r.status_mut() = StatusCode::FOUND;
            return r;
        }
        let status = self.status();
        let mut resp = if json {
            let body = json!({
                "status": status.as_u16(),
                "message": self.message(),
                "request_id": request_id,
            });
            let mut r = Response::new(full(body.to_string()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        } else {
            pages::error_page(self, request_id, prefix, viewer)
        };
        *resp.status_mut() = status;
        if let Error::TooManyRequests { retry_after } | Error::Busy { retry_after } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.title(), self.message())
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who is looking at an error page, when they are signed in with a session cookie: the page's
/// header names them, and offers Sign out when their XSRF token, which that form needs, came
/// with the request.
pub struct Viewer {
    pub name: String,
    pub xsrf: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_pages_name_the_viewer_unless_the_store_or_latchkey_failed() {
        for quiet in [
            Error::StoreUnavailable,
            Error::Internal,
            Error::Busy { retry_after: 1 },
            Error::TooManyRequests { retry_after: 1 },
            Error::Redirect("/hub/login".into()),
        ] {
            assert!(!quiet.names_viewer(), "{quiet:?}");
        }
        for named in [
            Error::InviteInvalid,
            Error::NotFound("There is no such server.".into()),
            Error::bad_request("Dot segments are not allowed in paths."),
        ] {
            assert!(named.names_viewer(), "{named:?}");
        }
    }

    #[test]
    fn busy_is_503_with_retry_after_and_the_request_id() {
        let e = Error::Busy { retry_after: 10 };
        for json in [true, false] {
            let r = e.render("req-1", json);
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(r.headers()[header::RETRY_AFTER], "10");
            assert_eq!(r.headers()["x-request-id"], "req-1");
            assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        }
        assert!(e.message().contains("Try again in 10 seconds"));
    }
}
