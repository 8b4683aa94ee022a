//! The timing wheel that holds delayed packets until their departure (each worker has one
//! per port that packets leave on).
//!
//! Time is cut into slots of `2^shift` TSC cycles (a few microseconds). The wheel is
//! hierarchical, four levels of 256 slots: level 0 holds the slots of the current 256-slot
//! range one by one, level `k` holds whole level-`(k−1)` ranges of the current level-`(k+1)`
//! range, and an overflow list holds anything beyond level 3's range (2³² slots, hours at
//! microsecond slots; replay without `--max-delay-ms` can schedule that far). Where an item
//! goes depends on the highest bit in which its slot differs from the current one, so
//! insertion is O(1). When the current slot enters a new level-`k` range, that range's list
//! is cascaded: its items are placed again, now on a lower level. Each item moves at most
//! once per level. Per-level occupancy bitmaps let the wheel skip empty stretches of time in
//! a few steps, however long it was idle.
//!
//! Order: items of one slot leave in insertion order (the lists are FIFO, and a cascade
//! appends a range's items, in order, before anything can be inserted into that range
//! directly), and slots leave in increasing order. Packets of one flow, scheduled with
//! increasing departures, therefore leave in the order they came.
//!
//! Each list is a vector. An emptied list's vector goes to a pool of spares that the next
//! list to fill takes from, so the wheel's memory grows to what its load needs (vectors in
//! use at once × their largest fill) and then stops allocating; and cascading or releasing
//! a list reads memory in order, which matters with hundreds of thousands of packets parked
//! (a linked list of nodes made each of those a cache miss). Level 0's lists hold bare
//! items (a list there is one slot), the others items with their slot, which a cascade
//! needs; each kind has its own pool. With a million packets parked every byte of an entry
//! costs time (docs/BENCHMARKS.md, issue 5, session 4).
//!
//! A slot is released once `now` has reached its start, so an item can leave up to one slot
//! width before its exact departure time (never after, if the wheel is polled in time).

const LEVEL_BITS: u32 = 8;
const SLOTS: usize = 1 << LEVEL_BITS;
const SLOT_MASK: u64 = SLOTS as u64 - 1;
const LEVELS: usize = 4;
/// Bits of slot number covered by the levels; slots further away go to the overflow list.
const WHEEL_BITS: u32 = LEVEL_BITS * LEVELS as u32;
/// Slot numbers are capped here so that `slot + 1` never overflows (2⁶³ cycles are
/// decades at any TSC frequency).
const MAX_SLOT: u64 = u64::MAX >> 1;

/// An item with its slot, as the levels above 0 and the overflow list hold it: a cascade
/// needs the slot to place it again.
struct Entry<T> {
    slot: u64,
    item: T,
}

/// The 256 lists of one level, each a vector of `E`. Level 0 holds bare items: each of its
/// lists is one slot, whose items leave together and never move again, so storing their
/// slot would only make every entry there twice as big (an mbuf is 8 bytes). The levels
/// above hold [`Entry`]s.
struct Level<E> {
    lists: Box<[Vec<E>]>,
    occupied: [u64; SLOTS / 64],
}

impl<E> Level<E> {
    fn new() -> Level<E> {
        Level {
            lists: (0..SLOTS).map(|_| Vec::new()).collect(),
            occupied: [0; SLOTS / 64],
        }
    }

    /// The first occupied index at or after `from` (which may be `SLOTS`).
    fn next_occupied(&self, from: usize) -> Option<usize> {
        let mut word = from / 64;
        if word >= self.occupied.len() {
            return None;
        }
        let mut bits = self.occupied[word] & (!0u64 << (from % 64));
        loop {
            if bits != 0 {
                return Some(word * 64 + bits.trailing_zeros() as usize);
            }
            word += 1;
            if word == self.occupied.len() {
                return None;
            }
            bits = self.occupied[word];
        }
    }

    fn set(&mut self, i: usize) {
        self.occupied[i / 64] |= 1 << (i % 64);
    }

    /// Appends `e` to list `i`, which takes a vector from `spare` if it has none.
    #[inline]
    fn append(&mut self, i: usize, e: E, spare: &mut Vec<Vec<E>>) {
        self.set(i);
        let list = &mut self.lists[i];
        if list.capacity() == 0 {
            if let Some(v) = spare.pop() {
                *list = v;
            }
        }
        list.push(e);
    }

    fn clear(&mut self, i: usize) {
        self.occupied[i / 64] &= !(1 << (i % 64));
    }
}

/// A hierarchical timing wheel of `T` (the worker holds mbufs; tests hold integers).
pub struct TimingWheel<T> {
    shift: u32,
    /// Every slot before `cur` has been released.
    cur: u64,
    /// Level 0: the slots of the current 256-slot range, one list each.
    near: Level<T>,
    /// Levels 1 to 3 (`far[k - 1]` is level `k`).
    far: [Level<Entry<T>>; LEVELS - 1],
    overflow: Vec<Entry<T>>,
    /// The smallest slot on the overflow list, if any.
    overflow_min: u64,
    /// Items whose slot had already been released when they were inserted: they leave
    /// first at the next release, in insertion order.
    due: Vec<T>,
    /// Emptied vectors, capacity kept, for the next list of level 0 (`near`) or of a level
    /// above (`far`) to fill. Room for every list is reserved up front, so recycling never
    /// allocates.
    spare_near: Vec<Vec<T>>,
    spare_far: Vec<Vec<Entry<T>>>,
    len: usize,
}

impl<T> TimingWheel<T> {
    /// A wheel with slots of `2^slot_shift` cycles; `capacity` items fit in the
    /// list for past-due items before it grows (the other lists grow on first use).
    pub fn new(slot_shift: u32, capacity: usize) -> TimingWheel<T> {
        assert!(
            slot_shift < 48,
            "a slot of 2^{slot_shift} cycles is not a few µs"
        );
        TimingWheel {
            shift: slot_shift,
            cur: 0,
            near: Level::new(),
            far: std::array::from_fn(|_| Level::new()),
            overflow: Vec::new(),
            overflow_min: MAX_SLOT,
            due: Vec::with_capacity(capacity),
            spare_near: Vec::with_capacity(SLOTS + 1),
            spare_far: Vec::with_capacity((LEVELS - 1) * SLOTS + 1),
            len: 0,
        }
    }

    /// The power-of-two slot shift nearest to `slot_ns` nanoseconds at `tsc_hz`
    /// (e.g. 2 µs at 3 GHz: 2¹² cycles, 1.37 µs).
    pub fn slot_shift_for(tsc_hz: u64, slot_ns: u64) -> u32 {
        let cycles = (tsc_hz as u128 * slot_ns as u128 / 1_000_000_000).max(1);
        let floor = 127 - cycles.leading_zeros();
        // Round to the nearer power of two (compare with 2^floor × 1.5).
        let shift = if 2 * cycles >= 3u128 << floor {
            floor + 1
        } else {
            floor
        };
        shift.min(47)
    }

    /// Slot width in cycles.
    pub fn slot_cycles(&self) -> u64 {
        1 << self.shift
    }

    /// How far ahead the levels reach before items go to the overflow list.
    pub fn horizon_cycles(&self) -> u64 {
        1u64.checked_shl(WHEEL_BITS + self.shift)
            .unwrap_or(u64::MAX)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hold `item` until `departure` (TSC). A departure already past leaves at the next
    /// release. O(1); allocates only when a list outgrows every load it had before.
    #[inline(always)]
    pub fn insert(&mut self, item: T, departure: u64) {
        let slot = (departure >> self.shift).min(MAX_SLOT);
        self.len += 1;
        self.place(Entry { slot, item });
    }

    /// Release, in order, every item whose slot has started by `now`. Returns how many.
    pub fn pop_due(&mut self, now: u64, out: impl FnMut(T)) -> usize {
        self.pop_due_max(now, usize::MAX, out)
    }

    /// Like [`pop_due`](Self::pop_due) but releases at most `max` items (say, the room in
    /// the TX buffer); the rest leave on the next call.
    pub fn pop_due_max(&mut self, now: u64, max: usize, mut out: impl FnMut(T)) -> usize {
        let target = (now >> self.shift).min(MAX_SLOT);
        let mut released = 0;
        if !self.due.is_empty() {
            released += release(&mut self.due, max, &mut out);
            self.len -= released;
        }
        loop {
            if self.len == 0 {
                // Nothing to cascade: time can jump.
                self.cur = self.cur.max(target + 1);
                return released;
            }
            if self.cur > target || released == max {
                return released;
            }
            let idx = (self.cur & SLOT_MASK) as usize;
            if let Some(i) = self.near.next_occupied(idx) {
                let slot = (self.cur & !SLOT_MASK) | i as u64;
                if slot > target {
                    self.cur = target + 1;
                    return released;
                }
                self.cur = slot;
                let n = release(&mut self.near.lists[i], max - released, &mut out);
                released += n;
                self.len -= n;
                if !self.near.lists[i].is_empty() {
                    return released; // `max` reached
                }
                self.near.clear(i);
                recycle(&mut self.spare_near, &mut self.near.lists[i]);
                self.cur = slot + 1;
                if self.cur & SLOT_MASK == 0 {
                    self.cascade();
                }
            } else {
                // Level 0 is empty to the end of its range: go to the next boundary at
                // which a higher level has something to cascade. Skipping to just before
                // it is free: every list passed on the way is empty.
                let next = self.next_cascade();
                debug_assert!(next > self.cur);
                if next > target + 1 {
                    self.cur = target + 1;
                    return released;
                }
                self.cur = next;
                self.cascade();
            }
        }
    }

    /// Release everything, in departure order (on stop: the caller sends or counts it).
    pub fn drain_all(&mut self, out: impl FnMut(T)) -> usize {
        let cur = self.cur;
        let n = self.pop_due(u64::MAX, out);
        // Empty now, so any current slot is consistent: keep the wheel usable at `cur`.
        self.cur = cur;
        n
    }

    /// Append `e` to the list its slot belongs to relative to `cur`. (Inlined like
    /// [`insert`](Self::insert), which it is most of: as calls they cost ~20 instructions
    /// more per packet.)
    #[inline(always)]
    fn place(&mut self, e: Entry<T>) {
        if e.slot < self.cur {
            self.due.push(e.item);
            return;
        }
        let differ = e.slot ^ self.cur;
        if differ <= SLOT_MASK {
            let idx = (e.slot & SLOT_MASK) as usize;
            self.near.append(idx, e.item, &mut self.spare_near);
            return;
        }
        let level = ((63 - differ.leading_zeros()) / LEVEL_BITS) as usize;
        if level < LEVELS {
            let idx = ((e.slot >> (level as u32 * LEVEL_BITS)) & SLOT_MASK) as usize;
            self.far[level - 1].append(idx, e, &mut self.spare_far);
        } else {
            self.overflow_min = self.overflow_min.min(e.slot);
            self.overflow.push(e);
        }
    }

    /// The first slot after `cur` at which a level ≥ 1 (or the overflow list) has a list
    /// to cascade. Only called when level 0 is empty from `cur` to the end of its range.
    fn next_cascade(&self) -> u64 {
        for k in 1..LEVELS {
            let bits = k as u32 * LEVEL_BITS;
            let idx = ((self.cur >> bits) & SLOT_MASK) as usize;
            // The current index of a level ≥ 1 is always empty: it was cascaded when `cur`
            // entered it, and later insertions into that range go to lower levels.
            if let Some(j) = self.far[k - 1].next_occupied(idx + 1) {
                let range = bits + LEVEL_BITS;
                return (self.cur >> range << range) | (j as u64) << bits;
            }
        }
        if !self.overflow.is_empty() {
            // Lies in a later level-3 range than `cur`, so this is a boundary after `cur`.
            return self.overflow_min >> WHEEL_BITS << WHEEL_BITS;
        }
        MAX_SLOT
    }

    /// `cur` has just entered a new range at one or more levels: place those ranges' items
    /// again, highest level first so that each lands below before the lower list is taken.
    fn cascade(&mut self) {
        if self.cur & ((1 << WHEEL_BITS) - 1) == 0 && !self.overflow.is_empty() {
            let mut list = std::mem::take(&mut self.overflow);
            self.overflow_min = MAX_SLOT;
            for e in list.drain(..) {
                self.place(e);
            }
            // Keep the larger of the two allocations.
            if list.capacity() > self.overflow.capacity() {
                list.append(&mut self.overflow);
                self.overflow = list;
            }
        }
        for k in (1..LEVELS).rev() {
            let bits = k as u32 * LEVEL_BITS;
            if self.cur & ((1 << bits) - 1) != 0 {
                continue;
            }
            let idx = ((self.cur >> bits) & SLOT_MASK) as usize;
            let level = &mut self.far[k - 1];
            if level.lists[idx].is_empty() {
                continue;
            }
            // Items of this range land on lower levels, never back in this list.
            let mut list = std::mem::take(&mut level.lists[idx]);
            level.clear(idx);
            if k == 1 {
                // The usual case, once per packet parked for more than a level-0 range:
                // all of a level-1 list lies in the level-0 range `cur` has just entered.
                let (cur, near) = (self.cur, &mut self.near);
                for e in list.drain(..) {
                    debug_assert_eq!(e.slot >> LEVEL_BITS, cur >> LEVEL_BITS);
                    near.append((e.slot & SLOT_MASK) as usize, e.item, &mut self.spare_near);
                }
            } else {
                for e in list.drain(..) {
                    self.place(e);
                }
            }
            recycle(&mut self.spare_far, &mut list);
        }
    }
}

/// Put an emptied list's vector on the spare pool (dropped only if the pool is full, which
/// cannot happen: there are fewer lists than its reserved room).
fn recycle<E>(spare: &mut Vec<Vec<E>>, list: &mut Vec<E>) {
    if list.capacity() > 0 && spare.len() < spare.capacity() {
        spare.push(std::mem::take(list));
    }
}

/// Hand out up to `max` items from the front of `list`, in order. Returns how many.
fn release<T>(list: &mut Vec<T>, max: usize, out: &mut impl FnMut(T)) -> usize {
    let n = list.len().min(max);
    list.drain(..n).for_each(out);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_at(w: &mut TimingWheel<u32>, now: u64) -> Vec<u32> {
        let mut v = Vec::new();
        w.pop_due(now, |x| v.push(x));
        v
    }

    #[test]
    fn slot_shift_for_common_clocks() {
        assert_eq!(TimingWheel::<u32>::slot_shift_for(3_000_000_000, 2_000), 12);
        assert_eq!(TimingWheel::<u32>::slot_shift_for(1_000_000_000, 4_000), 12);
        assert_eq!(TimingWheel::<u32>::slot_shift_for(2_000_000_000, 4_000), 13);
        assert_eq!(TimingWheel::<u32>::slot_shift_for(1_000_000_000, 0), 0);
    }

    #[test]
    fn releases_in_departure_order() {
        let mut w = TimingWheel::new(4, 0);
        let mut seed = 88172645463325252u64;
        let mut expect = Vec::new();
        for i in 0..10_000u32 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let dep = 1_000 + seed % 3_000_000;
            w.insert(i, dep);
            expect.push((dep >> 4, i));
        }
        expect.sort(); // by slot, then insertion order (the ids increase)
        let mut got = Vec::new();
        let mut now = 0;
        while !w.is_empty() {
            now += 997;
            w.pop_due(now, |x| got.push((now, x)));
        }
        assert_eq!(got.len(), expect.len());
        for (&(at, x), &(slot, id)) in got.iter().zip(&expect) {
            assert_eq!(x, id);
            assert!(slot << 4 <= at, "released before its slot started");
            assert!(at < (slot << 4) + 16 + 997, "released late");
        }
    }

    #[test]
    fn same_slot_is_fifo() {
        let mut w = TimingWheel::new(10, 16);
        for i in 0..100 {
            // All in slot 5, departures decreasing within it: order is insertion order.
            w.insert(i, (5 << 10) + 1000 - i as u64);
        }
        assert!(drain_at(&mut w, (5 << 10) - 1).is_empty());
        assert_eq!(drain_at(&mut w, 5 << 10), (0..100).collect::<Vec<_>>());
    }

    /// Items of one slot arriving through different levels (a far insert cascaded down,
    /// then direct inserts) still leave in insertion order.
    #[test]
    fn fifo_across_cascades() {
        let mut w = TimingWheel::new(0, 0);
        let slot = 3 * (1 << 16) + 5 * 256 + 7;
        w.insert(1, slot); // level 2 seen from slot 0
        assert!(drain_at(&mut w, 3 * (1 << 16)).is_empty()); // cascaded to level 1
        w.insert(2, slot);
        assert!(drain_at(&mut w, 3 * (1 << 16) + 5 * 256).is_empty()); // to level 0
        w.insert(3, slot);
        assert!(drain_at(&mut w, slot - 1).is_empty());
        assert_eq!(drain_at(&mut w, slot), vec![1, 2, 3]);
    }

    #[test]
    fn past_departures_leave_at_once() {
        let mut w = TimingWheel::new(3, 0);
        assert!(drain_at(&mut w, 10_000).is_empty());
        w.insert(7, 5);
        w.insert(8, 10_000);
        assert_eq!(drain_at(&mut w, 10_001), vec![7, 8]);
    }

    /// One flow's packets, gaps crossing boundaries of every level, with 1-cycle slots
    /// so that level 3 wraps (every 2³² cycles) several times: each packet leaves at the
    /// first poll at or after its departure, in order.
    #[test]
    fn one_flow_in_order_across_wrap_arounds() {
        let mut w = TimingWheel::new(0, 0);
        let gaps = [1u64, 255, 256, 257, 65_535, 65_537, 1 << 24, 3];
        let mut now = (1u64 << 32) - 300;
        w.pop_due(now, |_: u32| ());
        let mut dep = now;
        let mut deps = Vec::new();
        let mut released = 0usize;
        for id in 0..20_000u32 {
            dep += gaps[id as usize % gaps.len()];
            w.insert(id, dep);
            deps.push(dep);
            now += 2_200_000;
            w.pop_due(now, |x| {
                assert_eq!(x as usize, released, "out of order");
                assert!(deps[x as usize] <= now, "released early");
                released += 1;
            });
            let due = deps.partition_point(|&d| d <= now);
            assert_eq!(released, due, "a due packet was held at now = {now}");
        }
        assert!(now > 10 << 32, "level 3 wrapped {} times", now >> 32);
        w.drain_all(|x| {
            assert_eq!(x as usize, released);
            released += 1;
        });
        assert_eq!(released, deps.len());
        assert!(w.is_empty());
    }

    /// The exact release poll of each item across wrap-arounds and the overflow list,
    /// against a brute-force model ordered by (slot, insertion).
    #[test]
    fn matches_a_sorted_model_across_wraps() {
        use std::collections::BTreeSet;
        let mut w = TimingWheel::new(2, 0);
        let mut model: BTreeSet<(u64, u32)> = BTreeSet::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut now = (1u64 << 34) - 12_345; // near a level-3 boundary at shift 2
        w.pop_due(now, |_: u32| ());
        for id in 0..50_000u32 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Mostly near, some far, a few beyond the levels' horizon (2³⁴ cycles).
            let ahead = match seed % 100 {
                0 => seed % (1 << 40),
                1..=9 => seed % (1 << 22),
                _ => seed % 5_000,
            };
            let dep = now + ahead;
            w.insert(id, dep);
            // One insert per poll, so a departure in an already released slot (it leaves
            // first at the next poll) sorts before everything else here too.
            model.insert((dep >> 2, id));
            now += seed % 700;
            let mut got = Vec::new();
            w.pop_due(now, |x| got.push(x));
            let due = now >> 2;
            let mut want = Vec::new();
            while let Some(&(slot, id)) = model.first() {
                if slot > due {
                    break;
                }
                model.pop_first();
                want.push(id);
            }
            assert_eq!(got, want, "at now = {now}");
        }
        assert_eq!(w.len(), model.len());
        let mut rest = Vec::new();
        w.drain_all(|x| rest.push(x));
        assert_eq!(rest, model.iter().map(|&(_, id)| id).collect::<Vec<_>>());
    }

    #[test]
    fn horizon_overflow_is_resorted_into_the_wheel() {
        let mut w = TimingWheel::new(12, 0); // ≈ 1.4 µs at 3 GHz; levels reach ≈ 1.6 h
        assert_eq!(w.horizon_cycles(), 1 << 44);
        let far = [5u64 << 44, 3 << 44, (3 << 44) + 4096, 9 << 44];
        for (i, &d) in far.iter().enumerate() {
            w.insert(i as u32, d);
        }
        w.insert(100, 1 << 20);
        assert_eq!(drain_at(&mut w, 1 << 20), vec![100]);
        assert!(drain_at(&mut w, (3 << 44) - 1).is_empty());
        assert_eq!(drain_at(&mut w, 3 << 44), vec![1]);
        assert_eq!(drain_at(&mut w, (3 << 44) + 4096), vec![2]);
        assert!(drain_at(&mut w, (5 << 44) - 4096).is_empty());
        assert_eq!(drain_at(&mut w, 9 << 44), vec![0, 3]);
        assert!(w.is_empty());
    }

    #[test]
    fn limited_release_resumes_where_it_stopped() {
        let mut w = TimingWheel::new(4, 0);
        for i in 0..10 {
            w.insert(i, 100);
        }
        w.insert(10, 200);
        let mut got = Vec::new();
        assert_eq!(w.pop_due_max(1_000, 4, |x| got.push(x)), 4);
        assert_eq!(w.pop_due_max(1_000, 4, |x| got.push(x)), 4);
        assert_eq!(w.pop_due_max(1_000, 4, |x| got.push(x)), 3);
        assert_eq!(got, (0..11).collect::<Vec<_>>());
    }

    fn capacity(w: &TimingWheel<u32>) -> usize {
        let near: usize = w.near.lists.iter().map(Vec::capacity).sum();
        let far: usize = w
            .far
            .iter()
            .flat_map(|l| l.lists.iter())
            .map(Vec::capacity)
            .sum();
        let spare: usize = w.spare_near.iter().map(Vec::capacity).sum::<usize>()
            + w.spare_far.iter().map(Vec::capacity).sum::<usize>();
        near + far + spare + w.overflow.capacity() + w.due.capacity()
    }

    #[test]
    fn lists_keep_their_capacity() {
        let mut w = TimingWheel::new(4, 64);
        let mut after_warm_up = 0;
        for round in 0..2_000u64 {
            for i in 0..64 {
                w.insert(i, round * 100_000 + i as u64 * 50 + 70_000);
            }
            assert_eq!(w.pop_due(round * 100_000 + 99_999, |_| ()), 64);
            if round == 1_000 {
                after_warm_up = capacity(&w);
            }
        }
        assert_eq!(
            capacity(&w),
            after_warm_up,
            "steady state must not allocate"
        );
    }

    #[test]
    fn drain_all_returns_everything_in_order() {
        let mut w = TimingWheel::new(8, 0);
        let deps = [1u64 << 50, 7, 1 << 30, 1 << 12, (1 << 50) + 1];
        for (i, &d) in deps.iter().enumerate() {
            w.insert(i as u32, d);
        }
        let mut got = Vec::new();
        assert_eq!(w.drain_all(|x| got.push(x)), 5);
        assert_eq!(got, vec![1, 3, 2, 0, 4]);
        assert!(w.is_empty());
    }
}
