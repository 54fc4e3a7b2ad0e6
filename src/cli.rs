//! Subcommands: `serve`, `demo`, `check-config`, `hash-password`, and the sharing commands
//! (`sharing`, `invite`, `revoke`, `list`, `tokens`, `routes`), which are clients of the APIs.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "latchkey",
    version,
    about = "Share a running notebook or tool server"
)]
struct Cli {
    /// Log format: human or json.
    #[arg(
        long,
        env = "LATCHKEY_LOG_FORMAT",
        default_value = "human",
        global = true
    )]
    log_format: String,
    #[command(flatten)]
    remote: crate::remote::Remote,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run latchkey with a configuration file (and LATCHKEY_* environment variables).
    Serve {
        #[arg(long, env = "LATCHKEY_CONFIG")]
        config: Option<PathBuf>,
        /// Seconds from SIGTERM (or Ctrl-C) until the last connections are closed: requests and
        /// WebSockets may finish until then.
        #[arg(long, default_value_t = 30)]
        drain: u64,
    },
    /// Start latchkey on the embedded store with two users and a demo server, to try sharing.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: String,
        #[arg(long, default_value = "127.0.0.1:8001")]
        api_listen: String,
        /// Host-based routing: latchkey at http://localhost:PORT, john's server at
        /// http://john.localhost:PORT (browsers resolve *.localhost to this machine).
        #[arg(long)]
        user_hosts: bool,
    },
    /// Check a configuration file and report every problem at once.
    CheckConfig {
        #[arg(long, env = "LATCHKEY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Read a password on standard input and print its argon2id hash for `[[users]]`.
    HashPassword,
    /// Share a server with users and groups, stop sharing, or show who has access.
    #[command(subcommand)]
    Sharing(crate::remote::Sharing),
    /// Create an invite link for a server and print it (once).
    Invite(crate::remote::Invite),
    /// Revoke one user, all users, one link or all links of a server.
    Revoke {
        server: String,
        #[command(flatten)]
        what: crate::remote::RevokeWhat,
    },
    /// List your API tokens, or delete one.
    #[command(subcommand)]
    Tokens(crate::remote::Tokens),
    /// List what is shared with you (`--shared`).
    List {
        #[arg(long, required = true)]
        shared: bool,
    },
    /// Users from a sign-in provider or proxy: list them, remove one (route API listener).
    Users {
        #[command(flatten)]
        api: crate::remote::RouteApi,
        #[command(subcommand)]
        command: crate::remote::Users,
    },
    /// Drive the route API (configurable-http-proxy compatible).
    Routes {
        #[command(flatten)]
        api: crate::remote::RouteApi,
        #[command(subcommand)]
        command: crate::remote::Routes,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init(cli.log_format == "json");
    let code = run(cli);
    crate::logging::flush();
    code
}

fn run(cli: Cli) -> ExitCode {
    let remote = cli.remote;
    match cli.command {
        Command::Sharing(cmd) => runtime().block_on(crate::remote::sharing(remote, cmd)),
        Command::Invite(cmd) => runtime().block_on(crate::remote::invite(remote, cmd)),
        Command::Revoke { server, what } => {
            runtime().block_on(crate::remote::revoke(remote, server, what))
        }
        Command::List { .. } => runtime().block_on(crate::remote::list_shared(remote)),
        Command::Tokens(cmd) => runtime().block_on(crate::remote::tokens(remote, cmd)),
        Command::Routes { api, command } => {
            let json = remote.json;
            runtime().block_on(crate::remote::routes(api, json, command))
        }
        Command::Users { api, command } => {
            let json = remote.json;
            runtime().block_on(crate::remote::users(api, json, command))
        }
        Command::Serve { config, drain } => match Config::load(config.as_deref()) {
            Ok(config) => runtime().block_on(serve(config, Duration::from_secs(drain))),
            Err(problems) => report(&problems),
        },
        Command::Demo {
            listen,
            api_listen,
            user_hosts,
        } => runtime().block_on(crate::demo::run(&listen, &api_listen, user_hosts)),
        Command::CheckConfig { config } => match Config::load(config.as_deref()) {
            Ok(c) => {
                println!(
                    "configuration is valid: public listener {}, route API {}, store {}, {} local user(s){}",
                    c.listen,
                    c.api_listen,
                    if c.store_url == "memory://" {
                        "memory://"
                    } else {
                        "redis"
                    },
                    c.users.len(),
                    match &c.oidc {
                        Some(o) => format!(", OpenID Connect sign-in at {}", o.issuer),
                        None => String::new(),
                    } + &match &c.trusted_header {
                        Some(t) => format!(", sign-in by the proxy's {} header", t.user),
                        None => String::new(),
                    }
                );
                ExitCode::SUCCESS
            }
            Err(problems) => report(&problems),
        },
        Command::HashPassword => {
            let mut password = String::new();
            if std::io::stdin().read_to_string(&mut password).is_err() {
                eprintln!("cannot read the password from standard input");
                return ExitCode::FAILURE;
            }
            let password = password.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                eprintln!("the password is empty");
                return ExitCode::FAILURE;
            }
            match crate::auth::password::hash(password) {
                Ok(h) => {
                    println!("{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn report(problems: &[String]) -> ExitCode {
    eprintln!("the configuration has {} problem(s):", problems.len());
    for p in problems {
        eprintln!("  - {p}");
    }
    ExitCode::from(2)
}

/// The async runtime: one thread per CPU this process may use. On one CPU (a container with
/// one, or a process pinned to a core) the single-threaded scheduler does the same work with
/// less synchronisation; argon2 and other blocking work still run on their own threads.
fn runtime() -> tokio::runtime::Runtime {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder
        .enable_all()
        .build()
        .expect("cannot start the async runtime")
}

async fn serve(config: Config, drain: Duration) -> ExitCode {
    let store = match crate::store::open_with_timeout(&config.store_url, config.store_timeout).await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut tls = match &config.tls {
        Some(files) => match crate::server::Tls::load(files) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let (public, api) = match bind(config.listen, config.api_listen).await {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let (Some(tls), Some(addr)) = (tls.as_mut(), config.http_redirect_listen) {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => tls.redirect = Some(l),
            Err(e) => {
                eprintln!("cannot listen on {addr} (HTTP to HTTPS redirect): {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    tracing::info!(
        public = %public.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        api = %api.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = tls.is_some(),
        redirect = ?config.http_redirect_listen,
        "latchkey listening"
    );
    let app = crate::App::new(config, store).await;
    crate::serve(
        crate::Listeners { public, api, tls },
        app,
        shutdown_signal(),
        drain,
    )
    .await;
    ExitCode::SUCCESS
}

pub async fn bind(
    public: std::net::SocketAddr,
    api: std::net::SocketAddr,
) -> Result<(tokio::net::TcpListener, tokio::net::TcpListener), String> {
    let p = tokio::net::TcpListener::bind(public)
        .await
        .map_err(|e| format!("cannot listen on {public}: {e}"))?;
    let a = tokio::net::TcpListener::bind(api)
        .await
        .map_err(|e| format!("cannot listen on {api} (route API): {e}"))?;
    Ok((p, a))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
