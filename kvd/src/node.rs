//! The node: its shared state, its start-up (identity, storage, joining the cluster) and its
//! answers to peers. Everything a request handler needs is reached from an `Arc<Node>`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption, Guard};

use kv_core::membership::{
    DetectorConfig, Member, MemberStatus, Membership, MembershipEvent, NodeState,
};
use kv_core::ring::{NodeInfo, Placement, Ring};
use kv_core::version::{decode_context, SiblingSet, VersionVector};
use tokio::sync::watch;

use crate::config::NodeConfig;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::peer::{PeerPool, PeerRequest, PeerResponse};
use crate::replica::{Access, Minted, Replica, ReplicaError};
use crate::storage::{Engine, Options};
use crate::{Error, Result};

/// A running node.
pub struct Node {
    /// The resolved settings.
    pub config: NodeConfig,
    /// This node's id.
    pub id: String,
    /// This node's replica of the data.
    pub replica: Replica,
    /// Writes held for replicas that were down.
    pub hints: crate::hints::HintStore,
    /// Gossip state and failure detection.
    pub membership: Mutex<Membership>,
    /// The ring built from the members that own tokens; swapped whole when membership changes
    /// so that readers take a cheap snapshot. Every request reads it: through `arc-swap`, a
    /// read writes no cache line that other threads read (a lock and an `Arc` clone did).
    ring: ArcSwap<Ring>,
    /// While nodes join or leave: the ring with the joiners and without the leavers.
    pending_ring: ArcSwapOption<Ring>,
    /// Outgoing peer connections.
    pub peers: PeerPool,
    /// Counters for /metrics.
    pub metrics: Metrics,
    /// Anti-entropy totals and the progress of a running repair.
    pub anti_entropy: crate::anti_entropy::AntiEntropyCounters,
    /// One repair (or periodic round, or decommission) at a time.
    pub repair_lock: tokio::sync::Mutex<()>,
    /// One major compaction (`kvcli compact`) at a time: a second waits for the first, then
    /// measures the tables as they stand when it starts.
    pub major_compaction: tokio::sync::Mutex<()>,
    /// Streaming in (join) or out (decommission).
    pub transfers: crate::rebalance::Transfers,
    /// When the automatic cleanup is due (ms since the epoch; 0: not scheduled).
    pub cleanup_due_ms: std::sync::atomic::AtomicU64,
    /// Completed anti-entropy sessions per (range, peer): when tombstones may be purged.
    pub agreements: crate::tombstones::Agreements,
    /// Who this node is (kept in the data dir).
    identity: Mutex<Identity>,
    /// When the node started (uptime).
    pub started: Instant,
    /// Flipped to true once to stop every task.
    shutdown: watch::Sender<bool>,
}

impl Node {
    /// Opens the data dir and storage, establishes the node's identity and place in the ring
    /// (asking a seed when it is new), and returns the node ready to serve.
    pub async fn start(config: NodeConfig) -> Result<Arc<Node>> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::DataDir(format!("cannot create {}: {e}", config.data_dir.display()))
        })?;
        let stored = Identity::load(&config.data_dir)?;
        let id = match (&config.id, &stored) {
            (Some(flag), Some(s)) if flag != &s.id => {
                return Err(Error::DataDir(format!(
                    "{} belongs to node '{}', not '{flag}'",
                    config.data_dir.display(),
                    s.id
                )))
            }
            (_, Some(s)) => s.id.clone(),
            (Some(flag), None) => flag.clone(),
            (None, None) => config.listen.clone(),
        };
        crate::log::set_node(&id);
        check_halves(&config, stored.as_ref())?;
        let mut identity = stored.unwrap_or_else(|| Identity::fresh(&id));

        let engine = open_engine(&config)?;
        let report = engine.recovery_report();
        if report.torn_tail.is_some() || !report.skipped_damage.is_empty() {
            crate::warn!("storage opened with commit-log damage: {report}");
        } else {
            crate::info!("storage opened: {report}");
        }
        // Versions this node minted may live on other replicas while its own storage lost
        // them: after a restore from a snapshot, or after an unclean stop (the commit log had
        // to be replayed) when writes are acknowledged before their fsync (a power loss takes
        // the last unsynced writes). It then takes a new actor name, so it can never mint one
        // of those dots again for another write, which would make two writes one version.
        let marker = crate::snapshot::marker(&config.data_dir);
        let restored = marker.exists();
        if restored {
            let text = std::fs::read(&marker).unwrap_or_default();
            let grace = config.tombstone_grace;
            if let Some(w) = crate::snapshot::restore_warning(&text, crate::now_ms(), grace) {
                crate::warn!("{w}");
            }
        }
        let unclean = report.records_replayed > 0 || report.torn_tail.is_some();
        let why = if restored {
            Some("storage restored from a snapshot")
        } else if !report.skipped_damage.is_empty() {
            // The skipped records may hold the newest versions this node minted.
            Some("damaged commit-log records skipped")
        } else if unclean && config.sync != kvd_storage::SyncMode::Always {
            Some("unclean stop with --sync interval or none")
        } else {
            None
        };
        if let Some(why) = why.filter(|_| !report.created) {
            let fresh = Identity::fresh(&id).actor;
            crate::info!(
                "{why}: versions are minted as {fresh} from now on (was {})",
                identity.actor
            );
            identity.actor = fresh;
        }

        let mut me = Member::new(&id, &config.listen, identity.generation + 1);
        me.dc = config.dc.clone();
        me.rack = config.rack.clone();
        me.weight = config.weight;
        let mut membership = Membership::new(me, DetectorConfig::default(), crate::now_ms());
        let peers = PeerPool::new(
            max_state_bytes(&config),
            config.cluster_secret.clone(),
            config.tls.clone(),
        );

        if identity.tokens.is_empty() {
            let (tokens, known) = choose_tokens(&config, &id, &mut membership, &peers).await?;
            identity.tokens = tokens;
            // A newcomer to a cluster with data streams its ranges in before serving them; a
            // known id (wiped data dir) takes its place back and is refilled by repair.
            identity.joining = !config.seeds.is_empty() && !known;
        } else if let Some(old) = identity.weight.filter(|w| *w != config.weight) {
            let tokens = reweigh_tokens(&config, &identity, old, &mut membership, &peers).await?;
            crate::info!(
                "weight {old} -> {}: {} tokens -> {}; moving the ranges that change hands",
                config.weight,
                identity.tokens.len(),
                tokens.len()
            );
            identity.moving_from = Some((old, std::mem::replace(&mut identity.tokens, tokens)));
        }
        identity.weight = Some(config.weight);
        identity.generation += 1;
        identity.save(&config.data_dir)?;
        if restored {
            std::fs::remove_file(&marker)
                .map_err(|e| Error::DataDir(format!("cannot remove {}: {e}", marker.display())))?;
        }
        if identity.left {
            crate::warn!(
                "this node left the cluster (decommissioned or removed) and stays out of the \
                 ring: it holds no data for anyone; to join again as a newcomer, start it with \
                 an empty data dir"
            );
        }
        let tokens = identity.tokens.clone();
        let status = if identity.left {
            MemberStatus::Left
        } else if identity.leaving {
            MemberStatus::Leaving
        } else if identity.joining {
            MemberStatus::Joining
        } else {
            MemberStatus::Normal
        };
        membership.update_me(|m| {
            m.tokens = tokens;
            m.status = status;
        });
        if !identity.joining {
            // A restart: the ring as this node last knew it, until gossip says otherwise.
            let remembered: Vec<Member> = crate::gossip::remembered_members(&config.data_dir)
                .into_iter()
                .filter(|m| m.id != id)
                .collect();
            membership.merge(&remembered, crate::now_ms());
        }

        let (shutdown, _) = watch::channel(false);
        let engine = Arc::new(engine);
        let hints = crate::hints::HintStore::open(engine.clone(), config.hint_max_bytes)
            .map_err(|e| Error::DataDir(format!("cannot read the stored hints: {e}")))?;
        let node = Arc::new(Node {
            hints,
            replica: Replica::new(engine, identity.actor.clone())
                .map_err(|e| Error::DataDir(format!("cannot read the stored keys: {e}")))?,
            id,
            membership: Mutex::new(membership),
            ring: ArcSwap::from_pointee(Ring::new()),
            pending_ring: ArcSwapOption::empty(),
            peers,
            metrics: Metrics::default(),
            anti_entropy: Default::default(),
            repair_lock: tokio::sync::Mutex::new(()),
            major_compaction: tokio::sync::Mutex::new(()),
            transfers: Default::default(),
            cleanup_due_ms: Default::default(),
            agreements: Default::default(),
            identity: Mutex::new(identity.clone()),
            started: Instant::now(),
            shutdown,
            config,
        });
        node.rebuild_ring();
        Ok(node)
    }

    fn identity(&self) -> std::sync::MutexGuard<'_, Identity> {
        self.identity.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the identity kept in the data dir (a failure to save is logged: the node keeps
    /// serving, and the change is redone after a restart).
    fn record(&self, what: &str, change: impl FnOnce(&mut Identity)) {
        let mut id = self.identity();
        change(&mut id);
        if let Err(e) = id.save(&self.config.data_dir) {
            crate::error!("cannot record {what}: {e}");
        }
    }

    /// The weight and tokens this node had before a weight change whose data move is not
    /// finished.
    pub fn moving_from(&self) -> Option<(u32, Vec<u64>)> {
        self.identity().moving_from.clone()
    }

    /// Records that the data move of a weight change is done.
    pub fn finish_reweigh(&self) {
        self.record("the end of the rebalance", |id| id.moving_from = None);
        self.schedule_cleanup();
    }

    /// Schedules the automatic cleanup `--cleanup-delay-s` from now (see
    /// [`crate::rebalance::run_auto_cleanup`]); a later change pushes it back.
    pub fn schedule_cleanup(&self) {
        if !self.config.cleanup_delay.is_zero() {
            let due = crate::now_ms() + self.config.cleanup_delay.as_millis() as u64;
            self.cleanup_due_ms
                .store(due, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether a decommission of this node was started and has not finished.
    pub fn is_leaving(&self) -> bool {
        self.identity().leaving
    }

    /// Records the decommission's progress in the data dir: started (`left` false) or done.
    pub fn record_leave(&self, left: bool) {
        self.record("the decommission", |id| {
            id.leaving = !left;
            id.left = left;
        });
    }

    /// Whether this node was decommissioned (it stays out of the ring).
    pub fn has_left(&self) -> bool {
        self.identity().left
    }

    /// Whether this node still has to stream in its ranges.
    pub fn is_joining(&self) -> bool {
        self.identity().joining
    }

    /// Ends a join: records it in the data dir and announces `Normal`.
    pub fn finish_join(&self) {
        self.record("the end of the join", |id| id.joining = false);
        let events = self
            .membership()
            .update_me(|m| m.status = MemberStatus::Normal);
        self.on_membership_events(&events);
    }

    /// A snapshot of the ring.
    pub fn ring(&self) -> Arc<Ring> {
        self.ring.load_full()
    }

    /// The ring, for a look that ends before the caller next waits: no reference count is
    /// taken (kept across many awaits, a guard may cost a full clone after all).
    pub fn ring_now(&self) -> Guard<Arc<Ring>> {
        self.ring.load()
    }

    /// Rebuilds the ring from the members that hold tokens and are not gone.
    pub fn rebuild_ring(&self) {
        let (mut ring, pending) = {
            let m = self.membership();
            // Requests are served by the members that own data now: Normal and Leaving. While
            // a node joins or leaves, writes also go to the owners-to-be: Normal and Joining.
            let current = ring_of(m.members(), owns_data);
            let moving = m.members().any(|x| {
                !x.tokens.is_empty()
                    && matches!(
                        x.effective_status(),
                        MemberStatus::Joining | MemberStatus::Leaving
                    )
            });
            let pending = moving.then(|| {
                ring_of(m.members(), |s| {
                    matches!(s, MemberStatus::Normal | MemberStatus::Joining)
                })
            });
            (current, pending)
        };
        // Precompute every vnode's preference list for the placement requests will use, so a
        // lookup on the request path is a binary search and a copy.
        let placement = self.placement(&ring);
        ring.prepare(&placement);
        let ring = Arc::new(ring);
        let pending = pending.map(|mut p| {
            let placement = self.placement(&p);
            p.prepare(&placement);
            Arc::new(p)
        });
        self.ring.store(ring.clone());
        self.pending_ring.store(pending);
        self.reindex(ring, placement);
    }

    /// The ring the cluster is moving to while a node joins or leaves (None when none does).
    pub fn pending_ring(&self) -> Option<Arc<Ring>> {
        self.pending_ring.load_full()
    }

    /// Brings the Merkle index to the ranges this node replicates on `ring` (a scan of the
    /// engine only when those ranges changed), off the async threads when there are any.
    fn reindex(&self, ring: Arc<Ring>, placement: Placement) {
        let run = |replica: &crate::replica::Replica, id: &str| match replica.rebuild_merkle(
            ring.clone(),
            &placement,
            id,
        ) {
            Ok(true) => crate::info!(
                "merkle trees rebuilt for {} ranges",
                replica.merkle.ranges().len()
            ),
            Ok(false) => {}
            Err(e) => crate::error!("cannot rebuild the merkle trees: {e}"),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle)
                if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread =>
            {
                tokio::task::block_in_place(|| run(&self.replica, &self.id))
            }
            // Off any runtime, so the rebuild may block waiting for writes in flight.
            _ => std::thread::scope(|s| {
                s.spawn(|| run(&self.replica, &self.id));
            }),
        }
    }

    /// The membership, locked.
    pub fn membership(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.membership.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies membership events: rebuilds the ring when placement may have changed and logs
    /// state changes.
    pub fn on_membership_events(&self, events: &[MembershipEvent]) {
        let mut placement_changed = false;
        for ev in events {
            match ev {
                MembershipEvent::Joined(id) => {
                    crate::info!("member {id} joined");
                    placement_changed = true;
                }
                MembershipEvent::StateChanged { id, from, to } => {
                    crate::info!("member {id}: {from:?} -> {to:?}");
                    // A join completed: this node may have given ranges up to the newcomer.
                    if *from == NodeState::Joining && *to == NodeState::Up && *id != self.id {
                        self.schedule_cleanup();
                    }
                    if *to == NodeState::Up {
                        if let Some(addr) = self.addr_of(id) {
                            self.peers.clear_failure(&addr);
                        }
                    }
                    placement_changed = true;
                }
                MembershipEvent::TokensChanged(id) => {
                    // A weight change: a node that grew took ranges over.
                    if *id != self.id {
                        self.schedule_cleanup();
                    }
                    placement_changed = true
                }
                MembershipEvent::AddressChanged(_) => placement_changed = true,
                MembershipEvent::Restarted { id, generation } => {
                    crate::info!("member {id} restarted (generation {generation})");
                    // A quick restart is never seen down: forget the failed connections to
                    // the old process.
                    if *id != self.id {
                        if let Some(addr) = self.addr_of(id) {
                            self.peers.clear_failure(&addr);
                        }
                    }
                }
            }
        }
        if placement_changed {
            self.notice_removal();
            self.rebuild_ring();
        }
    }

    /// A node removed (`removenode`) while it was down, started again with its old data dir,
    /// learns it from gossip: it stays out of the ring, for good (its data is stale).
    fn notice_removal(&self) {
        let removed = self.membership().me().effective_status() == MemberStatus::Left;
        if removed && !self.has_left() {
            self.record_leave(true);
            crate::error!(
                "this node was removed from the cluster (removenode) and stays out of the ring; \
                 to join again, start it with an empty data dir"
            );
        }
    }

    /// The replica placement: `--replication` counts per DC (the ring takes at most the nodes
    /// each DC has), or N spread over DCs and racks, capped at the number of nodes.
    pub fn placement(&self, ring: &Ring) -> Placement {
        match &self.config.per_dc {
            Some(per_dc) => Placement::PerDc(per_dc.clone()),
            None => Placement::Simple {
                n: self.config.n.min(ring.len().max(1)),
            },
        }
    }

    /// Whether gossip considers `id` up (this node always is).
    pub fn is_up(&self, id: &str) -> bool {
        id == self.id || self.membership().is_up(id)
    }

    /// Whether member `id` left the ring (decommissioned or removed).
    pub fn has_left_the_ring(&self, id: &str) -> bool {
        self.membership()
            .member(id)
            .is_some_and(|m| m.effective_status() == MemberStatus::Left)
    }

    /// The address of member `id`.
    pub fn addr_of(&self, id: &str) -> Option<String> {
        self.membership().member(id).map(|m| m.addr.clone())
    }

    /// A receiver that sees `true` when the node is shutting down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Asks every task to stop.
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Answers one peer request. Work on the engine runs on the blocking pool.
    pub async fn handle_peer(self: &Arc<Self>, req: PeerRequest) -> PeerResponse {
        let kind = match &req {
            PeerRequest::Mint { .. } | PeerRequest::Increment { .. } => 0,
            PeerRequest::Replicate { .. } => 1,
            PeerRequest::Read { .. } => 2,
            _ => 3,
        };
        self.metrics.peer_served[kind].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let node = self.clone();
        match req {
            PeerRequest::Gossip { members } => {
                let (events, digest) = {
                    let mut m = self.membership();
                    let events = m.merge(&members, crate::now_ms());
                    (events, m.digest())
                };
                self.on_membership_events(&events);
                PeerResponse::Gossip { members: digest }
            }
            PeerRequest::Mint {
                key,
                value,
                ttl_ms,
                context,
            } => {
                let ctx = match decode_context(&context) {
                    Ok(c) => c,
                    Err(e) => {
                        return PeerResponse::Error {
                            message: format!("bad context: {e}"),
                        }
                    }
                };
                let minted = node
                    .mint(&key, value.as_deref(), ttl_ms, &ctx, crate::now_ms())
                    .await;
                node.minted_answer(minted)
            }
            PeerRequest::Increment { key, by } => {
                let minted = node.increment(&key, by, crate::now_ms()).await;
                node.minted_answer(minted)
            }
            PeerRequest::Replicate {
                key,
                state,
                hint_for: None,
            } => {
                let state = match SiblingSet::decode(&state) {
                    Ok(s) => s,
                    Err(e) => {
                        return PeerResponse::Error {
                            message: format!("bad state: {e}"),
                        }
                    }
                };
                match node.merge_state(&key, state).await {
                    Ok(_) => PeerResponse::Ack,
                    Err(e) => PeerResponse::Error {
                        message: e.to_string(),
                    },
                }
            }
            PeerRequest::Read {
                key,
                with_hints: false,
            } => match node.read_state(&key).await {
                Ok(state) => PeerResponse::State {
                    state: state.map(|s| s.encode()),
                },
                Err(e) => PeerResponse::Error {
                    message: e.to_string(),
                },
            },
            PeerRequest::Replicate {
                key,
                state,
                hint_for,
            } => {
                blocking(move || {
                    let state =
                        SiblingSet::decode(&state).map_err(|e| format!("bad state: {e}"))?;
                    match hint_for {
                        Some(target) => node.hints.store(&target, key.as_bytes(), &state)?,
                        None => {
                            node.replica
                                .merge(key.as_bytes(), &state)
                                .map_err(|e| e.to_string())?;
                        }
                    }
                    Ok(PeerResponse::Ack)
                })
                .await
            }
            PeerRequest::Read { key, with_hints } => {
                blocking(move || {
                    let data = node
                        .replica
                        .read(key.as_bytes())
                        .map_err(|e| e.to_string())?;
                    let hinted = if with_hints {
                        node.hints.for_key(key.as_bytes())?
                    } else {
                        None
                    };
                    let state = match (data, hinted) {
                        (Some(d), Some(h)) => Some(d.synced(&h)),
                        (d, h) => d.or(h),
                    };
                    Ok(PeerResponse::State {
                        state: state.map(|s| s.encode()),
                    })
                })
                .await
            }
            PeerRequest::RangeSynced { range, peer, at_ms } => {
                self.agreements.record(range, &peer, at_ms);
                PeerResponse::Ack
            }
            PeerRequest::Stats => PeerResponse::Stats {
                stats: crate::http::local_stats(self),
            },
            // Boxed, like the decommission below: their futures are large, and every peer
            // request's future would otherwise be as large (and be copied per request).
            PeerRequest::RunRepair => PeerResponse::Repaired {
                stats: Box::pin(crate::anti_entropy::repair_now(self)).await,
            },
            PeerRequest::Decommission => {
                match Box::pin(crate::rebalance::run_decommission(self)).await {
                    Ok(moved_keys) => PeerResponse::Decommissioned { moved_keys },
                    Err(message) => PeerResponse::Error { message },
                }
            }
            PeerRequest::Adopt { transfers } => {
                match Box::pin(crate::rebalance::adopt(self, transfers)).await {
                    Ok(keys) => PeerResponse::Adopted { keys },
                    Err(message) => PeerResponse::Error { message },
                }
            }
            PeerRequest::StreamRange {
                range,
                after,
                max_bytes,
            } => {
                blocking(move || {
                    let max = max_bytes.clamp(1024, 8 << 20);
                    let (entries, next) =
                        crate::rebalance::read_chunk(&node, range, after.as_deref(), max)?;
                    Ok(PeerResponse::Chunk { entries, next })
                })
                .await
            }
            PeerRequest::ScanTokens {
                lo,
                hi,
                after,
                max_bytes,
            } => {
                blocking(move || {
                    let max = max_bytes.clamp(1024, 8 << 20);
                    let (entries, next) =
                        crate::rebalance::read_tokens(&node, (lo, hi), after.as_deref(), max)?;
                    Ok(PeerResponse::Chunk { entries, next })
                })
                .await
            }
            PeerRequest::MergeBatch { entries } => {
                blocking(move || {
                    for e in entries {
                        let set = SiblingSet::decode(&e.state).map_err(|err| err.to_string())?;
                        node.replica
                            .merge(e.key.as_bytes(), &set)
                            .map_err(|err| err.to_string())?;
                    }
                    Ok(PeerResponse::Ack)
                })
                .await
            }
            req @ (PeerRequest::MerkleHashes { .. }
            | PeerRequest::BucketDigests { .. }
            | PeerRequest::FetchStates { .. }) => {
                blocking(move || Ok(crate::anti_entropy::serve(&node, req))).await
            }
        }
    }

    /// The answer to a peer's `Mint` or `Increment`.
    fn minted_answer(&self, minted: std::result::Result<Minted, ReplicaError>) -> PeerResponse {
        match minted {
            Ok(minted) => {
                self.count_capped(minted.capped);
                PeerResponse::Minted {
                    state: minted.encoded,
                    write_context: minted.write_context,
                    capped: minted.capped,
                }
            }
            Err(ReplicaError::Rejected(message)) => PeerResponse::Rejected { message },
            Err(e) => PeerResponse::Error {
                message: e.to_string(),
            },
        }
    }

    /// Counts siblings dropped by the cap.
    pub fn count_capped(&self, n: usize) {
        if n > 0 {
            self.metrics
                .siblings_capped
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            crate::warn!("sibling cap dropped {n} old concurrent values of a key");
        }
    }

    /// Stops the storage engine cleanly (after the server stopped).
    pub fn close(&self) {
        if let Err(e) = self.replica.engine().flush() {
            crate::error!("flush at shutdown failed: {e}");
        }
    }
}

impl Node {
    /// Mints a client write on this node's replica: on the calling async thread when the key's
    /// state is in memory (the common case; the commit-log wait is async), else on the
    /// blocking pool.
    pub async fn mint(
        self: &Arc<Self>,
        key: &str,
        value: Option<&[u8]>,
        ttl_ms: Option<u64>,
        ctx: &VersionVector,
        now_ms: u64,
    ) -> std::result::Result<Minted, ReplicaError> {
        match self
            .replica
            .mint_now(key.as_bytes(), value, ttl_ms, ctx, now_ms)
            .await
        {
            Err(ReplicaError::WouldBlock) => {
                let (node, key, value, ctx) = (
                    self.clone(),
                    key.to_string(),
                    value.map(<[u8]>::to_vec),
                    ctx.clone(),
                );
                on_blocking_pool(&self.metrics, move || {
                    node.replica
                        .mint(key.as_bytes(), value.as_deref(), ttl_ms, &ctx, now_ms)
                })
                .await
            }
            other => other,
        }
    }

    /// Adds `by` to the counter of `key` on this node's replica, as [`Node::mint`] does a write.
    pub async fn increment(
        self: &Arc<Self>,
        key: &str,
        by: i64,
        now_ms: u64,
    ) -> std::result::Result<Minted, ReplicaError> {
        match self.replica.increment_now(key.as_bytes(), by, now_ms).await {
            Err(ReplicaError::WouldBlock) => {
                let (node, key) = (self.clone(), key.to_string());
                on_blocking_pool(&self.metrics, move || {
                    node.replica.increment(key.as_bytes(), by, now_ms)
                })
                .await
            }
            other => other,
        }
    }

    /// Merges another replica's state of `key` into this node's (see [`Node::mint`]); returns
    /// whether it changed.
    pub async fn merge_state(
        self: &Arc<Self>,
        key: &str,
        state: SiblingSet,
    ) -> std::result::Result<bool, ReplicaError> {
        match self.replica.merge_now(key.as_bytes(), &state).await {
            Err(ReplicaError::WouldBlock) => {
                let (node, key) = (self.clone(), key.to_string());
                on_blocking_pool(&self.metrics, move || {
                    node.replica.merge(key.as_bytes(), &state)
                })
                .await
            }
            other => other,
        }
    }

    /// This node's stored state of `key`: from memory on the calling thread, else read on the
    /// blocking pool.
    pub async fn read_state(
        self: &Arc<Self>,
        key: &str,
    ) -> std::result::Result<Option<SiblingSet>, ReplicaError> {
        match self.replica.read_with(Access::Now, key.as_bytes()) {
            Err(ReplicaError::WouldBlock) => {
                let (node, key) = (self.clone(), key.to_string());
                on_blocking_pool(&self.metrics, move || node.replica.read(key.as_bytes())).await
            }
            other => other,
        }
    }
}

/// Runs a replica operation on the blocking pool, counting it.
async fn on_blocking_pool<T: Send + 'static>(
    metrics: &Metrics,
    op: impl FnOnce() -> std::result::Result<T, ReplicaError> + Send + 'static,
) -> std::result::Result<T, ReplicaError> {
    metrics
        .blocking_pool_ops
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| ReplicaError::Task(e.to_string()))?
}

/// Runs `f` on the blocking pool (engine work) and turns a failure into an error answer.
async fn blocking(
    f: impl FnOnce() -> std::result::Result<PeerResponse, String> + Send + 'static,
) -> PeerResponse {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(message)) => PeerResponse::Error { message },
        Err(e) => PeerResponse::Error {
            message: format!("task failed: {e}"),
        },
    }
}

/// The largest encoded sibling set: `MAX_SIBLINGS` values at the client limit, plus overhead.
pub fn max_state_bytes(config: &NodeConfig) -> usize {
    (config.limits.max_value_bytes + 1024) * (kv_core::version::MAX_SIBLINGS + 1)
}

/// Refuses a data dir that holds only one of its two halves, the node's identity and its
/// data. Identity is written only once storage exists, so identity without storage means the
/// storage was lost: starting empty under the old actor name could number new writes with
/// versions the lost data already used. Storage holding data without identity would be
/// served under an id guessed from `--listen`. (Storage without data and without identity is
/// a first start that stopped before it was done, e.g. while asking its seeds: fine.)
fn check_halves(config: &NodeConfig, stored: Option<&Identity>) -> Result<()> {
    let dir = config.data_dir.display();
    let storage = config.data_dir.join("storage");
    let has_storage = storage.join("MANIFEST").exists();
    let holds_data = || {
        std::fs::read_dir(&storage)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.ends_with(".sst")
                    || (name.ends_with(".log")
                        && std::fs::read(e.path()).is_ok_and(|b| b.iter().any(|&x| x != 0)))
            })
    };
    match (stored, has_storage) {
        (Some(identity), false) => Err(Error::DataDir(format!(
            "{dir} holds the identity of node '{}' but no storage (storage/MANIFEST): \
             refusing to start it empty under that identity; restore storage/, or remove the \
             whole data dir and start with --id {} to bring the node back empty (it takes its \
             old place in the ring and anti-entropy refills it)",
            identity.id, identity.id
        ))),
        (None, true) if config.id.is_none() && holds_data() => Err(Error::DataDir(format!(
            "{dir} holds storage but no node-identity.json: refusing to guess whose data it is \
             (the id would come from --listen); restore node-identity.json, or start with \
             --id NAME to say which node this data belongs to"
        ))),
        _ => Ok(()),
    }
}

fn open_engine(config: &NodeConfig) -> Result<Engine> {
    let opts = Options {
        sync: config.sync,
        memtable_bytes: config.memtable_bytes,
        block_cache_bytes: config.block_cache_bytes,
        reserve_bytes: config.reserve_bytes,
        log_recovery: config.log_recovery,
        // A stored value is a key's whole sibling set: up to the sibling cap of client values.
        max_value_bytes: max_state_bytes(config),
        ..Options::default()
    };
    Engine::open(config.data_dir.join("storage"), opts).map_err(|e| {
        // The engine names its own way out of a damaged commit log; say it as the flag.
        let e = e.to_string().replace(
            "open with skip-damaged commit-log recovery",
            "start with --commit-log-recovery skip-damaged",
        );
        Error::DataDir(format!(
            "cannot open storage in {}: {e}",
            config.data_dir.display()
        ))
    })
}

/// Picks the tokens of a node that has none yet. A node with seeds asks them for the cluster's
/// membership first: if the cluster already knows this id (its data dir was wiped), it takes
/// back its old tokens, its old place in the ring; otherwise it takes tokens that keep the ring
/// balanced given the members already there.
/// Asks the first of `addrs` that answers (retrying for up to 30 s) for the cluster's
/// membership, merges it, and returns the answer as received.
async fn ask_cluster(
    addrs: &[String],
    membership: &mut Membership,
    peers: &PeerPool,
) -> Result<Vec<Member>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_error = String::from("no address to ask");
    while Instant::now() < deadline {
        for addr in addrs {
            // Only asking: my own record is not sent. A fresh record of me (a wiped data dir)
            // has a newer generation than the cluster's record of my id, and would replace
            // the tokens the cluster knows for it before I could take them back.
            let req = PeerRequest::Gossip {
                members: Vec::new(),
            };
            match peers.call(addr, &req, Duration::from_secs(2)).await {
                Ok(PeerResponse::Gossip { members }) => {
                    membership.merge(&members, crate::now_ms());
                    return Ok(members);
                }
                Ok(other) => last_error = format!("{addr}: unexpected answer {other:?}"),
                // A refusal will not change by retrying: say so at once.
                Err(e)
                    if e.to_string().contains("cluster secret")
                        || e.to_string().contains("refused:") =>
                {
                    return Err(Error::Join(format!("{addr} refused this node: {e}")))
                }
                Err(e) => last_error = format!("{addr}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(Error::Join(format!("no seed answered: {last_error}")))
}

/// The ring of the `members` with tokens whose status `include` accepts.
fn ring_of<'a>(
    members: impl IntoIterator<Item = &'a Member>,
    include: impl Fn(MemberStatus) -> bool,
) -> Ring {
    let mut ring = Ring::new();
    for m in members {
        if m.tokens.is_empty() || !include(m.effective_status()) {
            continue;
        }
        ring.insert(
            NodeInfo {
                id: m.id.clone(),
                addr: m.addr.clone(),
                dc: m.dc.clone(),
                rack: m.rack.clone(),
                weight: m.weight,
            },
            m.tokens.clone(),
        );
    }
    ring
}

/// Members that own data now.
fn owns_data(s: MemberStatus) -> bool {
    matches!(s, MemberStatus::Normal | MemberStatus::Leaving)
}

/// A node restarted with another `--weight`: its new token list (kept tokens plus new ones
/// when it grows, fewer when it shrinks), computed on the cluster's ring as the seeds or the
/// remembered peers describe it.
async fn reweigh_tokens(
    config: &NodeConfig,
    identity: &Identity,
    old_weight: u32,
    membership: &mut Membership,
    peers: &PeerPool,
) -> Result<Vec<u64>> {
    let mut addrs = config.seeds.clone();
    addrs.extend(crate::gossip::remembered_peers(&config.data_dir));
    addrs.retain(|a| *a != config.listen);
    let mut members = if addrs.is_empty() {
        Vec::new()
    } else {
        ask_cluster(&addrs, membership, peers).await?
    };
    members.retain(|m| m.id != identity.id);
    let mut me = Member::new(&identity.id, &config.listen, 0);
    me.dc = config.dc.clone();
    me.rack = config.rack.clone();
    me.weight = old_weight;
    me.tokens = identity.tokens.clone();
    me.status = MemberStatus::Normal;
    members.push(me);
    ring_of(&members, owns_data)
        .reallocate_tokens(&identity.id, config.weight, crate::random_u64())
        .map_err(|e| Error::Join(format!("cannot rebalance for the new weight: {e}")))
}

async fn choose_tokens(
    config: &NodeConfig,
    id: &str,
    membership: &mut Membership,
    peers: &PeerPool,
) -> Result<(Vec<u64>, bool)> {
    if !config.seeds.is_empty() {
        let cluster = ask_cluster(&config.seeds, membership, peers).await?;
        // The seed's own record of this id (my membership never takes over a record of me).
        // A member that left handed its ranges over: its id starting again is a newcomer.
        if let Some(old) = cluster.iter().find(|m| {
            m.id == id && !m.tokens.is_empty() && m.effective_status() != MemberStatus::Left
        }) {
            crate::info!(
                "the cluster knows {id}: taking back its {} tokens",
                old.tokens.len()
            );
            return Ok((old.tokens.clone(), true));
        }
    }
    // Joiners count too: their tokens are taken, whether or not they serve yet. Under a
    // per-DC placement a node's share is decided among its own DC's nodes.
    let ring = ring_of(membership.members(), |s| s != MemberStatus::Left);
    let tokens = if config.per_dc.is_some() {
        ring.allocate_tokens_in_dc(&config.dc, config.weight, crate::random_u64())
    } else {
        ring.allocate_tokens(config.weight, crate::random_u64())
    };
    Ok((tokens, false))
}

/// Says in the log when the disk fills and when writes can go on again: once when writes start
/// being refused for lack of space (a flush or compaction held up, or the commit log unable to
/// grow; and every minute while it stays so), once when space is freed, and at most once a
/// minute how many writes the full disk refused meanwhile. Also says, once, when the storage
/// failed (an I/O error that is not lack of space) and takes no write until a restart.
pub async fn watch_disk_space(node: Arc<Node>) {
    const REPEAT: Duration = Duration::from_secs(60);
    let engine = node.replica.engine().clone();
    let mut shutdown = node.shutdown_signal();
    // Since when, and when last said.
    let mut held_up: Option<(Instant, Instant)> = None;
    let mut refusals = engine.no_space_refusals();
    let mut told: Option<Instant> = None;
    let mut failure_told = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        if let Some(why) = engine.failure().filter(|_| !failure_told) {
            crate::error!(
                "storage failed: every write is refused until the node is restarted, reads go \
                 on, /health answers 503: {why}"
            );
            failure_told = true;
        }
        match (engine.no_space(), &mut held_up) {
            (Some(why), None) => {
                crate::error!(
                    "disk full: writes are refused until space is freed, reads go on (flushes \
                     and compactions it holds up are retried every second): {why}"
                );
                held_up = Some((Instant::now(), Instant::now()));
            }
            (Some(why), Some((since, last))) if last.elapsed() >= REPEAT => {
                crate::error!(
                    "disk still full after {} s: {why}",
                    since.elapsed().as_secs()
                );
                *last = Instant::now();
            }
            (None, Some((since, _))) => {
                crate::info!(
                    "disk space freed after {} s: writes are accepted again",
                    since.elapsed().as_secs()
                );
                held_up = None;
            }
            _ => {}
        }
        let now = engine.no_space_refusals();
        if now > refusals && told.is_none_or(|t| t.elapsed() >= REPEAT) {
            crate::error!(
                "disk full: {} write(s) refused (not applied, nothing lost); writes succeed \
                 again once space is freed",
                now - refusals
            );
            refusals = now;
            told = Some(Instant::now());
        }
    }
}
