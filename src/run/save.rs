//! Where a run's record goes: named by its tag, under a directory, never overwriting. Checked
//! before the run (a measurement must not be lost to a bad `--save` or `--tag`); a save that still
//! fails goes to a fallback directory, and the caller is told so it can exit 2 after reporting.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::record::Saved;

/// Longest tag: file names are at most 255 bytes, and a tag may get `-N` and `.json` appended.
pub const MAX_TAG: usize = 200;

/// How a measuring run names and saves its record.
#[derive(Debug, Clone)]
pub struct SaveTo {
    /// `None`: `<command>-<local date>-<time>` of the run's start.
    pub tag: Option<String>,
    pub dir: PathBuf,
    /// Save nothing.
    pub no_save: bool,
}

/// Where a record went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Saved(PathBuf),
    /// `--no-save`.
    NotSaved,
    /// The save failed (why); the record went to the fallback path, if that worked.
    Failed {
        error: String,
        fallback: Option<PathBuf>,
    },
}

/// The fallback directory: `$TMPDIR/svclb-saves`.
pub fn fallback_dir() -> PathBuf {
    std::env::temp_dir().join("svclb-saves")
}

impl SaveTo {
    /// Checks the tag, and that the directory exists or can be made and takes files.
    pub fn validate(&self) -> Result<()> {
        if let Some(tag) = &self.tag {
            if tag.is_empty() || tag.contains('/') || tag.contains('\0') {
                bail!("--tag {tag:?}: give a non-empty name without '/'");
            }
            if tag.len() > MAX_TAG {
                bail!("--tag of {} bytes: give at most {MAX_TAG} (it names a file)", tag.len());
            }
        }
        if !self.no_save {
            writable(&self.dir)
                .with_context(|| format!("--save {}: runs could not be saved there", self.dir.display()))?;
        }
        Ok(())
    }

    /// The run's tag: the given one, else `<command>-<local date>-<time>` of its start.
    pub fn tag(&self, command: &str, started: jiff::Timestamp) -> String {
        self.tag.clone().unwrap_or_else(|| {
            let local = started.to_zoned(jiff::tz::TimeZone::system());
            format!("{command}-{}", local.strftime("%Y%m%d-%H%M%S"))
        })
    }

    /// Saves `run` unless told not to, telling the user where (and about a renamed tag). A failed
    /// save is told, and the record is written to [`fallback_dir`] instead.
    pub fn save<R: Saved>(&self, run: &mut R) -> Outcome {
        if self.no_save {
            return Outcome::NotSaved;
        }
        let wanted = run.tag().to_string();
        match crate::record::save(&self.dir, run) {
            Ok(path) => {
                if run.tag() != wanted {
                    eprintln!(
                        "svclb: a run tagged {wanted:?} exists; saved this one as {:?}",
                        run.tag()
                    );
                }
                eprintln!("svclb: saved {}", path.display());
                Outcome::Saved(path)
            }
            Err(e) => {
                let error = format!("{e:#}");
                let fallback = crate::record::save(&fallback_dir(), run).ok();
                match &fallback {
                    Some(p) => eprintln!("svclb: the save failed ({error}); saved {} instead", p.display()),
                    None => eprintln!(
                        "svclb: the save failed ({error}), and so did the fallback in {}: the record is printed with -o json",
                        fallback_dir().display()
                    ),
                }
                Outcome::Failed { error, fallback }
            }
        }
    }
}

/// `dir` is (or can be made) a directory this process can create files in.
fn writable(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let probe = dir.join(format!(".svclb-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("cannot write in {}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(dir: &Path, tag: Option<&str>) -> SaveTo {
        SaveTo {
            tag: tag.map(String::from),
            dir: dir.to_path_buf(),
            no_save: false,
        }
    }

    #[test]
    fn bad_places_and_tags_are_refused_before_a_run() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let e = to(&file, None).validate().unwrap_err();
        assert!(format!("{e:#}").contains("is not a directory"), "{e:#}");
        let e = to(&file.join("below"), None).validate().unwrap_err();
        assert!(format!("{e:#}").contains("--save"), "{e:#}");
        let long = "x".repeat(300);
        let e = to(d.path(), Some(&long)).validate().unwrap_err();
        assert!(e.to_string().contains("at most 200"), "{e}");
        assert!(to(d.path(), Some("a/b")).validate().is_err());
        // A new directory is made; nothing is left in it.
        let fresh = d.path().join("new");
        to(&fresh, Some("ok")).validate().unwrap();
        assert_eq!(std::fs::read_dir(&fresh).unwrap().count(), 0);
        // --no-save: the directory does not matter.
        let mut s = to(&file, None);
        s.no_save = true;
        s.validate().unwrap();
    }

    #[test]
    fn a_failed_save_goes_to_the_fallback_and_says_so() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Run {
            tag: String,
        }
        impl Saved for Run {
            fn tag(&self) -> &str {
                &self.tag
            }
            fn set_tag(&mut self, tag: String) {
                self.tag = tag;
            }
        }
        let mut run = Run {
            tag: format!("fallback-test-{}", std::process::id()),
        };
        let Outcome::Failed { error, fallback } = to(&file, None).save(&mut run) else {
            panic!("saved into a file?")
        };
        assert!(error.contains("cannot create save directory"), "{error}");
        let p = fallback.expect("the fallback directory takes it");
        assert!(p.starts_with(fallback_dir()));
        let back: Run = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(back.tag, run.tag);
        std::fs::remove_file(p).unwrap();
    }
}
