//! One Service measured over each IP family (`--ip-family both`): the same run made against its
//! IPv4 and its IPv6 addresses, and what differs between the two. The same proxy writes both
//! families' rules from the same endpoints (kube-proxy: one `ip` and one `ip6` table, or
//! iptables and ip6tables), so any difference is a finding: a rule one family lacks, a
//! masquerade or an affinity set that only one has, a path that one family cannot reach.

use std::collections::BTreeMap;

use crate::record::{AffinityRun, AnyRun, CellVerdict, DisruptionRun, MatrixRun, SpreadRun, ZonesRun};
use crate::service::IpFamily;

/// The IPv6 connect rate below this share of the IPv4 one is flagged.
pub const RATE_SHARE: f64 = 0.9;
/// Zone shares further apart than this (percentage points) are flagged.
const SHARE_POINTS: f64 = 5.0;
/// Matrix cells listed by name at most (the rest are counted).
const MAX_CELLS: usize = 10;

/// What the two runs of one command say, side by side.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// One line per fact that differs between the families.
    pub differences: Vec<String>,
    /// Facts worth reading that are no finding (the rates of both).
    pub notes: Vec<String>,
}

/// A fact of one run: its label and its value (compared as text).
type Fact = (String, String);

fn facts_differ(v4: Vec<Fact>, v6: Vec<Fact>) -> Vec<String> {
    let v6: BTreeMap<String, String> = v6.into_iter().collect();
    v4.into_iter()
        .filter_map(|(label, a)| {
            let b = v6.get(&label).cloned().unwrap_or_else(|| "-".into());
            (a != b).then(|| format!("{label}: ipv4 {a}, ipv6 {b}"))
        })
        .collect()
}

fn failures(f: &crate::record::Failed) -> String {
    if f.total == 0 {
        return "none".into();
    }
    let parts: Vec<String> = f
        .kinds
        .kinds()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{n} {what}"))
        .collect();
    parts.join(", ")
}

/// Connections per second over the run.
fn rate(ok: u64, duration_s: f64) -> f64 {
    if duration_s > 0.0 { ok as f64 / duration_s } else { 0.0 }
}

fn spread(a: &SpreadRun, b: &SpreadRun) -> Comparison {
    let facts = |r: &SpreadRun| -> Vec<Fact> {
        let answered: Vec<&str> = r
            .backends
            .iter()
            .filter(|x| x.count > 0)
            .map(|x| x.name.as_str())
            .collect();
        vec![
            ("verdict".into(), r.stats.verdict.to_string()),
            ("backends answering".into(), answered.len().to_string()),
            ("failures".into(), failures(&r.failed)),
        ]
    };
    let mut differences = facts_differ(facts(a), facts(b));
    let only = |x: &SpreadRun, y: &SpreadRun| -> Vec<String> {
        x.backends
            .iter()
            .filter(|e| e.count > 0 && !y.backends.iter().any(|o| o.name == e.name && o.count > 0))
            .map(|e| e.name.clone())
            .collect()
    };
    for (fam, names) in [("ipv4", only(a, b)), ("ipv6", only(b, a))] {
        if !names.is_empty() {
            differences.push(format!("answered over {fam} only: {}", names.join(", ")));
        }
    }
    let (ra, rb) = (rate(a.ok, a.duration_s), rate(b.ok, b.duration_s));
    let mut notes = vec![format!("connect rate: ipv4 {ra:.0}/s, ipv6 {rb:.0}/s")];
    if ra > 0.0 {
        let share = rb / ra;
        let line = format!("the ipv6 rate is {:.0}% of the ipv4 rate", share * 100.0);
        if share < RATE_SHARE {
            differences.push(line);
        } else {
            notes.push(line);
        }
    }
    Comparison { differences, notes }
}

fn affinity(a: &AffinityRun, b: &AffinityRun) -> Comparison {
    let facts = |r: &AffinityRun| -> Vec<Fact> {
        vec![
            ("verdict".into(), r.verdict.to_string()),
            (
                "pod changes while the pool was unchanged".into(),
                r.totals
                    .pod_changes
                    .saturating_sub(r.changes_during_pool_change)
                    .to_string(),
            ),
            ("messages lost".into(), r.totals.lost.to_string()),
            ("connect failures".into(), r.totals.connect_failures.to_string()),
        ]
    };
    Comparison {
        differences: facts_differ(facts(a), facts(b)),
        notes: Vec::new(),
    }
}

fn zones(a: &ZonesRun, b: &ZonesRun) -> Comparison {
    let facts = |r: &ZonesRun| -> Vec<Fact> {
        let mut f = vec![
            ("verdict".into(), r.verdict.to_string()),
            ("failures".into(), failures(&r.failed)),
        ];
        for s in &r.sources {
            f.push((
                format!("{} backends answering", s.name),
                s.backends.iter().filter(|x| x.count > 0).count().to_string(),
            ));
        }
        f
    };
    let mut differences = facts_differ(facts(a), facts(b));
    let pct = |n: u64, of: u64| if of == 0 { 0.0 } else { 100.0 * n as f64 / of as f64 };
    let (sa, sb) = (100.0 * a.cross_zone_share, 100.0 * b.cross_zone_share);
    if (sa - sb).abs() > SHARE_POINTS {
        differences.push(format!("cross-zone share: ipv4 {sa:.1}%, ipv6 {sb:.1}%"));
    }
    for s in &a.sources {
        if let Some(o) = b.sources.iter().find(|o| o.name == s.name) {
            let (x, y) = (pct(s.same_zone, s.ok), pct(o.same_zone, o.ok));
            if (x - y).abs() > SHARE_POINTS {
                differences.push(format!("{} same-zone share: ipv4 {x:.1}%, ipv6 {y:.1}%", s.name));
            }
        }
    }
    Comparison {
        differences,
        notes: Vec::new(),
    }
}

fn matrix(a: &MatrixRun, b: &MatrixRun) -> Comparison {
    // A cell differs when its verdict does: the expectation is the family's own, and a cell
    // kube-proxy makes partial (`?` or `.` both right) would otherwise differ by chance.
    let cells = |r: &MatrixRun| -> BTreeMap<(String, String, String), (CellVerdict, String)> {
        r.scenarios
            .iter()
            .flat_map(|s| {
                s.cells.iter().map(move |c| {
                    (
                        (s.name.clone(), c.source.clone(), c.target.clone()),
                        (c.verdict, c.observed.symbol().to_string()),
                    )
                })
            })
            .collect()
    };
    let (ca, cb) = (cells(a), cells(b));
    let differing: Vec<String> = ca
        .iter()
        .filter_map(|(k, (va, x))| {
            let (vb, y) = cb.get(k)?;
            (va != vb).then(|| {
                format!(
                    "{} {} -> {}: ipv4 {x} ({}), ipv6 {y} ({})",
                    k.0,
                    k.1,
                    k.2,
                    va.describe(),
                    vb.describe()
                )
            })
        })
        .collect();
    let mut differences = facts_differ(
        vec![("wrong cells".into(), a.incorrect.to_string())],
        vec![("wrong cells".into(), b.incorrect.to_string())],
    );
    let n = differing.len();
    differences.extend(differing.into_iter().take(MAX_CELLS));
    if n > MAX_CELLS {
        differences.push(format!("and {} more cells differ", n - MAX_CELLS));
    }
    let one_only =
        ca.keys().filter(|k| !cb.contains_key(*k)).count() + cb.keys().filter(|k| !ca.contains_key(*k)).count();
    let notes = if one_only > 0 {
        vec![format!("{one_only} cells were measured in one family only")]
    } else {
        Vec::new()
    };
    Comparison { differences, notes }
}

fn disruption(a: &DisruptionRun, b: &DisruptionRun) -> Comparison {
    let facts = |r: &DisruptionRun| -> Vec<Fact> {
        let t = &r.totals;
        vec![
            ("verdict".into(), r.verdict.to_string()),
            ("new connections failed".into(), failures(&t.failed)),
            (
                "long-lived broken".into(),
                t.long_lived
                    .broken
                    .saturating_sub(t.long_lived.broken_expected)
                    .to_string(),
            ),
            (
                "udp lost".into(),
                t.udp.lost.saturating_sub(t.udp.lost_expected).to_string(),
            ),
        ]
    };
    Comparison {
        differences: facts_differ(facts(a), facts(b)),
        notes: Vec::new(),
    }
}

/// What differs between `v4` and `v6`, runs of the same command (`None`: different kinds).
pub fn compare(v4: &AnyRun, v6: &AnyRun) -> Option<Comparison> {
    Some(match (v4, v6) {
        (AnyRun::Spread(a), AnyRun::Spread(b)) => spread(a, b),
        (AnyRun::Affinity(a), AnyRun::Affinity(b)) => affinity(a, b),
        (AnyRun::Zones(a), AnyRun::Zones(b)) => zones(a, b),
        (AnyRun::Matrix(a), AnyRun::Matrix(b)) => matrix(a, b),
        (AnyRun::Disruption(a), AnyRun::Disruption(b)) => disruption(a, b),
        _ => return None,
    })
}

/// The tag of a family's run of a `both` run tagged `tag`.
pub fn tag(tag: &str, family: IpFamily) -> String {
    format!("{tag}-{family}")
}

/// The comparison as lines to print under the two runs.
pub fn describe(c: &Comparison) -> String {
    let mut out = String::from("\nIPv4 and IPv6 side by side:\n");
    if c.differences.is_empty() {
        out.push_str("  no difference between the families\n");
    }
    for d in &c.differences {
        out.push_str(&format!("  ! {d}\n"));
    }
    for n in &c.notes {
        out.push_str(&format!("    {n}\n"));
    }
    out
}

#[cfg(test)]
mod tests;
