//! A warm heap for the harness: the hollow nodes stand in for other machines,
//! so the pages they grow into should not cost the two cores they share with
//! the manager under test.
//!
//! On this project's VM every fresh page costs 2.3–3.1 µs on first touch (see
//! docs/BENCHMARKS.md, stop 25), and at 1,000 × 100k the hollow nodes grow by
//! about 340 MiB while the tasks are placed. [`warm_heap`] faults that memory
//! in before the measured phase and hands it back to the allocator, which
//! keeps it: `shoal-bench` configures its jemalloc with one arena, no decay
//! (freed pages stay mapped) and no limit on carving small slabs out of a
//! large free extent (`lg_extent_max_active_fit`; without it, jemalloc would
//! leave the coalesced warm extent alone and fault in fresh pages anyway).
//! The manager is a separate process with its own allocator settings: it
//! still pays for every page it touches.

/// Bytes per block: large enough for jemalloc's large-extent path, so the
/// blocks coalesce into free extents that small slabs are carved from.
const BLOCK: usize = 64 << 10;

/// Touch `mib` MiB of heap and free it again. Returns the bytes touched.
pub fn warm_heap(mib: usize) -> usize {
    let blocks: Vec<Vec<u8>> = (0..mib * ((1 << 20) / BLOCK))
        // Not zero: a zeroed allocation may come from untouched pages.
        .map(|_| vec![1u8; BLOCK])
        .collect();
    let touched = blocks.iter().map(Vec::len).sum();
    std::hint::black_box(&blocks);
    touched
}

/// The warm-up `schedule` does by default: 4 KiB per task (a hollow node grew
/// by about 3.5 KiB per task at 1,000 × 100k).
pub fn default_warm_mib(tasks: usize) -> usize {
    (tasks * (4 << 10)).div_ceil(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_what_it_is_asked_and_four_kib_a_task_by_default() {
        assert_eq!(warm_heap(2), 2 << 20);
        assert_eq!(warm_heap(0), 0);
        assert_eq!(default_warm_mib(100_000), 391);
        assert_eq!(default_warm_mib(1), 1);
        assert_eq!(default_warm_mib(0), 0);
    }
}
