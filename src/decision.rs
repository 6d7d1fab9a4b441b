//! The decision, pure: what the face matched and how fresh the frame is → status and whether the relay
//! may move. Freshness is worked out once per request, here, from the frame's arrival and capture times.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::DoorConfig;
use crate::gallery::BestMatch;

/// The answer's `status` field, for every endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Granted,
    Unknown,
    NoFace,
    Stale,
    /// `/save` stored the frame.
    Saved,
    /// Every worker busy and the queue full.
    Busy,
    /// The request was refused; the record says why.
    Error,
    /// `/code`: the code is wrong or not valid today.
    Denied,
    /// `/code`: too many wrong codes from this address; nothing is checked until the lockout ends.
    LockedOut,
    /// The door is open or cooling down after a grant; the frame was not looked at.
    Paused,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Granted => "granted",
            Status::Unknown => "unknown",
            Status::NoFace => "no_face",
            Status::Stale => "stale",
            Status::Saved => "saved",
            Status::Busy => "busy",
            Status::Error => "error",
            Status::Denied => "denied",
            Status::LockedOut => "locked_out",
            Status::Paused => "paused",
        }
    }
}

/// What recognition found in one frame, before freshness is considered.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    NoFace,
    /// A face, but nobody enrolled is similar enough. `best` is kept for the log, never for the answer's identity.
    Unknown {
        best: Option<BestMatch>,
    },
    Recognised(BestMatch),
}

impl Outcome {
    /// A face was found: it is recognised only at or above the threshold, otherwise unknown,
    /// never "the nearest person".
    pub fn for_face(best: Option<BestMatch>, threshold: f32) -> Outcome {
        match best {
            Some(m) if m.score >= threshold => Outcome::Recognised(m),
            best => Outcome::Unknown { best },
        }
    }

    pub fn score(&self) -> Option<f32> {
        match self {
            Outcome::NoFace => None,
            Outcome::Unknown { best } => best.as_ref().map(|m| m.score),
            Outcome::Recognised(m) => Some(m.score),
        }
    }

    /// The nearest enrolled person below the threshold: for the log and audit line only.
    pub fn nearest_below_threshold(&self) -> Option<&BestMatch> {
        match self {
            Outcome::Unknown { best } => best.as_ref(),
            _ => None,
        }
    }
}

/// The limits freshness is judged by (`door.max_decision_age_ms`, `door.max_clock_skew_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshnessRules {
    pub max_age: Duration,
    /// How far the tablet's `captured_at` may lie ahead of the Pi's clock and still count as "now".
    pub max_clock_skew: Duration,
}

impl FreshnessRules {
    pub fn of(door: &DoorConfig) -> FreshnessRules {
        FreshnessRules {
            max_age: Duration::from_millis(door.max_decision_age_ms),
            max_clock_skew: Duration::from_millis(door.max_clock_skew_ms),
        }
    }
}

/// How fresh one frame is, worked out once when its request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// The frame arrived at `arrived`, already `age_at_arrival` old (its `captured_at` lay that far
    /// back); it may be acted on while its age stays within `max_age`.
    Aged {
        arrived: Instant,
        age_at_arrival: Duration,
        max_age: Duration,
    },
    /// `captured_at` lies further ahead of the Pi's clock than allowed: a wrong clock or a forged
    /// field, never fresh.
    ClockAhead { ahead: Duration },
}

impl Freshness {
    /// `received` and `received_wall` are the frame's arrival on the monotonic and the wall clock;
    /// `captured_at` is the tablet's word for when the camera took it.
    pub fn of_frame(
        received: Instant,
        received_wall: DateTime<Utc>,
        captured_at: Option<DateTime<Utc>>,
        rules: FreshnessRules,
    ) -> Freshness {
        let age_at_arrival = match captured_at {
            None => Duration::ZERO,
            Some(captured) => match (received_wall - captured).to_std() {
                Ok(before) => before,
                Err(_) => {
                    let ahead = (captured - received_wall).to_std().unwrap_or_default();
                    if ahead > rules.max_clock_skew {
                        return Freshness::ClockAhead { ahead };
                    }
                    Duration::ZERO
                }
            },
        };
        Freshness::Aged {
            arrived: received,
            age_at_arrival,
            max_age: rules.max_age,
        }
    }

    /// Until when a grant about this frame may still open the door; `None` when it never may.
    pub fn not_after(self) -> Option<Instant> {
        match self {
            Freshness::Aged {
                arrived,
                age_at_arrival,
                max_age,
            } => max_age
                .checked_sub(age_at_arrival)
                .map(|left| arrived + left),
            Freshness::ClockAhead { .. } => None,
        }
    }

    /// Is the frame still fresh at `now`?
    pub fn is_fresh_at(self, now: Instant) -> bool {
        self.not_after().is_some_and(|not_after| now <= not_after)
    }

    /// The frame's age at `now`, for logs (zero for a frame from the future).
    pub fn age_at(self, now: Instant) -> Duration {
        match self {
            Freshness::Aged {
                arrived,
                age_at_arrival,
                ..
            } => age_at_arrival + now.saturating_duration_since(arrived),
            Freshness::ClockAhead { .. } => Duration::ZERO,
        }
    }
}

/// Why a decision is stale, for the answer's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleCause {
    TooOld { age: Duration },
    ClockAhead { ahead: Duration },
}

impl StaleCause {
    pub fn message(self, rules: FreshnessRules) -> String {
        match self {
            StaleCause::TooOld { age } => format!(
                "the frame was {} ms old when decided, more than the {} ms allowed: send the next frame",
                age.as_millis(),
                rules.max_age.as_millis()
            ),
            StaleCause::ClockAhead { ahead } => format!(
                "captured_at is {} ms ahead of the Pi's clock (at most {} ms allowed): the tablet's clock is wrong; synchronise it with NTP",
                ahead.as_millis(),
                rules.max_clock_skew.as_millis()
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: Status,
    /// Only for a grant.
    pub identity: Option<String>,
    pub score: Option<f32>,
    /// Set only for a fresh grant, the one case in which the relay may move: the moment after which
    /// the relay must no longer act on it.
    pub open_until: Option<Instant>,
    pub stale: Option<StaleCause>,
}

impl Decision {
    pub fn may_open(&self) -> bool {
        self.open_until.is_some()
    }
}

/// Decides at `now` on a frame of the given freshness. A frame that is no longer fresh is stale
/// whatever it showed, and stale never opens.
pub fn decide(outcome: &Outcome, freshness: Freshness, now: Instant) -> Decision {
    let score = outcome.score();
    let stale = match freshness {
        Freshness::ClockAhead { ahead } => Some(StaleCause::ClockAhead { ahead }),
        Freshness::Aged { .. } if !freshness.is_fresh_at(now) => Some(StaleCause::TooOld {
            age: freshness.age_at(now),
        }),
        Freshness::Aged { .. } => None,
    };
    let (status, identity, open_until) = match (stale, outcome) {
        (Some(_), _) => (Status::Stale, None, None),
        (None, Outcome::NoFace) => (Status::NoFace, None, None),
        (None, Outcome::Unknown { .. }) => (Status::Unknown, None, None),
        (None, Outcome::Recognised(m)) => {
            (Status::Granted, Some(m.name.clone()), freshness.not_after())
        }
    };
    Decision {
        status,
        identity,
        score,
        open_until,
        stale,
    }
}

/// A similarity as answers and logs show it: four decimals (0.7789, not 0.778914391994).
pub fn round_score(score: f32) -> f64 {
    (f64::from(score) * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(score: f32) -> BestMatch {
        BestMatch {
            name: "ann".into(),
            score,
        }
    }

    const RULES: FreshnessRules = FreshnessRules {
        max_age: Duration::from_millis(1500),
        max_clock_skew: Duration::from_millis(1000),
    };

    /// A frame received `age` before `now`, with no `captured_at`.
    fn received_ago(now: Instant, age: Duration) -> Freshness {
        Freshness::of_frame(now - age, Utc::now(), None, RULES)
    }

    #[test]
    fn only_a_fresh_match_above_threshold_may_open() {
        let now = Instant::now() + Duration::from_secs(10);
        let fresh = Duration::from_millis(100);
        let old = Duration::from_millis(1501);
        let max = RULES.max_age;
        let cases = [
            (
                Outcome::for_face(Some(ann(0.9)), 0.45),
                fresh,
                Status::Granted,
            ),
            (
                Outcome::for_face(Some(ann(0.45)), 0.45),
                fresh,
                Status::Granted,
            ),
            (
                Outcome::for_face(Some(ann(0.449)), 0.45),
                fresh,
                Status::Unknown,
            ),
            (Outcome::for_face(None, 0.45), fresh, Status::Unknown),
            (Outcome::NoFace, fresh, Status::NoFace),
            (Outcome::for_face(Some(ann(0.9)), 0.45), old, Status::Stale),
            (
                Outcome::for_face(Some(ann(0.9)), 0.45),
                max,
                Status::Granted,
            ),
            (Outcome::NoFace, old, Status::Stale),
        ];
        for (outcome, age, status) in cases {
            let freshness = received_ago(now, age);
            let d = decide(&outcome, freshness, now);
            assert_eq!(d.status, status, "{outcome:?} at {age:?}");
            assert_eq!(
                d.may_open(),
                status == Status::Granted,
                "{outcome:?} at {age:?}"
            );
            assert_eq!(
                d.identity.is_some(),
                status == Status::Granted,
                "identity only on a grant"
            );
            if d.may_open() {
                assert_eq!(d.open_until, Some(now - age + max), "the relay's deadline");
            }
        }
    }

    #[test]
    fn unknown_never_names_the_nearest_person() {
        let now = Instant::now();
        let d = decide(
            &Outcome::for_face(Some(ann(0.3)), 0.45),
            received_ago(now, Duration::ZERO),
            now,
        );
        assert_eq!(d.identity, None);
        assert_eq!(d.score, Some(0.3));
    }

    #[test]
    fn captured_at_counts_when_it_is_older_than_the_arrival() {
        let received = Instant::now() + Duration::from_secs(10);
        let wall = Utc::now();
        let cases = [
            // (captured this long before arrival, negative for after; fresh at arrival; age at arrival)
            (0i64, true, 0u128),
            (1000, true, 1000),
            (1500, true, 1500),
            (1501, false, 1501),
            (-500, true, 0),
            (-1000, true, 0),
        ];
        for (before_ms, fresh, age_ms) in cases {
            let captured = wall - chrono::Duration::milliseconds(before_ms);
            let freshness = Freshness::of_frame(received, wall, Some(captured), RULES);
            assert_eq!(freshness.is_fresh_at(received), fresh, "{before_ms} ms");
            assert_eq!(
                freshness.age_at(received).as_millis(),
                age_ms,
                "{before_ms} ms"
            );
        }
    }

    #[test]
    fn regression_future_captured_at_beyond_the_skew_never_opens() {
        // A tablet with a wrong clock (or a forged field) once made every frame fresh forever.
        let received = Instant::now();
        let wall = Utc::now();
        let captured = wall + chrono::Duration::milliseconds(1001);
        let freshness = Freshness::of_frame(received, wall, Some(captured), RULES);
        assert_eq!(
            freshness,
            Freshness::ClockAhead {
                ahead: Duration::from_millis(1001)
            }
        );
        let d = decide(&Outcome::Recognised(ann(0.9)), freshness, received);
        assert_eq!((d.status, d.may_open()), (Status::Stale, false));
        let message = d.stale.unwrap().message(RULES);
        assert!(message.contains("clock"), "{message}");
    }
}
