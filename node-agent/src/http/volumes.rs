//! Volume routes: the CSI plugin acquires and releases the dataset mounts its volumes
//! share (over the unix socket only).

use super::auth::{Action, Caller};
use super::server::{ApiState, V1, check_name, json, query, respond};
use super::types::{VolumeMount, VolumeRelease};
use crate::{Error, Result};
use http::StatusCode;
use std::collections::HashMap;
use std::sync::Arc;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

pub(super) fn check_volume_id(value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "volumeId",
            format!("{value:?} is not a volume id (1-128 of A-Z a-z 0-9 . _ -)"),
        ))
    }
}

async fn acquire_volume(
    caller: Caller,
    ns: String,
    name: String,
    volume_id: String,
    query: HashMap<String, String>,
    state: Arc<ApiState>,
) -> Result<Response> {
    caller.may(Action::Volumes, Some(&ns))?;
    check_volume_id(&volume_id)?;
    let owner = query.get("owner").map(String::as_str);
    if let Some(owner) = owner
        && (owner.is_empty() || owner.len() > 1024 || owner.chars().any(char::is_control))
    {
        return Err(Error::invalid(
            "owner",
            "must be 1-1024 printable characters",
        ));
    }
    let view = state.view(&ns, &name)?;
    let acquired = state.mounts.acquire(view, &volume_id, owner).await?;
    Ok(json(
        StatusCode::OK,
        &VolumeMount {
            namespace: ns,
            name,
            volume_id,
            mount_path: acquired.mount_path,
            volumes: acquired.volumes,
            new_volume: acquired.new_volume,
        },
    ))
}

async fn release_volume(
    caller: Caller,
    dataset: Option<(String, String)>,
    volume_id: String,
    state: Arc<ApiState>,
) -> Result<Response> {
    caller.may(Action::Volumes, dataset.as_ref().map(|(ns, _)| ns.as_str()))?;
    check_volume_id(&volume_id)?;
    if let Some((ns, name)) = &dataset {
        check_name("namespace", ns)?;
        check_name("name", name)?;
    }
    let released = state
        .mounts
        .release(
            &volume_id,
            dataset.as_ref().map(|(n, d)| (n.as_str(), d.as_str())),
        )
        .await?;
    Ok(json(
        StatusCode::OK,
        &VolumeRelease {
            volume_id,
            released: released.released,
            unmounted: released.unmounted,
        },
    ))
}

async fn list_volumes(caller: Caller, state: Arc<ApiState>) -> Result<Response> {
    caller.may(Action::Volumes, None)?;
    Ok(json(StatusCode::OK, &state.mounts.volumes().await))
}

/// `PUT|DELETE /v1/datasets/{namespace}/{name}/volumes/{id}`, `DELETE /v1/volumes/{id}`,
/// `GET /v1/volumes`.
pub(super) fn routes(v1: &V1) -> BoxedFilter<(Response,)> {
    let volume = || warp::path!("datasets" / String / String / "volumes" / String);
    let acquire = volume()
        .and(warp::put())
        .and(v1.caller())
        .and(query())
        .and(v1.state())
        .then(|ns, name, id, c, q, s| async move {
            respond(acquire_volume(c, ns, name, id, q, s).await)
        })
        .boxed();
    let release = volume()
        .and(warp::delete())
        .and(v1.caller())
        .and(v1.state())
        .then(|ns, name, id, c, s| async move {
            respond(release_volume(c, Some((ns, name)), id, s).await)
        })
        .boxed();
    let release_any = warp::path!("volumes" / String)
        .and(warp::delete())
        .and(v1.caller())
        .and(v1.state())
        .then(|id, c, s| async move { respond(release_volume(c, None, id, s).await) })
        .boxed();
    let volumes = warp::path!("volumes")
        .and(warp::get())
        .and(v1.caller())
        .and(v1.state())
        .then(|c: Caller, s: Arc<ApiState>| async move { respond(list_volumes(c, s).await) })
        .boxed();
    acquire
        .or(release)
        .unify()
        .or(release_any)
        .unify()
        .or(volumes)
        .unify()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_volume_ids_are_checked() {
        assert!(check_name("namespace", "ml-team.a").is_ok());
        for bad in ["", "ML", "-a", "a/b", "a%2Fb", ".."] {
            assert!(check_name("namespace", bad).is_err(), "{bad}");
        }
        assert!(check_volume_id("csi-0123abcd").is_ok());
        for bad in ["", "a/b", "x y", &"a".repeat(129)] {
            assert!(check_volume_id(bad).is_err(), "{bad}");
        }
    }
}
