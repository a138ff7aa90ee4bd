//! Machine-wide slots, so parallel tests and other agents never share addresses, ports or run dirs.
//!
//! Slot k (0..SLOTS) owns the addresses 127.0.(20+k).11.. and the run dir /run/atrest-testbed/slot-k. A process
//! holds slot k by an exclusive `flock` on /run/atrest-testbed/slot-k.lock for as long as its testbed lives. A
//! testbed started by the CLI outlives the process, so the slot dir also holds `owner` (the testbed dir); a free
//! lock with an `owner` whose recorded daemons still run means "taken". Within one process,
//! `ATREST_TESTBED_SLOTS` (default 2) caps how many slots are used at once, to spare the machine.

use std::fs::{self, File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub const RUN_ROOT: &str = "/run/atrest-testbed";
pub const SLOTS: usize = 4;

static IN_USE: Mutex<usize> = Mutex::new(0);
static FREED: Condvar = Condvar::new();

fn process_cap() -> usize {
    std::env::var("ATREST_TESTBED_SLOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2)
}

/// A held slot. Dropping it releases the lock and the process-wide permit.
#[derive(Debug)]
pub struct Slot {
    pub index: usize,
    lock: Option<File>,
    permit: bool,
}

impl Slot {
    /// The address of node `i` (0-based).
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        ip_for(self.index, i)
    }
    pub fn run_dir(&self) -> PathBuf {
        run_dir_for(self.index)
    }
    /// Keep the slot marked as taken after this process exits (CLI `up`).
    pub fn write_owner(&self, testbed_dir: &Path) -> Result<()> {
        let owner = self.run_dir().join("owner");
        fs::write(&owner, testbed_dir.as_os_str().as_encoded_bytes())
            .with_context(|| format!("writing {}", owner.display()))
    }
}

pub fn ip_for(slot: usize, node: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 20 + slot as u8, 11 + node as u8)
}

pub fn run_dir_for(slot: usize) -> PathBuf {
    Path::new(RUN_ROOT).join(format!("slot-{slot}"))
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.lock.take();
        if self.permit {
            let mut n = IN_USE.lock().unwrap_or_else(|e| e.into_inner());
            *n = n.saturating_sub(1);
            FREED.notify_all();
        }
    }
}

/// Is slot `k` taken by a testbed whose owner process is gone but whose daemons still run?
/// `owner_alive` decides from the recorded testbed dir (reads its manifest).
fn owner_blocks(k: usize, owner_alive: &dyn Fn(&Path) -> bool) -> bool {
    match fs::read(run_dir_for(k).join("owner")) {
        Ok(bytes) => {
            let dir = PathBuf::from(String::from_utf8_lossy(&bytes).into_owned());
            owner_alive(&dir)
        }
        Err(_) => false,
    }
}

/// Waits (up to `timeout`) for a free slot. `owner_alive(dir)` tells whether a recorded owner testbed still runs;
/// a stale owner (all its daemons gone) is cleaned by `reclaim(dir)` and the slot reused.
pub fn acquire(
    timeout: Duration,
    owner_alive: &dyn Fn(&Path) -> bool,
    reclaim: &dyn Fn(&Path),
) -> Result<Slot> {
    let deadline = Instant::now() + timeout;
    // Process-wide permit first.
    {
        let cap = process_cap();
        let mut n = IN_USE.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= cap {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no testbed slot within {timeout:?}: this process already uses {cap} (ATREST_TESTBED_SLOTS)"
                );
            }
            n = FREED
                .wait_timeout(n, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *n += 1;
    }
    let mut slot = Slot {
        index: usize::MAX,
        lock: None,
        permit: true,
    };
    fs::create_dir_all(RUN_ROOT).with_context(|| format!("creating {RUN_ROOT}"))?;
    loop {
        for k in 0..SLOTS {
            let path = Path::new(RUN_ROOT).join(format!("slot-{k}.lock"));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()));
                }
            }
            if owner_blocks(k, owner_alive) {
                continue; // lock dropped with `file`
            }
            let owner = run_dir_for(k).join("owner");
            if let Ok(bytes) = fs::read(&owner) {
                reclaim(Path::new(&String::from_utf8_lossy(&bytes).into_owned()));
                let _ = fs::remove_file(&owner);
            }
            slot.index = k;
            slot.lock = Some(file);
            return Ok(slot);
        }
        if Instant::now() >= deadline {
            bail!(
                "no free testbed slot among {SLOTS} within {timeout:?} (see {RUN_ROOT}/slot-*/owner)"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_own_disjoint_address_blocks_and_run_dirs() {
        assert_eq!(ip_for(0, 0), Ipv4Addr::new(127, 0, 20, 11));
        assert_eq!(ip_for(3, 2), Ipv4Addr::new(127, 0, 23, 13));
        assert_ne!(run_dir_for(0), run_dir_for(1));
    }
}
