//! Host-based routing: john's server on john.lab.test only, latchkey's pages on lab.test only,
//! and a sign-in handed over to a user's host with a one-time code and a state cookie.

use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;

use crate::both_stores;
use crate::helpers::{Backend, Browser, Latchkey, Redis, Upstream};

/// latchkey with host-based routing and john's server registered.
async fn rig(backend: Backend) -> (Upstream, Latchkey, Hosts) {
    let upstream = Upstream::spawn().await;
    let redis = match backend {
        Backend::Memory => None,
        Backend::Redis => Some(Redis::start().await),
    };
    let mut lk = Latchkey::start_with_env(
        redis.as_ref().map(|r| r.url()).as_deref(),
        "",
        &[
            (
                "LATCHKEY_SERVER_PUBLIC_URL",
                "http://lab.test:{public_port}",
            ),
            ("LATCHKEY_SERVER_USER_DOMAIN", "lab.test"),
        ],
    )
    .await;
    lk.redis = redis;
    lk.register_john(&upstream).await;
    let addr: SocketAddr = lk.base.trim_start_matches("http://").parse().unwrap();
    (upstream, lk, Hosts { addr })
}

/// Where the test's names point: every `*.lab.test` and `lab.test` at latchkey's listener.
struct Hosts {
    addr: SocketAddr,
}

impl Hosts {
    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.addr.port())
    }

    /// A browser whose base is latchkey's own host and which reaches the users' hosts too.
    fn browser(&self) -> Browser {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let mut b = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none());
        for host in ["lab.test", "john.lab.test", "nina.lab.test", "evil.test"] {
            b = b.resolve(host, self.addr);
        }
        Browser {
            base: self.url("lab.test", ""),
            client: b.build().unwrap(),
            jar,
        }
    }

    async fn signed_in(&self, user: &str) -> Browser {
        let b = self.browser();
        b.login(user).await;
        b
    }
}

trait JarCookies {
    fn jar_cookies(&self, url: &str) -> String;
}

impl JarCookies for Browser {
    /// The Cookie field this browser would send to `url`.
    fn jar_cookies(&self, url: &str) -> String {
        use reqwest::cookie::CookieStore;
        self.jar
            .cookies(&url.parse().unwrap())
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn get(b: &Browser, url: &str) -> reqwest::Response {
    b.client.get(url).send().await.unwrap()
}

/// Follows the hand-over from a user's host to latchkey's and back, step by step, checking
/// each answer; returns the final answer from the user's host.
async fn open_on_user_host(h: &Hosts, b: &Browser, host: &str, path: &str) -> reqwest::Response {
    let r = get(b, &h.url(host, path)).await;
    assert_eq!(r.status(), StatusCode::FOUND, "no sign-in on {host} yet");
    let to_login = location(&r);
    assert!(to_login.starts_with("/hub/host-login?next="), "{to_login}");
    let r = get(b, &h.url(host, &to_login)).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let handoff = location(&r);
    assert!(
        handoff.starts_with(&h.url("lab.test", "/hub/host-handoff?host=john.lab.test&state="))
            || handoff
                .starts_with(&h.url("lab.test", "/hub/host-handoff?host=nina.lab.test&state=")),
        "{handoff}"
    );
    let r = get(b, &handoff).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let callback = location(&r);
    assert!(
        callback.starts_with(&h.url(host, "/hub/host-callback?code=")),
        "{callback}"
    );
    let r = get(b, &callback).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "the code is exchanged");
    assert_eq!(location(&r), path);
    get(b, &h.url(host, path)).await
}

async fn a_sharee_reaches_johns_server_on_johns_host_only(backend: Backend) {
    let (upstream, lk, h) = rig(backend).await;
    let john = h.signed_in("john").await;
    let (code, _) = john.invite("john/", json!({})).await;
    let nina = h.signed_in("nina").await;
    assert_eq!(nina.accept(&code).await.status(), StatusCode::SEE_OTHER);

    // On latchkey's host, a browser is sent to john's host, path and query kept.
    let r = nina.get("/user/john/lab?x=1").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), h.url("john.lab.test", "/user/john/lab?x=1"));
    let hits = upstream.hits();
    // A WebSocket or a POST there is not redirected: refused, with where to go.
    let r = nina
        .client
        .post(nina.url("/user/john/api"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.text().await.unwrap().contains("john.lab.test"));
    assert_eq!(upstream.hits(), hits, "nothing reached the upstream");

    let r = open_on_user_host(&h, &nina, "john.lab.test", "/user/john/lab?x=1").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(upstream.hits(), hits + 1);
    let seen = upstream.last();
    assert_eq!(seen.headers["x-latchkey-user"], "nina");
    let cookies = seen
        .headers
        .get("cookie")
        .map(|c| c.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(
        !cookies.contains("latchkey"),
        "no latchkey cookie reaches the upstream: {cookies:?}"
    );

    // The host's cookie is its own: not latchkey's sign-in, and good on no other host.
    let on_john = nina.cookie("latchkey-session", "/").unwrap();
    let host_cookie = nina.jar_cookies(&h.url("john.lab.test", "/"));
    assert!(!host_cookie.contains(&on_john), "a cookie of its own");
    let stranger = h.browser();
    let r = stranger
        .client
        .get(h.url("lab.test", "/hub/api/user"))
        .header("cookie", host_cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "the host's cookie is not a sign-in on latchkey's host"
    );
    // On nina's own host, for her own server, her cookie for john's host is nobody's.
    let s = lk
        .post_route(
            "/user/nina",
            json!({"user": "nina", "server_name": "", "target": upstream.target()}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let r = stranger
        .client
        .get(h.url("nina.lab.test", "/user/nina/lab"))
        .header("cookie", host_cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FOUND,
        "sent to sign in on nina's host"
    );
    assert!(location(&r).starts_with("/hub/host-login"));
    // john's server asked for on another user's host: the browser is sent to john's host.
    let r = stranger
        .client
        .get(h.url("nina.lab.test", "/user/john/lab?x=1"))
        .header("cookie", host_cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "john's server on nina's host"
    );
    assert_eq!(location(&r), h.url("john.lab.test", "/user/john/lab?x=1"));

    // A session cookie planted by a page of john's host (a longer path, so sent first) does
    // not hide nina's own.
    let real = host_cookie
        .split("; ")
        .find_map(|c| c.strip_prefix("latchkey-session="))
        .unwrap()
        .to_owned();
    let planted = "A".repeat(43);
    let r = stranger
        .client
        .get(h.url("john.lab.test", "/user/john/lab"))
        .header(
            "cookie",
            format!("latchkey-session={planted}; latchkey-session={real}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(upstream.last().headers["x-latchkey-user"], "nina");
    // Nor does a real sign-in that is not for this host (nina's own, from latchkey's host).
    let r = stranger
        .client
        .get(h.url("john.lab.test", "/user/john/lab"))
        .header(
            "cookie",
            format!("latchkey-session={on_john}; latchkey-session={real}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let hits = hits + 2;

    // Revoked, nina's page on john's host names her, as it would on latchkey's host.
    john.revoke("john/", "nina").await;
    let r = get(&nina, &h.url("john.lab.test", "/user/john/lab")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("Signed in as <strong>nina</strong>"),
        "{page}"
    );
    // Over HTTP/2 too (hyper's path, where the host is the request's authority).
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("john.lab.test", h.addr)
        .build()
        .unwrap();
    let r = h2
        .get(h.url("john.lab.test", "/user/john/lab"))
        .header("cookie", nina.jar_cookies(&h.url("john.lab.test", "/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("Signed in as <strong>nina</strong>"),
        "{page}"
    );

    // A route that is no user's (a JupyterHub at "/", say) is on latchkey's host: a browser
    // asking a user's host for it is sent there.
    let s = lk
        .post_route("/services/hub", json!({"target": upstream.target()}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let r = get(&nina, &h.url("john.lab.test", "/services/hub/x?y=1")).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), h.url("lab.test", "/services/hub/x?y=1"));

    // latchkey's pages are not on a user's host: a browser is sent to latchkey's host, a
    // state change is refused; a host that is no one's serves nothing.
    let r = get(&nina, &h.url("john.lab.test", "/hub/home")).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), h.url("lab.test", "/hub/home"));
    let r = nina
        .client
        .post(h.url("john.lab.test", "/hub/api/share-codes/john/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = get(&nina, &h.url("evil.test", "/user/john/lab")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = get(&nina, &h.url("evil.test", "/hub/home")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(upstream.hits(), hits + 1);
}
both_stores!(a_sharee_reaches_johns_server_on_johns_host_only);

async fn a_code_is_good_once_on_its_host_with_its_state(backend: Backend) {
    let (upstream, _lk, h) = rig(backend).await;
    let john = h.signed_in("john").await;
    let hits = upstream.hits();
    let start = get(
        &john,
        &h.url("john.lab.test", "/hub/host-login?next=/user/john/"),
    )
    .await;
    let handoff = location(&start);
    let callback = location(&get(&john, &handoff).await);

    // Another browser with the link but not the state cookie: not signed in, the code is
    // spent, and that browser is sent to begin a hand-over of its own, once.
    let thief = h.browser();
    let r = get(&thief, &callback).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        location(&r),
        "/hub/host-login?next=%2Fuser%2Fjohn%2F&again=1"
    );
    assert!(thief.jar_cookies(&h.url("john.lab.test", "/")).is_empty());
    let r = get(&thief, &h.url("john.lab.test", &location(&r))).await;
    let retry = location(&r);
    assert!(retry.ends_with("&again=1"), "{retry}");
    let r = get(&john, &callback).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "a code is tried once");
    // A second try whose state does not match either ends on the error page, not in a loop:
    // a fresh code, taken, then refused for the state.
    let start = get(
        &john,
        &h.url("john.lab.test", "/hub/host-login?next=/user/john/"),
    )
    .await;
    let fresh = location(&get(&john, &location(&start)).await);
    let r = get(&h.browser(), &format!("{fresh}&again=1")).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = get(&john, &fresh).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "and the code is spent");

    // A code for nina's host is no good on john's, even with the right state.
    let start = get(&john, &h.url("nina.lab.test", "/hub/host-login?next=/")).await;
    let state_cookie = john.jar_cookies(&h.url("nina.lab.test", "/"));
    let handoff = location(&start);
    let for_nina = location(&get(&john, &handoff).await);
    let for_john_host = for_nina.replacen("nina.lab.test", "john.lab.test", 1);
    let r = john
        .client
        .get(&for_john_host)
        .header("cookie", state_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A hand-over asked for a host that is no user's is refused.
    let r = john
        .get("/hub/host-handoff?host=evil.test&state=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(upstream.hits(), hits, "nothing reached the upstream");

    // The hand-over answers pages only: an image or a script of another page gets no code.
    let r = john
        .client
        .get(&handoff)
        .header("sec-fetch-dest", "image")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Two hand-overs begun at once (two tabs) share the browser's state and both succeed.
    let begin = async |next: &str| {
        let r = get(
            &john,
            &h.url("john.lab.test", &format!("/hub/host-login?next={next}")),
        )
        .await;
        location(&get(&john, &location(&r)).await)
    };
    let first = begin("/user/john/a").await;
    let second = begin("/user/john/b").await;
    let state = |url: &str| {
        url.split("state=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(state(&first), state(&second));
    for (callback, next) in [(first, "/user/john/a"), (second, "/user/john/b")] {
        let r = get(&john, &callback).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{callback}");
        assert_eq!(location(&r), next);
    }
    let r = get(&john, &h.url("john.lab.test", "/user/john/")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(upstream.hits(), hits + 1);
}
both_stores!(a_code_is_good_once_on_its_host_with_its_state);

/// The rig with john signed in on latchkey's host and on his own.
async fn john_on_his_host(backend: Backend) -> (Upstream, Latchkey, Hosts, Browser) {
    let (upstream, lk, h) = rig(backend).await;
    let john = h.signed_in("john").await;
    let r = open_on_user_host(&h, &john, "john.lab.test", "/user/john/").await;
    assert_eq!(r.status(), StatusCode::OK);
    (upstream, lk, h, john)
}

async fn signing_out_ends_the_sign_in_on_every_host(backend: Backend) {
    let (upstream, _lk, h, john) = john_on_his_host(backend).await;
    let hits = upstream.hits();

    // A link or an image on a user's host (same site) does not sign john out: he is asked.
    let r = john
        .client
        .get(john.url("/hub/logout"))
        .header("sec-fetch-site", "same-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(page.contains("Sign out of latchkey?"), "{page}");
    let r = get(&john, &h.url("john.lab.test", "/user/john/")).await;
    assert_eq!(r.status(), StatusCode::OK, "still signed in");
    let hits = hits + 1;

    let xsrf = john.xsrf().await;
    let r = john
        .client
        .post(john.url("/hub/logout"))
        .form(&[("_xsrf", xsrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = get(&john, &h.url("john.lab.test", "/user/john/")).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(location(&r).starts_with("/hub/host-login"));
    assert_eq!(upstream.hits(), hits);
}
both_stores!(signing_out_ends_the_sign_in_on_every_host);

async fn a_page_of_one_host_cannot_post_to_a_server_on_another(backend: Backend) {
    let (upstream, _lk, h, john) = john_on_his_host(backend).await;
    let hits = upstream.hits();
    // A page served from another user's host posts to john's server with john's cookie.
    let r = john
        .client
        .post(h.url("john.lab.test", "/user/john/api/contents"))
        .header("origin", h.url("nina.lab.test", ""))
        .header("sec-fetch-site", "same-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // So does a page of latchkey's own host.
    let r = john
        .client
        .post(h.url("john.lab.test", "/user/john/api/contents"))
        .header("origin", h.url("lab.test", ""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(upstream.hits(), hits, "nothing reached the upstream");
    // john's own pages may.
    let r = john
        .client
        .post(h.url("john.lab.test", "/user/john/api/contents"))
        .header("origin", h.url("john.lab.test", ""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(upstream.hits(), hits + 1);
}
both_stores!(a_page_of_one_host_cannot_post_to_a_server_on_another);
