//! `rwkv-train grad` writes the loss and every gradient under official names.

use rwkv_burn::safetensors_io::read;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn grad_writes_loss_and_every_official_gradient() {
    let fixtures = std::env::var_os("RWKV_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.safetensors");
    let model = fixtures.join("rwkv7/weights.pth");
    let batch = fixtures.join("rwkv7_train/expected.safetensors");
    let status = Command::new(env!("CARGO_BIN_EXE_rwkv-train"))
        .args([
            "grad",
            "--model",
            model.to_str().unwrap(),
            "--batch",
            batch.to_str().unwrap(),
        ])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let got = read(&out).unwrap();
    let expected = read(&batch).unwrap();
    let want: Vec<_> = expected
        .iter()
        .filter(|t| t.name.starts_with("grad."))
        .collect();
    for w in &want {
        let g = got
            .iter()
            .find(|t| t.name == w.name)
            .unwrap_or_else(|| panic!("no {}", w.name));
        assert_eq!(g.data.shape(), w.data.shape(), "{}", w.name);
    }
    assert_eq!(got.len(), want.len() + 1);
    let loss = got
        .iter()
        .find(|t| t.name == "loss")
        .unwrap()
        .data
        .clone()
        .try_to_vec::<f32>()
        .unwrap()[0];
    assert!((loss - 6.666486).abs() < 1e-3, "{loss}");
}
