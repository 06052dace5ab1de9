//! Tests of the merge and visibility rules: the single-node results the README promises, and
//! convergence for any order and duplication of the same registers.

use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};

/// A node's store plus its clock, applying local writes the way the writer does.
struct Node {
    store: Store,
    clock: Hlc,
}

impl Node {
    fn new(id: u64) -> Node {
        Node {
            store: Store::new(),
            clock: Hlc::new(id, Version::ZERO),
        }
    }

    fn apply(&mut self, op: Op, now: u64) -> Vec<(Box<str>, Register)> {
        let v = self.clock.tick(now);
        let (regs, _) = self.store.plan_local(op, v, now);
        for (k, r) in &regs {
            self.store.merge(k, r.clone());
        }
        regs
    }

    fn put(&mut self, p: &str, v: Value) -> Vec<(Box<str>, Register)> {
        self.apply(Op::put(Path::parse(p).unwrap(), &v, None).unwrap(), 1000)
    }

    fn del(&mut self, p: &str) -> Vec<(Box<str>, Register)> {
        self.apply(
            Op::Delete {
                path: Path::parse(p).unwrap(),
            },
            1000,
        )
    }

    fn doc(&self) -> Value {
        doc_at(&self.store, 1000)
    }
}

fn doc_at(s: &Store, now: u64) -> Value {
    let mut out = String::new();
    assert!(s.render("", now, &mut out));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("render gave bad JSON {out:?}: {e}"))
}

#[test]
fn leaf_then_child_makes_a_directory() {
    let mut n = Node::new(1);
    n.put("/a", json!(1));
    n.put("/a/b", json!(2));
    assert_eq!(n.doc(), json!({"a": {"b": 2}}));
    // removing the child leaves an empty directory, not the old leaf
    n.del("/a/b");
    assert_eq!(n.doc(), json!({"a": {}}));
}

#[test]
fn object_put_replaces_the_subtree() {
    let mut n = Node::new(1);
    n.put("/a/old", json!("x"));
    n.put("/a/keep", json!(true));
    n.put("/a", json!({"x": 1, "y": {"z": [1, 2]}, "e": {}}));
    assert_eq!(n.doc(), json!({"a": {"x": 1, "y": {"z": [1, 2]}, "e": {}}}));
}

#[test]
fn delete_removes_the_subtree_and_later_writes_reappear() {
    let mut n = Node::new(1);
    n.put("/a", json!({"b": 1, "c": {"d": 2}}));
    n.put("/z", json!(null));
    n.del("/a");
    assert_eq!(n.doc(), json!({"z": null}));
    n.put("/a/c/e", json!("new"));
    assert_eq!(n.doc(), json!({"a": {"c": {"e": "new"}}, "z": null}));
    assert_eq!(n.store.lookup("a\0b", 1000), Lookup::Missing);
}

#[test]
fn implied_directories_and_lookup() {
    let mut n = Node::new(1);
    n.put("/x/y/z", json!(1));
    assert_eq!(n.doc(), json!({"x": {"y": {"z": 1}}}));
    assert_eq!(n.store.lookup("x", 1000), Lookup::Dir);
    assert!(matches!(n.store.lookup("x\0y\0z", 1000), Lookup::Leaf(_)));
    assert_eq!(n.store.lookup("nope", 1000), Lookup::Missing);
    n.del("/x/y/z");
    // an implied directory disappears with its last key
    assert_eq!(n.doc(), json!({}));
}

#[test]
fn rendering_escapes_keys_and_orders_by_bytes() {
    let mut n = Node::new(1);
    n.put(
        "/q",
        json!({"a\"b": 1, "tab\t": 2, "a": {"b!": 3, "b": {"c": 4}}, "é": "ü"}),
    );
    assert_eq!(
        n.doc(),
        json!({"q": {"a\"b": 1, "tab\t": 2, "a": {"b!": 3, "b": {"c": 4}}, "é": "ü"}})
    );
    let mut out = String::new();
    n.store.render("q\0a", 1000, &mut out);
    assert_eq!(out, r#"{"b":{"c":4},"b!":3}"#);
}

#[test]
fn internal_keys_stay_out_of_the_document() {
    let mut n = Node::new(1);
    n.put("/.herd/tokens/a", json!({"hash": "x"}));
    n.put("/app", json!(1));
    assert_eq!(n.doc(), json!({"app": 1}));
    assert_eq!(
        n.store.children("", 1000).unwrap().unwrap(),
        vec![("app".into(), false)]
    );
    let mut out = String::new();
    assert!(n.store.render(".herd\0tokens", 1000, &mut out));
    assert_eq!(out, r#"{"a":{"hash":"x"}}"#);
}

#[test]
fn children_lists_names_and_kinds() {
    let mut n = Node::new(1);
    n.put("/app", json!({"name": "x", "db": {"port": 1}, "empty": {}}));
    n.put("/app/name/sub", json!(1)); // leaf becomes a directory
    n.put("/app/gone", json!(1));
    n.del("/app/gone");
    let kids = n.store.children("app", 1000).unwrap().unwrap();
    assert_eq!(
        kids,
        vec![
            ("db".into(), true),
            ("empty".into(), true),
            ("name".into(), true)
        ]
    );
    assert_eq!(n.store.children("app\0db\0port", 1000), Some(Err(())));
    assert_eq!(n.store.children("missing", 1000), None);
    let root = n.store.children("", 1000).unwrap().unwrap();
    assert_eq!(root, vec![("app".into(), true)]);
}

#[test]
fn etag_is_newest_version_in_subtree() {
    let mut n = Node::new(1);
    let v1 = n.put("/a/b", json!(1))[0].1.version;
    assert_eq!(n.store.etag("a\0b", 1000), Some(v1));
    let v2 = n.put("/a/c", json!(1))[0].1.version;
    assert_eq!(n.store.etag("a", 1000), Some(v2));
    let v3 = n.del("/a/c")[0].1.version;
    assert_eq!(n.store.etag("a", 1000), Some(v3));
    assert_eq!(n.store.etag("a\0c", 1000), None);
}

#[test]
fn ttl_expires_locally_and_renewal_wins() {
    let mut n = Node::new(1);
    let op = Op::put(Path::parse("/lease").unwrap(), &json!("me"), Some(5_000)).unwrap();
    n.apply(op, 1_000);
    assert_eq!(doc_at(&n.store, 5_999), json!({"lease": "me"}));
    assert_eq!(doc_at(&n.store, 6_000), json!({}));
    assert_eq!(n.store.next_expiry(), Some(6_000));
    assert_eq!(n.store.due_expiries(5_999).len(), 0);
    assert_eq!(n.store.due_expiries(6_000).len(), 1);
    // a renewal that arrives after the expiry time still wins: it is a newer register
    let op = Op::put(Path::parse("/lease").unwrap(), &json!("me"), Some(5_000)).unwrap();
    n.apply(op, 6_500);
    assert_eq!(doc_at(&n.store, 7_000), json!({"lease": "me"}));
    assert_eq!(n.store.next_expiry(), Some(11_500));
}

#[test]
fn a_register_replaced_in_the_same_millisecond_keeps_its_index_entries() {
    // The new register's (time, key) entry equals the old one's: replacing must not drop it.
    let mut n = Node::new(1);
    let lease = || Op::put(Path::parse("/lease").unwrap(), &json!("me"), Some(5_000)).unwrap();
    n.apply(lease(), 1_000);
    n.apply(lease(), 1_000);
    assert_eq!(n.store.next_expiry(), Some(6_000));
    assert_eq!(n.store.due_expiries(6_000).len(), 1);
    n.put("/d", json!(1));
    n.del("/d");
    n.del("/d");
    assert_eq!(n.store.tombstone_count(), 1);
    assert_eq!(
        n.store.due_tombstones(0, u64::MAX),
        vec![Box::<str>::from("d")]
    );
}

#[test]
fn expired_leaves_and_deletions_are_collected_once_held_everywhere() {
    let mut n = Node::new(1);
    n.apply(
        Op::put(Path::parse("/t").unwrap(), &json!(1), Some(10)).unwrap(),
        1_000,
    );
    n.put("/d", json!(1));
    n.del("/d");
    assert!(n.store.announce_expiry("t"));
    assert!(!n.store.announce_expiry("t"));
    assert_eq!(n.store.tombstone_count(), 2);
    let due = n.store.due_tombstones(0, u64::MAX);
    assert_eq!(due.len(), 2);
    n.store.collect(&due, 7);
    assert!(n.store.is_empty());
    assert_eq!(n.store.tombstone_count(), 0);
    assert_eq!(n.store.collected_count(), 2);
    n.store.forget_collected(6);
    assert_eq!(n.store.collected_count(), 2, "collected after 6");
    n.store.forget_collected(7);
    assert_eq!(n.store.collected_count(), 0);
}

fn reg_at(kind: Kind, millis: u64) -> Register {
    Register {
        kind,
        version: Version {
            millis,
            counter: 0,
            node: 2,
        },
        expires: None,
    }
}

#[test]
fn a_tombstone_is_due_only_once_held_as_of_its_arrival() {
    let mut s = Store::new();
    let plan = s.plan(vec![("old".into(), reg_at(Kind::Deleted, 10))]);
    s.apply(plan, 5);
    // A deletion with an older version that arrives later is due later: what matters is when
    // this store got it, not when it was made.
    let plan = s.plan(vec![("late".into(), reg_at(Kind::Deleted, 3))]);
    s.apply(plan, 9);
    assert!(s.due_tombstones(4, u64::MAX).is_empty());
    assert_eq!(s.due_tombstones(5, u64::MAX), vec![Box::<str>::from("old")]);
    assert_eq!(s.due_tombstones(8, u64::MAX).len(), 1);
    assert_eq!(s.due_tombstones(u64::MAX, u64::MAX).len(), 2);
    assert_eq!(
        s.due_tombstones(u64::MAX, 10),
        vec![Box::<str>::from("late")],
        "and only once made before the floor"
    );
}

#[test]
fn tombstones_loaded_from_disk_wait_for_a_member_seen_after_the_load() {
    let s = Store::loaded(vec![("gone".into(), reg_at(Kind::Deleted, 10))], 5);
    assert!(
        s.due_tombstones(0, u64::MAX).is_empty(),
        "nobody was seen holding anything since the start"
    );
    assert_eq!(s.due_tombstones(5, u64::MAX).len(), 1);
}

#[test]
fn what_a_collected_tombstone_covers_does_not_come_back_and_its_sender_is_told() {
    let mut s = Store::new();
    let plan = s.plan(vec![("a".into(), reg_at(Kind::Deleted, 10))]);
    s.apply(plan, 1);
    s.collect(&s.due_tombstones(1, u64::MAX), 2);
    assert!(s.is_empty());
    let batch = vec![
        // The tombstone itself, back from a peer that has not collected it yet.
        ("a".into(), reg_at(Kind::Deleted, 10)),
        // Something older below it.
        ("a\0b".into(), reg_at(Kind::Leaf("1".into()), 5)),
        // A newer write enters.
        ("a\0c".into(), reg_at(Kind::Leaf("2".into()), 11)),
    ];
    let plan = s.plan(batch);
    let keys: Vec<&str> = plan.puts.iter().map(|(k, _)| &**k).collect();
    assert_eq!(keys, ["a\0c"]);
    assert_eq!(
        plan.collected,
        vec![
            ("a\0b".into(), reg_at(Kind::Deleted, 5).version),
            ("a".into(), reg_at(Kind::Deleted, 10).version)
        ]
    );
    // The peer, told, collects exactly the registers it sent.
    let mut peer = Store::new();
    let plan = peer.plan(vec![
        ("a".into(), reg_at(Kind::Deleted, 10)),
        ("x".into(), reg_at(Kind::Deleted, 12)),
    ]);
    peer.apply(plan, 1);
    let told = [
        ("a".into(), reg_at(Kind::Deleted, 10).version),
        ("x".into(), reg_at(Kind::Deleted, 11).version),
    ];
    assert_eq!(peer.collected_by_peer(&told), vec![Box::<str>::from("a")]);
}

#[test]
fn covered_registers_are_ignored_and_duplicates_are_idempotent() {
    let mut s = Store::new();
    let v = |m| Version {
        millis: m,
        counter: 0,
        node: 1,
    };
    let leaf = |m| Register {
        kind: Kind::Leaf("1".into()),
        version: v(m),
        expires: None,
    };
    let del = |m| Register {
        kind: Kind::Deleted,
        version: v(m),
        expires: None,
    };
    assert!(s.merge("a", del(5)));
    assert!(
        !s.merge("a\0b", leaf(4)),
        "older write under a newer delete stays deleted"
    );
    assert!(s.merge("a\0b", leaf(6)));
    assert!(!s.merge("a\0b", leaf(6)), "duplicate");
    assert!(s.merge("a", del(7)));
    assert!(s.register("a\0b").is_none(), "covered register dropped");
    assert_eq!(s.len(), 1);
}

/// A random register at a path drawn from a small tree, so coverings happen often.
fn arb_register() -> impl Strategy<Value = (Box<str>, Register)> {
    let key = prop::sample::select(vec!["a", "a\0b", "a\0b\0c", "a\0d", "e", "e\0f", "a\0b\0g"]);
    let kind = prop_oneof![
        (0u8..4).prop_map(|n| Kind::Leaf(n.to_string().into())),
        Just(Kind::Object),
        Just(Kind::Deleted),
    ];
    (
        key,
        kind,
        0u64..20,
        0u32..2,
        1u64..4,
        prop::option::of(0u64..30),
    )
        .prop_map(|(k, kind, millis, counter, node, ttl)| {
            let expires = match kind {
                Kind::Leaf(_) => ttl.and_then(std::num::NonZeroU64::new),
                _ => None,
            };
            (
                k.into(),
                Register {
                    kind,
                    version: Version {
                        millis,
                        counter,
                        node,
                    },
                    expires,
                },
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any order and duplication of the same registers gives the same store and document.
    #[test]
    fn merge_converges(
        regs in prop::collection::vec(arb_register(), 1..24),
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..48),
        now in 0u64..40,
    ) {
        // One version writes a path at most once (a batch may use it for several paths): drop
        // clashing draws.
        let mut seen = std::collections::HashSet::new();
        let regs: Vec<_> = regs.into_iter().filter(|(k, r)| {
            seen.insert((r.version, k.clone())) && r.version.millis > 0
        }).collect();
        prop_assume!(!regs.is_empty());
        let mut a = Store::new();
        for (k, r) in &regs {
            a.merge(k, r.clone());
        }
        let mut b = Store::new();
        for i in &order {
            let (k, r) = &regs[i.index(regs.len())];
            b.merge(k, r.clone());
        }
        for (k, r) in regs.iter().rev() {
            b.merge(k, r.clone());
        }
        let ra: Vec<_> = a.registers().map(|(k, r)| (k.to_owned(), r.clone())).collect();
        let rb: Vec<_> = b.registers().map(|(k, r)| (k.to_owned(), r.clone())).collect();
        prop_assert_eq!(&ra, &rb);
        prop_assert_eq!(doc_at(&a, now), doc_at(&b, now));
        // No stored register is covered by another.
        for (k, r) in a.registers() {
            prop_assert!(!a.is_covered(k, r) || a.register(k) == Some(r));
            for anc in path::key_ancestors(k) {
                prop_assert!(a.register(anc).is_none_or(|x| x.version <= r.version));
            }
        }
        // Loading the registers back (as after a restart) gives the same store.
        let c = Store::from_registers(ra.iter().map(|(k, r)| (k.as_str().into(), r.clone())));
        prop_assert_eq!(doc_at(&c, now), doc_at(&a, now));
    }

    /// The rendered document agrees with lookups and listings of every path.
    #[test]
    fn render_lookup_children_agree(regs in prop::collection::vec(arb_register(), 1..16), now in 0u64..40) {
        let mut s = Store::new();
        for (k, r) in regs {
            s.merge(&k, r);
        }
        let doc = doc_at(&s, now);
        for key in ["a", "a\0b", "a\0b\0c", "a\0d", "e", "e\0f", "a\0b\0g"] {
            let ptr = format!("/{}", key.replace('\0', "/"));
            let expected = doc.pointer(&ptr);
            let mut out = String::new();
            let found = s.render(key, now, &mut out);
            prop_assert_eq!(found, expected.is_some());
            if let Some(e) = expected {
                let got: Value = serde_json::from_str(&out).unwrap();
                prop_assert_eq!(&got, e);
                match s.children(key, now).unwrap() {
                    Ok(kids) => {
                        let obj = e.as_object().expect("directory renders as object");
                        let names: Vec<_> = obj.keys().cloned().collect();
                        prop_assert_eq!(kids.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), names);
                        for (n, is_dir) in kids {
                            prop_assert_eq!(is_dir, obj[&n].is_object());
                        }
                    }
                    Err(()) => prop_assert!(!e.is_object()),
                }
            }
        }
    }
}

/// A random local write at a path of the same small tree, with an optional time to live.
fn arb_op() -> impl Strategy<Value = (Op, u64)> {
    let path = prop::sample::select(vec!["/a", "/a/b", "/a/b/c", "/a/d", "/e", "/e/f"]);
    let value = prop_oneof![
        (0u8..4).prop_map(|n| json!(n)),
        Just(json!({"x": 1, "y": {"z": 2}})),
        Just(json!({})),
    ];
    (
        path,
        value,
        prop::option::of(1u64..30),
        any::<bool>(),
        0u64..40,
    )
        .prop_map(|(p, v, ttl, delete, now)| {
            let path = Path::parse(p).unwrap();
            let ttl = ttl.filter(|_| !v.is_object());
            let op = if delete {
                Op::Delete { path }
            } else {
                Op::put(path, &v, ttl).unwrap()
            };
            (op, now)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A local write's registers, planned by the merge rule and applied, leave exactly the
    /// store that merging them one by one leaves (registers, digest, document, expiries and
    /// tombstones), and none of them is left out as covered.
    #[test]
    fn a_local_write_plans_like_merging_its_registers(ops in prop::collection::vec(arb_op(), 1..24)) {
        let mut merged = Node::new(1);
        let mut planned = Store::new();
        let mut clock = Hlc::new(1, Version::ZERO);
        let mut now = 0;
        for (op, t) in ops {
            now = now.max(t);
            let regs = merged.apply(op.clone(), now);
            let v = clock.tick(now);
            let (regs2, _) = planned.plan_local(op.clone(), v, now);
            prop_assert_eq!(&regs, &regs2);
            let plan = planned.plan(regs2);
            prop_assert_eq!(plan.puts.len(), regs.len(), "a local write is never covered");
            planned.apply(plan, 1);
            let ra: Vec<_> = merged.store.registers().map(|(k, r)| (k.to_owned(), r.clone())).collect();
            let rb: Vec<_> = planned.registers().map(|(k, r)| (k.to_owned(), r.clone())).collect();
            prop_assert_eq!(&ra, &rb);
            prop_assert!(merged.store.digest() == planned.digest());
            prop_assert_eq!(doc_at(&merged.store, now), doc_at(&planned, now));
            prop_assert_eq!(merged.store.due_expiries(now + 100), planned.due_expiries(now + 100));
            prop_assert_eq!(
                merged.store.due_tombstones(u64::MAX, u64::MAX),
                planned.due_tombstones(u64::MAX, u64::MAX)
            );
        }
    }

    /// Planning a batch (in any order, with duplicates) and applying the plan equals merging
    /// its registers one at a time, equals the set of registers nothing else ever merged
    /// covers; and replaying the plan as the log does (remove its removals, put its registers,
    /// no second planning) rebuilds the same registers.
    #[test]
    fn a_planned_batch_equals_merging_one_at_a_time(
        base in prop::collection::vec(arb_register(), 0..16),
        batch in prop::collection::vec(arb_register(), 1..16),
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..32),
        repeats in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        // One version writes a path at most once: drop clashing draws.
        let mut seen = std::collections::HashSet::new();
        let mut unique = |regs: Vec<(Box<str>, Register)>| -> Vec<(Box<str>, Register)> {
            regs.into_iter().filter(|(k, r)| seen.insert((r.version, k.clone()))).collect()
        };
        let base = unique(base);
        let batch = unique(batch);
        prop_assume!(!batch.is_empty());
        let mut start = Store::new();
        for (k, r) in &base {
            start.merge(k, r.clone());
        }
        // The batch as it arrives: shuffled by `order`, with some registers repeated.
        let mut arriving = batch.clone();
        for (i, j) in order.iter().enumerate() {
            let n = arriving.len();
            arriving.swap(i % n, j.index(n));
        }
        for i in &repeats {
            arriving.push(batch[i.index(batch.len())].clone());
        }
        let plan = start.plan(arriving.clone());
        let mut planned = start.clone();
        planned.apply(plan.clone(), 0);
        let mut one_by_one = start.clone();
        for (k, r) in arriving.iter().rev() {
            one_by_one.merge(k, r.clone());
        }
        let regs = |s: &Store| -> Vec<(String, Register)> {
            s.registers().map(|(k, r)| (k.to_owned(), r.clone())).collect()
        };
        prop_assert_eq!(regs(&planned), regs(&one_by_one));
        prop_assert!(planned.digest() == one_by_one.digest());
        prop_assert_eq!(planned.due_tombstones(u64::MAX, u64::MAX), one_by_one.due_tombstones(u64::MAX, u64::MAX));
        prop_assert_eq!(planned.due_expiries(100), one_by_one.due_expiries(100));
        // The registers that nothing else ever merged covers.
        let everything: Vec<_> = base.iter().chain(&batch).collect();
        let mut uncovered: Vec<(String, Register)> = everything
            .iter()
            .filter(|(k, r)| {
                !everything.iter().any(|(k2, r2)| {
                    r2.version > r.version && (k2 == k || path::key_ancestors(k).any(|a| a == &**k2))
                })
            })
            .map(|(k, r)| (k.to_string(), r.clone()))
            .collect();
        uncovered.sort_by(|a, b| a.0.cmp(&b.0));
        prop_assert_eq!(regs(&planned), uncovered);
        // Replayed as the log and the database file replay it.
        let mut replay: BTreeMap<String, Register> = regs(&start).into_iter().collect();
        for k in &plan.removes {
            prop_assert!(start.register(k).is_some(), "a plan removes only registers it was made against");
            replay.remove(&**k);
        }
        for (k, r) in &plan.puts {
            replay.insert(k.to_string(), r.clone());
        }
        prop_assert_eq!(replay.into_iter().collect::<Vec<_>>(), regs(&planned));
        // Planning the same batch again against the result changes nothing.
        prop_assert_eq!(planned.plan(arriving), Plan::default());
    }
}
