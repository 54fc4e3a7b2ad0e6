//! The store contract: the same assertions against both backends, `MemoryStore` and a
//! `RedisStore` on a real redis-server, so that the two cannot drift apart. Each contract is an
//! `async fn(&dyn Store)`; `contract!` turns it into `<name>::on_memory` and `<name>::on_redis`.

use std::time::Duration;

use latchkey::auth::Identity;
use latchkey::clock::{self, Timestamp};
use latchkey::error::Error;
use latchkey::ids::{GroupName, ServerName, ServerRef, UserName};
use latchkey::secret::{Secret, TokenHash, random_id};
use latchkey::sharing::{EndReason, Grant, Grantee, InviteRecord, Role, Via};
use latchkey::store::memory::MemoryStore;
use latchkey::store::redis::RedisStore;
use latchkey::store::{ApiTokenRecord, InviteView, LoginRecord, NewRoute, Store, UserRecord};

use crate::helpers::{Redis, eventually};

/// One `#[tokio::test]` per backend for each contract function.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn on_memory() {
                let store = super::MemoryStore::default();
                super::$name(&store).await;
            }

            #[tokio::test]
            async fn on_redis() {
                let redis = super::Redis::start().await;
                let store = super::RedisStore::connect(&redis.url())
                    .await
                    .expect("the redis store connects");
                super::$name(&store).await;
                drop(redis);
            }
        }
    )*};
}

contract!(
    failed_sign_ins_are_counted_per_client_in_a_window,
    reposting_the_identical_route_keeps_the_session,
    a_different_target_starts_a_new_session_and_voids_its_grants_and_invites,
    a_different_explicit_session_starts_a_new_session,
    an_ended_session_stays_ended_when_its_explicit_id_comes_back,
    deleting_a_route_ends_its_session,
    an_invite_needs_the_current_session_of_a_running_server,
    an_accepted_invite_counts_the_exchange_and_grants_its_role,
    reaccepting_refreshes_the_grant_and_never_downgrades_its_role,
    an_invite_for_groups_refuses_non_members_and_admits_members,
    revoking_one_invite_voids_only_its_code,
    revoking_all_invites_voids_every_code,
    an_expired_invite_is_refused_everywhere,
    invites_are_listed_in_creation_order,
    grants_are_put_replaced_and_revoked,
    revoking_all_grants_keeps_the_session_and_records_revoked,
    a_session_change_records_server_restarted,
    leaving_records_left,
    a_regranted_user_has_no_end_reason,
    shared_with_finds_user_and_group_grants,
    logins_are_stored_read_and_deleted,
    a_login_taken_is_gone_for_every_later_take,
    an_expired_login_is_not_returned,
    api_tokens_are_stored_and_read,
    users_from_an_identity_provider_are_stored_replaced_and_listed,
    api_tokens_are_listed_and_deleted_per_user,
    the_revision_increases_with_every_change,
    recorded_activity_shows_in_the_route_list,
    grant_writes_for_an_ended_session_change_nothing,
);

// ---------------------------------------------------------------------------------------------
// Small builders.

fn user(name: &str) -> UserName {
    UserName::parse(name).expect("valid user name")
}

fn group(name: &str) -> GroupName {
    GroupName::parse(name).expect("valid group name")
}

/// The owner's default server.
fn server(owner: &str) -> ServerRef {
    ServerRef::new(user(owner), ServerName::default())
}

fn identity(name: &str, groups: &[&str]) -> Identity {
    Identity {
        name: user(name),
        groups: groups.iter().map(|g| group(g)).collect(),
    }
}

fn nina() -> Identity {
    identity("nina", &["team-b"])
}

fn otto() -> Identity {
    identity("otto", &["team-a"])
}

fn route_path(owner: &str) -> String {
    format!("/user/{owner}")
}

/// What the route API would pass for `owner`'s default server.
fn new_route(owner: &str, target: &str, explicit_session: Option<&str>) -> NewRoute {
    let mut data = serde_json::Map::new();
    data.insert("user".into(), owner.into());
    data.insert("server_name".into(), "".into());
    data.insert("target".into(), target.into());
    if let Some(s) = explicit_session {
        data.insert("session".into(), s.into());
    }
    NewRoute {
        path: route_path(owner),
        data,
        target: target.to_owned(),
        server: Some(server(owner)),
        explicit_session: explicit_session.map(str::to_owned),
        fresh_session: random_id(),
        now: clock::now(),
    }
}

/// The server's current session, as the app passes it to grant writes.
async fn cur(store: &dyn Store, server: &ServerRef) -> String {
    store
        .grants(server)
        .await
        .unwrap()
        .session
        .unwrap_or_default()
}

/// Starts `owner`'s server on a fresh target and returns it with its session.
async fn start(store: &dyn Store, owner: &str) -> (ServerRef, String) {
    let target = format!("http://{}.example:8888", random_id());
    let change = store
        .put_route(new_route(owner, &target, None))
        .await
        .expect("put_route");
    let route = change.route.expect("put_route returns the stored route");
    (server(owner), route.session)
}

fn invite_record(role: Role, created_at: Timestamp, expires_at: Timestamp) -> InviteRecord {
    InviteRecord {
        id: random_id(),
        role,
        created_by: user("john"),
        created_at,
        expires_at,
        groups: vec![],
        exchange_count: 0,
        last_exchanged_at: None,
    }
}

/// Creates an invite valid for an hour; returns its code and record.
async fn invite(
    store: &dyn Store,
    server: &ServerRef,
    session: &str,
    role: Role,
    groups: &[&str],
) -> (Secret, InviteRecord) {
    let now = store.now().await.expect("now");
    let mut record = invite_record(role, now, now + 3600);
    record.groups = groups.iter().map(|g| group(g)).collect();
    let code = Secret::generate();
    store
        .create_invite(server, session, &code.hash(), &record)
        .await
        .expect("create_invite on the current session");
    (code, record)
}

fn direct(grantee: Grantee, role: Role, created_at: Timestamp) -> Grant {
    Grant {
        grantee,
        role,
        created_at,
        expires_at: None,
        via: Via::Direct { by: user("john") },
    }
}

fn nina_grantee() -> Grantee {
    Grantee::User(user("nina"))
}

/// The grants of a server, in a stable order (backends need not agree on one).
async fn sorted_grants(store: &dyn Store, server: &ServerRef) -> (Option<String>, Vec<Grant>) {
    let mut g = store.grants(server).await.expect("grants");
    g.grants.sort_by(|a, b| a.grantee.cmp(&b.grantee));
    (g.session, g.grants)
}

async fn accept(
    store: &dyn Store,
    code: &Secret,
    who: &Identity,
) -> latchkey::error::Result<Grant> {
    let now = store.now().await.expect("now");
    store
        .accept_invite(&code.hash(), who, now)
        .await
        .map(|a| a.grant)
}

/// Asserts that a code opens nothing: not found, not accepted, not listed.
async fn assert_code_dead(store: &dyn Store, server: &ServerRef, code: &Secret, id: &str) {
    assert_eq!(store.find_invite(&code.hash()).await.unwrap(), None);
    assert_eq!(
        accept(store, code, &otto()).await.unwrap_err(),
        Error::InviteInvalid
    );
    assert!(
        store
            .list_invites(server)
            .await
            .unwrap()
            .iter()
            .all(|i| i.id != id),
        "a dead invite is not listed"
    );
}

// ---------------------------------------------------------------------------------------------
// Routes and sessions.

async fn reposting_the_identical_route_keeps_the_session(store: &dyn Store) {
    let target = "http://127.0.0.1:8888";
    let first = store
        .put_route(new_route("john", target, None))
        .await
        .unwrap();
    assert_eq!(first.ended, None, "nothing ran before");
    let first_route = first.route.unwrap();
    let s = server("john");
    let (code, _) = invite(store, &s, &first_route.session, Role::Use, &[]).await;
    store
        .put_grant(
            &s,
            &cur(store, &s).await,
            &direct(nina_grantee(), Role::View, clock::now()),
        )
        .await
        .unwrap();

    let mut again = new_route("john", target, None);
    again.now = first_route.created_at + 100;
    let second = store.put_route(again).await.unwrap();
    assert_eq!(second.ended, None, "the identical route ends nothing");
    let second_route = second.route.unwrap();
    assert_eq!(second_route.session, first_route.session);
    assert_eq!(second_route.created_at, first_route.created_at);

    let routes = store.list_routes().await.unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].path, "/user/john");
    assert_eq!(routes[0].session, first_route.session);
    assert_eq!(routes[0].data["target"], target);

    let (session, grants) = sorted_grants(store, &s).await;
    assert_eq!(session.as_deref(), Some(first_route.session.as_str()));
    assert_eq!(grants.len(), 1, "the grant survives the re-post");
    assert!(store.find_invite(&code.hash()).await.unwrap().is_some());
}

async fn a_different_target_starts_a_new_session_and_voids_its_grants_and_invites(
    store: &dyn Store,
) {
    let s = server("john");
    let first = store
        .put_route(new_route("john", "http://127.0.0.1:8888", None))
        .await
        .unwrap()
        .route
        .unwrap();
    let (code, record) = invite(store, &s, &first.session, Role::Use, &[]).await;
    accept(store, &code, &nina()).await.unwrap();
    store
        .put_grant(
            &s,
            &cur(store, &s).await,
            &direct(Grantee::Group(group("team-a")), Role::View, clock::now()),
        )
        .await
        .unwrap();

    let moved = new_route("john", "http://127.0.0.1:9999", None);
    let fresh = moved.fresh_session.clone();
    let change = store.put_route(moved).await.unwrap();
    assert_eq!(change.ended, Some((s.clone(), first.session.clone())));
    let route = change.route.unwrap();
    assert_eq!(
        route.session, fresh,
        "the new session is the caller's fresh one"
    );
    assert_ne!(route.session, first.session);
    assert_eq!(route.data["target"], "http://127.0.0.1:9999");

    let (session, grants) = sorted_grants(store, &s).await;
    assert_eq!(session, Some(fresh.clone()));
    assert!(grants.is_empty(), "grants of the old session are void");
    assert_code_dead(store, &s, &code, &record.id).await;
    assert!(store.list_invites(&s).await.unwrap().is_empty());
    assert!(matches!(
        store
            .create_invite(
                &s,
                &first.session,
                &Secret::generate().hash(),
                &invite_record(Role::Use, clock::now(), clock::now() + 60)
            )
            .await,
        Err(Error::ServerNotRunning(_))
    ));
    assert_eq!(store.shared_with(&nina()).await.unwrap(), vec![]);
    assert_eq!(store.list_routes().await.unwrap().len(), 1);
}

async fn a_different_explicit_session_starts_a_new_session(store: &dyn Store) {
    let s = server("john");
    let target = "http://127.0.0.1:8888";
    let first = store
        .put_route(new_route("john", target, Some("s-one")))
        .await
        .unwrap();
    assert_eq!(first.route.unwrap().session, "s-one");
    store
        .put_grant(
            &s,
            &cur(store, &s).await,
            &direct(nina_grantee(), Role::Use, clock::now()),
        )
        .await
        .unwrap();

    let same = store
        .put_route(new_route("john", target, Some("s-one")))
        .await
        .unwrap();
    assert_eq!(same.ended, None);
    assert_eq!(same.route.unwrap().session, "s-one");
    assert_eq!(sorted_grants(store, &s).await.1.len(), 1);

    let (code, record) = invite(store, &s, "s-one", Role::View, &[]).await;
    let other = store
        .put_route(new_route("john", target, Some("s-two")))
        .await
        .unwrap();
    assert_eq!(other.ended, Some((s.clone(), "s-one".to_owned())));
    assert_eq!(other.route.unwrap().session, "s-two");
    let (session, grants) = sorted_grants(store, &s).await;
    assert_eq!(session.as_deref(), Some("s-two"));
    assert!(grants.is_empty());
    assert_code_dead(store, &s, &code, &record.id).await;

    // Dropping the explicit session is a change too.
    let plain = new_route("john", target, None);
    let fresh = plain.fresh_session.clone();
    let change = store.put_route(plain).await.unwrap();
    assert_eq!(change.ended, Some((s.clone(), "s-two".to_owned())));
    assert_eq!(change.route.unwrap().session, fresh);
}

async fn an_ended_session_stays_ended_when_its_explicit_id_comes_back(store: &dyn Store) {
    let s = server("john");
    let target = "http://127.0.0.1:8888";
    store
        .put_route(new_route("john", target, Some("s-one")))
        .await
        .unwrap();
    let (code, record) = invite(store, &s, "s-one", Role::Use, &[]).await;
    accept(store, &code, &nina()).await.unwrap();

    // Deleted, then posted again with the same explicit session.
    store
        .delete_route(&route_path("john"), Some(&s))
        .await
        .unwrap();
    let back = store
        .put_route(new_route("john", target, Some("s-one")))
        .await
        .unwrap();
    assert_eq!(back.ended, None, "nothing was running");
    assert_eq!(back.route.unwrap().session, "s-one");
    assert_eq!(
        sorted_grants(store, &s).await,
        (Some("s-one".into()), vec![])
    );
    assert_code_dead(store, &s, &code, &record.id).await;
    assert!(store.list_invites(&s).await.unwrap().is_empty());

    // Switched away and back again.
    let (code, record) = invite(store, &s, "s-one", Role::Use, &[]).await;
    accept(store, &code, &nina()).await.unwrap();
    store
        .put_route(new_route("john", target, Some("s-two")))
        .await
        .unwrap();
    let back = store
        .put_route(new_route("john", target, Some("s-one")))
        .await
        .unwrap();
    assert_eq!(back.ended, Some((s.clone(), "s-two".to_owned())));
    assert_eq!(
        sorted_grants(store, &s).await,
        (Some("s-one".into()), vec![])
    );
    assert_code_dead(store, &s, &code, &record.id).await;
    assert_eq!(store.shared_with(&nina()).await.unwrap(), vec![]);
}

async fn deleting_a_route_ends_its_session(store: &dyn Store) {
    let (s, session) = start(store, "john").await;
    let (code, record) = invite(store, &s, &session, Role::Use, &[]).await;
    accept(store, &code, &nina()).await.unwrap();

    let change = store
        .delete_route(&route_path("john"), Some(&s))
        .await
        .unwrap();
    assert_eq!(change.ended, Some((s.clone(), session.clone())));
    let deleted = change.route.expect("the deleted route is returned");
    assert_eq!(deleted.path, "/user/john");
    assert_eq!(deleted.session, session);
    assert!(store.list_routes().await.unwrap().is_empty());

    let grants = store.grants(&s).await.unwrap();
    assert_eq!(grants.session, None, "no route, no running session");
    assert!(grants.grants.is_empty());
    assert_code_dead(store, &s, &code, &record.id).await;
    assert!(matches!(
        store
            .create_invite(
                &s,
                &session,
                &Secret::generate().hash(),
                &invite_record(Role::Use, clock::now(), clock::now() + 60)
            )
            .await,
        Err(Error::ServerNotRunning(_))
    ));
    assert!(matches!(
        store
            .put_grant(
                &s,
                &cur(store, &s).await,
                &direct(nina_grantee(), Role::Use, clock::now())
            )
            .await,
        Err(Error::ServerNotRunning(_))
    ));
    assert_eq!(
        store.end_reason(&s, &user("nina")).await.unwrap(),
        Some(EndReason::ServerRestarted)
    );

    let again = store
        .delete_route(&route_path("john"), Some(&s))
        .await
        .unwrap();
    assert_eq!(again.route, None);
    assert_eq!(again.ended, None);
}

// ---------------------------------------------------------------------------------------------
// Invites.

async fn an_invite_needs_the_current_session_of_a_running_server(store: &dyn Store) {
    let now = store.now().await.unwrap();
    let never_started = server("otto");
    let code = Secret::generate();
    let record = invite_record(Role::Use, now, now + 60);
    assert!(matches!(
        store
            .create_invite(&never_started, "anything", &code.hash(), &record)
            .await,
        Err(Error::ServerNotRunning(_))
    ));

    let (s, session) = start(store, "john").await;
    let wrong = format!("{session}-not");
    assert!(matches!(
        store.create_invite(&s, &wrong, &code.hash(), &record).await,
        Err(Error::ServerNotRunning(_))
    ));
    assert_eq!(store.find_invite(&code.hash()).await.unwrap(), None);
    assert!(store.list_invites(&s).await.unwrap().is_empty());
    assert_eq!(
        accept(store, &code, &nina()).await.unwrap_err(),
        Error::InviteInvalid
    );

    store
        .create_invite(&s, &session, &code.hash(), &record)
        .await
        .unwrap();
    assert_eq!(store.list_invites(&s).await.unwrap(), vec![record]);
}

async fn an_accepted_invite_counts_the_exchange_and_grants_its_role(store: &dyn Store) {
    let (s, session) = start(store, "john").await;
    let (code, record) = invite(store, &s, &session, Role::Use, &[]).await;
    assert_eq!(
        store.find_invite(&code.hash()).await.unwrap(),
        Some(InviteView {
            server: s.clone(),
            invite: record.clone(),
        })
    );
    assert_eq!(
        store.find_invite(&Secret::generate().hash()).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .accept_invite(
                &TokenHash::of("no such code"),
                &nina(),
                store.now().await.unwrap()
            )
            .await
            .unwrap_err(),
        Error::InviteInvalid
    );

    let before = store.now().await.unwrap();
    let accepted = store
        .accept_invite(&code.hash(), &nina(), before)
        .await
        .unwrap();
    let after = store.now().await.unwrap();
    assert_eq!(accepted.server, s);
    let grant = accepted.grant;
    assert_eq!(grant.grantee, nina_grantee());
    assert_eq!(grant.role, Role::Use, "the grant has the invite's role");
    assert_eq!(grant.expires_at, None);
    assert_eq!(
        grant.via,
        Via::Code {
            id: record.id.clone()
        }
    );
    assert!((before..=after).contains(&grant.created_at));
    assert_eq!(sorted_grants(store, &s).await.1, vec![grant.clone()]);

    let listed = store.list_invites(&s).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, record.id);
    assert_eq!(listed[0].exchange_count, 1);
    let at = listed[0]
        .last_exchanged_at
        .expect("last_exchanged_at is set");
    assert!((before..=after).contains(&at));
    let found = store.find_invite(&code.hash()).await.unwrap().unwrap();
    assert_eq!(
        found.invite, listed[0],
        "find_invite and list_invites show the same record"
    );

    // A code may be used by several people.
    accept(store, &code, &otto()).await.unwrap();
    let listed = store.list_invites(&s).await.unwrap();
    assert_eq!(listed[0].exchange_count, 2);
    let (_, grants) = sorted_grants(store, &s).await;
    assert_eq!(
        grants.iter().map(|g| g.grantee.clone()).collect::<Vec<_>>(),
        vec![nina_grantee(), Grantee::User(user("otto"))]
    );
}

async fn reaccepting_refreshes_the_grant_and_never_downgrades_its_role(store: &dyn Store) {
    let (s, session) = start(store, "john").await;
    let (view, view_record) = invite(store, &s, &session, Role::View, &[]).await;
    let (admin, admin_record) = invite(store, &s, &session, Role::Admin, &[]).await;

    // An old direct grant is refreshed by accepting: new time, new origin, higher role.
    let long_ago = store.now().await.unwrap() - 10_000;
    store
        .put_grant(
            &s,
            &cur(store, &s).await,
            &direct(nina_grantee(), Role::View, long_ago),
        )
        .await
        .unwrap();
    let before = store.now().await.unwrap();
    let upgraded = accept(store, &admin, &nina()).await.unwrap();
    assert_eq!(upgraded.role, Role::Admin);
    assert!(
        upgraded.created_at >= before,
        "re-accepting refreshes the time"
    );
    assert_eq!(
        upgraded.via,
        Via::Code {
            id: admin_record.id.clone()
        }
    );

    let again = accept(store, &view, &nina()).await.unwrap();
    assert_eq!(
        again.role,
        Role::Admin,
        "accepting a lower role never downgrades"
    );
    assert_eq!(
        again.via,
        Via::Code {
            id: view_record.id.clone()
        }
    );
    let (_, grants) = sorted_grants(store, &s).await;
    assert_eq!(grants, vec![again], "still one grant for nina");

    let counts: Vec<(String, u64)> = store
        .list_invites(&s)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.id, i.exchange_count))
        .collect();
    assert!(counts.contains(&(view_record.id, 1)));
    assert!(counts.contains(&(admin_record.id, 1)));
}

async fn an_invite_for_groups_refuses_non_members_and_admits_members(store: &dyn Store) {
    let (s, session) = start(store, "john").await;
    let (code, record) = invite(store, &s, &session, Role::Use, &["team-a", "team-c"]).await;
    assert_eq!(
        store
            .find_invite(&code.hash())
            .await
            .unwrap()
            .unwrap()
            .invite
            .groups,
        vec![group("team-a"), group("team-c")]
    );

    let refused = accept(store, &code, &nina()).await;
    assert!(
        matches!(refused, Err(Error::Forbidden(_))),
        "nina is not in team-a: {refused:?}"
    );
    let loner = accept(store, &code, &identity("zed", &[])).await;
    assert!(matches!(loner, Err(Error::Forbidden(_))), "{loner:?}");
    assert!(sorted_grants(store, &s).await.1.is_empty());
    assert_eq!(store.list_invites(&s).await.unwrap()[0].exchange_count, 0);

    let member = accept(store, &code, &identity("otto", &["team-x", "team-c"]))
        .await
        .unwrap();
    assert_eq!(member.grantee, Grantee::User(user("otto")));
    assert_eq!(member.role, Role::Use);
    assert_eq!(
        member.via,
        Via::Code {
            id: record.id.clone()
        }
    );
    let listed = store.list_invites(&s).await.unwrap();
    assert_eq!(listed[0].exchange_count, 1);
}

async fn revoking_one_invite_voids_only_its_code(store: &dyn Store) {
    let (s, session) = start(store, "john").await;
    let (one, one_record) = invite(store, &s, &session, Role::Use, &[]).await;
    let (two, two_record) = invite(store, &s, &session, Role::View, &[]).await;

    assert_eq!(
        store
            .revoke_invites(&s, Some(&one_record.id))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .revoke_invites(&s, Some(&one_record.id))
            .await
            .unwrap(),
        0,
        "a revoked invite cannot be revoked again"
    );
    assert_eq!(
        store.revoke_invites(&s, Some("no-such-id")).await.unwrap(),
        0
    );
    assert_code_dead(store, &s, &one, &one_record.id).await;

    assert_eq!(
        store.list_invites(&s).await.unwrap(),
        vec![two_record.clone()]
    );
    let grant = accept(store, &two, &nina()).await.unwrap();
    assert_eq!(grant.role, Role::View);
}

async fn revoking_all_invites_voids_every_code(store: &dyn Store) {
    assert_eq!(
        store.revoke_invites(&server("john"), None).await.unwrap(),
        0,
        "nothing to revoke without a session"
    );
    let (s, session) = start(store, "john").await;
    let (one, one_record) = invite(store, &s, &session, Role::Use, &[]).await;
    let (two, two_record) = invite(store, &s, &session, Role::View, &[]).await;
    accept(store, &one, &nina()).await.unwrap();

    assert_eq!(store.revoke_invites(&s, None).await.unwrap(), 1);
    assert!(store.list_invites(&s).await.unwrap().is_empty());
    assert_code_dead(store, &s, &one, &one_record.id).await;
    assert_code_dead(store, &s, &two, &two_record.id).await;
    assert_eq!(
        sorted_grants(store, &s).await.1.len(),
        1,
        "revoking links keeps the grants they gave"
    );

    // The session still runs: new invites work.
    let (three, three_record) = invite(store, &s, &session, Role::Use, &[]).await;
    assert_eq!(store.list_invites(&s).await.unwrap(), vec![three_record]);
    accept(store, &three, &otto()).await.unwrap();
}

async fn an_expired_invite_is_refused_everywhere(store: &dyn Store) {
    let (s, session) = start(store, "john").await;
    let now = store.now().await.unwrap();
    let short = invite_record(Role::Use, now, now + 1);
    let code = Secret::generate();
    store
        .create_invite(&s, &session, &code.hash(), &short)
        .await
        .unwrap();
    let (long, long_record) = invite(store, &s, &session, Role::View, &[]).await;
    assert!(store.find_invite(&code.hash()).await.unwrap().is_some());

    // Deliberate: wait past the expiry second.
    tokio::time::sleep(Duration::from_millis(2100)).await;

    assert_code_dead(store, &s, &code, &short.id).await;
    assert_eq!(
        store.list_invites(&s).await.unwrap(),
        vec![long_record],
        "only the live invite is listed"
    );
    assert!(sorted_grants(store, &s).await.1.is_empty());
    assert_eq!(
        accept(store, &long, &nina()).await.unwrap().role,
        Role::View
    );
}

async fn invites_are_listed_in_creation_order(store: &dyn Store) {
    let (s, session) = start(store, "john").await;
    let now = store.now().await.unwrap();
    // Ids in the opposite order of creation times, so that an order by id shows.
    let mut ids: Vec<String> = (0..3).map(|_| random_id()).collect();
    ids.sort();
    ids.reverse();
    let mut records = vec![];
    for (n, id) in ids.into_iter().enumerate() {
        let mut r = invite_record(Role::Use, now - 30 + n as i64, now + 3600);
        r.id = id;
        store
            .create_invite(&s, &session, &Secret::generate().hash(), &r)
            .await
            .unwrap();
        records.push(r);
    }
    assert_eq!(store.list_invites(&s).await.unwrap(), records);
}

// ---------------------------------------------------------------------------------------------
// Grants and end reasons.

async fn grants_are_put_replaced_and_revoked(store: &dyn Store) {
    let (s, session) = start(store, "john").await;
    let now = store.now().await.unwrap();
    let team = Grantee::Group(group("team-a"));
    let nina_use = direct(nina_grantee(), Role::Use, now);
    let team_view = Grant {
        expires_at: Some(now + 600),
        ..direct(team.clone(), Role::View, now)
    };
    store
        .put_grant(&s, &cur(store, &s).await, &nina_use)
        .await
        .unwrap();
    store
        .put_grant(&s, &cur(store, &s).await, &team_view)
        .await
        .unwrap();
    assert_eq!(
        sorted_grants(store, &s).await,
        (
            Some(session.clone()),
            vec![nina_use.clone(), team_view.clone()]
        )
    );

    // put_grant replaces, even with a lower role.
    let nina_view = direct(nina_grantee(), Role::View, now + 1);
    store
        .put_grant(&s, &cur(store, &s).await, &nina_view)
        .await
        .unwrap();
    assert_eq!(
        sorted_grants(store, &s).await.1,
        vec![nina_view.clone(), team_view.clone()]
    );

    assert!(
        store
            .revoke_grant(
                &s,
                &cur(store, &s).await,
                &nina_grantee(),
                EndReason::Revoked
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke_grant(
                &s,
                &cur(store, &s).await,
                &nina_grantee(),
                EndReason::Revoked
            )
            .await
            .unwrap(),
        "there is no grant left to revoke"
    );
    assert_eq!(
        store.end_reason(&s, &user("nina")).await.unwrap(),
        Some(EndReason::Revoked)
    );
    assert_eq!(sorted_grants(store, &s).await.1, vec![team_view]);

    assert!(
        store
            .revoke_grant(&s, &cur(store, &s).await, &team, EndReason::Revoked)
            .await
            .unwrap()
    );
    assert!(sorted_grants(store, &s).await.1.is_empty());
    assert_eq!(store.end_reason(&s, &user("otto")).await.unwrap(), None);
    assert_eq!(
        store
            .end_reason(&server("otto"), &user("nina"))
            .await
            .unwrap(),
        None
    );
}

async fn revoking_all_grants_keeps_the_session_and_records_revoked(store: &dyn Store) {
    let (s, session) = start(store, "john").await;
    let (code, _) = invite(store, &s, &session, Role::Use, &[]).await;
    accept(store, &code, &nina()).await.unwrap();
    let now = store.now().await.unwrap();
    store
        .put_grant(
            &s,
            &cur(store, &s).await,
            &direct(Grantee::User(user("otto")), Role::Admin, now),
        )
        .await
        .unwrap();
    store
        .put_grant(
            &s,
            &cur(store, &s).await,
            &direct(Grantee::Group(group("team-b")), Role::View, now),
        )
        .await
        .unwrap();
    assert_eq!(sorted_grants(store, &s).await.1.len(), 3);

    store.revoke_all_grants(&s).await.unwrap();
    assert_eq!(
        sorted_grants(store, &s).await,
        (Some(session.clone()), vec![])
    );
    for who in ["nina", "otto"] {
        assert_eq!(
            store.end_reason(&s, &user(who)).await.unwrap(),
            Some(EndReason::Revoked),
            "{who}"
        );
    }
    assert_eq!(store.end_reason(&s, &user("zed")).await.unwrap(), None);
    assert_eq!(store.shared_with(&nina()).await.unwrap(), vec![]);

    // Invites are not grants: the code still works, in the same session.
    let again = accept(store, &code, &nina()).await.unwrap();
    assert_eq!(sorted_grants(store, &s).await.1, vec![again]);
}

async fn a_session_change_records_server_restarted(store: &dyn Store) {
    let (s, _) = start(store, "john").await;
    let now = store.now().await.unwrap();
    store
        .put_grant(
            &s,
            &cur(store, &s).await,
            &direct(nina_grantee(), Role::Use, now),
        )
        .await
        .unwrap();
    let (s2, _) = start(store, "john").await;
    assert_eq!(s2, s);
    assert_eq!(
        store.end_reason(&s, &user("nina")).await.unwrap(),
        Some(EndReason::ServerRestarted)
    );
    assert_eq!(store.end_reason(&s, &user("otto")).await.unwrap(), None);
}

async fn leaving_records_left(store: &dyn Store) {
    let (s, session) = start(store, "john").await;
    let (code, _) = invite(store, &s, &session, Role::Use, &[]).await;
    accept(store, &code, &nina()).await.unwrap();
    assert!(
        store
            .revoke_grant(&s, &cur(store, &s).await, &nina_grantee(), EndReason::Left)
            .await
            .unwrap()
    );
    assert_eq!(
        store.end_reason(&s, &user("nina")).await.unwrap(),
        Some(EndReason::Left)
    );
    assert!(sorted_grants(store, &s).await.1.is_empty());
}

async fn a_regranted_user_has_no_end_reason(store: &dyn Store) {
    let (s, _) = start(store, "john").await;
    let now = store.now().await.unwrap();
    for who in ["nina", "otto"] {
        store
            .put_grant(
                &s,
                &cur(store, &s).await,
                &direct(Grantee::User(user(who)), Role::Use, now),
            )
            .await
            .unwrap();
    }
    let (_, session) = start(store, "john").await;
    // nina is shared with again directly, otto through an invite of the new session.
    store
        .put_grant(
            &s,
            &cur(store, &s).await,
            &direct(nina_grantee(), Role::Use, now),
        )
        .await
        .unwrap();
    let (code, _) = invite(store, &s, &session, Role::View, &[]).await;
    accept(store, &code, &otto()).await.unwrap();
    for who in ["nina", "otto"] {
        assert_eq!(
            store.end_reason(&s, &user(who)).await.unwrap(),
            None,
            "{who} has access again, so it did not end"
        );
    }

    // The same after revoking everyone and sharing again in the same session.
    store.revoke_all_grants(&s).await.unwrap();
    assert_eq!(
        store.end_reason(&s, &user("nina")).await.unwrap(),
        Some(EndReason::Revoked)
    );
    store
        .put_grant(
            &s,
            &cur(store, &s).await,
            &direct(nina_grantee(), Role::View, now),
        )
        .await
        .unwrap();
    assert_eq!(store.end_reason(&s, &user("nina")).await.unwrap(), None);
    assert_eq!(
        store.end_reason(&s, &user("otto")).await.unwrap(),
        Some(EndReason::Revoked)
    );
}

async fn shared_with_finds_user_and_group_grants(store: &dyn Store) {
    let (johns, _) = start(store, "john").await;
    let (ottos, _) = start(store, "otto").await;
    let now = store.now().await.unwrap();
    let nina_direct = direct(nina_grantee(), Role::Use, now);
    let team_b = direct(Grantee::Group(group("team-b")), Role::View, now);
    store
        .put_grant(&johns, &cur(store, &johns).await, &nina_direct)
        .await
        .unwrap();
    store
        .put_grant(&ottos, &cur(store, &ottos).await, &team_b)
        .await
        .unwrap();

    assert_eq!(
        store.shared_with(&nina()).await.unwrap(),
        vec![
            (johns.clone(), nina_direct.clone()),
            (ottos.clone(), team_b.clone())
        ]
    );
    assert_eq!(
        store.shared_with(&identity("nina", &[])).await.unwrap(),
        vec![(johns.clone(), nina_direct.clone())],
        "without the group only the direct grant counts"
    );
    assert_eq!(
        store
            .shared_with(&identity("zed", &["team-b"]))
            .await
            .unwrap(),
        vec![(ottos.clone(), team_b.clone())]
    );
    assert_eq!(store.shared_with(&otto()).await.unwrap(), vec![]);

    // Direct and group grants on one server: the best role is reported.
    let team_b_admin = direct(Grantee::Group(group("team-b")), Role::Admin, now);
    store
        .put_grant(&johns, &cur(store, &johns).await, &team_b_admin)
        .await
        .unwrap();
    assert_eq!(
        store.shared_with(&nina()).await.unwrap(),
        vec![
            (johns.clone(), team_b_admin.clone()),
            (ottos.clone(), team_b.clone())
        ]
    );

    store
        .revoke_grant(
            &johns,
            &cur(store, &johns).await,
            &Grantee::Group(group("team-b")),
            EndReason::Revoked,
        )
        .await
        .unwrap();
    store
        .revoke_grant(
            &johns,
            &cur(store, &johns).await,
            &nina_grantee(),
            EndReason::Revoked,
        )
        .await
        .unwrap();
    assert_eq!(
        store.shared_with(&nina()).await.unwrap(),
        vec![(ottos.clone(), team_b.clone())]
    );
    store
        .delete_route(&route_path("otto"), Some(&ottos))
        .await
        .unwrap();
    assert_eq!(store.shared_with(&nina()).await.unwrap(), vec![]);
}

// ---------------------------------------------------------------------------------------------
// Logins, API tokens, revision, activity.

async fn failed_sign_ins_are_counted_per_client_in_a_window(store: &dyn Store) {
    let (a, b) = ("192.0.2.1", "2001:db8::");
    assert_eq!(store.sign_in_failures(a, 60).await.unwrap(), None);
    let first = store.add_sign_in_failure(a, 60).await.unwrap();
    assert_eq!(first.count, 1);
    assert!((59..=60).contains(&first.ends_in), "{first:?}");
    let second = store.add_sign_in_failure(a, 60).await.unwrap();
    assert_eq!(second.count, 2);
    assert!(second.ends_in <= first.ends_in, "the window does not move");
    let now = store.sign_in_failures(a, 60).await.unwrap().unwrap();
    assert_eq!(now.count, 2);
    assert!((1..=60).contains(&now.ends_in));
    assert_eq!(
        store.sign_in_failures(b, 60).await.unwrap(),
        None,
        "per client"
    );

    // When the window closes the count starts again.
    store.add_sign_in_failure(b, 1).await.unwrap();
    store.add_sign_in_failure(b, 1).await.unwrap();
    let closed = eventually(Duration::from_secs(3), async || {
        store.sign_in_failures(b, 60).await.unwrap().is_none()
    })
    .await;
    assert!(closed, "the window closes after its second");
    assert_eq!(store.add_sign_in_failure(b, 1).await.unwrap().count, 1);
    assert_eq!(
        store.sign_in_failures(a, 60).await.unwrap().unwrap().count,
        2
    );
}

async fn logins_are_stored_read_and_deleted(store: &dyn Store) {
    let id = Secret::generate().hash();
    let now = clock::now();
    let record = LoginRecord {
        user: user("nina"),
        created_at: now,
        expires_at: now + 3600,
        on_host: None,
    };
    assert_eq!(store.get_login(&id).await.unwrap(), None);
    store.put_login(&id, &record).await.unwrap();
    assert_eq!(store.get_login(&id).await.unwrap(), Some(record.clone()));
    assert_eq!(
        store.get_login(&Secret::generate().hash()).await.unwrap(),
        None
    );

    let other = Secret::generate().hash();
    store.put_login(&other, &record).await.unwrap();
    store.delete_login(&id).await.unwrap();
    assert_eq!(store.get_login(&id).await.unwrap(), None);
    assert_eq!(
        store.get_login(&other).await.unwrap(),
        Some(record),
        "deleting one login keeps the others"
    );
    store.delete_login(&id).await.unwrap();
}

async fn users_from_an_identity_provider_are_stored_replaced_and_listed(store: &dyn Store) {
    assert_eq!(store.get_user(&user("nina")).await.unwrap(), None);
    assert_eq!(store.list_users().await.unwrap(), vec![]);
    let now = clock::now();
    let nina = UserRecord {
        name: user("nina"),
        subject: "f81d4fae-7dec-11d0-a765-00a0c91e6bf6".into(),
        groups: vec![group("physics"), group("lab")],
        first_seen: now - 100,
        last_seen: now - 100,
    };
    let ada = UserRecord {
        name: user("ada"),
        subject: "ada@provider".into(),
        groups: vec![],
        first_seen: now,
        last_seen: now,
    };
    store.put_user(&nina).await.unwrap();
    store.put_user(&ada).await.unwrap();
    assert_eq!(
        store.get_user(&user("nina")).await.unwrap(),
        Some(nina.clone())
    );
    let again = UserRecord {
        groups: vec![group("lab")],
        last_seen: now,
        ..nina
    };
    store.put_user(&again).await.unwrap();
    assert_eq!(
        store.get_user(&user("nina")).await.unwrap(),
        Some(again.clone()),
        "a later sign-in replaces the groups"
    );
    assert_eq!(
        store.list_users().await.unwrap(),
        vec![ada, again.clone()],
        "listed by name"
    );
    assert!(store.delete_user(&user("ada")).await.unwrap());
    assert!(
        !store.delete_user(&user("ada")).await.unwrap(),
        "gone already"
    );
    assert_eq!(store.get_user(&user("ada")).await.unwrap(), None);
    assert_eq!(store.list_users().await.unwrap(), vec![again]);
}

async fn a_login_taken_is_gone_for_every_later_take(store: &dyn Store) {
    let id = Secret::generate().hash();
    let now = clock::now();
    let record = LoginRecord {
        user: user("nina"),
        created_at: now,
        expires_at: now + 60,
        on_host: Some(latchkey::store::HostLogin {
            host: "john.lab.test".into(),
            parent: Secret::generate().hash().to_hex(),
            code: true,
        }),
    };
    assert_eq!(store.take_login(&id).await.unwrap(), None);
    store.put_login(&id, &record).await.unwrap();
    assert_eq!(
        store.get_login(&id).await.unwrap(),
        Some(record.clone()),
        "the host fields are stored as given"
    );
    assert_eq!(store.take_login(&id).await.unwrap(), Some(record));
    assert_eq!(
        store.take_login(&id).await.unwrap(),
        None,
        "taken once only"
    );
    assert_eq!(store.get_login(&id).await.unwrap(), None);

    let stale = Secret::generate().hash();
    let expired = LoginRecord {
        user: user("nina"),
        created_at: now - 100,
        expires_at: now - 10,
        on_host: None,
    };
    store.put_login(&stale, &expired).await.unwrap();
    assert_eq!(
        store.take_login(&stale).await.unwrap(),
        None,
        "an expired record is never taken"
    );
}

async fn an_expired_login_is_not_returned(store: &dyn Store) {
    let now = clock::now();
    let stale = Secret::generate().hash();
    store
        .put_login(
            &stale,
            &LoginRecord {
                user: user("nina"),
                created_at: now - 100,
                expires_at: now - 10,
                on_host: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_login(&stale).await.unwrap(),
        None,
        "a login that expired before it was stored"
    );

    let short = Secret::generate().hash();
    let record = LoginRecord {
        user: user("nina"),
        created_at: now,
        expires_at: now + 1,
        on_host: None,
    };
    store.put_login(&short, &record).await.unwrap();
    assert_eq!(store.get_login(&short).await.unwrap(), Some(record));

    // Deliberate: wait past the expiry second.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(store.get_login(&short).await.unwrap(), None);
}

async fn api_tokens_are_stored_and_read(store: &dyn Store) {
    let token = Secret::generate();
    let record = ApiTokenRecord {
        user: user("john"),
        created_at: clock::now(),
        note: "jupyterhub sync".into(),
        expires_at: Some(clock::now() + 3600),
    };
    assert_eq!(store.get_api_token(&token.hash()).await.unwrap(), None);
    store.put_api_token(&token.hash(), &record).await.unwrap();
    assert_eq!(
        store.get_api_token(&token.hash()).await.unwrap(),
        Some(record.clone())
    );
    assert_eq!(
        store
            .get_api_token(&TokenHash::of(&format!("{}x", token.expose())))
            .await
            .unwrap(),
        None
    );

    // An expired token is refused like an unknown one.
    let old = Secret::generate();
    let expired = ApiTokenRecord {
        expires_at: Some(store.now().await.unwrap() - 1),
        ..record.clone()
    };
    store.put_api_token(&old.hash(), &expired).await.unwrap();
    assert_eq!(store.get_api_token(&old.hash()).await.unwrap(), None);

    let renamed = ApiTokenRecord {
        note: "renamed".into(),
        ..record
    };
    store.put_api_token(&token.hash(), &renamed).await.unwrap();
    assert_eq!(
        store.get_api_token(&token.hash()).await.unwrap(),
        Some(renamed)
    );
}

async fn the_revision_increases_with_every_change(store: &dyn Store) {
    let mut last = store.revision().await.unwrap();
    let mut step = async |what: &str| {
        let now = store.revision().await.unwrap();
        assert!(now > last, "revision after {what}: {now} <= {last}");
        last = now;
    };

    let (s, session) = start(store, "john").await;
    step("put_route").await;
    let (code, record) = invite(store, &s, &session, Role::Use, &[]).await;
    step("create_invite").await;
    accept(store, &code, &nina()).await.unwrap();
    step("accept_invite").await;
    let now = store.now().await.unwrap();
    store
        .put_grant(
            &s,
            &cur(store, &s).await,
            &direct(Grantee::User(user("otto")), Role::View, now),
        )
        .await
        .unwrap();
    step("put_grant").await;
    store
        .revoke_grant(
            &s,
            &cur(store, &s).await,
            &nina_grantee(),
            EndReason::Revoked,
        )
        .await
        .unwrap();
    step("revoke_grant").await;
    store.revoke_all_grants(&s).await.unwrap();
    step("revoke_all_grants").await;
    store.revoke_invites(&s, Some(&record.id)).await.unwrap();
    step("revoke_invites(one)").await;
    store.revoke_invites(&s, None).await.unwrap();
    step("revoke_invites(all)").await;
    start(store, "john").await;
    step("put_route with a new target").await;
    store
        .delete_route(&route_path("john"), Some(&s))
        .await
        .unwrap();
    step("delete_route").await;
}

async fn recorded_activity_shows_in_the_route_list(store: &dyn Store) {
    let (_, session) = start(store, "john").await;
    let path = route_path("john");
    let before = store.list_routes().await.unwrap()[0].last_activity;
    let later = before + 60_000;
    store
        .record_activity(&[(path.clone(), later), ("/user/ghost".into(), later)])
        .await
        .unwrap();
    let routes = store.list_routes().await.unwrap();
    assert_eq!(routes.len(), 1, "activity never creates a route");
    assert_eq!(routes[0].last_activity, later);
    assert_eq!(routes[0].session, session);

    store
        .record_activity(&[(path.clone(), before)])
        .await
        .unwrap();
    assert_eq!(
        store.list_routes().await.unwrap()[0].last_activity,
        later,
        "activity never goes back in time"
    );

    store
        .delete_route(&path, Some(&server("john")))
        .await
        .unwrap();
    store.record_activity(&[(path, later + 1)]).await.unwrap();
    assert!(
        store.list_routes().await.unwrap().is_empty(),
        "a deleted route does not come back through activity"
    );
}

// ---------------------------------------------------------------------------------------------
// Redis only: durability.

#[tokio::test]
async fn every_acknowledged_write_survives_a_redis_restart() {
    let mut redis = Redis::start().await;
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let (s, session) = start(&store, "john").await;
    let (code, record) = invite(&store, &s, &session, Role::Use, &[]).await;
    let accepted = accept(&store, &code, &nina()).await.unwrap();
    let now = store.now().await.unwrap();
    let otto_grant = direct(Grantee::User(user("otto")), Role::Admin, now);
    store.put_grant(&s, &session, &otto_grant).await.unwrap();
    let login_id = Secret::generate().hash();
    let login = LoginRecord {
        user: user("nina"),
        created_at: now,
        expires_at: now + 3600,
        on_host: None,
    };
    store.put_login(&login_id, &login).await.unwrap();
    let token = Secret::generate().hash();
    let token_record = ApiTokenRecord {
        user: user("john"),
        created_at: now,
        note: "sync".into(),
        expires_at: None,
    };
    store.put_api_token(&token, &token_record).await.unwrap();
    let routes = store.list_routes().await.unwrap();
    let invites = store.list_invites(&s).await.unwrap();
    let grants = sorted_grants(&store, &s).await;
    let revision = store.revision().await.unwrap();

    redis.restart().await;

    let fresh = RedisStore::connect(&redis.url()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || fresh.ping().await.is_ok()).await,
        "the restarted redis answers"
    );
    assert_eq!(fresh.list_routes().await.unwrap(), routes);
    assert_eq!(routes[0].session, session);
    assert_eq!(fresh.list_invites(&s).await.unwrap(), invites);
    assert_eq!(invites[0].exchange_count, 1);
    assert_eq!(
        fresh
            .find_invite(&code.hash())
            .await
            .unwrap()
            .map(|v| v.invite.id),
        Some(record.id)
    );
    assert_eq!(sorted_grants(&fresh, &s).await, grants);
    assert!(grants.1.contains(&accepted) && grants.1.contains(&otto_grant));
    assert_eq!(fresh.get_login(&login_id).await.unwrap(), Some(login));
    assert_eq!(
        fresh.get_api_token(&token).await.unwrap(),
        Some(token_record)
    );
    assert_eq!(fresh.revision().await.unwrap(), revision);

    // The store that was connected before the restart finds its way back, too.
    assert!(
        eventually(Duration::from_secs(10), async || store.ping().await.is_ok()).await,
        "the old connection reconnects"
    );
    assert_eq!(store.list_routes().await.unwrap(), routes);
    // And the restored data still works: the code is accepted after the restart.
    assert_eq!(
        accept(&fresh, &code, &otto()).await.unwrap().role,
        Role::Admin,
        "otto keeps admin"
    );
}

async fn grant_writes_for_an_ended_session_change_nothing(store: &dyn Store) {
    let (s, old) = start(store, "john").await;
    store
        .put_grant(&s, &old, &direct(nina_grantee(), Role::Admin, clock::now()))
        .await
        .unwrap();
    // The server restarts while a change authorised against the old session is in flight.
    let (_, new) = start(store, "john").await;
    assert_ne!(old, new);
    let late = direct(Grantee::User(user("otto")), Role::Use, clock::now());
    assert!(matches!(
        store.put_grant(&s, &old, &late).await,
        Err(Error::ServerNotRunning(_))
    ));
    store
        .put_grant(&s, &new, &direct(nina_grantee(), Role::View, clock::now()))
        .await
        .unwrap();
    assert!(
        !store
            .revoke_grant(&s, &old, &nina_grantee(), EndReason::Revoked)
            .await
            .unwrap(),
        "a revoke for the old session does not touch the new one"
    );
    let (session, grants) = sorted_grants(store, &s).await;
    assert_eq!(session.as_deref(), Some(new.as_str()));
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].grantee, nina_grantee());
    assert_eq!(grants[0].role, Role::View);
}

async fn api_tokens_are_listed_and_deleted_per_user(store: &dyn Store) {
    let now = store.now().await.unwrap();
    let token = |user_name: &str, created_at: Timestamp, expires_at: Timestamp| {
        (
            Secret::generate().hash(),
            ApiTokenRecord {
                user: user(user_name),
                created_at,
                note: format!("{user_name} at {created_at}"),
                expires_at: Some(expires_at),
            },
        )
    };
    let older = token("nina", now - 100, now + 3600);
    let newer = token("nina", now - 10, now + 3600);
    let expired = token("nina", now - 50, now - 1);
    let ottos = token("otto", now - 5, now + 3600);
    for (hash, record) in [&older, &newer, &expired, &ottos] {
        store.put_api_token(hash, record).await.unwrap();
    }
    assert_eq!(
        store.list_api_tokens(&user("nina")).await.unwrap(),
        vec![newer.clone(), older.clone()]
    );
    assert_eq!(
        store.list_api_tokens(&user("otto")).await.unwrap(),
        vec![ottos.clone()]
    );
    assert_eq!(store.list_api_tokens(&user("john")).await.unwrap(), vec![]);

    // Only its owner's deletion counts; an expired or deleted token is not there to delete.
    // In order: otto's try, the expired one, the deletion, the same deletion again.
    for (who, token, deleted) in [
        ("otto", &older.0, false),
        ("nina", &expired.0, false),
        ("nina", &older.0, true),
        ("nina", &older.0, false),
    ] {
        let answer = store.delete_api_token(&user(who), token).await.unwrap();
        assert_eq!(answer, deleted, "{who} deleting {}", token.to_hex());
    }
    assert_eq!(store.get_api_token(&older.0).await.unwrap(), None);
    assert_eq!(
        store.list_api_tokens(&user("nina")).await.unwrap(),
        vec![newer.clone()]
    );
    assert_eq!(store.get_api_token(&ottos.0).await.unwrap(), Some(ottos.1));
}

/// Redis only: one unreadable token record (a bad write, a version skew) is left out of its
/// user's list, which still shows and deletes the others.
#[tokio::test]
async fn an_unreadable_token_record_does_not_hide_the_others() {
    let redis = Redis::start().await;
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let now = store.now().await.unwrap();
    let record = |note: &str| ApiTokenRecord {
        user: user("nina"),
        created_at: now,
        note: note.into(),
        expires_at: Some(now + 3600),
    };
    let (good, bad) = (Secret::generate().hash(), Secret::generate().hash());
    store.put_api_token(&good, &record("good")).await.unwrap();
    store.put_api_token(&bad, &record("bad")).await.unwrap();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(["SET", &format!("lk:token:{}", bad.to_hex()), "{not json"])
        .output()
        .expect("redis-cli runs");
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
    assert_eq!(
        store.list_api_tokens(&user("nina")).await.unwrap(),
        vec![(good, record("good"))]
    );
    assert!(store.delete_api_token(&user("nina"), &good).await.unwrap());
    assert_eq!(store.list_api_tokens(&user("nina")).await.unwrap(), vec![]);
}

/// A failure count that lost its expiry (restored from a dump without it, set by hand) would
/// block its client for good: reading it (as every sign-in does first) gives it a window again,
/// and so does the next failure.
#[tokio::test]
async fn a_failure_count_without_an_expiry_gets_one() {
    let redis = Redis::start().await;
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let ttl = async |raw: &mut redis::aio::MultiplexedConnection, key: &str| -> i64 {
        redis::cmd("TTL").arg(key).query_async(raw).await.unwrap()
    };
    for (client, read) in [("192.0.2.9", true), ("192.0.2.10", false)] {
        let key = format!("lk:sign-in-failures:{client}");
        redis::cmd("SET")
            .arg(&key)
            .arg(5)
            .exec_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(ttl(&mut raw, &key).await, -1);
        let f = if read {
            store.sign_in_failures(client, 60).await.unwrap().unwrap()
        } else {
            store.add_sign_in_failure(client, 60).await.unwrap()
        };
        assert_eq!(f.count, if read { 5 } else { 6 });
        assert_eq!(f.ends_in, 60);
        let left = ttl(&mut raw, &key).await;
        assert!((1..=60).contains(&left), "{client}: TTL {left}");
    }
}
