//! How each change applies to the writes' state (the overlay and the operations owed to
//! the source): the same code for a change made now and for one replayed from the journal.

use super::*;

impl State {
    /// The entries below `dir` (not `dir` itself).
    pub(super) fn below<'a>(
        &'a self,
        dir: &'a DatasetPath,
    ) -> impl Iterator<Item = (&'a DatasetPath, &'a Overlay)> + 'a {
        // Every path below `dir` starts with its text, and those sort together (with
        // siblings such as "/a-b" of "/a" among them, filtered out).
        self.entries
            .range(dir.clone()..)
            .take_while(move |(p, _)| p.as_str().starts_with(dir.as_str()))
            .filter(move |(p, _)| *p != dir && p.starts_with(dir))
    }

    pub(super) fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    pub(super) fn push_op(&mut self, seq: u64, op: Op) {
        self.next_seq = self.next_seq.max(seq);
        self.ops.insert(
            seq,
            PendingOp {
                op,
                since: SystemTime::now(),
                attempts: 0,
                retry_at: None,
            },
        );
    }

    pub(super) fn detach(&mut self, path: &DatasetPath) {
        if let Some(Overlay::File(f)) = self.entries.get(path) {
            f.state.lock().expect("local file").path = None;
        }
    }

    pub(super) fn apply_unlink(&mut self, seq: u64, path: &DatasetPath, at_source: bool) {
        self.detach(path);
        if at_source {
            self.entries.insert(path.clone(), Overlay::Gone);
            self.push_op(seq, Op::Delete { path: path.clone() });
        } else {
            self.entries.remove(path);
        }
    }

    pub(super) fn apply_rename(
        &mut self,
        seq: u64,
        from: &DatasetPath,
        to: &DatasetPath,
        copy: Option<(u64, MovedObject)>,
        upload: Option<u64>,
        remote: Option<&FileStat>,
    ) {
        self.detach(to);
        let moved = self.entries.remove(from);
        match (moved, copy) {
            (Some(Overlay::File(f)), _) => {
                {
                    let mut fs = f.state.lock().expect("local file");
                    fs.path = Some(to.clone());
                    fs.base = Base::Replace;
                    // Nothing is at the new path yet.
                    fs.uploaded = 0;
                    fs.dirty_since.get_or_insert_with(SystemTime::now);
                }
                self.entries.insert(to.clone(), Overlay::File(f.clone()));
                if let Some(useq) = upload {
                    self.push_op(useq, Op::Upload { id: f.id });
                }
            }
            (Some(Overlay::Moved(stat)), copy) => {
                // Moved again before its copy: copied on from where that copy puts it (the
                // copy to `from` comes first: it holds `from`, and runs in journal order).
                let mut stat = stat;
                stat.path = to.clone();
                self.entries.insert(to.clone(), Overlay::Moved(stat));
                if let Some((cseq, obj)) = copy {
                    self.push_op(
                        cseq,
                        Op::Copy {
                            from: from.clone(),
                            to: to.clone(),
                            etag: obj.etag,
                        },
                    );
                }
            }
            (_, Some((cseq, obj))) => {
                let stat = remote.cloned().unwrap_or_else(|| FileStat {
                    path: from.clone(),
                    kind: EntryKind::File,
                    size: obj.size,
                    mtime: from_nanos(obj.mtime_ns),
                    version: obj.object.as_ref().map(|(source, key, etag)| {
                        crate::cache::ObjectVersion::new(source, key, etag, obj.size)
                    }),
                    etag: Some(obj.etag.clone()),
                });
                let mut shown = stat.clone();
                shown.path = to.clone();
                self.entries.insert(to.clone(), Overlay::Moved(shown));
                self.push_op(
                    cseq,
                    Op::Copy {
                        from: from.clone(),
                        to: to.clone(),
                        etag: obj.etag,
                    },
                );
            }
            _ => {}
        }
        self.entries.insert(from.clone(), Overlay::Gone);
        self.push_op(seq, Op::Delete { path: from.clone() });
    }

    pub(super) fn apply_rmdir(&mut self, path: &DatasetPath, at_source: bool) {
        if at_source {
            self.entries.insert(path.clone(), Overlay::Gone);
        } else {
            self.entries.remove(path);
        }
    }

    /// An operation reached the source.
    pub(super) fn apply_done(&mut self, seq: u64) -> Option<Op> {
        let done = self.ops.remove(&seq)?.op;
        let still_owed = |ops: &BTreeMap<u64, PendingOp>, path: &DatasetPath| {
            ops.values().any(|p| match &p.op {
                Op::Delete { path: q } => q == path,
                Op::Copy { from, to, .. } => from == path || to == path,
                Op::Upload { .. } => false,
            })
        };
        match &done {
            Op::Delete { path } => {
                if matches!(self.entries.get(path), Some(Overlay::Gone))
                    && !still_owed(&self.ops, path)
                {
                    self.entries.remove(path);
                }
                // A removed directory is hidden until nothing below it is owed.
                let mut dir = path.parent();
                while let Some(d) = dir {
                    if !matches!(self.entries.get(&d), Some(Overlay::Gone)) {
                        break;
                    }
                    if self.below(&d).next().is_some() {
                        break;
                    }
                    self.entries.remove(&d);
                    dir = d.parent();
                }
            }
            Op::Copy { to, .. } => {
                if matches!(self.entries.get(to), Some(Overlay::Moved(_))) {
                    self.entries.remove(to);
                }
            }
            Op::Upload { .. } => {}
        }
        Some(done)
    }
}
