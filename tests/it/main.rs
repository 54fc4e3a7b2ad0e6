//! The one integration-test binary: latchkey on port 0, real upstreams, real redis-server.

mod helpers;

mod bad_inputs;
mod cli;
mod deploy;
mod fast_path;
mod hosts;
mod multi_instance;
mod oidc;
mod production;
mod route_api;
mod sharing;
mod store_contract;
mod story;
mod streaming;
