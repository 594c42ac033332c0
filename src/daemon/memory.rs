//! Gives freed heap memory back to the kernel.
//!
//! glibc's malloc keeps the memory a burst frees (50 pods starting at once leave
//! several MB of free chunks behind, spread over the arenas of the threads that ran
//! the work) and returns only the top of each heap, unlike jemalloc's decay or Go's
//! scavenger. So every few seconds, when no call is running and the allocator's free
//! memory has grown by more than [`TRIM_ABOVE`] since the last trim, wharfd calls
//! `malloc_trim(0)`, which hands every free page back. Under kubelet's steady polling
//! the free memory does not grow and nothing is done. The arenas (glibc's per-thread
//! heaps) are capped at one per CPU ([`limit_arenas`]), so a burst's garbage is spread
//! over few heaps.

use std::time::Duration;

use super::in_flight::InFlight;

/// How often the allocator's free memory is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Growth of the free heap memory worth giving back.
pub const TRIM_ABOVE: usize = 1 << 20;

/// Every `period`, calls `trim` if no call is running and `free_bytes()` (the
/// allocator's free memory) has grown by more than `threshold` since the last trim
/// (free chunks smaller than a page stay counted after one). Never returns.
pub async fn trim_when_idle(
    in_flight: InFlight,
    period: Duration,
    threshold: usize,
    free_bytes: impl Fn() -> usize + Send + 'static,
    trim: impl Fn() + Send + Clone + 'static,
) {
    let mut baseline = free_bytes();
    loop {
        tokio::time::sleep(period).await;
        let free = free_bytes();
        if in_flight.calls() == 0 && free > baseline.saturating_add(threshold) {
            // Walks the heap's free lists: a blocking call, if a short one.
            let _ = tokio::task::spawn_blocking(trim.clone()).await;
            baseline = free_bytes();
            tracing::debug!(free_before = free, free_after = baseline, "heap trimmed");
        } else {
            // Memory reused since the last trim lowers the bar for the next one.
            baseline = baseline.min(free_bytes());
        }
    }
}

/// Caps glibc's malloc arenas at one per CPU (its default is 8 per CPU, made as threads
/// contend). Each thread that meets a locked arena makes another, up to the cap, and
/// every arena keeps the memory its threads freed: tearing down 500 pods (CNI runs and
/// removals on the blocking pool's threads) left wharfd at 138 MB RSS with the default
/// and at 65 MB with 2 arenas on a 2-core machine, with pod start times the same
/// (docs/benchmarks.md). A `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` set by the operator
/// wins. Call it before the first thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_by_operator = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
        if set_by_operator {
            return;
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = i32::try_from(cpus).unwrap_or(i32::MAX);
        // SAFETY: mallopt only sets the allocator's parameters, under its own lock.
        unsafe {
            nix::libc::mallopt(nix::libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Bytes the allocator holds free (glibc's `mallinfo2().fordblks`; 0 elsewhere).
pub fn free_heap_bytes() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallinfo2 only reads the allocator's statistics under its own locks.
    unsafe {
        nix::libc::mallinfo2().fordblks
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    0
}

/// Returns free heap pages to the kernel (glibc; a no-op with other C libraries).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only takes the allocator's own locks; any thread may call it
    // at any time.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tower::{Layer, Service};

    #[tokio::test(start_paused = true)]
    async fn trims_only_when_idle_and_worth_it() {
        let in_flight = InFlight::default();
        let trims = Arc::new(AtomicUsize::new(0));
        let free = Arc::new(AtomicUsize::new(0));
        let (counter, free_now) = (trims.clone(), free.clone());
        let trimmed = free.clone();
        tokio::spawn(trim_when_idle(
            in_flight.clone(),
            Duration::from_secs(5),
            1000,
            move || free_now.load(Ordering::SeqCst),
            move || {
                counter.fetch_add(1, Ordering::SeqCst);
                // Small free chunks stay counted after a trim.
                trimmed.store(300, Ordering::SeqCst);
            },
        ));
        let mut service = in_flight
            .layer()
            .layer(tower::service_fn(|d: Duration| async move {
                tokio::time::sleep(d).await;
                Ok::<_, std::convert::Infallible>(())
            }));

        // Free memory grown by less than the threshold: nothing to do.
        free.store(999, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(trims.load(Ordering::SeqCst), 0);

        // Worth trimming, but a call runs for 20 s: not before it ends, once after.
        free.store(5000, Ordering::SeqCst);
        service.call(Duration::from_secs(20)).await.unwrap();
        assert_eq!(trims.load(Ordering::SeqCst), 0, "trimmed during a call");
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(trims.load(Ordering::SeqCst), 1);

        // Given back, 300 bytes left: no more trims until memory is freed again.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(trims.load(Ordering::SeqCst), 1);
        free.store(1200, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            trims.load(Ordering::SeqCst),
            1,
            "grew by less than the threshold"
        );
        free.store(1400, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(trims.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn free_heap_bytes_sees_freed_memory_and_trim_keeps_it_usable() {
        let blocks: Vec<Vec<u8>> = (0..2000).map(|i| vec![1u8; 4000 + i]).collect();
        // Every other block freed: holes that stay in the heap until trimmed.
        let kept: Vec<Vec<u8>> = blocks.into_iter().step_by(2).collect();
        assert!(
            free_heap_bytes() > 1 << 20,
            "{} bytes free",
            free_heap_bytes()
        );
        trim_heap();
        assert!(kept.iter().all(|b| b.iter().all(|&x| x == 1)));
    }
}
