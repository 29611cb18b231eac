//! Read routes: stat, directory listing and (ranged, streamed) reads of a dataset's files.

use super::auth::{Action, Caller};
use super::server::{ApiState, V1, json, query, respond};
use crate::path::DatasetPath;
use crate::{Error, Result};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use std::collections::HashMap;
use std::sync::Arc;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

/// Largest chunk read from the engine per step of a streamed `read`.
const READ_CHUNK_BYTES: u64 = 4 << 20;

fn dataset_path(query: &HashMap<String, String>) -> Result<DatasetPath> {
    let raw = query.get("path").map(String::as_str).unwrap_or("/");
    DatasetPath::parse(raw).map_err(|e| Error::invalid("path", e.to_string()))
}

async fn stat(
    caller: Caller,
    ns: String,
    name: String,
    query: HashMap<String, String>,
    state: Arc<ApiState>,
) -> Result<Response> {
    let view = state.view_for(&caller, Action::Read, &ns, &name)?;
    let path = dataset_path(&query)?;
    Ok(json(StatusCode::OK, &view.stat(&path).await?))
}

async fn list(
    caller: Caller,
    ns: String,
    name: String,
    query: HashMap<String, String>,
    state: Arc<ApiState>,
) -> Result<Response> {
    let view = state.view_for(&caller, Action::Read, &ns, &name)?;
    let path = dataset_path(&query)?;
    let listing = view.list(&path).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"path": path.as_str(), "entries": &*listing}),
    ))
}

/// A single `bytes=` range, resolved against the file size to `[start, end)`.
pub fn parse_range(header: &str, size: u64) -> Result<(u64, u64)> {
    let unsatisfiable = || {
        Error::RangeNotSatisfiable(format!(
            "range {header:?} does not fit a file of {size} bytes"
        ))
    };
    let spec = header.trim().strip_prefix("bytes=").ok_or_else(|| {
        Error::invalid(
            "range",
            format!("{header:?}: only `bytes=` ranges are supported"),
        )
    })?;
    if spec.contains(',') {
        return Err(Error::invalid("range", "only a single range is supported"));
    }
    let (first, last) = spec
        .split_once('-')
        .ok_or_else(|| Error::invalid("range", format!("{header:?} is not bytes=START-END")))?;
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| Error::invalid("range", format!("{header:?} is not bytes=START-END")))
    };
    let (start, end) = match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => {
            let n = number(last)?;
            if n == 0 {
                return Err(unsatisfiable());
            }
            (size.saturating_sub(n), size)
        }
        (false, true) => (number(first)?, size),
        (false, false) => (number(first)?, number(last)?.saturating_add(1).min(size)),
        (true, true) => {
            return Err(Error::invalid(
                "range",
                format!("{header:?} is not bytes=START-END"),
            ));
        }
    };
    if start >= size || start >= end {
        return Err(unsatisfiable());
    }
    Ok((start, end))
}

async fn read(
    caller: Caller,
    ns: String,
    name: String,
    query: HashMap<String, String>,
    range: Option<String>,
    state: Arc<ApiState>,
) -> Result<Response> {
    let view = state.view_for(&caller, Action::Read, &ns, &name)?;
    let path = dataset_path(&query)?;
    // An open file keeps the object version it saw, so a streamed answer never mixes versions.
    let reader = Arc::new(view.open(&path).await?);
    let stat = reader.stat().clone();
    let size = stat.size;
    let (start, end, status) = match range.as_deref() {
        Some(header) => {
            let (s, e) = parse_range(header, size)?;
            (s, e, StatusCode::PARTIAL_CONTENT)
        }
        None => (0, size, StatusCode::OK),
    };
    let chunks = futures::stream::unfold(start, move |offset| {
        let reader = reader.clone();
        async move {
            if offset >= end {
                return None;
            }
            let len = (end - offset).min(READ_CHUNK_BYTES);
            match reader.read(offset, len).await {
                Ok(bytes) if bytes.is_empty() => None,
                Ok(bytes) => {
                    let next = offset + bytes.len() as u64;
                    Some((Ok::<Bytes, strata_engine::Error>(bytes), next))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "read failed mid-stream");
                    Some((Err(e), end))
                }
            }
        }
    });
    let mut response = warp::reply::stream(chunks).into_response();
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(value) = HeaderValue::from_str(&format!("bytes {}-{}/{size}", start, end - 1))
    {
        headers.insert(header::CONTENT_RANGE, value);
    }
    if let Some(etag) = stat
        .etag
        .as_deref()
        .and_then(|e| HeaderValue::from_str(&format!("\"{}\"", e.trim_matches('"'))).ok())
    {
        headers.insert(header::ETAG, etag);
    }
    Ok(response)
}

/// `GET /v1/datasets/{namespace}/{name}/stat|list|read?path=...`.
pub(super) fn routes(v1: &V1) -> BoxedFilter<(Response,)> {
    let stat_route = warp::path!("datasets" / String / String / "stat")
        .and(warp::get())
        .and(v1.caller())
        .and(query())
        .and(v1.state())
        .then(|ns, name, c, q, s| async move { respond(stat(c, ns, name, q, s).await) })
        .boxed();
    let list_route = warp::path!("datasets" / String / String / "list")
        .and(warp::get())
        .and(v1.caller())
        .and(query())
        .and(v1.state())
        .then(|ns, name, c, q, s| async move { respond(list(c, ns, name, q, s).await) })
        .boxed();
    let read_route = warp::path!("datasets" / String / String / "read")
        .and(warp::get())
        .and(v1.caller())
        .and(query())
        .and(warp::header::optional::<String>("range"))
        .and(v1.state())
        .then(|ns, name, c, q, r, s| async move { respond(read(c, ns, name, q, r, s).await) })
        .boxed();
    stat_route
        .or(list_route)
        .unify()
        .or(read_route)
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HttpError;

    #[test]
    fn ranges_resolve_against_the_size() {
        assert_eq!(parse_range("bytes=0-99", 1000).unwrap(), (0, 100));
        assert_eq!(parse_range("bytes=900-", 1000).unwrap(), (900, 1000));
        assert_eq!(parse_range("bytes=-100", 1000).unwrap(), (900, 1000));
        assert_eq!(parse_range("bytes=990-5000", 1000).unwrap(), (990, 1000));
        assert_eq!(parse_range("bytes=-5000", 1000).unwrap(), (0, 1000));
        assert_eq!(
            parse_range("bytes=1000-", 1000).unwrap_err().status(),
            StatusCode::RANGE_NOT_SATISFIABLE
        );
        assert_eq!(
            parse_range("bytes=5-4", 1000).unwrap_err().status(),
            StatusCode::RANGE_NOT_SATISFIABLE
        );
        assert_eq!(
            parse_range("items=0-1", 1000).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            parse_range("bytes=0-1,5-6", 1000).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
    }
}
