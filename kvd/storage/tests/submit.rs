//! Async submission (`Engine::submit`): tickets resolve once the write is durable, share
//! commit groups (and fsyncs) with each other and with blocking writers, keep their order, hold
//! what they are given until the write is visible, and never hang at close.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use kvd_storage::{Engine, Error, Options, SyncMode, WriteBatch};

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `f` on this thread, parking between polls: proves that the ticket wakes its waker.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

fn put(key: &[u8], value: &[u8]) -> WriteBatch {
    let mut b = WriteBatch::new();
    b.put(key, value);
    b
}

fn opts(sync: SyncMode) -> Options {
    Options {
        sync,
        flush_on_close: false,
        ..Options::default()
    }
}

#[test]
fn async_and_blocking_writers_share_fsyncs_and_every_write_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let e = Arc::new(Engine::open(dir.path(), opts(SyncMode::Always)).unwrap());
    const THREADS: usize = 16;
    const PER: usize = 100;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let e = e.clone();
            std::thread::spawn(move || {
                for i in 0..PER {
                    let key = format!("t{t}-{i}");
                    if t % 4 == 0 {
                        e.put(key.as_bytes(), b"blocking").unwrap();
                    } else {
                        let ticket = e.submit(put(key.as_bytes(), b"async"), ()).unwrap();
                        block_on(ticket).unwrap();
                    }
                    // Acknowledged means visible.
                    assert!(e.get(key.as_bytes()).unwrap().is_some(), "{key}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = e.stats();
    assert_eq!(s.writes, (THREADS * PER) as u64);
    assert!(
        s.wal_syncs < s.writes,
        "{} fsyncs for {} writes: no group was shared",
        s.wal_syncs,
        s.writes
    );
    drop(Arc::try_unwrap(e).ok().unwrap());
    let e = Engine::open(dir.path(), opts(SyncMode::Always)).unwrap();
    for t in 0..THREADS {
        for i in 0..PER {
            let want: &[u8] = if t % 4 == 0 { b"blocking" } else { b"async" };
            assert_eq!(
                e.get(format!("t{t}-{i}").as_bytes()).unwrap().as_deref(),
                Some(want)
            );
        }
    }
}

#[test]
fn writes_apply_in_submission_order_across_submit_and_write() {
    for sync in [SyncMode::Always, SyncMode::Interval, SyncMode::None] {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path(), opts(sync)).unwrap();
        let mut tickets = Vec::new();
        for round in 0..50u32 {
            tickets.push(e.submit(put(b"k", &round.to_be_bytes()), ()).unwrap());
            if round % 10 == 9 {
                // A blocking write queues behind every earlier submission.
                e.put(b"k", b"blocking").unwrap();
                assert_eq!(e.get(b"k").unwrap().as_deref(), Some(&b"blocking"[..]));
            }
        }
        let last = e.submit(put(b"k", b"last"), ()).unwrap();
        for t in tickets {
            block_on(t).unwrap();
        }
        block_on(last).unwrap();
        assert_eq!(e.get(b"k").unwrap().as_deref(), Some(&b"last"[..]));
        drop(e);
        let e = Engine::open(dir.path(), opts(sync)).unwrap();
        assert_eq!(
            e.get(b"k").unwrap().as_deref(),
            Some(&b"last"[..]),
            "{sync:?}: replay keeps the order"
        );
    }
}

/// Dropped by the engine: records whether the write it was held for was visible by then.
struct Hold {
    engine: Arc<Engine>,
    key: Vec<u8>,
    dropped: Arc<AtomicUsize>,
    visible: Arc<AtomicBool>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.engine.get(&self.key).unwrap().is_none() {
            self.visible.store(false, Ordering::SeqCst);
        }
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn the_hold_is_released_only_once_the_write_is_visible_even_when_the_ticket_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let e = Arc::new(Engine::open(dir.path(), opts(SyncMode::Always)).unwrap());
    let dropped = Arc::new(AtomicUsize::new(0));
    let visible = Arc::new(AtomicBool::new(true));
    let mut kept = Vec::new();
    for i in 0..200u32 {
        let key = i.to_be_bytes().to_vec();
        let hold = Hold {
            engine: e.clone(),
            key: key.clone(),
            dropped: dropped.clone(),
            visible: visible.clone(),
        };
        let ticket = e.submit(put(&key, b"v"), hold).unwrap();
        // Half the tickets are dropped at once: their writes must happen all the same.
        if i % 2 == 0 {
            kept.push(ticket);
        }
    }
    for t in kept {
        block_on(t).unwrap();
    }
    // The last ticket waited for resolves after every earlier write was applied; the odd ones
    // may still be in the last group, so wait (bounded) for their holds.
    for _ in 0..500 {
        if dropped.load(Ordering::SeqCst) == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(dropped.load(Ordering::SeqCst), 200);
    assert!(
        visible.load(Ordering::SeqCst),
        "a hold was dropped before its write was visible"
    );
    for i in 0..200u32 {
        assert!(e.get(&i.to_be_bytes()).unwrap().is_some());
    }
}

#[test]
fn closing_commits_every_queued_ticket_first() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(dir.path(), opts(SyncMode::Always)).unwrap();
    let tickets: Vec<_> = (0..500u32)
        .map(|i| e.submit(put(&i.to_be_bytes(), b"v"), ()).unwrap())
        .collect();
    e.close().unwrap();
    // Close commits what was queued before it: every ticket resolves, and successfully.
    for (i, t) in tickets.into_iter().enumerate() {
        if let Err(err) = block_on(t) {
            panic!("ticket {i}: {err}");
        }
    }
    let e = Engine::open(dir.path(), opts(SyncMode::Always)).unwrap();
    for i in 0..500u32 {
        assert!(
            e.get(&i.to_be_bytes()).unwrap().is_some(),
            "acknowledged {i} lost"
        );
    }
}

#[test]
fn a_bad_batch_is_refused_before_it_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
        max_key_bytes: 8,
        ..opts(SyncMode::Always)
    };
    let e = Engine::open(dir.path(), o).unwrap();
    let err = e.submit(put(b"much-too-long", b"v"), ()).err().unwrap();
    assert!(matches!(err, Error::TooLarge { what: "key", .. }), "{err}");
    assert_eq!(e.stats().writes, 0);
    block_on(e.submit(WriteBatch::new(), ()).unwrap()).unwrap();
}
