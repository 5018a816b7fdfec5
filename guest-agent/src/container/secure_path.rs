//! Resolve a path inside the container rootfs as if the rootfs were `/`: symlinks are followed
//! relative to the rootfs, and anything that would leave it (`..` above the root, a symlink
//! pointing outside) is refused.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use super::error::{ContainerError, Result};

/// Maximum number of symlinks followed while resolving one path.
const MAX_SYMLINKS: usize = 40;

/// Resolve `unsafe_path` (absolute or relative to `/` of the container) under `root`. Missing
/// trailing components are kept as they are (they will be created under the result).
pub(crate) fn resolve_in_root(root: &Path, unsafe_path: &Path) -> Result<PathBuf> {
    let escape = || {
        ContainerError::InvalidSpec(format!(
            "path {} escapes the container rootfs {}",
            unsafe_path.display(),
            root.display()
        ))
    };
    let mut stack: Vec<OsString> = Vec::new();
    let mut pending: Vec<OsString> = Vec::new(); // reversed: last element is next
    push_components(&mut pending, unsafe_path);
    let mut links = 0;
    let mut missing = false;
    while let Some(name) = pending.pop() {
        if name == ".." {
            if stack.pop().is_none() {
                return Err(escape());
            }
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(stack.iter());
        candidate.push(&name);
        if !missing {
            match std::fs::symlink_metadata(&candidate) {
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(ContainerError::InvalidSpec(format!(
                            "path {}: too many levels of symbolic links",
                            unsafe_path.display()
                        )));
                    }
                    let target = std::fs::read_link(&candidate)
                        .map_err(ContainerError::io("read link", &candidate))?;
                    if target.is_absolute() {
                        stack.clear();
                    }
                    push_components(&mut pending, &target);
                    continue;
                }
                Ok(_) => {}
                Err(_) => missing = true,
            }
        }
        stack.push(name);
    }
    let mut out = root.to_path_buf();
    out.extend(stack.iter());
    Ok(out)
}

/// Push the normal and `..` components of `path` onto `pending` so that they pop in order.
fn push_components(pending: &mut Vec<OsString>, path: &Path) {
    let comps: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    pending.extend(comps.into_iter().rev());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn plain_and_missing_paths_stay_under_root() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        assert_eq!(
            resolve_in_root(t.path(), Path::new("/a/b/c")).unwrap(),
            t.path().join("a/b/c")
        );
        assert_eq!(
            resolve_in_root(t.path(), Path::new("a/./b/../b")).unwrap(),
            t.path().join("a/b")
        );
        assert_eq!(resolve_in_root(t.path(), Path::new("/")).unwrap(), t.path());
    }

    #[test]
    fn symlinks_resolve_relative_to_the_root() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("real/dir")).unwrap();
        symlink("/real", t.path().join("abs")).unwrap();
        symlink("real/dir", t.path().join("rel")).unwrap();
        assert_eq!(
            resolve_in_root(t.path(), Path::new("/abs/dir")).unwrap(),
            t.path().join("real/dir")
        );
        assert_eq!(
            resolve_in_root(t.path(), Path::new("/rel/x")).unwrap(),
            t.path().join("real/dir/x")
        );
    }

    #[test]
    fn escapes_are_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("d")).unwrap();
        assert!(resolve_in_root(t.path(), Path::new("/../etc")).is_err());
        assert!(resolve_in_root(t.path(), Path::new("/d/../../x")).is_err());
        symlink("../../../etc", t.path().join("d/out")).unwrap();
        assert!(resolve_in_root(t.path(), Path::new("/d/out/passwd")).is_err());
        symlink("loop", t.path().join("loop")).unwrap();
        assert!(resolve_in_root(t.path(), Path::new("/loop")).is_err());
    }
}
