//! Copying this binary into a volume: the operator's image has nothing but the binary, and
//! the programs of [`super`] must run in the database's image, where mariadb-backup is. An
//! init container of the operator's image puts the binary in an `emptyDir` both share.

use std::path::Path;

use super::{Error, io};

/// Copy the running executable to `dest` (executable, replaced atomically).
pub fn install(dest: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let me = std::env::current_exe().map_err(io("find the running executable for", dest))?;
    let tmp = dest.with_extension("tmp");
    std::fs::copy(&me, &tmp).map_err(io("copy to", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod", &tmp))?;
    std::fs::rename(&tmp, dest).map_err(io("rename", &tmp))
}
