//! Azure sources against a real Azure Storage emulator (Azurite): an account key and a SAS
//! token both read what was written, and the SAS token goes where the service looks for it.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use strata_store::{FailureKind, Tuning, build, classify};
use strata_testkit::azurite::{ACCOUNT, ACCOUNT_KEY, Azurite};
use strata_testkit::data::content;
use strata_wire::config::{Credentials, SourceConfig};

fn az_source(azurite: &Azurite, credentials: Credentials) -> SourceConfig {
    SourceConfig {
        name: "lake".into(),
        uri: "az://corpus/train/".into(),
        endpoint: Some(azurite.endpoint()),
        credentials: Some(credentials),
        ..SourceConfig::default()
    }
}

fn with_key() -> Credentials {
    Credentials {
        account_name: Some(ACCOUNT.into()),
        account_key: Some(ACCOUNT_KEY.into()),
        ..Credentials::default()
    }
}

fn with_sas(token: String) -> Credentials {
    Credentials {
        account_name: Some(ACCOUNT.into()),
        token: Some(token),
        ..Credentials::default()
    }
}

async fn read_all(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let listed: Vec<_> = store
        .list(Some(&StorePath::from(prefix)))
        .try_collect()
        .await
        .expect("list");
    let mut out = Vec::new();
    for meta in listed {
        let bytes = store
            .get(&meta.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        out.push((meta.location.to_string(), bytes.to_vec()));
    }
    out.sort();
    out
}

#[tokio::test]
async fn account_keys_and_sas_tokens_read_what_was_written() {
    let azurite = Azurite::start();
    azurite.create_container("corpus");
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| {
            (
                format!("train/part-{i}.bin"),
                content(i, 100_000 + i as usize),
            )
        })
        .collect();

    let writer = build(&az_source(&azurite, with_key()), &Tuning::reads(3)).expect("build");
    assert_eq!(writer.prefix, "train/");
    for (key, bytes) in &files {
        writer
            .store
            .put(
                &StorePath::from(key.as_str()),
                PutPayload::from(bytes.clone()),
            )
            .await
            .expect("put with the account key");
    }
    assert_eq!(read_all(&writer.store, "train").await, files);

    // A read-and-list SAS, as the portal copies it (leading "?") and as the SDKs print it.
    let sas = azurite.account_sas("rl");
    for token in [format!("?{sas}"), sas.clone()] {
        let reader =
            build(&az_source(&azurite, with_sas(token)), &Tuning::reads(3)).expect("build");
        assert_eq!(read_all(&reader.store, "train").await, files);
        // Read-only means read-only: the service refuses a write with this token.
        let refused = reader
            .store
            .put(
                &StorePath::from("train/new.bin"),
                PutPayload::from_static(b"x"),
            )
            .await
            .expect_err("a read-only SAS cannot write");
        assert_eq!(
            classify(&refused),
            FailureKind::PermissionDenied,
            "{refused}"
        );
    }

    // The call the agent used before: a SAS sent as a bearer token is not a credential the
    // service accepts, so every read failed.
    let bearer = object_store::azure::MicrosoftAzureBuilder::new()
        .with_account(ACCOUNT)
        .with_container_name("corpus")
        .with_endpoint(azurite.endpoint())
        .with_allow_http(true)
        .with_bearer_token_authorization(sas)
        .build()
        .expect("build");
    assert!(
        bearer
            .get(&StorePath::from("train/part-0.bin"))
            .await
            .is_err(),
        "a SAS token as a bearer token must not read"
    );
}

#[tokio::test]
async fn a_tampered_sas_is_an_access_denial() {
    let azurite = Azurite::start();
    azurite.create_container("corpus");
    let sas = azurite.account_sas("rl");
    let (head, _) = sas.split_once("&sig=").expect("a signature");
    let forged = format!("{head}&sig=AAAA");
    let reader = build(&az_source(&azurite, with_sas(forged)), &Tuning::reads(0)).expect("build");
    let e = read_listing_error(&reader.store).await;
    assert_eq!(classify(&e), FailureKind::PermissionDenied, "{e}");
}

async fn read_listing_error(store: &Arc<dyn ObjectStore>) -> object_store::Error {
    store
        .list(Some(&StorePath::from("train")))
        .try_collect::<Vec<_>>()
        .await
        .expect_err("a forged signature must be refused")
}
