//! Tests of the digest, the protocol and the wire format: pinned hashes, the tree, the plan,
//! rounds through the codec with faults and their traffic, and hostile input.

use std::time::Instant;

use proptest::prelude::*;
use proptest::sample::Index;

use super::session::plan;
use super::wire::{
    put_varint, register_body_len, varint_len, Reader, TAG_COMPARE, TAG_ENTRIES, TAG_ROOT,
};
use super::*;
use crate::store::{path, Store, Version};

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

fn leaf(text: &str, millis: u64, node: u64) -> Register {
    Register {
        kind: Kind::Leaf(text.into()),
        version: Version {
            millis,
            counter: 0,
            node,
        },
        expires: None,
    }
}

fn registers(s: &Store) -> Vec<(String, Register)> {
    s.registers()
        .map(|(k, r)| (k.to_owned(), r.clone()))
        .collect()
}

#[test]
fn hashes_are_stable() {
    // Published vectors: FNV-1a 64 of "" and "a"; splitmix64's first output from seed 0.
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(mix64(GOLDEN), 0xe220_a839_7b1d_cdaf);
    assert_eq!(key_hash("app\0db\0port"), mix64(fnv1a(b"app\0db\0port")));
    // Pinned: a change here breaks every mixed-version cluster.
    assert_eq!(key_hash("app\0db\0port"), PINNED_KEY_HASH);
    let r = Register {
        kind: Kind::Object,
        version: Version {
            millis: 1_763_712_000_123,
            counter: 7,
            node: 0x3f2a_9c1e_5b7d_4e60,
        },
        expires: None,
    };
    assert_eq!(element("app\0db\0port", &r), PINNED_ELEMENT);
    // The value does not count, the kind does.
    assert_eq!(
        element("a", &leaf("1", 5, 1)),
        element("a", &leaf("2", 5, 1))
    );
    let deleted = Register {
        kind: Kind::Deleted,
        ..leaf("1", 5, 1)
    };
    assert_ne!(element("a", &leaf("1", 5, 1)), element("a", &deleted));
}

const PINNED_KEY_HASH: u64 = 0x2833_e12b_7f9a_a903;
const PINNED_ELEMENT: u64 = 0xa00d_92f8_b202_c8b5;

#[test]
fn tree_nodes_fold_their_leaves() {
    let s = Store::from_registers((0..500).map(|i| (format!("k{i}").into(), leaf("1", i, 1))));
    let d = s.digest();
    assert_eq!(d.count(), 500);
    let all = (0..BUCKETS).fold(0, |a, b| a ^ d.leaf(b as u16));
    assert_eq!(d.node(0, 0), all);
    for level in 0..LEAF_LEVEL {
        for i in [0u64, 1, 3] {
            let kids = (0..4).fold(0, |a, j| a ^ d.node(level + 1, 4 * i + j));
            assert_eq!(d.node(level, i), kids, "level {level} node {i}");
        }
    }
    assert_eq!(d.node(LEAF_LEVEL, 9), d.leaf(9));
    assert_eq!(d.node(1, 4), 0, "outside the tree");
    assert_eq!(d.node(9, 0), 0, "below the leaves");
}

#[test]
fn register_lengths_match_the_encoding() {
    for r in [
        leaf("\"héllo\"", 1, 2),
        Register {
            kind: Kind::Object,
            ..leaf("", 1, 2)
        },
        Register {
            kind: Kind::Deleted,
            ..leaf("", 1, 2)
        },
    ] {
        let mut buf = Vec::new();
        r.encode(&mut buf);
        assert_eq!(buf.len(), register_body_len(&r));
    }
    for v in [0, 1, 127, 128, 16_383, 16_384, u64::MAX] {
        let mut buf = Vec::new();
        put_varint(&mut buf, v);
        assert_eq!(buf.len(), varint_len(v));
        let mut r = Reader(&buf);
        assert_eq!(r.varint("v"), Ok(v));
    }
}

#[test]
fn plan_descends_for_few_differences_and_lists_buckets_for_many() {
    assert_eq!(
        plan(0, 1.0, 65_536.0, 1.5).1,
        0,
        "dense: leaf stage at once"
    );
    assert!(
        plan(0, 1.0, 1.0, 1.5).1 > 1,
        "one difference: jump several levels"
    );
    assert!(
        plan(0, 1.0, 500.0, 1.5).1 >= 4,
        "skip the levels where all nodes differ"
    );
    assert_eq!(
        plan(7, 1000.0, 1000.0, 0.01).1,
        0,
        "near-empty buckets: list them"
    );
    assert_eq!(
        plan(7, 1000.0, 1000.0, 100.0).1,
        1,
        "full buckets: compare them"
    );
}

/// Keys in a small tree (three names, up to three levels) so writes cover each other often.
fn arb_key() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..4)
        .prop_map(|segs| segs.join("\0"))
}

/// Writes as a cluster makes them: leaves (some with a TTL), objects and deletions, each
/// with its own version.
fn arb_writes(max: usize) -> impl Strategy<Value = Vec<(Box<str>, Register)>> {
    let kind = prop_oneof![
        3 => (0u8..4).prop_map(|n| Kind::Leaf(n.to_string().into())),
        1 => Just(Kind::Object),
        1 => Just(Kind::Deleted),
    ];
    let write = (arb_key(), kind, 1u64..4, prop::option::of(1u64..100));
    prop::collection::vec(write, 1..max).prop_map(|ws| {
        ws.into_iter()
            .enumerate()
            .map(|(i, (key, kind, node, ttl))| {
                let expires = match kind {
                    Kind::Leaf(_) => ttl.and_then(std::num::NonZeroU64::new),
                    _ => None,
                };
                let version = Version {
                    millis: 10 + i as u64 / 2,
                    counter: (i % 2) as u32,
                    node,
                };
                let reg = Register {
                    kind,
                    version,
                    expires,
                };
                (key.into(), reg)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// After any merges and removals the kept digest is the one rebuilt from scratch.
    #[test]
    fn digest_is_maintained_exactly(
        writes in arb_writes(40),
        ops in prop::collection::vec((any::<Index>(), any::<bool>()), 0..80),
    ) {
        let mut s = Store::new();
        for (i, merge) in ops {
            let (k, r) = &writes[i.index(writes.len())];
            if merge {
                s.merge(k, r.clone());
            } else {
                s.remove(k);
            }
            prop_assert_eq!(s.digest(), &Digest::of(s.registers()));
        }
        prop_assert_eq!(s.digest().count(), s.len() as u64);
        let loaded = Store::from_registers(writes);
        prop_assert_eq!(loaded.digest(), &Digest::of(loaded.registers()));
    }
}

/// Bytes counted over a round.
#[derive(Debug, Default)]
struct Traffic {
    round_trips: usize,
    request_bytes: usize,
    reply_bytes: usize,
    push_bytes: usize,
    /// Bytes of framed registers, in replies and pushes.
    register_bytes: usize,
    registers: usize,
    largest_reply: usize,
    /// Bytes of the largest push.
    largest_push: usize,
}

impl Traffic {
    /// Everything but the registers.
    fn digest_bytes(&self) -> usize {
        self.request_bytes + self.reply_bytes + self.push_bytes - self.register_bytes
    }
}

/// What happens to one exchange of a round.
enum Fault {
    None,
    /// The reply is lost: the requester gives up the round.
    DropReply,
    /// The reply arrives twice.
    DuplicateReply,
    /// The request arrives twice (the responder answers both).
    DuplicateRequest,
    /// A write lands on the requester (true) or responder before the request is sent.
    Write(bool, Box<str>, Register),
}

fn through_request(req: &Request) -> (Request, usize) {
    let mut buf = Vec::new();
    req.encode(&mut buf);
    assert_eq!(buf.len(), req.encoded_len());
    let back = Request::decode(&buf).expect("a request decodes");
    assert_eq!(&back, req);
    (back, buf.len())
}

fn through_reply(reply: &Reply) -> (Reply, usize) {
    let mut buf = Vec::new();
    reply.encode(&mut buf);
    assert_eq!(buf.len(), reply.encoded_len());
    let back = Reply::decode(&buf).expect("a reply decodes");
    assert_eq!(&back, reply);
    (back, buf.len())
}

/// Merges a step's registers on the requester's side and pushes the others through the codec.
fn deliver(a: &mut Store, b: &mut Store, step: Step, t: &mut Traffic) -> Option<Request> {
    for (k, r) in step.merge {
        a.merge(&k, r);
    }
    if !step.push.is_empty() {
        let mut buf = Vec::new();
        encode_registers(&step.push, &mut buf);
        assert_eq!(buf.len(), registers_len(&step.push));
        t.push_bytes += buf.len();
        t.largest_push = t.largest_push.max(buf.len());
        t.register_bytes += buf.len() - varint_len(step.push.len() as u64);
        t.registers += step.push.len();
        for (k, r) in decode_registers(&buf).expect("a push decodes") {
            b.merge(&k, r);
        }
    }
    step.next
}

/// One round of `a` against `b`, every message through the codec; `fault` decides the fate
/// of each exchange. Returns whether the round ran to its end.
fn round(
    a: &mut Store,
    b: &mut Store,
    salt: u64,
    budget: usize,
    t: &mut Traffic,
    mut fault: impl FnMut() -> Fault,
) -> bool {
    let Some((mut session, mut req)) = Session::start(a, salt, budget, None) else {
        return true;
    };
    loop {
        let f = fault();
        if let Fault::Write(on_a, k, r) = &f {
            let side = if *on_a { &mut *a } else { &mut *b };
            side.merge(k, r.clone());
        }
        let (sent, n) = through_request(&req);
        t.request_bytes += n;
        t.round_trips += 1;
        if matches!(f, Fault::DuplicateRequest) {
            respond(b, &sent, budget).expect("a session's request is well-formed");
        }
        let reply = respond(b, &sent, budget).expect("a session's request is well-formed");
        let (reply, n) = through_reply(&reply);
        t.reply_bytes += n;
        t.register_bytes += reply.register_bytes();
        t.largest_reply = t.largest_reply.max(n);
        if let Reply::Entries { registers, .. } = &reply {
            t.registers += registers.len();
        }
        let next = match f {
            Fault::DropReply => return false,
            Fault::DuplicateReply => {
                let step = session.step(a, reply.clone()).expect("the reply fits");
                deliver(a, b, step, t);
                // The copy answers a request it was not for: either refused, or taken for
                // what it says (safe: merging is idempotent).
                match session.step(a, reply) {
                    Ok(step) => deliver(a, b, step, t),
                    Err(_) => return false,
                }
            }
            _ => {
                let step = session.step(a, reply).expect("the reply fits");
                deliver(a, b, step, t)
            }
        };
        match next {
            Some(r) => req = r,
            None => {
                assert!(session.is_done());
                return true;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Two stores holding any subsets, in any order and duplication, of the same writes end
    /// with the same registers and digests; lost and duplicated messages and writes during
    /// a round only delay that, and the first round without them converges.
    #[test]
    fn rounds_converge(
        writes in arb_writes(40),
        pick_a in prop::collection::vec(any::<Index>(), 0..60),
        pick_b in prop::collection::vec(any::<Index>(), 0..60),
        faults in prop::collection::vec((0u8..8, any::<Index>()), 0..16),
        salt in any::<u64>(),
        budget in prop_oneof![Just(1usize), Just(200), Just(DEFAULT_BUDGET)],
    ) {
        let mut expected = Store::new();
        let mut build = |picks: &[Index]| {
            let mut s = Store::new();
            for i in picks {
                let (k, r) = &writes[i.index(writes.len())];
                s.merge(k, r.clone());
                expected.merge(k, r.clone());
            }
            s
        };
        let mut a = build(&pick_a);
        let mut b = build(&pick_b);
        let mut faults = faults.into_iter();
        let mut t = Traffic::default();
        for r in 0.. {
            prop_assert!(r < 100, "no convergence after 100 rounds");
            let faulty = faults.len() > 0;
            let done = round(&mut a, &mut b, salt.wrapping_add(r), budget, &mut t, || {
                match faults.next() {
                    Some((0, _)) => Fault::DropReply,
                    Some((1, _)) => Fault::DuplicateReply,
                    Some((2, _)) => Fault::DuplicateRequest,
                    Some((w @ (3 | 4), i)) => {
                        let (k, reg) = writes[i.index(writes.len())].clone();
                        expected.merge(&k, reg.clone());
                        Fault::Write(w == 3, k, reg)
                    }
                    _ => Fault::None,
                }
            });
            if !faulty {
                prop_assert!(done);
                break;
            }
        }
        prop_assert_eq!(registers(&a), registers(&expected));
        prop_assert_eq!(registers(&b), registers(&expected));
        prop_assert_eq!(a.digest(), b.digest());
    }
}

/// `/k/00000`, `/k/00001`, ... with 256-byte values, at version millis `millis(i)`.
fn numbered(
    keys: impl Iterator<Item = u64>,
    millis: impl Fn(u64) -> u64,
) -> Vec<(Box<str>, Register)> {
    let value = format!("\"{}\"", "x".repeat(254));
    keys.map(|i| (format!("k\0{i:05}").into(), leaf(&value, millis(i), 1)))
        .collect()
}

#[test]
fn traffic_grows_with_the_difference() {
    // A holds 100,000 keys; B misses 500 of them and holds older versions of 500 others.
    let n = 100_000;
    let started = Instant::now();
    let newer = |i: u64| {
        if i % 200 == 100 {
            3_000_000 + i
        } else {
            1_000_000 + i
        }
    };
    let mut a = Store::from_registers(numbered(0..n, newer));
    let mut b = Store::from_registers(numbered((0..n).filter(|i| i % 200 != 0), |i| 1_000_000 + i));
    let built = started.elapsed();
    let started = Instant::now();
    let mut t = Traffic::default();
    assert!(round(&mut a, &mut b, 7, DEFAULT_BUDGET, &mut t, || {
        Fault::None
    }));
    let took = started.elapsed();
    eprintln!(
        "1,000 of 100,000 keys differ: {} round trips, {} B of requests, {} B of replies, \
         {} B of pushes; {} registers in {} B; digest traffic {} B; built in {built:?}, \
         reconciled in {took:?}",
        t.round_trips,
        t.request_bytes,
        t.reply_bytes,
        t.push_bytes,
        t.registers,
        t.register_bytes,
        t.digest_bytes(),
    );
    assert_eq!(registers(&a), registers(&b));
    assert_eq!(a.digest(), b.digest());
    assert!(t.digest_bytes() < 64 * 1024, "{t:?}");
    // The 500 missing and 500 newer registers, plus B's 500 stale copies going the other way.
    assert!(t.registers >= 1000 && t.registers <= 1500, "{t:?}");

    // Equal stores: one exchange of roots.
    let mut t = Traffic::default();
    assert!(round(&mut a, &mut b, 8, DEFAULT_BUDGET, &mut t, || {
        Fault::None
    }));
    assert_eq!(t.round_trips, 1);
    assert!(t.request_bytes + t.reply_bytes <= 32, "{t:?}");
}

#[test]
fn full_sync_pulls_into_an_empty_store_within_the_budget() {
    full_sync(true);
}

#[test]
fn full_sync_pushes_to_an_empty_store_within_the_budget() {
    full_sync(false);
}

/// An empty store and one of 100,000 keys: the empty one requests everything (`pull`) or
/// the full one pushes everything, every message within a 1 MiB budget.
fn full_sync(pull: bool) {
    let n = 100_000;
    let budget = 1 << 20;
    let all = Store::from_registers(numbered(0..n, |i| 1_000_000 + i));
    let (mut a, mut b) = if pull {
        (Store::new(), all)
    } else {
        (all, Store::new())
    };
    let started = Instant::now();
    let mut t = Traffic::default();
    assert!(round(&mut a, &mut b, 9, budget, &mut t, || Fault::None));
    eprintln!(
        "full sync ({}) of 100,000 keys: {} round trips, largest reply {} B, \
         largest push {} B, digest traffic {} B, registers {} B, in {:?}",
        if pull { "pull" } else { "push" },
        t.round_trips,
        t.largest_reply,
        t.largest_push,
        t.digest_bytes(),
        t.register_bytes,
        started.elapsed(),
    );
    assert!(t.largest_reply <= budget, "{t:?}");
    assert!(t.largest_push <= budget, "{t:?}");
    assert_eq!(t.registers, n as usize);
    assert_eq!(registers(&a).len(), n as usize);
    assert_eq!(registers(&a), registers(&b));
    assert_eq!(a.digest(), b.digest());
}

/// One message of every kind, from a real round where possible.
fn samples() -> (Vec<Request>, Vec<Reply>) {
    let a = Store::from_registers((0..40).map(|i| (format!("k{i}").into(), leaf("1", i, 1))));
    let b = Store::from_registers((20..60).map(|i| (format!("k{i}").into(), leaf("2", i, 2))));
    let (mut s, mut req) = Session::start(&a, 1, DEFAULT_BUDGET, None).unwrap();
    let (mut reqs, mut replies) = (Vec::new(), Vec::new());
    loop {
        let reply = respond(&b, &req, DEFAULT_BUDGET).unwrap();
        reqs.push(req);
        replies.push(reply.clone());
        match s.step(&a, reply).unwrap().next {
            Some(r) => req = r,
            None => break,
        }
    }
    replies.push(Reply::Entries {
        registers: vec![("a\0b".into(), leaf("[1]", 3, 4))],
        wanted: vec![true, false, true],
        incomplete: vec![7, 9],
    });
    let kinds = |r: &Request| std::mem::discriminant(r);
    for k in [
        Request::Root(Root::default()),
        Request::Compare {
            salt: 0,
            parent_level: 0,
            level: 1,
            parents: vec![0],
            hashes: vec![0; 4],
        },
        Request::Entries {
            salt: 0,
            buckets: vec![],
            elements: vec![],
        },
    ] {
        assert!(
            reqs.iter().any(|r| kinds(r) == kinds(&k)),
            "round lacks {k:?}"
        );
    }
    (reqs, replies)
}

fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut buf = Vec::new();
    f(&mut buf);
    buf
}

#[test]
fn truncated_or_extended_messages_are_rejected() {
    let (reqs, replies) = samples();
    let regs = vec![
        ("a".into(), leaf("1", 1, 1)),
        ("a\0b".into(), leaf("2", 2, 1)),
    ];
    type Decodes = fn(&[u8]) -> bool;
    let mut cases: Vec<(Vec<u8>, Decodes)> = Vec::new();
    for r in &reqs {
        cases.push((encoded(|b| r.encode(b)), |b| Request::decode(b).is_ok()));
    }
    for r in &replies {
        cases.push((encoded(|b| r.encode(b)), |b| Reply::decode(b).is_ok()));
    }
    cases.push((encoded(|b| encode_registers(&regs, b)), |b| {
        decode_registers(b).is_ok()
    }));
    cases.push((
        encoded(|b| {
            Root {
                count: 300,
                hash: 5,
            }
            .encode(b)
        }),
        |b| Root::decode(b).is_ok(),
    ));
    for (bytes, ok) in cases {
        assert!(ok(&bytes));
        for cut in 0..bytes.len() {
            assert!(!ok(&bytes[..cut]), "prefix {cut} of {bytes:?} decoded");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(!ok(&longer), "{longer:?} decoded");
    }
}

#[test]
fn hostile_input_is_rejected_without_allocating() {
    let huge = |tag: u8, salt: bool| {
        let mut b = vec![tag];
        if salt {
            b.extend_from_slice(&[0; 8]);
        }
        put_varint(&mut b, u64::MAX >> 1);
        b
    };
    assert!(Request::decode(&huge(TAG_ENTRIES, true)).is_err());
    assert!(Reply::decode(&huge(TAG_COMPARE, false)).is_err());
    assert!(Reply::decode(&huge(TAG_ENTRIES, false)).is_err());
    assert!(decode_registers(&huge(TAG_ROOT, false)[1..]).is_err());
    // A compare whose parents claim 4^8 hashes each.
    let mut b = vec![TAG_COMPARE];
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&[0, 8, 1, 0]);
    assert!(Request::decode(&b).is_err());
    // Overlong and overflowing varints, unused flag bits, bad keys, unknown tags.
    assert!(Root::decode(&[0x80, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    assert!(Root::decode(&[0xff; 18]).is_err());
    assert!(Reply::decode(&[TAG_COMPARE, 1, 0b10]).is_err());
    let deep = vec!["a"; path::MAX_SEGMENTS + 1].join("\0");
    for (key, text) in [
        ("a\0\0b", "1"),
        ("a\0..", "1"),
        (&*deep, "1"),
        ("a", "{nope"),
    ] {
        let bad = vec![(key.into(), leaf(text, 1, 1))];
        let bytes = encoded(|b| encode_registers(&bad, b));
        assert!(decode_registers(&bytes).is_err(), "{key:?} {text:?}");
    }
    assert!(Request::decode(&[9]).is_err());
    assert!(Reply::decode(&[]).is_err());
}

#[test]
fn malformed_requests_get_an_error() {
    let s = Store::new();
    let compare = |parents: Vec<u32>, n: usize| Request::Compare {
        salt: 0,
        parent_level: 1,
        level: 2,
        parents,
        hashes: vec![0; n],
    };
    assert!(respond(&s, &compare(vec![0, 3], 8), 100).is_ok());
    assert!(
        respond(&s, &compare(vec![3, 0], 8), 100).is_err(),
        "out of order"
    );
    assert!(
        respond(&s, &compare(vec![4], 4), 100).is_err(),
        "outside the level"
    );
    assert!(
        respond(&s, &compare(vec![0], 3), 100).is_err(),
        "a hash short"
    );
    let entries = Request::Entries {
        salt: 0,
        buckets: vec![1, 1],
        elements: vec![vec![], vec![]],
    };
    assert!(respond(&s, &entries, 100).is_err());
}

proptest! {
    /// Any bytes: decoding never panics, and what decodes re-encodes to the same bytes.
    #[test]
    fn decode_is_total_and_canonical(
        pick in any::<Index>(),
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 0..3),
        noise in prop::collection::vec(any::<u8>(), 0..48),
    ) {
        let (reqs, replies) = samples();
        let mut inputs = vec![noise];
        let r = &reqs[pick.index(reqs.len())];
        let p = &replies[pick.index(replies.len())];
        for mut bytes in [encoded(|b| r.encode(b)), encoded(|b| p.encode(b))] {
            for (at, v) in &edits {
                let i = at.index(bytes.len());
                bytes[i] = *v;
            }
            inputs.push(bytes);
        }
        for bytes in inputs {
            if let Ok(m) = Request::decode(&bytes) {
                prop_assert_eq!(encoded(|b| m.encode(b)), bytes.clone());
            }
            if let Ok(m) = Reply::decode(&bytes) {
                prop_assert_eq!(encoded(|b| m.encode(b)), bytes.clone());
            }
        }
    }
}
