use super::*;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};

fn p(s: &str) -> DatasetPath {
    DatasetPath::parse(s).unwrap()
}

fn open(dir: &Path, store: &Arc<InMemory>) -> Arc<DatasetWrites> {
    let metrics = Arc::new(Metrics::new());
    let source = Source::from_store(
        "mem",
        DatasetPath::root(),
        store.clone() as Arc<dyn ObjectStore>,
        "",
        metrics.clone(),
    );
    DatasetWrites::open(
        "ns/d",
        dir,
        vec![(Arc::new(source), WriteMode::WriteBack)],
        1 << 30,
        metrics,
    )
    .unwrap()
}

/// `open`, with no write handle of the previous instance coming back.
fn open_settled(dir: &Path, store: &Arc<InMemory>) -> Arc<DatasetWrites> {
    let w = open(dir, store);
    w.settle();
    w
}

/// Drops `w` and waits until its uploader and uploads let go of it (a process that
/// died), so that the next instance is alone on the journal.
async fn gone(w: Arc<DatasetWrites>) {
    let weak = Arc::downgrade(&w);
    drop(w);
    while weak.upgrade().is_some() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn store_content(store: &InMemory) -> Vec<(String, Vec<u8>)> {
    use futures::TryStreamExt;
    let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut out = Vec::new();
    for m in metas {
        let data = store.get(&m.location).await.unwrap().bytes().await.unwrap();
        out.push((m.location.to_string(), data.to_vec()));
    }
    out.sort();
    out
}

async fn write_file(w: &Arc<DatasetWrites>, path: &str, data: &[u8]) {
    let f = w.create(&p(path), Base::New, 0o644).unwrap();
    w.write(&f, 0, data).await.unwrap();
    w.commit(&f).await.unwrap();
    w.remove_writer(&f);
}

/// A rename whose caller looked while the file was local (a stat with a local ETag)
/// and finds it uploaded and let go since asks to look again (EAGAIN): that stat is no
/// source object to copy (the new name showed a file nobody could open, EISDIR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_that_saw_a_local_file_let_go_since_asks_to_look_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let w = open_settled(dir.path(), &store);
    let f = w.create(&p("/a"), Base::New, 0o644).unwrap();
    w.write(&f, 0, b"alpha").await.unwrap();
    let looked = f.stat(p("/a"));
    w.commit(&f).await.unwrap();
    w.remove_writer(&f);
    assert!(w.drain(Duration::from_secs(30)).await);
    assert!(w.lookup(&p("/a")).is_none(), "uploaded and let go");
    let e = w.rename(&p("/a"), &p("/b"), Some(&looked)).unwrap_err();
    assert_eq!(e.errno(), libc::EAGAIN, "{e}");
    assert!(w.lookup(&p("/b")).is_none());
}

/// `mv tmp out` right after `tmp` was closed, its upload maybe under way: only `out`
/// reaches the store, whenever the rename falls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_renamed_while_its_upload_runs_ends_under_its_new_name_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let w = open_settled(dir.path(), &store);
    let data = vec![7u8; 3 << 20];
    for i in 0..30 {
        write_file(&w, &format!("/tmp{i}"), &data).await;
        if i % 3 == 1 {
            tokio::task::yield_now().await;
        }
        rename_as_the_view_does(&w, &store, &format!("/tmp{i}"), &format!("/out{i}")).await;
    }
    assert!(w.drain(Duration::from_secs(30)).await);
    let keys: Vec<String> = store_content(&store)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut want: Vec<String> = (0..30).map(|i| format!("out{i}")).collect();
    want.sort();
    assert_eq!(keys, want);
}

/// Renames a file written here: its local file, or, once uploaded and let go, its
/// object at the store.
async fn rename_as_the_view_does(w: &DatasetWrites, store: &InMemory, from: &str, to: &str) {
    match w.rename(&p(from), &p(to), None) {
        Err(e) if e.errno() == libc::EAGAIN => {
            let meta = store.head(&from[1..].into()).await.unwrap();
            let stat = FileStat {
                path: p(from),
                kind: EntryKind::File,
                size: meta.size,
                mtime: meta.last_modified.into(),
                version: None,
                etag: meta.e_tag.clone(),
            };
            w.rename(&p(from), &p(to), Some(&stat)).unwrap();
        }
        other => other.unwrap(),
    }
}

/// `mv a b; mv b c` of a source object, the second before the first's copy ran: `c`
/// ends at the store with `a`'s content, and neither `a` nor `b` does, also when the
/// agent restarts in between.
// One thread: the uploader runs only when the test waits, after both renames.
#[tokio::test]
async fn a_source_object_renamed_twice_before_its_copy_ends_under_the_last_name() {
    for restart in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(InMemory::new());
        store
            .put(&"a".into(), b"alpha".to_vec().into())
            .await
            .unwrap();
        let meta = store.head(&"a".into()).await.unwrap();
        let stat = FileStat {
            path: p("/a"),
            kind: EntryKind::File,
            size: meta.size,
            mtime: meta.last_modified.into(),
            version: None,
            etag: meta.e_tag.clone(),
        };
        let mut w = open(dir.path(), &store);
        w.rename(&p("/a"), &p("/b"), Some(&stat)).unwrap();
        let Some(Overlay::Moved(moved)) = w.lookup(&p("/b")) else {
            panic!("b is the moved object");
        };
        w.rename(&p("/b"), &p("/c"), Some(&moved)).unwrap();
        if restart {
            gone(w).await;
            w = open(dir.path(), &store);
        }
        assert!(
            matches!(w.lookup(&p("/c")), Some(Overlay::Moved(_))),
            "c shows the object until it is copied (restart: {restart})"
        );
        assert!(w.drain(Duration::from_secs(30)).await);
        assert_eq!(
            store_content(&store).await,
            [("c".to_string(), b"alpha".to_vec())],
            "restart: {restart}"
        );
    }
}

/// Whatever moment the journal's writer stops at, a new instance (its start rewrites
/// the journal with what is live) brings every change made durable to the store, and
/// nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_durable_reach_the_store_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    for (k, v) in [("old", "old"), ("mv", "moving")] {
        store
            .put(&k.into(), v.as_bytes().to_vec().into())
            .await
            .unwrap();
    }
    let w = open_settled(dir.path(), &store);
    write_file(&w, "/a", b"alpha").await;
    write_file(&w, "/b", b"beta").await;
    w.mkdir(&p("/dir"), false).unwrap();
    rename_as_the_view_does(&w, &store, "/b", "/dir/c").await;
    w.unlink(&p("/old"), true).unwrap();
    let meta = store.head(&"mv".into()).await.unwrap();
    let moved = FileStat {
        path: p("/mv"),
        kind: EntryKind::File,
        size: meta.size,
        mtime: meta.last_modified.into(),
        version: None,
        etag: meta.e_tag.clone(),
    };
    w.rename(&p("/mv"), &p("/moved"), Some(&moved)).unwrap();
    w.mkdir(&p("/empty"), false).unwrap();
    gone(w).await;
    let w = open_settled(dir.path(), &store);
    assert!(
        matches!(w.lookup(&p("/empty")), Some(Overlay::Dir)),
        "a made directory comes back"
    );
    gone(w).await;
    let w = open_settled(dir.path(), &store);
    assert!(w.drain(Duration::from_secs(30)).await);
    let expected: Vec<(String, Vec<u8>)> = [("a", "alpha"), ("dir/c", "beta"), ("moved", "moving")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    assert_eq!(store_content(&store).await, expected);
    assert_eq!(w.usage().pending_files, 0);
    assert_eq!(
        w.dirty_bytes().0,
        0,
        "dirty bytes left after every file was uploaded"
    );
}

fn local_id(w: &DatasetWrites, path: &str) -> u64 {
    match w.lookup(&p(path)) {
        Some(Overlay::File(f)) => f.id(),
        other => panic!("{path}: {other:?}"),
    }
}

/// An fsync, more writes, a kill: the source never gets the bytes written after the
/// fsync until the writer (its handle taken over) commits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_written_after_the_last_commit_wait_for_the_next_one_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let w = open_settled(dir.path(), &store);
    let f = w.create(&p("/log"), Base::New, 0o644).unwrap();
    w.write(&f, 0, b"fsynced;").await.unwrap();
    w.commit(&f).await.unwrap();
    w.write(&f, 8, b"not yet").await.unwrap();
    w.write(&f, 0, b"F").await.unwrap();
    let id = f.id();
    drop(f);
    gone(w).await;
    // A restart whose takeover gives the write handle back.
    let w = open(dir.path(), &store);
    let f = w
        .file(id)
        .expect("the open file is kept until the takeover is done");
    w.add_writer(&f);
    w.settle();
    assert!(w.drain(Duration::from_secs(30)).await);
    let at_source = store_content(&store).await;
    assert!(
        at_source.is_empty() || at_source == [("log".to_string(), b"fsynced;".to_vec())],
        "only what was fsynced may be at the source: {at_source:?}"
    );
    w.write(&f, 15, b"!").await.unwrap();
    w.commit(&f).await.unwrap();
    w.remove_writer(&f);
    assert!(w.drain(Duration::from_secs(30)).await);
    assert_eq!(
        store_content(&store).await,
        [("log".to_string(), b"Fsynced;not yet!".to_vec())]
    );
}

/// The same with no handle coming back (the writer died with the agent): what was
/// written is committed as it is, as a disk keeps what was written before a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_no_writer_comes_back_for_is_committed_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let w = open_settled(dir.path(), &store);
    let f = w.create(&p("/log"), Base::New, 0o644).unwrap();
    w.write(&f, 0, b"fsynced;").await.unwrap();
    w.commit(&f).await.unwrap();
    w.write(&f, 8, b"written").await.unwrap();
    let never = w.create(&p("/never-closed"), Base::New, 0o644).unwrap();
    w.write(&never, 0, b"data").await.unwrap();
    drop((f, never));
    gone(w).await;
    let w = open_settled(dir.path(), &store);
    for _ in 0..300 {
        if w.is_idle() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(w.is_idle(), "files left: {:?}", w.usage());
    assert_eq!(
        store_content(&store).await,
        [
            ("log".to_string(), b"fsynced;written".to_vec()),
            ("never-closed".to_string(), b"data".to_vec())
        ]
    );
    assert_eq!(w.dirty_bytes().0, 0);
}

/// A file removed while open stays for its handle across a restart, and goes once
/// the takeover is done without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_removed_while_open_is_kept_for_its_handle_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let w = open_settled(dir.path(), &store);
    let f = w.create(&p("/tmp"), Base::New, 0o644).unwrap();
    w.write(&f, 0, b"scratch").await.unwrap();
    w.unlink(&p("/tmp"), false).unwrap();
    let id = f.id();
    drop(f);
    gone(w).await;
    let w = open(dir.path(), &store);
    gone(w).await; // twice: the rewritten journal keeps it too
    let w = open(dir.path(), &store);
    let f = w.file(id).expect("kept for its handle");
    assert_eq!(&f.read_at(0, 100).unwrap()[..], b"scratch");
    assert!(
        matches!(w.lookup(&p("/tmp")), None | Some(Overlay::Gone)),
        "stands nowhere"
    );
    drop(f);
    w.settle();
    assert!(w.file(id).is_none(), "let go once no handle came back");
    assert!(w.drain(Duration::from_secs(30)).await);
    assert!(w.is_idle());
    assert!(store_content(&store).await.is_empty());
}

/// The numbers of files let go are not handed out again after the journal is
/// rewritten (a new file would show the identity of an old one to the kernel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_file_numbers_are_not_reused_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemory::new());
    let w = open_settled(dir.path(), &store);
    write_file(&w, "/a", b"1").await;
    let f = w.create(&p("/b"), Base::New, 0o644).unwrap();
    let first = f.id();
    w.remove_writer(&f);
    w.unlink(&p("/b"), false).unwrap();
    drop(f);
    assert!(w.drain(Duration::from_secs(30)).await);
    assert!(w.is_idle());
    gone(w).await;
    let w = open_settled(dir.path(), &store);
    gone(w).await;
    let w = open_settled(dir.path(), &store);
    let f = w.create(&p("/c"), Base::New, 0o644).unwrap();
    assert!(f.id() > first, "{} reused (was {first})", f.id());
    assert!(local_id(&w, "/c") > first);
}

/// A source object renamed here and not copied yet reads the same object version
/// after a restart (it showed a file nobody could open: EISDIR).
#[test]
fn a_rename_replayed_before_its_copy_still_reads_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let stat = FileStat {
        path: p("/mv"),
        kind: EntryKind::File,
        size: 6,
        mtime: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        version: Some(crate::cache::ObjectVersion::new("mem", "mv", "e1", 6)),
        etag: Some("e1".into()),
    };
    let mut st = State::default();
    let copy = Some((
        1,
        MovedObject {
            size: 6,
            mtime_ns: nanos(stat.mtime),
            etag: "e1".into(),
            object: object_of(&stat),
        },
    ));
    st.apply_rename(2, &p("/mv"), &p("/moved"), copy, None, Some(&stat));
    let records = live_records(&st);
    let replayed = replay(dir.path(), records).unwrap();
    match replayed.entries.get(&p("/moved")) {
        Some(Overlay::Moved(s)) => {
            let v = s.version.clone().expect("the object version comes back");
            assert_eq!(
                (v.source.as_str(), v.key.as_str(), v.etag.as_str(), v.size),
                ("mem", "mv", "e1", 6)
            );
            assert_eq!(s.path, p("/moved"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        replayed.entries.get(&p("/mv")),
        Some(Overlay::Gone)
    ));
    assert_eq!(
        replayed.ops.len(),
        2,
        "the copy and the delete are still owed"
    );
}
