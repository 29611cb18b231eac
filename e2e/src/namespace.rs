use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::{Cluster, Result, wait_until};

/// Label on every test namespace, so leftovers can be removed with
/// `kubectl delete namespace -l app.kubernetes.io/managed-by=strata-e2e`.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "strata-e2e");

/// Set to keep the namespaces of failed (panicking) tests for inspection.
const KEEP_ON_FAILURE_ENV: &str = "STRATA_E2E_KEEP_NAMESPACES";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const DELETE_TIMEOUT: Duration = Duration::from_secs(60);

/// A freshly created namespace with a random name, owned by one test.
///
/// Call [`TestNamespace::cleanup`] at the end of the test to delete it and wait until it is gone;
/// if the test ends early (a failed assertion), `Drop` still asks the API server to delete it.
pub struct TestNamespace {
    name: String,
    client: Client,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    deleted: bool,
}

impl TestNamespace {
    /// Creates `strata-e2e-<prefix>-<random>` and waits until its `default` ServiceAccount exists
    /// (created by the controller-manager), so Pods can be created in it right away.
    pub async fn create(cluster: &Cluster, prefix: &str) -> Result<Self> {
        let client = cluster.client().await?;
        let name = namespace_name(prefix);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.0.to_string(),
                    MANAGED_BY.1.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
        let this = TestNamespace {
            name,
            client,
            kubectl: cluster.bin("kubectl"),
            kubeconfig: cluster.kubeconfig().to_path_buf(),
            deleted: false,
        };
        let accounts: Api<ServiceAccount> = Api::namespaced(this.client.clone(), &this.name);
        wait_until(
            &format!("ServiceAccount default in namespace {}", this.name),
            READY_TIMEOUT,
            || async { accounts.get_opt("default").await },
        )
        .await?;
        Ok(this)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client this namespace was created with (valid on the creating test's runtime).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// An API handle for namespaced objects of type `K` in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the namespace and waits until the namespace controller has removed it and its
    /// contents.
    ///
    /// Pods still in it are deleted at once: a DaemonSet's Pods bound to the tests' stand-in
    /// Nodes have no kubelet to confirm a graceful deletion, and would hold the namespace until
    /// the pod garbage collector removes them (40 s after their Node goes, on its own period).
    pub async fn cleanup(mut self) -> Result<()> {
        self.deleted = true;
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        namespaces
            .delete(&self.name, &DeleteParams::background())
            .await?;
        // A terminating namespace admits no new Pod, so this pass sees the last of them.
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.name);
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::background()
        };
        for pod in pods.list(&ListParams::default()).await? {
            if let Some(name) = pod.metadata.name {
                match pods.delete(&name, &now).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        wait_until(
            &format!("namespace {} to be deleted", self.name),
            DELETE_TIMEOUT,
            || async {
                let found = namespaces.get_opt(&self.name).await?;
                Ok::<_, kube::Error>(found.is_none().then_some(()))
            },
        )
        .await
    }
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        if std::thread::panicking() && std::env::var_os(KEEP_ON_FAILURE_ENV).is_some() {
            eprintln!(
                "strata-e2e: keeping namespace {} ({KEEP_ON_FAILURE_ENV} is set)",
                self.name
            );
            return;
        }
        // Drop cannot await, and the test's runtime may be shutting down: a blocking kubectl call
        // that only asks for deletion (the namespace controller finishes it) is quick and safe.
        let status = std::process::Command::new(&self.kubectl)
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
                "--request-timeout=10s",
            ])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "strata-e2e: could not delete namespace {} ({status:?}); remove it with \
                 `kubectl delete namespace -l {}={}`",
                self.name, MANAGED_BY.0, MANAGED_BY.1
            );
        }
    }
}

/// `strata-e2e-<prefix>-<6 random chars>`, a valid DNS-1123 label (at most 63 characters).
fn namespace_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let clean: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(32)
        .collect();
    let clean = clean.trim_matches('-');
    // RandomState is seeded randomly per process; hashing a counter and the time gives names that
    // differ across tests, processes and runs without a random-number dependency.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut hash = RandomState::new().hash_one((
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos,
        std::process::id(),
    ));
    let suffix: String = (0..6)
        .map(|_| {
            let digit = (hash % 36) as u32;
            hash /= 36;
            char::from_digit(digit, 36).unwrap_or('0')
        })
        .collect();
    if clean.is_empty() {
        format!("strata-e2e-{suffix}")
    } else {
        format!("strata-e2e-{clean}-{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_label(s: &str) -> bool {
        s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn names_are_dns_labels_and_unique() {
        let a = namespace_name("CRD_Validation test!");
        let b = namespace_name("CRD_Validation test!");
        assert!(a.starts_with("strata-e2e-crd-validation-test-"), "{a}");
        assert!(is_dns_label(&a), "{a}");
        assert_ne!(a, b);
        let long = namespace_name(&"x".repeat(200));
        assert!(is_dns_label(&long), "{long}");
        assert!(is_dns_label(&namespace_name("--")));
    }
}
