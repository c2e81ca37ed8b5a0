//! Summaries of repeated measurements and the ratios the report is about.

/// The minimum and median of a set of runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// The fastest (smallest) run.
    pub min: f64,
    /// The middle run; the mean of the two middle runs for an even count.
    pub median: f64,
}

impl Summary {
    /// The summary of `values`, or `None` when there are none (or any is
    /// NaN, which no measurement produces).
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        };
        Some(Summary {
            min: sorted[0],
            median,
        })
    }
}

/// kiln's median over the faster peer's median, with that peer's index in
/// `peers`; `None` when kiln or every peer has no result. A peer with a zero
/// median cannot be the denominator.
pub fn ratio_to_fastest(kiln: Option<Summary>, peers: &[Option<Summary>]) -> Option<(f64, usize)> {
    let kiln = kiln?;
    let (index, fastest) = peers
        .iter()
        .enumerate()
        .filter_map(|(i, peer)| peer.map(|p| (i, p.median)))
        .filter(|(_, median)| *median > 0.0)
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    Some((kiln.median / fastest, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(
            Summary::of(&[3.0, 1.0, 2.0]),
            Some(Summary {
                min: 1.0,
                median: 2.0
            })
        );
        assert_eq!(
            Summary::of(&[4.0, 1.0, 3.0, 2.0]),
            Some(Summary {
                min: 1.0,
                median: 2.5
            })
        );
        assert_eq!(
            Summary::of(&[7.5]),
            Some(Summary {
                min: 7.5,
                median: 7.5
            })
        );
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn ratio_uses_the_faster_peer_that_has_a_result() {
        let s = |median| {
            Some(Summary {
                min: median,
                median,
            })
        };
        assert_eq!(ratio_to_fastest(s(2.0), &[s(8.0), s(4.0)]), Some((0.5, 1)));
        assert_eq!(ratio_to_fastest(s(3.0), &[s(2.0), None]), Some((1.5, 0)));
        assert_eq!(
            ratio_to_fastest(s(3.0), &[None, s(0.0), s(6.0)]),
            Some((0.5, 2))
        );
        assert_eq!(ratio_to_fastest(None, &[s(1.0)]), None);
        assert_eq!(ratio_to_fastest(s(1.0), &[None, None]), None);
    }
}
