//! One zones run: the source-zone × serving-zone matrix, per source the local shares and what
//! kube-proxy does and why, the cost of the cross-zone bytes, the verdict; and the one line per
//! `--watch` cycle.

use std::fmt::Write;

use tabled::builder::Builder;

use super::{RunFormat, heading, pval, styled, title};
use crate::record::{Billed, Locality, ZonesCycle, ZonesRun};
use crate::storm::Stop;

/// Renders a run in `format`. JSON is exactly the run record.
pub fn zones(run: &ZonesRun, format: RunFormat) -> anyhow::Result<String> {
    Ok(match format {
        RunFormat::Json => serde_json::to_string_pretty(run)? + "\n",
        RunFormat::Yaml => serde_saphyr::to_string(run)?,
        RunFormat::Table => text(run, false),
        RunFormat::Markdown => text(run, true),
    })
}

fn pct(part: u64, of: u64) -> String {
    if of == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * part as f64 / of as f64)
    }
}

/// Bytes with a decimal unit: `65.5 MB`.
pub fn bytes(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// A USD amount with enough digits to see small ones.
pub(super) fn usd(v: f64) -> String {
    if v == 0.0 || v.abs() >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.2e}")
    }
}

/// One `--watch` cycle as one line.
pub fn cycle_line(c: &ZonesCycle, cycles: u32) -> String {
    let local: Vec<String> = c
        .local_share
        .iter()
        .map(|(z, s)| format!("{z} {:.1}%", 100.0 * s))
        .collect();
    format!(
        "cycle {}/{cycles} +{:.1}s  ok {}/{}  local {}  cross-zone {} conns, {}  left {}\n",
        c.cycle,
        c.at_s,
        c.ok,
        c.conns,
        local.join(", "),
        c.cross_zone_conns,
        bytes(c.cross_zone_bytes),
        c.left
    )
}

fn matrix(run: &ZonesRun, in_bytes: bool, md: bool) -> String {
    let to: std::collections::BTreeSet<&str> = run.matrix.iter().map(|c| c.to.as_str()).collect();
    let mut b = Builder::default();
    b.push_record(std::iter::once("from \\ to".to_string()).chain(to.iter().map(|t| t.to_string())));
    let mut from: Vec<&str> = run.matrix.iter().map(|c| c.from.as_str()).collect();
    from.dedup();
    for f in from {
        let row: Vec<_> = run.matrix.iter().filter(|c| c.from == f).collect();
        let total: u64 = row.iter().map(|c| if in_bytes { c.bytes } else { c.conns }).sum();
        let mut cells = vec![f.to_string()];
        for t in &to {
            let v = row
                .iter()
                .find(|c| c.to == *t)
                .map_or(0, |c| if in_bytes { c.bytes } else { c.conns });
            let shown = if in_bytes { bytes(v) } else { v.to_string() };
            cells.push(format!("{shown} ({})", pct(v, total)));
        }
        b.push_record(cells);
    }
    styled(b, md)
}

fn text(run: &ZonesRun, md: bool) -> String {
    let mut out = String::new();
    title(&mut out, "Zones", &run.tag, md);
    let mut b = Builder::default();
    b.push_record([
        "target",
        "trafficDistribution",
        "internalTrafficPolicy",
        "sources",
        "conns",
        "ok",
        "failed",
        "elapsed",
    ]);
    b.push_record([
        format!("{} ({})", run.target.address, run.target.mode),
        run.traffic_distribution.map_or("-".into(), |t| t.to_string()),
        run.internal_traffic_policy.to_string(),
        run.params.sources.clone(),
        run.conns.to_string(),
        run.ok.to_string(),
        run.failed.total.to_string(),
        super::elapsed(run.duration_s),
    ]);
    let _ = writeln!(out, "{}", styled(b, md));

    heading(&mut out, "Connections by source zone (rows) and serving zone", md);
    let _ = writeln!(out, "{}", matrix(run, false, md));
    if run.params.bytes.is_some() {
        heading(&mut out, "Bytes by source zone and serving zone", md);
        let _ = writeln!(out, "{}", matrix(run, true, md));
    }
    let _ = writeln!(
        out,
        "cross-zone: {} of {} connections ({:.1}%){}",
        run.cross_zone_conns,
        run.ok,
        100.0 * run.cross_zone_share,
        if run.params.bytes.is_some() {
            format!(", {} of {}", bytes(run.cross_zone_bytes), bytes(run.bytes))
        } else {
            String::new()
        }
    );

    heading(&mut out, "Sources", md);
    let mut b = Builder::default();
    b.push_record([
        "source",
        "node",
        "zone",
        "ok",
        "same zone",
        "same node",
        "left",
        "p-value",
        "kube-proxy keeps it",
    ]);
    for s in &run.sources {
        b.push_record([
            s.name.clone(),
            s.node.clone(),
            if s.zone.is_empty() { "-".into() } else { s.zone.clone() },
            s.ok.to_string(),
            pct(s.same_zone, s.ok),
            pct(s.same_node, s.ok),
            s.left.to_string(),
            pval(s.p_value),
            match s.locality {
                Locality::Any => "anywhere".into(),
                Locality::Zone => "in its zone".into(),
                Locality::Node => "on its node".into(),
            },
        ]);
    }
    let _ = writeln!(out, "{}", styled(b, md));

    heading(
        &mut out,
        "Why (what each source node's kube-proxy does, pkg/proxy/topology.go)",
        md,
    );
    for s in &run.sources {
        let zone = if s.zone.is_empty() { "no zone" } else { s.zone.as_str() };
        let _ = writeln!(
            out,
            "{}{} ({zone}): {}; {} endpoint(s)",
            if md { "- " } else { "  " },
            s.node,
            s.why,
            s.expected.len()
        );
    }

    if !run.cost.is_empty() {
        heading(
            &mut out,
            &format!("Cost of the cross-zone bytes ({})", bytes(run.cross_zone_bytes)),
            md,
        );
        let mut b = Builder::default();
        let month = run
            .params
            .rate
            .map_or("USD/month".to_string(), |r| format!("USD/month at {r} conn/s"));
        b.push_record([
            "price".to_string(),
            "per unit".into(),
            "billed".into(),
            "server side".into(),
            "client side".into(),
            "total USD".into(),
            month,
        ]);
        for c in &run.cost {
            b.push_record([
                c.price.name.clone(),
                format!("{} USD/{}", c.price.usd_per_unit, c.price.unit),
                match c.price.billed {
                    Billed::EachSide => "each side".into(),
                    Billed::Sender => "sender".into(),
                },
                usd(c.server_side_usd),
                usd(c.client_side_usd),
                usd(c.total_usd),
                c.monthly_usd.map_or("-".into(), usd),
            ]);
        }
        let _ = writeln!(out, "{}", styled(b, md));
        for c in &run.cost {
            if !c.price.as_of.is_empty() {
                let _ = writeln!(out, "{}: {} (read {})", c.price.name, c.price.source, c.price.as_of);
            }
        }
    }

    if run.stopped == Some(Stop::Interrupted) {
        let planned = run.params.conns_per_source * run.sources.len() as u64 * u64::from(run.params.cycles);
        let _ = writeln!(
            out,
            "\nINTERRUPTED: after {} of {planned} connections; the record is partial (on what was measured: {})",
            run.conns, run.verdict
        );
    } else {
        let _ = writeln!(out, "\nverdict: {}", run.verdict);
    }
    for r in &run.reasons {
        let _ = writeln!(out, "  {r}");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_read_in_decimal_units() {
        assert_eq!(super::bytes(999), "999 B");
        assert_eq!(super::bytes(65_536), "65.5 kB");
        assert_eq!(super::bytes(589_824_000), "589.8 MB");
    }
}
