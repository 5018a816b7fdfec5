//! A zero umask for the passthrough, without changing the VMM's process-wide umask.
//!
//! fuse-backend-rs's passthrough expects umask 0 (the guest already applied its own umask to
//! the modes it sends) and sets it with `umask(2)` when it opens the root — process-wide, which
//! would make every file the rest of the process creates afterwards world-writable. Instead:
//! - [`restoring`] puts the process umask back after a call that sets it (the root import at
//!   device creation);
//! - [`ZeroUmask`] gives the thread serving requests its own copy of the file system attributes
//!   (`unshare(CLONE_FS)`: cwd, root, umask) once, and sets umask 0 on that copy only for the
//!   duration of a batch of requests.

use std::cell::Cell;

thread_local! {
    /// Whether this thread already has private file system attributes.
    static PRIVATE_FS: Cell<bool> = const { Cell::new(false) };
}

/// Run `f`, then restore the process umask it may have changed.
pub fn restoring<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: umask(2) cannot fail; it only swaps the file mode mask (to the 0 `f` sets anyway).
    let old = unsafe { libc::umask(0) };
    let out = f();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    out
}

/// Umask 0 on this thread (with private file system attributes) until dropped.
pub struct ZeroUmask {
    previous: libc::mode_t,
}

impl ZeroUmask {
    /// Set umask 0 for this thread only; `None` (and the thread's umask untouched) when the
    /// thread cannot get private file system attributes.
    pub fn set() -> Option<Self> {
        if !PRIVATE_FS.get() {
            // SAFETY: unshare(CLONE_FS) only copies the calling thread's fs attributes.
            if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                tracing::warn!(
                    "virtio-fs: unshare(CLONE_FS): {}; guest modes get the VMM's umask",
                    std::io::Error::last_os_error()
                );
                return None;
            }
            PRIVATE_FS.set(true);
        }
        // SAFETY: affects only this thread's private fs attributes (see above).
        let previous = unsafe { libc::umask(0) };
        Some(ZeroUmask { previous })
    }
}

impl Drop for ZeroUmask {
    fn drop(&mut self) {
        // SAFETY: restores this thread's private umask.
        unsafe { libc::umask(self.previous) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's umask, read without changing it.
    fn current() -> libc::mode_t {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        libc::mode_t::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
    }

    #[test]
    fn zero_umask_is_private_to_the_thread_and_restored() {
        let process = current();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (checked_tx, checked_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let g = ZeroUmask::set().expect("unshare(CLONE_FS)");
            assert_eq!(current(), 0);
            held_tx.send(()).unwrap();
            checked_rx.recv().unwrap();
            drop(g);
            assert_eq!(current(), process);
        });
        held_rx.recv().unwrap();
        // While the serving thread has umask 0, this thread keeps the process umask.
        assert_eq!(current(), process);
        checked_tx.send(()).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn restoring_puts_the_mask_back() {
        let before = current();
        restoring(|| {
            // SAFETY: changes the mask the wrapper restores.
            unsafe { libc::umask(0) };
        });
        assert_eq!(current(), before);
    }
}
