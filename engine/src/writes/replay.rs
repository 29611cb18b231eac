//! The journal's records to the writes' state and back: the replay at start, and the
//! records a rewritten journal starts with.

use super::*;

/// Rebuilds the state from the journal's records; staging files that went missing are
/// reported and their files dropped.
pub(super) fn replay(files_dir: &Path, records: Vec<Record>) -> Result<State> {
    let mut st = State::default();
    // Staging files not found, reported at the end unless a later record let the file go
    // (its staging file is removed right after that record: no loss).
    let mut missing: BTreeMap<u64, (PathBuf, String)> = BTreeMap::new();
    for record in records {
        match record {
            Record::Stage {
                id,
                path,
                base,
                mode,
            } => {
                st.next_id = st.next_id.max(id);
                // Empty: a file removed while open (see `live_records`).
                let path = if path.is_empty() {
                    None
                } else {
                    match DatasetPath::parse(&path) {
                        Ok(p) => Some(p),
                        Err(_) => continue,
                    }
                };
                let staging = files_dir.join(id.to_string());
                let file = match std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&staging)
                {
                    Ok(f) => f,
                    Err(e) => {
                        missing.insert(id, (staging, e.to_string()));
                        continue;
                    }
                };
                let meta = file.metadata().map_err(|e| Error::cache_io(&staging, e))?;
                st.dirty_bytes += meta.len();
                let local = Arc::new(LocalFile {
                    id,
                    staging,
                    file,
                    state: Mutex::new(LocalState {
                        path: path.clone(),
                        size: meta.len(),
                        mtime: meta.modified().unwrap_or_else(|_| SystemTime::now()),
                        mode,
                        base,
                        writers: 0,
                        generation: 1,
                        committed: 0,
                        uploaded: 0,
                        committed_as: None,
                        sent: Vec::new(),
                        dirty_since: Some(SystemTime::now()),
                    }),
                });
                if let Some(path) = path {
                    st.detach(&path);
                    st.entries.insert(path, Overlay::File(local.clone()));
                }
                st.files.insert(id, local);
            }
            Record::Commit {
                seq,
                id,
                size,
                mtime_ns,
            } => {
                if let Some(f) = st.files.get(&id) {
                    let mut fs = f.state.lock().expect("local file");
                    fs.committed = 1;
                    fs.committed_as = mtime_ns.map(|t| (size, t));
                    drop(fs);
                    st.push_op(seq, Op::Upload { id });
                }
                st.next_seq = st.next_seq.max(seq);
            }
            Record::Sending { id, etag } => {
                if let Some(f) = st.files.get(&id) {
                    f.state.lock().expect("local file").sent.push(etag);
                }
            }
            Record::Uploaded { id, etag } => {
                if let Some(f) = st.files.get(&id) {
                    let mut fs = f.state.lock().expect("local file");
                    fs.sent.clear();
                    fs.base = Base::Version(etag);
                    // At the source as last committed (a rename after this resets it).
                    fs.uploaded = fs.committed;
                }
            }
            Record::Unlink { seq, path } => {
                if let Ok(path) = DatasetPath::parse(&path) {
                    st.apply_unlink(seq, &path, true);
                }
                st.next_seq = st.next_seq.max(seq);
            }
            Record::Rename {
                seq,
                from,
                to,
                copy,
                upload,
            } => {
                for s in [Some(seq), copy.as_ref().map(|c| c.0), upload]
                    .into_iter()
                    .flatten()
                {
                    st.next_seq = st.next_seq.max(s);
                }
                if let (Ok(from), Ok(to)) = (DatasetPath::parse(&from), DatasetPath::parse(&to)) {
                    st.apply_rename(seq, &from, &to, copy, upload, None);
                }
            }
            Record::Mkdir { path } => {
                if let Ok(path) = DatasetPath::parse(&path) {
                    st.entries.insert(path, Overlay::Dir);
                }
            }
            Record::Rmdir { path } => {
                if let Ok(path) = DatasetPath::parse(&path) {
                    st.apply_rmdir(&path, false);
                }
            }
            Record::Done { seq } => {
                st.apply_done(seq);
            }
            Record::Numbers { next_id, next_seq } => {
                st.next_id = st.next_id.max(next_id);
                st.next_seq = st.next_seq.max(next_seq);
            }
            Record::Dropped { id } => {
                missing.remove(&id);
                if let Some(f) = st.files.remove(&id) {
                    let fs = f.state.lock().expect("local file");
                    st.dirty_bytes = st.dirty_bytes.saturating_sub(fs.size);
                    if let Some(p) = fs.path.clone() {
                        drop(fs);
                        if matches!(st.entries.get(&p), Some(Overlay::File(g)) if g.id == id) {
                            st.entries.remove(&p);
                        }
                    }
                }
            }
        }
    }
    for (staging, error) in missing.values() {
        tracing::error!(staging = %staging.display(), error = %error,
            "a staged file of the write journal is missing; its writes are lost");
    }
    // A file written after its last commit (or never committed) holds content no writer
    // closed or fsynced: not uploaded until it is committed again (by its writer, if a
    // takeover gives its handle back, else by `settle`).
    for f in st.files.values() {
        let mut fs = f.state.lock().expect("local file");
        let now = f.file.metadata().ok().map(|m| (m.len(), mtime_ns(&m)));
        let clean = fs.committed > 0 && fs.committed_as.is_some() && fs.committed_as == now;
        if !clean {
            fs.generation = fs.committed + 1;
            fs.dirty_since = Some(SystemTime::now());
        }
    }
    Ok(st)
}

/// The records that rebuild `st` (the journal rewritten at start).
pub(super) fn live_records(st: &State) -> Vec<Record> {
    // Operation numbers for the records that only carry state (no operation owed).
    let mut fresh = st.next_seq;
    let mut out = Vec::new();
    let mut ids: Vec<_> = st.files.keys().copied().collect();
    ids.sort();
    for id in ids {
        let f = &st.files[&id];
        let fs = f.state.lock().expect("local file");
        out.push(Record::Stage {
            id,
            path: fs.path.as_ref().map(|p| p.to_string()).unwrap_or_default(),
            base: fs.base.clone(),
            mode: fs.mode,
        });
        for etag in &fs.sent {
            out.push(Record::Sending {
                id,
                etag: etag.clone(),
            });
        }
        // What the last commit made durable, when its upload is not owed (then it comes
        // below): a replay must know it to tell a later change.
        let owed = st
            .ops
            .values()
            .any(|p| matches!(p.op, Op::Upload { id: i } if i == id));
        if let (Some((size, mtime_ns)), false) = (fs.committed_as, owed) {
            fresh += 1;
            out.push(Record::Commit {
                seq: fresh,
                id,
                size,
                mtime_ns: Some(mtime_ns),
            });
            if fs.uploaded >= fs.committed
                && let Base::Version(etag) = &fs.base
            {
                out.push(Record::Uploaded {
                    id,
                    etag: etag.clone(),
                });
            }
            out.push(Record::Done { seq: fresh });
        }
    }
    for (path, o) in &st.entries {
        if matches!(o, Overlay::Dir) {
            out.push(Record::Mkdir {
                path: path.to_string(),
            });
        }
    }
    for (seq, p) in &st.ops {
        match &p.op {
            Op::Upload { id } => {
                let committed_as = st
                    .files
                    .get(id)
                    .and_then(|f| f.state.lock().expect("local file").committed_as);
                out.push(Record::Commit {
                    seq: *seq,
                    id: *id,
                    size: committed_as.map_or(0, |c| c.0),
                    mtime_ns: committed_as.map(|c| c.1),
                });
            }
            Op::Delete { path } => out.push(Record::Unlink {
                seq: *seq,
                path: path.to_string(),
            }),
            Op::Copy { .. } => {}
        }
    }
    // A copy owed is rewritten as the rename it came from (its delete follows it).
    for (seq, p) in &st.ops {
        if let Op::Copy { from, to, etag } = &p.op {
            let stat = match st.entries.get(to) {
                Some(Overlay::Moved(s)) => s.clone(),
                _ => continue,
            };
            fresh += 1;
            out.push(Record::Rename {
                seq: fresh, // its delete is already in the list
                from: from.to_string(),
                to: to.to_string(),
                copy: Some((
                    *seq,
                    MovedObject {
                        size: stat.size,
                        mtime_ns: nanos(stat.mtime),
                        etag: etag.clone(),
                        object: object_of(&stat),
                    },
                )),
                upload: None,
            });
            out.push(Record::Done { seq: fresh });
        }
    }
    // Hidden paths not owed a delete any more (a removed directory) stay hidden only
    // until the next start.
    out.insert(
        0,
        Record::Numbers {
            next_id: st.next_id,
            next_seq: fresh,
        },
    );
    out
}

/// Staging files the journal does not know (a kill between creating one and journaling
/// it): never committed, removed.
pub(super) fn remove_strays(files_dir: &Path, st: &State) {
    let Ok(dir) = std::fs::read_dir(files_dir) else {
        return;
    };
    for entry in dir.flatten() {
        let known = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|id| st.files.contains_key(&id));
        if !known {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
