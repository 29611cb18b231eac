//! Peer routes: blocks for other agents of the cluster (the node secret only).
//!
//! - `GET /v1/peer/datasets/{namespace}/{name}/blocks?path&source&key&etag&size&mtime&first&count&from`:
//!   the blocks of that exact object version, streamed in order as this node has them (its
//!   tiers, else one fetch from the source; never from a third node).
//! - `POST /v1/peer/datasets/{namespace}/{name}/fill?...` (same query): keep a copy of
//!   those blocks too (this node is one of their owners); fetched in the background, or
//!   with `wait=true` answered once stored (a preload on another node).

use super::auth::{Action, Caller};
use super::server::{ApiState, V1, json, respond};
use crate::cluster::BlockRequest;
use crate::path::DatasetPath;
use crate::{Error, Result};
use http::{HeaderValue, StatusCode, header};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use strata_engine::cache::ObjectVersion;
use strata_wire::api::client::PeerBlocksQuery;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

fn block_request(ns: &str, name: &str, q: PeerBlocksQuery) -> Result<BlockRequest> {
    let path = DatasetPath::parse(&q.path).map_err(|e| Error::invalid("path", e.to_string()))?;
    let mtime = UNIX_EPOCH
        .checked_add(Duration::from_millis(q.mtime.max(0) as u64))
        .ok_or_else(|| Error::invalid("mtime", "out of range"))?;
    Ok(BlockRequest {
        namespace: ns.to_string(),
        name: name.to_string(),
        path,
        mtime,
        version: ObjectVersion::new(q.source, q.key, q.etag, q.size),
        block_size: q.block_size,
        first: q.first,
        count: q.count,
        from: q.from,
    })
}

async fn blocks(
    caller: Caller,
    ns: String,
    name: String,
    query: PeerBlocksQuery,
    state: Arc<ApiState>,
) -> Result<Response> {
    let view = state.view_for(&caller, Action::PeerBlocks, &ns, &name)?;
    let request = block_request(&ns, &name, query)?;
    let bs = view.block_size();
    let len: u64 = (request.first..request.first + request.count)
        .map(|i| request.version.block_range(bs, i))
        .map(|r| r.end.saturating_sub(r.start))
        .sum();
    let stream = view.serve_peer(&request)?;
    let mut response = warp::reply::stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    // A body that ends short of this is a failed answer, whatever the status said.
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(response)
}

async fn fill(
    caller: Caller,
    ns: String,
    name: String,
    query: PeerBlocksQuery,
    state: Arc<ApiState>,
) -> Result<Response> {
    let view = state.view_for(&caller, Action::PeerBlocks, &ns, &name)?;
    let wait = query.wait;
    let request = block_request(&ns, &name, query)?;
    if wait {
        view.fill_for_preload(&request).await?;
        return Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "accepted": true }),
        ));
    }
    let accepted = view.fill_from_peer(&request)?;
    Ok(json(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "accepted": accepted }),
    ))
}

pub(super) fn routes(v1: &V1) -> BoxedFilter<(Response,)> {
    let blocks_route = warp::path!("peer" / "datasets" / String / String / "blocks")
        .and(warp::get())
        .and(v1.caller())
        .and(warp::query::<PeerBlocksQuery>())
        .and(v1.state())
        .then(|ns, name, c, q, s| async move { respond(blocks(c, ns, name, q, s).await) })
        .boxed();
    let fill_route = warp::path!("peer" / "datasets" / String / String / "fill")
        .and(warp::post())
        .and(v1.caller())
        .and(warp::query::<PeerBlocksQuery>())
        .and(v1.state())
        .then(|ns, name, c, q, s| async move { respond(fill(c, ns, name, q, s).await) })
        .boxed();
    blocks_route.or(fill_route).unify().boxed()
}
