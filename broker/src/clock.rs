//! Wall-clock time as an input. The reaper and the client-seen marks read
//! the time through a [`Clock`], so tests move it with tokio's paused clock
//! (see `embark_testkit::clock`) instead of waiting for it.

use jiff::{SignedDuration, Timestamp};
use tokio::time::Instant;

#[derive(Clone, Copy, Debug)]
pub enum Clock {
    /// The system's wall clock.
    System,
    /// `wall` at `start`, then moving as tokio's clock moves: under paused
    /// time, exactly as far as a test advances it.
    Tokio { wall: Timestamp, start: Instant },
}

impl Clock {
    /// Wall time that follows tokio's clock from `wall` on.
    pub fn tokio(wall: Timestamp) -> Clock {
        Clock::Tokio {
            wall,
            start: Instant::now(),
        }
    }

    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => Timestamp::now(),
            Clock::Tokio { wall, start } => {
                let elapsed = SignedDuration::try_from(start.elapsed()).unwrap_or(SignedDuration::MAX);
                wall.saturating_add(elapsed).unwrap_or(*wall)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_with_paused_time() {
        let wall = Timestamp::from_second(1_700_000_000).expect("valid");
        let clock = Clock::tokio(wall);
        assert_eq!(clock.now(), wall);
        tokio::time::advance(Duration::from_secs(301)).await;
        assert_eq!(clock.now(), wall + SignedDuration::from_secs(301));
    }
}
