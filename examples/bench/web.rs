//! A browser-like client for latchkey's pages and API: a cookie jar, no redirects followed.

use std::sync::Arc;

use reqwest::cookie::CookieStore;

pub struct Browser {
    pub base: String,
    pub client: reqwest::Client,
    jar: Arc<reqwest::cookie::Jar>,
}

impl Browser {
    pub fn new(base: &str) -> Browser {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let client = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client");
        Browser {
            base: base.to_owned(),
            client,
            jar,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn cookie(&self, name: &str, path: &str) -> Option<String> {
        let url: reqwest::Url = self.url(path).parse().ok()?;
        let header = self.jar.cookies(&url)?;
        header
            .to_str()
            .ok()?
            .split("; ")
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }

    /// The sign-in cookie's value.
    pub fn session(&self) -> String {
        self.cookie("latchkey-session", "/user/john/")
            .expect("signed in")
    }

    /// The XSRF token, from the sign-in page if the jar has none yet.
    pub async fn xsrf(&self) -> String {
        if let Some(x) = self.cookie("_xsrf", "/hub/") {
            return x;
        }
        self.client
            .get(self.url("/hub/login"))
            .send()
            .await
            .expect("the sign-in page answers");
        self.cookie("_xsrf", "/hub/")
            .expect("the sign-in page sets _xsrf")
    }

    /// Signs in with the form, as a person would.
    pub async fn login(&self, user: &str, password: &str) {
        let xsrf = self.xsrf().await;
        let r = self
            .client
            .post(self.url("/hub/login"))
            .form(&[("username", user), ("password", password), ("_xsrf", &xsrf)])
            .send()
            .await
            .expect("sign-in answers");
        assert_eq!(r.status(), 303, "sign-in as {user}");
    }

    /// Creates a one-hour invite link (role `use`) with the sharing API; returns its code.
    pub async fn invite(&self, server: &str) -> String {
        let xsrf = self.xsrf().await;
        let r = self
            .client
            .post(self.url(&format!("/hub/api/share-codes/{server}")))
            .header("x-xsrftoken", xsrf)
            .json(&serde_json::json!({"role": "use", "expires_in": 3600}))
            .send()
            .await
            .expect("the sharing API answers");
        assert_eq!(r.status(), 201, "creating an invite");
        let v: serde_json::Value = r.json().await.expect("JSON");
        v["code"].as_str().expect("a code").to_owned()
    }

    /// Accepts an invite with the Accept button's form post; returns the status (303 on success).
    pub async fn try_accept(&self, code: &str) -> u16 {
        let xsrf = self.xsrf().await;
        match self
            .client
            .post(self.url("/hub/accept-share"))
            .form(&[("code", code), ("_xsrf", &xsrf)])
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    pub async fn accept(&self, code: &str) {
        assert_eq!(self.try_accept(code).await, 303, "accepting the invite");
    }

    /// A state-changing sharing-API call with the XSRF header; returns the status.
    pub async fn api(&self, method: reqwest::Method, path: &str) -> u16 {
        let xsrf = self.xsrf().await;
        self.client
            .request(method, self.url(path))
            .header("x-xsrftoken", xsrf)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }
}
