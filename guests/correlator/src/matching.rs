//! The pure part of the correlator: finding the readings around an event and
//! measuring the power step. No host calls, so it is unit-tested natively.
//!
//! Two rules read the power at an instant:
//! - nearest ([`evaluate`], the HomeIQ preset): the reading nearest to
//!   `event - offset` before the event and to `event + offset` after it,
//!   each within `padding`. Right for a meter that reports every few
//!   seconds whatever the power does; kept with the numbers it always gave.
//! - step ([`evaluate_step`], the Home Assistant preset): the power is the
//!   last value written, so `before` is the last reading before the event
//!   (at most `max_staleness` old) and `after` the last one at or before
//!   `event + offset`, or, when the sensor reports late, the first one
//!   within `padding` after that. HA writes a sensor only when its value
//!   changes: a meter may be silent for minutes and still be exact, where
//!   "a reading within ±30 s" would find nothing.

/// One smart-meter power reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// Nanoseconds since the epoch.
    pub time: i64,
    /// Total power in watts.
    pub watts: f64,
}

/// The power step around one event.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// Power at `event - offset` (from a reading before the event), in W.
    pub before_w: f64,
    /// Power at `event + offset` (from a reading at or after the event), in W.
    pub after_w: f64,
    /// `after - before`, in W.
    pub delta_w: f64,
    /// `delta / before * 100`, rounded to 3 decimals; 0 when `before <= 0`.
    pub delta_pct: f64,
}

/// What an event amounts to with the readings at hand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// A reading is missing within `padding`, or a nearer one may still
    /// arrive: try again in a later cycle.
    Pending,
    /// Both readings found; the step is smaller than `min_delta_w`.
    Below(Step),
    /// Both readings found; the step is at least `min_delta_w`.
    Correlated(Step),
    /// No reading within `max_staleness` before the event: the power then
    /// is unknown, and no later reading can tell it (step rule only).
    Stale,
}

/// The reading nearest to `target` within `padding` (inclusive) in
/// `readings` sorted by time; on a tie the earlier reading wins.
pub fn nearest(readings: &[Reading], target: i64, padding: i64) -> Option<Reading> {
    let idx = readings.partition_point(|r| r.time < target);
    let earlier = idx.checked_sub(1).and_then(|i| readings.get(i));
    let later = readings.get(idx);
    let best = match (earlier, later) {
        (Some(e), Some(l)) => {
            if target.abs_diff(e.time) <= l.time.abs_diff(target) {
                e
            } else {
                l
            }
        }
        (Some(e), None) => e,
        (None, Some(l)) => l,
        (None, None) => return None,
    };
    (best.time.abs_diff(target) <= padding.unsigned_abs()).then_some(*best)
}

/// False while a reading nearer to `target` than the one found at
/// `found_time` could still arrive, i.e. the mirror of `found_time` around
/// `target` lies after `now` (readings arrive in time order).
pub fn is_settled(target: i64, found_time: i64, now: i64) -> bool {
    found_time >= target || target.saturating_add(target.saturating_sub(found_time)) < now
}

/// Rounds to 3 decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The step from `before_w` to `after_w`.
pub fn step(before_w: f64, after_w: f64) -> Step {
    let delta_w = after_w - before_w;
    let delta_pct = if before_w > 0.0 { round3(delta_w / before_w * 100.0) } else { 0.0 };
    Step { before_w, after_w, delta_w, delta_pct }
}

/// Whether a step of `delta_w` counts (tolerating float noise at the limit).
pub fn is_significant(delta_w: f64, min_delta_w: f64) -> bool {
    delta_w.abs() + 1e-9 >= min_delta_w
}

/// Evaluates the event at `event_time` against `readings` (sorted by time).
pub fn evaluate(
    readings: &[Reading],
    event_time: i64,
    offset: i64,
    padding: i64,
    min_delta_w: f64,
    now: i64,
) -> Outcome {
    let before_target = event_time.saturating_sub(offset);
    let after_target = event_time.saturating_add(offset);
    // A reading taken after the switch cannot say what the power was before
    // it, nor one taken before say what it became: each side looks only on
    // its own side of the event (a reading at the event's instant counts as
    // after), so the two are never the same reading.
    let (earlier, later) = readings.split_at(readings.partition_point(|r| r.time < event_time));
    let (Some(before), Some(after)) = (nearest(earlier, before_target, padding), nearest(later, after_target, padding))
    else {
        return Outcome::Pending;
    };
    if !is_settled(before_target, before.time, now) || !is_settled(after_target, after.time, now) {
        return Outcome::Pending;
    }
    let s = step(before.watts, after.watts);
    if is_significant(s.delta_w, min_delta_w) { Outcome::Correlated(s) } else { Outcome::Below(s) }
}

/// Evaluates the event at `event_time` against on-change `readings`
/// (sorted by time) with the step rule (see the module docs): `now` decides
/// whether the value at `event + offset` is final yet.
pub fn evaluate_step(readings: &[Reading], event_time: i64, rule: StepRule, now: i64) -> Outcome {
    let (earlier, later) = readings.split_at(readings.partition_point(|r| r.time < event_time));
    let Some(before) = earlier.last().filter(|r| event_time - r.time <= rule.max_staleness) else {
        return Outcome::Stale;
    };
    let target = event_time.saturating_add(rule.offset);
    let deadline = target.saturating_add(rule.padding);
    let until_target = later.partition_point(|r| r.time <= target);
    let after = if let Some(at_target) = later[..until_target].last() {
        // A later write up to the target would still change the value at it.
        if now <= target {
            return Outcome::Pending;
        }
        at_target
    } else if let Some(late) = later.first().filter(|r| r.time <= deadline) {
        late
    } else if now > deadline {
        // Nothing written since the event: the power did not change.
        before
    } else {
        return Outcome::Pending;
    };
    let s = step(before.watts, after.watts);
    if is_significant(s.delta_w, rule.min_delta_w) { Outcome::Correlated(s) } else { Outcome::Below(s) }
}

/// The parameters of the step rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepRule {
    /// `after` is the value at `event + offset`.
    pub offset: i64,
    /// How late after `event + offset` a first reading may still stand for it.
    pub padding: i64,
    /// Oldest the reading before the event may be.
    pub max_staleness: i64,
    /// Smallest step that counts.
    pub min_delta_w: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    /// 2024-06-01T19:30:00Z in seconds.
    const T1930: i64 = 1_717_270_200;

    fn at(h_m_s: (i64, i64, i64)) -> i64 {
        let (h, m, s) = h_m_s;
        (T1930 + (h - 19) * 3600 + (m - 30) * 60 + s) * S
    }

    fn r(time: i64, watts: f64) -> Reading {
        Reading { time, watts }
    }

    fn eval(readings: &[Reading], event: i64, min: f64) -> Outcome {
        evaluate(readings, event, 5 * S, 30 * S, min, event + 3600 * S)
    }

    #[test]
    fn each_side_reads_only_its_own_side_of_the_event() {
        // Sparse readings: the one 2 s after the switch is nearest to both
        // event - 5 s and event + 5 s, but it cannot be the "before" power.
        let e = at((19, 30, 0));
        let readings = [r(e - 20 * S, 100.0), r(e + 2 * S, 2000.0), r(e + 32 * S, 2000.0)];
        assert_eq!(eval(&readings, e, 10.0), Outcome::Correlated(step(100.0, 2000.0)));
        // With nothing before the event within padding, it waits (and is
        // never judged as a step of 0 from one reading used twice).
        assert_eq!(eval(&readings[1..], e, 10.0), Outcome::Pending);
        // A reading at the event's instant is the "after" one.
        assert_eq!(eval(&[r(e - 3 * S, 50.0), r(e, 80.0)], e, 10.0), Outcome::Correlated(step(50.0, 80.0)));
    }

    #[test]
    fn spec_example() {
        let readings = [r(at((19, 29, 58)), 2450.0), r(at((19, 30, 8)), 2510.0)];
        match eval(&readings, at((19, 30, 3)), 10.0) {
            Outcome::Correlated(s) => {
                assert_eq!(s.before_w, 2450.0);
                assert_eq!(s.after_w, 2510.0);
                assert_eq!(s.delta_w, 60.0);
                assert_eq!(s.delta_pct, 2.449);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nearest_beats_earliest_in_window() {
        let target = at((19, 30, 0));
        let readings = [r(target - 25 * S, 100.0), r(target - 3 * S, 200.0), r(target + 20 * S, 300.0)];
        assert_eq!(nearest(&readings, target, 30 * S), Some(readings[1]));
        let later_wins = [r(target - 10 * S, 1.0), r(target + 2 * S, 2.0)];
        assert_eq!(nearest(&later_wins, target, 30 * S), Some(later_wins[1]));
    }

    #[test]
    fn tie_picks_earlier_and_padding_is_inclusive() {
        let target = at((19, 30, 0));
        let readings = [r(target - 4 * S, 1.0), r(target + 4 * S, 2.0)];
        assert_eq!(nearest(&readings, target, 30 * S), Some(readings[0]));
        let edge = [r(target + 30 * S, 5.0)];
        assert_eq!(nearest(&edge, target, 30 * S), Some(edge[0]));
        assert_eq!(nearest(&edge, target, 30 * S - 1), None);
        assert_eq!(nearest(&[], target, 30 * S), None);
    }

    #[test]
    fn threshold() {
        let e = at((19, 30, 3));
        let below = [r(e - 5 * S, 1000.0), r(e + 5 * S, 1009.9)];
        assert!(matches!(eval(&below, e, 10.0), Outcome::Below(_)));
        let exact = [r(e - 5 * S, 1000.0), r(e + 5 * S, 1010.0)];
        assert!(matches!(eval(&exact, e, 10.0), Outcome::Correlated(s) if s.delta_w == 10.0));
    }

    #[test]
    fn negative_step() {
        let e = at((19, 30, 3));
        let readings = [r(e - 5 * S, 2150.0), r(e + 5 * S, 2030.0)];
        match eval(&readings, e, 10.0) {
            Outcome::Correlated(s) => {
                assert_eq!(s.delta_w, -120.0);
                assert_eq!(s.delta_pct, -5.581);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zero_before_gives_zero_pct() {
        assert_eq!(step(0.0, 500.0).delta_pct, 0.0);
        assert_eq!(step(-5.0, 500.0).delta_pct, 0.0);
        assert_eq!(step(0.0, 500.0).delta_w, 500.0);
    }

    #[test]
    fn sparse_readings_give_nothing() {
        let e = at((19, 32, 30));
        let readings: Vec<Reading> =
            (0..6).map(|i| r(at((19, 30, 0)) + i * 300 * S, 1000.0 + i as f64 * 500.0)).collect();
        assert_eq!(eval(&readings, e, 10.0), Outcome::Pending);
    }

    #[test]
    fn waits_while_a_nearer_reading_may_arrive() {
        let e = at((19, 30, 3));
        // After-target 19:30:08; only a reading at 19:30:04 so far: one at
        // 19:30:08..=19:30:12 would be nearer, so wait until 19:30:12 passed.
        let readings = [r(e - 5 * S, 100.0), r(e + S, 200.0)];
        let pending = evaluate(&readings, e, 5 * S, 30 * S, 10.0, e + 9 * S);
        assert_eq!(pending, Outcome::Pending);
        let settled = evaluate(&readings, e, 5 * S, 30 * S, 10.0, e + 20 * S);
        assert!(matches!(settled, Outcome::Correlated(_)));
    }

    fn step_eval(readings: &[Reading], event: i64, now: i64) -> Outcome {
        let rule = StepRule { offset: 5 * S, padding: 30 * S, max_staleness: 3600 * S, min_delta_w: 10.0 };
        evaluate_step(readings, event, rule, now)
    }

    #[test]
    fn step_rule_reads_the_last_value_before_and_the_first_late_one_after() {
        let e = at((19, 30, 0));
        let readings = [r(e - 240 * S, 450.0), r(e + 20 * S, 510.0)];
        assert_eq!(step_eval(&readings, e, e + 60 * S), Outcome::Correlated(step(450.0, 510.0)));
        // Until the late reading is in, the event waits.
        assert_eq!(step_eval(&readings[..1], e, e + 20 * S), Outcome::Pending);
    }

    #[test]
    fn step_rule_takes_the_value_at_event_plus_offset() {
        let e = at((19, 30, 0));
        let readings = [r(e - 9 * S, 100.0), r(e - S, 120.0), r(e + S, 900.0), r(e + 4 * S, 1000.0), r(e + 7 * S, 5.0)];
        assert_eq!(step_eval(&readings, e, e + 60 * S), Outcome::Correlated(step(120.0, 1000.0)));
        assert_eq!(step_eval(&readings, e, e + 5 * S), Outcome::Pending, "a write up to e + 5 s may still come");
    }

    #[test]
    fn step_rule_refuses_a_stale_before_and_holds_an_unchanged_value() {
        let e = at((19, 30, 0));
        assert_eq!(step_eval(&[r(e - 3601 * S, 100.0), r(e + S, 900.0)], e, e + 60 * S), Outcome::Stale);
        assert_eq!(step_eval(&[r(e + S, 900.0)], e, e + 60 * S), Outcome::Stale, "nothing before the event");
        let edge = [r(e - 3600 * S, 100.0), r(e + S, 900.0)];
        assert!(matches!(step_eval(&edge, e, e + 60 * S), Outcome::Correlated(_)), "max_staleness is inclusive");
        // Silent since the event, past the padding: the power stayed.
        assert_eq!(step_eval(&[r(e - 60 * S, 300.0)], e, e + 36 * S), Outcome::Below(step(300.0, 300.0)));
        assert_eq!(step_eval(&[r(e - 60 * S, 300.0)], e, e + 35 * S), Outcome::Pending);
    }
}
