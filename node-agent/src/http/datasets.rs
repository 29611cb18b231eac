//! Dataset routes: list, get, register (`PUT`) and remove (`DELETE`) datasets.

use super::auth::{Action, Caller};
use super::server::{ApiState, V1, body, check_name, json, query, respond};
use crate::config::DatasetConfig;
use crate::dataset::DatasetView;
use crate::{Error, Result};
use bytes::Bytes;
use http::StatusCode;
use std::collections::HashMap;
use std::sync::Arc;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

impl ApiState {
    async fn summary(&self, view: &DatasetView) -> serde_json::Value {
        let (ns, name) = (view.namespace(), view.name());
        let sources: Vec<serde_json::Value> = view
            .sources()
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name(),
                    // Already scrubbed of credentials by the engine.
                    "uri": s.uri(),
                    "mountPath": s.mount_path().as_str(),
                })
            })
            .collect();
        serde_json::json!({
            "namespace": ns,
            "name": name,
            "sources": sources,
            "blockSize": view.block_size(),
            "policy": view.config().policy,
            "pins": view.pins(),
            "mountPath": self.mounts.mounted_at(ns, name).await,
            "volumes": self.mounts.dataset_volumes(ns, name).await,
            "usage": view.usage(),
        })
    }
}

async fn list_datasets(caller: Caller, state: Arc<ApiState>) -> Result<Response> {
    caller.may(Action::ListDatasets, None)?;
    let mut out = Vec::new();
    for view in state.agent.datasets() {
        out.push(state.summary(&view).await);
    }
    Ok(json(StatusCode::OK, &out))
}

async fn get_dataset(
    caller: Caller,
    ns: String,
    name: String,
    state: Arc<ApiState>,
) -> Result<Response> {
    let view = state.view_for(&caller, Action::Read, &ns, &name)?;
    Ok(json(StatusCode::OK, &state.summary(&view).await))
}

/// Parses a dataset config body; namespace and name come from the URL when the body
/// leaves them out, and must agree with it otherwise.
pub fn parse_dataset_body(ns: &str, name: &str, body: &[u8]) -> Result<DatasetConfig> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Error::invalid("body", format!("not a JSON DatasetConfig: {e}")))?;
    let Some(object) = value.as_object_mut() else {
        return Err(Error::invalid(
            "body",
            "expected a JSON object (a DatasetConfig)",
        ));
    };
    for (field, expected) in [("namespace", ns), ("name", name)] {
        match object.get(field) {
            None => {
                object.insert(
                    field.to_string(),
                    serde_json::Value::String(expected.to_string()),
                );
            }
            Some(serde_json::Value::String(given)) if given == expected => {}
            Some(given) => {
                return Err(Error::invalid(
                    field,
                    format!("body says {given}, the URL says {expected:?}"),
                ));
            }
        }
    }
    let config: DatasetConfig = serde_json::from_value(value)
        .map_err(|e| Error::invalid("body", format!("invalid DatasetConfig: {e}")))?;
    config.validate()?;
    Ok(config)
}

async fn put_dataset(
    caller: Caller,
    ns: String,
    name: String,
    body: Bytes,
    state: Arc<ApiState>,
) -> Result<Response> {
    caller.may(Action::Register, Some(&ns))?;
    check_name("namespace", &ns)?;
    check_name("name", &name)?;
    let config = parse_dataset_body(&ns, &name, &body)?;
    let existed = state.agent.dataset(&ns, &name).is_some();
    let view = state.agent.add_dataset(config).await?;
    state.mounts.use_view(&view).await;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json(status, &state.summary(&view).await))
}

async fn delete_dataset(
    caller: Caller,
    ns: String,
    name: String,
    query: HashMap<String, String>,
    state: Arc<ApiState>,
) -> Result<Response> {
    state.view_for(&caller, Action::Register, &ns, &name)?;
    let volumes = state.mounts.dataset_volumes(&ns, &name).await;
    if !volumes.is_empty() {
        return Err(Error::Conflict {
            message: format!(
                "dataset {ns}/{name} is mounted for {} volume(s) ({}); unpublish them (delete the pods) first",
                volumes.len(),
                volumes.join(", ")
            ),
        });
    }
    let drop_cache = query.get("keepCache").is_none_or(|v| v != "true");
    state.agent.remove_dataset(&ns, &name, drop_cache).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({"namespace": ns, "name": name, "deleted": true, "cacheDropped": drop_cache}),
    ))
}

/// `GET /v1/datasets`, and `GET|PUT|DELETE /v1/datasets/{namespace}/{name}`.
pub(super) fn routes(v1: &V1) -> BoxedFilter<(Response,)> {
    let dataset = || warp::path!("datasets" / String / String);
    let list_all = warp::path!("datasets")
        .and(warp::get())
        .and(v1.caller())
        .and(v1.state())
        .then(|c, s| async move { respond(list_datasets(c, s).await) })
        .boxed();
    let get = dataset()
        .and(warp::get())
        .and(v1.caller())
        .and(v1.state())
        .then(|ns, name, c, s| async move { respond(get_dataset(c, ns, name, s).await) })
        .boxed();
    let put = dataset()
        .and(warp::put())
        .and(v1.caller())
        .and(body())
        .and(v1.state())
        .then(|ns, name, c, b, s| async move { respond(put_dataset(c, ns, name, b, s).await) })
        .boxed();
    let delete = dataset()
        .and(warp::delete())
        .and(v1.caller())
        .and(query())
        .and(v1.state())
        .then(|ns, name, c, q, s| async move { respond(delete_dataset(c, ns, name, q, s).await) })
        .boxed();
    list_all
        .or(get)
        .unify()
        .or(put)
        .unify()
        .or(delete)
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_bodies_take_names_from_the_url() {
        let body = br#"{"sources":[{"name":"local","uri":"file:///tmp"}]}"#;
        let config = parse_dataset_body("ml", "imagenet", body).unwrap();
        assert_eq!(
            (config.namespace.as_str(), config.name.as_str()),
            ("ml", "imagenet")
        );
        let err =
            parse_dataset_body("ml", "imagenet", br#"{"name":"other","sources":[]}"#).unwrap_err();
        assert_eq!(err.field().as_deref(), Some("name"));
        let err = parse_dataset_body("ml", "imagenet", b"[1]").unwrap_err();
        assert_eq!(err.field().as_deref(), Some("body"));
    }
}
