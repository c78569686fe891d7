//! The session engine against loopback servers, and the verdict.

use super::*;

fn sink() -> (Sink, UnboundedReceiver<Msg>) {
    let (tx, rx) = unbounded_channel();
    (
        Sink {
            counters: Arc::default(),
            tx,
            ip_only: false,
        },
        rx,
    )
}

#[test]
fn answered_lost_late_and_stray_are_exact() {
    let (sink, mut rx) = sink();
    let mut s = Session::new(7);
    let mut buf = Vec::new();
    let now = Instant::now();
    let a = s.message("p", &mut buf, now, &sink);
    assert_eq!(buf, b"svclb p-7 0\n");
    let b = s.message("p", &mut buf, now, &sink);
    assert_eq!(
        s.on_reply(format!("pod-1 client=1.2.3.4:5 seq={a}").as_bytes(), &sink),
        Reply::Answered
    );
    s.expire(a, &sink); // already answered: no-op
    s.expire(b, &sink);
    assert_eq!(
        s.on_reply(format!("pod-1 client=1.2.3.4:5 seq={b}").as_bytes(), &sink),
        Reply::Late
    );
    assert_eq!(
        s.on_reply(format!("pod-1 client=1.2.3.4:5 seq={b}").as_bytes(), &sink),
        Reply::Stray
    );
    assert_eq!(
        s.on_reply(b"pod-1 node=n zone=z client=1.2.3.4:5", &sink),
        Reply::Unsequenced
    );
    let t = sink.counters.snapshot();
    assert_eq!((t.sent, t.answered, t.lost, t.late, t.stray), (2, 1, 1, 1, 1));
    assert!(rx.try_recv().is_err(), "no change yet");
    let c = s.message("p", &mut buf, now, &sink);
    s.on_reply(format!("pod-2 client=1.2.3.4:6 seq={c}").as_bytes(), &sink);
    let kinds: Vec<ChangeKind> = std::iter::from_fn(|| match rx.try_recv() {
        Ok(Msg::Change(c)) => Some(c.kind),
        _ => None,
    })
    .collect();
    assert_eq!(kinds, vec![ChangeKind::Pod, ChangeKind::Address]);
    let row = s.row();
    assert_eq!(row.pods.len(), 2);
    assert_eq!((row.streak, row.last_pod.as_deref()), (1, Some("pod-2")));
}

#[test]
fn pool_changes_excuse_overlapping_changes_only() {
    let c = Change {
        at_ms: 10_000,
        since_ms: 9_000,
        session: 1,
        kind: ChangeKind::Pod,
        old: "a".into(),
        new: "b".into(),
        during_pool_change: false,
    };
    let pool = |at_ms| PoolChange {
        at_ms,
        added: vec![],
        removed: vec!["a".into()],
    };
    assert!(during_pool_change(&c, &[pool(9_500)], 0));
    assert!(during_pool_change(&c, &[pool(10_400)], 500));
    assert!(!during_pool_change(&c, &[pool(5_000)], 500));
    assert!(!during_pool_change(&c, &[], 500));
}

#[test]
fn e2e_rule_needs_15_identical_replies() {
    let row = |answered, streak| SessionRow {
        session: 0,
        sent: answered,
        answered,
        lost: 0,
        late: 0,
        pods: BTreeMap::new(),
        last_pod: None,
        last_address: None,
        streak,
    };
    let t = Totals {
        answered: 20,
        ..Totals::default()
    };
    assert_eq!(judge(true, &t, &[row(20, 15)], (3, 0)).0, Verdict::Holds);
    assert_eq!(judge(true, &t, &[row(20, 14)], (0, 0)).0, Verdict::Violated);
    assert_eq!(judge(true, &t, &[row(10, 10)], (0, 0)).0, Verdict::Violated);
    assert_eq!(judge(false, &t, &[row(20, 1)], (0, 0)).0, Verdict::Holds);
    assert_eq!(judge(false, &t, &[], (1, 0)).0, Verdict::Violated);
    assert_eq!(judge(false, &Totals::default(), &[], (0, 0)).0, Verdict::Violated);
}
