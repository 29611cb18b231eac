#[test]
fn tiers_read_from_the_config_and_are_checked() {
    let yaml = "name: d\nsources: [{name: s, uri: /data}]\ncache: {tiers: [Memory]}\n";
    let config: DatasetConfig = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(config.cache.tiers, vec![TierKind::Memory]);
    assert!(config.cache.uses_memory() && !config.cache.uses_disk());
    config.validate().unwrap();
    let both: DatasetConfig =
        serde_yaml::from_str("name: d\nsources: [{name: s, uri: /data}]\n").unwrap();
    assert!(both.cache.uses_memory() && both.cache.uses_disk());
    for bad in ["[SSD, SSD]", "[]"] {
        let yaml =
            format!("name: d\nsources: [{{name: s, uri: /data}}]\ncache: {{tiers: {bad}}}\n");
        let config: DatasetConfig = serde_yaml::from_str(&yaml).unwrap();
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains("cache.tiers"), "{bad}: {e}");
    }
}

use super::*;

#[test]
fn parses_yaml_with_units() {
    let cfg = DatasetConfig::from_yaml(
        r#"
namespace: ml
name: imagenet
sources:
  - name: train
    uri: s3://datasets/imagenet/train/
    mountPath: /train
    endpoint: http://127.0.0.1:9000
    region: us-east-1
    credentials: {accessKeyId: AKIAEXAMPLE, secretAccessKey: hunter2}
  - name: labels
    uri: file:///data/labels
    mountPath: /labels
cache:
  blockSize: 1Mi
  metadataTtl: 5m
  quota: 200Gi
  eviction: LRU
  pins: ["/train/2026-11-*/**"]
  dataTtl: 30d
"#,
    )
    .unwrap();
    assert_eq!(cfg.cache.block_size, 1 << 20);
    assert_eq!(cfg.cache.metadata_ttl, Duration::from_secs(300));
    assert_eq!(cfg.cache.quota, Some(200 << 30));
    assert_eq!(cfg.cache.eviction, EvictionKind::Lru);
    // What the operator writes for each CachePolicy eviction value.
    for (text, kind) in [
        ("LRU", EvictionKind::Lru),
        ("S3FIFO", EvictionKind::S3Fifo),
        ("ARC", EvictionKind::Arc),
    ] {
        let parsed: EvictionKind = serde_json::from_value(serde_json::json!(text)).unwrap();
        assert_eq!(parsed, kind, "{text}");
    }
    assert_eq!(cfg.cache.data_ttl, Some(Duration::from_secs(30 * 86400)));
    assert_eq!(cfg.sources[0].mount_path, "/train");
    // Round trip through JSON.
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(DatasetConfig::from_yaml(&json).unwrap(), cfg);
}

#[test]
fn credentials_are_redacted() {
    let c = Credentials {
        access_key_id: Some("AKIAEXAMPLEKEY".into()),
        secret_access_key: Some("hunter2-very-secret".into()),
        session_token: Some("tok-secret".into()),
        ..Default::default()
    };
    for shown in [format!("{c:?}"), format!("{c}")] {
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("tok-secret"), "{shown}");
        assert!(!shown.contains("AKIAEXAMPLEKEY"), "{shown}");
    }
}

#[test]
fn refuses_bad_configs_naming_the_field() {
    let err = DatasetConfig::from_yaml("name: x\nsources: []").unwrap_err();
    assert!(err.to_string().contains("sources"), "{err}");
    let err =
        DatasetConfig::from_yaml("name: x\nsources: [{name: a, uri: /tmp, mountPath: /../x}]")
            .unwrap_err();
    assert!(err.to_string().contains("sources[0].mountPath"), "{err}");
    let err = DatasetConfig::from_yaml(
        "name: x\nsources: [{name: a, uri: /tmp}]\ncache: {blockSize: 1000}",
    )
    .unwrap_err();
    assert!(err.to_string().contains("cache.blockSize"), "{err}");
    let err = DatasetConfig::from_yaml(
        "name: x\nsources: [{name: a, uri: /tmp}]\ncache: {metadataTtl: 1000000d}",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("cache.metadataTtl") && err.to_string().contains("365d"),
        "{err}"
    );
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("512Mi").unwrap(), 512 << 20);
    assert_eq!(parse_size("4Gi").unwrap(), 4 << 30);
    assert_eq!(parse_size("100M").unwrap(), 100_000_000);
    assert_eq!(parse_size("1.5Gi").unwrap(), 3 << 29);
    assert_eq!(parse_size("123").unwrap(), 123);
    assert!(parse_size("4Qi").is_err());
    assert!(parse_size("lots").is_err());
    assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
    assert!(parse_duration("soon").is_err());
}

#[test]
fn sizes_are_exact_and_read_the_agents_old_spellings() {
    // The agents' spellings, kept: a B unit, K, blanks before the unit.
    for (text, want) in [
        ("512MiB", 512 << 20),
        ("100MB", 100_000_000),
        ("10B", 10),
        ("10K", 10_000),
        ("10KB", 10_000),
        ("1 Gi", 1 << 30),
    ] {
        assert_eq!(parse_size(text).unwrap(), want, "{text}");
        assert!(
            parse_quantity(text).is_err(),
            "{text} is no Kubernetes quantity"
        );
    }
    // Every Kubernetes quantity reads the same in both.
    for (text, want) in [
        ("1e3", 1_000),
        ("1000m", 1),
        ("+7", 7),
        ("-0", 0),
        (".5Ki", 512),
        ("7Ei", 7 << 60),
        ("4.35M", 4_350_000),
        (" 4Mi ", 4 << 20),
    ] {
        assert_eq!(parse_size(text).unwrap(), want, "{text}");
        assert_eq!(parse_quantity(text).unwrap(), want, "{text}");
    }
    // Exact: no fraction of a byte, nothing past 2^63-1, no negative size.
    for bad in [
        "0.5",
        "0.1Gi",
        "512m",
        "8Ei",
        "99999999999999999999",
        "-1Gi",
        "",
        "1e400",
    ] {
        assert!(parse_size(bad).is_err(), "{bad}");
    }
}
