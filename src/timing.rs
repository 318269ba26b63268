//! Timing configuration: presets, overrides and validation.
//!
//! The Raft core counts logical ticks; [`TimingConfig`] says how long a tick
//! is (the event-loop delay) and converts the heartbeat interval and the
//! election timeout range into tick counts.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::{Error, Result};

/// A named set of timing values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TimingMode {
    /// 50 ms heartbeats, 150-300 ms election timeouts: for real use.
    #[default]
    Fast,
    /// 500 ms heartbeats, 1500-3000 ms election timeouts: to follow the logs.
    Debug,
    /// 2 s heartbeats, 5-10 s election timeouts: to watch elections by eye.
    Demo,
}

impl FromStr for TimingMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fast" => Ok(TimingMode::Fast),
            "debug" => Ok(TimingMode::Debug),
            "demo" => Ok(TimingMode::Demo),
            other => Err(Error::Config(format!(
                "unknown timing mode '{other}' (expected fast, debug or demo)"
            ))),
        }
    }
}

impl fmt::Display for TimingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimingMode::Fast => "fast",
            TimingMode::Debug => "debug",
            TimingMode::Demo => "demo",
        })
    }
}

/// Timing of a node, in milliseconds of wall-clock time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimingConfig {
    /// How often a leader sends heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound (exclusive) of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// Length of one logical tick: how often the event loop ticks the core.
    pub event_loop_delay_ms: u64,
}

impl Default for TimingConfig {
    fn default() -> Self {
        TimingConfig::preset(TimingMode::Fast)
    }
}

impl TimingConfig {
    /// The values of a preset.
    pub fn preset(mode: TimingMode) -> Self {
        let (tick, heartbeat, min, max) = match mode {
            TimingMode::Fast => (10, 50, 150, 300),
            TimingMode::Debug => (100, 500, 1500, 3000),
            TimingMode::Demo => (400, 2000, 5000, 10000),
        };
        TimingConfig {
            heartbeat_interval_ms: heartbeat,
            election_timeout_min_ms: min,
            election_timeout_max_ms: max,
            event_loop_delay_ms: tick,
        }
    }

    /// Checks Raft's timing rule and that every value is usable. The message
    /// names the offending values.
    pub fn validate(&self) -> Result<()> {
        let TimingConfig {
            heartbeat_interval_ms: hb,
            election_timeout_min_ms: min,
            election_timeout_max_ms: max,
            event_loop_delay_ms: tick,
        } = *self;
        if tick == 0 {
            return Err(Error::Config(
                "event loop delay must be at least 1 ms".into(),
            ));
        }
        if hb == 0 {
            return Err(Error::Config(
                "heartbeat interval must be at least 1 ms".into(),
            ));
        }
        if min <= hb {
            return Err(Error::Config(format!(
                "election timeout min ({min} ms) must exceed the heartbeat interval ({hb} ms)"
            )));
        }
        if max <= min {
            return Err(Error::Config(format!(
                "election timeout min ({min} ms) must be less than max ({max} ms)"
            )));
        }
        if tick > hb {
            return Err(Error::Config(format!(
                "event loop delay ({tick} ms) must not exceed the heartbeat interval ({hb} ms)"
            )));
        }
        // Timeouts are drawn from min..max ticks (max excluded); with fewer
        // than two values to draw, candidates that collide keep colliding.
        if self.election_ticks_max() < self.election_ticks_min() + 2 {
            return Err(Error::Config(format!(
                "election timeout range {min}-{max} ms must span at least two ticks ({tick} ms \
                 each), so that candidates draw different timeouts"
            )));
        }
        if self.election_ticks_min() <= self.heartbeat_ticks() {
            return Err(Error::Config(format!(
                "election timeout min ({min} ms) must exceed the heartbeat interval ({hb} ms) by at least one tick ({tick} ms)"
            )));
        }
        Ok(())
    }

    /// The duration of one tick.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.event_loop_delay_ms)
    }

    /// Heartbeat interval in ticks (at least 1).
    pub fn heartbeat_ticks(&self) -> u32 {
        self.ticks(self.heartbeat_interval_ms)
    }

    /// Election timeout lower bound in ticks.
    pub fn election_ticks_min(&self) -> u32 {
        self.ticks(self.election_timeout_min_ms)
    }

    /// Election timeout upper bound (exclusive) in ticks.
    pub fn election_ticks_max(&self) -> u32 {
        self.ticks(self.election_timeout_max_ms)
    }

    fn ticks(&self, ms: u64) -> u32 {
        let tick = self.event_loop_delay_ms.max(1);
        (ms / tick).clamp(1, u32::MAX as u64) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_cli_contract() {
        let fast = TimingConfig::preset(TimingMode::Fast);
        assert_eq!(
            (
                fast.heartbeat_interval_ms,
                fast.election_timeout_min_ms,
                fast.election_timeout_max_ms
            ),
            (50, 150, 300)
        );
        let debug = TimingConfig::preset(TimingMode::Debug);
        assert_eq!(
            (
                debug.heartbeat_interval_ms,
                debug.election_timeout_min_ms,
                debug.election_timeout_max_ms
            ),
            (500, 1500, 3000)
        );
        let demo = TimingConfig::preset(TimingMode::Demo);
        assert_eq!(
            (
                demo.heartbeat_interval_ms,
                demo.election_timeout_min_ms,
                demo.election_timeout_max_ms
            ),
            (2000, 5000, 10000)
        );
        for mode in [TimingMode::Fast, TimingMode::Debug, TimingMode::Demo] {
            TimingConfig::preset(mode).validate().unwrap();
            assert_eq!(mode.to_string().parse::<TimingMode>().unwrap(), mode);
        }
        assert_eq!(TimingConfig::default(), fast);
    }

    #[test]
    fn ticks_are_derived_from_the_tick_length() {
        let fast = TimingConfig::preset(TimingMode::Fast);
        assert_eq!(fast.heartbeat_ticks(), 5);
        assert_eq!(fast.election_ticks_min(), 15);
        assert_eq!(fast.election_ticks_max(), 30);
        assert_eq!(fast.tick(), Duration::from_millis(10));
    }

    #[test]
    fn validation_rejects_broken_timing_and_names_values() {
        let mut t = TimingConfig::preset(TimingMode::Fast);
        t.election_timeout_min_ms = 50;
        let msg = t.validate().unwrap_err().to_string();
        assert!(msg.contains("50 ms"), "{msg}");
        assert!(msg.contains("heartbeat"), "{msg}");

        let mut t = TimingConfig::preset(TimingMode::Fast);
        t.election_timeout_max_ms = 150;
        let msg = t.validate().unwrap_err().to_string();
        assert!(
            msg.contains("min (150 ms)") && msg.contains("max (150 ms)"),
            "{msg}"
        );

        let mut t = TimingConfig::preset(TimingMode::Fast);
        t.heartbeat_interval_ms = 0;
        assert!(t.validate().is_err());

        let mut t = TimingConfig::preset(TimingMode::Fast);
        t.event_loop_delay_ms = 0;
        assert!(t.validate().is_err());

        let mut t = TimingConfig::preset(TimingMode::Fast);
        t.event_loop_delay_ms = 100;
        assert!(t.validate().is_err());

        // 150-160 ms at 10 ms ticks leaves one possible timeout (15 ticks).
        let mut t = TimingConfig::preset(TimingMode::Fast);
        t.election_timeout_max_ms = 160;
        let msg = t.validate().unwrap_err().to_string();
        assert!(
            msg.contains("150-160 ms") && msg.contains("two ticks"),
            "{msg}"
        );
        t.election_timeout_max_ms = 170;
        t.validate().unwrap();

        assert!("slow".parse::<TimingMode>().is_err());
    }
}
