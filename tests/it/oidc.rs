//! Users from an OpenID Connect provider, beyond the browser test against a real provider
//! (tests/e2e/oidc.test.mjs): known to every instance on one Redis, reachable by a share with
//! the groups the provider gave them, and a provider that cannot be reached.

use std::time::Duration;

use latchkey::auth::Identity;
use latchkey::ids::{GroupName, UserName};
use reqwest::StatusCode;

use crate::helpers::{Backend, Browser, Latchkey, Rig, Upstream, eventually};

/// Sign-in through a provider at an address where nothing listens (latchkey reads its
/// metadata at the first sign-in, not at start).
const OIDC: &str = r#"
[oidc]
issuer = "http://127.0.0.1:9"
client_id = "latchkey"
redirect_url = "http://127.0.0.1:1/hub/oauth_callback"
display_name = "Example ID"
"#;

fn bob() -> Identity {
    Identity {
        name: UserName::parse("bob").unwrap(),
        groups: vec![GroupName::parse("lab").unwrap()],
    }
}

#[tokio::test]
async fn a_provider_user_is_known_to_every_instance_and_reaches_a_server_shared_with_their_group() {
    let rig = Rig::start_with(2, OIDC).await;
    let (a, b) = (&rig.instances[0], &rig.instances[1]);
    let upstream = Upstream::spawn().await;
    a.register_john(&upstream).await;
    let john = a.signed_in("john").await;

    // Before bob's first sign-in, neither he nor his group is known.
    for (kind, name) in [("user", "bob"), ("group", "lab")] {
        let r = john
            .sharing_form(&[
                ("action", "share"),
                ("kind", kind),
                ("name", name),
                ("role", "use"),
            ])
            .await;
        let html = r.text().await.unwrap();
        assert!(
            html.contains(&format!("There is no {kind} {name}.")),
            "{html}"
        );
    }

    // bob signs in through the provider at instance a (what the callback does once the
    // provider's ID token checked out); his browser then goes to instance b.
    let (_, session) = a
        .app
        .start_provider_login(bob(), "sub-of-bob")
        .await
        .unwrap();
    let browser = Browser::new(&b.base);
    browser.jar.add_cookie_str(
        &format!("latchkey-session={}; Path=/", session.expose()),
        &b.base.parse().unwrap(),
    );
    let home = browser.get("/hub/home").await;
    assert_eq!(home.status(), StatusCode::OK, "instance b knows bob");
    assert!(home.text().await.unwrap().contains("bob"));
    assert_eq!(
        browser.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN,
        "nothing is shared with him yet"
    );

    // His group is known now: john shares with it, and bob gets in at instance b.
    let r = john
        .sharing_form(&[
            ("action", "share"),
            ("kind", "group"),
            ("name", "lab"),
            ("role", "use"),
        ])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        eventually(Duration::from_secs(5), async || {
            browser.get("/user/john/").await.status() == StatusCode::OK
        })
        .await,
        "bob reaches john's server through his group"
    );
    assert_eq!(
        upstream
            .last()
            .headers
            .get("x-latchkey-user")
            .and_then(|v| v.to_str().ok()),
        Some("bob")
    );

    // The provider's user record is in Redis; the session id and code never are.
    let users = rig.redis_cli(&["HGETALL", "lk:users"]);
    assert!(
        users.contains("\"bob\"") && users.contains("\"lab\""),
        "{users}"
    );
    assert!(!rig.redis_cli(&["KEYS", "*"]).contains(session.expose()));

    // Another account at the provider that now calls itself bob does not become bob.
    let taken = b
        .app
        .start_provider_login(bob(), "sub-of-someone-else")
        .await;
    assert!(
        matches!(&taken, Err(latchkey::error::Error::Forbidden(m)) if m.contains("belongs to another account")),
        "{:?}",
        taken.err()
    );
    assert!(
        rig.redis_cli(&["HGET", "lk:users", "bob"])
            .contains("sub-of-bob"),
        "the record is unchanged"
    );

    // An instance whose allowed groups no longer include bob's does not let him in with the
    // same sign-in.
    let strict = Latchkey::start(
        Some(&rig.redis.url()),
        &OIDC.replace("display_name", "allowed_groups = [\"staff\"]\ndisplay_name"),
    )
    .await;
    let there = Browser::new(&strict.base);
    there.jar.add_cookie_str(
        &format!("latchkey-session={}; Path=/", session.expose()),
        &strict.base.parse().unwrap(),
    );
    let r = there.get("/user/john/").await;
    assert_eq!(r.status(), StatusCode::FOUND, "sent to sign in");
    strict.stop().await;
}

#[tokio::test]
async fn an_unreachable_provider_is_a_clear_502_and_passwords_still_work() {
    let lk = Latchkey::spawn_with(Backend::Memory, OIDC).await;
    let page = lk.browser().get("/hub/login?next=/hub/home").await;
    let html = page.text().await.unwrap();
    assert!(html.contains("Sign in with Example ID"), "{html}");
    assert!(
        html.contains("/hub/oauth_login?next=%2Fhub%2Fhome"),
        "{html}"
    );
    assert!(
        html.contains("id=\"password\""),
        "local users keep the password form"
    );

    let r = lk.browser().get("/hub/oauth_login?next=/hub/home").await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(r.headers().contains_key("x-request-id"));
    assert!(
        r.headers()
            .get("set-cookie")
            .is_none_or(|c| { !c.to_str().unwrap().contains("latchkey-session") })
    );
    let body = r.text().await.unwrap();
    assert!(
        body.contains("The sign-in provider could not be reached"),
        "{body}"
    );
    assert!(!body.contains("127.0.0.1:9"), "no internal detail: {body}");

    // The callback without this browser's state is refused before the provider is asked.
    let r = lk
        .browser()
        .get("/hub/oauth_callback?code=abc&state=x.L2h1Yi9ob21l")
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    lk.signed_in("nina").await;
    lk.stop().await;
}

#[tokio::test]
async fn without_oidc_its_paths_are_not_pages() {
    let lk = Latchkey::spawn(Backend::Memory).await;
    for path in ["/hub/oauth_login", "/hub/oauth_callback?code=a&state=b"] {
        assert_eq!(lk.browser().get(path).await.status(), StatusCode::NOT_FOUND);
    }
    let html = lk.browser().get("/hub/login").await.text().await.unwrap();
    assert!(!html.contains("oauth_login"));
    lk.stop().await;
}
