//! The membership table: every peer this node knows (by node id), where it answers, how it was
//! found, whether it is alive, and when to try it next; plus the seed addresses not yet known
//! by id. Pure bookkeeping under one lock: the tasks in `cluster.rs` do the talking and report
//! here.
//!
//! States: `alive` (answered recently), `suspect` (the last attempt failed), `dead` (several
//! attempts in a row failed; retried with exponential backoff capped at `retry_cap`), and
//! `refused` (another cluster or environment: seen, never merged with, never contacted).

use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Failed attempts in a row after which a peer is dead rather than suspect.
const DEAD_AFTER: u32 = 3;
/// The first retry delay; it doubles with every failure up to the cap.
const RETRY_BASE: Duration = Duration::from_secs(1);
/// How often a live peer is probed when nothing else was exchanged with it.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Alive,
    Suspect,
    Dead,
    Refused,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Alive => "alive",
            State::Suspect => "suspect",
            State::Dead => "dead",
            State::Refused => "refused",
        }
    }
}

/// How a peer became known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Seed,
    Mdns,
    /// Named by another peer.
    Peer,
    /// It connected to us.
    Inbound,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Seed => "seed",
            Source::Mdns => "mdns",
            Source::Peer => "peer",
            Source::Inbound => "inbound",
        }
    }
}

/// One known peer.
#[derive(Debug, Clone)]
pub struct Peer {
    pub id: u64,
    pub addr: SocketAddr,
    pub source: Source,
    pub state: State,
    /// The cluster and environment it states (differ from ours only when refused).
    pub cluster: String,
    pub env: String,
    /// The last successful exchange, wall clock (for the view) and monotonic.
    pub last_seen: Option<SystemTime>,
    last_contact: Option<Instant>,
    /// Failed attempts in a row.
    pub failures: u32,
    next_try: Instant,
    /// A probe is under way.
    probing: bool,
    /// The last failure, for the view.
    pub last_error: Option<String>,
    /// When the oldest local write not yet acknowledged by this peer was pushed.
    pub unacked_since: Option<Instant>,
    /// Local writes pushed and acknowledged.
    pub pushed: u64,
    /// The last anti-entropy round with it that found both stores equal.
    pub synced_at: Option<SystemTime>,
    /// Pushes to it were dropped (a failure or a full queue): anti-entropy should visit it.
    pub needs_repair: bool,
}

/// A configured seed address (`host:port`), resolved again at every attempt.
#[derive(Debug, Clone)]
pub struct Seed {
    pub target: String,
    pub failures: u32,
    next_try: Instant,
    probing: bool,
    /// The node that answered there last.
    pub node: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Table {
    peers: HashMap<u64, Peer>,
    seeds: Vec<Seed>,
}

/// The membership table.
#[derive(Debug)]
pub struct Members {
    me: u64,
    retry_cap: Duration,
    table: Mutex<Table>,
}

/// Something for the prober to contact.
#[derive(Debug, Clone)]
pub enum Due {
    Seed(String),
    Peer(u64, SocketAddr),
}

impl Members {
    pub fn new(me: u64, seeds: &[String], retry_cap: Duration) -> Members {
        let now = Instant::now();
        let seeds = seeds
            .iter()
            .map(|t| Seed {
                target: t.clone(),
                failures: 0,
                next_try: now,
                probing: false,
                node: None,
                last_error: None,
            })
            .collect();
        Members {
            me,
            retry_cap,
            table: Mutex::new(Table {
                peers: HashMap::new(),
                seeds,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn backoff(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        (RETRY_BASE * (1u32 << shift)).min(self.retry_cap)
    }

    /// Learns of a peer of our cluster at `addr` (found by mDNS, a seed or another peer). A
    /// known peer's address is updated, and a dead one is tried again at once (it showed up).
    pub fn learn(&self, id: u64, addr: SocketAddr, source: Source, cluster: &str, env: &str) {
        if id == self.me {
            return;
        }
        let now = Instant::now();
        let mut t = self.lock();
        match t.peers.get_mut(&id) {
            Some(p) => {
                if p.state == State::Refused {
                    if source == Source::Peer {
                        return;
                    }
                    // It states our cluster and environment now (restarted with other
                    // settings): a peer like any other from here on.
                    p.state = State::Suspect;
                    p.cluster = cluster.into();
                    p.env = env.into();
                    p.last_error = None;
                    p.failures = 0;
                    p.next_try = now;
                    p.needs_repair = true;
                }
                // An IPv4 address is kept over an IPv6 one (a link-local address means nothing
                // to the peers it would be passed on to).
                let better = !(p.addr.is_ipv4() && addr.is_ipv6());
                if p.addr != addr && source != Source::Peer && better {
                    p.addr = addr;
                }
                if p.state == State::Dead && source != Source::Peer {
                    p.failures = 0;
                    p.next_try = now;
                }
            }
            None => {
                t.peers.insert(
                    id,
                    Peer {
                        id,
                        addr,
                        source,
                        state: State::Suspect,
                        cluster: cluster.into(),
                        env: env.into(),
                        last_seen: None,
                        last_contact: None,
                        failures: 0,
                        next_try: now,
                        probing: false,
                        last_error: None,
                        unacked_since: None,
                        pushed: 0,
                        synced_at: None,
                        needs_repair: true,
                    },
                );
            }
        }
    }

    /// Records a node of another cluster or environment: shown, never contacted. Returns true
    /// the first time (so the caller logs the refusal once).
    pub fn refuse(&self, id: u64, addr: SocketAddr, cluster: &str, env: &str, why: &str) -> bool {
        if id == self.me {
            return false;
        }
        let mut t = self.lock();
        let first = t.peers.get(&id).is_none_or(|p| p.state != State::Refused);
        let p = t.peers.entry(id).or_insert_with(|| Peer {
            id,
            addr,
            source: Source::Mdns,
            state: State::Refused,
            cluster: cluster.into(),
            env: env.into(),
            last_seen: None,
            last_contact: None,
            failures: 0,
            next_try: Instant::now(),
            probing: false,
            last_error: None,
            unacked_since: None,
            pushed: 0,
            synced_at: None,
            needs_repair: false,
        });
        p.state = State::Refused;
        p.addr = addr;
        p.cluster = cluster.into();
        p.env = env.into();
        p.last_seen = Some(SystemTime::now());
        p.last_error = Some(why.into());
        first
    }

    /// A successful exchange with `id`: alive now. Returns true if it was not alive before
    /// (the caller starts pushing to it).
    pub fn contact(&self, id: u64) -> bool {
        let mut t = self.lock();
        let Some(p) = t.peers.get_mut(&id) else {
            return false;
        };
        // A successful exchange proves our cluster and environment (both sides checked them),
        // so even a node refused before is a peer now.
        let was = p.state;
        p.state = State::Alive;
        p.failures = 0;
        p.last_seen = Some(SystemTime::now());
        p.last_contact = Some(Instant::now());
        p.last_error = None;
        was != State::Alive
    }

    /// A failed exchange with `id`. Returns true if the peer just became dead.
    pub fn failure(&self, id: u64, why: &str) -> bool {
        let now = Instant::now();
        let mut t = self.lock();
        let Some(p) = t.peers.get_mut(&id) else {
            return false;
        };
        if p.state == State::Refused {
            return false;
        }
        p.failures += 1;
        p.needs_repair = true;
        p.last_error = Some(why.into());
        p.next_try = now + self.backoff(p.failures);
        let was = p.state;
        p.state = if p.failures >= DEAD_AFTER {
            State::Dead
        } else {
            State::Suspect
        };
        was != State::Dead && p.state == State::Dead
    }

    /// The seeds and peers due for a probe; marks them as being probed.
    pub fn due(&self) -> Vec<Due> {
        let now = Instant::now();
        let mut t = self.lock();
        let mut out = Vec::new();
        for s in t.seeds.iter_mut() {
            if !s.probing && s.next_try <= now {
                s.probing = true;
                out.push(Due::Seed(s.target.clone()));
            }
        }
        for p in t.peers.values_mut() {
            let due = match p.state {
                State::Refused => false,
                State::Alive => p
                    .last_contact
                    .is_none_or(|c| now.duration_since(c) >= PROBE_EVERY),
                State::Suspect | State::Dead => p.next_try <= now,
            };
            if due && !p.probing {
                p.probing = true;
                out.push(Due::Peer(p.id, p.addr));
            }
        }
        out
    }

    /// A probe of `due` ended.
    pub fn probed(&self, due: &Due) {
        let mut t = self.lock();
        match due {
            Due::Seed(target) => {
                if let Some(s) = t.seeds.iter_mut().find(|s| &s.target == target) {
                    s.probing = false;
                }
            }
            Due::Peer(id, _) => {
                if let Some(p) = t.peers.get_mut(id) {
                    p.probing = false;
                }
            }
        }
    }

    /// A seed answered as `node` (or failed with `error`).
    pub fn seed_result(&self, target: &str, result: Result<u64, String>) {
        let mut t = self.lock();
        let Some(s) = t.seeds.iter_mut().find(|s| s.target == target) else {
            return;
        };
        match result {
            Ok(node) => {
                s.failures = 0;
                s.node = Some(node);
                s.last_error = None;
                // Once known by id, the peer entry is probed; the seed is re-resolved slowly
                // so a DNS name that moves is followed.
                s.next_try = Instant::now() + Duration::from_secs(30);
            }
            Err(e) => {
                s.failures += 1;
                s.last_error = Some(e);
                s.next_try = Instant::now() + self.backoff(s.failures);
            }
        }
    }

    /// Ids of the peers that are alive.
    pub fn alive(&self) -> Vec<(u64, SocketAddr)> {
        self.lock()
            .peers
            .values()
            .filter(|p| p.state == State::Alive)
            .map(|p| (p.id, p.addr))
            .collect()
    }

    pub fn get(&self, id: u64) -> Option<Peer> {
        self.lock().peers.get(&id).cloned()
    }

    pub fn is_alive(&self, id: u64) -> bool {
        self.lock()
            .peers
            .get(&id)
            .is_some_and(|p| p.state == State::Alive)
    }

    /// Updates the push and repair bookkeeping of a peer.
    pub fn with_peer(&self, id: u64, f: impl FnOnce(&mut Peer)) {
        if let Some(p) = self.lock().peers.get_mut(&id) {
            f(p);
        }
    }

    /// The view of `GET /v1/members` and `herd members`.
    pub fn view(&self) -> serde_json::Value {
        let now = Instant::now();
        let t = self.lock();
        let mut peers: Vec<&Peer> = t.peers.values().collect();
        peers.sort_by_key(|p| p.id);
        let ms = |s: Option<SystemTime>| {
            s.and_then(|s| s.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
        };
        let members: Vec<serde_json::Value> = peers
            .iter()
            .map(|p| {
                json!({
                    "node_id": format!("{:016x}", p.id),
                    "addr": p.addr.to_string(),
                    "state": p.state.as_str(),
                    "source": p.source.as_str(),
                    "cluster": p.cluster,
                    "env": p.env,
                    "last_seen_ms": ms(p.last_seen),
                    "last_seen_ago_ms": p.last_contact.map(|c| now.duration_since(c).as_millis() as u64),
                    "replication_lag_ms": p.unacked_since.map_or(0, |s| now.duration_since(s).as_millis() as u64),
                    "pushed": p.pushed,
                    "in_sync_at_ms": ms(p.synced_at),
                    "failures": p.failures,
                    "last_error": p.last_error,
                })
            })
            .collect();
        let seeds: Vec<serde_json::Value> = t
            .seeds
            .iter()
            .map(|s| {
                json!({
                    "target": s.target,
                    "node_id": s.node.map(|n| format!("{n:016x}")),
                    "failures": s.failures,
                    "last_error": s.last_error,
                })
            })
            .collect();
        json!({"members": members, "seeds": seeds})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn states_follow_contacts_and_failures() {
        let m = Members::new(1, &[], Duration::from_secs(300));
        m.learn(1, addr(1), Source::Mdns, "c", "e");
        assert!(m.get(1).is_none(), "a node never lists itself");
        m.learn(2, addr(2), Source::Mdns, "c", "e");
        assert_eq!(m.get(2).unwrap().state, State::Suspect);
        assert!(matches!(m.due()[..], [Due::Peer(2, _)]));
        assert!(m.due().is_empty(), "one probe at a time");
        m.probed(&Due::Peer(2, addr(2)));
        assert!(m.contact(2));
        assert!(!m.contact(2));
        assert_eq!(m.alive(), vec![(2, addr(2))]);
        assert!(!m.failure(2, "x"));
        assert!(!m.failure(2, "x"));
        assert!(m.failure(2, "x"));
        let p = m.get(2).unwrap();
        assert_eq!((p.state, p.failures), (State::Dead, 3));
        // Shows up again on mDNS: retried at once.
        m.learn(2, addr(3), Source::Mdns, "c", "e");
        let p = m.get(2).unwrap();
        assert_eq!((p.addr, p.failures), (addr(3), 0));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let m = Members::new(1, &[], Duration::from_secs(300));
        assert_eq!(m.backoff(1), Duration::from_secs(1));
        assert_eq!(m.backoff(4), Duration::from_secs(8));
        assert_eq!(m.backoff(30), Duration::from_secs(300));
    }

    #[test]
    fn refused_nodes_are_shown_but_never_due() {
        let m = Members::new(1, &[], Duration::from_secs(300));
        assert!(m.refuse(
            9,
            addr(9),
            "c",
            "staging",
            "environment staging is not ours"
        ));
        assert!(!m.refuse(9, addr(9), "c", "staging", "again"));
        m.learn(9, addr(9), Source::Peer, "c", "staging");
        assert!(m.due().is_empty());
        let v = m.view();
        assert_eq!(v["members"][0]["state"], "refused");
        assert_eq!(v["members"][0]["env"], "staging");
        // Restarted in our environment: mDNS reports it with our identity.
        m.learn(9, addr(9), Source::Mdns, "c", "e");
        let p = m.get(9).unwrap();
        assert_eq!((p.state, p.env.as_str()), (State::Suspect, "e"));
        assert!(matches!(m.due()[..], [Due::Peer(9, _)]));
    }
}
