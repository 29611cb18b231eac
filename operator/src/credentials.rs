//! Credentials for a source, read from the user's Secret. The key names are
//! the ones the Dataset API documents; a problem names the missing key, never
//! a value.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use strata_crds::Scheme;

/// The Secret's key names, defined once with the Dataset API (`strata_crds::secret_keys`).
pub use strata_crds::secret_keys::*;

/// Credentials in the agent's configuration format: the agent's own type (`strata-wire`),
/// so the two cannot drift. `Debug` never shows a secret.
pub type AgentCredentials = strata_wire::config::Credentials;

/// Why a Secret cannot serve a source: a verdict on the user's Secret, reported as the
/// `SecretKeyMissing` condition, not an operator error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialsProblem {
    /// The Secret lacks (or has empty) `key`.
    MissingKey {
        /// The first missing key.
        key: &'static str,
        /// What the scheme needs, for the message.
        needs: &'static str,
    },
    /// A value is not UTF-8 text.
    NotText {
        /// The key holding binary data.
        key: &'static str,
    },
}

impl CredentialsProblem {
    /// A message naming the Secret, whose credentials they are (`source lake`) and the
    /// key (never a value).
    pub fn message(&self, secret: &str, whose: &str) -> String {
        match self {
            CredentialsProblem::MissingKey { key, needs } => format!(
                "Secret {secret} (credentials of {whose}) has no key {key}; {needs}. Add the key to the Secret."
            ),
            CredentialsProblem::NotText { key } => format!(
                "Secret {secret} (credentials of {whose}): the value of {key} is not UTF-8 text"
            ),
        }
    }
}

/// Why a credentialsSecretRef cannot be used: a condition reason, and a message that
/// names the Secret, whose it is and the fix (never a value).
pub type UnusableSecret = (&'static str, String);

/// Reads the Secret `secret` of `namespace` for a store of `scheme`; `whose` says whose
/// credentialsSecretRef names it (`source lake`, `the target of Migration m`).
pub async fn read_secret(
    client: &kube::Client,
    namespace: &str,
    secret: &str,
    scheme: Scheme,
    whose: &str,
) -> crate::Result<Result<AgentCredentials, UnusableSecret>> {
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), namespace);
    let found = secrets
        .get_opt(secret)
        .await
        .map_err(|e| crate::Error::kube(format!("reading Secret {namespace}/{secret}"), e))?;
    Ok(match found {
        None => Err((
            crate::conditions::reason::SECRET_NOT_FOUND,
            format!(
                "Secret {namespace}/{secret} (credentialsSecretRef of {whose}) does not exist; create it in namespace {namespace}."
            ),
        )),
        Some(found) => from_secret(scheme, &found.data.unwrap_or_default()).map_err(|p| {
            (
                crate::conditions::reason::SECRET_KEY_MISSING,
                p.message(&format!("{namespace}/{secret}"), whose),
            )
        }),
    })
}

/// Reads the keys `scheme` needs from a Secret's data.
pub fn from_secret(
    scheme: Scheme,
    data: &BTreeMap<String, ByteString>,
) -> Result<AgentCredentials, CredentialsProblem> {
    let get = |key: &'static str| -> Result<Option<String>, CredentialsProblem> {
        match data.get(key) {
            None => Ok(None),
            Some(bytes) if bytes.0.is_empty() => Ok(None),
            Some(bytes) => String::from_utf8(bytes.0.clone())
                .map(|s| Some(s.trim_end_matches(['\r', '\n']).to_string()))
                .map_err(|_| CredentialsProblem::NotText { key }),
        }
    };
    let require = |key: &'static str, needs: &'static str| -> Result<String, CredentialsProblem> {
        get(key)?.ok_or(CredentialsProblem::MissingKey { key, needs })
    };
    let mut creds = AgentCredentials::default();
    match scheme {
        Scheme::S3 => {
            const NEEDS: &str = "s3 sources need AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN optional)";
            creds.access_key_id = Some(require(AWS_ACCESS_KEY_ID, NEEDS)?);
            creds.secret_access_key = Some(require(AWS_SECRET_ACCESS_KEY, NEEDS)?);
            creds.session_token = get(AWS_SESSION_TOKEN)?;
        }
        Scheme::Gcs => {
            const NEEDS: &str = "gs sources need GOOGLE_SERVICE_ACCOUNT_KEY (the JSON key)";
            creds.service_account_key = Some(require(GOOGLE_SERVICE_ACCOUNT_KEY, NEEDS)?);
        }
        Scheme::Azure => {
            const NEEDS: &str = "az sources need AZURE_STORAGE_ACCOUNT_NAME plus AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN";
            creds.account_name = Some(require(AZURE_STORAGE_ACCOUNT_NAME, NEEDS)?);
            creds.account_key = get(AZURE_STORAGE_ACCOUNT_KEY)?;
            creds.token = get(AZURE_STORAGE_SAS_TOKEN)?;
            if creds.account_key.is_none() && creds.token.is_none() {
                return Err(CredentialsProblem::MissingKey {
                    key: AZURE_STORAGE_ACCOUNT_KEY,
                    needs: NEEDS,
                });
            }
        }
        // The API refuses credentialsSecretRef on these schemes; nothing to read.
        Scheme::Http | Scheme::Https | Scheme::File | Scheme::Hdfs => {}
    }
    Ok(creds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn s3_needs_both_keys_and_names_the_missing_one() {
        let ok = from_secret(
            Scheme::S3,
            &data(&[
                (AWS_ACCESS_KEY_ID, "AKIA1"),
                (AWS_SECRET_ACCESS_KEY, "s3cr3t\n"),
            ]),
        )
        .unwrap();
        assert_eq!(ok.secret_access_key.as_deref(), Some("s3cr3t"));
        assert!(!format!("{ok:?}").contains("s3cr3t"));

        let problem = from_secret(Scheme::S3, &data(&[(AWS_ACCESS_KEY_ID, "AKIA1")])).unwrap_err();
        let message = problem.message("ml/creds", "train");
        assert!(
            message.contains("has no key AWS_SECRET_ACCESS_KEY"),
            "{message}"
        );
        assert!(!message.contains("AKIA1"), "{message}");

        let empty = from_secret(
            Scheme::S3,
            &data(&[(AWS_ACCESS_KEY_ID, ""), (AWS_SECRET_ACCESS_KEY, "x")]),
        )
        .unwrap_err();
        assert!(matches!(
            empty,
            CredentialsProblem::MissingKey {
                key: AWS_ACCESS_KEY_ID,
                ..
            }
        ));
    }

    #[test]
    fn gcs_and_azure_keys() {
        assert!(from_secret(Scheme::Gcs, &data(&[(GOOGLE_SERVICE_ACCOUNT_KEY, "{}")])).is_ok());
        assert!(matches!(
            from_secret(Scheme::Gcs, &data(&[])),
            Err(CredentialsProblem::MissingKey {
                key: GOOGLE_SERVICE_ACCOUNT_KEY,
                ..
            })
        ));
        let sas = from_secret(
            Scheme::Azure,
            &data(&[
                (AZURE_STORAGE_ACCOUNT_NAME, "acct"),
                (AZURE_STORAGE_SAS_TOKEN, "sv=1"),
            ]),
        )
        .unwrap();
        assert_eq!(sas.token.as_deref(), Some("sv=1"));
        assert!(matches!(
            from_secret(
                Scheme::Azure,
                &data(&[(AZURE_STORAGE_ACCOUNT_NAME, "acct")])
            ),
            Err(CredentialsProblem::MissingKey {
                key: AZURE_STORAGE_ACCOUNT_KEY,
                ..
            })
        ));
    }
}
