//! The peer token: the node secret agents present to each other (block reads). Minted by
//! the operator in its own namespace and mounted into the agent pods only; no tenant ever
//! holds it. Delete the Secret to rotate it: the operator mints a new one, kubelet updates
//! the mounted file and the agents read it again (docs/security.md).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use rand::RngCore;

use crate::context::Context;
use crate::volume::{LABEL_MANAGED_BY, MANAGED_BY};
use crate::{Error, Result};

/// Name of the peer token Secret in the Strata namespace.
pub const TOKEN_SECRET: &str = "strata-peer-token";
/// Key of the token in that Secret.
pub const TOKEN_KEY: &str = "token";

/// 32 random bytes, hex-encoded.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Creates the token Secret if it does not exist; an existing token is never
/// replaced (the agents hold it).
pub async fn ensure(
    ctx: &Context,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let existing = api.get_opt(TOKEN_SECRET).await.map_err(|e| {
        Error::kube(
            format!("reading Secret {}/{TOKEN_SECRET}", ctx.config.namespace),
            e,
        )
    })?;
    if existing.is_some_and(|s| {
        s.data
            .is_some_and(|d| d.get(TOKEN_KEY).is_some_and(|t| !t.0.is_empty()))
    }) {
        return Ok(());
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(TOKEN_SECRET.into()),
            namespace: Some(ctx.config.namespace.clone()),
            labels: Some(BTreeMap::from([(
                LABEL_MANAGED_BY.to_string(),
                MANAGED_BY.to_string(),
            )])),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            ByteString(new_token().into_bytes()),
        )])),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(()),
        // Another replica (or a restart race) minted it first: keep theirs.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(
            format!("creating Secret {}/{TOKEN_SECRET}", ctx.config.namespace),
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_long_and_distinct() {
        let (a, b) = (super::new_token(), super::new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
