//! Incremental frame reassembly for the non-blocking poll loop.
//!
//! The loop never reads past the end of the current frame (it asks [`FrameBuf::want`] how many
//! bytes are still missing), so the raw bytes that follow a stdio connection's `StreamHello`
//! stay in the socket for the container process. Complete frames are decoded with
//! [`protocol::read_frame`], the same bounded decoder the host uses.

use serde::de::DeserializeOwned;

use crate::protocol::{self, ProtocolError, MAX_FRAME};

/// Bytes of the frame being received.
#[derive(Debug, Default)]
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    /// How many more bytes complete the current frame (0 = complete). Errors as soon as the
    /// length header announces more than [`MAX_FRAME`].
    pub fn want(&self) -> Result<usize, ProtocolError> {
        if self.buf.len() < 4 {
            return Ok(4 - self.buf.len());
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(ProtocolError::TooLarge(len));
        }
        Ok(4 + len - self.buf.len())
    }

    /// Append received bytes (at most [`FrameBuf::want`] of them).
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Decode and remove the frame once complete; `Ok(None)` while bytes are missing.
    pub fn take<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtocolError> {
        if self.want()? != 0 {
            return Ok(None);
        }
        let buf = std::mem::take(&mut self.buf);
        protocol::read_frame(&mut buf.as_slice()).map(Some)
    }

    /// True when no byte of a frame has been received.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{write_frame, Hello};

    #[test]
    fn frames_reassemble_byte_by_byte() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &Hello { version: 1 }).unwrap();
        let mut fb = FrameBuf::default();
        let mut got = None;
        for b in &wire {
            assert!(fb.want().unwrap() >= 1);
            fb.push(std::slice::from_ref(b));
            if let Some(h) = fb.take::<Hello>().unwrap() {
                got = Some(h);
            }
        }
        assert_eq!(got, Some(Hello { version: 1 }));
        assert!(fb.is_empty());
        assert_eq!(fb.want().unwrap(), 4);
    }

    #[test]
    fn oversized_header_is_refused_before_the_body() {
        let mut fb = FrameBuf::default();
        fb.push(&((MAX_FRAME as u32) + 1).to_be_bytes());
        assert!(matches!(fb.want(), Err(ProtocolError::TooLarge(_))));
    }

    #[test]
    fn malformed_body_is_an_error() {
        let mut fb = FrameBuf::default();
        fb.push(&2u32.to_be_bytes());
        fb.push(b"{]");
        assert!(matches!(
            fb.take::<Hello>(),
            Err(ProtocolError::Malformed(_))
        ));
    }
}
