//! The decision, pure: what the face matched, whether it looked live, how far the tablet's confirmation
//! has got, how old the frame is → status and whether the relay may move.

use std::time::Duration;

use serde::Serialize;

use crate::confirmation::Tally;
use crate::gallery::BestMatch;
use crate::vision::LivenessReading;

/// The answer's `status` field.
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
    Busy,
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
            Status::Busy => "busy",
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
    pub fn from_reading(reading: Option<&LivenessReading>) -> Liveness {
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

/// Everything beyond recognition that a decision weighs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Checks {
    pub liveness: Liveness,
    pub liveness_threshold: f32,
    /// The tablet's confirmation so far (`confirmation::Confirmations::grant`), for a frame that counts
    /// towards it; `None` decides on this frame alone.
    pub tally: Option<Tally>,
}

impl Checks {
    /// Recognition alone: liveness off, one frame opens.
    pub const NONE: Checks = Checks {
        liveness: Liveness::Off,
        liveness_threshold: 0.0,
        tally: None,
    };
}

/// The liveness a decision was made on, for the answer and the records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LivenessVerdict {
    /// This frame's score; `None` when the face was too small to judge.
    pub score: Option<f32>,
    /// With `door.confirm_frames` > 1, the mean over the confirming frames, once they are all in.
    pub mean: Option<f32>,
    pub threshold: f32,
}

/// As answers show it: `{"score": 0.9731, "threshold": 0.8}`, plus `"mean"` when several frames counted.
impl Serialize for LivenessVerdict {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("score", &self.score.map(round_score))?;
        if let Some(mean) = self.mean {
            map.serialize_entry("mean", &round_score(mean))?;
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
    /// True only for a fresh, live, confirmed grant: the one case in which the relay may move.
    pub may_open: bool,
    /// A grant still waiting for more frames: (grants so far, grants needed). The door stays locked.
    pub confirming: Option<(u32, u32)>,
    /// Only where liveness ran (a recognised face with liveness on).
    pub liveness: Option<LivenessVerdict>,
}

/// Decides on a frame `frame_age` old by recognition alone (liveness off, one frame opens).
pub fn decide(outcome: &Outcome, frame_age: Duration, max_age: Duration) -> Decision {
    decide_with(outcome, &Checks::NONE, frame_age, max_age)
}

/// The person a frame counts towards in the tablet's confirmation: a fresh recognised face that liveness
/// could judge. Any other frame interrupts the tablet's streak.
pub fn confirming_person(
    outcome: &Outcome,
    liveness: Liveness,
    frame_age: Duration,
    max_age: Duration,
) -> Option<&str> {
    match outcome {
        Outcome::Recognised(m) if frame_age <= max_age && liveness != Liveness::TooSmall => {
            Some(&m.name)
        }
        _ => None,
    }
}

/// Decides on a frame `frame_age` old. A decision about a frame older than `max_age` is stale whatever it
/// found, and stale never opens. A recognised face opens only when liveness (if on) passes, over the mean
/// of the confirming frames when several are asked for, and once the confirmation is complete.
pub fn decide_with(
    outcome: &Outcome,
    checks: &Checks,
    frame_age: Duration,
    max_age: Duration,
) -> Decision {
    let refused = |status| Decision {
        status,
        identity: None,
        score: outcome.score(),
        may_open: false,
        confirming: None,
        liveness: None,
    };
    if frame_age > max_age {
        return refused(Status::Stale);
    }
    let m = match outcome {
        Outcome::NoFace => return refused(Status::NoFace),
        Outcome::Unknown { .. } => return refused(Status::Unknown),
        Outcome::Recognised(m) => m,
    };
    let verdict = |mean| LivenessVerdict {
        score: checks.liveness.score(),
        mean,
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
        _ if tally.needed > 1 && tally.complete() => Some(verdict(tally.liveness_mean)),
        _ => Some(verdict(None)),
    };
    let granted = Decision {
        status: Status::Granted,
        identity: Some(m.name.clone()),
        score: Some(m.score),
        may_open: false,
        confirming: None,
        liveness,
    };
    if !tally.complete() {
        return Decision {
            confirming: Some((tally.frames, tally.needed)),
            ..granted
        };
    }
    match (checks.liveness, tally.liveness_mean) {
        (Liveness::Off, _) => Decision {
            may_open: true,
            ..granted
        },
        (_, Some(score)) if score >= checks.liveness_threshold => Decision {
            may_open: true,
            ..granted
        },
        _ => Decision {
            liveness,
            ..refused(Status::Spoof)
        },
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

    #[test]
    fn only_a_fresh_match_above_threshold_may_open() {
        let max = Duration::from_millis(1500);
        let fresh = Duration::from_millis(100);
        let old = Duration::from_millis(1501);
        let cases = [
            (
                Outcome::for_face(Some(ann(0.9)), 0.45),
                fresh,
                Status::Granted,
                true,
            ),
            (
                Outcome::for_face(Some(ann(0.45)), 0.45),
                fresh,
                Status::Granted,
                true,
            ),
            (
                Outcome::for_face(Some(ann(0.449)), 0.45),
                fresh,
                Status::Unknown,
                false,
            ),
            (Outcome::for_face(None, 0.45), fresh, Status::Unknown, false),
            (Outcome::NoFace, fresh, Status::NoFace, false),
            (
                Outcome::for_face(Some(ann(0.9)), 0.45),
                old,
                Status::Stale,
                false,
            ),
            (
                Outcome::for_face(Some(ann(0.9)), 0.45),
                max,
                Status::Granted,
                true,
            ),
            (Outcome::NoFace, old, Status::Stale, false),
        ];
        for (outcome, age, status, may_open) in cases {
            let d = decide(&outcome, age, max);
            assert_eq!(
                (d.status, d.may_open),
                (status, may_open),
                "{outcome:?} at {age:?}"
            );
            assert_eq!(
                d.identity.is_some(),
                status == Status::Granted,
                "identity only on a grant"
            );
        }
    }

    #[test]
    fn unknown_never_names_the_nearest_person() {
        let d = decide(
            &Outcome::for_face(Some(ann(0.3)), 0.45),
            Duration::ZERO,
            Duration::from_secs(1),
        );
        assert_eq!(d.identity, None);
        assert_eq!(d.score, Some(0.3));
    }

    #[test]
    fn liveness_and_confirmation_gate_the_grant() {
        let max = Duration::from_millis(1500);
        let fresh = Duration::from_millis(100);
        let old = Duration::from_millis(1501);
        let ann_seen = Outcome::for_face(Some(ann(0.9)), 0.45);
        let live = |score| Checks {
            liveness: Liveness::Scored(score),
            liveness_threshold: 0.8,
            tally: None,
        };
        let tally = |frames, needed, mean| Tally {
            frames,
            needed,
            liveness_mean: mean,
        };
        let with_tally = |checks: Checks, t| Checks {
            tally: Some(t),
            ..checks
        };
        let too_small = Checks {
            liveness: Liveness::TooSmall,
            ..live(0.0)
        };
        // (case, outcome, checks, age) -> (status, may_open, confirming)
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
                "strangers are unknown, liveness or not",
                &Outcome::for_face(Some(ann(0.3)), 0.45),
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
                "a low frame inside a confirmation only counts in the mean",
                &ann_seen,
                with_tally(live(0.3), tally(2, 3, Some(0.6))),
                fresh,
                Status::Granted,
                false,
                Some((2, 3)),
            ),
            (
                "third frame, mean passes",
                &ann_seen,
                with_tally(live(0.7), tally(3, 3, Some(0.85))),
                fresh,
                Status::Granted,
                true,
                None,
            ),
            (
                "third frame is the lucky one, mean fails",
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
        for (case, outcome, checks, age, status, may_open, confirming) in cases {
            let d = decide_with(outcome, &checks, age, max);
            assert_eq!(
                (d.status, d.may_open, d.confirming),
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
            mean: None,
            threshold: 0.8,
        };
        assert_eq!(
            serde_json::to_string(&verdict).unwrap(),
            r#"{"score":0.9731,"threshold":0.8}"#
        );
        let too_small = LivenessVerdict {
            score: None,
            mean: Some(0.5),
            ..verdict
        };
        assert_eq!(
            serde_json::to_string(&too_small).unwrap(),
            r#"{"score":null,"mean":0.5,"threshold":0.8}"#
        );
    }

    #[test]
    fn only_fresh_recognised_judgeable_frames_count_towards_confirmation() {
        let max = Duration::from_millis(1500);
        let fresh = Duration::from_millis(100);
        let ann_seen = Outcome::for_face(Some(ann(0.9)), 0.45);
        let cases = [
            (&ann_seen, Liveness::Scored(0.2), fresh, Some("ann")),
            (&ann_seen, Liveness::Off, fresh, Some("ann")),
            (&ann_seen, Liveness::TooSmall, fresh, None),
            (
                &ann_seen,
                Liveness::Scored(0.9),
                Duration::from_secs(2),
                None,
            ),
            (
                &Outcome::for_face(Some(ann(0.3)), 0.45),
                Liveness::Off,
                fresh,
                None,
            ),
            (&Outcome::NoFace, Liveness::Off, fresh, None),
        ];
        for (outcome, liveness, age, want) in cases {
            assert_eq!(
                confirming_person(outcome, liveness, age, max),
                want,
                "{outcome:?} {liveness:?} {age:?}"
            );
        }
    }
}
