//! The traffic engine: seconds on the run's axis, their deltas, and real traffic against real
//! servers on loopback (one that keeps serving, one killed halfway).

use std::process::{Command, Stdio};

use super::*;

#[test]
fn actions_parse_and_print_back() {
    for a in [
        "none",
        "delete-pod",
        "delete-pod=pod-003",
        "scale=3",
        "rollout-restart",
        "drain-node=node2",
    ] {
        assert_eq!(a.parse::<Action>().unwrap().to_string(), a);
    }
    assert_eq!("scale=0".parse::<Action>(), Ok(Action::Scale(0)));
    for (bad, says) in [
        ("scale=many", "scale=N takes a number"),
        ("drain-node", "name the node"),
        ("reboot", "give delete-pod[=POD]"),
        ("delete-pod=", "give delete-pod[=POD]"),
    ] {
        assert!(bad.parse::<Action>().unwrap_err().contains(says), "{bad}");
    }
}

#[test]
fn tallies_hand_out_ended_seconds_and_keep_the_rest() {
    let mut t = Tallies::default();
    for s in [0, 1, 2, 5] {
        t.second(s).tally.attempts += 1;
    }
    t.breaks.push(Break {
        at_ms: 1500,
        since_ms: 0,
        conn: 1,
        pod: "p".into(),
        kind: BreakKind::Reset,
    });
    let first = t.take(Some(2));
    assert_eq!(first.seconds.iter().map(|s| s.second).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(first.breaks.len(), 1);
    assert!(!first.done);
    // A late result for second 1 is one more delta.
    t.second(1).tally.ok += 1;
    let rest = t.take(None);
    assert_eq!(rest.seconds.iter().map(|s| s.second).collect::<Vec<_>>(), [1, 2, 5]);
    assert_eq!((rest.seconds[0].ok, rest.seconds[0].attempts), (1, 0));
    assert!(rest.breaks.is_empty() && t.seconds.is_empty());
}

#[test]
fn the_clock_places_the_runs_origin() {
    let now_ms = crate::disruption::now_ms();
    let c = Clock::new(now_ms - 2500);
    let ms = c.ms(Instant::now());
    assert!((2500..2700).contains(&ms), "{ms}");
    assert_eq!(c.second(Instant::now()), 2);
    // An origin still to come: times before it are 0.
    let later = Clock::new(now_ms + 5000);
    assert_eq!(later.ms(Instant::now()), 0);
}

#[test]
fn periodic_senders_skip_missed_slots() {
    let start = Instant::now();
    let ms = Duration::from_millis;
    let mut round = 0;
    assert_eq!(next_slot(start, ms(100), &mut round, start + ms(10)), start + ms(100));
    // 750 ms late: the next slot is 800, not 200.
    assert_eq!(next_slot(start, ms(100), &mut round, start + ms(750)), start + ms(800));
    assert_eq!(round, 8);
}

/// `kubectl-svclb serve` as a child process on a loopback address (killed on drop).
struct Server(std::process::Child);

impl Server {
    fn start(address: &str, name: &str) -> Server {
        let mut child = Command::new(crate::testing::binary())
            .args([
                "serve",
                "--address",
                address,
                "--name",
                name,
                "--workers",
                "1",
                "--no-http",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Listening once it says so.
        let mut line = String::new();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        std::io::BufRead::read_line(&mut err, &mut line).unwrap();
        assert!(line.contains("on tcp+udp"), "{line}");
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(target: &str, rate: f64) -> TrafficConfig {
    TrafficConfig {
        target: target.parse().unwrap(),
        rate,
        long_lived: 3,
        udp_sessions: 3,
        interval: INTERVAL,
        timeout: Duration::from_millis(500),
        origin_ms: crate::disruption::now_ms(),
        max: Duration::from_secs(30),
        prefix: "t".into(),
    }
}

/// Runs the traffic for `for_` and collects every tick.
async fn collect(cfg: TrafficConfig, for_: Duration, meanwhile: impl FnOnce()) -> (Collected, usize) {
    let mut c = Collected::default();
    let mut ticks = 0;
    let stop = async move {
        tokio::time::sleep(for_ / 2).await;
        meanwhile();
        tokio::time::sleep(for_ / 2).await;
    };
    run(cfg, stop, |t| {
        ticks += 1;
        c.add(0, t);
        Ok(())
    })
    .await
    .unwrap();
    (c, ticks)
}

#[tokio::test]
async fn steady_traffic_is_all_answered_and_counted_in_its_seconds() {
    let _server = Server::start("127.79.1.10:5001", "pod-a");
    let (c, ticks) = collect(config("127.79.1.10:5001", 200.0), Duration::from_millis(2500), || {}).await;
    assert!(ticks >= 2, "{ticks} ticks");
    assert!(c.done.contains(&0));
    let sum = |f: fn(&SecondTally) -> u64| c.seconds.values().map(|s| f(&s.tally)).sum::<u64>();
    let attempts = sum(|t| t.attempts);
    // 200/s for 2.5 s, open loop.
    assert!((440..=510).contains(&attempts), "{attempts}");
    assert_eq!(sum(|t| t.ok), attempts);
    assert_eq!(sum(|t| t.pods.values().sum()), attempts);
    assert!(c.seconds.values().all(|s| s.latency.len() == s.tally.ok));
    // Three long-lived connections (one connect each), ten messages a second each, all echoed.
    assert_eq!(sum(|t| t.ll_connects), 3);
    let (sent, answered) = (sum(|t| t.ll_sent), sum(|t| t.ll_answered));
    assert!((60..=80).contains(&sent), "{sent}");
    assert_eq!(answered, sent);
    let (udp_sent, udp_answered) = (sum(|t| t.udp_sent), sum(|t| t.udp_answered));
    assert!((60..=80).contains(&udp_sent), "{udp_sent}");
    assert_eq!(udp_answered, udp_sent);
    assert!(c.breaks.is_empty() && c.lost.is_empty(), "{:?} {:?}", c.breaks, c.lost);
    assert_eq!(c.open(), 0, "closed at the end");
    // Seconds counted from the origin: 0, 1, 2.
    assert_eq!(c.seconds.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
}

#[tokio::test]
async fn a_server_that_dies_breaks_connections_and_loses_datagrams_on_its_pod() {
    let server = Server::start("127.79.2.10:5001", "pod-b");
    let (c, _) = collect(
        config("127.79.2.10:5001", 100.0),
        Duration::from_millis(3000),
        move || drop(server),
    )
    .await;
    let sum = |f: fn(&SecondTally) -> u64| c.seconds.values().map(|s| f(&s.tally)).sum::<u64>();
    let failures = c.seconds.values().fold(Failures::default(), |mut f, s| {
        f.merge(&s.tally.failures);
        f
    });
    // After the kill, nothing listens on loopback: refused, at once.
    assert!(failures.refused > 50, "{failures:?}");
    assert_eq!(sum(|t| t.ok) + failures.total(), sum(|t| t.attempts));
    // Every long-lived connection broke on pod-b, and could not come back.
    let broken: Vec<(u32, &str)> = c.breaks.iter().map(|(_, b)| (b.conn, b.pod.as_str())).collect();
    assert_eq!(broken.len(), 3, "{:?}", c.breaks);
    assert!(broken.iter().all(|(_, p)| *p == "pod-b"));
    assert!(
        c.breaks
            .iter()
            .all(|(_, b)| matches!(b.kind, BreakKind::Closed | BreakKind::Reset)),
        "{:?}",
        c.breaks
    );
    assert!(sum(|t| t.ll_connect_failures.refused) > 10);
    // UDP: the datagrams after the kill are lost on pod-b's sessions, refused by ICMP.
    assert!(c.lost.len() > 10, "{}", c.lost.len());
    assert!(c.lost.iter().all(|(_, l)| l.pod.as_deref() == Some("pod-b")));
    assert!(c.lost.iter().any(|(_, l)| l.kind == LostKind::Refused));
    assert_eq!(sum(|t| t.udp_lost), c.lost.len() as u64);
    assert_eq!(sum(|t| t.udp_answered) + sum(|t| t.udp_lost), sum(|t| t.udp_sent));
    // Nothing fails before the kill (the first second).
    assert_eq!(c.seconds[&0].tally.failures.total(), 0);
    assert!(c.lost.iter().all(|(_, l)| l.at_ms >= 1000));
}
