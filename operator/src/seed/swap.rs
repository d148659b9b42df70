//! Putting a ready copy in place, before the server starts (an init container of every
//! MariaDB pod). The operator approves each swap: it names the copy it wants for a pod, with
//! a deadline (in a ConfigMap the init container mounts), before it restarts the pod, so a
//! copy nobody waits for any more — its re-seed gave up or was cut short, or the pod has since
//! become the primary — is thrown away, never swapped in.
//!
//! The data directory is the volume's root and cannot itself be renamed, so its entries move
//! one by one; a phase file makes every step resumable — a pod killed halfway through runs
//! the swap again and finishes it:
//!
//! 1. no phase, a ready copy the operator approved: the phase becomes `out` (from here on the
//!    swap finishes whatever the approval says), and every entry of the data directory (but
//!    the staging directory, the lock and the volume's `lost+found`) moves into `old/`; then
//!    the phase is `in`;
//! 2. `in`: every entry of `new/` moves into the data directory; then the phase is `done`;
//! 3. `done`: `ready` is removed first (so the copy is never taken for a new one), then the
//!    old data; the phase file stays, so a swap run again (the pod killed during the clean-up,
//!    or restarted later) says again which copy it put in place. The next fetch removes it.
//!
//! A fetch holding the data directory's lock (its Job runs beside the restarting pod) makes
//! the swap leave everything as it is.

use std::{fs, io::Write, path::Path};

use super::{
    Error, LOCK_FILE, STAGING_DIR,
    fetch::{Ready, new_dir, phase_file, ready_file, staging},
    io,
};

/// Entries of a data directory that stay where they are.
const KEEP: [&str; 3] = [STAGING_DIR, LOCK_FILE, "lost+found"];

/// What a swap found to do; its [`message`](Self::message) is the init container's
/// termination message, which the operator reads before it sets the replica's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No ready copy.
    Nothing,
    /// A fetch is running in the data directory: nothing was touched.
    Busy,
    /// A ready copy nobody approved (its id): removed.
    Discarded(String),
    /// The copy is in place.
    Swapped(Ready),
}

impl Outcome {
    /// `nothing`, `busy`, `discarded <id>` or `swapped <id> <gtids>`.
    pub fn message(&self) -> String {
        match self {
            Self::Nothing => "nothing".into(),
            Self::Busy => "busy".into(),
            Self::Discarded(id) => format!("discarded {id}"),
            Self::Swapped(r) => format!("swapped {}", r.to_line()),
        }
    }

    /// The inverse of [`message`](Self::message).
    pub fn parse(message: &str) -> Option<Self> {
        let message = message.trim();
        let (word, rest) = message.split_once(' ').unwrap_or((message, ""));
        match word {
            "nothing" => Some(Self::Nothing),
            "busy" => Some(Self::Busy),
            "discarded" if !rest.is_empty() => Some(Self::Discarded(rest.to_string())),
            "swapped" => Ready::parse(rest).map(Self::Swapped),
            _ => None,
        }
    }
}

/// Where a swap stands, as its phase file says.
enum Phase {
    /// Not started.
    None,
    /// The old data moves out.
    Out(Ready),
    /// The old data is out; the copy moves in.
    In(Ready),
    /// The copy is in; what is left is removed.
    Done(Ready),
}

fn read_phase(data_dir: &Path) -> Result<Phase, Error> {
    let path = phase_file(data_dir);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Phase::None),
        Err(e) => return Err(io("read", &path)(e)),
    };
    let (word, rest) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    let unreadable = || Error::Io {
        what: "understand",
        path: path.clone(),
        source: std::io::Error::other(format!("unknown phase {text:?}")),
    };
    let ready = Ready::parse(rest).ok_or_else(unreadable)?;
    match word {
        "out" => Ok(Phase::Out(ready)),
        "in" => Ok(Phase::In(ready)),
        "done" => Ok(Phase::Done(ready)),
        _ => Err(unreadable()),
    }
}

fn read_ready(data_dir: &Path) -> Result<Option<Ready>, Error> {
    let path = ready_file(data_dir);
    match fs::read_to_string(&path) {
        Ok(t) => Ok(Some(Ready::parse(&t).unwrap_or(Ready {
            id: "unreadable".into(),
            gtids: String::new(),
        }))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", &path)(e)),
    }
}

/// Put the ready copy in place if its id is `approved`, or finish putting it; throw a ready
/// copy away that is not approved.
pub fn swap(data_dir: &Path, approved: Option<&str>) -> Result<Outcome, Error> {
    let Some(_lock) = super::try_lock(data_dir)? else {
        return Ok(Outcome::Busy);
    };
    let old = staging(data_dir).join("old");
    let new = new_dir(data_dir);
    let phase_path = phase_file(data_dir);
    let move_in = |ready: Ready| -> Result<Ready, Error> {
        move_entries(&new, data_dir)?;
        write_durably(&phase_path, format!("done {}", ready.to_line()).as_bytes())?;
        Ok(ready)
    };
    let move_out = |ready: Ready| -> Result<Ready, Error> {
        fs::create_dir_all(&old).map_err(io("create", &old))?;
        move_entries(data_dir, &old)?;
        write_durably(&phase_path, format!("in {}", ready.to_line()).as_bytes())?;
        move_in(ready)
    };
    let ready = match read_phase(data_dir)? {
        Phase::None => {
            let Some(ready) = read_ready(data_dir)? else {
                return Ok(Outcome::Nothing);
            };
            // A copy without its files (a fetch stopped while marking it) is no copy.
            if approved != Some(ready.id.as_str()) || !new.is_dir() {
                remove_file(&ready_file(data_dir))?;
                sync_dir(&staging(data_dir))?;
                let _ = fs::remove_dir_all(&new);
                return Ok(Outcome::Discarded(ready.id));
            }
            write_durably(&phase_path, format!("out {}", ready.to_line()).as_bytes())?;
            move_out(ready)?
        }
        Phase::Out(ready) => move_out(ready)?,
        Phase::In(ready) => move_in(ready)?,
        Phase::Done(ready) => ready,
    };
    remove_file(&ready_file(data_dir))?;
    sync_dir(&staging(data_dir))?;
    for dir in [&old, &new] {
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", dir)(e)),
        }
    }
    let _ = fs::remove_file(staging(data_dir).join("seed.log"));
    sync_dir(&staging(data_dir))?;
    sync_dir(data_dir)?;
    Ok(Outcome::Swapped(ready))
}

/// Whether a swap is under way in `data_dir` (its phase `out` or `in`); a finished one's
/// phase file is removed, as a new fetch starts.
pub fn clear_finished(data_dir: &Path) -> Result<bool, Error> {
    match read_phase(data_dir)? {
        Phase::None => Ok(false),
        Phase::Out(_) | Phase::In(_) => Ok(true),
        Phase::Done(_) => {
            remove_file(&phase_file(data_dir))?;
            sync_dir(&staging(data_dir))?;
            Ok(false)
        }
    }
}

/// Seconds since the Unix epoch: approvals' deadlines are written by the operator and read
/// on the node, so they need a clock both share.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An approval of copy `id` until `deadline` (Unix seconds), as the operator writes it.
pub fn approval(id: &str, deadline: u64) -> String {
    format!("{id} {deadline}")
}

/// The copy id an [`approval`] names, if its deadline has not passed at `now`.
pub fn approved_id(approval: &str, now: u64) -> Option<String> {
    let (id, deadline) = approval.trim().split_once(' ')?;
    let deadline: u64 = deadline.trim().parse().ok()?;
    (now <= deadline && !id.is_empty()).then(|| id.to_string())
}

/// Remove a file that may not exist.
pub(super) fn remove_file(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", path)(e)),
    }
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

/// Make a directory's entries (renames, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
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
#[path = "swap_tests.rs"]
mod tests;
