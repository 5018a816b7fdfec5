//! Opening a tap interface: `/dev/net/tun` + `TUNSETIFF` with `IFF_TAP | IFF_NO_PI`.
//!
//! No `IFF_VNET_HDR`: frames cross the tap as plain Ethernet frames, so nothing the guest puts
//! in its virtio-net header (checksum or segmentation requests) ever reaches the host kernel;
//! the device strips the header on transmit and writes a zeroed one on receive.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// The clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// Longest interface name (IFNAMSIZ - 1).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

// TUNSETIFF = _IOW('T', 202, int); it takes a `struct ifreq *`.
nix::ioctl_write_ptr_bad!(
    tunsetiff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()),
    libc::ifreq
);

/// Why a tap could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long or has characters an interface name cannot have.
    #[error(
        "tap {0:?}: invalid interface name (1..=15 bytes, no '/', '%', ',', '=' or whitespace)"
    )]
    InvalidName(String),
    /// `/dev/net/tun` could not be opened.
    #[error("tap {name}: open {TUN_DEVICE}: {source}")]
    Open {
        /// Interface name.
        name: String,
        /// The cause.
        source: std::io::Error,
    },
    /// `TUNSETIFF` failed (EPERM: needs CAP_NET_ADMIN or a tap owned by this user; EINVAL: the
    /// name belongs to an interface that is not a tap; EBUSY: another process holds the tap).
    #[error("tap {name}: TUNSETIFF: {source}")]
    SetIff {
        /// Interface name.
        name: String,
        /// The cause.
        source: nix::Error,
    },
}

/// Check an interface name the kernel would accept as is (no `%d` templates).
pub fn validate_name(name: &str) -> Result<(), TapError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == '%' || c == ',' || c == '=' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(TapError::InvalidName(name.to_string()))
    }
}

/// Attach to the tap interface `name` (created if it does not exist: it then disappears when
/// the fd is closed). The fd is non-blocking; one read or write is one Ethernet frame.
pub fn open_tap(name: &str) -> Result<OwnedFd, TapError> {
    validate_name(name)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_DEVICE)
        .map_err(|source| TapError::Open {
            name: name.to_string(),
            source,
        })?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: the fd is a tun clone device and `ifr` a valid, NUL-terminated ifreq.
    unsafe { tunsetiff(file.as_raw_fd(), &ifr) }.map_err(|source| TapError::SetIff {
        name: name.to_string(),
        source,
    })?;
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_syscall() {
        assert!(validate_name("tap0").is_ok());
        assert!(validate_name("kvmbox-net-123").is_ok());
        for bad in [
            "",
            "a-name-longer-than15",
            "a/b",
            "tap%d",
            "a b",
            "a,b",
            "a=b",
            ".",
            "..",
        ] {
            assert!(
                matches!(open_tap(bad), Err(TapError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_non_tap_interface_is_refused() {
        // "lo" exists and is not a tap: EINVAL (or EPERM without CAP_NET_ADMIN, or no tun).
        match open_tap("lo") {
            Err(TapError::SetIff { source, .. }) => {
                assert!(matches!(source, nix::Error::EINVAL | nix::Error::EPERM))
            }
            Err(TapError::Open { .. }) => {} // no /dev/net/tun here
            other => panic!("lo opened as a tap: {other:?}"),
        }
    }
}
