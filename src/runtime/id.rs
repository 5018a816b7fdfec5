//! Container id validation.

use super::error::{Result, RuntimeError};

/// Longest accepted id, in bytes.
pub const MAX_ID_LEN: usize = 1024;

/// Check that `id` is usable as a container id (and as a directory name under --root).
///
/// Accepted: 1..=1024 bytes of `[A-Za-z0-9_.+-]`, not `.` or `..`.
pub fn validate_id(id: &str) -> Result<()> {
    let reason = if id.is_empty() {
        Some("it is empty")
    } else if id == "." || id == ".." {
        Some("it is a relative path component")
    } else if id.contains('/') {
        Some("it contains '/'")
    } else if id.len() > MAX_ID_LEN {
        Some("it is longer than 1024 bytes")
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'))
    {
        Some("only letters, digits and _ . + - are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(RuntimeError::InvalidId {
            id: id.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for id in ["a", "web-1", "x_y.z+1", "ABC123", "...", &"a".repeat(1024)] {
            assert!(validate_id(id).is_ok(), "{id} should be valid");
        }
    }

    #[test]
    fn rejects_bad_ids_naming_them() {
        let too_long = "a".repeat(1025);
        for id in [
            "", ".", "..", "a/b", "/", "sp ace", "tab\t", "é", "a:b", &too_long,
        ] {
            let err = validate_id(id).expect_err(id).to_string();
            assert!(err.starts_with("invalid container id "), "{err}");
            assert!(err.contains(&format!("{id:?}")), "{err} should name {id:?}");
        }
    }

    #[test]
    fn explains_the_reason() {
        assert!(validate_id("").unwrap_err().to_string().contains("empty"));
        assert!(validate_id("a/b").unwrap_err().to_string().contains("'/'"));
        assert!(validate_id(&"b".repeat(2000))
            .unwrap_err()
            .to_string()
            .contains("1024"));
    }
}
