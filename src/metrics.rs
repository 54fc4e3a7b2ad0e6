//! Prometheus metrics, owned by the `App` and served as OpenMetrics text on the route API
//! listener at `/metrics`.
//!
//! Label values come from small closed sets (request class, status class, store operation,
//! revocation kind): never a user name, a path, a code or any other value a client controls.

use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of the OpenMetrics text exposition (it ends with `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How many classes there are.
const CLASSES: usize = 7;

/// Which part of latchkey answered a request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Class {
    /// Forwarded to (or refused for) an upstream server.
    Proxy,
    /// latchkey's own pages and static files.
    Page,
    /// latchkey's JSON API under the hub prefix.
    Api,
    /// The configurable-http-proxy compatible route API.
    RouteApi,
    /// `/healthz`, `/readyz`, `/_chp_healthz`.
    Health,
    /// `/metrics` itself.
    Metrics,
    /// The plain HTTP listener that redirects to HTTPS.
    Redirect,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Proxy => "proxy",
            Class::Page => "page",
            Class::Api => "api",
            Class::RouteApi => "route_api",
            Class::Health => "health",
            Class::Metrics => "metrics",
            Class::Redirect => "redirect",
        }
    }

    /// The class of a request on the public listener: `internal` is its path mapped under
    /// "/hub/" when it lies under the hub prefix.
    pub fn of_public(path: &str, internal: Option<&str>) -> Class {
        if crate::health::is_health_path(path) {
            return Class::Health;
        }
        match internal {
            Some(p) if p.starts_with(crate::paths::API) => Class::Api,
            Some(_) => Class::Page,
            None => Class::Proxy,
        }
    }
}

impl EncodeLabelValue for Class {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// "2xx", "4xx", ...: the status class keeps the series count small and fixed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct StatusClass(u8);

impl StatusClass {
    pub fn of(status: StatusCode) -> StatusClass {
        StatusClass((status.as_u16() / 100) as u8)
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        write!(encoder, "{}xx", self.0)
    }
}

/// How access was taken back.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Revocation {
    /// One user's or group's grant.
    Grantee,
    /// Every grant of a server.
    AllGrantees,
    /// One invite link.
    Link,
    /// Every invite link of a server.
    AllLinks,
    /// The server's session ended (restart, new target, route deleted): everything of the old
    /// session is void.
    SessionEnded,
}

impl EncodeLabelValue for Revocation {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(
            encoder,
            match self {
                Revocation::Grantee => "grantee",
                Revocation::AllGrantees => "all_grantees",
                Revocation::Link => "link",
                Revocation::AllLinks => "all_links",
                Revocation::SessionEnded => "session_ended",
            },
        )
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    class: Class,
    status: StatusClass,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: Class,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevocationLabels {
    kind: Revocation,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    result: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

fn store_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    ])
}

/// The store's series, cloned into the metered store wrapper (the handles share their values).
#[derive(Clone)]
pub struct StoreMetrics {
    duration: Histograms<OpLabels>,
    errors: Family<OpLabels, Counter>,
}

impl StoreMetrics {
    /// Records one store call; `failed` when the backend could not answer (not for domain
    /// outcomes such as an unknown invite code).
    pub fn observe(&self, op: &'static str, took: Duration, failed: bool) {
        let labels = OpLabels { op };
        self.duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if failed {
            self.errors.get_or_create(&labels).inc();
        }
    }
}

/// Values read when the metrics are scraped rather than counted as they change.
pub struct Live {
    pub websockets: usize,
    pub routes: usize,
    pub draining: bool,
}

/// Every series latchkey exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Histograms<ClassLabels>,
    /// The series of `requests` and `request_duration` once first used, by class and status
    /// class: counting a request then needs no lock and no hashing of labels.
    request_series: [[std::sync::OnceLock<Counter>; 6]; CLASSES],
    duration_series: [std::sync::OnceLock<Histogram>; CLASSES],
    websockets_active: Gauge,
    routes: Gauge,
    draining: Gauge,
    invites_created: Counter,
    invites_accepted: Counter,
    revocations: Family<RevocationLabels, Counter>,
    tls_reloads: Family<OutcomeLabels, Counter>,
    pub store: StoreMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("latchkey");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by class (proxy, page, api, route_api, health, metrics, redirect) and status class",
            requests.clone(),
        );
        let request_duration: Histograms<ClassLabels> =
            Family::new_with_constructor(request_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from receiving a request to sending its response headers, by class",
            Unit::Seconds,
            request_duration.clone(),
        );
        let websockets_active = Gauge::default();
        registry.register(
            "websockets_active",
            "Open proxied WebSockets (and other upgraded connections)",
            websockets_active.clone(),
        );
        let routes = Gauge::default();
        registry.register("routes", "Routes in the route table", routes.clone());
        let draining = Gauge::default();
        registry.register(
            "draining",
            "1 while the instance shuts down (readiness answers 503), else 0",
            draining.clone(),
        );
        let invites_created = Counter::default();
        registry.register(
            "invites_created",
            "Invite links created",
            invites_created.clone(),
        );
        let invites_accepted = Counter::default();
        registry.register(
            "invites_accepted",
            "Invite codes exchanged for a grant",
            invites_accepted.clone(),
        );
        let revocations = Family::<RevocationLabels, Counter>::default();
        registry.register(
            "revocations",
            "Access taken back, by kind (grantee, all_grantees, link, all_links, session_ended)",
            revocations.clone(),
        );
        let tls_reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "tls_certificate_reloads",
            "Reloads of the TLS certificate and key, by result (ok, error)",
            tls_reloads.clone(),
        );
        let store = StoreMetrics {
            duration: Family::new_with_constructor(store_histogram),
            errors: Family::default(),
        };
        registry.register_with_unit(
            "store_operation_duration",
            "Time taken by store operations, by operation",
            Unit::Seconds,
            store.duration.clone(),
        );
        registry.register(
            "store_errors",
            "Store operations that failed because the store could not answer, by operation",
            store.errors.clone(),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            request_series: Default::default(),
            duration_series: Default::default(),
            websockets_active,
            routes,
            draining,
            invites_created,
            invites_accepted,
            revocations,
            tls_reloads,
            store,
        }
    }

    /// Records one answered request.
    pub fn request(&self, class: Class, status: StatusCode, took: Duration) {
        let status = StatusClass::of(status);
        let labels = RequestLabels { class, status };
        let counter = || self.requests.get_or_create(&labels).clone();
        match self.request_series[class as usize].get(usize::from(status.0)) {
            Some(cell) => cell.get_or_init(counter).inc(),
            None => counter().inc(),
        };
        self.duration_series[class as usize]
            .get_or_init(|| {
                self.request_duration
                    .get_or_create(&ClassLabels { class })
                    .clone()
            })
            .observe(took.as_secs_f64());
    }

    pub fn invite_created(&self) {
        self.invites_created.inc();
    }

    pub fn invite_accepted(&self) {
        self.invites_accepted.inc();
    }

    pub fn revoked(&self, kind: Revocation) {
        self.revocations
            .get_or_create(&RevocationLabels { kind })
            .inc();
    }

    pub fn tls_reloaded(&self, ok: bool) {
        self.tls_reloads
            .get_or_create(&OutcomeLabels {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// The OpenMetrics text exposition, ending with `# EOF`.
    pub fn encode(&self, live: Live) -> String {
        self.websockets_active.set(live.websockets as i64);
        self.routes.set(live.routes as i64);
        self.draining.set(i64::from(live.draining));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Only a bug in a label encoder can get here; an empty scrape says so loudly.
            tracing::error!(error = %e, "cannot encode the metrics");
            return String::new();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_and_labelled_as_documented() {
        let m = Metrics::new();
        m.request(Class::Proxy, StatusCode::OK, Duration::from_millis(3));
        m.request(
            Class::RouteApi,
            StatusCode::CREATED,
            Duration::from_millis(1),
        );
        m.request(Class::Page, StatusCode::NOT_FOUND, Duration::from_millis(1));
        m.invite_created();
        m.revoked(Revocation::AllLinks);
        m.store
            .observe("accept_invite", Duration::from_micros(300), true);
        let text = m.encode(Live {
            websockets: 2,
            routes: 1,
            draining: false,
        });
        for needle in [
            "latchkey_requests_total{class=\"proxy\",status=\"2xx\"} 1",
            "latchkey_requests_total{class=\"route_api\",status=\"2xx\"} 1",
            "latchkey_requests_total{class=\"page\",status=\"4xx\"} 1",
            "# TYPE latchkey_request_duration_seconds histogram",
            "latchkey_websockets_active 2",
            "latchkey_invites_created_total 1",
            "latchkey_revocations_total{kind=\"all_links\"} 1",
            "latchkey_store_errors_total{op=\"accept_invite\"} 1",
            "latchkey_store_operation_duration_seconds_count{op=\"accept_invite\"} 1",
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
