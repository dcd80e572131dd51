//! The admin listener (loopback unless configured otherwise): `/metrics`, `/status`, a live
//! status page at `/`, `/health` for the balancer itself, and `PUT /target-groups/NAME` to
//! switch a group's policy and telemetry source at runtime.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::config::{Policy, TelemetrySource};
use crate::fleet::now_us;
use crate::state::Shared;

const STATUS_PAGE: &str = include_str!("status.html");

pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    started: Instant,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            biased;
            _ = &mut stop => return,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        };
        let shared = shared.clone();
        let header_timeout = shared.router.load().config.timeouts.client_header;
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(shared.clone(), started, req));
            // Bounded like client connections (`timeouts.client_header`), so a silent or
            // trickling peer cannot hold an admin connection, and its task, forever.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    shared: Arc<Shared>,
    started: Instant,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let resp = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/") => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            STATUS_PAGE.into(),
        ),
        (Method::GET, "/status") => json_response(StatusCode::OK, &status(&shared, started)),
        (Method::GET, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.encode().into(),
        ),
        (Method::GET, "/health") => json_response(StatusCode::OK, &json!({"status": "serving"})),
        (Method::PUT, p) if p.starts_with("/target-groups/") => {
            let name = p["/target-groups/".len()..].to_owned();
            switch(&shared, &name, req).await
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found", "message": "admin routes: /, /status, /metrics, /health, PUT /target-groups/NAME"}),
        ),
    };
    Ok(resp)
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    respond(
        status,
        "application/json",
        Bytes::from(serde_json::to_vec(v).expect("JSON serializes")),
    )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Switch {
    policy: Option<String>,
    telemetry: Option<String>,
}

async fn switch(
    shared: &Shared,
    name: &str,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let bad = |m: String| {
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "bad_request", "message": m}),
        )
    };
    let body = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad(format!("cannot read the body: {e}")),
    };
    let ask: Switch = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return bad(format!(
                "expected {{\"policy\": ..., \"telemetry\": ...}}: {e}"
            ))
        }
    };
    let router = shared.router.load();
    let Some(group) = router.group(name) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "no_such_target_group", "message": format!("no target group `{name}`")}),
        );
    };
    let policy = match ask.policy.as_deref().map(|p| Policy::from_name(p).ok_or(p)) {
        None => group.policy(),
        Some(Ok(p)) => p,
        Some(Err(p)) => {
            let names: Vec<&str> = Policy::ALL.iter().map(|p| p.name()).collect();
            return bad(format!("unknown policy `{p}`; one of {}", names.join(", ")));
        }
    };
    let telemetry = match ask
        .telemetry
        .as_deref()
        .map(|t| TelemetrySource::from_name(t).ok_or(t))
    {
        None => group.telemetry(),
        Some(Ok(t)) => t,
        Some(Err(t)) => {
            return bad(format!(
                "unknown telemetry source `{t}`; one of inband, poll, cloudwatch"
            ))
        }
    };
    let running = router.config.sources_in_use();
    if telemetry != TelemetrySource::Inband && !running.contains(&telemetry) {
        return bad(format!(
            "telemetry source `{}` is not collected; add it to [telemetry] collect",
            telemetry.name()
        ));
    }
    group.switch(policy, telemetry);
    tracing::info!(
        target_group = name,
        policy = policy.name(),
        telemetry = telemetry.name(),
        "switched"
    );
    json_response(
        StatusCode::OK,
        &json!({"target_group": name, "policy": policy.name(), "telemetry": telemetry.name()}),
    )
}

/// The `/status` document: every target group and every worker with its state and telemetry.
pub fn status(shared: &Shared, started: Instant) -> Value {
    let router = shared.router.load();
    let config = &router.config;
    let now = now_us();
    let stale_us = config.telemetry.stale_after.as_micros() as u64;
    let groups: Vec<Value> = router
        .groups
        .iter()
        .map(|g| {
            json!({
                "name": g.name,
                "policy": g.policy().name(),
                "telemetry": g.telemetry().name(),
                "workers": g.workers().iter().map(|w| w.name.clone()).collect::<Vec<_>>(),
                "queued": g.queued(),
                "when_all_unhealthy": g.settings.when_all_unhealthy,
                "worker_protocol": g.settings.transport.protocol.name(),
                "worker_tls": g.settings.transport.tls.as_ref().map(|t| json!({
                    "ca_file": t.settings.ca_file.as_ref().map(|p| p.display().to_string()),
                    "server_name": t.settings.server_name,
                    "client_certificate": t.settings.client_cert.is_some(),
                    "insecure": t.settings.insecure,
                })),
                "slow_start_s": g.settings.slow_start.as_secs_f64(),
                // Each worker's share now: its weight times its slow-start ramp.
                "shares": g.workers().iter().map(|w| {
                    let weight = g.settings.weights.get(&w.addr).copied().unwrap_or(1) as f64;
                    let ramp = w.ramp(now, g.settings.slow_start.as_micros() as u64);
                    (w.name.clone(), json!(weight * ramp))
                }).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    let workers: Vec<Value> = router
        .workers()
        .iter()
        .map(|w| {
            let identity = w.identity();
            let in_groups: Vec<&str> = router
                .groups
                .iter()
                .filter(|g| g.workers().iter().any(|x| x.addr == w.addr))
                .map(|g| g.name.as_str())
                .collect();
            let mut telemetry = serde_json::Map::new();
            for source in TelemetrySource::ALL {
                let v = match w.slot(source).read(now) {
                    None => Value::Null,
                    Some(r) => {
                        let mut v = serde_json::to_value(r).expect("reading serializes");
                        v["stale"] = json!(r.age.as_micros() as u64 > stale_us);
                        if source == TelemetrySource::Cloudwatch {
                            v["emulated"] = json!(
                                config.telemetry.cloudwatch_source
                                    == crate::config::CloudwatchSource::Emulated
                            );
                            v["period_seconds"] =
                                json!(config.telemetry.cloudwatch_period.as_secs_f64());
                        }
                        v
                    }
                };
                telemetry.insert(source.name().to_owned(), v);
            }
            json!({
                "address": w.name,
                "instance_id": identity.as_ref().map(|i| i.instance_id.clone()),
                "cluster": identity.as_ref().and_then(|i| i.cluster),
                "target_groups": in_groups,
                "health": w.health(),
                "available": w.is_available(now),
                "ejected_for_ms": w.ejected_for(now).as_millis() as u64,
                "draining": w.is_draining(),
                "in_flight": w.in_flight(),
                "max_in_flight": w.max_in_flight(),
                "picks": w.picks(),
                "requests": w.requests(),
                "failures": w.failures(),
                "error_rate": w.error_rate(now),
                "latency_ewma_ms": w.ewma_us(now) / 1000.0,
                "cpu_cores": w.cores(),
                "pool_connections": w.pool.open(),
                "h2_connection_open": w.h2.is_open(),
                "telemetry": telemetry,
            })
        })
        .collect();
    json!({
        "fulcrum_version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": started.elapsed().as_secs_f64(),
        "config_generation": router.generation,
        "stale_after_ms": config.telemetry.stale_after.as_millis() as u64,
        "routes": router.routes().iter().map(|r| json!({"prefix": r.prefix, "target_group": r.group.name})).collect::<Vec<_>>(),
        "rules": router.rules.iter().map(|r| r.status()).collect::<Vec<_>>(),
        "target_groups": groups,
        "workers": workers,
        "access_log": access_log_status(shared, config),
        "rate_limit": router.rate_limiter.as_ref().map(|l| {
            let s = l.settings();
            json!({
                "requests_per_second": s.requests_per_second,
                "burst": s.burst,
                "key": match &s.key {
                    crate::config::RateLimitKey::Source => "source".to_owned(),
                    crate::config::RateLimitKey::Header(h) => format!("header:{h}"),
                },
                "max_clients": s.max_clients,
                "clients": l.clients(),
            })
        }),
    })
}

fn access_log_status(shared: &Shared, config: &crate::config::Config) -> Value {
    let settings = &config.access_log;
    let log = &shared.access_log;
    json!({
        "enabled": settings.enabled,
        "format": settings.format,
        "path": settings.path.display().to_string(),
        "lines": log.written(),
        "dropped": log.dropped(),
        "last_error": log.last_error(),
    })
}
