//! [`KubeClient`]: the apiserver over the `kube` crate, for the
//! ServiceAccount-token authenticator and the Leases.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::{
    KubeApiError, Label, LeaseRecord, LeaseRenewal, LeaseStore, NodeAddress, Review, ReviewedUser, TokenReviewer,
};
use crate::transport::BoxFuture;

/// The field manager of connector's server-side applies (the Leases).
const FIELD_MANAGER: &str = "connector";

/// Where the apiserver and the credentials to reach it come from could not
/// be used.
#[derive(Debug, thiserror::Error)]
pub enum KubeConfigError {
    /// The kubeconfig file is unreadable, or does not name a usable
    /// cluster, user and context.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Loading the kubeconfig would need to wait for something (an
    /// authentication plugin); connector needs a kubeconfig it can load at
    /// once (a client certificate or a token).
    #[error("kubeconfig {path}: its credentials cannot be loaded at start-up: use a client certificate or a token")]
    NotImmediate {
        /// The file.
        path: String,
    },
    /// No kubeconfig was given and this is not a pod with a ServiceAccount.
    #[error("no kubeconfig is set and the in-cluster configuration is not usable ({source}): set kubeconfig")]
    InCluster {
        /// Cause.
        #[source]
        source: kube::config::InClusterError,
    },
}

/// An apiserver client: TokenReviews, Node reads, and [`KubeClient::leases`].
/// Built without a runtime (the configuration is read and checked at once);
/// its connection is made at the first request.
pub struct KubeClient {
    config: kube::Config,
    /// Where the configuration came from, for messages.
    source: String,
    client: Mutex<Option<kube::Client>>,
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient")
            .field("source", &self.source)
            .field("cluster_url", &self.config.cluster_url)
            .finish_non_exhaustive()
    }
}

impl KubeClient {
    /// From `kubeconfig` (its current context), or else from the pod's
    /// in-cluster configuration (its ServiceAccount token and CA,
    /// `KUBERNETES_SERVICE_HOST`).
    pub fn new(kubeconfig: Option<&Path>) -> Result<Self, KubeConfigError> {
        match kubeconfig {
            Some(path) => Self::from_kubeconfig(path),
            None => Self::in_cluster(),
        }
    }

    /// From a kubeconfig file (its current context).
    pub fn from_kubeconfig(path: &Path) -> Result<Self, KubeConfigError> {
        use futures_util::FutureExt;
        let shown = path.display().to_string();
        let kubeconfig = Kubeconfig::read_from(path).map_err(|source| KubeConfigError::Kubeconfig {
            path: shown.clone(),
            source,
        })?;
        // Its future waits for nothing with the credentials connector
        // supports (the loading is synchronous in all but name).
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .now_or_never()
            .ok_or_else(|| KubeConfigError::NotImmediate { path: shown.clone() })?
            .map_err(|source| KubeConfigError::Kubeconfig {
                path: shown.clone(),
                source,
            })?;
        Ok(Self::with_config(config, format!("kubeconfig {shown}")))
    }

    /// From the pod's in-cluster configuration.
    pub fn in_cluster() -> Result<Self, KubeConfigError> {
        let config = kube::Config::incluster().map_err(|source| KubeConfigError::InCluster { source })?;
        Ok(Self::with_config(config, "the in-cluster configuration".into()))
    }

    fn with_config(mut config: kube::Config, source: String) -> Self {
        // The callers bound each request themselves; these keep a dead
        // connection from holding one for long.
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(30));
        config.reset_reader_on_write = true;
        Self {
            config,
            source,
            client: Mutex::new(None),
        }
    }

    /// The apiserver's address.
    pub fn cluster_url(&self) -> String {
        self.config.cluster_url.to_string()
    }

    /// The Leases in `namespace` with `label`.
    pub fn leases(self: &Arc<Self>, namespace: &str, label: &Label) -> KubeLeases {
        KubeLeases {
            client: self.clone(),
            namespace: namespace.to_owned(),
            label: label.clone(),
        }
    }

    /// The `kube` client, made at the first request (it needs a runtime).
    fn client(&self, request: &str) -> Result<kube::Client, KubeApiError> {
        let mut client = self.client.lock().expect("kube client");
        if let Some(client) = &*client {
            return Ok(client.clone());
        }
        let made = kube::Client::try_from(self.config.clone()).map_err(|err| KubeApiError::Transport {
            request: request.to_owned(),
            source: format!("cannot build a Kubernetes client from {}: {err}", self.source).into(),
        })?;
        *client = Some(made.clone());
        Ok(made)
    }
}

/// A `kube` error as a [`KubeApiError`] of `request`.
fn api_error(request: &str, err: kube::Error) -> KubeApiError {
    match err {
        kube::Error::Api(status) => KubeApiError::Status {
            request: request.to_owned(),
            code: status.code,
            message: status.message,
        },
        other => KubeApiError::Transport {
            request: request.to_owned(),
            source: Box::new(other),
        },
    }
}

impl TokenReviewer for KubeClient {
    fn review<'a>(&'a self, token: &'a str, audiences: &'a [String]) -> BoxFuture<'a, Result<Review, KubeApiError>> {
        Box::pin(async move {
            let request = "create TokenReview";
            let api: Api<TokenReview> = Api::all(self.client(request)?);
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: (!audiences.is_empty()).then(|| audiences.to_vec()),
                },
                ..TokenReview::default()
            };
            let answer = api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| api_error(request, e))?;
            let status = answer.status.unwrap_or_default();
            if status.authenticated != Some(true) {
                return Ok(Review::Denied(status.error.unwrap_or_default()));
            }
            let user = status.user.unwrap_or_default();
            Ok(Review::Authenticated(ReviewedUser {
                username: user.username.unwrap_or_default(),
                extra: user.extra.unwrap_or_default(),
                audiences: status.audiences.unwrap_or_default(),
            }))
        })
    }

    fn node_addresses<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Vec<NodeAddress>>, KubeApiError>> {
        Box::pin(async move {
            let request = format!("get Node {name}");
            let api: Api<Node> = Api::all(self.client(&request)?);
            let Some(node) = api.get_opt(name).await.map_err(|e| api_error(&request, e))? else {
                return Ok(None);
            };
            let addresses = node.status.and_then(|s| s.addresses).unwrap_or_default();
            Ok(Some(
                addresses
                    .into_iter()
                    .map(|a| NodeAddress {
                        kind: a.type_,
                        address: a.address,
                    })
                    .collect(),
            ))
        })
    }
}

/// The Leases of one namespace with one label, over a [`KubeClient`].
#[derive(Debug, Clone)]
pub struct KubeLeases {
    client: Arc<KubeClient>,
    namespace: String,
    label: Label,
}

impl KubeLeases {
    fn api(&self, request: &str) -> Result<Api<Lease>, KubeApiError> {
        Ok(Api::namespaced(self.client.client(request)?, &self.namespace))
    }
}

fn micro_time(at: SystemTime) -> Option<MicroTime> {
    let since = at.duration_since(UNIX_EPOCH).ok()?;
    let seconds = i64::try_from(since.as_secs()).ok()?;
    // MicroTime: whole microseconds.
    let nanos = i32::try_from(since.subsec_micros() * 1000).ok()?;
    k8s_openapi::jiff::Timestamp::new(seconds, nanos).ok().map(MicroTime)
}

fn system_time(at: &MicroTime) -> Option<SystemTime> {
    let seconds = u64::try_from(at.0.as_second()).ok()?;
    let nanos = u32::try_from(at.0.subsec_nanosecond()).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

impl LeaseStore for KubeLeases {
    fn renew<'a>(&'a self, renewal: &'a LeaseRenewal) -> BoxFuture<'a, Result<(), KubeApiError>> {
        Box::pin(async move {
            let request = format!("apply Lease {}/{}", self.namespace, renewal.name);
            let api = self.api(&request)?;
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(renewal.name.clone()),
                    labels: Some(BTreeMap::from([(self.label.key.clone(), self.label.value.clone())])),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(renewal.holder.clone()),
                    lease_duration_seconds: Some(i32::try_from(renewal.duration.as_secs()).unwrap_or(i32::MAX)),
                    renew_time: micro_time(renewal.renewed),
                    ..LeaseSpec::default()
                }),
            };
            // Server-side apply creates the Lease or renews it in one request.
            api.patch(
                &renewal.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await
            .map_err(|e| api_error(&request, e))?;
            Ok(())
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<LeaseRecord>, KubeApiError>> {
        Box::pin(async move {
            let request = format!("list Leases in {} with label {}", self.namespace, self.label);
            let api = self.api(&request)?;
            let leases = api
                .list(&ListParams::default().labels(&self.label.to_string()))
                .await
                .map_err(|e| api_error(&request, e))?;
            Ok(leases
                .items
                .into_iter()
                .map(|lease| {
                    let spec = lease.spec.unwrap_or_default();
                    LeaseRecord {
                        name: lease.metadata.name.unwrap_or_default(),
                        holder: spec.holder_identity,
                        renewed: spec.renew_time.as_ref().and_then(system_time),
                        duration: spec
                            .lease_duration_seconds
                            .and_then(|s| u64::try_from(s).ok())
                            .map(Duration::from_secs),
                        resource_version: lease.metadata.resource_version,
                    }
                })
                .collect())
        })
    }

    fn delete<'a>(
        &'a self,
        name: &'a str,
        resource_version: Option<&'a str>,
    ) -> BoxFuture<'a, Result<bool, KubeApiError>> {
        Box::pin(async move {
            let request = format!("delete Lease {}/{name}", self.namespace);
            let api = self.api(&request)?;
            let params = DeleteParams {
                preconditions: resource_version.map(|version| Preconditions {
                    resource_version: Some(version.to_owned()),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(name, &params).await {
                Ok(_) => Ok(true),
                // Gone already, or renewed since it was listed.
                Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(false),
                Err(err) => Err(api_error(&request, err)),
            }
        })
    }
}
