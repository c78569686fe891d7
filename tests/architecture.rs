//! The shape of the crate stays as docs/architecture.md draws it: every module imports only from
//! modules below it. Each unit (a top-level module, or a sub-module named in `RANKS`) has a rank;
//! a `crate::x` path in a unit's non-test code must name a unit of lower rank, or itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Unit → rank. Same rank: neither may import the other.
const RANKS: &[(&str, u32)] = &[
    // Facts and formats that depend on nothing of ours.
    ("wire", 0),
    ("host", 0),
    ("stats", 0),
    ("service", 0),
    // Engines that measure: storms and servers, then sessions (which speak the storm's protocols).
    ("storm", 1),
    ("server", 1),
    ("affinity", 2),
    // The disruption agent's traffic (storms, long-lived connections, UDP sessions per second).
    ("disruption", 2),
    // The run record (it embeds the engines' result types).
    ("record", 3),
    // Engines that judge and build records; the two places where Services run.
    ("spread", 4),
    ("zones", 4),
    ("families", 4),
    ("matrix", 4),
    ("affinity/judge", 4),
    ("disruption/judge", 4),
    ("lab", 4),
    ("cluster", 4),
    // What reads records, and the agent program.
    ("report", 5),
    ("agent", 5),
    // Where agents run.
    ("backend", 6),
    // The run pipeline.
    ("run", 7),
    // Thin commands, then the command line.
    ("commands", 8),
    ("cli", 9),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The unit of a file: the longest `RANKS` entry its module path starts with.
fn unit(rel: &str) -> Option<&'static str> {
    let module = rel.trim_end_matches(".rs").trim_end_matches("/mod");
    RANKS
        .iter()
        .map(|(u, _)| *u)
        .filter(|u| module == *u || module.starts_with(&format!("{u}/")))
        .max_by_key(|u| u.len())
}

/// `crate::a::b` paths in code (not comments, not the test module at the end of a file).
fn imports(text: &str) -> Vec<String> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = Vec::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.push(path.split("::").filter(|s| !s.is_empty()).collect::<Vec<_>>().join("/"));
        }
    }
    out
}

#[test]
fn modules_import_only_from_below() {
    let rank: BTreeMap<&str, u32> = RANKS.iter().copied().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut unranked = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
        // The binary's entry, the crate root, test-only support and test files may use anything.
        if ["main.rs", "lib.rs", "testing.rs"].contains(&rel.as_str())
            || rel.starts_with("cluster/fake/")
            || rel.ends_with("/tests.rs")
        {
            continue;
        }
        let Some(from) = unit(&rel) else {
            unranked.push(rel);
            continue;
        };
        for path in imports(&std::fs::read_to_string(f).unwrap()) {
            let Some(to) = unit(&format!("{path}.rs")).or_else(|| unit(path.split('/').next().unwrap_or(""))) else {
                violations.push(format!("{rel}: crate::{path} is in no ranked unit"));
                continue;
            };
            if to != from && rank[to] >= rank[from] {
                violations.push(format!(
                    "{rel} ({from}, rank {}) imports crate::{} ({to}, rank {})",
                    rank[from],
                    path.replace('/', "::"),
                    rank[to]
                ));
            }
        }
    }
    assert!(unranked.is_empty(), "files in no unit of RANKS: {unranked:?}");
    assert!(violations.is_empty(), "upward imports:\n{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_paths_and_skips_comments_and_tests() {
    let text = "use crate::run::open::Place;\n// crate::cli in a comment\nfn f() { crate::stats::x(); }\n#[cfg(test)]\nmod tests {\n use crate::cli::Cli;\n}\n";
    assert_eq!(imports(text), ["run/open/Place", "stats/x"]);
    assert_eq!(unit("affinity/judge.rs"), Some("affinity/judge"));
    assert_eq!(unit("affinity/udp.rs"), Some("affinity"));
    assert_eq!(unit("run/mod.rs"), Some("run"));
    assert_eq!(unit("lab.rs"), Some("lab"));
}
