//! Crash safety with a real `herd serve` process: concurrent writers, SIGKILL while writes are
//! in flight, restart on the same data directory. Every acknowledged write must be there with
//! its value and version, acknowledged deletes must stay deleted, and versions and revisions
//! must keep growing after the restart.
//!
//! The same with power cuts: the data directory on `faultfs`, which keeps unsynced data in
//! memory and, at the cut, writes back a random half of it and drops the rest
//! (`tests::faultfs`). Cuts land under write load and during a graceful shutdown (whose last
//! checkpoint writes the database file), with the log written directly and buffered.

use bytes::Bytes;
use http::{header, Method};
use node::client::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tests::faultfs::FaultMount;
use tests::ChildNode;

const WRITERS: usize = 8;
/// A round ends (with SIGKILL) after this many acknowledged writes, or after `ROUND_TIME`.
const ROUND_WRITES: usize = 2000;
const ROUND_TIME: Duration = Duration::from_millis(1500);

/// `<millis>-<counter>-<node>` as a comparable tuple.
fn version(s: &str) -> (u64, u64, u64) {
    let mut parts = s.split('-');
    let mut next = |radix| {
        u64::from_str_radix(parts.next().expect("version part"), radix).expect("version number")
    };
    (next(10), next(10), next(16))
}

/// What one writer knows about its own keys.
#[derive(Default)]
struct Writer {
    /// Acknowledged state per key: the value and version of the last acknowledged put, or `None`
    /// after an acknowledged delete.
    acked: BTreeMap<String, Option<(Value, String)>>,
    /// The write in flight when the node died: key and value (`None` for a delete). Its outcome
    /// is unknown, so either state is allowed for that key.
    in_flight: Option<(String, Option<Value>)>,
    /// Operations started so far, for unique values.
    ops: usize,
    /// Highest acknowledged version and revision.
    max_version: (u64, u64, u64),
    max_revision: u64,
}

impl Writer {
    /// Writes until a request fails (the node was killed).
    async fn run(
        mut self,
        id: usize,
        client: Client,
        acks: Arc<AtomicUsize>,
        killed: Arc<AtomicBool>,
    ) -> Writer {
        self.in_flight = None;
        loop {
            self.ops += 1;
            let n = self.ops;
            let present: Vec<String> = self
                .acked
                .iter()
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| k.clone())
                .collect();
            // Mostly new keys; every 3rd op overwrites, every 5th deletes an existing key.
            let (key, value) = if n.is_multiple_of(5) && !present.is_empty() {
                (present[n % present.len()].clone(), None)
            } else if n.is_multiple_of(3) && !present.is_empty() {
                (
                    present[(n * 7) % present.len()].clone(),
                    Some(json!({"writer": id, "op": n})),
                )
            } else {
                (
                    format!("/crash/w{id}/k{n}"),
                    Some(json!(format!("w{id}-op{n}"))),
                )
            };
            self.in_flight = Some((key.clone(), value.clone()));
            let path = format!("/v1/kv{key}");
            let result = match &value {
                Some(v) => {
                    client
                        .request(Method::PUT, &path, &[], Some(Bytes::from(v.to_string())))
                        .await
                }
                None => client.request(Method::DELETE, &path, &[], None).await,
            };
            let response = match result {
                Ok(r) => r,
                Err(e) => {
                    assert!(
                        killed.load(Ordering::SeqCst),
                        "writer {id} failed before the kill: {e}"
                    );
                    return self;
                }
            };
            // Cut off by the kill, the power cut or the shutdown: the outcome is unknown.
            if response.status != 200 && killed.load(Ordering::SeqCst) {
                return self;
            }
            assert_eq!(
                response.status, 200,
                "writer {id}: {key}: {:?}",
                response.body
            );
            let body = response.json().expect("json");
            let v = body["version"].as_str().expect("version").to_owned();
            self.max_version = self.max_version.max(version(&v));
            self.max_revision = self
                .max_revision
                .max(body["revision"].as_u64().expect("revision"));
            self.acked.insert(key, value.map(|value| (value, v)));
            self.in_flight = None;
            acks.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Runs the writers against `node` until `max_writes` writes are acknowledged or `round_time`
/// has passed, then stops it with `kill` (SIGKILL, at the least) while they are still writing.
async fn write_then_kill(
    node: &mut ChildNode,
    writers: Vec<Writer>,
    (max_writes, round_time): (usize, Duration),
    kill: impl FnOnce(&mut ChildNode),
) -> Vec<Writer> {
    let acks = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let client = node.client();
    let tasks: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(id, w)| tokio::spawn(w.run(id, client.clone(), acks.clone(), killed.clone())))
        .collect();
    let start = Instant::now();
    while acks.load(Ordering::SeqCst) < max_writes && start.elapsed() < round_time {
        // Awaited: enough acknowledged writes or the round's time, whichever comes first.
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            tasks.iter().all(|t| !t.is_finished()),
            "a writer stopped before the kill"
        );
    }
    killed.store(true, Ordering::SeqCst);
    kill(node);
    node.kill9();
    let mut writers = Vec::new();
    for t in tasks {
        writers.push(t.await.expect("writer task"));
    }
    assert!(
        acks.load(Ordering::SeqCst) >= WRITERS,
        "only {} writes were acknowledged",
        acks.load(Ordering::SeqCst)
    );
    assert!(
        writers.iter().all(|w| w.in_flight.is_some()),
        "every writer was cut off mid-write"
    );
    writers
}

/// Checks that the restarted node holds every acknowledged write.
async fn verify(client: &Client, writers: &[Writer]) {
    let mut checked = 0;
    for (id, w) in writers.iter().enumerate() {
        for (key, acked) in &w.acked {
            let r = client
                .request(Method::GET, &format!("/v1/kv{key}"), &[], None)
                .await
                .expect("GET");
            let in_flight = w
                .in_flight
                .as_ref()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v);
            let got = match r.status.as_u16() {
                200 => Some(r.json().expect("json")),
                404 => None,
                s => panic!("GET {key}: {s} {:?}", r.body),
            };
            let expected = acked.as_ref().map(|(v, _)| v.clone());
            if got == expected {
                if let Some((_, version)) = acked {
                    assert_eq!(
                        r.headers[header::ETAG],
                        format!("\"{version}\""),
                        "{key} has its acknowledged version"
                    );
                }
            } else {
                assert_eq!(
                    in_flight,
                    Some(&got),
                    "writer {id}: {key} is {got:?}, acknowledged {expected:?}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 0);
    // Nothing unacknowledged appeared: every key in the store was written by someone.
    let doc: Value = client
        .request(Method::GET, "/v1/kv/crash", &[], None)
        .await
        .expect("GET")
        .json()
        .expect("json");
    for (id, w) in writers.iter().enumerate() {
        let Some(keys) = doc[format!("w{id}")].as_object() else {
            continue;
        };
        for (k, v) in keys {
            let key = format!("/crash/w{id}/{k}");
            let known = w
                .acked
                .get(&key)
                .is_some_and(|a| a.as_ref().map(|(v, _)| v) == Some(v))
                || w.in_flight
                    .as_ref()
                    .is_some_and(|(f, fv)| *f == key && fv.as_ref() == Some(v));
            assert!(known, "{key} = {v} was never written");
        }
    }
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = ChildNode::start(dir.path())
        .await
        .expect("herd serve starts");
    let mut writers: Vec<Writer> = (0..WRITERS).map(|_| Writer::default()).collect();
    for round in 0..2 {
        writers = write_then_kill(&mut node, writers, (ROUND_WRITES, ROUND_TIME), |_| {}).await;
        drop(node);
        node = ChildNode::start(dir.path())
            .await
            .expect("herd serve restarts on the same data dir");
        after_restart(&node.client(), &mut writers, round).await;
    }
}

/// Power cuts in a row (`HERD_POWER_CUTS`, 8 by default), each followed by a restart that must
/// succeed and hold every acknowledged write. Prints what the cuts dropped.
#[tokio::test]
async fn acknowledged_writes_survive_power_cuts() {
    let cuts: usize = std::env::var("HERD_POWER_CUTS")
        .ok()
        .map_or(8, |n| n.parse().expect("HERD_POWER_CUTS is a number"));
    let dir = tempfile::tempdir().unwrap();
    let (backing, mnt) = (dir.path().join("disk"), dir.path().join("mnt"));
    std::fs::create_dir(&backing).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let data = mnt.join("data");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("power cuts: seed {seed}");
    let mount =
        |round: usize| FaultMount::mount(&backing, &mnt, round % 4 >= 2, seed + round as u64);
    let Some(mut fs) = mount(0) else { return };
    let mut node = ChildNode::start(&data).await.expect("herd serve starts");
    let mut writers: Vec<Writer> = (0..WRITERS).map(|_| Writer::default()).collect();
    let (mut kept, mut lost, mut checked) = (0, 0, 0);
    for round in 0..cuts {
        // Under load at a point that varies, or during a graceful shutdown's last checkpoint.
        let r = seed
            .wrapping_add(round as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            >> 40;
        let graceful = round % 2 == 1;
        let round_time = Duration::from_millis(200 + r % 1300);
        let during_shutdown = Duration::from_millis(r % 40);
        writers = write_then_kill(&mut node, writers, (usize::MAX, round_time), |node| {
            if graceful {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &node.child.id().to_string()])
                    .status();
                std::thread::sleep(during_shutdown);
            }
            let (k, l) = fs.cut();
            (kept, lost) = (kept + k, lost + l);
        })
        .await;
        drop(node);
        drop(fs);
        fs = mount(round + 1).expect("faultfs mounts again");
        node = ChildNode::start(&data).await.unwrap_or_else(|e| {
            panic!("round {round}: herd serve does not start after a power cut: {e:#}")
        });
        checked += writers.iter().map(|w| w.acked.len()).sum::<usize>();
        after_restart(&node.client(), &mut writers, round).await;
    }
    eprintln!(
        "power cuts: {cuts} cuts, every restart clean; {checked} acknowledged keys checked; \
         the cuts wrote back {kept} unsynced pages and dropped {lost}"
    );
}

/// After a restart: every acknowledged write is there, versions and revisions keep growing,
/// and the cut-off writes' outcomes become part of the model.
async fn after_restart(client: &Client, writers: &mut [Writer], round: usize) {
    verify(client, writers).await;
    // Versions and revisions keep growing across the crash.
    let max_version = writers.iter().map(|w| w.max_version).max().unwrap();
    let max_revision = writers.iter().map(|w| w.max_revision).max().unwrap();
    let status = client
        .request(Method::GET, "/v1/status", &[], None)
        .await
        .unwrap()
        .json()
        .unwrap();
    assert!(
        status["revision"].as_u64().unwrap() >= max_revision,
        "round {round}: {status}"
    );
    let r = client
        .request(
            Method::PUT,
            "/v1/kv/after-crash",
            &[],
            Some(Bytes::from(round.to_string())),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let body = r.json().unwrap();
    let v = version(body["version"].as_str().unwrap());
    assert!(
        v > max_version,
        "round {round}: new version {v:?} is not after {max_version:?}"
    );
    assert!(
        body["revision"].as_u64().unwrap() > max_revision,
        "round {round}: {body}"
    );

    // The outcome of each cut-off write is known now: take it into the model.
    for w in writers.iter_mut() {
        let (key, _) = w.in_flight.take().expect("cut off mid-write");
        let r = client
            .request(Method::GET, &format!("/v1/kv{key}"), &[], None)
            .await
            .unwrap();
        let state = (r.status == 200).then(|| {
            let etag = r.headers[header::ETAG]
                .to_str()
                .unwrap()
                .trim_matches('"')
                .to_owned();
            (r.json().unwrap(), etag)
        });
        w.acked.insert(key, state);
    }
}
