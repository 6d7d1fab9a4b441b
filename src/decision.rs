//! The decision, pure: what the face matched, whether it looked live, how far the tablet's confirmation
//! has got and how fresh the frame is → status and whether the relay may move. Freshness is worked out
//! once per request, here, from the frame's arrival and capture times.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::DoorConfig;
use crate::confirmation::Tally;
use crate::gallery::BestMatch;
use crate::permission::{Access, Denial};
use crate::vision::LivenessReading;

/// The answer's `status` field, for every endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Granted,
    Unknown,
    NoFace,
    /// Recognised, but the liveness score is below `liveness.threshold`: a print or a screen, as far as
    /// the models can tell.
    Spoof,
    /// Recognised, but the face is too small in the frame for liveness to judge: come closer.
    TooFar,
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
    /// Recognised and live, or a valid visitor code, but not allowed at this time (the record's
    /// `reason`: `not_yet_valid`, `expired`, `outside_schedule`, `suspended`). The door stays locked.
    NotAllowed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Granted => "granted",
            Status::Unknown => "unknown",
            Status::NoFace => "no_face",
            Status::Spoof => "spoof",
            Status::TooFar => "too_far",
            Status::Stale => "stale",
            Status::Saved => "saved",
            Status::Busy => "busy",
            Status::Error => "error",
            Status::Denied => "denied",
            Status::LockedOut => "locked_out",
            Status::Paused => "paused",
            Status::NotAllowed => "not_allowed",
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
    pub(crate) fn nearest_below_threshold(&self) -> Option<&BestMatch> {
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
    /// A photo file (`facegate identify`) has no age that matters: it stays fresh for a day, however
    /// slowly it is recognised (under qemu a frame takes seconds).
    pub const FOR_FILES: FreshnessRules = FreshnessRules {
        max_age: Duration::from_secs(86_400),
        max_clock_skew: Duration::ZERO,
    };

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
    pub(crate) fn is_fresh_at(self, now: Instant) -> bool {
        self.not_after().is_some_and(|not_after| now <= not_after)
    }

    /// The frame's age at `now`, for logs (zero for a frame from the future).
    pub(crate) fn age_at(self, now: Instant) -> Duration {
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

/// What liveness found about a recognised face, as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Liveness {
    /// `liveness.enabled = false`, or the face was not recognised (liveness only runs where it matters).
    Off,
    /// Too few pixels to judge: never granted.
    TooSmall,
    Scored(f32),
}

impl Liveness {
    pub(crate) fn from_reading(reading: Option<&LivenessReading>) -> Liveness {
        match reading {
            None => Liveness::Off,
            Some(LivenessReading::TooSmall { .. }) => Liveness::TooSmall,
            Some(LivenessReading::Scored { score, .. }) => Liveness::Scored(*score),
        }
    }

    pub fn score(self) -> Option<f32> {
        match self {
            Liveness::Scored(score) => Some(score),
            Liveness::Off | Liveness::TooSmall => None,
        }
    }
}

/// Everything beyond recognition and freshness that a decision weighs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Checks {
    pub liveness: Liveness,
    pub liveness_threshold: f32,
    /// The tablet's confirmation so far (`confirmation::Confirmations::grant`), for a frame that counts
    /// towards it; `None` decides on this frame alone.
    pub tally: Option<Tally>,
    /// Whether the recognised person may enter now (`permission::access_at`).
    pub access: Access,
}

impl Checks {
    /// Recognition alone: liveness off, one frame opens.
    pub(crate) const NONE: Checks = Checks {
        liveness: Liveness::Off,
        liveness_threshold: 0.0,
        tally: None,
        access: Access::Allowed,
    };
}

/// The liveness a decision was made on, for the answer and the records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LivenessVerdict {
    /// This frame's score; `None` when the face was too small to judge.
    pub score: Option<f32>,
    /// With `door.confirm_frames` > 1, the lowest score of the confirming frames, once they are all in.
    pub lowest: Option<f32>,
    pub threshold: f32,
}

/// As answers show it: `{"score": 0.9731, "threshold": 0.8}`, plus `"lowest"` when several frames counted.
impl Serialize for LivenessVerdict {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("score", &self.score.map(round_score))?;
        if let Some(lowest) = self.lowest {
            map.serialize_entry("lowest", &round_score(lowest))?;
        }
        map.serialize_entry("threshold", &round_score(self.threshold))?;
        map.end()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: Status,
    /// Only for a grant.
    pub identity: Option<String>,
    pub score: Option<f32>,
    /// Set only for a fresh, live, confirmed grant, the one case in which the relay may move: the
    /// moment after which the relay must no longer act on it.
    pub open_until: Option<Instant>,
    pub stale: Option<StaleCause>,
    /// A grant still waiting for more frames: (grants so far, grants needed). The door stays locked.
    pub confirming: Option<(u32, u32)>,
    /// Only where liveness ran (a recognised face with liveness on).
    pub liveness: Option<LivenessVerdict>,
    /// For `not_allowed`: why, and when access resumes.
    pub denial: Option<Denial>,
}

impl Decision {
    pub fn may_open(&self) -> bool {
        self.open_until.is_some()
    }
}

/// Decides at `now` on a frame of the given freshness by recognition alone (liveness off, one frame
/// opens). A frame that is no longer fresh is stale whatever it showed, and stale never opens.
pub fn decide(outcome: &Outcome, freshness: Freshness, now: Instant) -> Decision {
    decide_with(outcome, &Checks::NONE, freshness, now)
}

fn stale_cause(freshness: Freshness, now: Instant) -> Option<StaleCause> {
    match freshness {
        Freshness::ClockAhead { ahead } => Some(StaleCause::ClockAhead { ahead }),
        Freshness::Aged { .. } if !freshness.is_fresh_at(now) => Some(StaleCause::TooOld {
            age: freshness.age_at(now),
        }),
        Freshness::Aged { .. } => None,
    }
}

/// The person a frame counts towards in the tablet's confirmation: a fresh recognised face that liveness
/// could judge and passed (every confirming frame must reach `liveness_threshold` itself). Any other
/// frame interrupts the tablet's streak.
pub(crate) fn confirming_person(
    outcome: &Outcome,
    liveness: Liveness,
    liveness_threshold: f32,
    freshness: Freshness,
    now: Instant,
) -> Option<&str> {
    let judged_live = match liveness {
        Liveness::Off => true,
        Liveness::TooSmall => false,
        Liveness::Scored(score) => score >= liveness_threshold,
    };
    match outcome {
        Outcome::Recognised(m) if stale_cause(freshness, now).is_none() && judged_live => {
            Some(&m.name)
        }
        _ => None,
    }
}

/// Decides at `now` on a frame of the given freshness. A frame that is no longer fresh is stale whatever
/// it showed, and stale never opens. A recognised face opens only when liveness (if on) passes on this
/// frame and on every confirming frame (their lowest score; never a mean), and once the confirmation is
/// complete.
pub(crate) fn decide_with(
    outcome: &Outcome,
    checks: &Checks,
    freshness: Freshness,
    now: Instant,
) -> Decision {
    let stale = stale_cause(freshness, now);
    let refused = |status| Decision {
        status,
        identity: None,
        score: outcome.score(),
        open_until: None,
        stale,
        confirming: None,
        liveness: None,
        denial: None,
    };
    let m = match (stale, outcome) {
        (Some(_), _) => return refused(Status::Stale),
        (None, Outcome::NoFace) => return refused(Status::NoFace),
        (None, Outcome::Unknown { .. }) => return refused(Status::Unknown),
        (None, Outcome::Recognised(m)) => m,
    };
    let verdict = |lowest| LivenessVerdict {
        score: checks.liveness.score(),
        lowest,
        threshold: checks.liveness_threshold,
    };
    if checks.liveness == Liveness::TooSmall {
        return Decision {
            liveness: Some(verdict(None)),
            ..refused(Status::TooFar)
        };
    }
    let tally = checks
        .tally
        .unwrap_or_else(|| Tally::single(checks.liveness.score()));
    let liveness = match checks.liveness {
        Liveness::Off => None,
        _ if tally.needed > 1 && tally.complete() => Some(verdict(tally.liveness_lowest)),
        _ => Some(verdict(None)),
    };
    let granted = Decision {
        status: Status::Granted,
        identity: Some(m.name.clone()),
        score: Some(m.score),
        open_until: None,
        stale: None,
        confirming: None,
        liveness,
        denial: None,
    };
    if let Access::Denied(denial) = checks.access {
        // Permission comes after liveness: a spoof of someone not allowed is still a spoof.
        let below = |score: Option<f32>| score.is_some_and(|s| s < checks.liveness_threshold);
        let spoof = checks.liveness != Liveness::Off
            && (below(checks.liveness.score()) || below(tally.liveness_lowest));
        return if spoof {
            Decision {
                liveness,
                ..refused(Status::Spoof)
            }
        } else {
            Decision {
                status: Status::NotAllowed,
                denial: Some(denial),
                ..granted
            }
        };
    }
    if !tally.complete() {
        return Decision {
            confirming: Some((tally.frames, tally.needed)),
            ..granted
        };
    }
    let passes = |score: f32| score >= checks.liveness_threshold;
    let live = match (checks.liveness, tally.liveness_lowest) {
        (Liveness::Off, _) => true,
        (Liveness::Scored(score), Some(lowest)) => passes(score) && passes(lowest),
        // Liveness on but no score reached the decision (too small was refused above): never live.
        (Liveness::Scored(_) | Liveness::TooSmall, None) | (Liveness::TooSmall, Some(_)) => false,
    };
    if live {
        Decision {
            open_until: freshness.not_after(),
            ..granted
        }
    } else {
        Decision {
            liveness,
            ..refused(Status::Spoof)
        }
    }
}

/// A similarity as answers and logs show it: four decimals (0.7789, not 0.778914391994).
pub(crate) fn round_score(score: f32) -> f64 {
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

    #[test]
    fn liveness_and_confirmation_gate_the_grant() {
        let now = Instant::now() + Duration::from_secs(10);
        let fresh = received_ago(now, Duration::from_millis(100));
        let old = received_ago(now, Duration::from_millis(1501));
        let ann_seen = Outcome::for_face(Some(ann(0.9)), 0.45);
        let live = |score| Checks {
            liveness: Liveness::Scored(score),
            liveness_threshold: 0.8,
            tally: None,
            access: Access::Allowed,
        };
        let tally = |frames, needed, lowest| Tally {
            frames,
            needed,
            liveness_lowest: lowest,
        };
        let with_tally = |checks: Checks, t| Checks {
            tally: Some(t),
            ..checks
        };
        let too_small = Checks {
            liveness: Liveness::TooSmall,
            ..live(0.0)
        };
        let stranger = Outcome::for_face(Some(ann(0.3)), 0.45);
        // (case, outcome, checks, freshness) -> (status, may open, confirming)
        let cases = [
            (
                "liveness off: as before",
                &ann_seen,
                Checks::NONE,
                fresh,
                Status::Granted,
                true,
                None,
            ),
            (
                "live face",
                &ann_seen,
                live(0.95),
                fresh,
                Status::Granted,
                true,
                None,
            ),
            (
                "exactly at the threshold",
                &ann_seen,
                live(0.8),
                fresh,
                Status::Granted,
                true,
                None,
            ),
            (
                "a print",
                &ann_seen,
                live(0.2),
                fresh,
                Status::Spoof,
                false,
                None,
            ),
            (
                "too small to judge",
                &ann_seen,
                too_small,
                fresh,
                Status::TooFar,
                false,
                None,
            ),
            (
                "stale beats live",
                &ann_seen,
                live(0.99),
                old,
                Status::Stale,
                false,
                None,
            ),
            (
                "strangers are unknown",
                &stranger,
                live(0.1),
                fresh,
                Status::Unknown,
                false,
                None,
            ),
            (
                "no face",
                &Outcome::NoFace,
                live(0.1),
                fresh,
                Status::NoFace,
                false,
                None,
            ),
            (
                "first of three frames",
                &ann_seen,
                with_tally(live(0.95), tally(1, 3, Some(0.95))),
                fresh,
                Status::Granted,
                false,
                Some((1, 3)),
            ),
            (
                "third frame, every frame passes",
                &ann_seen,
                with_tally(live(0.85), tally(3, 3, Some(0.82))),
                fresh,
                Status::Granted,
                true,
                None,
            ),
            (
                "regression: 0.95, 0.95, 0.5 has a mean of 0.8 and must not open",
                &ann_seen,
                with_tally(live(0.5), tally(3, 3, Some(0.5))),
                fresh,
                Status::Spoof,
                false,
                None,
            ),
            (
                "third frame is the lucky one, an earlier frame fails",
                &ann_seen,
                with_tally(live(0.99), tally(3, 3, Some(0.43))),
                fresh,
                Status::Spoof,
                false,
                None,
            ),
            (
                "confirmation without liveness",
                &ann_seen,
                with_tally(Checks::NONE, tally(2, 2, None)),
                fresh,
                Status::Granted,
                true,
                None,
            ),
            (
                "liveness on but no score reached the decision: refused",
                &ann_seen,
                with_tally(live(0.9), tally(2, 2, None)),
                fresh,
                Status::Spoof,
                false,
                None,
            ),
        ];
        for (case, outcome, checks, freshness, status, may_open, confirming) in cases {
            let d = decide_with(outcome, &checks, freshness, now);
            assert_eq!(
                (d.status, d.may_open(), d.confirming),
                (status, may_open, confirming),
                "{case}"
            );
            assert_eq!(d.identity.is_some(), status == Status::Granted, "{case}");
            if checks.liveness != Liveness::Off && d.identity.is_some() {
                let verdict = d.liveness.expect(case);
                assert_eq!(verdict.score, checks.liveness.score(), "{case}");
                assert_eq!(verdict.threshold, 0.8, "{case}");
            }
        }
    }

    #[test]
    fn a_liveness_verdict_is_shown_rounded_with_its_threshold() {
        let verdict = LivenessVerdict {
            score: Some(0.973_14),
            lowest: None,
            threshold: 0.8,
        };
        assert_eq!(
            serde_json::to_string(&verdict).unwrap(),
            r#"{"score":0.9731,"threshold":0.8}"#
        );
        let too_small = LivenessVerdict {
            score: None,
            lowest: Some(0.5),
            ..verdict
        };
        assert_eq!(
            serde_json::to_string(&too_small).unwrap(),
            r#"{"score":null,"lowest":0.5,"threshold":0.8}"#
        );
    }

    #[test]
    fn only_fresh_recognised_judgeable_frames_count_towards_confirmation() {
        let now = Instant::now() + Duration::from_secs(10);
        let fresh = received_ago(now, Duration::from_millis(100));
        let old = received_ago(now, Duration::from_secs(2));
        let ann_seen = Outcome::for_face(Some(ann(0.9)), 0.45);
        let stranger = Outcome::for_face(Some(ann(0.3)), 0.45);
        let cases = [
            (&ann_seen, Liveness::Scored(0.8), fresh, Some("ann")),
            (&ann_seen, Liveness::Scored(0.79), fresh, None),
            (&ann_seen, Liveness::Off, fresh, Some("ann")),
            (&ann_seen, Liveness::TooSmall, fresh, None),
            (&ann_seen, Liveness::Scored(0.9), old, None),
            (&stranger, Liveness::Off, fresh, None),
            (&Outcome::NoFace, Liveness::Off, fresh, None),
        ];
        for (outcome, liveness, freshness, want) in cases {
            assert_eq!(
                confirming_person(outcome, liveness, 0.8, freshness, now),
                want,
                "{outcome:?} {liveness:?} {freshness:?}"
            );
        }
    }

    #[test]
    fn regression_identify_under_qemu_is_not_stale() {
        // `facegate identify` took 3.7 s per photo under qemu and answered `stale` for a file.
        let now = Instant::now() + Duration::from_secs(10);
        let freshness = Freshness::of_frame(
            now - Duration::from_secs(7),
            Utc::now(),
            None,
            FreshnessRules::FOR_FILES,
        );
        let d = decide(&Outcome::Recognised(ann(0.9)), freshness, now);
        assert_eq!(d.status, Status::Granted);
    }

    #[test]
    fn permission_comes_after_recognition_and_liveness() {
        use crate::permission::Reason;
        let now = Instant::now() + Duration::from_secs(10);
        let fresh = received_ago(now, Duration::from_millis(100));
        let old = received_ago(now, Duration::from_millis(1501));
        let suspended = Access::Denied(Denial {
            reason: Reason::Suspended,
            resumes_at: None,
        });
        let checks = |liveness, access| Checks {
            liveness,
            liveness_threshold: 0.8,
            tally: None,
            access,
        };
        let ann_seen = Outcome::for_face(Some(ann(0.9)), 0.45);
        let stranger = Outcome::for_face(Some(ann(0.3)), 0.45);
        let cases = [
            (
                "live and allowed",
                &ann_seen,
                checks(Liveness::Scored(0.95), Access::Allowed),
                fresh,
                Status::Granted,
            ),
            (
                "live, suspended",
                &ann_seen,
                checks(Liveness::Scored(0.95), suspended),
                fresh,
                Status::NotAllowed,
            ),
            (
                "liveness off, suspended",
                &ann_seen,
                checks(Liveness::Off, suspended),
                fresh,
                Status::NotAllowed,
            ),
            (
                "a spoof of a suspended person is a spoof",
                &ann_seen,
                checks(Liveness::Scored(0.2), suspended),
                fresh,
                Status::Spoof,
            ),
            (
                "too far to judge stays too far",
                &ann_seen,
                checks(Liveness::TooSmall, suspended),
                fresh,
                Status::TooFar,
            ),
            (
                "unknown stays unknown",
                &stranger,
                checks(Liveness::Off, suspended),
                fresh,
                Status::Unknown,
            ),
            (
                "stale stays stale",
                &ann_seen,
                checks(Liveness::Scored(0.95), suspended),
                old,
                Status::Stale,
            ),
        ];
        for (case, outcome, checks, freshness, status) in cases {
            let d = decide_with(outcome, &checks, freshness, now);
            assert_eq!(d.status, status, "{case}");
            assert!(!d.may_open() || status == Status::Granted, "{case}");
            if status == Status::NotAllowed {
                assert_eq!(d.identity.as_deref(), Some("ann"), "{case}: identified");
                assert_eq!(
                    d.denial.map(|d| d.reason),
                    Some(Reason::Suspended),
                    "{case}"
                );
                assert_eq!(d.confirming, None, "{case}");
            } else {
                assert_eq!(d.denial, None, "{case}");
            }
        }
    }
}
