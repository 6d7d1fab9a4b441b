//! The decision, pure: what the face matched, how old the frame is → status and whether the relay may move.

use std::time::Duration;

use serde::Serialize;

use crate::gallery::BestMatch;

/// The answer's `status` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Granted,
    Unknown,
    NoFace,
    Stale,
    Busy,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Granted => "granted",
            Status::Unknown => "unknown",
            Status::NoFace => "no_face",
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

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: Status,
    /// Only for a grant.
    pub identity: Option<String>,
    pub score: Option<f32>,
    /// True only for a fresh grant: the one case in which the relay may move.
    pub may_open: bool,
}

/// Decides on a frame `frame_age` old. A decision about a frame older than `max_age` is stale
/// whatever it found, and stale never opens.
pub fn decide(outcome: &Outcome, frame_age: Duration, max_age: Duration) -> Decision {
    let score = outcome.score();
    if frame_age > max_age {
        return Decision {
            status: Status::Stale,
            identity: None,
            score,
            may_open: false,
        };
    }
    match outcome {
        Outcome::NoFace => Decision {
            status: Status::NoFace,
            identity: None,
            score,
            may_open: false,
        },
        Outcome::Unknown { .. } => Decision {
            status: Status::Unknown,
            identity: None,
            score,
            may_open: false,
        },
        Outcome::Recognised(m) => Decision {
            status: Status::Granted,
            identity: Some(m.name.clone()),
            score,
            may_open: true,
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
}
