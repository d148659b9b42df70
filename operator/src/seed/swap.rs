//! Putting a ready copy in place, before the server starts (an init container of every
//! MariaDB pod). The data directory is the volume's root and cannot itself be renamed, so its
//! entries move one by one; a phase file makes every step resumable — a pod killed halfway
//! through runs the swap again and finishes it:
//!
//! 1. no phase: every entry of the data directory (but the staging directory and the
//!    volume's `lost+found`) moves into `old/`; then the phase is `in`;
//! 2. `in`: every entry of `new/` moves into the data directory; then the phase is `done`;
//! 3. `done`: the staging directory (the old data with it) is removed.
//!
//! Without a ready copy it does nothing: a partial copy (its Job failed, or is still running
//! beside the server) is left to the next fetch, which starts by removing it.

use std::{fs, io::Write, path::Path};

use super::{
    Error, STAGING_DIR,
    fetch::{new_dir, phase_file, ready_file, staging},
    io,
};

/// Entries of a data directory that stay where they are.
const KEEP: [&str; 2] = [STAGING_DIR, "lost+found"];

/// What a swap found to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No ready copy.
    Nothing,
    /// The copy is in place; its GTID position (the operator sets `gtid_slave_pos` to it).
    Swapped(String),
}

/// Put a ready copy in place, or finish putting it.
pub fn swap(data_dir: &Path) -> Result<Outcome, Error> {
    let ready = ready_file(data_dir);
    let phase_path = phase_file(data_dir);
    let phase = fs::read_to_string(&phase_path).unwrap_or_default();
    if !ready.exists() && phase.is_empty() {
        return Ok(Outcome::Nothing);
    }
    let gtids = fs::read_to_string(&ready).unwrap_or_default();
    let old = staging(data_dir).join("old");
    let new = new_dir(data_dir);
    if phase.is_empty() {
        fs::create_dir_all(&old).map_err(io("create", &old))?;
        move_entries(data_dir, &old)?;
        write_durably(&phase_path, b"in")?;
    }
    if phase.is_empty() || phase == "in" {
        move_entries(&new, data_dir)?;
        write_durably(&phase_path, b"done")?;
    }
    let dir = staging(data_dir);
    fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
    sync_dir(data_dir)?;
    Ok(Outcome::Swapped(gtids.trim().to_string()))
}

/// Move every entry of `from` (but [`KEEP`]) into `to`.
fn move_entries(from: &Path, to: &Path) -> Result<(), Error> {
    for entry in fs::read_dir(from).map_err(io("list", from))? {
        let entry = entry.map_err(io("list", from))?;
        let name = entry.file_name();
        if KEEP.iter().any(|k| name == *k) {
            continue;
        }
        let target = to.join(&name);
        fs::rename(entry.path(), &target).map_err(io("move", &entry.path()))?;
    }
    sync_dir(from)?;
    sync_dir(to)
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

/// Write `path` so that it either holds `data` or does not exist, after a crash too: a
/// temporary file, synced, renamed over it, the directory synced.
pub fn write_durably(path: &Path, data: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(data).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename", &tmp))?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::PathBuf;

    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A data directory holding `old` files and a ready copy holding `new` ones.
    fn data_dir(tag: &str, old: &[&str], new: &[&str]) -> Dir {
        let d = std::env::temp_dir().join(format!("seed-swap-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("lost+found")).unwrap();
        for f in old {
            fs::write(d.join(f), format!("old {f}")).unwrap();
        }
        fs::create_dir_all(new_dir(&d)).unwrap();
        for f in new {
            fs::write(new_dir(&d).join(f), format!("new {f}")).unwrap();
        }
        Dir(d)
    }

    fn contents(d: &Path) -> Vec<(String, String)> {
        let mut out: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let text = fs::read_to_string(e.path()).unwrap_or_else(|_| "<dir>".into());
                (e.file_name().to_string_lossy().into_owned(), text)
            })
            .collect();
        out.sort();
        out
    }

    /// What a data directory holds once the copy of `data_dir` is in place.
    fn swapped() -> Vec<(String, String)> {
        vec![
            ("ibdata1".into(), "new ibdata1".into()),
            ("lost+found".into(), "<dir>".into()),
            ("x".into(), "new x".into()),
        ]
    }

    #[test]
    fn without_a_ready_copy_nothing_moves() {
        let d = data_dir("none", &["ibdata1"], &["partial"]);
        assert_eq!(swap(&d.0).unwrap(), Outcome::Nothing);
        assert!(d.0.join("ibdata1").exists());
        assert!(
            new_dir(&d.0).join("partial").exists(),
            "left to the next fetch"
        );
    }

    #[test]
    fn a_ready_copy_replaces_the_data_and_the_old_is_gone() {
        let d = data_dir("ready", &["ibdata1", "errant"], &["ibdata1", "x"]);
        fs::write(ready_file(&d.0), "0-1-42").unwrap();
        assert_eq!(swap(&d.0).unwrap(), Outcome::Swapped("0-1-42".into()));
        assert_eq!(contents(&d.0), swapped());
        assert_eq!(swap(&d.0).unwrap(), Outcome::Nothing, "once only");
    }

    /// A swap stopped after any number of moves (the pod killed) finishes when run again.
    #[test]
    fn a_swap_interrupted_anywhere_finishes_when_run_again() {
        let old = ["ibdata1", "errant", "binlog.000001"];
        let new = ["ibdata1", "x"];
        // Every cut point of the move-out and the move-in, as a real crash would leave it.
        for moved_out in 0..=old.len() {
            for moved_in in 0..=new.len() {
                if moved_in > 0 && moved_out < old.len() {
                    continue; // moving in starts only once everything is out
                }
                let d = data_dir(&format!("cut-{moved_out}-{moved_in}"), &old, &new);
                fs::write(ready_file(&d.0), "0-1-7").unwrap();
                let staged_old = staging(&d.0).join("old");
                fs::create_dir_all(&staged_old).unwrap();
                let mut out: Vec<_> = old.iter().collect();
                out.sort();
                for f in out.iter().take(moved_out) {
                    fs::rename(d.0.join(f), staged_old.join(f)).unwrap();
                }
                if moved_out == old.len() && moved_in > 0 {
                    fs::write(phase_file(&d.0), "in").unwrap();
                    for f in new.iter().take(moved_in) {
                        fs::rename(new_dir(&d.0).join(f), d.0.join(f)).unwrap();
                    }
                }
                assert_eq!(swap(&d.0).unwrap(), Outcome::Swapped("0-1-7".into()));
                assert_eq!(contents(&d.0), swapped(), "cut at {moved_out}/{moved_in}");
            }
        }
    }

    #[test]
    fn a_swap_stopped_while_removing_the_old_data_finishes() {
        let d = data_dir("done", &[], &[]);
        fs::write(d.0.join("ibdata1"), "new ibdata1").unwrap();
        fs::write(d.0.join("x"), "new x").unwrap();
        fs::write(phase_file(&d.0), "done").unwrap();
        fs::create_dir_all(staging(&d.0).join("old")).unwrap();
        assert_eq!(swap(&d.0).unwrap(), Outcome::Swapped(String::new()));
        assert_eq!(contents(&d.0), swapped());
    }
}
