//! How the process's allocator hands memory back, set once at start.
//!
//! A rewrite's large buffers (a Helm release Secret is up to 1 MiB of JSON, held as the object, its request body
//! and its answer) come and go by the thousand. glibc's malloc serves a block of 128 KiB or more with its own
//! `mmap` and unmaps it when freed, but it raises that threshold to the size of each such block freed (up to 32
//! MiB). After the first 1 MiB object is written, every later one comes from the heap arenas instead, where
//! freed space between live small objects is kept rather than returned: measured on a rewrite of 10 000 small
//! and 1 000 Helm-release-sized Secrets, the peak resident size was 125 MiB with the moving threshold and 75 MiB
//! with it fixed, at the same rate (docs/benchmarks.md). Fixing it keeps the byte budget
//! ([`crate::exec::rewrite`]) a bound on memory rather than on live objects only.

/// The size from which every block is its own mapping, returned to the system when freed (glibc's default).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Keep large blocks in their own mappings for the whole run (glibc; elsewhere the allocator is left as it is).
/// Call once, first thing in `main`, before other threads start.
pub fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other thread exists.
    unsafe {
        // Setting it explicitly also turns off glibc's dynamic adjustment of the threshold.
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
