//! Job credentials checked by the Kubernetes API server: a preload/pin Job's pod presents
//! its projected ServiceAccount token (audience [`super::auth::DEFAULT_JOB_AUDIENCE`]); the
//! agent asks a TokenReview whether it is valid for that audience and whose it is.

use super::auth::{TokenReviewer, service_account_namespace};
use crate::{Error, Result};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;

/// TokenReviews through the agent's own ServiceAccount (`create tokenreviews`).
pub struct KubeTokenReviewer {
    client: kube::Client,
    audience: String,
}

impl KubeTokenReviewer {
    pub fn new(client: kube::Client, audience: impl Into<String>) -> Self {
        KubeTokenReviewer {
            client,
            audience: audience.into(),
        }
    }
}

#[async_trait::async_trait]
impl TokenReviewer for KubeTokenReviewer {
    async fn review(&self, token: &str) -> Result<Option<String>> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            // The error names the request, never the token (it is in the body only).
            .map_err(Error::TokenReview)?;
        let Some(status) = answer.status else {
            return Ok(None);
        };
        let for_us = status
            .audiences
            .as_ref()
            .is_some_and(|a| a.contains(&self.audience));
        if status.authenticated != Some(true) || !for_us {
            return Ok(None);
        }
        Ok(status
            .user
            .and_then(|u| u.username)
            .as_deref()
            .and_then(service_account_namespace)
            .map(str::to_string))
    }
}
