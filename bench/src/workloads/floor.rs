//! The cold floor: the same reads as plain ranged GETs through object_store, no cache at all;
//! for listings, the source's own paging.

use std::borrow::Cow;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::{Error, Result};

/// Reads `len` bytes of `key` as 8 MiB ranged GETs, `parallel` in flight. Returns MiB/s.
pub async fn sequential_gets(
    store: &dyn ObjectStore,
    key: &str,
    len: u64,
    parallel: usize,
) -> Result<f64> {
    const RANGE: u64 = 8 << 20;
    let path = ObjectPath::from(key);
    let start = Instant::now();
    let total: u64 = futures::stream::iter((0..len).step_by(RANGE as usize))
        .map(|off| {
            let path = &path;
            async move {
                let end = (off + RANGE).min(len);
                store
                    .get_range(path, off..end)
                    .await
                    .map(|b| b.len() as u64)
                    .map_err(|e| Error::store("get_range", key, &e))
            }
        })
        .buffered(parallel)
        .try_fold(0u64, |acc, n| async move { Ok(acc + n) })
        .await?;
    if total != len {
        return Err(Error::Parse {
            what: key.to_string(),
            detail: format!("read {total} bytes, expected {len}"),
        });
    }
    Ok(len as f64 / (1024.0 * 1024.0) / start.elapsed().as_secs_f64())
}

/// GETs each key whole, `parallel` at a time. Returns (files, seconds).
pub async fn whole_gets(
    store: &dyn ObjectStore,
    keys: &[String],
    parallel: usize,
) -> Result<(usize, f64)> {
    let start = Instant::now();
    let files = futures::stream::iter(keys)
        .map(|key| async move {
            let r = store
                .get(&ObjectPath::from(key.as_str()))
                .await
                .map_err(|e| Error::store("get", key, &e))?;
            r.bytes()
                .await
                .map(drop)
                .map_err(|e| Error::store("get", key, &e))
        })
        .buffer_unordered(parallel)
        .try_fold(0usize, |acc, ()| async move { Ok(acc + 1) })
        .await?;
    Ok((files, start.elapsed().as_secs_f64()))
}

/// Pages through one directory level (`prefix`, with its trailing slash) the way a lister
/// must: 1,000 keys per LIST, each request waiting for the previous one's continuation
/// token. Returns (entries, pages, seconds): the floor of any cold listing of it.
pub async fn paged_listing(
    store: &dyn PaginatedListStore,
    prefix: &str,
) -> Result<(usize, usize, f64)> {
    let start = Instant::now();
    let (mut entries, mut pages) = (0usize, 0usize);
    let mut token = None;
    loop {
        let page = store
            .list_paginated(
                Some(prefix),
                PaginatedListOptions {
                    delimiter: Some(Cow::Borrowed("/")),
                    max_keys: Some(1000),
                    page_token: token.take(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| Error::store("list", prefix, &e))?;
        pages += 1;
        entries += page.result.objects.len() + page.result.common_prefixes.len();
        match page.page_token {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => break,
        }
    }
    Ok((entries, pages, start.elapsed().as_secs_f64()))
}
