//! The CLI's sharing and route commands, run as the real binary against a running latchkey.

use http::StatusCode;
use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

/// Runs `latchkey ARGS` with the environment given; returns (success, stdout, stderr).
async fn latchkey(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
            .args(&args)
            .envs(env)
            .env("RUST_LOG", "error")
            .output()
            .expect("the latchkey binary runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

async fn token_of(b: &Browser, user: &str) -> String {
    let r = b
        .api(
            Method::POST,
            &format!("/hub/api/users/{user}/tokens"),
            Some(json!({"note": "cli"})),
        )
        .await;
    r.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shares_invites_shows_and_revokes_through_the_api() {
    let upstream = Upstream::spawn().await;
    let lk = Latchkey::spawn(Backend::Memory).await;
    let api = lk.api.clone();
    let routes_env = [
        ("LATCHKEY_API_URL", api.as_str()),
        ("CONFIGPROXY_AUTH_TOKEN", API_TOKEN),
    ];
    let target = upstream.target();
    let (ok, out, err) = latchkey(
        &["routes", "add", "/user/john", &target, "--user", "john"],
        &routes_env,
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("201 route /user/john"), "{out}");
    let (ok, out, _) = latchkey(&["routes", "list"], &routes_env).await;
    assert!(
        ok && out.contains("/user/john") && out.contains(&target),
        "{out}"
    );

    let john = lk.signed_in("john").await;
    let nina = lk.signed_in("nina").await;
    let otto = lk.signed_in("otto").await;
    let john_token = token_of(&john, "john").await;
    let env = [
        ("LATCHKEY_URL", lk.base.as_str()),
        ("LATCHKEY_TOKEN", john_token.as_str()),
    ];

    let (ok, out, err) = latchkey(
        &[
            "sharing",
            "share",
            "john",
            "--user",
            "nina:view",
            "--group",
            "team-a",
        ],
        &env,
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("shared: nina") && out.contains("view"),
        "{out}"
    );
    assert_eq!(nina.get("/user/john/").await.status(), StatusCode::OK);
    assert_eq!(
        otto.get("/user/john/").await.status(),
        StatusCode::OK,
        "otto is in team-a"
    );

    let (ok, out, _) = latchkey(
        &["invite", "john/", "--role", "use", "--expires-in", "600"],
        &env,
    )
    .await;
    assert!(ok, "{out}");
    let link = out.lines().next().unwrap().to_owned();
    assert!(
        link.starts_with(&format!("{}/hub/accept-share?code=", lk.base)),
        "{link}"
    );
    let code = link.rsplit('=').next().unwrap();
    assert_eq!(nina.accept(code).await.status(), StatusCode::SEE_OTHER);

    let (ok, out, _) = latchkey(&["sharing", "show", "john"], &env).await;
    assert!(ok);
    assert!(
        out.contains("nina") && out.contains("group team-a"),
        "{out}"
    );
    assert!(out.contains("used 1 time(s)"), "{out}");

    let nina_token = token_of(&nina, "nina").await;
    let (ok, out, _) = latchkey(
        &["list", "--shared"],
        &[
            ("LATCHKEY_URL", lk.base.as_str()),
            ("LATCHKEY_TOKEN", nina_token.as_str()),
        ],
    )
    .await;
    assert!(
        ok && out.contains("john/") && out.contains("/user/john/"),
        "{out}"
    );

    let (ok, _, _) = latchkey(&["sharing", "remove", "john", "--group", "team-a"], &env).await;
    assert!(ok);
    assert_eq!(
        otto.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );
    let (ok, _, _) = latchkey(&["revoke", "john", "--user", "nina"], &env).await;
    assert!(ok);
    assert_eq!(
        nina.get("/user/john/").await.status(),
        StatusCode::FORBIDDEN
    );
    let (ok, _, _) = latchkey(&["revoke", "john", "--all-links"], &env).await;
    assert!(ok);
    let (ok, out, _) = latchkey(&["--json", "sharing", "show", "john"], &env).await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["links"]["_pagination"]["total"], 0);
    assert_eq!(v["shares"]["_pagination"]["total"], 0);

    // Errors come back as the API's message and a failing exit status.
    let (ok, _, err) = latchkey(&["sharing", "share", "john", "--user", "ghost"], &env).await;
    assert!(!ok);
    assert!(err.contains("400") && err.contains("ghost"), "{err}");
    let (ok, _, err) = latchkey(&["invite", "john"], &[("LATCHKEY_URL", lk.base.as_str())]).await;
    assert!(!ok && err.contains("LATCHKEY_TOKEN"), "{err}");
    let (ok, _, err) = latchkey(&["revoke", "john"], &env).await;
    assert!(!ok && err.contains("required"), "{err}");

    let (ok, out, _) = latchkey(&["routes", "remove", "/user/john"], &routes_env).await;
    assert!(ok && out.contains("removed"), "{out}");
    assert_eq!(
        john.get("/user/john/").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_cli_lists_and_deletes_your_api_tokens() {
    let lk = Latchkey::spawn(Backend::Memory).await;
    let john = lk.signed_in("john").await;
    let (cli_token, cli_id) = new_api_token(&john, "john", json!({"note": "cli"})).await;
    let (laptop, laptop_id) = new_api_token(&john, "john", json!({"note": "old laptop"})).await;
    let env = [
        ("LATCHKEY_URL", lk.base.as_str()),
        ("LATCHKEY_TOKEN", cli_token.as_str()),
    ];
    let (ok, out, err) = latchkey(&["tokens", "list"], &env).await;
    assert!(ok, "{err}");
    assert!(out.contains(&cli_id) && out.contains(&laptop_id), "{out}");
    assert!(
        out.contains("old laptop") && out.contains("expires 20"),
        "{out}"
    );
    assert!(!out.contains(&cli_token) && !out.contains(&laptop), "{out}");

    let (ok, out, err) = latchkey(&["tokens", "delete", &laptop_id], &env).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("deleted API token {laptop_id}")),
        "{out}"
    );
    assert_eq!(
        status_with_token(&lk.url("/hub/api/user"), &laptop).await,
        StatusCode::UNAUTHORIZED
    );
    let (ok, out, _) = latchkey(&["tokens", "list", "--json"], &env).await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["_pagination"]["total"], 1);
    assert_eq!(v["items"][0]["id"], cli_id.as_str());

    // Deleting it again says why it failed, with the API's status.
    let (ok, _, err) = latchkey(&["tokens", "delete", &laptop_id], &env).await;
    assert!(!ok);
    assert!(err.contains("404") && err.contains("no API token"), "{err}");
}

/// `latchkey demo` as the README runs it: prints its URL and the two passwords, and john's
/// server answers john through latchkey (with `--user-hosts`, on john.localhost after the
/// sign-in hand-over). The sharing story itself is tested on `serve` (tests/it/story.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_how_to_sign_in_and_john_reaches_his_server_both_ways() {
    use std::io::{BufRead, BufReader};
    for user_hosts in [false, true] {
        let mut args = vec![
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ];
        if user_hosts {
            args.push("--user-hosts");
        }
        /// Stops the demo even when an assertion fails.
        struct Demo(std::process::Child);
        impl Drop for Demo {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut demo = Demo(
            Command::new(env!("CARGO_BIN_EXE_latchkey"))
                .args(&args)
                .env("RUST_LOG", "error")
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("the latchkey binary runs"),
        );
        let stdout = demo.0.stdout.take().unwrap();
        let lines = tokio::task::spawn_blocking(move || {
            let mut lines = vec![];
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap();
                let done = line.starts_with("Press Ctrl-C");
                lines.push(line);
                if done {
                    break;
                }
            }
            lines
        })
        .await
        .unwrap();
        let find = |prefix: &str| {
            lines
                .iter()
                .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_owned))
                .unwrap_or_else(|| panic!("{prefix:?} in {lines:#?}"))
        };
        let base = find("latchkey demo is running at ");
        let base = base.trim_end_matches('/').to_owned();
        let password = find("Sign in as john (owner):  user john, password ");
        let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
        assert_eq!(
            base.starts_with("http://localhost:"),
            user_hosts,
            "the URL to open: {base}"
        );

        let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let client = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .resolve("localhost", addr)
            .resolve("john.localhost", addr)
            .build()
            .unwrap();
        let b = Browser {
            base: base.clone(),
            client,
            jar,
        };
        let r = b.try_login("john", &password).await;
        assert_eq!(r.status(), StatusCode::OK, "signed in and sent home");
        assert!(r.url().path().ends_with("/hub/home"));
        // Redirects followed: on john's own host with --user-hosts.
        let r = b.get("/user/john/").await;
        assert_eq!(r.status(), StatusCode::OK);
        let johns = match user_hosts {
            true => format!("http://john.localhost:{port}/user/john/"),
            false => format!("{base}/user/john/"),
        };
        assert_eq!(r.url().as_str(), johns);
        assert!(r.text().await.unwrap().contains("john"));
        drop(demo);
    }
}

#[tokio::test]
async fn users_from_a_sign_in_provider_are_listed_and_removed_from_the_command_line() {
    let lk = Latchkey::spawn_with(
        Backend::Memory,
        "[oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"latchkey\"\nredirect_url = \"http://127.0.0.1:1/hub/oauth_callback\"\n",
    )
    .await;
    let bob = latchkey::auth::Identity {
        name: latchkey::ids::UserName::parse("bob").unwrap(),
        groups: vec![latchkey::ids::GroupName::parse("lab").unwrap()],
    };
    lk.app
        .start_provider_login(bob, "sub-of-bob")
        .await
        .unwrap();
    let env = [
        ("LATCHKEY_API_URL", lk.api.as_str()),
        ("CONFIGPROXY_AUTH_TOKEN", API_TOKEN),
    ];
    let (ok, out, err) = latchkey(&["users", "list"], &env).await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with("bob ") && out.contains(" oidc ") && out.contains("groups lab"),
        "{out}"
    );
    let (ok, out, err) = latchkey(&["users", "remove", "bob"], &env).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "removed user bob");
    let (ok, _, err) = latchkey(&["users", "remove", "bob"], &env).await;
    assert!(!ok, "removing an unknown user fails");
    assert!(err.contains("There is no user bob"), "{err}");
    let (ok, out, _) = latchkey(&["users", "list"], &env).await;
    assert!(ok && out.is_empty(), "{out}");
    lk.stop().await;
}
