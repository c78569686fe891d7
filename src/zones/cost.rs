//! What cross-zone bytes cost: each cloud's price for traffic between zones of one region (with
//! where it was read, and when), a price given as a number, and the cost of a run's cross-zone
//! bytes, projected to a month at a connection rate.

use crate::record::{Billed, Cost, Price};

/// Seconds in the month of cloud bills: 730 hours.
pub const MONTH_S: f64 = 730.0 * 3600.0;

/// When the prices below were read at their sources.
const PRICES_READ: &str = "2026-11-23";

/// The price of cross-zone bytes inside one region, per cloud.
pub fn cloud_price(name: &str) -> Option<Price> {
    let p = |usd: f64, unit: &str, unit_bytes: u64, billed: Billed, source: &str| Price {
        name: name.into(),
        usd_per_unit: usd,
        unit: unit.into(),
        unit_bytes,
        billed,
        source: source.into(),
        as_of: PRICES_READ.into(),
    };
    Some(match name {
        "aws" => p(
            0.01,
            "GB",
            1_000_000_000,
            Billed::EachSide,
            "https://aws.amazon.com/ec2/pricing/on-demand/ (Data Transfer within the same AWS Region: across Availability Zones, USD 0.01/GB in each direction)",
        ),
        "gcp" => p(
            0.01,
            "GiB",
            1 << 30,
            Billed::Sender,
            "https://cloud.google.com/vpc/pricing (VM-to-VM egress between zones in the same region, USD 0.01/GiB, charged as egress at the source)",
        ),
        "azure" => p(
            0.0,
            "GB",
            1_000_000_000,
            Billed::Sender,
            "https://azure.microsoft.com/pricing/details/bandwidth/ (data transfer between availability zones is not charged: announced 2024-05-21)",
        ),
        _ => return None,
    })
}

/// The clouds of the price table.
pub const CLOUDS: [&str; 3] = ["aws", "gcp", "azure"];

/// A price given as a number: USD per GB (10^9 bytes), charged once, to the sender.
pub fn custom_price(usd_per_gb: f64) -> Price {
    Price {
        name: "custom".into(),
        usd_per_unit: usd_per_gb,
        unit: "GB".into(),
        unit_bytes: 1_000_000_000,
        billed: Billed::Sender,
        source: "--price".into(),
        as_of: String::new(),
    }
}

/// The cost of `cross_bytes` (responses sent from the serving zone to the client's) at `price`,
/// and projected to a month at `rate` connections per second, `ok` connections having carried
/// them.
pub fn cost(price: &Price, cross_bytes: u64, ok: u64, rate: Option<f64>) -> Cost {
    let one_side = cross_bytes as f64 / price.unit_bytes as f64 * price.usd_per_unit;
    let (server_side_usd, client_side_usd) = match price.billed {
        Billed::EachSide => (one_side, one_side),
        Billed::Sender => (one_side, 0.0),
    };
    let total_usd = server_side_usd + client_side_usd;
    Cost {
        price: price.clone(),
        cross_zone_bytes: cross_bytes,
        server_side_usd,
        client_side_usd,
        total_usd,
        monthly_usd: rate.filter(|_| ok > 0).map(|r| total_usd / ok as f64 * r * MONTH_S),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;
    const GIB: u64 = 1 << 30;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn aws_bills_each_side_per_gb() {
        // 250 GB across zones: USD 2.50 out of the serving zone, 2.50 into the client's.
        let c = cost(&cloud_price("aws").unwrap(), 250 * GB, 1000, None);
        assert!(close(c.server_side_usd, 2.5) && close(c.client_side_usd, 2.5), "{c:?}");
        assert!(close(c.total_usd, 5.0));
        assert_eq!(c.monthly_usd, None);
    }

    #[test]
    fn gcp_bills_the_sender_per_gib() {
        // 3 GiB: USD 0.03, all of it on the serving side; in GB it would have been 0.0322.
        let c = cost(&cloud_price("gcp").unwrap(), 3 * GIB, 10, None);
        assert!(close(c.server_side_usd, 0.03) && c.client_side_usd == 0.0, "{c:?}");
        assert!(close(c.total_usd, 0.03));
    }

    #[test]
    fn azure_is_free_and_a_number_is_per_gb_to_the_sender() {
        let c = cost(&cloud_price("azure").unwrap(), 999 * GB, 10, Some(100.0));
        assert_eq!((c.total_usd, c.monthly_usd), (0.0, Some(0.0)));
        let c = cost(&custom_price(0.02), 5 * GB, 10, None);
        assert!(close(c.total_usd, 0.1) && c.client_side_usd == 0.0, "{c:?}");
        assert!(cloud_price("oracle").is_none());
    }

    #[test]
    fn a_month_at_a_rate() {
        // 1,000 connections carried 1 GB across zones: USD 0.02 at AWS, 0.00002 per connection;
        // at 50 conn/s for 730 h (131,400,000 connections): USD 2,628.
        let c = cost(&cloud_price("aws").unwrap(), GB, 1000, Some(50.0));
        assert!(close(c.monthly_usd.unwrap(), 2628.0), "{c:?}");
    }
}
