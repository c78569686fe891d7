//! Where a run's record goes: named by its tag, under a directory, never overwriting.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::record::Saved;

/// How a measuring run names and saves its record.
#[derive(Debug, Clone)]
pub struct SaveTo {
    /// `None`: `<command>-<local date>-<time>` of the run's start.
    pub tag: Option<String>,
    pub dir: PathBuf,
    /// Save nothing.
    pub no_save: bool,
}

impl SaveTo {
    pub fn validate(&self) -> Result<()> {
        if let Some(tag) = &self.tag
            && (tag.is_empty() || tag.contains('/'))
        {
            bail!("--tag {tag:?}: give a non-empty name without '/'");
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

    /// Saves `run` unless told not to, telling the user where (and about a renamed tag).
    pub fn save<R: Saved>(&self, run: &mut R) -> Result<()> {
        if self.no_save {
            return Ok(());
        }
        let wanted = run.tag().to_string();
        let path = crate::record::save(&self.dir, run)?;
        if run.tag() != wanted {
            eprintln!(
                "svclb: a run tagged {wanted:?} exists; saved this one as {:?}",
                run.tag()
            );
        }
        eprintln!("svclb: saved {}", path.display());
        Ok(())
    }
}
