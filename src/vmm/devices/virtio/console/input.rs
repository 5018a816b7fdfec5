//! The console's input thread: reads a host fd (stdin) into the receiver's bounded buffer and
//! delivers it to the guest; pauses while the buffer is full; stops at EOF, on a read error, or
//! when the console is dropped.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{lock, Receiver};

/// How long to wait before looking again when the pending buffer is full (ms).
const FULL_RETRY_MS: u16 = 50;

/// A running input thread; stopped and joined on drop.
pub(crate) struct InputThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl InputThread {
    /// Start reading `fd` into `rx`.
    pub(crate) fn spawn(fd: OwnedFd, rx: Arc<Mutex<Receiver>>) -> std::io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop_thread = stop.try_clone()?;
        let handle = std::thread::Builder::new()
            .name("virtio-console-in".into())
            .spawn(move || input_loop(fd, stop_thread, rx))?;
        Ok(InputThread {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for InputThread {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn input_loop(fd: OwnedFd, stop: EventFd, rx: Arc<Mutex<Receiver>>) {
    let mut open = true;
    let mut buf = [0u8; 4096];
    loop {
        let room = lock(&rx).room();
        let want_input = open && room > 0;
        let timeout = if open && room == 0 {
            PollTimeout::from(FULL_RETRY_MS)
        } else {
            PollTimeout::NONE
        };
        // SAFETY: `stop` outlives this borrow (it lives until the function returns).
        let stop_fd = unsafe { BorrowedFd::borrow_raw(stop.as_raw_fd()) };
        let mut fds = vec![PollFd::new(stop_fd, PollFlags::POLLIN)];
        if want_input {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("virtio-console input: poll: {e}");
                return;
            }
        }
        if fds[0].any().unwrap_or(false) {
            return;
        }
        if !want_input || !fds[1].any().unwrap_or(false) {
            continue;
        }
        let n = room.min(buf.len());
        match nix::unistd::read(&fd, &mut buf[..n]) {
            Ok(0) => open = false,
            Ok(got) => lock(&rx).push_input(&buf[..got]),
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(e) => {
                tracing::debug!("virtio-console input closed: {e}");
                open = false;
            }
        }
    }
}
