//! Confirmation over several frames: the door opens only once `door.confirm_frames` grants for the same
//! person from the same tablet have arrived within `door.confirm_window_ms`. This is the one piece of
//! recognition state kept across requests, so it is kept small and explicit: one streak per tablet, grants
//! older than the window dropped, any other frame from that tablet wiping its streak, a bounded number
//! of tablets, nothing on disk (a restart forgets everything). It only counts; `decision::decide` decides.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The largest `door.confirm_frames` accepted: at the tablet's ~150 ms per frame, 10 frames is 1.5 s.
pub(crate) const MAX_CONFIRM_FRAMES: u32 = 10;

/// Tablets tracked at once. A door has one or two; more only come from misuse, and forgetting a streak
/// only ever delays an opening.
pub(crate) const MAX_TABLETS: usize = 64;

/// Who is sending frames.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TabletKey {
    /// A paired tablet, by the name its device token proves: its streak follows it from any address.
    Paired(String),
    /// Any other client: its address, refined by the `tablet_id` it sends, if any. Both count, so a
    /// client elsewhere that claims another tablet's id never joins that tablet's streak.
    Address {
        address: IpAddr,
        tablet_id: Option<String>,
    },
}

/// How far the tablet's current streak has got, including the frame just counted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tally {
    /// Grants for this person within the window, this frame included (at most `needed`).
    pub frames: u32,
    pub needed: u32,
    /// The lowest liveness score of those frames (each must pass on its own); `None` when liveness
    /// is off.
    pub liveness_lowest: Option<f32>,
}

impl Tally {
    /// The tally of a single frame when no confirmation is asked for (`door.confirm_frames = 1`).
    pub fn single(liveness: Option<f32>) -> Tally {
        Tally {
            frames: 1,
            needed: 1,
            liveness_lowest: liveness,
        }
    }

    pub fn complete(&self) -> bool {
        self.frames >= self.needed
    }
}

#[derive(Debug)]
struct Streak {
    person: String,
    /// When each grant arrived and its liveness score, oldest first.
    grants: VecDeque<(Instant, Option<f32>)>,
    last_seen: Instant,
}

/// Every tablet's current streak of grants.
#[derive(Debug)]
pub struct Confirmations {
    needed: u32,
    window: Duration,
    streaks: HashMap<TabletKey, Streak>,
}

impl Confirmations {
    pub fn new(needed: u32, window: Duration) -> Confirmations {
        Confirmations {
            needed: needed.clamp(1, MAX_CONFIRM_FRAMES),
            window,
            streaks: HashMap::new(),
        }
    }

    /// Counts a fresh grant for `person` from `tablet` at `now`. A complete tally empties the streak,
    /// so the next opening needs a whole new set of frames.
    pub fn grant(
        &mut self,
        tablet: &TabletKey,
        person: &str,
        liveness: Option<f32>,
        now: Instant,
    ) -> Tally {
        if self.needed == 1 {
            return Tally::single(liveness);
        }
        if !self.streaks.contains_key(tablet) {
            self.make_room(now);
        }
        let streak = self
            .streaks
            .entry(tablet.clone())
            .or_insert_with(|| Streak {
                person: person.to_string(),
                grants: VecDeque::new(),
                last_seen: now,
            });
        if streak.person != person {
            streak.person = person.to_string();
            streak.grants.clear();
        }
        let window = self.window;
        streak
            .grants
            .retain(|(at, _)| now.saturating_duration_since(*at) <= window);
        streak.grants.push_back((now, liveness));
        streak.last_seen = now;
        while streak.grants.len() > self.needed as usize {
            streak.grants.pop_front();
        }
        let tally = Tally {
            frames: streak.grants.len() as u32,
            needed: self.needed,
            liveness_lowest: lowest_liveness(&streak.grants),
        };
        if tally.complete() {
            self.streaks.remove(tablet);
        }
        tally
    }

    /// Any frame from `tablet` that is not a grant (a stranger, no face, a spoof, a stale or bad frame)
    /// ends its streak.
    pub(crate) fn interrupt(&mut self, tablet: &TabletKey) {
        self.streaks.remove(tablet);
    }

    #[cfg(test)]
    /// Tablets with a streak in progress.
    pub(crate) fn tracked(&self) -> usize {
        self.streaks.len()
    }

    /// Drops expired streaks; if the table is still full, the one idle longest.
    fn make_room(&mut self, now: Instant) {
        let window = self.window;
        self.streaks
            .retain(|_, s| now.saturating_duration_since(s.last_seen) <= window);
        if self.streaks.len() >= MAX_TABLETS {
            if let Some(idle) = self
                .streaks
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(key, _)| key.clone())
            {
                self.streaks.remove(&idle);
            }
        }
    }
}

/// The lowest of the scores, `None` if any frame has none (liveness off). A mean would let a frame
/// below the threshold complete a streak of high ones.
fn lowest_liveness(grants: &VecDeque<(Instant, Option<f32>)>) -> Option<f32> {
    grants
        .iter()
        .map(|(_, score)| *score)
        .try_fold(None, |lowest: Option<f32>, score| {
            let score = score?;
            Some(Some(lowest.map_or(score, |lowest| lowest.min(score))))
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(1000);

    fn tablet(last_octet: u8, id: Option<&str>) -> TabletKey {
        TabletKey::Address {
            address: IpAddr::from([192, 168, 1, last_octet]),
            tablet_id: id.map(str::to_string),
        }
    }

    fn ms(start: Instant, offset: u64) -> Instant {
        start + Duration::from_millis(offset)
    }

    /// (tablet, Some(person) for a grant or None for any other frame, ms after the start, liveness)
    /// → the tally expected for grants.
    type Step = (
        u8,
        Option<&'static str>,
        u64,
        Option<f32>,
        Option<(u32, bool)>,
    );

    fn run(needed: u32, steps: &[Step]) {
        let start = Instant::now();
        let mut confirmations = Confirmations::new(needed, WINDOW);
        for (i, (octet, person, at, liveness, want)) in steps.iter().enumerate() {
            let key = tablet(*octet, None);
            match person {
                Some(person) => {
                    let tally = confirmations.grant(&key, person, *liveness, ms(start, *at));
                    assert_eq!(
                        Some((tally.frames, tally.complete())),
                        *want,
                        "step {i}: {steps:?}"
                    );
                }
                None => confirmations.interrupt(&key),
            }
        }
    }

    #[test]
    fn grants_count_only_when_consecutive_recent_and_from_one_tablet() {
        let cases: [(&str, u32, Vec<Step>); 7] = [
            (
                "one frame is enough when one is asked for",
                1,
                vec![(1, Some("ann"), 0, None, Some((1, true)))],
            ),
            (
                "three grants in the window open",
                3,
                vec![
                    (1, Some("ann"), 0, None, Some((1, false))),
                    (1, Some("ann"), 150, None, Some((2, false))),
                    (1, Some("ann"), 300, None, Some((3, true))),
                ],
            ),
            (
                "a grant, then a stranger, then a grant does not open",
                2,
                vec![
                    (1, Some("ann"), 0, None, Some((1, false))),
                    (1, None, 150, None, None),
                    (1, Some("ann"), 300, None, Some((1, false))),
                ],
            ),
            (
                "a grant older than the window never counts",
                2,
                vec![
                    (1, Some("ann"), 0, None, Some((1, false))),
                    (1, Some("ann"), 1001, None, Some((1, false))),
                    (1, Some("ann"), 1100, None, Some((2, true))),
                ],
            ),
            (
                "two tablets never complete each other's confirmation",
                2,
                vec![
                    (1, Some("ann"), 0, None, Some((1, false))),
                    (2, Some("ann"), 100, None, Some((1, false))),
                    (2, None, 150, None, None),
                    (1, Some("ann"), 200, None, Some((2, true))),
                ],
            ),
            (
                "another person restarts the count",
                2,
                vec![
                    (1, Some("ann"), 0, None, Some((1, false))),
                    (1, Some("bob"), 150, None, Some((1, false))),
                    (1, Some("ann"), 300, None, Some((1, false))),
                ],
            ),
            (
                "a completed confirmation starts over",
                2,
                vec![
                    (1, Some("ann"), 0, None, Some((1, false))),
                    (1, Some("ann"), 150, None, Some((2, true))),
                    (1, Some("ann"), 300, None, Some((1, false))),
                ],
            ),
        ];
        for (name, needed, steps) in cases {
            println!("{name}");
            run(needed, &steps);
        }
    }

    #[test]
    fn the_tally_keeps_the_lowest_liveness_of_its_frames() {
        // (scores of three frames in a row) -> the lowest, which the decision holds to the threshold
        let table: [([f32; 3], f32); 3] = [
            ([0.95, 0.95, 0.5], 0.5),
            ([0.1, 0.99, 0.2], 0.1),
            ([0.9, 0.85, 0.97], 0.85),
        ];
        let start = Instant::now();
        let key = tablet(1, None);
        for (scores, lowest) in table {
            let mut confirmations = Confirmations::new(3, WINDOW);
            let mut tally = None;
            for (i, score) in scores.iter().enumerate() {
                tally =
                    Some(confirmations.grant(&key, "ann", Some(*score), ms(start, i as u64 * 150)));
            }
            let tally = tally.unwrap();
            assert!(tally.complete());
            assert_eq!(tally.liveness_lowest, Some(lowest), "{scores:?}");
        }
        // With liveness off there is no score to judge.
        let mut off = Confirmations::new(2, WINDOW);
        off.grant(&key, "ann", None, start);
        assert_eq!(
            off.grant(&key, "ann", None, ms(start, 10)).liveness_lowest,
            None
        );
        assert_eq!(Tally::single(Some(0.9)).liveness_lowest, Some(0.9));
    }

    #[test]
    fn a_tablet_id_separates_tablets_behind_one_address_but_never_joins_addresses() {
        let start = Instant::now();
        let mut confirmations = Confirmations::new(2, WINDOW);
        let front = tablet(1, Some("front"));
        let back = tablet(1, Some("back"));
        let elsewhere_claiming_front = tablet(9, Some("front"));
        assert!(!confirmations.grant(&front, "ann", None, start).complete());
        assert!(!confirmations
            .grant(&back, "ann", None, ms(start, 10))
            .complete());
        assert!(!confirmations
            .grant(&elsewhere_claiming_front, "ann", None, ms(start, 20))
            .complete());
        assert!(confirmations
            .grant(&front, "ann", None, ms(start, 30))
            .complete());
    }

    #[test]
    fn a_paired_tablet_keeps_its_streak_and_no_one_can_claim_it() {
        let start = Instant::now();
        let mut confirmations = Confirmations::new(2, WINDOW);
        let front = TabletKey::Paired("front".into());
        let same_address_claiming_front = tablet(1, Some("front"));
        assert!(!confirmations.grant(&front, "ann", None, start).complete());
        assert!(!confirmations
            .grant(&same_address_claiming_front, "ann", None, ms(start, 10))
            .complete());
        assert!(confirmations
            .grant(&front, "ann", None, ms(start, 20))
            .complete());
    }

    #[test]
    fn a_restart_forgets_everything() {
        let start = Instant::now();
        let key = tablet(1, None);
        let mut before = Confirmations::new(2, WINDOW);
        before.grant(&key, "ann", None, start);
        assert_eq!(before.tracked(), 1);
        drop(before);
        let mut after = Confirmations::new(2, WINDOW);
        assert_eq!(after.tracked(), 0);
        assert!(!after.grant(&key, "ann", None, ms(start, 10)).complete());
    }

    #[test]
    fn the_table_is_bounded_and_expired_streaks_go_first() {
        let start = Instant::now();
        let mut confirmations = Confirmations::new(2, WINDOW);
        for i in 0..MAX_TABLETS + 10 {
            let key = TabletKey::Address {
                address: IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]),
                tablet_id: None,
            };
            confirmations.grant(&key, "ann", None, ms(start, i as u64));
            assert!(confirmations.tracked() <= MAX_TABLETS);
        }
        // Long after the window, a new tablet clears every expired streak.
        confirmations.grant(&tablet(1, None), "ann", None, ms(start, 5_000));
        assert_eq!(confirmations.tracked(), 1);
    }

    #[test]
    fn confirm_frames_is_clamped_to_the_supported_range() {
        let start = Instant::now();
        let mut zero = Confirmations::new(0, WINDOW);
        assert!(zero.grant(&tablet(1, None), "ann", None, start).complete());
        let mut many = Confirmations::new(1000, WINDOW);
        let tally = many.grant(&tablet(1, None), "ann", None, start);
        assert_eq!(tally.needed, MAX_CONFIRM_FRAMES);
    }
}
