//! The hot path allocates nothing per event once its tables hold the keys:
//! counted with a global allocator wrapper.

use bid_logger_core::aggregate::{AggregateConfig, Aggregator};
use bid_logger_core::decode::decode;
use bid_logger_core::synth::{append_pub_seq, Generator, Traffic};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decode_and_record_allocate_nothing_per_event() {
    let mut gen = Generator::new(&Traffic::default());
    let now = 1_764_180_000_000;
    let msgs: Vec<(Vec<u8>, Vec<u8>)> = (0..20_000)
        .map(|i| {
            let (mut t, mut p) = (Vec::new(), Vec::new());
            gen.next(now, &mut t, &mut p);
            append_pub_seq(&mut p, "bidder-0", i);
            (t, p)
        })
        .collect();
    let start = ALLOCATIONS.load(Ordering::Relaxed);
    let mut agg = Aggregator::new(AggregateConfig::default());
    // First pass: the tables learn every key and OS name (allocation allowed).
    for (t, p) in &msgs {
        agg.record(&decode(t, p).unwrap(), now);
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    assert!(before > start, "the counting allocator sees the tables grow");
    // Second pass over the same keys: nothing may allocate.
    for (t, p) in &msgs {
        agg.record(&decode(t, p).unwrap(), now);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(allocations, 0, "{allocations} allocations for {} events", msgs.len());
    assert_eq!(agg.events(), 40_000);
}
