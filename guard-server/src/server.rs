//! Assembles and runs the server: TLS, store, sweeper, services; and drains on shutdown.
use crate::config::{AuditSettings, ServerConfig};
use crate::fanout::Fanout;
use crate::lifecycle::{now_ms, MAX_MESSAGE_BYTES};
use crate::revocation::Revocations;
use crate::service::{agent::AgentApi, audit::AuditApi, review::ReviewApi, Shared};
use crate::sinks::Sinks;
use crate::store;
use anyhow::{Context, Result};
use guard_api::chain::keys::SigningKey;
use guard_proto::v1::agent_service_server::AgentServiceServer;
use guard_proto::v1::audit_service_server::AuditServiceServer;
use guard_proto::v1::review_service_server::ReviewServiceServer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// How often the checkpointer looks at the chain's head.
const CHECKPOINT_POLL: Duration = Duration::from_secs(1);

/// How often pending requests past their time are expired.
const SWEEP_EVERY: Duration = Duration::from_millis(200);

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
    sweeper: JoinHandle<()>,
    checkpointer: JoinHandle<()>,
    /// Reloads the revoked certificates.
    revocations: JoinHandle<()>,
    /// The audit sinks: they only read committed rows, so stopping them first loses nothing
    /// (a batch in flight is delivered again after the next start).
    sinks: Sinks,
    /// The chat channels' notifiers and callback endpoints, when `[chat]` configures any.
    chat: Option<crate::chat::ChatService>,
    /// The web console's listener, when `[console]` configures one.
    console: Option<crate::console::ConsoleHandle>,
}

impl ServerHandle {
    /// The address it listens on (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The web console's address and origin (https://...), when it runs.
    pub fn console(&self) -> Option<(SocketAddr, &str)> {
        self.console.as_ref().map(|c| (c.addr, c.origin.as_str()))
    }

    /// The chat channels (`[chat]`): their callback endpoints' router, which the console
    /// nests under `/chat`. None when no channel is configured.
    pub fn chat(&self) -> Option<&crate::chat::ChatService> {
        self.chat.as_ref()
    }

    /// Ends the streams, lets calls in flight finish for up to `deadline`, then stops.
    pub async fn shutdown(self, deadline: Duration) -> Result<()> {
        let _ = self.stop.send(true);
        self.sweeper.abort();
        self.checkpointer.abort();
        self.revocations.abort();
        drop(self.sinks);
        if let Some(console) = self.console {
            // It stops accepting on the same signal; its connections drain on their own.
            let _ = tokio::time::timeout(deadline, console.task).await;
        }
        drop(self.chat);
        let mut serve = self.serve;
        match tokio::time::timeout(deadline, &mut serve).await {
            Ok(joined) => joined.context("server task failed")?.context("server failed"),
            Err(_) => {
                serve.abort();
                tracing::warn!("connections still open after {deadline:?}: closed");
                Ok(())
            }
        }
    }
}

/// Opens the store, binds the listener and serves in the background.
pub async fn start(config: &ServerConfig) -> Result<ServerHandle> {
    let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let identity = Identity::from_pem(read(&config.tls.cert)?, read(&config.tls.key)?);
    // Clients must present a certificate from our CA: client_auth_optional stays false.
    let tls = ServerTlsConfig::new().identity(identity).client_ca_root(Certificate::from_pem(read(&config.tls.ca)?));

    let fanout = Fanout::default();
    let store = store::open(&config.database_url, fanout.clone()).await?;
    let sinks = Sinks::start(store.clone(), &config.sinks).context("audit sinks")?;
    let revoked = Revocations::load(store.as_ref()).await.context("loading the revoked certificates")?;
    let revocations = revoked.spawn_refresh(store.clone());
    let (stop, shutdown) = watch::channel(false);
    let shared = Shared {
        store: store.clone(),
        policy: Arc::new(config.policy.clone()),
        limiter: Arc::new(crate::ratelimit::Limiter::new(config.policy.limits)),
        fanout,
        shutdown,
    };

    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = store.expire_due(now_ms()).await {
                tracing::warn!("expiry sweep: {e}");
            }
        }
    });

    let key = SigningKey::load_or_create(&config.audit.key).map_err(|e| anyhow::anyhow!("audit key: {e}"))?;
    shared.store.register_audit_key("", &key.public_hex(), now_ms()).await?;
    let checkpointer = tokio::spawn(checkpoints(shared.store.clone(), key, config.audit.clone()));
    let chat = crate::chat::ChatService::start(shared.clone(), &config.chat);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));

    let router = Server::builder()
        .tls_config(tls)
        .context("TLS configuration")?
        // Before every service: a call made with a revoked certificate goes no further.
        .layer(tonic::service::InterceptorLayer::new(revoked.interceptor()))
        .add_service(
            AgentServiceServer::new(AgentApi { shared: shared.clone() }).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ReviewServiceServer::new(ReviewApi { shared: shared.clone() }).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            AuditServiceServer::new(AuditApi { shared: shared.clone() }).max_decoding_message_size(MAX_MESSAGE_BYTES),
        );
    let console = match &config.console {
        Some(settings) => {
            // The chat channels' callbacks are served by the console's listener, under /chat.
            let extra = chat.as_ref().map(|c| axum::Router::new().nest("/chat", c.router())).unwrap_or_default();
            Some(crate::console::start(settings, shared.clone(), extra).await?)
        }
        None => None,
    };
    let mut stopped = shared.shutdown.clone();
    let serve = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
    Ok(ServerHandle { addr, stop, serve, sweeper, checkpointer, revocations, sinks, chat, console })
}

/// Signs the chain's head every `checkpoint_rows` rows, or `checkpoint_every` after the first
/// row no checkpoint covers yet. Replicas sharing a database each run this; a head that is a
/// checkpoint already is not signed again.
async fn checkpoints(store: Arc<dyn store::Store>, key: SigningKey, audit: AuditSettings) {
    let mut tick = tokio::time::interval(CHECKPOINT_POLL.min(audit.checkpoint_every));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut signed = 0u64;
    let mut unsigned_since: Option<Instant> = None;
    loop {
        tick.tick().await;
        let head = match store.audit_head().await {
            Ok(h) => h.seq,
            Err(e) => {
                tracing::warn!("audit checkpoint: reading the head: {e}");
                continue;
            }
        };
        if head <= signed {
            continue;
        }
        let since = *unsigned_since.get_or_insert_with(Instant::now);
        if head - signed < audit.checkpoint_rows && since.elapsed() < audit.checkpoint_every {
            continue;
        }
        match store.checkpoint(&key, now_ms()).await {
            // The checkpoint row itself is the new head.
            Ok(Some(seq)) => signed = seq + 1,
            Ok(None) => signed = head,
            Err(e) => {
                tracing::warn!("audit checkpoint: {e}");
                continue;
            }
        }
        unsigned_since = None;
    }
}
