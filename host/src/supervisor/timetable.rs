//! When a guest runs next: its schedule, the wake-up it asked for, the
//! restart backoff after failed runs and the least gap after a run, all
//! read on the scheduler's [`Clock`]. Bookkeeping only: the guest's task
//! (`runner`) sleeps until what this says, or until something else comes
//! first (an invoke, a swap, shutdown).

use std::time::{Duration, SystemTime};

use super::clock::Clock;
use crate::config::{RestartPolicy, Schedule};

/// The least time between a run and a wake-up it asked for: a guest that
/// asks to run again at once on every run must not spin the host.
pub const MIN_WAKE_GAP: Duration = Duration::from_secs(1);

/// How far ahead a schedule with no next time (a cron that never fires
/// again) is looked at again.
const NO_NEXT_RETRY: Duration = Duration::from_secs(3600);

/// One guest's timetable.
pub struct Timetable {
    clock: Clock,
    /// When the schedule next fires.
    next_scheduled: SystemTime,
    /// No scheduled run before this (restart backoff after failures).
    backoff_until: Option<SystemTime>,
    /// No wake-up before this: [`MIN_WAKE_GAP`] after the last run.
    wake_not_before: Option<SystemTime>,
}

/// The next trigger: when, and whether it is the guest's own wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub at: SystemTime,
    pub is_wake: bool,
}

impl Timetable {
    /// A timetable whose first scheduled run is now, so a guest's status is
    /// known right after start-up.
    pub fn starting_now(clock: Clock) -> Timetable {
        Timetable { clock, next_scheduled: clock.now(), backoff_until: None, wake_not_before: None }
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// When the schedule next fires (before any backoff).
    pub fn next_scheduled(&self) -> SystemTime {
        self.next_scheduled
    }

    /// The earlier of the schedule and the guest's wake-up `wake`. After
    /// failed runs a wake-up waits out the backoff too: a guest that asks
    /// to run again and then fails must not loop.
    pub fn due(&self, wake: Option<SystemTime>) -> Due {
        let backed_off = |at: SystemTime| self.backoff_until.map_or(at, |b| b.max(at));
        let gap = |at: SystemTime| self.wake_not_before.map_or(at, |n| n.max(at));
        let scheduled = backed_off(self.next_scheduled);
        match wake.map(gap).map(backed_off) {
            Some(at) if at < scheduled => Due { at, is_wake: true },
            _ => Due { at: scheduled, is_wake: false },
        }
    }

    /// Moves the schedule past `planned`; a backlog (the host was suspended,
    /// a run overran, or backoff held runs back) collapses into one run.
    pub fn advance_schedule(&mut self, schedule: &Schedule, planned: SystemTime) {
        let now = self.clock.now();
        let mut next = schedule.next_after(planned).unwrap_or(now + NO_NEXT_RETRY);
        while next < now {
            next = schedule.next_after(next).unwrap_or(now + NO_NEXT_RETRY);
        }
        self.next_scheduled = next;
    }

    /// Records a run that ended at `finished`. After `failures` failed runs
    /// in a row (this one included) scheduled runs wait
    /// `min(backoff * 2^(failures-1), max_backoff)`; a success clears it.
    pub fn ran(&mut self, ok: bool, failures: u64, policy: &RestartPolicy, finished: SystemTime) {
        self.wake_not_before = Some(finished + MIN_WAKE_GAP);
        if ok {
            self.backoff_until = None;
            return;
        }
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(30) as u32);
        let delay = policy.backoff.saturating_mul(factor).min(policy.max_backoff);
        self.backoff_until = Some(finished + delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    /// 2026-12-07 10:02:30 UTC.
    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_637_750)
    }

    fn every(d: Duration) -> Schedule {
        Schedule::Every(d)
    }

    /// Sleeps (on tokio's clock) until the next trigger and returns it.
    async fn wait(t: &Timetable, wake: Option<SystemTime>) -> Due {
        let due = t.due(wake);
        tokio::time::sleep(t.clock().until(due.at)).await;
        assert_eq!(t.clock().now(), due.at, "woke exactly when due");
        due
    }

    #[tokio::test(start_paused = true)]
    async fn an_interval_schedule_runs_at_once_then_every_interval() {
        let schedule = every(5 * MIN);
        let mut t = Timetable::starting_now(Clock::following_tokio_from(t0()));
        let mut runs = Vec::new();
        for _ in 0..4 {
            let due = wait(&t, None).await;
            assert!(!due.is_wake);
            runs.push(due.at.duration_since(t0()).unwrap());
            t.advance_schedule(&schedule, due.at);
        }
        assert_eq!(runs, [Duration::ZERO, 5 * MIN, 10 * MIN, 15 * MIN]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backlog_collapses_into_one_run_then_the_schedule_resumes() {
        let schedule = every(5 * MIN);
        let mut t = Timetable::starting_now(Clock::following_tokio_from(t0()));
        let first = wait(&t, None).await;
        // The run (or a suspended board) takes 17 minutes: three slots missed.
        tokio::time::advance(17 * MIN).await;
        t.advance_schedule(&schedule, first.at);
        assert_eq!(t.next_scheduled(), t0() + 20 * MIN, "the first slot still ahead, not three runs in a row");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cron_schedule_fires_at_its_minute_on_the_clock() {
        let schedule = Schedule::parse("*/5 * * * *").unwrap();
        let mut t = Timetable::starting_now(Clock::following_tokio_from(t0()));
        let first = wait(&t, None).await;
        t.advance_schedule(&schedule, first.at);
        let second = wait(&t, None).await;
        assert_eq!(second.at, t0() + 2 * MIN + Duration::from_secs(30), "10:05:00, not five minutes after 10:02:30");
        t.advance_schedule(&schedule, second.at);
        assert_eq!(wait(&t, None).await.at, second.at + 5 * MIN);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_doubling_up_to_the_maximum_and_a_success_clears_it() {
        let policy = RestartPolicy {
            backoff: 10 * Duration::from_secs(1),
            max_backoff: 35 * Duration::from_secs(1),
            degraded_after: 3,
        };
        let schedule = every(Duration::from_secs(1));
        let mut t = Timetable::starting_now(Clock::following_tokio_from(t0()));
        let mut gaps = Vec::new();
        for failures in 1..=4 {
            let due = wait(&t, None).await;
            t.advance_schedule(&schedule, due.at);
            t.ran(false, failures, &policy, due.at);
            gaps.push(t.due(None).at.duration_since(due.at).unwrap().as_secs());
        }
        assert_eq!(gaps, [10, 20, 35, 35]);
        let due = wait(&t, None).await;
        t.advance_schedule(&schedule, due.at);
        t.ran(true, 0, &policy, due.at);
        assert_eq!(t.due(None).at, due.at + Duration::from_secs(1), "back on the schedule after a success");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_comes_before_the_schedule_but_not_within_the_gap_after_a_run() {
        let policy = RestartPolicy { backoff: 30 * Duration::from_secs(1), max_backoff: 30 * MIN, degraded_after: 3 };
        let schedule = every(60 * MIN);
        let mut t = Timetable::starting_now(Clock::following_tokio_from(t0()));
        let first = wait(&t, None).await;
        t.advance_schedule(&schedule, first.at);
        t.ran(true, 0, &policy, first.at);
        // "Run again at once": held to the least gap after the run.
        let again = wait(&t, Some(first.at)).await;
        assert_eq!(again, Due { at: first.at + MIN_WAKE_GAP, is_wake: true });
        // A wake-up after the next scheduled run is not the next trigger.
        assert_eq!(t.due(Some(t0() + 90 * MIN)), Due { at: t0() + 60 * MIN, is_wake: false });
        // After a failure the wake-up waits out the backoff.
        t.ran(false, 1, &policy, again.at);
        let held = wait(&t, Some(again.at)).await;
        assert_eq!(held, Due { at: again.at + Duration::from_secs(30), is_wake: true });
    }
}
