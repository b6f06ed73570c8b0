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

/// The environment variable that names a file to which [`compare`] appends one JSON line per
/// comparison: how a run on a machine of its own (`scripts/gpu-check.sh run`) reports the worst
/// error of every check, not only pass or fail.
pub const PARITY_LOG_ENV: &str = "RWKV_PARITY_LOG";

/// How far `got` is from `expected`, element-wise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Worst {
    /// The largest `|got - expected|` (NaN where any value is NaN).
    pub abs: f32,
    /// The largest `|got - expected| / (atol + rtol * |expected|)`: at most 1 within tolerance.
    pub of_tolerance: f32,
}

/// The worst disagreement between two outputs of equal length.
pub fn worst(got: &[f32], expected: &[f32], atol: f32, rtol: f32) -> Worst {
    let mut out = Worst {
        abs: 0.0,
        of_tolerance: 0.0,
    };
    for (&g, &e) in got.iter().zip(expected) {
        let d = (g - e).abs();
        if d.is_nan() {
            return Worst {
                abs: f32::NAN,
                of_tolerance: f32::NAN,
            };
        }
        out.abs = out.abs.max(d);
        out.of_tolerance = out.of_tolerance.max(d / (atol + rtol * e.abs()));
    }
    out
}

/// [`first_mismatch`], and where [`PARITY_LOG_ENV`] names a file, one JSON line appended to it:
/// `{"check": what, "len": n, "max_abs": .., "of_tolerance": .., "ok": ..}`.
///
/// # Panics
/// When the log cannot be written (a test helper: the run must not silently lose its report).
pub fn compare(
    got: &[f32],
    expected: &[f32],
    atol: f32,
    rtol: f32,
    what: &str,
) -> Option<Mismatch> {
    let mismatch = first_mismatch(got, expected, atol, rtol);
    if let Some(path) = std::env::var_os(PARITY_LOG_ENV) {
        use std::io::Write;
        let w = worst(got, expected, atol, rtol);
        // NaN is not JSON: written as null.
        let num = |x: f32| match x.is_finite() {
            true => format!("{x:e}"),
            false => "null".to_string(),
        };
        let line = format!(
            "{{\"check\": {}, \"len\": {}, \"max_abs\": {}, \"of_tolerance\": {}, \"ok\": {}}}\n",
            serde_json::Value::String(what.to_string()),
            got.len(),
            num(w.abs),
            num(w.of_tolerance),
            mismatch.is_none()
        );
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| panic!("{}: {e}", std::path::Path::new(&path).display()));
    }
    mismatch
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

    #[test]
    fn the_worst_error_is_measured_against_the_tolerance() {
        let w = worst(&[1.0, 2.0, 10.5], &[1.0, 2.5, 10.0], 0.5, 0.0);
        assert_eq!((w.abs, w.of_tolerance), (0.5, 1.0));
        let w = worst(&[0.0, 12.0], &[0.0, 10.0], 0.0, 0.1);
        assert!((w.of_tolerance - 2.0).abs() < 1e-6, "{w:?}");
        assert!(worst(&[f32::NAN], &[0.0], 1.0, 1.0).abs.is_nan());
    }
}
