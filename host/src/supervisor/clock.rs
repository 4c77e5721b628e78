//! The clock the scheduler reads: wall time in production, so schedules
//! (`every 5m`, cron in local time) follow the calendar and a suspended
//! board catches up; in tests, wall time that moves with tokio's clock, so
//! `tokio::time::pause` and `advance` drive schedules, backoff and wake-ups
//! without waiting for them.

use std::time::{Duration, SystemTime};

/// "Now" for the scheduler; its sleeps are tokio sleeps either way.
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    /// [`SystemTime::now`].
    #[default]
    Wall,
    /// `wall` at the tokio instant `started`, then moving as tokio's clock
    /// moves (paused, advanced, or auto-advanced in a paused runtime).
    Tokio { wall: SystemTime, started: tokio::time::Instant },
}

impl Clock {
    /// A clock reading `wall` now and following tokio's clock from here on.
    pub fn following_tokio_from(wall: SystemTime) -> Clock {
        Clock::Tokio { wall, started: tokio::time::Instant::now() }
    }

    /// The current time.
    pub fn now(&self) -> SystemTime {
        match self {
            Clock::Wall => SystemTime::now(),
            Clock::Tokio { wall, started } => *wall + started.elapsed(),
        }
    }

    /// How long from now until `at` (zero if it has passed).
    pub fn until(&self, at: SystemTime) -> Duration {
        at.duration_since(self.now()).unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_only_as_tokio_time_moves() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        let clock = Clock::following_tokio_from(t0);
        assert_eq!(clock.now(), t0);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), t0 + Duration::from_secs(90));
        let at = t0 + Duration::from_secs(300);
        assert_eq!(clock.until(at), Duration::from_secs(210));
        tokio::time::sleep(clock.until(at)).await;
        assert_eq!(clock.now(), at, "a sleep on tokio's clock ends when this clock says so");
        assert_eq!(clock.until(t0), Duration::ZERO, "the past is due now");
    }

    #[test]
    fn the_wall_clock_is_system_time() {
        let before = SystemTime::now();
        let now = Clock::Wall.now();
        assert!(before <= now && now <= SystemTime::now());
    }
}
