//! Files other processes read while they are written.

use std::{io, path::Path};

/// Write `text` to `path` so a reader sees the old file or the new one, never half of one:
/// write a temporary file beside it, then rename it over.
pub fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
