//! The process's allocator: mimalloc for small blocks, and big blocks kept in pages the process
//! already owns.
//!
//! Each fresh page costs a fault and a zeroing in the kernel, and on this kind of virtual machine a
//! second fault in the host (see docs/performance.md for what it cost). mimalloc keeps freed
//! memory (see `main.rs`), but it gives a block of more than 512 KiB back to its arena only when
//! the thread that allocated it collects its pages. A column built on a worker thread and dropped
//! on another stays unused until that worker allocates again, so about a third of a run's peak
//! RSS was memory nothing used, and the next phase faulted in fresh pages beside it.
//!
//! Blocks of `BIG` bytes or more therefore come from whole pages mapped here. A freed block joins
//! one list of free ranges (neighbours merged), whichever thread frees it; the next big block
//! takes the smallest free range that fits. Free ranges stay mapped (but one beyond `SLOTS`
//! ranges): like mimalloc with its purge delay off, the process keeps its peak. A block that
//! grows moves with `mremap`, which carries its pages over instead of copying them into fresh
//! ones (a `Vec` that doubles used to touch three times its size). When no free range holds a
//! block (or a grown block's new tail), it is assembled from several: their pages move under its
//! addresses with `mremap` (`fill_from_free`), so free memory is reused however it is cut up.
//!
//! Whether a block is big follows from its layout alone (size ≥ `BIG`, alignment ≤ a page):
//! Rust passes the same layout to `dealloc` and `realloc` as to `alloc`, so no table of blocks is
//! needed, and a `realloc` that crosses `BIG` moves the block between the two allocators.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Mutex;

/// Blocks from this size on are mapped here. mimalloc's pages for blocks above 512 KiB hold
/// one block each, but smaller ones share pages a thread owns too, so a lower bound catches
/// more of the blocks left unused by the thread that made them (the measured choice of bound:
/// docs/performance.md).
pub const BIG: usize = 1 << 18;
const PAGE: usize = 4096;
/// Free ranges tracked at most; a range freed beyond that is unmapped.
const SLOTS: usize = 512;

/// The global allocator of the `pipeline` binary.
pub struct Allocator;

/// Freed pages. Every range on the list was written by a block, so none is known to be zeros.
#[derive(Clone, Copy)]
struct Range {
    start: usize,
    len: usize,
}

struct FreeRanges {
    ranges: [Range; SLOTS],
    count: usize,
}

static FREE: Mutex<FreeRanges> = Mutex::new(FreeRanges {
    ranges: [Range { start: 0, len: 0 }; SLOTS],
    count: 0,
});

fn lock() -> std::sync::MutexGuard<'static, FreeRanges> {
    lock_list(&FREE)
}

fn lock_list(free: &Mutex<FreeRanges>) -> std::sync::MutexGuard<'_, FreeRanges> {
    // No code under the lock panics; a poisoned lock still holds consistent ranges.
    free.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Bytes on the free list (kept pages no block uses), for the debug log.
pub fn free_bytes() -> usize {
    let free = lock();
    free.ranges[..free.count].iter().map(|range| range.len).sum()
}

/// Hand the pages of every free range back to the kernel (`MADV_DONTNEED`: the ranges stay on
/// the list, and a block that takes one later faults fresh pages), and ask mimalloc to do the
/// same with what it holds free. A bounded-memory run calls it between shards, so what one
/// shard freed is not kept past it; returns the bytes released from the list.
pub fn release_free() -> usize {
    let released = {
        let free = lock();
        let mut released = 0;
        for range in &free.ranges[..free.count] {
            // SAFETY: a free range is mapped memory no block uses; DONTNEED only drops its pages.
            unsafe { libc::madvise(range.start as *mut libc::c_void, range.len, libc::MADV_DONTNEED) };
            released += range.len;
        }
        released
    };
    // SAFETY: mi_collect only returns free memory mimalloc holds; `force` includes other threads'.
    unsafe { libmimalloc_sys::mi_collect(true) };
    released
}

/// Whether a block is this allocator's: big, and on a system whose pages are 4 KiB (elsewhere,
/// such as 16 or 64 KiB-page aarch64, every block is mimalloc's: `PAGE` arithmetic would be
/// wrong there). The page size is read once; it never changes while the process runs, so a
/// block's layout decides the same way in `alloc` and `dealloc`.
fn is_big(size: usize, align: usize) -> bool {
    size >= BIG && align <= PAGE && pages_are_4k()
}

/// 0: not read yet, 1: 4 KiB pages, 2: other.
static PAGE_SIZE_OK: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

fn pages_are_4k() -> bool {
    use std::sync::atomic::Ordering;
    match PAGE_SIZE_OK.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            // SAFETY: sysconf takes an integer and allocates nothing.
            let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            let ok = size == PAGE as libc::c_long;
            PAGE_SIZE_OK.store(if ok { 1 } else { 2 }, Ordering::Relaxed);
            ok
        }
    }
}

fn pages(size: usize) -> usize {
    size.div_ceil(PAGE) * PAGE
}

impl FreeRanges {
    fn remove(&mut self, index: usize) -> Range {
        let range = self.ranges[index];
        self.count -= 1;
        self.ranges[index] = self.ranges[self.count];
        range
    }

    /// Take `len` bytes from the smallest free range that holds them; the rest stays free.
    fn take_fitting(&mut self, len: usize) -> Option<Range> {
        let index = (0..self.count)
            .filter(|&i| self.ranges[i].len >= len)
            .min_by_key(|&i| self.ranges[i].len)?;
        Some(self.split(index, len))
    }

    /// The first `len` bytes of range `index`, leaving the rest in its slot.
    fn split(&mut self, index: usize, len: usize) -> Range {
        let range = &mut self.ranges[index];
        let taken = Range {
            start: range.start,
            len,
        };
        if range.len == len {
            self.remove(index);
        } else {
            range.start += len;
            range.len -= len;
        }
        taken
    }

    /// The first `most` bytes (or all) of the largest free range.
    fn take_largest(&mut self, most: usize) -> Option<Range> {
        let index = (0..self.count).max_by_key(|&i| self.ranges[i].len)?;
        let len = self.ranges[index].len.min(most);
        Some(self.split(index, len))
    }

    /// `len` bytes right at `start`, if a free range begins there and holds them.
    fn take_at(&mut self, start: usize, len: usize) -> bool {
        let Some(index) = (0..self.count).find(|&i| self.ranges[i].start == start && self.ranges[i].len >= len) else {
            return false;
        };
        self.split(index, len);
        true
    }

    /// Give a range back, merged with free neighbours. `false` when there is no slot for it.
    fn give(&mut self, mut range: Range) -> bool {
        let mut i = 0;
        while i < self.count {
            let other = self.ranges[i];
            if other.start + other.len == range.start || range.start + range.len == other.start {
                self.remove(i);
                range = Range {
                    start: range.start.min(other.start),
                    len: range.len + other.len,
                };
                i = 0;
            } else {
                i += 1;
            }
        }
        if self.count == SLOTS {
            return false;
        }
        self.ranges[self.count] = range;
        self.count += 1;
        true
    }
}

/// A block of `len` bytes (a multiple of the page) and how many of its first bytes may be dirty.
fn map_big(len: usize) -> Option<(*mut u8, usize)> {
    if let Some(range) = lock().take_fitting(len) {
        return Some((range.start as *mut u8, len));
    }
    // SAFETY: a fresh private anonymous mapping; it aliases nothing.
    let fresh = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if fresh == libc::MAP_FAILED {
        return None;
    }
    let filled = fill_from_free(&FREE, fresh as usize, len);
    Some((fresh.cast(), filled))
}

/// Move the pages of `free`'s ranges (largest first) over the `len` bytes at `target`, front
/// to back, while the list has any: no single free range holds the block, but together they
/// may, and a page moved by `mremap` keeps its frame (no fault, no zeroing). `target` is
/// page-aligned and mapped by the caller, who owns it; returns how many bytes at its front came
/// from free ranges (dirty; the rest are the caller's own pages).
fn fill_from_free(free: &Mutex<FreeRanges>, target: usize, len: usize) -> usize {
    let mut filled = 0;
    while filled < len {
        let Some(piece) = lock_list(free).take_largest(len - filled) else {
            break;
        };
        if !move_pages(piece, target + filled) {
            // A piece spanning two mappings cannot move: the rest stays fresh.
            give_back(free, piece);
            break;
        }
        filled += piece.len;
    }
    filled
}

/// Move the pages of a free range to `target`, replacing the pages there.
fn move_pages(piece: Range, target: usize) -> bool {
    // SAFETY: the piece is mapped, page-aligned and owned by no block; the destination is the
    // caller's, page-aligned, and disjoint from every free range. MREMAP_FIXED replaces the
    // destination's pages with the piece's and unmaps the piece's old addresses.
    let moved = unsafe {
        libc::mremap(
            piece.start as *mut libc::c_void,
            piece.len,
            piece.len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            target as *mut libc::c_void,
        )
    };
    moved != libc::MAP_FAILED
}

/// Return a range to the free list (or to the kernel when the list is full).
fn release(range: Range) {
    give_back(&FREE, range);
}

fn give_back(free: &Mutex<FreeRanges>, range: Range) {
    if !lock_list(free).give(range) {
        // SAFETY: the range is mapped and no block uses it any more.
        unsafe { libc::munmap(range.start as *mut libc::c_void, range.len) };
    }
}

unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_big(layout.size(), layout.align()) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { mimalloc::MiMalloc.alloc(layout) };
        }
        map_big(pages(layout.size())).map_or(std::ptr::null_mut(), |(block, _)| block)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !is_big(layout.size(), layout.align()) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        }
        let Some((block, dirty)) = map_big(pages(layout.size())) else {
            return std::ptr::null_mut();
        };
        // SAFETY: the block holds at least `dirty` bytes and belongs to the caller now.
        unsafe { std::ptr::write_bytes(block, 0, dirty.min(layout.size())) };
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if !is_big(layout.size(), layout.align()) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { mimalloc::MiMalloc.dealloc(block, layout) };
        }
        release(Range {
            start: block as usize,
            len: pages(layout.size()),
        });
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (old_big, new_big) = (is_big(layout.size(), layout.align()), is_big(new_size, layout.align()));
        if !old_big && !new_big {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { mimalloc::MiMalloc.realloc(block, layout, new_size) };
        }
        if old_big && new_big {
            let (old_len, new_len) = (pages(layout.size()), pages(new_size));
            if new_len <= old_len {
                if new_len < old_len {
                    release(Range {
                        start: block as usize + new_len,
                        len: old_len - new_len,
                    });
                }
                return block;
            }
            if lock().take_at(block as usize + old_len, new_len - old_len) {
                return block;
            }
            // SAFETY: the block is a mapped, page-aligned range of `old_len` bytes owned by the
            // caller; on success its pages (and contents) move to the returned address.
            let moved = unsafe { libc::mremap(block.cast(), old_len, new_len, libc::MREMAP_MAYMOVE) };
            if moved != libc::MAP_FAILED {
                // The fresh pages behind the old ones are taken from free ranges where it can.
                fill_from_free(&FREE, moved as usize + old_len, new_len - old_len);
                return moved.cast();
            }
        }
        // Across `BIG`, or a block spanning two mappings that `mremap` cannot move: copy.
        // SAFETY: the new layout has the caller's alignment and a non-zero size.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as above.
        let moved = unsafe { self.alloc(new_layout) };
        if !moved.is_null() {
            // SAFETY: both blocks hold at least the smaller size and do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: usize, len: usize) -> Range {
        Range { start, len }
    }

    #[test]
    fn free_ranges_merge_neighbours_and_hand_out_the_smallest_fit() {
        let mut free = FreeRanges {
            ranges: [range(0, 0); SLOTS],
            count: 0,
        };
        assert!(free.give(range(0x10000, 0x4000)));
        assert!(free.give(range(0x20000, 0x2000)));
        // Joins the first range at its end: one range of 0x5000.
        assert!(free.give(range(0x14000, 0x1000)));
        assert_eq!(free.count, 2);
        let taken = free.take_fitting(0x2000).expect("fits");
        assert_eq!((taken.start, taken.len), (0x20000, 0x2000));
        let taken = free.take_fitting(0x1000).expect("fits");
        assert_eq!((taken.start, taken.len), (0x10000, 0x1000));
        assert_eq!(
            (free.count, free.ranges[0].start, free.ranges[0].len),
            (1, 0x11000, 0x4000)
        );
        assert!(free.take_fitting(0x5000).is_none());
        // Growing a block in place takes the range that starts right behind it.
        assert!(!free.take_at(0x12000, 0x1000));
        assert!(free.take_at(0x11000, 0x1000));
        assert!(!free.take_at(0x12000, 0x4000));
        assert!(free.take_at(0x12000, 0x3000));
        assert_eq!(free.count, 0);
        // Neighbours merge in either order; the largest range comes out first.
        assert!(free.give(range(0x40000, 0x1000)));
        assert!(free.give(range(0x41000, 0x1000)));
        assert!(free.give(range(0x80000, 0x800)));
        let part = free.take_largest(0x1000).expect("two ranges");
        assert_eq!((part.start, part.len, free.count), (0x40000, 0x1000, 2));
        let largest = free.take_largest(usize::MAX).expect("two ranges");
        assert_eq!((largest.start, largest.len), (0x41000, 0x1000));
    }

    #[test]
    fn free_ranges_refuse_a_range_beyond_their_slots() {
        let mut free = FreeRanges {
            ranges: [range(0, 0); SLOTS],
            count: 0,
        };
        for slot in 0..SLOTS {
            assert!(free.give(range(slot * 0x10000, 0x1000)));
        }
        assert!(!free.give(range(SLOTS * 0x10000 + 0x8000, 0x1000)));
        // A neighbour still merges when the slots are full.
        assert!(free.give(range(0x1000, 0x1000)));
        assert_eq!(
            (free.count, free.ranges.iter().map(|r| r.len).sum::<usize>()),
            (SLOTS, (SLOTS + 1) * 0x1000)
        );
    }

    #[test]
    fn free_pages_move_under_a_fresh_block_with_their_contents() {
        let free = Mutex::new(FreeRanges {
            ranges: [range(0, 0); SLOTS],
            count: 0,
        });
        // Two written mappings of two pages each stand in for freed blocks.
        let map = |pages: usize| {
            // SAFETY: a fresh private anonymous mapping, owned by this test.
            let block = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    pages * PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(block, libc::MAP_FAILED);
            block as usize
        };
        let (first, second, target) = (map(2), map(2), map(5));
        // SAFETY: the mappings above are this test's, two and five pages long.
        unsafe {
            std::ptr::write_bytes(first as *mut u8, 1, 2 * PAGE);
            std::ptr::write_bytes(second as *mut u8, 2, 2 * PAGE);
        }
        assert!(lock_list(&free).give(range(first, 2 * PAGE)) && lock_list(&free).give(range(second, 2 * PAGE)));
        let filled = fill_from_free(&free, target, 5 * PAGE);
        assert_eq!((filled, lock_list(&free).count), (4 * PAGE, 0));
        // SAFETY: the target's five pages are mapped (four moved in, one its own).
        let bytes = unsafe { std::slice::from_raw_parts(target as *const u8, 5 * PAGE) };
        let pages: Vec<u8> = bytes.chunks(PAGE).map(|page| page[0]).collect();
        assert!(bytes.chunks(PAGE).all(|page| page.iter().all(|&b| b == page[0])));
        assert!(pages == [1, 1, 2, 2, 0] || pages == [2, 2, 1, 1, 0], "{pages:?}");
        // SAFETY: the target mapping is this test's; the moved ranges' old addresses are gone.
        unsafe { libc::munmap(target as *mut libc::c_void, 5 * PAGE) };
    }

    /// Fill a block with a pattern that differs from byte to byte and page to page.
    fn pattern(offset: usize) -> u8 {
        (offset % 251) as u8 ^ (offset / PAGE) as u8
    }

    #[test]
    fn big_blocks_keep_their_contents_through_every_move_and_come_back_zeroed_on_request() {
        // The only test that uses the process's free list, so the reuse below is certain.
        let allocator = Allocator;
        let big = Layout::from_size_align(3 * BIG + 5, 8).expect("valid layout");
        // SAFETY: every block is used within its size and freed with the layout it has.
        unsafe {
            let block = allocator.alloc(big);
            assert!(!block.is_null() && (block as usize).is_multiple_of(PAGE));
            for offset in 0..big.size() {
                *block.add(offset) = pattern(offset);
            }
            // Grows by a move (nothing free behind it), shrinks in place, grows back in place.
            let grown = allocator.realloc(block, big, 10 * BIG);
            let grown_layout = Layout::from_size_align(10 * BIG, 8).expect("valid layout");
            assert!((0..big.size()).all(|offset| *grown.add(offset) == pattern(offset)));
            let shrunk = allocator.realloc(grown, grown_layout, 2 * BIG);
            assert_eq!(shrunk, grown);
            let shrunk_layout = Layout::from_size_align(2 * BIG, 8).expect("valid layout");
            let regrown = allocator.realloc(shrunk, shrunk_layout, 4 * BIG);
            assert_eq!(regrown, shrunk, "the range freed by the shrink is taken back in place");
            assert!((0..2 * BIG).all(|offset| *regrown.add(offset) == pattern(offset)));
            let regrown_layout = Layout::from_size_align(4 * BIG, 8).expect("valid layout");

            // Below BIG the block moves to mimalloc and back, contents kept.
            let small = allocator.realloc(regrown, regrown_layout, BIG / 2);
            let small_layout = Layout::from_size_align(BIG / 2, 8).expect("valid layout");
            assert!((0..BIG / 2).all(|offset| *small.add(offset) == pattern(offset)));
            let back = allocator.realloc(small, small_layout, 2 * BIG);
            assert!((0..BIG / 2).all(|offset| *back.add(offset) == pattern(offset)));
            allocator.dealloc(back, shrunk_layout);

            // The freed, written pages come back (the one free range: the grown block's),
            // zeroed for a zeroed request.
            let zeroed = allocator.alloc_zeroed(big);
            assert_eq!(zeroed, regrown);
            assert!((0..big.size()).all(|offset| *zeroed.add(offset) == 0));
            allocator.dealloc(zeroed, big);

            // Larger than any free range: assembled from the pages of two apart (written all
            // over first), and zeroed too.
            let whole = allocator.alloc(grown_layout);
            assert_eq!(whole, regrown);
            let apart = allocator.alloc(big);
            let between = allocator.alloc(big);
            for (block, layout) in [(whole, grown_layout), (between, big)] {
                std::ptr::write_bytes(block, 0xA5, layout.size());
            }
            allocator.dealloc(whole, grown_layout);
            allocator.dealloc(between, big);
            let free_bytes = || {
                let free = lock();
                free.ranges[..free.count].iter().map(|range| range.len).sum::<usize>()
            };
            let before = free_bytes();
            let larger = Layout::from_size_align(10 * BIG + pages(big.size()), 8).expect("valid layout");
            let zeroed = allocator.alloc_zeroed(larger);
            assert_eq!(
                free_bytes(),
                before - larger.size(),
                "the free pages moved into the block"
            );
            assert!((0..larger.size()).all(|offset| *zeroed.add(offset) == 0));
            for offset in (0..larger.size()).step_by(PAGE) {
                *zeroed.add(offset) = pattern(offset);
            }
            // Growing a block made of several mappings copies it (`mremap` cannot move it).
            allocator.dealloc(apart, big);
            let more = Layout::from_size_align(larger.size() + pages(big.size()), 8).expect("valid layout");
            let grown_more = allocator.realloc(zeroed, larger, more.size());
            assert!((0..larger.size())
                .step_by(PAGE)
                .all(|offset| *grown_more.add(offset) == pattern(offset)));
            allocator.dealloc(grown_more, more);

            // Over-aligned blocks stay with mimalloc.
            let aligned = Layout::from_size_align(2 * BIG, 2 * PAGE).expect("valid layout");
            let block = allocator.alloc(aligned);
            assert!((block as usize).is_multiple_of(2 * PAGE));
            allocator.dealloc(block, aligned);
        }
    }
}
