//! Links, grants and roles: expiry, revocation of one or all, view role, leaving, groups,
//! tokens, and who never reaches the upstream.

use std::time::Duration;

use futures_util::StreamExt;
use http::StatusCode;
use reqwest::Method;
use serde_json::json;

use crate::both_stores;
use crate::helpers::*;

async fn an_expired_link_is_refused_like_an_unknown_one(backend: Backend) {
    let (_upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let nina = lk.signed_in("nina").await;
    let (code, _) = john.invite("john/", json!({"expires_in": 1})).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let unknown = nina
        .get("/hub/accept-share?code=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let unknown_page = unknown.text().await.unwrap();
    let expired = nina.get(&format!("/hub/accept-share?code={code}")).await;
    assert_eq!(expired.status(), StatusCode::NOT_FOUND);
    let expired_page = expired.text().await.unwrap();
    assert!(expired_page.contains("Invite link not valid"));
    // Same page apart from the request id.
    let strip = |s: &str| s.split("Request id").next().unwrap().to_owned();
    assert_eq!(strip(&expired_page), strip(&unknown_page));
    assert_eq!(nina.accept(&code).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        nina.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );
    let codes: serde_json::Value = john
        .get("/hub/api/share-codes/john/")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        codes["_pagination"]["total"], 0,
        "expired links are not listed"
    );
}
both_stores!(an_expired_link_is_refused_like_an_unknown_one);

async fn revoking_one_link_or_all_links_stops_them_but_keeps_grants(backend: Backend) {
    let (_upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let nina = lk.signed_in("nina").await;
    let otto = lk.signed_in("otto").await;
    let (first, first_json) = john.invite("john/", json!({})).await;
    let (second, _) = john.invite("john/", json!({})).await;
    let (third, _) = john.invite("john/", json!({})).await;
    assert_eq!(nina.accept(&first).await.status(), StatusCode::SEE_OTHER);

    let id = first_json["id"].as_str().unwrap();
    let r = john
        .api(
            Method::DELETE,
            &format!("/hub/api/share-codes/john/?id={id}"),
            None,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(otto.accept(&first).await.status(), StatusCode::NOT_FOUND);
    let codes: serde_json::Value = john
        .get("/hub/api/share-codes/john/")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(codes["_pagination"]["total"], 2);

    let r = john
        .api(Method::DELETE, "/hub/api/share-codes/john/", None)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for code in [&second, &third] {
        assert_eq!(otto.accept(code).await.status(), StatusCode::NOT_FOUND);
    }
    // Revoking links does not revoke people who already accepted.
    assert_eq!(nina.get("/user/john/").await.status(), StatusCode::OK);
    assert_eq!(
        otto.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );
}
both_stores!(revoking_one_link_or_all_links_stops_them_but_keeps_grants);

async fn revoking_all_users_refuses_everyone_and_closes_their_streams(backend: Backend) {
    let (_upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let nina = lk.signed_in("nina").await;
    let otto = lk.signed_in("otto").await;
    let (code, _) = john.invite("john/", json!({})).await;
    assert_eq!(nina.accept(&code).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(otto.accept(&code).await.status(), StatusCode::SEE_OTHER);
    let mut ws = otto.websocket("/user/john/ws").await.unwrap();
    // A long-lived streamed response is closed too.
    let stream = nina.get("/user/john/stream").await;
    assert_eq!(stream.status(), StatusCode::OK);
    let mut body = stream.bytes_stream();
    assert!(body.next().await.unwrap().is_ok());

    let r = john
        .api(Method::DELETE, "/hub/api/shares/john/", None)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = body.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream must end at once");
    assert!(
        closed_within(&mut ws, Duration::from_secs(2))
            .await
            .is_some(),
        "the WebSocket must close at once"
    );
    for who in [&nina, &otto] {
        assert_eq!(who.get("/user/john/").await.status(), StatusCode::FORBIDDEN);
    }
    // The link itself still works: anyone may accept again.
    assert_eq!(nina.accept(&code).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(nina.get("/user/john/").await.status(), StatusCode::OK);
    assert_eq!(john.get("/user/john/").await.status(), StatusCode::OK);
}
both_stores!(revoking_all_users_refuses_everyone_and_closes_their_streams);

async fn a_view_grant_may_read_but_not_write_or_open_websockets(backend: Backend) {
    let (upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let nina = lk.signed_in("nina").await;
    let (code, _) = john.invite("john/", json!({"role": "view"})).await;
    assert_eq!(nina.accept(&code).await.status(), StatusCode::SEE_OTHER);
    let r = nina.get("/user/john/api/contents").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(upstream.last().headers["x-latchkey-role"], "view");
    let hits = upstream.hits();
    let r = nina
        .client
        .post(nina.url("/user/john/api/contents"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("role view"));
    assert!(
        nina.websocket("/user/john/api/kernels/k/channels")
            .await
            .is_err()
    );
    assert_eq!(
        upstream.hits(),
        hits,
        "refused requests never reach the upstream"
    );
    // Accepting a `use` link later upgrades; accepting `view` again never downgrades.
    let (use_code, _) = john.invite("john/", json!({"role": "use"})).await;
    assert_eq!(nina.accept(&use_code).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(nina.accept(&code).await.status(), StatusCode::SEE_OTHER);
    let r = nina
        .client
        .post(nina.url("/user/john/api/contents"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
both_stores!(a_view_grant_may_read_but_not_write_or_open_websockets);

async fn a_sharee_can_leave_and_sees_what_is_shared_with_them(backend: Backend) {
    let (_upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let nina = lk.signed_in("nina").await;
    let (code, _) = john.invite("john/", json!({})).await;
    assert_eq!(nina.accept(&code).await.status(), StatusCode::SEE_OTHER);
    let shared: serde_json::Value = nina
        .get("/hub/api/users/nina/shared")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shared["_pagination"]["total"], 1);
    assert_eq!(shared["items"][0]["server"]["user"]["name"], "john");
    assert_eq!(shared["items"][0]["server"]["url"], "/user/john/");
    let home = nina.get("/hub/home").await.text().await.unwrap();
    assert!(home.contains("/user/john/"));
    // nina may not look at or change someone else's list.
    assert_eq!(
        nina.get("/hub/api/users/otto/shared").await.status(),
        StatusCode::FORBIDDEN
    );

    let r = nina
        .api(Method::DELETE, "/hub/api/users/nina/shared/john/", None)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = nina.get("/user/john/").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("You left"));
    let shared: serde_json::Value = nina
        .get("/hub/api/users/nina/shared")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shared["_pagination"]["total"], 0);
    let r = nina
        .api(Method::DELETE, "/hub/api/users/nina/shared/john/", None)
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}
both_stores!(a_sharee_can_leave_and_sees_what_is_shared_with_them);

async fn direct_shares_with_users_and_groups_follow_membership(backend: Backend) {
    let (_upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let nina = lk.signed_in("nina").await;
    let otto = lk.signed_in("otto").await;
    // team-b is nina's group.
    let r = john
        .api(
            Method::POST,
            "/hub/api/shares/john/",
            Some(json!({"group": "team-b", "role": "use"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(nina.get("/user/john/").await.status(), StatusCode::OK);
    assert_eq!(
        otto.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );
    let r = john
        .api(
            Method::POST,
            "/hub/api/shares/john/",
            Some(json!({"user": "otto", "role": "view"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(otto.get("/user/john/").await.status(), StatusCode::OK);
    let shares: serde_json::Value = john
        .get("/hub/api/shares/john/")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shares["_pagination"]["total"], 2);
    let r = john
        .api(
            Method::PATCH,
            "/hub/api/shares/john/",
            Some(json!({"group": "team-b"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        nina.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );
    // Sharing with nobody real is refused and changes nothing.
    let r = john
        .api(
            Method::POST,
            "/hub/api/shares/john/",
            Some(json!({"user": "ghost"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Only the owner manages sharing.
    let r = nina
        .api(Method::POST, "/hub/api/share-codes/john/", Some(json!({})))
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = otto
        .api(Method::DELETE, "/hub/api/shares/john/", None)
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(otto.get("/user/john/").await.status(), StatusCode::OK);
}
both_stores!(direct_shares_with_users_and_groups_follow_membership);

async fn the_openeo_endpoint_shares_and_unshares_a_named_server(backend: Backend) {
    let upstream = Upstream::spawn().await;
    let lk = Latchkey::spawn(backend).await;
    let s = lk
        .post_route(
            "/user/john/lab",
            json!({"user": "john", "server_name": "lab", "target": upstream.target()}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let john = lk.signed_in("john").await;
    let nina = lk.signed_in("nina").await;
    assert_eq!(
        nina.get("/user/john/lab/").await.status(),
        StatusCode::FORBIDDEN
    );
    let r = john
        .api(Method::POST, "/hub/api/workspace/lab/share/nina", None)
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["role"], "view");
    assert_eq!(nina.get("/user/john/lab/").await.status(), StatusCode::OK);
    let r = nina
        .client
        .post(nina.url("/user/john/lab/save"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "may load, may not save");
    let r = john
        .api(Method::DELETE, "/hub/api/workspace/lab/share/nina", None)
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        nina.get("/user/john/lab/").await.status(),
        StatusCode::FORBIDDEN
    );
}
both_stores!(the_openeo_endpoint_shares_and_unshares_a_named_server);

async fn api_tokens_work_for_scripts_and_never_reach_the_upstream(backend: Backend) {
    let (upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let (token, _) = new_api_token(&john, "john", json!({"note": "ci"})).await;
    // No cookie, no XSRF: the token alone.
    let script = reqwest::Client::new();
    let me: serde_json::Value = script
        .get(lk.url("/hub/api/user"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["name"], "john");
    let r = script
        .post(lk.url("/hub/api/share-codes/john/"))
        .header("authorization", format!("token {token}"))
        .body("{\"role\": \"view\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = script
        .get(lk.url("/user/john/x"))
        .header("authorization", format!("token {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!upstream.last().headers.contains_key("authorization"));
    // Tokens expire: 30 days unless asked otherwise, never beyond a year.
    let r = john
        .api(
            Method::POST,
            "/hub/api/users/john/tokens",
            Some(json!({"expires_in": 60})),
        )
        .await;
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    let r = john
        .api(
            Method::POST,
            "/hub/api/users/john/tokens",
            Some(json!({"expires_in": 999999999})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Tokens only for oneself.
    let r = john
        .api(Method::POST, "/hub/api/users/nina/tokens", None)
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A wrong token is a 401 with a JSON message and a request id.
    let r = script
        .get(lk.url("/hub/api/user"))
        .header(
            "authorization",
            "token AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("Sign in"));
    assert_eq!(v["request_id"].as_str().unwrap().len(), 24);
}
both_stores!(api_tokens_work_for_scripts_and_never_reach_the_upstream);

async fn a_deleted_api_token_is_refused_at_once_and_its_websocket_closed(backend: Backend) {
    let (_upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let (leaked, leaked_id) = new_api_token(&john, "john", json!({"note": "laptop"})).await;
    let (kept, kept_id) = new_api_token(&john, "john", json!({"note": "ci"})).await;
    assert_eq!(leaked_id.len(), 16);
    let me = lk.url("/hub/api/user");
    assert_eq!(status_with_token(&me, &leaked).await, StatusCode::OK);
    let mut ws = token_websocket(&lk.base, "/user/john/ws", &leaked).await;

    // Listed newest first, with id, note and dates, never the token.
    let r = john.get("/hub/api/users/john/tokens").await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(!text.contains(&leaked) && !text.contains(&kept));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&leaked_id.as_str()) && ids.contains(&kept_id.as_str()));
    assert!(v["items"][0]["expires_at"].as_str().unwrap().ends_with('Z'));

    // Nobody else lists or deletes them.
    let nina = lk.signed_in("nina").await;
    assert_eq!(
        nina.get("/hub/api/users/john/tokens").await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        delete_api_token(&nina, "john", &leaked_id).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(status_with_token(&me, &leaked).await, StatusCode::OK);

    assert!(
        closed_within(&mut ws, Duration::from_millis(300))
            .await
            .is_none(),
        "the WebSocket is open before the token is deleted"
    );
    // Ids are hexadecimal, in either case.
    assert_eq!(
        delete_api_token(&john, "john", &leaked_id.to_uppercase()).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        status_with_token(&me, &leaked).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(
        closed_within(&mut ws, Duration::from_secs(2))
            .await
            .is_some(),
        "the WebSocket opened with the deleted token is closed"
    );
    assert_eq!(status_with_token(&me, &kept).await, StatusCode::OK);
    let v: serde_json::Value = john
        .get("/hub/api/users/john/tokens")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["items"][0]["id"], kept_id.as_str());
    assert_eq!(v["_pagination"]["total"], 1);
    // Gone is gone; a malformed id is not found either.
    for bad in [leaked_id.as_str(), "zz", "0123456789abcdef0"] {
        assert_eq!(
            delete_api_token(&john, "john", bad).await,
            StatusCode::NOT_FOUND,
            "{bad}"
        );
    }
}
both_stores!(a_deleted_api_token_is_refused_at_once_and_its_websocket_closed);

async fn a_websocket_opened_with_an_api_token_closes_when_the_token_expires(backend: Backend) {
    let (_upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let (token, _) = new_api_token(&john, "john", json!({"expires_in": 2})).await;
    let mut ws = token_websocket(&lk.base, "/user/john/ws", &token).await;
    assert!(
        closed_within(&mut ws, Duration::from_millis(500))
            .await
            .is_none()
    );
    assert!(
        closed_within(&mut ws, Duration::from_secs(4))
            .await
            .is_some(),
        "the WebSocket outlived its token"
    );
}
both_stores!(a_websocket_opened_with_an_api_token_closes_when_the_token_expires);

/// Posts the tokens page's form with the browser's XSRF token (unless `_xsrf` is given).
async fn tokens_form(b: &Browser, fields: &[(&str, &str)]) -> reqwest::Response {
    let xsrf = b.xsrf().await;
    let mut form: Vec<(&str, &str)> = fields.to_vec();
    if !fields.iter().any(|(k, _)| *k == "_xsrf") {
        form.push(("_xsrf", &xsrf));
    }
    b.client
        .post(b.url("/hub/token"))
        .form(&form)
        .send()
        .await
        .unwrap()
}

/// The token shown on the page that answers a create.
fn shown_token(page: &str) -> String {
    let start = page
        .find(r#"id="new-token" class="mono" readonly value=""#)
        .expect("the new token is on the page")
        + r#"id="new-token" class="mono" readonly value=""#.len();
    page[start..].split('"').next().unwrap().to_owned()
}

async fn the_tokens_page_makes_shows_once_and_deletes_tokens(backend: Backend) {
    let (_upstream, lk) = johns_server(backend).await;
    let r = lk.browser().get("/hub/token").await;
    assert_eq!(
        r.status(),
        StatusCode::FOUND,
        "signed out: to the sign-in page"
    );
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/hub/login?next=")
    );

    let john = lk.signed_in("john").await;
    let home = john.get("/hub/home").await.text().await.unwrap();
    assert!(
        home.contains(r#"href="/hub/token""#),
        "the page is linked from every page"
    );
    let r = john.get("/hub/token").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.text().await.unwrap().contains("You have no API tokens."));

    let r = tokens_form(
        &john,
        &[
            ("action", "create"),
            ("note", "laptop"),
            ("expires_in", "86400"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    let token = shown_token(&r.text().await.unwrap());
    assert_eq!(token.len(), 43);
    let me = lk.url("/hub/api/user");
    assert_eq!(status_with_token(&me, &token).await, StatusCode::OK);
    let list = || async {
        let v: serde_json::Value = john
            .get("/hub/api/users/john/tokens")
            .await
            .json()
            .await
            .unwrap();
        v["items"].as_array().unwrap().clone()
    };
    let items = list().await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["note"], "laptop");
    let id = items[0]["id"].as_str().unwrap().to_owned();
    let created = items[0]["created_at"].as_str().unwrap();
    let expires = items[0]["expires_at"].as_str().unwrap();
    let ms = |iso: &str| latchkey::clock::parse_iso_millis(iso).unwrap();
    assert_eq!(
        ms(expires) - ms(created),
        86_400_000,
        "valid for the day asked for"
    );

    // Listed, never shown again.
    let page = john.get("/hub/token").await.text().await.unwrap();
    assert!(page.contains(&id) && page.contains("laptop"));
    assert!(!page.contains(&token));

    // Bad input is refused with a message and changes nothing.
    let long_note = "n".repeat(201);
    let no_xsrf = tokens_form(&john, &[("action", "create"), ("_xsrf", "")]).await;
    assert_eq!(no_xsrf.status(), StatusCode::FORBIDDEN);
    for (fields, status, says) in [
        (
            vec![("action", "create"), ("expires_in", "0")],
            StatusCode::BAD_REQUEST,
            "between 1 second and a year",
        ),
        (
            vec![("action", "create"), ("expires_in", "31536001")],
            StatusCode::BAD_REQUEST,
            "between 1 second and a year",
        ),
        (
            vec![("action", "create"), ("expires_in", "soon")],
            StatusCode::BAD_REQUEST,
            "number of seconds",
        ),
        (
            vec![("action", "create"), ("note", long_note.as_str())],
            StatusCode::BAD_REQUEST,
            "at most 200",
        ),
        (
            vec![("action", "create"), ("note", "a\u{7}b")],
            StatusCode::BAD_REQUEST,
            "control characters",
        ),
        (
            vec![("action", "shred")],
            StatusCode::BAD_REQUEST,
            "Unknown action",
        ),
        (
            vec![("action", "delete"), ("id", "xyz")],
            StatusCode::NOT_FOUND,
            "16 hexadecimal digits",
        ),
        (
            vec![("action", "delete"), ("id", "0123456789abcdef")],
            StatusCode::NOT_FOUND,
            "john has no API token 0123456789abcdef",
        ),
    ] {
        let r = tokens_form(&john, &fields).await;
        assert_eq!(r.status(), status, "{fields:?}");
        let page = r.text().await.unwrap();
        assert!(page.contains(says), "{fields:?}: {page}");
        assert!(
            page.contains(&id),
            "the page still lists the token: {fields:?}"
        );
    }
    assert_eq!(list().await.len(), 1);

    // Another user's token id is not john's to delete.
    let nina = lk.signed_in("nina").await;
    let (ninas, ninas_id) = new_api_token(&nina, "nina", json!({})).await;
    let r = tokens_form(&john, &[("action", "delete"), ("id", &ninas_id)]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(status_with_token(&me, &ninas).await, StatusCode::OK);

    let r = tokens_form(&john, &[("action", "delete"), ("id", &id)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let back = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(back, format!("/hub/token?deleted={id}"));
    assert_eq!(
        status_with_token(&me, &token).await,
        StatusCode::UNAUTHORIZED
    );
    let page = john.get(&back).await.text().await.unwrap();
    assert!(page.contains("was deleted") && page.contains("You have no API tokens."));
    assert!(list().await.is_empty());
    // A link cannot put its own words on the page.
    let page = john
        .get("/hub/token?deleted=Your+account+is+locked")
        .await
        .text()
        .await
        .unwrap();
    assert!(!page.contains("locked") && !page.contains("was deleted"));

    // A note is text, shown as text.
    let r = tokens_form(&john, &[("action", "create"), ("note", "<b>ci</b>")]).await;
    let page = r.text().await.unwrap();
    assert!(page.contains("&#60;b&#62;ci&#60;/b&#62;") && !page.contains("<b>ci</b>"));
    // Another site cannot make one, even with the XSRF token.
    let xsrf = john.xsrf().await;
    let r = john
        .client
        .post(john.url("/hub/token"))
        .header("origin", "https://evil.example")
        .form(&[("action", "create"), ("_xsrf", xsrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(list().await.len(), 1, "only the <b>ci</b> token");
}
both_stores!(the_tokens_page_makes_shows_once_and_deletes_tokens);

async fn unauthenticated_and_unauthorised_requests_never_reach_the_upstream(backend: Backend) {
    let (upstream, lk) = johns_server(backend).await;
    let anon = lk.browser();
    let r = anon.get("/user/john/tree?x=1").await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(
        r.headers()["location"],
        "/hub/login?next=%2Fuser%2Fjohn%2Ftree%3Fx%3D1"
    );
    let r = anon
        .client
        .get(anon.url("/user/john/api/status"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["content-type"], "application/json");
    let r = anon
        .client
        .get(anon.url("/user/john/api/status"))
        .header("x-requested-with", "XMLHttpRequest")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    match anon.websocket("/user/john/ws").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!("expected a 401 handshake, got {other:?}"),
    }
    let otto = lk.signed_in("otto").await;
    assert_eq!(
        otto.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );
    assert!(otto.websocket("/user/john/ws").await.is_err());
    let r = otto
        .client
        .post(otto.url("/user/john/api/contents"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        upstream.hits(),
        0,
        "nothing unauthorised reached the upstream"
    );
    // Signing out ends the session: the cookie no longer works.
    let john = lk.signed_in("john").await;
    assert_eq!(john.get("/user/john/").await.status(), StatusCode::OK);
    let mut ws = john.websocket("/user/john/ws").await.unwrap();
    let xsrf = john.xsrf().await;
    let r = john
        .client
        .post(john.url("/hub/logout"))
        .form(&[("_xsrf", xsrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        closed_within(&mut ws, Duration::from_secs(2))
            .await
            .is_some(),
        "signing out closes the session's WebSockets"
    );
}
both_stores!(unauthenticated_and_unauthorised_requests_never_reach_the_upstream);

async fn an_upstream_that_refuses_or_is_silent_gets_a_clear_page(backend: Backend) {
    let lk = Latchkey::spawn(backend).await;
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let s = lk
        .post_route(
            "/user/john",
            json!({"user": "john", "target": format!("http://{dead}")}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // A server that accepts but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let s = lk
        .post_route(
            "/user/john/slow",
            json!({"user": "john", "server_name": "slow", "target": format!("http://{silent_addr}")}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let john = lk.signed_in("john").await;
    let started = std::time::Instant::now();
    let r = john.get("/user/john/").await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(started.elapsed() < Duration::from_secs(1));
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let page = r.text().await.unwrap();
    assert!(page.contains("Server not reachable"));
    assert!(page.contains(&rid));
    assert!(
        !page.contains(&dead.to_string()),
        "no internal detail in error pages"
    );
    let r = john.get("/user/john/slow/").await;
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
}
both_stores!(an_upstream_that_refuses_or_is_silent_gets_a_clear_page);

async fn the_sharing_menu_works_without_javascript(backend: Backend) {
    let (_upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let nina = lk.signed_in("nina").await;
    let home = john.get("/hub/home").await.text().await.unwrap();
    assert!(home.contains("/hub/sharing/john/"));
    let page = john.get("/hub/sharing/john/").await;
    assert_eq!(page.headers()["cache-control"], "no-store");
    let r = john
        .sharing_form(&[
            ("action", "create-link"),
            ("role", "use"),
            ("expires_in", "3600"),
        ])
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    let html = r.text().await.unwrap();
    let start = html
        .find("/hub/accept-share?code=")
        .expect("the new link is shown");
    let code: String = html[start + 23..].chars().take(43).collect();
    assert_eq!(nina.accept(&code).await.status(), StatusCode::SEE_OTHER);
    let html = john.get("/hub/sharing/john/").await.text().await.unwrap();
    assert!(html.contains("<strong>nina</strong>"));
    assert!(html.contains("1 time"));
    // The home page says whom the server is shared with.
    let home = john.get("/hub/home").await.text().await.unwrap();
    assert!(home.contains("<td>nina</td>"), "{home}");
    let r = john
        .sharing_form(&[
            ("action", "revoke-user"),
            ("kind", "user"),
            ("name", "nina"),
        ])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        nina.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );
    for action in ["revoke-all-users", "revoke-all-links"] {
        let r = john.sharing_form(&[("action", action)]).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{action}");
    }
    assert_eq!(nina.accept(&code).await.status(), StatusCode::NOT_FOUND);
    // The sharing menu of someone else's server is not for nina.
    assert_eq!(
        nina.get("/hub/sharing/john/").await.status(),
        StatusCode::FORBIDDEN
    );
}
both_stores!(the_sharing_menu_works_without_javascript);

async fn a_direct_share_with_a_mistake_comes_back_as_it_was_sent(backend: Backend) {
    let (_upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let share = async |kind: &str, name: &str, role: &str| {
        john.sharing_form(&[
            ("action", "share"),
            ("kind", kind),
            ("name", name),
            ("role", role),
        ])
        .await
    };
    // A group name that is not valid, with role view: the error, and the form as it was.
    let r = share("group", "analysts<b>", "view").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"value="analysts&#60;b&#62;""#), "{html}");
    // (The create-link form's options read "use: full use" and "view: read only".)
    assert!(html.contains(r#"<option value="group" selected>Group</option>"#));
    assert!(html.contains(r#"<option value="view" selected>view</option>"#));
    assert!(!html.contains(r#"<option value="user" selected>User</option>"#));
    assert!(!html.contains(r#"<option value="use" selected>use</option>"#));
    // A user latchkey does not know: the same.
    let r = share("user", "ghost", "use").await;
    assert!(r.status().is_client_error());
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"role="alert""#));
    assert!(html.contains(r#"value="ghost""#));
    // Nothing was shared.
    let page = john.get("/hub/sharing/john/").await.text().await.unwrap();
    assert!(page.contains("Nobody but you"));
    // A fresh page has the usual choices and an empty name.
    assert!(page.contains(r#"<option value="user" selected>User</option>"#));
    assert!(page.contains(r#"<option value="use" selected>use</option>"#));
    assert!(page.contains(r#"<input name="name" required autocapitalize="off" value="">"#));
}
both_stores!(a_direct_share_with_a_mistake_comes_back_as_it_was_sent);

async fn revoking_while_links_are_active_says_they_still_admit(backend: Backend) {
    let (_upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let hint = "still let anyone who has one accept it again";
    // No links: the notice alone.
    let r = john.sharing_form(&[("action", "revoke-all-users")]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let page = john.get("/hub/sharing/john/?done=all-revoked").await;
    let html = page.text().await.unwrap();
    assert!(html.contains("access was revoked."));
    assert!(!html.contains(hint));
    // An active link: the notice says it still admits.
    let created = john
        .sharing_form(&[("action", "create-link"), ("role", "use")])
        .await;
    assert_eq!(created.status(), StatusCode::OK);
    let html = john
        .get("/hub/sharing/john/?done=all-revoked")
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains(hint));
    // Other notices do not.
    let html = john
        .get("/hub/sharing/john/?done=link-revoked")
        .await
        .text()
        .await
        .unwrap();
    assert!(!html.contains(hint));
}
both_stores!(revoking_while_links_are_active_says_they_still_admit);

async fn an_error_page_names_who_is_signed_in(backend: Backend) {
    let (_upstream, lk) = johns_server(backend).await;
    let nina = lk.signed_in("nina").await;
    let signed_in_as_nina = "Signed in as <strong>nina</strong>";
    let sign_in_button = r#"class="button" href="/hub/login""#;
    // Not shared with her (latchkey's HTTP/1.1 path): the page says who she is, and does not
    // offer Sign in. (Her XSRF cookie stays on latchkey's own paths, so no Sign out form here.)
    let r = nina.get("/user/john/").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let html = r.text().await.unwrap();
    assert!(html.contains(signed_in_as_nina), "{html}");
    assert!(!html.contains(sign_in_button));
    assert!(!html.contains("_xsrf"));
    // A link that is not valid, on latchkey's own pages (hyper's path): the same, with the
    // Sign out form and her XSRF token.
    let html = nina
        .get("/hub/accept-share?code=not-a-code")
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains(signed_in_as_nina));
    assert!(!html.contains(sign_in_button));
    assert!(html.contains(r#"action="/hub/logout""#));
    assert!(html.contains(&format!(r#"name="_xsrf" value="{}""#, nina.xsrf().await)));
    // Nobody signed in: no name.
    let r = reqwest::Client::new()
        .get(lk.url("/user/nobody/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let html = r.text().await.unwrap();
    assert!(html.contains("Error 404"));
    assert!(!html.contains("Signed in as"));
    // JSON errors are as they were.
    let r = nina
        .client
        .get(nina.url("/hub/api/shares/otto/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["request_id"].is_string());
}
both_stores!(an_error_page_names_who_is_signed_in);

async fn an_admin_grantee_may_invite_and_revoke_but_not_beyond_use(backend: Backend) {
    let (_upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let nina = lk.signed_in("nina").await;
    let otto = lk.signed_in("otto").await;
    let r = john
        .api(
            Method::POST,
            "/hub/api/shares/john/",
            Some(json!({"user": "nina", "role": "admin"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // nina invites otto with `use`, but may not hand out `admin`.
    let r = nina
        .api(
            Method::POST,
            "/hub/api/share-codes/john/",
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let (code, invite) = nina.invite("john/", json!({"role": "use"})).await;
    assert_eq!(invite["created_by"], "nina");
    assert_eq!(otto.accept(&code).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(otto.get("/user/john/").await.status(), StatusCode::OK);
    let shares: serde_json::Value = nina
        .get("/hub/api/shares/john/")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shares["_pagination"]["total"], 2);
    // She may revoke otto, but not everyone, and nobody but the owner revokes an admin.
    let r = nina
        .api(Method::DELETE, "/hub/api/shares/john/", None)
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    nina.revoke("john/", "otto").await;
    assert_eq!(
        otto.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );
    let r = john
        .api(
            Method::POST,
            "/hub/api/shares/john/",
            Some(json!({"user": "otto", "role": "admin"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = nina
        .api(
            Method::PATCH,
            "/hub/api/shares/john/",
            Some(json!({"user": "otto"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(otto.get("/user/john/").await.status(), StatusCode::OK);
    // The owner's page offers admin; hers does not.
    let page = nina.get("/hub/sharing/john/").await.text().await.unwrap();
    assert!(!page.contains("value=\"admin\""));
    let page = john.get("/hub/sharing/john/").await.text().await.unwrap();
    assert!(page.contains("value=\"admin\""));
}
both_stores!(an_admin_grantee_may_invite_and_revoke_but_not_beyond_use);
