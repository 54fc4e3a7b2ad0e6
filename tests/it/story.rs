//! The whole story: john shares his running server with nina by an invite link, sees that she
//! accepted and is connected, revokes her, and a restart of his server voids everything.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::both_stores;
use crate::helpers::*;

async fn john_shares_with_nina_who_accepts_and_is_revoked_at_once(backend: Backend) {
    let (upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let nina = lk.signed_in("nina").await;

    // Before any invite, nina is refused and the upstream sees nothing of it.
    let hits = upstream.hits();
    let r = nina.get("/user/john/").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("not shared with you"));
    assert_eq!(upstream.hits(), hits);

    let (code, invite) = john
        .invite("john/", json!({"expires_in": 3600, "role": "use"}))
        .await;
    assert_eq!(code.len(), 43);
    assert_eq!(invite["role"], "use");
    assert_eq!(invite["exchange_count"], 0);
    assert!(invite["accept_url"].as_str().unwrap().ends_with(&code));
    assert!(
        invite["full_accept_url"]
            .as_str()
            .unwrap()
            .starts_with("http://")
    );

    // The accept page says who invites to what, with which role, until when; a GET never grants.
    let page = nina.get(&format!("/hub/accept-share?code={code}")).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    assert!(html.contains("john invites you"));
    assert!(html.contains("john&#39;s server") || html.contains("john's server"));
    assert!(html.contains("role-use"));
    assert!(html.contains(&invite["expires_at"].as_str().unwrap()[..16]));
    assert_eq!(
        nina.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );

    // Accepting lands nina in john's server, with no code in the URL.
    let r = nina.accept(&code).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/user/john/");
    let r = nina.get("/user/john/tree").await;
    assert_eq!(r.status(), StatusCode::OK);
    let seen = upstream.last();
    assert_eq!(seen.path, "/user/john/tree");
    assert_eq!(seen.headers["x-latchkey-user"], "nina");
    assert_eq!(seen.headers["x-latchkey-role"], "use");
    assert!(!seen.headers.contains_key("authorization"));
    assert!(
        seen.headers
            .get("cookie")
            .is_none_or(|c| !c.to_str().unwrap().contains("latchkey-session"))
    );

    // Her WebSocket works through latchkey.
    let mut ws = nina
        .websocket("/user/john/api/kernels/k/channels")
        .await
        .unwrap();
    ws.send(Message::text("print(6*7)")).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "print(6*7)");

    // john sees nina, when she accepted, that she came by a link, and that she is connected.
    let shares: serde_json::Value = john
        .get("/hub/api/shares/john/")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shares["_pagination"]["total"], 1);
    let item = &shares["items"][0];
    assert_eq!(item["user"]["name"], "nina");
    assert_eq!(item["kind"], "user");
    assert_eq!(item["role"], "use");
    assert_eq!(item["via"]["type"], "code");
    assert_eq!(item["connected"], true);
    assert!(item["created_at"].as_str().unwrap().ends_with('Z'));
    let codes: serde_json::Value = john
        .get("/hub/api/share-codes/john/")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(codes["items"][0]["exchange_count"], 1);
    assert!(
        codes["items"][0]["code"].is_null(),
        "codes are never listed"
    );

    // john revokes nina: her socket closes at once and her next request is refused.
    john.revoke("john/", "nina").await;
    assert!(
        closed_within(&mut ws, Duration::from_secs(2))
            .await
            .is_some(),
        "the revoked WebSocket must close"
    );
    let hits = upstream.hits();
    let r = nina.get("/user/john/").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("revoked"));
    assert_eq!(upstream.hits(), hits);
    assert!(
        nina.websocket("/user/john/api/kernels/k/channels")
            .await
            .is_err()
    );
    lk.stop().await;
}
both_stores!(john_shares_with_nina_who_accepts_and_is_revoked_at_once);

async fn a_server_restart_voids_every_grant_and_link(backend: Backend) {
    let (upstream, lk) = johns_server(backend).await;
    let john = lk.signed_in("john").await;
    let nina = lk.signed_in("nina").await;
    let (code, _) = john.invite("john/", json!({})).await;
    let (unused, _) = john.invite("john/", json!({})).await;
    assert_eq!(nina.accept(&code).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(nina.get("/user/john/").await.status(), StatusCode::OK);
    let mut ws = nina.websocket("/user/john/ws").await.unwrap();

    // JupyterHub restarting re-posts the identical route: nothing changes.
    lk.register_john(&upstream).await;
    assert_eq!(nina.get("/user/john/").await.status(), StatusCode::OK);

    // The server restarts on a new port: a new session, so grants and links are void.
    let restarted = Upstream::spawn().await;
    lk.register_john(&restarted).await;
    assert!(
        closed_within(&mut ws, Duration::from_secs(2))
            .await
            .is_some(),
        "the old session's WebSocket must close"
    );
    let r = nina.get("/user/john/").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("restarted"));
    assert_eq!(restarted.hits(), 0);
    for c in [&code, &unused] {
        assert_eq!(nina.accept(c).await.status(), StatusCode::NOT_FOUND);
    }
    let shares: serde_json::Value = john
        .get("/hub/api/shares/john/")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shares["_pagination"]["total"], 0);
    let codes: serde_json::Value = john
        .get("/hub/api/share-codes/john/")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(codes["_pagination"]["total"], 0);

    // An explicit session id works the same way, and deleting the route ends the session too.
    let (code, _) = john.invite("john/", json!({})).await;
    assert_eq!(nina.accept(&code).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(nina.get("/user/john/").await.status(), StatusCode::OK);
    let body = json!({"user": "john", "server_name": "", "target": restarted.target(), "session": "pod-2"});
    assert_eq!(
        lk.post_route("/user/john", body.clone()).await,
        StatusCode::CREATED
    );
    assert_eq!(
        nina.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );
    let (code, _) = john.invite("john/", json!({})).await;
    assert_eq!(nina.accept(&code).await.status(), StatusCode::SEE_OTHER);
    assert_eq!(lk.delete_route("/user/john").await, StatusCode::NO_CONTENT);
    assert_eq!(lk.post_route("/user/john", body).await, StatusCode::CREATED);
    assert_eq!(
        nina.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(john.get("/user/john/").await.status(), StatusCode::OK);
    lk.stop().await;
}
both_stores!(a_server_restart_voids_every_grant_and_link);
