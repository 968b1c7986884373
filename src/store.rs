//! The product store: a cheap-to-clone handle over
//! `Arc<RwLock<HashMap<id, Record>>>`.
//!
//! Worker threads write it, a run of up to [`MAX_RUN`] events under one hold
//! of the lock ([`Store::writer`]); HTTP threads read it ([`Store::get`]).
//! Every critical section is a hash lookup and a few field copies (a
//! writer's, that many of them): no I/O, no JSON, no logging and no channel
//! operation happens while a guard is held.
//!
//! # Ordering: per-field sequence guards
//!
//! Each event carries the sequence number the intake gave it (see
//! `intake/mod.rs`), and each field of a [`Record`] remembers the sequence number
//! of the event that last set it. A write only lands if its event is newer
//! than the one that set the field. So the result does not depend on which
//! worker applies which event, or in what order: once every accepted event is
//! applied, each field holds the value from the newest accepted event that
//! set it. A late, older price-only event still sets `stock` if nothing newer
//! set `stock`, and never overwrites a newer `price`.
//!
//! Because a field only ever moves to a newer sequence number, and readers
//! copy under the read lock, a reader can never see a field go back to an
//! older value.
//!
//! # Which products changed
//!
//! A backend that copies products to a database asks the store to
//! [`record_changes`](Store::record_changes); from then on each
//! apply ([`Writer::apply`]) notes its product's id, under the write lock, once the
//! product's record exists and before its fields are written (so an apply
//! that panics half-way is noted too), and the backend takes the list with
//! [`Store::take_changed`]. Every id taken is then a product in the map (had
//! the id been noted before a new product was inserted, a take in between
//! would find no product to copy, and drop the id). An apply returns before
//! its worker reports the seq done to the watermark, so once the watermark
//! has passed seq N, every event up to N has noted its product: a backend
//! that reads the watermark first and then takes the list holds every
//! product those events changed. A take may also hold products changed by
//! later events, whose fields it copies as they are by then: a later field
//! is never older. Lock order: the map, then the list; a take holds only the
//! list. Memory mode records nothing and pays one atomic load.
//!
//! # Poisoning policy
//!
//! A panic that unwinds through the write guard poisons the lock (a worker
//! catches each event's panic inside the guard, so only a bug around that
//! would). Every change here
//! is a whole-field assignment of plain data, so a panic cannot leave a
//! record half-written in a way later readers could misread; the store
//! therefore ignores poisoning (`PoisonError::into_inner`) instead of turning
//! one bad event into a permanent outage for every thread.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{
    Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
};

use std::fmt;

use serde_json::Number;

use crate::event::ProductUpdate;

/// Sequence number given by the intake; the first accepted event has seq 1,
/// so 0 can mean "never set".
pub type Seq = u64;

/// The order in which writes to one field win: a write lands only if its
/// key is greater than the key of the write that set the field. Keys form a
/// total order, so each field is a max-register and the result does not
/// depend on the order writes are applied in (see the module docs).
///
/// - unversioned event, seq `s`: `(0, s)`: a later seq wins;
/// - event with client version `v`, seq `s`: `(v + 1, u64::MAX - s)`: a
///   higher version wins whatever the seq; of two equal versions the first
///   accepted wins (a later one is not *greater*); and any versioned write
///   beats any unversioned one.
///
/// `(0, 0)` means "never set".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct WriteKey(u64, u64);

impl WriteKey {
    pub fn new(seq: Seq, version: Option<u64>) -> WriteKey {
        match version {
            None => WriteKey(0, seq),
            // `event.rs` keeps versions below u64::MAX, so `v + 1` fits.
            Some(v) => WriteKey(v.saturating_add(1), u64::MAX - seq),
        }
    }

    fn is_set(self) -> bool {
        self != WriteKey::default()
    }

    /// The seq and client version the key was made from ([`WriteKey::new`]
    /// in reverse), or `None` for "never set". The durable store keeps these
    /// two, not the key: they are what a person reading the table expects.
    pub fn parts(self) -> Option<(Seq, Option<u64>)> {
        match self {
            key if !key.is_set() => None,
            WriteKey(0, seq) => Some((seq, None)),
            WriteKey(v, inverted) => Some((u64::MAX - inverted, Some(v - 1))),
        }
    }
}

/// What a product holds (56 bytes): each field and the key of the write
/// that set it. The price is the JSON number as the client wrote it (see
/// `event.rs`).
#[derive(Debug, Clone, Default, PartialEq)]
struct Record {
    price: Option<Number>,
    price_key: WriteKey,
    stock: u64,
    stock_key: WriteKey,
}

impl Record {
    fn state(&self) -> ProductState {
        let (p, s) = (self.price_key, self.stock_key);
        ProductState {
            price: self.price.clone(),
            stock: s.is_set().then_some(self.stock),
            tag: Tag([p.0, p.1, s.0, s.1]),
        }
    }
}

/// A product's values at one moment, copied out of the store. A field no
/// event has set yet is `None` (JSON `null`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProductState {
    pub price: Option<Number>,
    pub stock: Option<u64>,
    /// Changes whenever the product changes: its `ETag`.
    pub tag: Tag,
}

/// The write keys of a product's two fields. Keys only ever grow, so the
/// tag changes with every change and never comes back: an entity tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag([u64; 4]);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a:x}.{b:x}.{c:x}.{d:x}")
    }
}

/// A product's fields with the keys of the writes that set them: what the
/// durable store writes to its `products` table and loads back at startup.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub price: Option<Number>,
    pub price_key: WriteKey,
    pub stock: Option<u64>,
    pub stock_key: WriteKey,
}

/// What one apply ([`Writer::apply`]) did, for the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Fields the event set.
    pub written: u32,
    /// Fields the event carried but a newer event had already set.
    pub stale: u32,
}

/// Handle to the shared product map. Clones share the same map.
#[derive(Clone, Default)]
pub struct Store {
    products: Arc<RwLock<HashMap<Box<str>, Record>>>,
    /// The number of products, kept beside the map so that reading it (on
    /// every `POST /events`, for `MAX_PRODUCTS`) takes no lock.
    count: Arc<AtomicUsize>,
    /// Ids of the products applied to since the last [`Store::take_changed`]
    /// (each once: a set, so that a product applied to a thousand times
    /// between takes costs one copy of its id, not a thousand), once
    /// [`Store::record_changes`] was called. A lock of its own, so that
    /// taking the list does not hold up readers.
    changed: Arc<OnceLock<Mutex<HashSet<Box<str>>>>>,
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    /// Applies `update`, accepted with sequence number `seq`, field by field.
    pub fn apply(&self, seq: Seq, update: &ProductUpdate) -> ApplyOutcome {
        self.writer().apply(seq, update)
    }

    /// The store held for writing, for a run of applies under one hold of
    /// the lock (a worker's batch, see `worker.rs`): readers wait for the
    /// whole run, at most [`MAX_RUN`] events.
    pub fn writer(&self) -> Writer<'_> {
        let products = self.write();
        // Lock order: the map, then the list (see the module docs).
        let changed = self.changed.get().map(lock);
        Writer {
            products,
            changed,
            count: &self.count,
        }
    }

    /// From now on, note the product of every apply (see the module docs).
    pub fn record_changes(&self) {
        let _ = self.changed.set(Mutex::new(HashSet::new()));
    }

    /// The ids of the products applied to since the last call (each once,
    /// sorted), and forgets them.
    pub fn take_changed(&self) -> Vec<Box<str>> {
        let Some(changed) = self.changed.get() else {
            return Vec::new();
        };
        let taken = std::mem::take(&mut *lock(changed));
        let mut ids: Vec<Box<str>> = taken.into_iter().collect();
        ids.sort_unstable();
        ids
    }

    /// Puts back ids taken with [`Store::take_changed`] whose products
    /// could not be written: the next take returns them again.
    pub fn put_back_changed(&self, ids: Vec<Box<str>>) {
        if let Some(changed) = self.changed.get() {
            lock(changed).extend(ids);
        }
    }

    /// Whether products were applied to since the last take.
    pub fn has_changes(&self) -> bool {
        self.changed.get().is_some_and(|c| !lock(c).is_empty())
    }

    /// The current state of `product_id`, or `None` if no event for it has
    /// been applied yet. A copy: the lock is held only to copy it.
    pub fn get(&self, product_id: &str) -> Option<ProductState> {
        self.read().get(product_id).map(Record::state)
    }

    /// `product_id`'s fields and their write keys, for a backend to save.
    pub fn stored(&self, product_id: &str) -> Option<Stored> {
        self.read().get(product_id).map(|r| Stored {
            price: r.price.clone(),
            price_key: r.price_key,
            stock: r.stock_key.is_set().then_some(r.stock),
            stock_key: r.stock_key,
        })
    }

    /// Puts products back as they were stored (at startup, before any
    /// event is applied), replacing any with the same id.
    pub fn restore(&self, products: impl IntoIterator<Item = (Box<str>, Stored)>) {
        let mut map = self.write();
        for (id, stored) in products {
            let record = Record {
                price: stored.price,
                price_key: stored.price_key,
                stock: stored.stock.unwrap_or(0),
                stock_key: stored.stock_key,
            };
            map.insert(id, record);
        }
        self.count.store(map.len(), Ordering::Relaxed);
    }

    /// Up to `limit` products whose ids sort after the bytes `after` (all,
    /// if `None`), in byte order of their ids: one page of `GET /products`.
    /// `after` is usually the last id of the previous page, but any bytes
    /// work: the page starts at the first id above them.
    ///
    /// Cost: a `HashMap` has no order, so every page scans the whole map
    /// under the read lock, keeping the `limit` smallest ids in a heap:
    /// O(products × log limit) per page, during which writers wait. Meant for
    /// debugging and teaching, not for bulk export.
    pub fn list_after(&self, after: Option<&[u8]>, limit: usize) -> Vec<(Box<str>, ProductState)> {
        let products = self.read();
        let mut smallest: BinaryHeap<&str> = BinaryHeap::with_capacity(limit + 1);
        for id in products.keys() {
            let id: &str = id;
            if after.is_some_and(|after| id.as_bytes() <= after) {
                continue;
            }
            if smallest.len() < limit {
                smallest.push(id);
            } else if smallest.peek().is_some_and(|&largest| id < largest) {
                smallest.pop();
                smallest.push(id);
            }
        }
        let mut page: Vec<(Box<str>, ProductState)> = smallest
            .into_iter()
            .filter_map(|id| Some((id.into(), products.get(id)?.state())))
            .collect();
        drop(products);
        page.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        page
    }

    /// Number of products stored.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether a product with this id exists.
    pub fn contains(&self, product_id: &str) -> bool {
        self.read().contains_key(product_id)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<Box<str>, Record>> {
        self.products.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Box<str>, Record>> {
        self.products
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Most events a [`Writer`] should apply under one hold of the lock: a
/// reader then waits at most that many applies (a few microseconds).
pub const MAX_RUN: usize = 64;

/// The store's write lock, held over a run of applies ([`Store::writer`]).
pub struct Writer<'a> {
    products: RwLockWriteGuard<'a, HashMap<Box<str>, Record>>,
    /// The changed-ids list, when changes are recorded.
    changed: Option<MutexGuard<'a, HashSet<Box<str>>>>,
    count: &'a AtomicUsize,
}

impl Writer<'_> {
    /// Applies `update`, accepted with sequence number `seq`, field by field.
    pub fn apply(&mut self, seq: Seq, update: &ProductUpdate) -> ApplyOutcome {
        let record = match self.products.get_mut(&*update.product_id) {
            Some(record) => record,
            None => {
                self.count.fetch_add(1, Ordering::Relaxed);
                self.products
                    .entry(Box::from(&update.product_id))
                    .or_default()
            }
        };
        // Noted once the record exists, under the write lock: a backend that
        // takes the id then finds the product (see the module docs).
        if let Some(changed) = &mut self.changed
            && !changed.contains(&*update.product_id)
        {
            changed.insert(Box::from(&update.product_id));
        }
        let key = WriteKey::new(seq, update.version);
        let mut outcome = ApplyOutcome::default();
        if let Some(price) = &update.price {
            if key > record.price_key {
                record.price = Some(price.clone());
                record.price_key = key;
                outcome.written += 1;
            } else {
                outcome.stale += 1;
            }
        }
        if let Some(stock) = update.stock {
            if key > record.stock_key {
                record.stock = stock;
                record.stock_key = key;
                outcome.written += 1;
            } else {
                outcome.stale += 1;
            }
        }
        outcome
    }
}

/// Poisoning: a set of ids, changed by single inserts and takes.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(price: Option<f64>) -> Option<Number> {
        price.and_then(Number::from_f64)
    }

    fn update(id: &str, price: Option<f64>, stock: Option<u64>) -> ProductUpdate {
        let price = num(price);
        ProductUpdate {
            product_id: id.into(),
            price,
            stock,
            event_id: None,
            version: None,
        }
    }

    #[test]
    fn changes_are_recorded_only_when_asked_and_taken_once() {
        let store = Store::new();
        store.apply(1, &update("a", Some(1.0), None));
        assert!(store.take_changed().is_empty());
        store.record_changes();
        store.apply(2, &update("b", Some(1.0), None));
        store.apply(3, &update("a", Some(1.0), None));
        store.apply(4, &update("b", None, Some(2)));
        assert!(store.has_changes());
        let taken = store.take_changed();
        assert_eq!(taken, [Box::from("a"), Box::from("b")]);
        assert!(!store.has_changes());
        store.put_back_changed(taken);
        assert_eq!(store.take_changed().len(), 2);
    }

    /// What a backend relies on: every id it takes is in the map, so that
    /// it can copy the product. (When the id was noted before a new
    /// product was inserted, a take between the two found no product, the
    /// id was dropped, and the product never reached the database.)
    #[test]
    fn every_id_taken_is_a_product_in_the_store() {
        const PRODUCTS: usize = 100_000;
        let store = Store::new();
        store.record_changes();
        let applied = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for i in 0..PRODUCTS {
                    store.apply(i as Seq + 1, &update(&format!("p{i}"), None, Some(1)));
                }
                applied.store(true, Ordering::Release);
            });
            let mut taken = 0;
            while !applied.load(Ordering::Acquire) || store.has_changes() {
                for id in store.take_changed() {
                    assert!(
                        store.stored(&id).is_some(),
                        "{id} taken before it was stored"
                    );
                    taken += 1;
                }
            }
            assert_eq!(taken, PRODUCTS);
        });
    }

    #[test]
    fn unknown_product_is_none() {
        assert_eq!(Store::new().get("nope"), None);
    }

    #[test]
    fn unset_fields_read_as_none() {
        let store = Store::new();
        store.apply(1, &update("a", None, Some(5)));
        let a = store.get("a").unwrap();
        assert_eq!((a.price, a.stock), (None, Some(5)));
    }

    #[test]
    fn partial_updates_merge() {
        let store = Store::new();
        store.apply(1, &update("a", Some(1.0), Some(1)));
        store.apply(2, &update("a", Some(2.0), None));
        store.apply(3, &update("a", None, Some(3)));
        let p = store.get("a").unwrap();
        assert_eq!((p.price, p.stock), (num(Some(2.0)), Some(3)));
    }

    #[test]
    fn an_older_event_applied_late_only_fills_fields_nothing_newer_set() {
        let store = Store::new();
        // seq 3 (price only) is applied before seq 2 (price and stock).
        assert_eq!(
            store.apply(3, &update("a", Some(30.0), None)),
            ApplyOutcome {
                written: 1,
                stale: 0
            }
        );
        assert_eq!(
            store.apply(2, &update("a", Some(20.0), Some(2))),
            ApplyOutcome {
                written: 1,
                stale: 1
            }
        );
        let p = store.get("a").unwrap();
        assert_eq!((p.price, p.stock), (num(Some(30.0)), Some(2)));
    }

    #[test]
    fn any_apply_order_gives_the_sequential_result() {
        let events = [
            (1, update("a", Some(1.0), Some(10))),
            (2, update("a", None, Some(20))),
            (3, update("a", Some(3.0), None)),
            (4, update("a", None, Some(40))),
        ];
        // Every permutation of four events.
        let mut order = [0, 1, 2, 3];
        let mut permutations = 0;
        loop {
            let store = Store::new();
            for &i in &order {
                store.apply(events[i].0, &events[i].1);
            }
            let p = store.get("a").unwrap();
            assert_eq!((p.price, p.stock), (num(Some(3.0)), Some(40)), "{order:?}");
            permutations += 1;
            if !next_permutation(&mut order) {
                break;
            }
        }
        assert_eq!(permutations, 24);
    }

    fn next_permutation(a: &mut [usize]) -> bool {
        let Some(i) = (1..a.len()).rev().find(|&i| a[i - 1] < a[i]) else {
            return false;
        };
        let j = (i..a.len()).rev().find(|&j| a[j] > a[i - 1]).unwrap();
        a.swap(i - 1, j);
        a[i..].reverse();
        true
    }

    #[test]
    fn survives_a_panic_while_the_write_lock_is_held() {
        let store = Store::new();
        store.apply(1, &update("a", Some(1.0), None));
        let clone = store.clone();
        let result = std::thread::spawn(move || {
            let _guard = clone.write();
            panic!("deliberate panic while holding the write lock");
        })
        .join();
        assert!(result.is_err());
        assert!(store.products.is_poisoned());
        store.apply(2, &update("a", Some(2.0), None));
        assert_eq!(store.get("a").unwrap().price, num(Some(2.0)));
    }

    #[test]
    fn pages_walk_every_product_once_in_id_order() {
        let store = Store::new();
        for id in ["b", "a", "d", "c", "e"] {
            store.apply(1, &update(id, None, Some(1)));
        }
        let ids = |page: Vec<(Box<str>, ProductState)>| -> Vec<String> {
            page.into_iter().map(|(id, _)| id.into()).collect()
        };
        assert_eq!(ids(store.list_after(None, 2)), ["a", "b"]);
        assert_eq!(ids(store.list_after(Some(b"b"), 2)), ["c", "d"]);
        assert_eq!(ids(store.list_after(Some(b"d"), 2)), ["e"]);
        assert!(store.list_after(Some(b"e"), 2).is_empty());
        // Bytes that are no id (nor UTF-8) still mark a place in the order.
        assert_eq!(ids(store.list_after(Some(b"b\xff"), 1)), ["c"]);
        assert_eq!(ids(store.list_after(Some(b""), 1)), ["a"]);
        assert_eq!(ids(store.list_after(None, 10)).len(), 5);
    }

    #[test]
    fn the_tag_changes_with_every_change_and_not_with_stale_events() {
        let store = Store::new();
        let tag = |s: &Store| s.get("a").map(|p| p.tag);
        store.apply(3, &update("a", Some(1.0), None));
        let first = tag(&store);
        store.apply(2, &update("a", Some(2.0), None)); // stale: no change
        assert_eq!(tag(&store), first);
        store.apply(5, &update("a", None, Some(1)));
        assert_ne!(tag(&store), first);
    }

    fn versioned(id: &str, price: f64, version: u64) -> ProductUpdate {
        ProductUpdate {
            version: Some(version),
            ..update(id, Some(price), None)
        }
    }

    #[test]
    fn versions_order_writes_whatever_the_seq() {
        let store = Store::new();
        let price = |s: &Store| s.get("a").and_then(|p| p.price).and_then(|n| n.as_f64());
        store.apply(1, &versioned("a", 1.0, 5));
        // An older version arriving later is stale.
        assert_eq!(store.apply(2, &versioned("a", 2.0, 4)).stale, 1);
        assert_eq!(price(&store), Some(1.0));
        // An equal version is not greater: stale.
        assert_eq!(store.apply(3, &versioned("a", 3.0, 5)).stale, 1);
        // An unversioned event never overrides a versioned value.
        assert_eq!(store.apply(4, &update("a", Some(4.0), None)).stale, 1);
        // A higher version wins even with a lower seq (applied late).
        store.apply(0, &versioned("a", 6.0, 6));
        assert_eq!(price(&store), Some(6.0));
    }

    #[test]
    fn versioned_and_unversioned_in_any_order_give_the_replay_result() {
        let events = [
            (1, update("a", Some(1.0), Some(1))),
            (2, versioned("a", 2.0, 7)),
            (3, update("a", Some(3.0), Some(3))),
            (4, versioned("a", 4.0, 7)),
            (5, versioned("a", 5.0, 8)),
        ];
        // Sequential replay in seq order: price v8 = 5.0; stock unversioned seq 3.
        let mut order = [0, 1, 2, 3, 4];
        loop {
            let store = Store::new();
            for &i in &order {
                store.apply(events[i].0, &events[i].1);
            }
            let p = store.get("a").unwrap();
            assert_eq!((p.price, p.stock), (num(Some(5.0)), Some(3)), "{order:?}");
            if !next_permutation(&mut order) {
                break;
            }
        }
    }
}
