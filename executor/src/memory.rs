//! How the process's allocator hands memory back to the kernel.
//!
//! glibc's malloc serves an allocation of 128 KiB or more with its own `mmap` and unmaps it on
//! free, but each such free raises that threshold (up to 32 MiB) and the trim threshold with
//! it. After one burst of large buffers (a Kafka producer flushing its backlog when a broker
//! comes back: batches of up to 1 MiB), every later large buffer comes from the worker's
//! arena instead, and what is freed there stays resident. Measured with `scripts/soak`: a
//! Kafka restart left the proxy 1.36 MiB larger for good (1.5 MiB over the run); with the
//! thresholds fixed at their defaults, 0.2 MiB (0.4 MiB over the run).

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
