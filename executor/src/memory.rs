//! How the process's allocator hands memory back to the kernel.
//!
//! glibc's malloc serves an allocation of 128 KiB or more with its own `mmap` and unmaps it on
//! free, but each such free raises that threshold (up to 32 MiB) and the trim threshold with
//! it. After one burst of large buffers (a Kafka producer flushing its backlog when a broker
//! comes back: batches of up to 1 MiB), every later large buffer comes from the worker's
//! arena instead, and what is freed there stays resident. Measured with `scripts/soak`
//! (anonymous memory, growth after warm-up): a Kafka restart left the proxy 1.36 MiB larger
//! for good (1.54 MiB over the run); with the thresholds fixed, 0.74-0.85 MiB over the run,
//! of which 0.5-0.6 MiB still came at the Kafka restart (docs/testing.md, Soak). Part of that
//! was the sinks' write buffers, which kept the size of the backlog's largest request; they
//! are let go now (`shotover_executor::io::release_if_large`). The rest, ~0.5 MiB, is in the
//! worker arena's heap mapping (`/proc/PID/smaps`) and stays after `malloc_trim(0)` (tried
//! every 30 s from the control core, not kept): live allocations or holes smaller than a page.

/// Fixes glibc's mmap and trim thresholds at 128 KiB, so that large buffers are unmapped when
/// freed and free memory at the top of a heap is returned, however large earlier buffers were.
pub fn return_large_frees_to_the_kernel() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD: nix::libc::c_int = 128 * 1024;
        // SAFETY: mallopt only sets allocator parameters; it is safe to call at any time, from
        // any thread, and fails (returns 0) rather than misbehaving on a value it refuses.
        unsafe {
            nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, THRESHOLD);
            nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, THRESHOLD);
        }
    }
}
