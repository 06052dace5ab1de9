//! Peers' clocks. Every peer request and answer carries its sender's wall clock (`herd-time`,
//! milliseconds since the epoch); each side measures the other's offset from its own clock
//! (a caller from the middle of its round trip, as NTP does; a server from the request's
//! arrival) and refuses a peer whose clock differs by more than `max_clock_offset`, in either
//! direction: the exchange merges nothing (the server answers 409 `clock_offset`, the caller
//! drops the answer). Versions order by wall clock, so a peer an hour ahead would otherwise win
//! every conflict for an hour and drag every node's versions along. The refusal lifts at the
//! first exchange after the clock is fixed. `herd members` shows each peer's offset.
//!
//! A node whose clock is ahead of a majority of the nodes measured in the last [`RECENT_MS`]
//! (itself counted) by more than the bound is the odd one out: it refuses to stamp local
//! writes (503 `clock_ahead`) rather than poison the cluster, until that is no longer so. With
//! two nodes neither can tell which clock is wrong: both go on taking writes, apart. A clock that jumps back needs nothing: versions
//! never go backwards (the clock is hybrid, its high-water mark persisted).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// What one peer's clock was last measured at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset {
    /// The peer's clock minus this node's, in milliseconds.
    pub ms: i64,
    /// When it was measured (this node's clock).
    pub at_ms: u64,
}

/// How recent a peer's measurement must be to count in deciding whether this node's clock is
/// ahead (longer than the longest wait between attempts to reach a refused peer).
pub const RECENT_MS: u64 = 10 * 60 * 1000;

/// Told whether this node must refuse to stamp writes (`Some(why)`) or may again (`None`).
pub type OnAhead = Box<dyn Fn(Option<String>) + Send + Sync>;

/// The offsets measured, and the bound.
pub struct Clocks {
    max_ms: i64,
    state: Mutex<State>,
    on_ahead: OnAhead,
}

#[derive(Default)]
struct State {
    peers: HashMap<u64, Offset>,
    /// Why this node's clock is taken to be ahead, if it is.
    ahead: Option<String>,
}

impl std::fmt::Debug for Clocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clocks")
            .field("max_ms", &self.max_ms)
            .finish()
    }
}

impl Clocks {
    pub fn new(max: Duration, on_ahead: OnAhead) -> Clocks {
        Clocks {
            max_ms: i64::try_from(max.as_millis()).unwrap_or(i64::MAX),
            state: Mutex::new(State::default()),
            on_ahead,
        }
    }

    /// Records `peer`'s offset, measured at `now_ms`, and answers why it may not exchange data
    /// if it is beyond the bound. Logs when a peer becomes refused and when it stops being.
    pub fn check(&self, peer: u64, offset_ms: i64, now_ms: u64) -> Result<(), String> {
        let refused = self.refuses(offset_ms);
        let before = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let before = st.peers.insert(
                peer,
                Offset {
                    ms: offset_ms,
                    at_ms: now_ms,
                },
            );
            self.decide_ahead(&mut st, now_ms);
            before
        };
        let was_refused = before.is_some_and(|o| self.refuses(o.ms));
        let why = || describe(peer, offset_ms, self.max_ms);
        match (was_refused, refused) {
            (false, true) => tracing::warn!(
                "{}; nothing is exchanged with it until that is fixed",
                why()
            ),
            (true, false) => {
                tracing::info!(peer = %format!("{peer:016x}"), offset_ms, "peer's clock is back within max_clock_offset; exchanging again")
            }
            _ => {}
        }
        if refused {
            Err(why())
        } else {
            Ok(())
        }
    }

    /// Decides again whether this node's clock is ahead, as measurements age (called on the
    /// prober's tick: with no peer reachable, old measurements stop counting).
    pub fn tick(&self, now_ms: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.decide_ahead(&mut st, now_ms);
    }

    /// Takes this node's clock to be ahead when it is ahead of a majority of the nodes
    /// measured in the last [`RECENT_MS`], itself counted among them (so that one peer behind
    /// cannot make a node stop); tells `on_ahead` when that changes.
    fn decide_ahead(&self, st: &mut State, now_ms: u64) {
        let (mut behind, mut measured) = (0, 0);
        for o in st.peers.values().filter(|o| o.at_ms + RECENT_MS >= now_ms) {
            measured += 1;
            behind += usize::from(o.ms < -self.max_ms);
        }
        let now_ahead = (behind * 2 > measured + 1).then(|| {
            format!(
                "its clock is ahead of {behind} of the {measured} peers it measured by more than \
                 max_clock_offset ({:.1} s)",
                self.max_ms as f64 / 1000.0
            )
        });
        if st.ahead.is_some() == now_ahead.is_some() {
            return;
        }
        match &now_ahead {
            Some(why) => {
                tracing::error!("refusing to stamp writes: {why}; fix this node's clock (NTP)")
            }
            None => tracing::info!(
                "this node's clock is no longer ahead of its peers; taking writes again"
            ),
        }
        st.ahead = now_ahead.clone();
        (self.on_ahead)(now_ahead);
    }

    /// True if a peer with this offset is refused.
    pub fn refuses(&self, offset_ms: i64) -> bool {
        offset_ms.unsigned_abs() > self.max_ms.unsigned_abs()
    }

    /// The offset last measured for `peer`.
    pub fn offset(&self, peer: u64) -> Option<Offset> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.peers.get(&peer).copied()
    }
}

/// Why a peer with this offset is refused.
fn describe(peer: u64, offset_ms: i64, max_ms: i64) -> String {
    let (how, by) = if offset_ms > 0 {
        ("ahead of", offset_ms)
    } else {
        ("behind", -offset_ms)
    };
    format!(
        "node {peer:016x}'s clock is {:.1} s {how} this node's, more than max_clock_offset ({:.1} s)",
        by as f64 / 1000.0,
        max_ms as f64 / 1000.0
    )
}

/// The offset of a clock that read `their_ms` between this node's `sent_ms` and
/// `received_ms` (NTP's estimate: they read it half way through the round trip).
pub fn offset_ms(their_ms: u64, sent_ms: u64, received_ms: u64) -> i64 {
    let middle = (i128::from(sent_ms) + i128::from(received_ms)) / 2;
    (i128::from(their_ms) - middle).clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_beyond_the_bound_either_way_is_refused_until_its_clock_is_fixed() {
        let c = Clocks::new(Duration::from_secs(30), Box::new(|_| {}));
        assert!(c.check(1, 250, 1_000).is_ok());
        assert_eq!(
            c.offset(1),
            Some(Offset {
                ms: 250,
                at_ms: 1_000
            })
        );
        let why = c.check(1, 3_600_000, 2_000).unwrap_err();
        assert!(
            why.contains("3600.0 s ahead of") && why.contains("30.0 s"),
            "{why}"
        );
        let why = c.check(2, -30_001, 2_000).unwrap_err();
        assert!(why.contains("30.0 s behind"), "{why}");
        assert!(
            c.check(2, -30_000, 3_000).is_ok(),
            "the bound itself is allowed"
        );
        assert!(c.check(1, -5, 4_000).is_ok(), "fixed");
        assert_eq!(c.offset(1).unwrap().ms, -5);
        assert_eq!(c.offset(3), None);
    }

    #[test]
    fn a_node_ahead_of_most_peers_refuses_to_stamp_until_it_is_not() {
        let told = std::sync::Arc::new(Mutex::new(Vec::new()));
        let t = told.clone();
        let c = Clocks::new(
            Duration::from_secs(30),
            Box::new(move |why| t.lock().unwrap().push(why.is_some())),
        );
        let _ = c.check(1, -60_000, 1_000);
        assert!(
            told.lock().unwrap().is_empty(),
            "one peer behind: who is wrong?"
        );
        let _ = c.check(2, -45_000, 1_100);
        assert_eq!(*told.lock().unwrap(), vec![true], "two peers behind: ahead");
        let _ = c.check(3, 100, 1_200);
        let _ = c.check(4, -50, 1_300);
        assert_eq!(
            *told.lock().unwrap(),
            vec![true, false],
            "two of four: no majority"
        );
        let _ = c.check(4, -31_000, 1_400);
        assert_eq!(
            *told.lock().unwrap(),
            vec![true, false, true],
            "three of four"
        );
        // Measurements older than RECENT_MS no longer count: peer 1's goes, two of three.
        c.tick(1_000 + RECENT_MS + 1);
        assert_eq!(*told.lock().unwrap(), vec![true, false, true, false]);
        // Nobody left to measure: the refusal lifts on the tick.
        let t = told.clone();
        let c = Clocks::new(
            Duration::from_secs(30),
            Box::new(move |why| t.lock().unwrap().push(why.is_some())),
        );
        let _ = c.check(1, -60_000, 0);
        let _ = c.check(2, -60_000, 0);
        c.tick(RECENT_MS);
        c.tick(RECENT_MS + 1);
        assert_eq!(told.lock().unwrap()[4..], [true, false]);
        // Peers ahead of this node say nothing about this node being ahead.
        let c = Clocks::new(Duration::from_secs(30), Box::new(|_| panic!("not ahead")));
        let _ = c.check(1, 3_600_000, 1_000);
        let _ = c.check(2, 3_600_000, 1_000);
    }

    #[test]
    fn the_offset_is_taken_from_the_middle_of_the_round_trip() {
        assert_eq!(offset_ms(1_050, 1_000, 1_100), 0);
        assert_eq!(offset_ms(5_000, 1_000, 1_100), 3_950);
        assert_eq!(offset_ms(0, 1_000, 1_100), -1_050);
        assert_eq!(offset_ms(u64::MAX, 0, 0), i64::MAX);
    }
}
