//! WAO scores for endpoints, and the numgen layout that turns weights into traffic shares.
//!
//! The scores reproduce upstream WAO-LB (waok8s/wao-loadbalancer, `pkg/proxy/nftables/wao.go`):
//! `ScoreNode` turns each endpoint's predicted power increase into whole watts, and
//! `normalizeScores` maps those to scores in `[0, 100]` where the most efficient endpoint gets 100.
//! The layout reproduces how upstream's proxier (`writeServiceToEndpointRules`) turns the scores
//! into `numgen random mod TOTAL vmap { a-b : goto endpoint, ... }`.

use std::fmt;

/// The score of the most efficient endpoint of a group (upstream's `ScoreMax`).
pub const SCORE_MAX: u32 = 100;

/// The weight every endpoint gets when nothing in its group scored above 0. Equal weights are
/// kube-proxy's plain behaviour, which is what upstream falls back to.
pub const FALLBACK_WEIGHT: u32 = 1;

/// Why a set of group offsets does not describe `delta_watts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsError {
    /// No offsets at all; even zero groups need `[0]`.
    Empty,
    /// The first group does not start at the beginning of `delta_watts`.
    FirstNotZero { first: usize },
    /// An offset points past the end of `delta_watts`.
    PastEnd {
        index: usize,
        offset: usize,
        len: usize,
    },
    /// An offset is smaller than the one before it.
    Decreasing {
        index: usize,
        offset: usize,
        previous: usize,
    },
    /// The last group stops short of the end of `delta_watts`.
    LastNotLen { last: usize, len: usize },
}

impl fmt::Display for OffsetsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Empty => write!(
                f,
                "offsets is empty: it needs one entry more than there are groups, starting \
                 with 0 (use [0] for no groups)"
            ),
            Self::FirstNotZero { first } => {
                write!(f, "offsets must start at 0, but offsets[0] = {first}")
            }
            Self::PastEnd { index, offset, len } => write!(
                f,
                "offsets[{index}] = {offset} is past the end of delta_watts (length {len})"
            ),
            Self::Decreasing {
                index,
                offset,
                previous,
            } => write!(
                f,
                "offsets must not decrease, but offsets[{index}] = {offset} is less than \
                 offsets[{}] = {previous}",
                index - 1
            ),
            Self::LastNotLen { last, len } => write!(
                f,
                "offsets must end at the length of delta_watts ({len}), but the last offset \
                 is {last}"
            ),
        }
    }
}

impl std::error::Error for OffsetsError {}

/// Scores endpoints group by group, exactly as upstream WAO-LB does.
///
/// `delta_watts[i]` is endpoint `i`'s predicted power increase (`watts_after - watts_before`).
/// Group `g` is `delta_watts[offsets[g]..offsets[g + 1]]` (one group per service), so `offsets`
/// has one entry more than there are groups, starts at 0, never decreases and ends at
/// `delta_watts.len()`. The result has one score per endpoint, in `[0, 100]`; 0 means "leave the
/// endpoint out".
///
/// Per group:
/// * A delta that is NaN or infinite means the endpoint could not be scored (upstream drops an
///   endpoint whose prediction failed): it scores 0 and takes no part in the minimum.
/// * Otherwise the delta becomes whole watts as Go's `int()` does, truncating toward zero, and a
///   negative result becomes 0 W (so -0.7 and -123 both count as 0 W, the best possible).
/// * Every endpoint gets 1 W added, so none is 0, and `min` is the smallest result.
/// * `score = round(100 * (min / watts))`, with halves rounded away from zero (Go's `math.Round`),
///   clamped to `[0, 100]`. Endpoints with the minimum get 100; one that needs more than about
///   200 times the minimum rounds to 0 and is left out.
/// * If no endpoint scores above 0 (every delta non-finite), every endpoint of the group gets
///   [`FALLBACK_WEIGHT`]: equal shares, as upstream falls back to kube-proxy's plain rule.
/// * An empty group contributes nothing.
///
/// The arithmetic is done in `f64`. Upstream converts to Go `int` and back, but for deltas below
/// 2^63 W that gives bit-identical results: truncation of a finite `f64` is exact, `int + 1`
/// converted to `float64` rounds to the same value as the `f64` addition, and conversion keeps
/// order. At 2^63 W and beyond Go's conversion is platform-specific (amd64 yields the most
/// negative int, which would then count as 0 W and score 100); here such deltas simply stay huge
/// and score near 0, which is what the formula means.
pub fn wao_scores(delta_watts: &[f64], offsets: &[usize]) -> Result<Vec<u32>, OffsetsError> {
    validate_offsets(offsets, delta_watts.len())?;
    let mut scores = vec![0; delta_watts.len()];
    for group in offsets.windows(2) {
        let (start, end) = (group[0], group[1]);
        score_group(&delta_watts[start..end], &mut scores[start..end]);
    }
    Ok(scores)
}

fn validate_offsets(offsets: &[usize], len: usize) -> Result<(), OffsetsError> {
    let (&first, rest) = offsets.split_first().ok_or(OffsetsError::Empty)?;
    if first != 0 {
        return Err(OffsetsError::FirstNotZero { first });
    }
    let mut previous = first;
    for (index, &offset) in rest.iter().enumerate().map(|(i, o)| (i + 1, o)) {
        if offset > len {
            return Err(OffsetsError::PastEnd { index, offset, len });
        }
        if offset < previous {
            return Err(OffsetsError::Decreasing {
                index,
                offset,
                previous,
            });
        }
        previous = offset;
    }
    if previous != len {
        return Err(OffsetsError::LastNotLen {
            last: previous,
            len,
        });
    }
    Ok(())
}

/// Scores one group into `scores` (same length as `delta_watts`); see [`wao_scores`].
fn score_group(delta_watts: &[f64], scores: &mut [u32]) {
    let min_watts = delta_watts
        .iter()
        .filter_map(|&delta| scored_watts(delta))
        .fold(f64::INFINITY, f64::min);
    let mut any_positive = false;
    for (score, &delta) in scores.iter_mut().zip(delta_watts) {
        *score = scored_watts(delta).map_or(0, |watts| score_against(min_watts, watts));
        any_positive |= *score > 0;
    }
    if !any_positive {
        scores.fill(FALLBACK_WEIGHT);
    }
}

/// The watts upstream divides by for one endpoint, or `None` if it cannot be scored.
fn scored_watts(delta_watts: f64) -> Option<f64> {
    if !delta_watts.is_finite() {
        return None;
    }
    // ScoreNode: Go's int() truncates toward zero, and a negative increase counts as 0 W.
    let whole_watts = delta_watts.trunc().max(0.0);
    // normalizeScores: 1 W more for everyone, so that no endpoint is 0 W.
    Some(whole_watts + 1.0)
}

fn score_against(min_watts: f64, watts: f64) -> u32 {
    // Upstream's operation order, 100 * (min / watts); f64::round rounds halves away from zero
    // like Go's math.Round. The ratio is at most 1, so the clamp only guards, as upstream's does.
    let score = (f64::from(SCORE_MAX) * (min_watts / watts)).round();
    score.clamp(0.0, f64::from(SCORE_MAX)) as u32
}

/// Why weights cannot be laid out for `numgen random mod TOTAL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// The weights add up to more than `u32::MAX`, the largest modulus numgen takes.
    TotalOverflow,
    /// No weight is above 0 (or there are no weights), so there is nothing to pick from.
    NoPositiveWeight { endpoints: usize },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TotalOverflow => write!(
                f,
                "the weights add up to more than {}, the largest modulus numgen takes",
                u32::MAX
            ),
            Self::NoPositiveWeight { endpoints: 0 } => write!(
                f,
                "a numgen layout needs at least one weight above 0, but there are no weights"
            ),
            Self::NoPositiveWeight { endpoints } => write!(
                f,
                "a numgen layout needs at least one weight above 0, but all {endpoints} weights \
                 are 0"
            ),
        }
    }
}

impl std::error::Error for LayoutError {}

/// An inclusive range `(first, last)` of numgen values.
pub type NumgenRange = (u32, u32);

/// Where each endpoint's share of `numgen random mod modulus` lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumgenLayout {
    modulus: u32,
    ranges: Vec<Option<NumgenRange>>,
}

/// One rule of the conditional chain the dataplane builds instead of a vmap: take `endpoint` if
/// `numgen random mod remaining < weight`, else fall through to the next rule. `remaining` is the
/// weight of this endpoint and all after it, so every endpoint ends up with `weight / total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainStep {
    pub endpoint: usize,
    pub remaining: u32,
    pub weight: u32,
}

impl ChainStep {
    /// True for the last endpoint with a weight: its condition always holds, so the dataplane
    /// takes it without one.
    pub fn is_unconditional(&self) -> bool {
        self.remaining == self.weight
    }
}

impl NumgenLayout {
    /// The numgen modulus: the total of all weights.
    pub fn modulus(&self) -> u32 {
        self.modulus
    }

    /// Per endpoint, its inclusive range `(a, b)` of numgen values, or `None` for weight 0.
    pub fn ranges(&self) -> &[Option<NumgenRange>] {
        &self.ranges
    }

    /// The conditional chain, one step per endpoint with a weight above 0, in endpoint order.
    pub fn chain(&self) -> impl Iterator<Item = ChainStep> + '_ {
        self.ranges
            .iter()
            .enumerate()
            .filter_map(|(endpoint, range)| {
                range.map(|(start, end)| ChainStep {
                    endpoint,
                    remaining: self.modulus - start,
                    weight: end - start + 1,
                })
            })
    }
}

/// Lays weights out as upstream's proxier does: in endpoint order, each endpoint with a weight
/// above 0 owns the next `weight` values `a..=b` of `numgen random mod modulus`, where `modulus`
/// is the total weight; an endpoint with weight 0 owns nothing (`None`) and is never picked.
///
/// Fails if the weights add up to more than `u32::MAX` (numgen's modulus is 32 bits), or if no
/// weight is above 0, including when there are no weights.
pub fn numgen_layout(weights: &[u32]) -> Result<NumgenLayout, LayoutError> {
    let mut modulus: u32 = 0;
    let mut ranges = Vec::with_capacity(weights.len());
    for &weight in weights {
        if weight == 0 {
            ranges.push(None);
            continue;
        }
        let start = modulus;
        modulus = start
            .checked_add(weight)
            .ok_or(LayoutError::TotalOverflow)?;
        ranges.push(Some((start, modulus - 1)));
    }
    if modulus == 0 {
        return Err(LayoutError::NoPositiveWeight {
            endpoints: weights.len(),
        });
    }
    Ok(NumgenLayout { modulus, ranges })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scores_of(delta_watts: &[f64]) -> Vec<u32> {
        wao_scores(delta_watts, &[0, delta_watts.len()]).unwrap()
    }

    #[test]
    fn upstream_unit_test_vectors() {
        // Upstream's Test_normalizeScores cases, fed through ScoreNode's truncation first.
        assert_eq!(scores_of(&[200.0, 250.0, 300.0]), [100, 80, 67]);
        assert_eq!(scores_of(&[200.0, 200_000_000.0]), [100, 0]);
        assert_eq!(scores_of(&[0.0]), [100]);
        assert_eq!(scores_of(&[1.0]), [100]);
        // Upstream's normalizeScores alone drops -123, but ScoreNode has already made it 0 W.
        assert_eq!(
            scores_of(&[5.0, 2.0, -123.0, 0.0, 5.0, 0.0]),
            [17, 33, 100, 100, 17, 100]
        );
    }

    #[test]
    fn fractions_are_truncated_toward_zero() {
        // 2.9 -> 2 W -> 3; 0.99 -> 0 W -> 1; -0.5 -> 0 W -> 1.
        assert_eq!(scores_of(&[2.9, 0.99, -0.5]), [33, 100, 100]);
    }

    #[test]
    fn halves_round_away_from_zero() {
        // 0 W and 7 W become 1 and 8: 100 * 1/8 = 12.5 -> 13 (Python's round() would say 12).
        assert_eq!(scores_of(&[0.0, 7.0]), [100, 13]);
    }

    #[test]
    fn negative_deltas_count_as_zero_watts() {
        assert_eq!(scores_of(&[-1.0, -1e300, 3.0]), [100, 100, 25]);
        assert_eq!(scores_of(&[-0.0]), [100]);
    }

    #[test]
    fn non_finite_deltas_are_left_out() {
        let nan_inf = [f64::NAN, 9.0, f64::INFINITY, f64::NEG_INFINITY, 4.0];
        assert_eq!(scores_of(&nan_inf), [0, 50, 0, 0, 100]);
    }

    #[test]
    fn group_without_any_score_falls_back_to_equal_weights() {
        assert_eq!(
            scores_of(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY]),
            [1, 1, 1]
        );
        assert_eq!(scores_of(&[f64::NAN]), [1]);
    }

    #[test]
    fn one_endpoint_gets_full_score() {
        for delta in [0.0, 12.5, 1e12, -3.0, f64::MAX] {
            assert_eq!(scores_of(&[delta]), [100], "delta {delta}");
        }
    }

    #[test]
    fn huge_deltas_score_by_the_formula() {
        // 2^63 and above is where Go's int() stops being portable; the formula still applies.
        let two_pow_63 = 9_223_372_036_854_775_808.0;
        assert_eq!(scores_of(&[two_pow_63, two_pow_63 * 2.0]), [100, 50]);
        assert_eq!(scores_of(&[f64::MAX, 1e300, 0.0]), [0, 0, 100]);
        assert_eq!(scores_of(&[f64::MAX, f64::MAX / 4.0]), [25, 100]);
    }

    #[test]
    fn empty_input_and_empty_groups() {
        assert_eq!(wao_scores(&[], &[0]).unwrap(), Vec::<u32>::new());
        assert_eq!(wao_scores(&[], &[0, 0, 0]).unwrap(), Vec::<u32>::new());
        // An empty group between two others changes nothing around it.
        let scores = wao_scores(&[1.0, f64::NAN, 3.0], &[0, 1, 1, 2, 3]).unwrap();
        assert_eq!(scores, [100, 1, 100]);
    }

    #[test]
    fn groups_are_scored_independently() {
        let deltas = [0.0, 3.0, 10.0, 100.0, f64::NAN, f64::NAN];
        assert_eq!(
            wao_scores(&deltas, &[0, 2, 4, 6]).unwrap(),
            [100, 25, 100, 11, 1, 1]
        );
    }

    #[test]
    fn bad_offsets_are_refused() {
        let deltas = [1.0, 2.0, 3.0];
        assert_eq!(wao_scores(&deltas, &[]), Err(OffsetsError::Empty));
        assert_eq!(
            wao_scores(&deltas, &[1, 3]),
            Err(OffsetsError::FirstNotZero { first: 1 })
        );
        assert_eq!(
            wao_scores(&deltas, &[0, 4, 3]),
            Err(OffsetsError::PastEnd {
                index: 1,
                offset: 4,
                len: 3
            })
        );
        assert_eq!(
            wao_scores(&deltas, &[0, 2, 1, 3]),
            Err(OffsetsError::Decreasing {
                index: 2,
                offset: 1,
                previous: 2
            })
        );
        assert_eq!(
            wao_scores(&deltas, &[0, 2]),
            Err(OffsetsError::LastNotLen { last: 2, len: 3 })
        );
        assert_eq!(
            wao_scores(&deltas, &[0]),
            Err(OffsetsError::LastNotLen { last: 0, len: 3 })
        );
        assert_eq!(
            OffsetsError::Decreasing {
                index: 2,
                offset: 1,
                previous: 2
            }
            .to_string(),
            "offsets must not decrease, but offsets[2] = 1 is less than offsets[1] = 2"
        );
    }

    #[test]
    fn layout_matches_upstream_readme_example() {
        // The six endpoints of upstream's README: `numgen random mod 459 vmap { 0-57 : ..., }`.
        let layout = numgen_layout(&[58, 100, 77, 80, 67, 77]).unwrap();
        assert_eq!(layout.modulus(), 459);
        assert_eq!(
            layout.ranges(),
            [
                Some((0, 57)),
                Some((58, 157)),
                Some((158, 234)),
                Some((235, 314)),
                Some((315, 381)),
                Some((382, 458))
            ]
        );
    }

    #[test]
    fn layout_skips_zero_weights() {
        let layout = numgen_layout(&[0, 3, 0, 1, 0]).unwrap();
        assert_eq!(layout.modulus(), 4);
        assert_eq!(
            layout.ranges(),
            [None, Some((0, 2)), None, Some((3, 3)), None]
        );
        let chain: Vec<ChainStep> = layout.chain().collect();
        assert_eq!(
            chain,
            [
                ChainStep {
                    endpoint: 1,
                    remaining: 4,
                    weight: 3
                },
                ChainStep {
                    endpoint: 3,
                    remaining: 1,
                    weight: 1
                },
            ]
        );
        assert!(!chain[0].is_unconditional());
        assert!(chain[1].is_unconditional());
    }

    #[test]
    fn layout_of_one_endpoint_is_unconditional() {
        let layout = numgen_layout(&[1]).unwrap();
        assert_eq!(
            (layout.modulus(), layout.ranges()),
            (1, &[Some((0, 0))][..])
        );
        let steps: Vec<ChainStep> = layout.chain().collect();
        assert_eq!(
            steps,
            [ChainStep {
                endpoint: 0,
                remaining: 1,
                weight: 1
            }]
        );
        assert!(steps[0].is_unconditional());
    }

    #[test]
    fn layout_refuses_no_positive_weight() {
        assert_eq!(
            numgen_layout(&[]),
            Err(LayoutError::NoPositiveWeight { endpoints: 0 })
        );
        assert_eq!(
            numgen_layout(&[0, 0]),
            Err(LayoutError::NoPositiveWeight { endpoints: 2 })
        );
        assert_eq!(
            LayoutError::NoPositiveWeight { endpoints: 2 }.to_string(),
            "a numgen layout needs at least one weight above 0, but all 2 weights are 0"
        );
    }

    #[test]
    fn layout_total_must_fit_numgen() {
        let full = numgen_layout(&[u32::MAX - 1, 1]).unwrap();
        assert_eq!(full.modulus(), u32::MAX);
        assert_eq!(full.ranges()[1], Some((u32::MAX - 1, u32::MAX - 1)));
        assert_eq!(
            numgen_layout(&[u32::MAX, 1]),
            Err(LayoutError::TotalOverflow)
        );
        assert_eq!(
            numgen_layout(&[u32::MAX / 2 + 1, 0, u32::MAX / 2 + 1]),
            Err(LayoutError::TotalOverflow)
        );
    }

    /// Deltas as they come: mostly plausible watts, some whole numbers (ties), and the odd
    /// non-finite or extreme value.
    fn delta() -> impl Strategy<Value = f64> {
        prop_oneof![
            6 => -50.0..5_000.0f64,
            2 => (0u32..200).prop_map(f64::from),
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(f64::NEG_INFINITY),
            1 => any::<f64>(),
        ]
    }

    fn groups() -> impl Strategy<Value = Vec<Vec<f64>>> {
        prop::collection::vec(prop::collection::vec(delta(), 0..12), 0..8)
    }

    fn flatten(groups: &[Vec<f64>]) -> (Vec<f64>, Vec<usize>) {
        let mut offsets = vec![0];
        for group in groups {
            offsets.push(offsets.last().unwrap() + group.len());
        }
        (groups.concat(), offsets)
    }

    /// An exact fraction, kept reduced so products of a few steps stay small.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Fraction {
        numerator: u128,
        denominator: u128,
    }

    impl Fraction {
        fn new(numerator: u128, denominator: u128) -> Self {
            let divisor = gcd(numerator, denominator);
            Self {
                numerator: numerator / divisor,
                denominator: denominator / divisor,
            }
        }

        fn times(self, other: Self) -> Self {
            Self::new(
                self.numerator * other.numerator,
                self.denominator * other.denominator,
            )
        }
    }

    fn gcd(mut a: u128, mut b: u128) -> u128 {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    }

    proptest! {
        #[test]
        fn scores_stay_in_range(groups in groups()) {
            let (deltas, offsets) = flatten(&groups);
            let scores = wao_scores(&deltas, &offsets).unwrap();
            prop_assert_eq!(scores.len(), deltas.len());
            prop_assert!(scores.iter().all(|&score| score <= SCORE_MAX));
        }

        #[test]
        fn lowest_delta_gets_full_score(group in prop::collection::vec(delta(), 1..20)) {
            let scores = scores_of(&group);
            let watts: Vec<Option<f64>> = group.iter().map(|&d| scored_watts(d)).collect();
            let lowest = watts.iter().flatten().copied().fold(f64::INFINITY, f64::min);
            if lowest.is_finite() {
                for (score, watts) in scores.iter().zip(&watts) {
                    match watts {
                        Some(w) if *w == lowest => prop_assert_eq!(*score, SCORE_MAX),
                        Some(_) => prop_assert!(*score <= SCORE_MAX),
                        None => prop_assert_eq!(*score, 0),
                    }
                }
            } else {
                prop_assert!(scores.iter().all(|&score| score == FALLBACK_WEIGHT));
            }
        }

        #[test]
        fn fewer_watts_never_score_lower(group in prop::collection::vec(delta(), 1..20)) {
            let scores = scores_of(&group);
            for (i, &a) in group.iter().enumerate() {
                for (j, &b) in group.iter().enumerate() {
                    if let (Some(wa), Some(wb)) = (scored_watts(a), scored_watts(b)) {
                        if wa <= wb {
                            prop_assert!(scores[i] >= scores[j]);
                        }
                    }
                }
            }
        }

        #[test]
        fn groups_do_not_influence_each_other(groups in groups()) {
            let (deltas, offsets) = flatten(&groups);
            let together = wao_scores(&deltas, &offsets).unwrap();
            let apart: Vec<u32> = groups.iter().flat_map(|group| scores_of(group)).collect();
            prop_assert_eq!(together, apart);
        }

        #[test]
        fn layout_ranges_tile_the_modulus(weights in prop::collection::vec(0u32..1_000, 0..20)) {
            let total: u32 = weights.iter().sum();
            let Ok(layout) = numgen_layout(&weights) else {
                prop_assert_eq!(total, 0);
                return Ok(());
            };
            prop_assert_eq!(layout.modulus(), total);
            let mut next = 0;
            for (range, &weight) in layout.ranges().iter().zip(&weights) {
                match range {
                    None => prop_assert_eq!(weight, 0),
                    Some((start, end)) => {
                        // Contiguous (so disjoint) and exactly `weight` wide.
                        prop_assert_eq!(*start, next);
                        prop_assert_eq!(end - start + 1, weight);
                        next = end + 1;
                    }
                }
            }
            prop_assert_eq!(next, layout.modulus());
        }

        #[test]
        fn layout_overflow_is_detected(weights in prop::collection::vec(any::<u32>(), 1..6)) {
            let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            match numgen_layout(&weights) {
                Ok(layout) => prop_assert_eq!(u64::from(layout.modulus()), total),
                Err(LayoutError::TotalOverflow) => prop_assert!(total > u64::from(u32::MAX)),
                Err(LayoutError::NoPositiveWeight { .. }) => prop_assert_eq!(total, 0),
            }
        }

        #[test]
        fn chain_picks_each_endpoint_with_its_share(
            weights in prop::collection::vec(prop_oneof![1 => Just(0u32), 4 => 1u32..100_000], 1..16)
        ) {
            let Ok(layout) = numgen_layout(&weights) else { return Ok(()) };
            let total = u128::from(layout.modulus());
            // Probability of having fallen through every step so far.
            let mut reached = Fraction::new(1, 1);
            let mut steps = 0;
            for step in layout.chain() {
                let remaining = u128::from(step.remaining);
                let weight = u128::from(step.weight);
                let picked = reached.times(Fraction::new(weight, remaining));
                prop_assert_eq!(picked, Fraction::new(u128::from(weights[step.endpoint]), total));
                reached = reached.times(Fraction::new(remaining - weight, remaining));
                steps += 1;
            }
            // Every packet is taken by some step: the last one is unconditional.
            prop_assert_eq!(reached.numerator, 0);
            prop_assert_eq!(steps, weights.iter().filter(|&&w| w > 0).count());
            prop_assert!(layout.chain().last().unwrap().is_unconditional());
            prop_assert_eq!(layout.chain().filter(ChainStep::is_unconditional).count(), 1);
        }
    }
}
