//! The swap cut at every step, as a killed pod would leave it, and run again.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use super::*;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const OLD: [&str; 3] = ["binlog.000001", "errant", "ibdata1"];
const NEW: [&str; 2] = ["ibdata1", "x"];

fn ready(id: &str) -> Ready {
    Ready {
        id: id.into(),
        gtids: "0-1-7".into(),
    }
}

/// A data directory holding the old files and a ready copy `id` holding the new ones.
fn data_dir(tag: &str, id: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("seed-swap-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(d.join("lost+found")).unwrap();
    for f in OLD {
        fs::write(d.join(f), format!("old {f}")).unwrap();
    }
    fs::create_dir_all(new_dir(&d)).unwrap();
    for f in NEW {
        fs::write(new_dir(&d).join(f), format!("new {f}")).unwrap();
    }
    fs::write(ready_file(&d), ready(id).to_line()).unwrap();
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
        .filter(|(name, _)| name != LOCK_FILE)
        .collect();
    out.sort();
    out
}

/// What the data directory holds once the copy is in place (the staging directory keeps
/// only the phase, which says what was swapped in).
fn swapped() -> Vec<(String, String)> {
    vec![
        (STAGING_DIR.into(), "<dir>".into()),
        ("ibdata1".into(), "new ibdata1".into()),
        ("lost+found".into(), "<dir>".into()),
        ("x".into(), "new x".into()),
    ]
}

fn staged(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(staging(d))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// What the data directory holds when the swap moved nothing (its staging directory stays).
fn untouched() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = OLD
        .iter()
        .map(|f| (f.to_string(), format!("old {f}")))
        .collect();
    v.push(("lost+found".into(), "<dir>".into()));
    v.push((STAGING_DIR.into(), "<dir>".into()));
    v.sort();
    v
}

#[test]
fn without_a_ready_copy_nothing_moves() {
    let d = data_dir("none", "c1");
    fs::remove_file(ready_file(&d.0)).unwrap();
    assert_eq!(swap(&d.0, Some("c1")).unwrap(), Outcome::Nothing);
    assert!(d.0.join("ibdata1").exists());
    assert!(
        new_dir(&d.0).join("x").exists(),
        "a partial copy: left to the next fetch"
    );
}

#[test]
fn an_approved_copy_replaces_the_data_and_the_old_is_gone() {
    let d = data_dir("ready", "c1");
    assert_eq!(
        swap(&d.0, Some("c1")).unwrap(),
        Outcome::Swapped(ready("c1"))
    );
    assert_eq!(contents(&d.0), swapped());
    assert_eq!(staged(&d.0), ["phase"]);
    // Run again (a later restart): nothing moves, and it says again what it put in place.
    assert_eq!(swap(&d.0, None).unwrap(), Outcome::Swapped(ready("c1")));
    assert_eq!(contents(&d.0), swapped());
    // A new fetch starts by clearing the finished swap.
    assert!(!clear_finished(&d.0).unwrap());
    assert!(staged(&d.0).is_empty());
    assert_eq!(swap(&d.0, Some("c1")).unwrap(), Outcome::Nothing);
}

#[test]
fn approvals_expire() {
    assert_eq!(approved_id("c1 1000", 999), Some("c1".into()));
    assert_eq!(approved_id("c1 1000\n", 1000), Some("c1".into()));
    assert_eq!(approved_id("c1 1000", 1001), None, "expired");
    for garbled in ["c1", "c1 soon", " 1000", ""] {
        assert_eq!(approved_id(garbled, 0), None, "{garbled:?}");
    }
}

#[test]
fn a_ready_mark_without_its_copy_is_thrown_away() {
    let d = data_dir("no-new", "c1");
    fs::remove_dir_all(new_dir(&d.0)).unwrap();
    assert_eq!(
        swap(&d.0, Some("c1")).unwrap(),
        Outcome::Discarded("c1".into())
    );
    assert_eq!(contents(&d.0), untouched());
}

#[test]
fn a_swap_under_way_keeps_a_fetch_away() {
    for phase in ["out", "in"] {
        let d = data_dir(&format!("under-way-{phase}"), "c1");
        fs::write(
            phase_file(&d.0),
            format!("{phase} {}", ready("c1").to_line()),
        )
        .unwrap();
        assert!(clear_finished(&d.0).unwrap(), "{phase}");
        assert!(phase_file(&d.0).exists());
    }
}

#[test]
fn a_copy_nobody_approved_is_thrown_away_and_the_data_kept() {
    for approved in [None, Some("c0")] {
        let d = data_dir("stale", "c1");
        assert_eq!(
            swap(&d.0, approved).unwrap(),
            Outcome::Discarded("c1".into())
        );
        assert_eq!(contents(&d.0), untouched(), "approved {approved:?}");
        assert!(!ready_file(&d.0).exists() && !new_dir(&d.0).exists());
    }
}

#[test]
fn a_running_fetch_keeps_the_swap_away() {
    let d = data_dir("busy", "c1");
    let lock = super::super::try_lock(&d.0).unwrap().unwrap();
    assert_eq!(swap(&d.0, Some("c1")).unwrap(), Outcome::Busy);
    assert_eq!(contents(&d.0), untouched());
    drop(lock);
    assert_eq!(
        swap(&d.0, Some("c1")).unwrap(),
        Outcome::Swapped(ready("c1"))
    );
}

/// A swap stopped after any number of moves or removals (the pod killed) finishes when run
/// again — without the approval, which was given when it started (the operator may have
/// given up waiting by then: half-moved data must never be left half-moved).
#[test]
fn a_swap_interrupted_anywhere_finishes_when_run_again() {
    let mut cuts = Vec::new();
    for out in 0..=OLD.len() {
        cuts.push((out, 0, 0));
    }
    for moved_in in 1..=NEW.len() {
        cuts.push((OLD.len(), moved_in, 0));
    }
    // The clean-up: ready removed; the old data removed too; everything but the phase.
    cuts.push((OLD.len(), NEW.len(), 1));
    cuts.push((OLD.len(), NEW.len(), 2));
    cuts.push((OLD.len(), NEW.len(), 3));
    for (out, moved_in, cleaned) in cuts {
        let cut = format!("cut {out}/{moved_in}/{cleaned}");
        let d = data_dir(&format!("cut-{out}-{moved_in}-{cleaned}"), "c1");
        let line = ready("c1").to_line();
        fs::write(phase_file(&d.0), format!("out {line}")).unwrap();
        let old = staging(&d.0).join("old");
        fs::create_dir_all(&old).unwrap();
        for f in OLD.iter().take(out) {
            fs::rename(d.0.join(f), old.join(f)).unwrap();
        }
        if out == OLD.len() && moved_in > 0 {
            fs::write(phase_file(&d.0), format!("in {line}")).unwrap();
            for f in NEW.iter().take(moved_in) {
                fs::rename(new_dir(&d.0).join(f), d.0.join(f)).unwrap();
            }
        }
        if cleaned > 0 {
            fs::write(phase_file(&d.0), format!("done {line}")).unwrap();
            fs::remove_file(ready_file(&d.0)).unwrap();
        }
        if cleaned > 1 {
            fs::remove_dir_all(&old).unwrap();
        }
        if cleaned > 2 {
            fs::remove_dir_all(new_dir(&d.0)).unwrap();
        }
        assert_eq!(
            swap(&d.0, None).unwrap(),
            Outcome::Swapped(ready("c1")),
            "{cut}"
        );
        assert_eq!(contents(&d.0), swapped(), "{cut}");
    }
}

#[test]
fn an_unknown_phase_is_an_error_and_touches_nothing() {
    let d = data_dir("garbled", "c1");
    fs::write(phase_file(&d.0), "sideways").unwrap();
    assert!(swap(&d.0, Some("c1")).is_err());
    assert_eq!(contents(&d.0), untouched());
}

#[test]
fn outcomes_read_back_from_their_messages() {
    for o in [
        Outcome::Nothing,
        Outcome::Busy,
        Outcome::Discarded("c9".into()),
        Outcome::Swapped(ready("c1")),
        Outcome::Swapped(Ready {
            id: "c2".into(),
            gtids: String::new(),
        }),
    ] {
        assert_eq!(Outcome::parse(&o.message()), Some(o.clone()), "{o:?}");
    }
    assert_eq!(Outcome::parse(""), None);
    assert_eq!(Outcome::parse("swapped"), None);
}
