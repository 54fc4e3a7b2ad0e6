//! The CLI's sharing and route commands: clients of latchkey's JSON API and route API, so that
//! everything the pages can do is scriptable, with the same rules and the same errors.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use http::{Method, Request, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::http_util::full;
use crate::ids::ServerRef;

/// Where latchkey is and who the caller is.
#[derive(Args, Clone)]
pub struct Remote {
    /// latchkey's public URL.
    #[arg(
        long,
        env = "LATCHKEY_URL",
        default_value = "http://127.0.0.1:8000",
        global = true
    )]
    url: String,
    /// An API token (make one on the API: POST {prefix}api/users/NAME/tokens).
    #[arg(long, env = "LATCHKEY_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// latchkey's hub prefix, if it is not "/hub/".
    #[arg(
        long,
        env = "LATCHKEY_SERVER_HUB_PREFIX",
        default_value = "/hub/",
        global = true
    )]
    hub_prefix: String,
    /// Print the API's JSON instead of a summary.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Sharing {
    /// Share a server with users and groups: `--user alice:admin,bob --group team:view`
    /// (role `use` unless given).
    Share {
        server: String,
        #[arg(long, value_delimiter = ',')]
        user: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        group: Vec<String>,
    },
    /// Stop sharing a server with users and groups.
    Remove {
        server: String,
        #[arg(long, value_delimiter = ',')]
        user: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        group: Vec<String>,
    },
    /// Who has access to a server, and its active links.
    Show { server: String },
}

#[derive(Args)]
pub struct Invite {
    server: String,
    /// view, use or admin.
    #[arg(long, default_value = "use")]
    role: String,
    /// Seconds the link stays valid (the server's default when not given).
    #[arg(long)]
    expires_in: Option<u64>,
    /// Only members of these groups may accept.
    #[arg(long, value_delimiter = ',')]
    group: Vec<String>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct RevokeWhat {
    /// Revoke every user and group.
    #[arg(long)]
    all_users: bool,
    /// Revoke every invite link.
    #[arg(long)]
    all_links: bool,
    /// Revoke one user.
    #[arg(long)]
    user: Option<String>,
    /// Revoke one invite link by id.
    #[arg(long)]
    link: Option<String>,
}

#[derive(Subcommand)]
pub enum Tokens {
    /// Your API tokens: id, when made, when they expire, note (never the tokens themselves).
    List,
    /// Delete one of your API tokens by its id: every instance refuses it at once, and what was
    /// opened with it is closed.
    Delete { id: String },
}

#[derive(Subcommand)]
pub enum Routes {
    /// List routes with their last activity.
    List,
    /// Add or replace a route.
    Add {
        path: String,
        target: String,
        /// The owner, for a user's server (then guarded by latchkey).
        #[arg(long)]
        user: Option<String>,
        #[arg(long, default_value = "")]
        server_name: String,
        /// Remove the route's prefix before forwarding (code-server and friends).
        #[arg(long)]
        strip_prefix: bool,
    },
    /// Remove a route (ending its server's session).
    Remove { path: String },
}

/// Users from outside the configuration (OpenID Connect, sign-in proxy), through the route
/// API's listener.
#[derive(Subcommand)]
pub enum Users {
    /// List them: name, how they signed in, groups, last seen.
    List,
    /// Remove one: their sign-ins and API tokens stop working and their connections close on
    /// every instance (they are back at their next sign-in if the provider still vouches).
    Remove { name: String },
}

/// The route API's address and token.
#[derive(Args, Clone)]
pub struct RouteApi {
    #[arg(
        long,
        env = "LATCHKEY_API_URL",
        default_value = "http://127.0.0.1:8001"
    )]
    api_url: String,
    #[arg(long, env = "CONFIGPROXY_AUTH_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
}

/// What the API answered.
struct Answer {
    status: http::StatusCode,
    body: Value,
}

async fn call(
    url: String,
    auth: Option<&str>,
    method: Method,
    body: Option<Value>,
) -> Result<Answer, String> {
    let client = crate::proxy::client(&[]);
    let mut req = Request::builder()
        .method(method)
        .uri(&url)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = auth {
        req = req.header(header::AUTHORIZATION, format!("token {token}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = req
        .body(full(body))
        .map_err(|e| format!("{url} is not a valid address: {e}"))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer of {url}: {e}"))?
        .to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    if status.is_client_error() || status.is_server_error() {
        let msg = body["message"].as_str().unwrap_or("no message").to_owned();
        return Err(format!("{} {msg}", status.as_u16()));
    }
    Ok(Answer { status, body })
}

impl Remote {
    fn api_url(&self, path: &str) -> String {
        format!(
            "{}{}api/{path}",
            self.url.trim_end_matches('/'),
            self.hub_prefix
        )
    }

    async fn api(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let token = self
            .token
            .as_deref()
            .ok_or("set LATCHKEY_TOKEN (or --token) to an API token")?;
        call(self.api_url(path), Some(token), method, body)
            .await
            .map(|a| a.body)
    }

    /// Who the API token belongs to.
    async fn my_name(&self) -> Result<String, String> {
        let me = self.api(Method::GET, "user", None).await?;
        me["name"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "the API did not say who you are".to_owned())
    }

    /// Prints a list envelope: one line per item, or `empty` when there is none.
    fn print_items(&self, value: &Value, empty: &str, line: impl Fn(&Value) -> String) {
        self.print(value, |v| {
            let items = v["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                return empty.to_owned();
            }
            items.iter().map(line).collect::<Vec<_>>().join("\n")
        });
    }

    fn print(&self, value: &Value, summary: impl FnOnce(&Value) -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            println!("{}", summary(value));
        }
    }
}

/// The route API's answer as JSON (`--json`), else one line per item (nothing for none).
fn print_lines(json_out: bool, value: &Value, lines: impl FnOnce(&Value) -> Vec<String>) {
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        for line in lines(value) {
            println!("{line}");
        }
    }
}

/// `owner/server` in the API's path form, `owner/` for the default server.
fn server_path(s: &str) -> Result<String, String> {
    ServerRef::parse(s).map(|r| r.key())
}

/// `name` or `name:role`.
fn with_role(spec: &str) -> (String, String) {
    match spec.split_once(':') {
        Some((n, r)) => (n.to_owned(), r.to_owned()),
        None => (spec.to_owned(), "use".to_owned()),
    }
}

fn finish(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latchkey: {e}");
            ExitCode::FAILURE
        }
    }
}

fn grant_line(g: &Value) -> String {
    let who = match g["kind"].as_str() {
        Some("group") => format!("group {}", g["group"]["name"].as_str().unwrap_or("?")),
        _ => g["user"]["name"].as_str().unwrap_or("?").to_owned(),
    };
    let via = match g["via"]["type"].as_str() {
        Some("code") => "invite link".to_owned(),
        _ => format!("shared by {}", g["via"]["by"].as_str().unwrap_or("?")),
    };
    format!(
        "{who:<20} {:<6} since {}  {via}{}",
        g["role"].as_str().unwrap_or("?"),
        g["created_at"].as_str().unwrap_or("?"),
        if g["connected"] == true {
            "  (connected)"
        } else {
            ""
        }
    )
}

pub async fn sharing(remote: Remote, cmd: Sharing) -> ExitCode {
    finish(
        async {
            match cmd {
                Sharing::Share {
                    server,
                    user,
                    group,
                } => {
                    let path = format!("shares/{}", server_path(&server)?);
                    for (kind, specs) in [("user", user), ("group", group)] {
                        for spec in specs {
                            let (name, role) = with_role(&spec);
                            let g = remote
                                .api(Method::POST, &path, Some(json!({kind: name, "role": role})))
                                .await?;
                            remote.print(&g, |g| format!("shared: {}", grant_line(g)));
                        }
                    }
                    Ok(())
                }
                Sharing::Remove {
                    server,
                    user,
                    group,
                } => {
                    let path = format!("shares/{}", server_path(&server)?);
                    for (kind, names) in [("user", user), ("group", group)] {
                        for name in names {
                            remote
                                .api(Method::PATCH, &path, Some(json!({kind: name})))
                                .await?;
                            println!("removed {kind} {name}");
                        }
                    }
                    Ok(())
                }
                Sharing::Show { server } => {
                    let key = server_path(&server)?;
                    let shares = remote
                        .api(Method::GET, &format!("shares/{key}"), None)
                        .await?;
                    let links = remote
                        .api(Method::GET, &format!("share-codes/{key}"), None)
                        .await?;
                    remote.print(&json!({"shares": shares, "links": links}), |_| {
                        let mut out = vec![format!("{key}: who has access")];
                        let grants = shares["items"].as_array().cloned().unwrap_or_default();
                        if grants.is_empty() {
                            out.push("  nobody but the owner".into());
                        }
                        out.extend(grants.iter().map(|g| format!("  {}", grant_line(g))));
                        out.push("active links".into());
                        let links = links["items"].as_array().cloned().unwrap_or_default();
                        if links.is_empty() {
                            out.push("  none".into());
                        }
                        out.extend(links.iter().map(|l| {
                            format!(
                                "  {}  {:<6} expires {}  used {} time(s)",
                                l["id"].as_str().unwrap_or("?"),
                                l["role"].as_str().unwrap_or("?"),
                                l["expires_at"].as_str().unwrap_or("?"),
                                l["exchange_count"]
                            )
                        }));
                        out.join("\n")
                    });
                    Ok(())
                }
            }
        }
        .await,
    )
}

pub async fn invite(remote: Remote, cmd: Invite) -> ExitCode {
    finish(
        async {
            let key = server_path(&cmd.server)?;
            let mut body = json!({"role": cmd.role, "groups": cmd.group});
            if let Some(e) = cmd.expires_in {
                body["expires_in"] = json!(e);
            }
            let v = remote
                .api(Method::POST, &format!("share-codes/{key}"), Some(body))
                .await?;
            remote.print(&v, |v| {
                format!(
                    "{}\nrole {}, valid until {} (shown once: send it now)",
                    v["full_accept_url"]
                        .as_str()
                        .or(v["accept_url"].as_str())
                        .unwrap_or("?"),
                    v["role"].as_str().unwrap_or("?"),
                    v["expires_at"].as_str().unwrap_or("?")
                )
            });
            Ok(())
        }
        .await,
    )
}

pub async fn revoke(remote: Remote, server: String, what: RevokeWhat) -> ExitCode {
    finish(
        async {
            let key = server_path(&server)?;
            if what.all_users {
                remote
                    .api(Method::DELETE, &format!("shares/{key}"), None)
                    .await?;
                println!("revoked every user and group of {key}");
            } else if what.all_links {
                remote
                    .api(Method::DELETE, &format!("share-codes/{key}"), None)
                    .await?;
                println!("revoked every link of {key}");
            } else if let Some(user) = what.user {
                remote
                    .api(
                        Method::PATCH,
                        &format!("shares/{key}"),
                        Some(json!({"user": user})),
                    )
                    .await?;
                println!("revoked {user}");
            } else if let Some(link) = what.link {
                let id = crate::http_util::percent_encode(&link);
                remote
                    .api(Method::DELETE, &format!("share-codes/{key}?id={id}"), None)
                    .await?;
                println!("revoked link {link}");
            }
            Ok(())
        }
        .await,
    )
}

pub async fn list_shared(remote: Remote) -> ExitCode {
    finish(
        async {
            let name = remote.my_name().await?;
            let v = remote
                .api(Method::GET, &format!("users/{name}/shared"), None)
                .await?;
            remote.print_items(&v, "nothing is shared with you", |s| {
                format!(
                    "{:<24} {:<6} since {}  {}",
                    s["server"]["full_name"].as_str().unwrap_or("?"),
                    s["role"].as_str().unwrap_or("?"),
                    s["created_at"].as_str().unwrap_or("?"),
                    s["server"]["url"].as_str().unwrap_or("?")
                )
            });
            Ok(())
        }
        .await,
    )
}

pub async fn tokens(remote: Remote, cmd: Tokens) -> ExitCode {
    finish(
        async {
            let name = remote.my_name().await?;
            match cmd {
                Tokens::List => {
                    let v = remote
                        .api(Method::GET, &format!("users/{name}/tokens"), None)
                        .await?;
                    remote.print_items(&v, "you have no API tokens", |t| {
                        format!(
                            "{}  made {}  expires {}  {}",
                            t["id"].as_str().unwrap_or("?"),
                            t["created_at"].as_str().unwrap_or("?"),
                            t["expires_at"].as_str().unwrap_or("never"),
                            t["note"].as_str().unwrap_or("")
                        )
                    });
                }
                Tokens::Delete { id } => {
                    let path = format!(
                        "users/{name}/tokens/{}",
                        crate::http_util::percent_encode(&id)
                    );
                    remote.api(Method::DELETE, &path, None).await?;
                    println!("deleted API token {id}");
                }
            }
            Ok(())
        }
        .await,
    )
}

impl RouteApi {
    /// The token, and the URL of `path` on the route API's listener.
    fn endpoint(&self, path: &str) -> Result<(&str, String), String> {
        let token = self
            .api_token
            .as_deref()
            .ok_or("set CONFIGPROXY_AUTH_TOKEN (or --api-token) to the route API token")?;
        Ok((
            token,
            format!("{}{path}", self.api_url.trim_end_matches('/')),
        ))
    }
}

pub async fn routes(api: RouteApi, json_out: bool, cmd: Routes) -> ExitCode {
    finish(
        async {
            let (token, base) = api.endpoint("/api/routes")?;
            match cmd {
                Routes::List => {
                    let v = call(base, Some(token), Method::GET, None).await?.body;
                    print_lines(json_out, &v, |v| {
                        v.as_object()
                            .into_iter()
                            .flatten()
                            .map(|(path, r)| {
                                format!(
                                    "{path:<32} {:<32} last activity {}",
                                    r["target"].as_str().unwrap_or("?"),
                                    r["last_activity"].as_str().unwrap_or("?")
                                )
                            })
                            .collect()
                    });
                }
                Routes::Add {
                    path,
                    target,
                    user,
                    server_name,
                    strip_prefix,
                } => {
                    let mut body = json!({"target": target});
                    if let Some(u) = user {
                        body["user"] = json!(u);
                        body["server_name"] = json!(server_name);
                    }
                    if strip_prefix {
                        body["strip_prefix"] = json!(true);
                    }
                    let path = format!("/{}", path.trim_start_matches('/'));
                    let a = call(
                        format!("{base}{path}"),
                        Some(token),
                        Method::POST,
                        Some(body),
                    )
                    .await?;
                    println!("{} route {path}", a.status.as_u16());
                }
                Routes::Remove { path } => {
                    let path = format!("/{}", path.trim_start_matches('/'));
                    call(format!("{base}{path}"), Some(token), Method::DELETE, None).await?;
                    println!("removed route {path}");
                }
            }
            Ok(())
        }
        .await,
    )
}

pub async fn users(api: RouteApi, json_out: bool, cmd: Users) -> ExitCode {
    finish(
        async {
            let (token, base) = api.endpoint("/api/users")?;
            match cmd {
                Users::List => {
                    let v = call(base, Some(token), Method::GET, None).await?.body;
                    print_lines(json_out, &v, |v| {
                        v["users"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|u| {
                                let groups: Vec<&str> = u["groups"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .filter_map(|g| g.as_str())
                                    .collect();
                                format!(
                                    "{:<24} {:<15} last seen {}  groups {}",
                                    u["name"].as_str().unwrap_or("?"),
                                    u["via"].as_str().unwrap_or("?"),
                                    u["last_seen"].as_str().unwrap_or("?"),
                                    groups.join(",")
                                )
                            })
                            .collect()
                    });
                }
                Users::Remove { name } => {
                    let url = format!("{base}/{}", crate::http_util::percent_encode(&name));
                    call(url, Some(token), Method::DELETE, None).await?;
                    println!("removed user {name}");
                }
            }
            Ok(())
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grantee_specs_default_to_role_use() {
        assert_eq!(with_role("alice:admin"), ("alice".into(), "admin".into()));
        assert_eq!(with_role("bob"), ("bob".into(), "use".into()));
        assert_eq!(server_path("john").unwrap(), "john/");
        assert_eq!(server_path("john/lab").unwrap(), "john/lab");
        assert!(server_path("a/b/c").is_err());
    }
}
