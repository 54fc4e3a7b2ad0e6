//! latchkey: a sharing gateway for running Jupyter, RStudio and code-server servers.
//!
//! It proxies `/user/{owner}/{server}/...` to users' servers, lets owners share them by invite
//! link or directly with users and groups, and revokes access at once.

pub mod api;
pub mod app;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connections;
pub mod demo;
pub mod error;
pub mod h1;
pub mod health;
pub mod hosts;
pub mod http_util;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod paths;
pub mod proxy;
pub mod remote;
pub mod routes;
pub mod secret;
pub mod server;
pub mod sharing;
pub mod store;
pub mod tls;
pub mod tokens;
pub mod web;

pub use app::App;
pub use config::Config;
pub use server::{Listeners, serve};
