//! `rwkv logits` against the fixtures, through the real binary, on every compiled device.

use rwkv_burn::DeviceSpec;
use rwkv_burn::safetensors_io::{NamedTensor, read};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    std::env::var_os("RWKV_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
}

fn rwkv(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rwkv"))
        .args(args)
        .output()
        .expect("run rwkv")
}

fn get(tensors: &[NamedTensor], name: &str) -> Vec<f32> {
    tensors
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
        .data
        .clone()
        .try_to_vec::<f32>()
        .unwrap()
}

fn assert_matches(got: &[f32], exp: &[f32], what: &str) {
    if let Some(m) = rwkv_burn::parity::first_mismatch(got, exp, 1e-4, 1e-4) {
        panic!(
            "{what}: element {} is {} but should be {}",
            m.index, m.got, m.expected
        );
    }
}

fn run_to_file(
    model: &Path,
    tokens: &str,
    mode: &[&str],
    device: &str,
    out: &Path,
) -> Vec<NamedTensor> {
    let mut args = vec![
        "logits",
        "--model",
        model.to_str().unwrap(),
        "--tokens",
        tokens,
        "--device",
        device,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(mode);
    let output = rwkv(&args);
    assert!(
        output.status.success(),
        "rwkv {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    read(out).unwrap()
}

fn ids(expected: &[NamedTensor], name: &str) -> String {
    let t = expected.iter().find(|t| t.name == name).unwrap();
    let ids = t.data.clone().try_to_vec::<i64>().unwrap();
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn rwkv4_in_all_three_modes() {
    check_all_modes("rwkv4", "weights.pth");
}

#[test]
fn rwkv5_in_all_three_modes() {
    check_all_modes("rwkv5", "weights.safetensors");
}

#[test]
fn rwkv6_in_all_three_modes() {
    check_all_modes("rwkv6", "weights.pth");
}

#[test]
fn rwkv7_in_all_three_modes() {
    check_all_modes("rwkv7", "weights.safetensors");
}

fn check_all_modes(version_dir: &str, weights: &str) {
    let dir = fixtures().join(version_dir);
    let expected = read(&dir.join("expected.safetensors")).unwrap();
    let tokens = ids(&expected, "tokens");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let chunks = meta["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let tmp = tempfile::tempdir().unwrap();
    for device in DeviceSpec::available() {
        let out = tmp.path().join(format!("{device}.safetensors"));
        let modes = [
            (vec![], "logits_full"),
            (vec!["--step"], "logits_step"),
            (vec!["--chunks", chunks.as_str()], "logits_chunked"),
        ];
        // Every mode through the binary on the CPU devices; wgpu and vulkan run the full
        // sequence here, as every `rwkv` process compiles its GPU kernels anew (about 12 s each
        // on lavapipe). Their parity in every mode is the library's fixture test.
        let modes = match device {
            DeviceSpec::Wgpu | DeviceSpec::Vulkan => &modes[..1],
            _ => &modes[..],
        };
        let device = device.name();
        for (mode, key) in modes {
            let got = run_to_file(&dir.join(weights), &tokens, mode, device, &out);
            assert_matches(
                &get(&got, "logits"),
                &get(&expected, key),
                &format!("{device} {key}"),
            );
            let state_names: Vec<_> = expected
                .iter()
                .filter(|t| t.name.starts_with("state."))
                .collect();
            let got_states = got.iter().filter(|t| t.name.starts_with("state.")).count();
            assert_eq!(
                got_states,
                state_names.len(),
                "{device} {key}: state tensors"
            );
            for t in state_names {
                assert_matches(
                    &get(&got, &t.name),
                    &get(&expected, &t.name),
                    &format!("{device} {key} {}", t.name),
                );
            }
        }
    }
}

#[test]
fn hugging_face_folder_writes_official_state_names() {
    let dir = fixtures().join("hf_rwkv4");
    let expected = read(&dir.join("expected.safetensors")).unwrap();
    let tokens = ids(&expected, "input_ids");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("hf.safetensors");
    let got = run_to_file(&dir, &tokens, &[], "flex", &out);
    assert_matches(&get(&got, "logits"), &get(&expected, "logits"), "hf logits");
    // transformers' state.1 is att_x as [hidden, layer].
    let hf_att_x = get(&expected, "state.1");
    let layer1: Vec<f32> = (0..64).map(|c| hf_att_x[c * 2 + 1]).collect();
    assert_matches(&get(&got, "state.1.att_x"), &layer1, "hf state.1.att_x");
}

#[test]
fn bad_requests_fail_with_a_message() {
    let model = fixtures().join("rwkv4/weights.pth");
    let model = model.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.safetensors");
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--tokens", "1,999"], "out of range"),
        (&["--tokens", "1,2,3", "--chunks", "1,1"], "add up to 2"),
        (&["--tokens", "1,x"], "invalid"),
        (&["--tokens", "1", "--device", "quantum"], "unknown device"),
        (
            &["--tokens", "1", "--step", "--chunks", "1"],
            "cannot be used with",
        ),
    ];
    for (extra, message) in cases {
        let mut args = vec!["logits", "--model", model, "--out", out];
        args.extend_from_slice(extra);
        let output = rwkv(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // A device this machine cannot run (no eighth CUDA GPU anywhere we test) is refused when
    // the flags are read, by name; a build without libtorch says the feature is missing.
    let args = ["logits", "--model", model, "--out", out, "--tokens", "1"];
    let output = rwkv(&[&args[..], &["--device", "libtorch-cuda:7"]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("device 'libtorch-cuda:7' cannot run on this machine: libtorch sees")
            || stderr.contains("not compiled into this build"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let output = rwkv(&[
        "logits",
        "--model",
        "/nonexistent.pth",
        "--tokens",
        "1",
        "--out",
        out,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent.pth"), "{stderr}");
}
