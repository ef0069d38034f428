//! The server count from Leases, as Konnectivity's `--enable-lease-controller`:
//! each server replica holds a `coordination.k8s.io/v1` Lease named after its
//! server id (`connector-<server id>`) with a label all replicas share, renews
//! it every [`LeaseSettings::renew_interval`], counts the unexpired Leases
//! with that label, and reports the count to agents in its `Welcome`
//! ([`Server::set_server_count`]), so agents behind one address follow the
//! number of replicas without reconfiguration.
//!
//! A Lease is unexpired while its `renewTime` plus its `leaseDurationSeconds`
//! is later than now by this server's clock (clocks may differ by up to the
//! duration minus the renew interval). A replica that stops renewing drops
//! out of the others' count one lease duration after its last renewal; one
//! that drains or shuts down deletes its Lease at once. Leases expired for
//! longer than their duration are deleted (exactly the version seen), so
//! replaced pods leave none behind. When the apiserver cannot be reached the
//! error is logged (at most once a minute) and the last good count stays.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, MissedTickBehavior};

use super::Server;
use crate::kubernetes::{KubeApiError, LeaseRecord, LeaseRenewal, LeaseStore, is_dns_subdomain};

/// Default of [`LeaseSettings::duration`] (Konnectivity's `--lease-duration`).
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(30);

/// Default of [`LeaseSettings::renew_interval`].
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_secs(10);

/// Default label of the replicas' Leases (Konnectivity's is `k8s-app=konnectivity-server`).
pub const DEFAULT_LEASE_LABEL: &str = "k8s-app=connector-server";

/// The prefix of a server's Lease name, before its server id.
pub const LEASE_NAME_PREFIX: &str = "connector-";

/// How long a leaving server tries to delete its Lease.
const RELEASE_LIMIT: Duration = Duration::from_secs(2);

/// Least time between two warnings about failed Lease rounds.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// How a server holds and counts Leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// A Lease not renewed for this long no longer counts (whole seconds,
    /// `leaseDurationSeconds`; default [`DEFAULT_LEASE_DURATION`]).
    pub duration: Duration,
    /// How often the server renews its Lease and counts (shorter than
    /// `duration`; default [`DEFAULT_RENEW_INTERVAL`]).
    pub renew_interval: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            duration: DEFAULT_LEASE_DURATION,
            renew_interval: DEFAULT_RENEW_INTERVAL,
        }
    }
}

/// A server id that cannot name a Lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "server id {server_id:?} cannot name a Lease ({LEASE_NAME_PREFIX}<server id> must be a DNS subdomain: \
     lower-case letters, digits, '-' and '.', at most 253 bytes): choose a server-id like the pod name"
)]
pub struct LeaseNameError {
    /// The server id.
    pub server_id: String,
}

/// The name of the Lease of server `server_id`: `connector-<server id>`.
pub fn lease_name(server_id: &str) -> Result<String, LeaseNameError> {
    let name = format!("{LEASE_NAME_PREFIX}{server_id}");
    if is_dns_subdomain(&name) {
        Ok(name)
    } else {
        Err(LeaseNameError {
            server_id: server_id.to_owned(),
        })
    }
}

/// When `lease` expires: its renewal plus its duration (`None` without either).
pub fn expiry(lease: &LeaseRecord) -> Option<SystemTime> {
    lease.renewed?.checked_add(lease.duration?)
}

/// The replicas `leases` show alive at `now`: the unexpired ones, and the
/// server holding `own` even if its Lease is not among them (its renewal
/// failed, but it is up). At least 1, at most `u16::MAX`.
pub fn count_replicas(leases: &[LeaseRecord], own: &str, now: SystemTime) -> u16 {
    let live: Vec<&LeaseRecord> = leases
        .iter()
        .filter(|lease| expiry(lease).is_some_and(|at| at > now))
        .collect();
    let own_missing = !live.iter().any(|lease| lease.name == own);
    u16::try_from(live.len() + usize::from(own_missing)).unwrap_or(u16::MAX)
}

/// The Leases expired for longer than their own duration at `now`, other
/// than `own`: replicas that are gone (a pod replaced without draining).
pub fn stale(leases: &[LeaseRecord], own: &str, now: SystemTime) -> Vec<LeaseRecord> {
    leases
        .iter()
        .filter(|lease| lease.name != own)
        .filter(|lease| {
            let (Some(at), Some(duration)) = (expiry(lease), lease.duration) else {
                return false;
            };
            at.checked_add(duration).is_some_and(|gone| gone <= now)
        })
        .cloned()
        .collect()
}

/// Holds a server's Lease and sets its server count from the others'.
pub struct LeaseController {
    store: Arc<dyn LeaseStore>,
    settings: LeaseSettings,
}

impl std::fmt::Debug for LeaseController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseController")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl LeaseController {
    /// A controller of the Leases in `store` (with the cargo feature
    /// `kubernetes`: [`crate::kubernetes::KubeClient::leases`]).
    pub fn new(store: Arc<dyn LeaseStore>, settings: LeaseSettings) -> Self {
        Self { store, settings }
    }

    /// How it holds and counts.
    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// Starts holding `server`'s Lease in the background: renewed and
    /// counted at once, then every renew interval, until the server drains
    /// or shuts down, when the Lease is deleted (the drain waits for that, a
    /// couple of seconds at most). Must be called within a tokio runtime.
    pub fn start(self, server: &Server) -> Result<(), LeaseNameError> {
        let name = lease_name(&server.config().server_id)?;
        server.spawn_tracked(self.run(server.clone(), name));
        Ok(())
    }

    async fn run(self, server: Server, name: String) {
        tracing::info!(
            lease = %name,
            duration = ?self.settings.duration,
            renew_interval = ?self.settings.renew_interval,
            "counting server replicas by their Leases"
        );
        let leaving = server.leaving();
        tokio::pin!(leaving);
        let mut ticks = tokio::time::interval(self.settings.renew_interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut errors = ErrorLog::default();
        loop {
            tokio::select! {
                biased;
                _ = &mut leaving => break,
                _ = ticks.tick() => {}
            }
            let round = tokio::time::timeout(self.settings.renew_interval, async {
                self.round(&server, &name).await.map_err(|err| err.to_string())
            });
            let result = tokio::select! {
                biased;
                _ = &mut leaving => break,
                result = round => result,
            };
            let result = result.unwrap_or_else(|_| {
                Err(format!(
                    "the apiserver did not answer within the renew interval ({:?})",
                    self.settings.renew_interval
                ))
            });
            match result {
                Ok(()) => {
                    server.inner.metrics.lease_updates.inc("ok");
                    errors.recovered(server.server_count());
                }
                Err(err) => {
                    server.inner.metrics.lease_updates.inc("error");
                    errors.failed(&err, server.server_count());
                }
            }
        }
        match tokio::time::timeout(RELEASE_LIMIT, self.store.delete(&name, None)).await {
            Ok(Ok(_)) => tracing::info!(lease = %name, "Lease deleted: the other replicas stop counting this one"),
            Ok(Err(err)) => tracing::warn!(
                lease = %name, %err,
                "cannot delete this server's Lease; the others count it until it expires ({:?})",
                self.settings.duration
            ),
            Err(_) => tracing::warn!(
                lease = %name,
                "the apiserver did not answer the Lease deletion within {RELEASE_LIMIT:?}; the others count this server until its Lease expires ({:?})",
                self.settings.duration
            ),
        }
    }

    /// Renews the Lease, counts the unexpired ones (even if the renewal
    /// failed) and deletes stale ones.
    async fn round(&self, server: &Server, name: &str) -> Result<(), KubeApiError> {
        let renewal = LeaseRenewal {
            name: name.to_owned(),
            holder: server.config().server_id.clone(),
            duration: self.settings.duration,
            renewed: SystemTime::now(),
        };
        let renewed = self.store.renew(&renewal).await;
        let leases = self.store.list().await?;
        let now = SystemTime::now();
        let count = count_replicas(&leases, name, now);
        if count != server.server_count() {
            tracing::info!(
                replicas = count,
                was = server.server_count(),
                "server replicas counted by their Leases; agents are told from their next Welcome"
            );
            server.set_server_count(count);
        }
        for lease in stale(&leases, name, now) {
            match self.store.delete(&lease.name, lease.resource_version.as_deref()).await {
                Ok(true) => tracing::info!(lease = %lease.name, "deleted the expired Lease of a replica that is gone"),
                Ok(false) => {}
                Err(err) => tracing::debug!(lease = %lease.name, %err, "cannot delete an expired Lease"),
            }
        }
        renewed
    }
}

/// Warns about failed Lease rounds at most once per [`ERROR_LOG_INTERVAL`].
#[derive(Default)]
struct ErrorLog {
    last_warning: Option<Instant>,
    /// Failures since the last warning, not warned about.
    quiet: u64,
    failing: bool,
}

impl ErrorLog {
    fn failed(&mut self, err: &str, count: u16) {
        self.failing = true;
        if self.last_warning.is_some_and(|at| at.elapsed() < ERROR_LOG_INTERVAL) {
            self.quiet += 1;
            tracing::debug!(%err, "Lease round failed");
            return;
        }
        tracing::warn!(
            %err,
            replicas = count,
            failed_since_last_warning = self.quiet,
            "Lease round failed; the last good count of server replicas stays (next warning in a minute at most)"
        );
        self.last_warning = Some(Instant::now());
        self.quiet = 0;
    }

    fn recovered(&mut self, count: u16) {
        if std::mem::take(&mut self.failing) {
            tracing::info!(replicas = count, "Lease rounds succeed again");
            self.last_warning = None;
            self.quiet = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::auth::{AgentIdentity, AuthRejection, AuthRequest, Authenticator};
    use crate::server::ServerConfig;
    use crate::transport::BoxFuture;

    fn lease(name: &str, renewed_ago: Duration, duration: Duration, now: SystemTime) -> LeaseRecord {
        LeaseRecord {
            name: name.into(),
            holder: Some(name.into()),
            renewed: Some(now - renewed_ago),
            duration: Some(duration),
            resource_version: Some("1".into()),
        }
    }

    #[test]
    fn unexpired_leases_count_and_the_server_itself_always_does() {
        let now = SystemTime::now();
        let d = Duration::from_secs(30);
        let leases = [
            lease("connector-a", Duration::from_secs(1), d, now),
            lease("connector-b", Duration::from_secs(29), d, now),
            // Expired: renewed exactly a duration ago, or longer.
            lease("connector-c", d, d, now),
            lease("connector-d", Duration::from_secs(3600), d, now),
            // Never renewed, or no duration: not alive.
            LeaseRecord {
                renewed: None,
                ..lease("connector-e", Duration::ZERO, d, now)
            },
            LeaseRecord {
                duration: None,
                ..lease("connector-f", Duration::ZERO, d, now)
            },
        ];
        assert_eq!(count_replicas(&leases, "connector-a", now), 2);
        // Its own Lease expired (a failed renewal): it still counts itself.
        assert_eq!(count_replicas(&leases, "connector-c", now), 3);
        assert_eq!(count_replicas(&[], "connector-a", now), 1);
        // A Lease's own duration decides, not this server's.
        let long = [lease(
            "connector-x",
            Duration::from_secs(60),
            Duration::from_secs(90),
            now,
        )];
        assert_eq!(count_replicas(&long, "connector-a", now), 2);

        let gone: Vec<String> = stale(&leases, "connector-a", now).into_iter().map(|l| l.name).collect();
        assert_eq!(
            gone,
            ["connector-d"],
            "only Leases expired for longer than their duration go"
        );
        assert!(stale(&leases, "connector-d", now).is_empty(), "never its own");
    }

    #[test]
    fn lease_names_come_from_the_server_id() {
        assert_eq!(
            lease_name("kube-apiserver-7d9f-x2").unwrap(),
            "connector-kube-apiserver-7d9f-x2"
        );
        for bad in ["Node_A", "", "a..b", &"x".repeat(250)] {
            let err = lease_name(bad).unwrap_err().to_string();
            assert!(
                err.contains("cannot name a Lease") && err.contains("server-id"),
                "{err}"
            );
        }
    }

    /// Leases in memory, with a clock of real time (the test's Leases were
    /// renewed seconds or hours ago, far from any boundary).
    #[derive(Default)]
    struct Store {
        leases: Mutex<Vec<LeaseRecord>>,
        fail: Mutex<bool>,
        deleted: Mutex<Vec<String>>,
        /// Lists asked for so far.
        lists: tokio::sync::watch::Sender<usize>,
    }

    impl Store {
        fn failing(&self) -> Result<(), KubeApiError> {
            if *self.fail.lock().unwrap() {
                return Err(KubeApiError::Transport {
                    request: "list Leases".into(),
                    source: "connection refused".into(),
                });
            }
            Ok(())
        }
    }

    impl LeaseStore for Store {
        fn renew<'a>(&'a self, renewal: &'a LeaseRenewal) -> BoxFuture<'a, Result<(), KubeApiError>> {
            Box::pin(async move {
                self.failing()?;
                let mut leases = self.leases.lock().unwrap();
                leases.retain(|l| l.name != renewal.name);
                leases.push(LeaseRecord {
                    name: renewal.name.clone(),
                    holder: Some(renewal.holder.clone()),
                    renewed: Some(renewal.renewed),
                    duration: Some(renewal.duration),
                    resource_version: Some("2".into()),
                });
                Ok(())
            })
        }

        fn list(&self) -> BoxFuture<'_, Result<Vec<LeaseRecord>, KubeApiError>> {
            Box::pin(async move {
                self.lists.send_modify(|n| *n += 1);
                self.failing()?;
                Ok(self.leases.lock().unwrap().clone())
            })
        }

        fn delete<'a>(
            &'a self,
            name: &'a str,
            _resource_version: Option<&'a str>,
        ) -> BoxFuture<'a, Result<bool, KubeApiError>> {
            Box::pin(async move {
                self.deleted.lock().unwrap().push(name.to_owned());
                let mut leases = self.leases.lock().unwrap();
                let before = leases.len();
                leases.retain(|l| l.name != name);
                Ok(leases.len() < before)
            })
        }
    }

    struct Nobody;

    impl Authenticator for Nobody {
        fn authenticate<'a>(&'a self, _: AuthRequest<'a>) -> BoxFuture<'a, Result<AgentIdentity, AuthRejection>> {
            Box::pin(async { Err(AuthRejection::unauthenticated("nobody")) })
        }
    }

    /// The controller renews its Lease, reports the unexpired Leases as the
    /// server count (and what agents are told), keeps the last good count
    /// while the apiserver fails, follows a replica that expires, deletes
    /// stale Leases, and deletes its own when the server shuts down.
    #[tokio::test(start_paused = true)]
    async fn the_server_count_follows_the_unexpired_leases() {
        let now = SystemTime::now();
        let d = Duration::from_secs(30);
        let store = Arc::new(Store::default());
        *store.leases.lock().unwrap() = vec![
            lease("connector-b", Duration::from_secs(1), d, now),
            lease("connector-c", Duration::from_secs(2), d, now),
            lease("connector-gone", Duration::from_secs(3600), d, now),
        ];
        let mut config = ServerConfig::new("a", Arc::new(Nobody));
        config.server_count = 1;
        let server = Server::new(config);
        let settings = LeaseSettings {
            duration: d,
            renew_interval: Duration::from_secs(10),
        };
        LeaseController::new(store.clone(), settings).start(&server).unwrap();

        // Bounds in the runtime's clock (paused: it moves on when all wait),
        // so that a count that never comes fails the test instead of hanging it.
        let bound = Duration::from_secs(600);
        tokio::time::timeout(bound, server.wait_for_server_count(|n| *n == 3))
            .await
            .expect("never counted 3");
        assert_eq!(
            server
                .render_metrics()
                .lines()
                .find(|l| l.starts_with("connector_server_replicas ")),
            Some("connector_server_replicas 3")
        );
        let names: Vec<String> = store.leases.lock().unwrap().iter().map(|l| l.name.clone()).collect();
        assert!(names.contains(&"connector-a".to_owned()), "{names:?}");
        assert!(
            !names.contains(&"connector-gone".to_owned()),
            "stale Lease not deleted: {names:?}"
        );

        // The apiserver fails: the count stays, the rounds are counted as errors.
        *store.fail.lock().unwrap() = true;
        let lists = *store.lists.borrow();
        let _ = store.lists.subscribe().wait_for(|n| *n >= lists + 3).await;
        assert!(server.metrics().lease_updates.get("error") >= 2);
        assert_eq!(server.server_count(), 3);

        // It comes back, and replica c has stopped renewing: its Lease has
        // expired (not long enough ago to be deleted as stale).
        for lease in store
            .leases
            .lock()
            .unwrap()
            .iter_mut()
            .filter(|l| l.name == "connector-c")
        {
            lease.renewed = Some(now - Duration::from_secs(3000));
            lease.duration = Some(Duration::from_secs(2000));
        }
        *store.fail.lock().unwrap() = false;
        tokio::time::timeout(bound, server.wait_for_server_count(|n| *n == 2))
            .await
            .expect("never counted 2 after replica c expired");
        assert!(store.leases.lock().unwrap().iter().any(|l| l.name == "connector-c"));

        server.shutdown();
        server.inner.sessions.close();
        server.inner.sessions.wait().await;
        assert!(store.deleted.lock().unwrap().contains(&"connector-a".to_owned()));
        assert!(!store.leases.lock().unwrap().iter().any(|l| l.name == "connector-a"));
    }
}
