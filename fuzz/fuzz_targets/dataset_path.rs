//! DatasetPath::parse, join_path, pin/preload glob compilation and Range parsing: whatever
//! the input, an accepted path (or glob) stays inside the dataset root, also after one more
//! round of percent-decoding, and re-parses to itself; a parsed range lies inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_agent::http::parse_range;
use strata_agent::glob::PathGlobs;
use strata_agent::path::{DatasetPath, MAX_COMPONENT_BYTES, MAX_PATH_BYTES};

fn assert_inside(p: &str, input: &str) {
    assert!(p.starts_with('/'), "{input:?} -> {p:?} is not absolute");
    assert!(p.len() <= MAX_PATH_BYTES + 1, "{input:?} -> too long");
    let rest = &p[1..];
    if !rest.is_empty() {
        for c in rest.split('/') {
            assert!(
                !c.is_empty() && c != "." && c != "..",
                "{input:?} -> {p:?} has component {c:?}"
            );
            assert!(
                c.len() <= MAX_COMPONENT_BYTES,
                "{input:?} -> long component"
            );
        }
    }
    assert!(!p.contains('\\') && !p.contains('\0'), "{input:?} -> {p:?}");
    // A layer that percent-decodes once more (a proxy, a client library) still sees no way
    // out.
    let decoded = percent_encoding::percent_decode_str(p).decode_utf8_lossy();
    assert!(
        !decoded.split(['/', '\\']).any(|c| c == ".."),
        "{input:?} -> {p:?} decodes to {decoded:?}"
    );
    assert!(!decoded.contains('\0'), "{input:?} -> {p:?} decodes to NUL");
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = DatasetPath::parse(input) {
        assert_inside(p.as_str(), input);
        assert_eq!(DatasetPath::parse(p.as_str()).as_ref(), Ok(&p));
        for base in ["/", "/base/dir"] {
            let base = DatasetPath::parse(base).unwrap();
            if let Ok(joined) = base.join_path(input) {
                assert_inside(joined.as_str(), input);
                assert!(
                    joined.starts_with(&base),
                    "{input:?} left {base:?}: {joined:?}"
                );
            }
        }
        if let Some(name) = p.file_name() {
            let parent = p.parent().unwrap();
            assert_eq!(parent.join(name).unwrap(), p);
        }
    }
    // Pin/preload globs: the same rules, and the literal prefix the engine lists from is
    // inside the dataset too.
    if let Ok(globs) = PathGlobs::new(&[input]) {
        for pattern in globs.patterns() {
            assert_inside(pattern, input);
        }
        assert_inside(globs.literal_prefix().as_str(), input);
    }
    // Range headers against a file size taken from the input's length.
    let size = (data.len() as u64) * 97;
    if let Ok((start, end)) = parse_range(input, size) {
        assert!(
            start < end && end <= size,
            "{input:?}: {start}..{end} of {size}"
        );
    }
});
