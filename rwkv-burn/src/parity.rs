//! Comparing outputs with reference values within a tolerance, as the parity tests do.

/// The first element where two outputs disagree.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// Flat index.
    pub index: usize,
    /// Our value.
    pub got: f32,
    /// The reference value.
    pub expected: f32,
}

/// The first index where `|got - expected| > atol + rtol * |expected|` (NaN never matches),
/// or `None` when everything agrees. Lengths must be equal.
pub fn first_mismatch(got: &[f32], expected: &[f32], atol: f32, rtol: f32) -> Option<Mismatch> {
    assert_eq!(
        got.len(),
        expected.len(),
        "compared outputs differ in length"
    );
    got.iter()
        .zip(expected)
        .enumerate()
        .find_map(|(index, (&g, &e))| {
            let within = (g - e).abs() <= atol + rtol * e.abs();
            (!within).then_some(Mismatch {
                index,
                got: g,
                expected: e,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_disagreement_and_nan() {
        assert_eq!(
            first_mismatch(&[1.0, 2.0], &[1.0, 2.00001], 1e-4, 0.0),
            None
        );
        let m = first_mismatch(&[1.0, 2.0, 9.0], &[1.0, 2.5, 9.5], 1e-4, 0.0).unwrap();
        assert_eq!(m.index, 1);
        assert!(first_mismatch(&[f32::NAN], &[0.0], 1.0, 1.0).is_some());
    }
}
