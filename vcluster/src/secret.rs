//! Secret files: tokens and private keys that only their owner may read. Secrets reach
//! the binaries through such files or the environment, never through command-line
//! arguments (which every user of the machine can read in `ps`). The mode rule is
//! vpnd's for its key files (`vpn-daemon/src/config.rs`): no group or other bits.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why a secret file could not be read or written.
#[derive(Debug, Error)]
pub enum SecretFileError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: mode {mode:04o} lets others read a secret; run: chmod 600 {path}")]
    Loose { path: PathBuf, mode: u32 },
    #[error("{path}: is empty")]
    Empty { path: PathBuf },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Refuses a file that its group or others may read or write.
pub fn check_mode(path: &Path) -> Result<(), SecretFileError> {
    let meta = std::fs::metadata(path).map_err(|source| SecretFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Loose {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Reads a token (the file's first line, trimmed) from a file only its owner may read.
pub fn read_token_file(path: &Path) -> Result<String, SecretFileError> {
    check_mode(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| SecretFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(SecretFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(token)
}

/// Writes `contents` to a new or truncated file of mode 0600 (and makes an existing
/// file 0600 too: `mode` at open applies only to files it creates).
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), SecretFileError> {
    let error = |source| SecretFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(error)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(error)?;
    f.write_all(contents).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_readable_by_others_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.token");
        std::fs::write(&path, "vc_secret\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_token_file(&path).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains(&format!("{mode:04o}")), "{e}");
            assert!(e.contains("chmod 600"), "{e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "vc_secret");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "vc_secret");
    }

    #[test]
    fn empty_and_missing_token_files_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let e = read_token_file(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        write_secret_file(&path, b"\n").unwrap();
        let e = read_token_file(&path).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
    }

    #[test]
    fn written_secrets_are_owner_only_even_over_a_loose_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_secret_file(&path, b"new").unwrap();
        check_mode(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
    }
}
