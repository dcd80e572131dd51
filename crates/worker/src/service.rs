//! The worker's HTTP routes.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use fulcrum_telemetry::{LoadTracker, LOAD_REPORT_HEADER};
use http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::metrics::WorkerMetrics;
use crate::work::CpuWork;

pub const INSTANCE_HEADER: HeaderName = HeaderName::from_static("x-fulcrum-instance");
pub const CLUSTER_HEADER: HeaderName = HeaderName::from_static("x-fulcrum-cluster");
const LOAD_REPORT: HeaderName = HeaderName::from_static(LOAD_REPORT_HEADER);

/// Everything a request handler reads; shared by all connections.
pub struct Worker {
    pub instance_id: String,
    pub cluster: u32,
    pub default_work_us: u64,
    pub max_work_us: u64,
    pub work: CpuWork,
    pub load: LoadTracker,
    pub metrics: WorkerMetrics,
    pub draining: AtomicBool,
    instance_header: HeaderValue,
    cluster_header: HeaderValue,
    root_body: Bytes,
    cluster_body: Bytes,
}

impl Worker {
    pub fn new(
        instance_id: String,
        cluster: u32,
        default_work_us: u64,
        max_work_us: u64,
        work: CpuWork,
        load: LoadTracker,
    ) -> Worker {
        // The two answers that never change are rendered once.
        let root_body = json_bytes(&json!({
            "message": format!("Instance {instance_id} has received the request"),
            "instance_id": instance_id,
            "cluster": cluster,
        }));
        let cluster_body = json_bytes(&json!({
            "message": format!("Cluster {cluster} - Instance {instance_id} is responding now!"),
            "instance_id": instance_id,
            "cluster": cluster,
        }));
        Worker {
            instance_header: HeaderValue::from_str(&instance_id)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            cluster_header: HeaderValue::from(cluster),
            metrics: WorkerMetrics::new(&instance_id, cluster),
            instance_id,
            cluster,
            default_work_us,
            max_work_us,
            work,
            load,
            draining: AtomicBool::new(false),
            root_body,
            cluster_body,
        }
    }
}

fn json_bytes(v: &serde_json::Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("JSON values always serialize"))
}

/// Which route a path is, for dispatch and for metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Root,
    Cluster(u32),
    Health,
    Load,
    Metrics,
    NotFound,
}

impl Route {
    fn of(path: &str) -> Route {
        match path {
            "/" => Route::Root,
            "/health" => Route::Health,
            "/load" => Route::Load,
            "/metrics" => Route::Metrics,
            _ => match path.strip_prefix("/cluster") {
                // Canonical decimal only: `/cluster01` and `/cluster+1` are not cluster routes.
                Some(d)
                    if !d.is_empty()
                        && d.bytes().all(|b| b.is_ascii_digit())
                        && (d == "0" || !d.starts_with('0')) =>
                {
                    d.parse().map_or(Route::NotFound, Route::Cluster)
                }
                _ => Route::NotFound,
            },
        }
    }

    fn label(self, own_cluster: u32) -> &'static str {
        match self {
            Route::Root => "/",
            Route::Cluster(n) if n == own_cluster => "/cluster",
            Route::Cluster(_) => "/cluster (other)",
            Route::Health => "/health",
            Route::Load => "/load",
            Route::Metrics => "/metrics",
            Route::NotFound => "other",
        }
    }
}

pub async fn handle<B>(
    worker: Arc<Worker>,
    req: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let route = Route::of(req.uri().path());
    // Only the serving routes count as load: a balancer polling `/load` or `/health` must not
    // show up in the very rates it reads.
    let flight = matches!(route, Route::Root | Route::Cluster(_)).then(|| worker.load.begin());
    let mut resp = if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed; use GET", req.method()),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    } else {
        route_request(&worker, route, req.uri().query()).await
    };
    let status = resp.status();
    decorate(&worker, &mut resp);
    worker.metrics.record(
        route.label(worker.cluster),
        status.as_u16(),
        started.elapsed().as_secs_f64(),
    );
    if let Some(flight) = flight {
        flight.finish(status.is_server_error());
    }
    Ok(resp)
}

async fn route_request(
    worker: &Worker,
    route: Route,
    query: Option<&str>,
) -> Response<Full<Bytes>> {
    match route {
        Route::Root | Route::Cluster(_) => {
            if let Route::Cluster(n) = route {
                if n != worker.cluster {
                    return error(
                        StatusCode::NOT_FOUND,
                        "wrong_cluster",
                        format!(
                            "instance {} belongs to cluster {}, not cluster {n}",
                            worker.instance_id, worker.cluster
                        ),
                    );
                }
            }
            let micros = match work_us(query, worker.default_work_us, worker.max_work_us) {
                Ok(m) => m,
                Err((code, message)) => return error(StatusCode::BAD_REQUEST, code, message),
            };
            worker.work.run(micros).await;
            let body = if route == Route::Root {
                worker.root_body.clone()
            } else {
                worker.cluster_body.clone()
            };
            json_response(StatusCode::OK, body)
        }
        Route::Health => {
            if worker.draining.load(Ordering::Relaxed) {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Bytes::from_static(br#"{"status":"draining"}"#),
                )
            } else {
                json_response(
                    StatusCode::OK,
                    Bytes::from_static(br#"{"status":"serving"}"#),
                )
            }
        }
        Route::Load => {
            let snap = worker.load.snapshot();
            let mut v = serde_json::to_value(&snap).expect("snapshot serializes");
            v["instance_id"] = json!(worker.instance_id);
            v["cluster"] = json!(worker.cluster);
            v["draining"] = json!(worker.draining.load(Ordering::Relaxed));
            json_response(StatusCode::OK, json_bytes(&v))
        }
        Route::Metrics => {
            let mut r = Response::new(Full::new(Bytes::from(worker.metrics.encode(&worker.load))));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        Route::NotFound => error(StatusCode::NOT_FOUND, "not_found", "no such route".into()),
    }
}

/// The work a request asks for: `?work_us=N` within bounds, or the worker's default.
/// A bad ask is `(error code, message)` for a 400.
fn work_us(query: Option<&str>, default: u64, max: u64) -> Result<u64, (&'static str, String)> {
    let Some(raw) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("work_us="))
    else {
        return Ok(default);
    };
    let n: u64 = raw.parse().map_err(|_| {
        (
            "invalid_work_us",
            format!("work_us must be a whole number of microseconds, got `{raw}`"),
        )
    })?;
    if n > max {
        return Err((
            "work_us_out_of_range",
            format!("work_us must be at most {max}, got {n}"),
        ));
    }
    Ok(n)
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, code: &str, message: String) -> Response<Full<Bytes>> {
    json_response(
        status,
        json_bytes(&json!({ "error": code, "message": message })),
    )
}

/// Identity and the in-band load report go on every answer, errors included.
fn decorate(worker: &Worker, resp: &mut Response<Full<Bytes>>) {
    let h = resp.headers_mut();
    h.insert(INSTANCE_HEADER, worker.instance_header.clone());
    h.insert(CLUSTER_HEADER, worker.cluster_header.clone());
    if let Ok(v) = HeaderValue::try_from(worker.load.report_header()) {
        h.insert(LOAD_REPORT, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_recognised_strictly() {
        assert_eq!(Route::of("/"), Route::Root);
        assert_eq!(Route::of("/cluster1"), Route::Cluster(1));
        assert_eq!(Route::of("/cluster12"), Route::Cluster(12));
        assert_eq!(Route::of("/cluster0"), Route::Cluster(0));
        assert_eq!(Route::of("/cluster01"), Route::NotFound);
        assert_eq!(Route::of("/cluster+1"), Route::NotFound);
        assert_eq!(Route::of("/cluster"), Route::NotFound);
        assert_eq!(Route::of("/cluster1/x"), Route::NotFound);
        assert_eq!(Route::of("/health"), Route::Health);
        assert_eq!(Route::of("/nope"), Route::NotFound);
    }

    #[test]
    fn work_us_is_bounded() {
        assert_eq!(work_us(None, 1000, 100_000).unwrap(), 1000);
        assert_eq!(work_us(Some("a=1&work_us=0"), 1000, 100_000).unwrap(), 0);
        assert_eq!(
            work_us(Some("work_us=100000"), 1, 100_000).unwrap(),
            100_000
        );
        let too_big = work_us(Some("work_us=100001"), 1, 100_000).unwrap_err();
        assert_eq!(too_big.0, "work_us_out_of_range");
        let junk = work_us(Some("work_us=-5"), 1, 100_000).unwrap_err();
        assert_eq!(junk.0, "invalid_work_us");
    }
}
