//! Metadata of a dataset: stat and list through the metadata cache (answers kept one
//! TTL, refreshed in the background once stale, one request per path however many ask),
//! the synthetic directories above source mount paths, and glob expansion.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{DatasetView, DirEntry, DirListing, EntryKind, FileStat};
use crate::cache::ObjectVersion;
use crate::glob::PathGlobs;
use crate::metadata::Lookup;
use crate::path::DatasetPath;
use crate::source::Source;
use crate::writes::Overlay;
use crate::{Error, Result};

impl DatasetView {
    /// Takes the metadata of what the disk tier holds as known, without asking the
    /// sources: a restarted agent serves its cached files (and their parent
    /// directories) for one metadata TTL, also while a source is unreachable. A view
    /// replacing another then takes what the old one had seen ([`Self::adopt_metadata`]),
    /// or it would go back to an older cached version of a file changed upstream.
    pub fn seed_metadata_from_cache(&self) {
        for (path, version, mtime) in self.cache.cached_versions() {
            if !self.sources.iter().any(|s| s.name() == version.source) {
                continue;
            }
            let mut dir = path.parent();
            while let Some(d) = dir {
                if d.is_root() {
                    break;
                }
                dir = d.parent();
                self.stats.insert(d.clone(), Some(FileStat::dir(d)));
            }
            self.stats.insert(
                path.clone(),
                Some(FileStat {
                    path,
                    kind: EntryKind::File,
                    size: version.size,
                    mtime,
                    etag: Some(version.etag.clone()),
                    version: Some(version),
                }),
            );
        }
    }

    /// Takes over the stat and list answers `old` (the view this one replaces, over the
    /// same sources) still holds, with the times they were fetched.
    pub fn adopt_metadata(&self, old: &DatasetView) {
        self.stats.adopt(&old.stats);
        self.listings.adopt(&old.listings);
    }

    /// The metadata TTL.
    pub fn metadata_ttl(&self) -> Duration {
        self.stats.ttl()
    }

    /// The source a path falls in and the key relative to it.
    fn resolve(&self, path: &DatasetPath) -> Option<(&Arc<Source>, String)> {
        self.sources
            .iter()
            .filter_map(|s| {
                path.strip_prefix(s.mount_path())
                    .map(|rel| (s, rel.to_string()))
            })
            .max_by_key(|(s, _)| s.mount_path().as_str().len())
    }

    /// Children of a path above (or between) source mount paths, if it is one.
    fn virtual_children(&self, path: &DatasetPath) -> Option<Vec<String>> {
        let mut names: Vec<String> = self
            .sources
            .iter()
            .filter(|s| s.mount_path() != path)
            .filter_map(|s| {
                let rest = s.mount_path().strip_prefix(path)?;
                rest.split('/').next().map(str::to_string)
            })
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return None;
        }
        names.sort();
        names.dedup();
        Some(names)
    }

    /// Stat of a file or directory.
    pub async fn stat(self: &Arc<Self>, path: &DatasetPath) -> Result<FileStat> {
        Ok(self.stat_until(path).await?.0)
    }

    /// Stat of a file or directory, and until when a cache that keeps the answer (the
    /// kernel's, through FUSE) may keep it: until its background refresh is due here, or
    /// its expiry once that is due (see [`crate::metadata::Lookup`]). Given a whole TTL,
    /// an answer that had aged here would show a change upstream up to twice the TTL late.
    pub async fn stat_until(self: &Arc<Self>, path: &DatasetPath) -> Result<(FileStat, Instant)> {
        match self.stat_opt(path).await? {
            Some(s) => Ok(s),
            None => Err(Error::NotFound {
                path: path.to_string(),
            }),
        }
    }

    pub(super) async fn stat_opt(
        self: &Arc<Self>,
        path: &DatasetPath,
    ) -> Result<Option<(FileStat, Instant)>> {
        let valid_until = || self.stats.keep_new_until();
        // Mount paths never nest (validated), so a path with sources below it is not
        // inside any source: a synthetic directory.
        if self.virtual_children(path).is_some() {
            return Ok(Some((FileStat::dir(path.clone()), valid_until())));
        }
        let Some((_, rel)) = self.resolve(path) else {
            return Ok(None);
        };
        if rel.is_empty() {
            return Ok(Some((FileStat::dir(path.clone()), valid_until())));
        }
        if let Some(w) = self.writes() {
            if let Some(local) = w.lookup(path) {
                // Changes on this node: never cached by the kernel past now.
                let now = Instant::now();
                return Ok(match local {
                    Overlay::File(f) => Some((f.stat(path.clone()), now)),
                    Overlay::Moved(stat) => Some((stat, now)),
                    Overlay::Dir => Some((FileStat::dir(path.clone()), now)),
                    Overlay::Gone => None,
                });
            }
            if w.known_absent(path, self.metadata_ttl()) {
                return Ok(None);
            }
        }
        match self.stats.get(path) {
            Lookup::Fresh(v, keep) => return Ok(v.map(|s| (s, keep))),
            Lookup::Stale(v, keep) => {
                self.refresh_in_background(path.clone());
                return Ok(v.map(|s| (s, keep)));
            }
            Lookup::Missing => {}
        }
        // A fresh listing of the parent answers without a request.
        if let Some(parent) = path.parent() {
            let found = match self.listings.get(&parent) {
                Lookup::Fresh(listing, keep) => Some((listing, keep)),
                Lookup::Stale(listing, keep) => {
                    self.refresh_listing_in_background(parent);
                    Some((listing, keep))
                }
                Lookup::Missing => None,
            };
            if let Some((listing, keep)) = found {
                let name = path.file_name().unwrap_or_default();
                return Ok(listing.find(name).map(|e| (e.stat, keep)));
            }
        }
        let stat = self.fetch_stat(path.clone()).await?;
        Ok(stat.map(|s| (s, valid_until())))
    }

    fn refresh_in_background(self: &Arc<Self>, path: DatasetPath) {
        if !self
            .refreshing
            .lock()
            .expect("refreshing")
            .insert(path.clone())
        {
            return;
        }
        let view = self.clone();
        self.handle.spawn(async move {
            let _ = view.fetch_stat(path.clone()).await;
            view.refreshing.lock().expect("refreshing").remove(&path);
        });
    }

    pub(super) async fn fetch_stat(
        self: &Arc<Self>,
        path: DatasetPath,
    ) -> Result<Option<FileStat>> {
        let view = self.clone();
        let p = path.clone();
        self.meta_flights
            .run(
                path,
                move || async move {
                    let (source, rel) = view.resolve(&p).expect("resolved before");
                    let source = source.clone();
                    // A change made here while the request was out (an upload, a delete)
                    // invalidates the path: the answer may be from before it, so ask again.
                    let mut attempts = 0;
                    loop {
                        attempts += 1;
                        let stamp = view.invalidation_stamp(&p);
                        let stat = match view.noted(source.head(&rel).await)? {
                            Some(info) => Some(FileStat {
                                path: p.clone(),
                                kind: EntryKind::File,
                                size: info.size,
                                mtime: info.mtime,
                                etag: Some(info.etag.clone()),
                                version: Some(ObjectVersion::new(
                                    source.name(),
                                    info.key,
                                    info.etag,
                                    info.size,
                                )),
                            }),
                            // Not an object: a directory if anything is under it (one key
                            // asked for, not the whole directory).
                            None => view
                                .noted(source.dir_exists(&rel).await)?
                                .then(|| FileStat::dir(p.clone())),
                        };
                        if view.invalidation_stamp(&p) == stamp {
                            view.stats.insert(p, stat.clone());
                            return Ok(stat);
                        }
                        if attempts >= 3 {
                            return Ok(stat);
                        }
                    }
                },
                |e| Err(Error::Task(e)),
            )
            .await
    }

    /// Lists a directory, complete. The listing is fetched once per metadata TTL and shared.
    pub async fn list(self: &Arc<Self>, path: &DatasetPath) -> Result<Arc<DirListing>> {
        Ok(self.list_until(path).await?.0)
    }

    /// Lists a directory, complete, and says until when the listing is valid (see
    /// [`Self::stat_until`]).
    pub async fn list_until(
        self: &Arc<Self>,
        path: &DatasetPath,
    ) -> Result<(Arc<DirListing>, Instant)> {
        let (listing, valid_until) = self.open_listing(path).await?;
        listing.complete().await?;
        Ok((listing, valid_until))
    }

    /// A directory's listing as it comes in, and until when it is valid: the complete one
    /// the metadata cache holds, or else one filled page by page as the source answers,
    /// shared by every reader until complete (then it goes into the cache). Readers page
    /// through it by index ([`DirListing::visit`], [`DirListing::wait_for`]).
    pub async fn open_listing(
        self: &Arc<Self>,
        path: &DatasetPath,
    ) -> Result<(Arc<DirListing>, Instant)> {
        let valid_until = || self.listings.keep_new_until();
        if let Some(names) = self.virtual_children(path) {
            let listing = DirListing::of_directories(path.clone(), names);
            return Ok((listing, valid_until()));
        }
        if let Some(children) = self.writes().and_then(|w| w.children(path)) {
            return Ok((self.merged_listing(path, children).await?, Instant::now()));
        }
        match self.listings.get(path) {
            Lookup::Fresh(l, keep) => return Ok((l, keep)),
            Lookup::Stale(l, keep) => {
                self.refresh_listing_in_background(path.clone());
                return Ok((l, keep));
            }
            Lookup::Missing => {}
        }
        let stat = self.stat(path).await?;
        if !stat.is_dir() {
            return Err(Error::NotDirectory {
                path: path.to_string(),
            });
        }
        let listing = self.start_listing(path.clone())?;
        Ok((listing, valid_until()))
    }

    /// The source's listing of `path` (none when the directory is only on this node)
    /// with this node's changes over it.
    async fn merged_listing(
        self: &Arc<Self>,
        path: &DatasetPath,
        children: Vec<(String, Overlay)>,
    ) -> Result<Arc<DirListing>> {
        let Some((source, rel)) = self.resolve(path) else {
            return Err(Error::NotFound {
                path: path.to_string(),
            });
        };
        let source_name = source.name().to_string();
        let mut entries: std::collections::BTreeMap<String, DirEntry> = Default::default();
        let listed = match self.listings.get(path) {
            Lookup::Fresh(l, _) | Lookup::Stale(l, _) => Some(l),
            Lookup::Missing => {
                let at_source = rel.is_empty()
                    || self
                        .fetch_stat(path.clone())
                        .await?
                        .is_some_and(|s| s.is_dir());
                if at_source {
                    let l = self.start_listing(path.clone())?;
                    l.complete().await?;
                    Some(l)
                } else {
                    None
                }
            }
        };
        for e in listed.map(|l| l.entries()).unwrap_or_default() {
            entries.insert(e.name.clone(), e);
        }
        for (name, o) in children {
            let Ok(child) = path.join(&name) else {
                continue;
            };
            let stat = match o {
                Overlay::File(f) => f.stat(child),
                Overlay::Moved(s) => s,
                Overlay::Dir => FileStat::dir(child),
                Overlay::Gone => {
                    entries.remove(&name);
                    continue;
                }
            };
            entries.insert(name.clone(), DirEntry { name, stat });
        }
        Ok(DirListing::of_entries(
            path.clone(),
            &source_name,
            &rel,
            entries.into_values(),
        ))
    }

    fn refresh_listing_in_background(self: &Arc<Self>, path: DatasetPath) {
        // Started once however many ask: a listing on its way is joined.
        let _ = self.start_listing(path);
    }

    /// The listing of `path` on its way in: the one already coming, or a new one.
    fn start_listing(self: &Arc<Self>, path: DatasetPath) -> Result<Arc<DirListing>> {
        let Some((source, rel)) = self.resolve(&path) else {
            return Err(Error::NotFound {
                path: path.to_string(),
            });
        };
        let source = source.clone();
        let mut growing = self.growing.lock().expect("growing listings");
        if let Some(listing) = growing.get(&path) {
            return Ok(listing.clone());
        }
        let listing = DirListing::growing(path.clone(), source.name(), &rel);
        growing.insert(path.clone(), listing.clone());
        drop(growing);
        let (view, filling) = (self.clone(), listing.clone());
        let task = self
            .handle
            .spawn(async move { view.fill_listing(&source, &rel, &filling).await });
        let (view, done) = (self.clone(), listing.clone());
        // Apart from the filling task, so a panic there still ends the listing.
        self.handle.spawn(async move {
            let result = task
                .await
                .unwrap_or_else(|e| Err(Error::Task(e.to_string())));
            view.listing_done(path, &done, result);
        });
        Ok(listing)
    }

    /// Adds the source's pages to `listing` as they arrive.
    async fn fill_listing(&self, source: &Source, rel: &str, listing: &DirListing) -> Result<()> {
        let listed = source
            .list_dir_pages(rel, |page| {
                let before = listing.len();
                listing.add_page(page)?;
                // Fresher than any stat cached for the children.
                listing.visit(before, |_, e| {
                    self.stats.remove(&e.path());
                    true
                });
                Ok(())
            })
            .await;
        self.noted(listed)
    }

    /// Ends a listing: complete or failed, and kept in the metadata cache when complete
    /// unless invalidated meanwhile (its readers still finish reading it).
    fn listing_done(&self, path: DatasetPath, listing: &Arc<DirListing>, result: Result<()>) {
        match result {
            Ok(()) => listing.finish(),
            Err(e) => listing.fail(e),
        }
        let mut growing = self.growing.lock().expect("growing listings");
        if growing.get(&path).is_some_and(|l| Arc::ptr_eq(l, listing)) {
            if listing.is_complete() {
                self.listings.insert(path.clone(), listing.clone());
            }
            growing.remove(&path);
        }
    }

    /// Forgets cached metadata of a path (and its parent's listing); a listing of either
    /// on its way in is not kept when it completes.
    pub fn invalidate(&self, path: &DatasetPath) {
        self.invalidations[self.stripe(path)].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.stats.remove(path);
        self.listings.remove(path);
        let mut growing = self.growing.lock().expect("growing listings");
        growing.remove(path);
        if let Some(parent) = path.parent() {
            self.listings.remove(&parent);
            growing.remove(&parent);
        }
    }

    fn stripe(&self, path: &DatasetPath) -> usize {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(path.as_str());
        (h as usize) % self.invalidations.len()
    }

    /// How many invalidations met `path`'s stripe so far.
    fn invalidation_stamp(&self, path: &DatasetPath) -> u64 {
        self.invalidations[self.stripe(path)].load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Every file under the globs' common directory that matches them. With `fresh`, each
    /// directory walked is listed again rather than taken from the metadata cache (which
    /// the new listings then refresh).
    pub async fn expand_globs(
        self: &Arc<Self>,
        globs: &PathGlobs,
        fresh: bool,
    ) -> Result<Vec<FileStat>> {
        let mut out = Vec::new();
        let start = globs.literal_prefix();
        let mut queue = VecDeque::from([start]);
        while let Some(dir) = queue.pop_front() {
            if fresh {
                self.stats.remove(&dir);
                self.listings.remove(&dir);
            }
            let stat = match self.stat(&dir).await {
                Ok(s) => s,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            if !stat.is_dir() {
                if globs.matches(&stat.path) {
                    out.push(stat);
                }
                continue;
            }
            let listing = self.list(&dir).await?;
            listing.visit(0, |_, e| {
                let path = e.path();
                if e.is_dir() {
                    queue.push_back(path);
                } else if globs.matches(&path) {
                    out.push(e.stat());
                }
                true
            });
        }
        Ok(out)
    }
}
