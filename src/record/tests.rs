//! Records: round trips, mconnect import, versions, and saves (buffered, atomic, never overwriting).

use std::io::Write;
use std::path::Path;

use super::save::{SAVE_BUFFER, publish_by_link, write_record};
use super::*;
use crate::stats::{Check, Criteria, LOOSE, evaluate};

fn sample() -> SpreadRun {
    let backends = vec![
        BackendCount {
            name: "a".into(),
            node: "n1".into(),
            zone: "z1".into(),
            count: 60,
            bytes: 0,
        },
        BackendCount {
            name: "b".into(),
            node: "n2".into(),
            zone: "z2".into(),
            count: 40,
            bytes: 0,
        },
    ];
    let criteria = Criteria {
        expect_backends: Some(2),
        margin_pct: 50.0,
        alpha: None,
    };
    SpreadRun {
        kind: SPREAD_KIND.into(),
        version: SPREAD_VERSION,
        tag: "t".into(),
        started_at: "2026-11-21T10:00:00Z".parse().unwrap(),
        duration_s: 1.5,
        target: TargetInfo {
            address: "10.96.0.10:5001".into(),
            mode: "lab".into(),
            protocol: Proto::Tcp,
            service: Some("tserver".into()),
            source: Some("pod-x".into()),
            lab: Some("lab1".into()),
            ip_family: None,
        },
        params: Params {
            conns: 101,
            parallel: 10,
            rate: Some(50.0),
            timeout_s: 2.0,
            deadline_s: None,
            srccidr: Some("127.1.0.0/16".into()),
            expect_backends: Some(2),
            margin_pct: 50.0,
            alpha: Some(0.001),
            graceful_close: false,
        },
        conns: 101,
        ok: 100,
        failed: Failures {
            timeout: 1,
            ..Failures::default()
        }
        .into(),
        stopped: None,
        stats: evaluate(&[("a", 60), ("b", 40)], 1, &criteria),
        backends,
        sources: vec![],
        latency_ms: Latency {
            p50: 0.1,
            p90: 0.2,
            p99: 0.5,
            max: 1.0,
            mean: 0.12,
        },
        latency_histogram_us: None,
        environment: Environment::local(),
    }
}

#[test]
fn record_round_trips_through_a_save() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = sample();
    let path = save(dir.path(), &mut run).unwrap();
    let back: SpreadRun = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(back, run);
    assert_eq!(back.failed.total, 1);
    let AnyRun::Spread(loaded) = load(&path, &LOOSE).unwrap() else {
        panic!("a spread run")
    };
    assert_eq!(*loaded, run);
    let loaded = Loaded::from(*loaded);
    assert_eq!((loaded.tag.as_str(), loaded.ok, loaded.failed), ("t", 100, 1));
    assert_eq!(loaded.source, Source::Record);
    // A second save of the same tag never overwrites.
    let mut again = sample();
    let p2 = save(dir.path(), &mut again).unwrap();
    assert_eq!(p2.file_name().unwrap(), "t-2.json");
    assert_eq!(again.tag, "t-2");
}

#[test]
fn histogram_buckets_merge_exactly() {
    let (mut a, mut b) = (crate::storm::new_histogram(), crate::storm::new_histogram());
    for v in [100u64, 250, 250, 900, 12_000] {
        a.record(v).unwrap();
    }
    for v in [80u64, 250, 70_000] {
        b.record(v).unwrap();
    }
    let mut merged = crate::storm::new_histogram();
    add_buckets(&mut merged, &histogram_buckets(&a));
    add_buckets(&mut merged, &histogram_buckets(&b));
    let mut direct = a.clone();
    direct.add(&b).unwrap();
    assert_eq!(merged.len(), 8);
    for q in [0.0, 0.25, 0.5, 0.9, 0.99, 1.0] {
        assert_eq!(merged.value_at_quantile(q), direct.value_at_quantile(q), "q={q}");
    }
}

#[test]
fn mconnect_import() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mconnect-iptables.json");
    std::fs::write(
        &path,
        r#"{"hosts":{"p1":9,"p2":31},"failed_connects":2,"failed_reads":1,"time":"0.1s"}"#,
    )
    .unwrap();
    let AnyRun::Mconnect(l) = load(&path, &LOOSE).unwrap() else {
        panic!("an mconnect file")
    };
    assert_eq!(l.tag, "iptables");
    assert_eq!((l.conns, l.ok, l.failed), (43, 40, 3));
    assert_eq!(l.source, Source::Mconnect);
    assert_eq!(l.backends.len(), 2);
    // 9 and 31 of 40 over 2 backends: chi-square p ~ 5e-4, and 3 connections failed.
    assert_eq!(l.stats.verdict, crate::stats::Verdict::Fail);
    assert_eq!(l.stats.decided_by, [Check::ChiSquare, Check::Failures]);
    assert_eq!(l.stats.reasons.len(), 2);
}

#[test]
fn unsupported_version_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.json");
    let mut v = serde_json::to_value(sample()).unwrap();
    v["version"] = 99.into();
    std::fs::write(&path, v.to_string()).unwrap();
    let err = load(&path, &LOOSE).unwrap_err();
    assert!(err.to_string().contains("version 99"), "{err}");
}

#[test]
fn records_from_before_the_verdict_fields_still_load() {
    // Version 1 records made before alpha, band and decided_by: their verdict stands as saved.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.json");
    let mut v = serde_json::to_value(sample()).unwrap();
    let stats = v["stats"].as_object_mut().unwrap();
    for new in ["alpha", "band", "decided_by"] {
        assert!(stats.remove(new).is_some(), "{new}");
    }
    std::fs::write(&path, v.to_string()).unwrap();
    let AnyRun::Spread(loaded) = load(&path, &LOOSE).unwrap() else {
        panic!("a spread run")
    };
    assert_eq!(loaded.stats.verdict, crate::stats::Verdict::Fail);
    assert_eq!((loaded.stats.alpha, loaded.stats.band), (None, None));
    assert!(loaded.stats.decided_by.is_empty());
}

/// Counts the writes that reach it.
#[derive(Default)]
struct Counting {
    writes: usize,
    bytes: usize,
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writes += 1;
        self.bytes += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The sample run with `n` backends.
fn with_backends(n: u64) -> SpreadRun {
    let mut run = sample();
    run.backends = (0..n)
        .map(|i| BackendCount {
            name: format!("pod-{i:05}"),
            node: format!("node-{}", i % 50),
            zone: "zone-a".into(),
            count: i,
            bytes: 0,
        })
        .collect();
    run
}

#[test]
fn a_big_record_is_written_in_few_large_writes() {
    let run = with_backends(20_000);
    let saved = write_record(Counting::default(), &run).unwrap();
    assert!(saved.bytes > 1_900_000, "{}", saved.bytes);
    assert!(
        saved.writes <= saved.bytes / SAVE_BUFFER + 1,
        "{} writes for {} bytes",
        saved.writes,
        saved.bytes
    );
    // What an unbuffered file gets: a write per token.
    let mut raw = Counting::default();
    serde_json::to_writer_pretty(&mut raw, &run).unwrap();
    assert!(raw.writes > 500_000, "{}", raw.writes);
}

/// A record whose serialization breaks after a megabyte, like a save killed midway.
struct Breaks {
    tag: String,
}

impl Serialize for Breaks {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        let mut seq = s.serialize_seq(None)?;
        for i in 0..200_000u32 {
            seq.serialize_element(&i)?;
        }
        Err(S::Error::custom("broken midway"))
    }
}

impl Saved for Breaks {
    fn tag(&self) -> &str {
        &self.tag
    }
    fn set_tag(&mut self, tag: String) {
        self.tag = tag;
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_save_that_breaks_midway_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = Breaks { tag: "t".into() };
    let err = save(dir.path(), &mut run).unwrap_err();
    assert!(format!("{err:#}").contains("broken midway"), "{err:#}");
    assert_eq!(names(dir.path()), Vec::<String>::new());
    // Over an existing record: it stays as it was, and the run keeps its tag.
    std::fs::write(dir.path().join("t.json"), "keep").unwrap();
    save(dir.path(), &mut run).unwrap_err();
    assert_eq!(run.tag, "t");
    assert_eq!(names(dir.path()), ["t.json"]);
    assert_eq!(std::fs::read_to_string(dir.path().join("t.json")).unwrap(), "keep");
}

#[test]
fn concurrent_saves_never_overwrite_and_readers_never_see_a_partial_record() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::write(dir.join("t.json"), "{\"existing\": true}").unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut tags: Vec<String> = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut read = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for name in names(dir).iter().filter(|n| n.ends_with(".json")) {
                    let text = std::fs::read_to_string(dir.join(name)).unwrap();
                    serde_json::from_str::<serde_json::Value>(&text)
                        .unwrap_or_else(|e| panic!("{name} is partial: {e}"));
                    read += 1;
                }
            }
            read
        });
        let savers: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    (0..4)
                        .map(|_| {
                            let mut run = with_backends(2_000);
                            run.tag = "t".into();
                            save(dir, &mut run).unwrap();
                            run.tag
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let tags = savers.into_iter().flat_map(|h| h.join().unwrap()).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        tags
    });
    tags.sort_by_key(|t| t[2..].parse::<u32>().unwrap());
    let want: Vec<String> = (2..=13).map(|n| format!("t-{n}")).collect();
    assert_eq!(tags, want);
    assert_eq!(
        std::fs::read_to_string(dir.join("t.json")).unwrap(),
        "{\"existing\": true}"
    );
    for tag in &tags {
        let back: SpreadRun =
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{tag}.json"))).unwrap()).unwrap();
        assert_eq!(&back.tag, tag);
    }
    // Nothing but the records: no temporary file is left.
    assert_eq!(names(dir).len(), 13, "{:?}", names(dir));
}

#[test]
fn the_hard_link_fallback_never_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let (from, taken, free) = (
        dir.path().join("from"),
        dir.path().join("taken"),
        dir.path().join("free"),
    );
    std::fs::write(&from, "new").unwrap();
    std::fs::write(&taken, "old").unwrap();
    let err = publish_by_link(&from, &taken).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read_to_string(&taken).unwrap(), "old");
    publish_by_link(&from, &free).unwrap();
    assert_eq!(std::fs::read_to_string(&free).unwrap(), "new");
}
