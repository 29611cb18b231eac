//! One size grammar: the CRDs' CEL rule for a byte count (`BYTE_COUNT_RULE`), the CRDs' Rust twin (`parse_quantity_bytes`) and the
//! agents' parser (`strata_wire::config::parse_size`) read every size the same
//! way. The CRDs take the Kubernetes spelling only; the agents also take the
//! spellings they always have (`1 Gi`, `1GiB`), and nothing a CRD accepts is
//! read differently by an agent.

use kube_cel::Validator;
use serde_json::{Value, json};
use strata_crds::{BYTE_COUNT_RULE, parse_quantity_bytes};
use strata_wire::config::parse_size;

/// `(input, what the CRDs accept, what the agents read)`.
const CASES: &[(&str, Option<u64>, Option<u64>)] = &[
    ("1Gi", Some(1 << 30), Some(1 << 30)),
    ("1.5Gi", Some(1_610_612_736), Some(1_610_612_736)),
    ("0", Some(0), Some(0)),
    ("-0", Some(0), Some(0)),
    ("+7", Some(7), Some(7)),
    ("1e3", Some(1_000), Some(1_000)),
    ("1E3", Some(1_000), Some(1_000)),
    ("1000m", Some(1), Some(1)),
    ("500G", Some(500_000_000_000), Some(500_000_000_000)),
    (".5Ki", Some(512), Some(512)),
    ("7Ei", Some(7 << 60), Some(7 << 60)),
    (
        "9223372036854775807",
        Some(i64::MAX as u64),
        Some(i64::MAX as u64),
    ),
    // Blanks around the value: kube-cel and both Rust parsers drop them (the API
    // server refuses them, so no stored object has them).
    (" 1Gi", Some(1 << 30), Some(1 << 30)),
    ("1Gi ", Some(1 << 30), Some(1 << 30)),
    // The agents' own spellings: no Kubernetes quantity.
    ("1 Gi", None, Some(1 << 30)),
    ("1GiB", None, Some(1 << 30)),
    ("4MB", None, Some(4_000_000)),
    ("10K", None, Some(10_000)),
    ("10B", None, Some(10)),
    // Refused by all.
    ("", None, None),
    ("-1Gi", None, None),
    ("0.5", None, None),
    ("1m", None, None),
    ("1.2.3", None, None),
    ("4mi", None, None),
    ("Mi", None, None),
    ("lots", None, None),
    ("8Ei", None, None),
    ("9223372036854775808", None, None),
    ("99999999999999999999Ti", None, None),
    ("1e400", None, None),
];

fn cel_accepts(value: &str) -> bool {
    let schema = json!({
        "type": "object",
        "properties": {"size": {
            "x-kubernetes-int-or-string": true,
            "x-kubernetes-validations": [{"rule": BYTE_COUNT_RULE}],
        }},
    });
    let doc: Value = json!({ "size": value });
    Validator::new().validate(&schema, &doc, None).is_ok()
}

#[test]
fn cel_rule_and_rust_parsers_agree_on_every_size() {
    let mut wrong = Vec::new();
    for &(input, crd, agent) in CASES {
        let cel = cel_accepts(input);
        let rust = parse_quantity_bytes(input).ok();
        let agents = parse_size(input).ok();
        if cel != crd.is_some() || rust != crd || agents != agent {
            wrong.push(format!(
                "{input:?}: want CRD {crd:?}, agents {agent:?}; CEL accepts: {cel}, Rust twin: {rust:?}, agents: {agents:?}"
            ));
        }
        if let Some(bytes) = crd {
            // What a CRD may store, an agent reads as the same number.
            assert_eq!(agent, Some(bytes), "{input:?}");
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}
