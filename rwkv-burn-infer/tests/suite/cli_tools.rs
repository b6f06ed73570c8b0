//! The `rwkv` subcommands end to end through the binary.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn fixtures() -> PathBuf {
    std::env::var_os("RWKV_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
}

fn rwkv(args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rwkv"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rwkv");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "rwkv {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn model(version: &str) -> String {
    fixtures()
        .join(version)
        .join("weights.pth")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn generate_is_repeatable_and_saves_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.safetensors");
    let m = model("rwkv7");
    let args = |out: &str| {
        vec![
            "generate".to_string(),
            "--model".into(),
            m.clone(),
            "--prompt".into(),
            "Hello".into(),
            "--max-tokens".into(),
            "12".into(),
            "--seed".into(),
            "3".into(),
            "--state-out".into(),
            out.into(),
        ]
    };
    let a: Vec<String> = args(state.to_str().unwrap());
    let first = rwkv(&a.iter().map(String::as_str).collect::<Vec<_>>(), None);
    let second = rwkv(&a.iter().map(String::as_str).collect::<Vec<_>>(), None);
    assert_eq!(first.stdout, second.stdout);
    assert!(first.stdout.len() > 1);
    assert!(state.is_file());
    // Continuing from the saved state works too.
    let resumed = rwkv(
        &[
            "generate",
            "--model",
            &m,
            "--prompt",
            " more",
            "--max-tokens",
            "4",
            "--state-in",
            state.to_str().unwrap(),
        ],
        None,
    );
    assert!(!resumed.stdout.is_empty());
}

#[test]
fn chat_keeps_talking_across_turns() {
    let out = rwkv(
        &[
            "chat",
            "--model",
            &model("rwkv4"),
            "--max-tokens",
            "8",
            "--temperature",
            "0",
        ],
        Some(b"hello\nhow are you\n"),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("Assistant:").count(), 2, "{text}");
}

#[test]
fn tokenize_and_detokenize_round_trip_world_text() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let text = "User: 你好 world 😀\n\nAssistant:";
    std::fs::write(&input, text).unwrap();
    let ids = rwkv(
        &[
            "tokenize",
            "--vocab",
            "world",
            "--input",
            input.to_str().unwrap(),
        ],
        None,
    );
    let ids: Vec<u32> = serde_json::from_slice(&ids.stdout).unwrap();
    assert!(ids.len() < text.len());
    let joined = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let back = rwkv(&["detokenize", "--vocab", "world", "--ids", &joined], None);
    assert_eq!(back.stdout, text.as_bytes());
}

#[test]
fn info_eval_and_bench_report() {
    let info = rwkv(&["info", "--model", &model("rwkv6")], None);
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("RWKV-6") && info.contains("parameters"),
        "{info}"
    );

    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(
        &text,
        "The quick brown fox jumps over the lazy dog. ".repeat(20),
    )
    .unwrap();
    let eval = rwkv(
        &[
            "eval",
            "--model",
            &model("rwkv5"),
            "--input",
            text.to_str().unwrap(),
            "--chunk",
            "64",
        ],
        None,
    );
    assert!(String::from_utf8_lossy(&eval.stdout).contains("bits per byte"));

    let bench = rwkv(
        &[
            "bench",
            "--model",
            &model("rwkv4"),
            "--prefill",
            "16",
            "--decode",
            "4",
            "--batch",
            "2",
            "--json",
            "--threads",
            "1",
        ],
        None,
    );
    let value: serde_json::Value = serde_json::from_slice(&bench.stdout).unwrap();
    for key in [
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "peak_rss_bytes",
    ] {
        assert!(value[key].as_f64().unwrap() > 0.0, "{key}: {value}");
    }
    assert_eq!(value["threads"], 1, "{value}");

    let zero = Command::new(env!("CARGO_BIN_EXE_rwkv"))
        .args(["info", "--model", &model("rwkv4"), "--threads", "0"])
        .output()
        .unwrap();
    assert!(!zero.status.success());
    assert!(String::from_utf8_lossy(&zero.stderr).contains("--threads must be at least 1"));
}

#[test]
fn the_embedded_model_generates_without_any_file() {
    let args = [
        "generate",
        "--prompt",
        "In the beginning",
        "--max-tokens",
        "40",
        "--seed",
        "5",
    ];
    let first = rwkv(&args, None);
    let second = rwkv(&args, None);
    assert_eq!(first.stdout, second.stdout);
    let text = String::from_utf8_lossy(&first.stdout);
    // Trained on English verses: mostly letters and spaces, not byte noise.
    let letters = text
        .chars()
        .filter(|c| c.is_ascii_alphabetic() || *c == ' ')
        .count();
    assert!(letters * 10 >= text.chars().count() * 7, "{text:?}");
}

/// `rwkv quantize` writes a file that runs in its format by default, to the logits of
/// quantizing at load (`--weights`), bit for bit; `info` says which format it runs in; an
/// unknown format is a usage error that lists the valid ones.
#[test]
fn quantize_writes_a_file_that_runs_as_quantizing_at_load_does() {
    let dir = tempfile::tempdir().unwrap();
    let m = model("rwkv6");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    for format in ["bf16", "q8", "q4"] {
        let file = path(&format!("m-{format}.safetensors"));
        rwkv(
            &["quantize", "--model", &m, "--to", format, "--out", &file],
            None,
        );
        let info = rwkv(&["info", "--model", &file], None);
        let info = String::from_utf8(info.stdout).unwrap();
        assert!(
            info.contains(&format!("runs as:     {format} projections")),
            "{info}"
        );
        // The table of tensor groups: the matrices in the format, the head in q8 for q4,
        // everything else f32 (as the source stored it).
        let group = |name: &str| {
            let line = info
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or("");
            line.rsplit("  ").next().unwrap_or("").to_string()
        };
        assert_eq!(group("time-mix matrices"), format, "{info}");
        assert_eq!(group("channel-mix matrices"), format, "{info}");
        let head = if format == "q4" { "q8" } else { format };
        assert_eq!(group("head"), head, "{info}");
        assert_eq!(group("norms"), "f32", "{info}");
        let logits = |model: &str, weights: Option<&str>, out: &str| {
            let mut args = vec![
                "logits",
                "--model",
                model,
                "--tokens",
                "1,2,3,200,7",
                "--step",
            ];
            args.extend(weights.map(|w| ["--weights", w]).into_iter().flatten());
            args.extend(["--out", out]);
            rwkv(&args, None);
            std::fs::read(out).unwrap()
        };
        let from_file = logits(&file, None, &path("a.safetensors"));
        let at_load = logits(&m, Some(format), &path("b.safetensors"));
        assert_eq!(from_file, at_load, "{format}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_rwkv"))
        .args(["generate", "--weights", "q5", "--prompt", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("one of: f32, bf16, f16, q8, q4"), "{err}");
}

/// `--lora` applies adapters unmerged: greedy text equals the merged model's, in f32 and
/// with bf16 base weights (adapters in f32 beside the packed matrices); a missing or foreign
/// adapter is an error naming the file.
#[test]
fn lora_adapters_apply_without_merging() {
    use burn::module::Param;
    use burn::tensor::{Tensor, TensorData};
    use rwkv_burn::adapters::{self, LoraSpec, Targets};
    let dir = tempfile::tempdir().unwrap();
    let device = rwkv_burn::DeviceSpec::Flex.device().unwrap();
    let base = dir.path().join("base.safetensors");
    std::fs::write(&base, rwkv_burn_infer::embedded::DEFAULT_MODEL).unwrap();
    let (_, mut model, names) = rwkv_burn::load::load_model_named(&base, &device).unwrap();
    let spec = LoraSpec::new(4, 8.0, Targets::parse("att,ffn").unwrap()).unwrap();
    adapters::attach_fresh(&mut model, &spec, 3).unwrap();
    for (i, (_, projection)) in model.named_projections_mut().into_iter().enumerate() {
        if let Some(lora) = &mut projection.lora {
            let [r, out] = lora.b.dims();
            let values: Vec<f32> = (0..r * out)
                .map(|j| ((j * 11 + i * 3) as f32 * 0.7).sin() * 0.2)
                .collect();
            let id = lora.b.id;
            lora.b = Param::from_tensor(Tensor::from_data(
                TensorData::new(values, [r, out]),
                &device,
            ));
            lora.b.id = id;
        }
    }
    let adapter = dir.path().join("adapter.safetensors");
    adapters::save(&model, &spec, &adapter).unwrap();
    adapters::merge(&mut model).unwrap();
    let merged = dir.path().join("merged.safetensors");
    rwkv_burn::export::save_official(&model, &names, &merged).unwrap();
    let greedy = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--prompt",
            "In the beginning",
            "--temperature",
            "0",
            "--max-tokens",
            "40",
        ];
        args.extend(extra);
        String::from_utf8(rwkv(&args, None).stdout).unwrap()
    };
    let plain = greedy(&["--model", base.to_str().unwrap()]);
    let with_lora = greedy(&[
        "--model",
        base.to_str().unwrap(),
        "--lora",
        adapter.to_str().unwrap(),
    ]);
    let folded = greedy(&["--model", merged.to_str().unwrap()]);
    assert_eq!(with_lora, folded);
    assert_ne!(with_lora, plain, "the adapters change the text");
    // bf16 base weights (packed) with f32 adapters beside them: the adapters still apply.
    let bf16_plain = greedy(&["--model", base.to_str().unwrap(), "--weights", "bf16"]);
    let bf16 = greedy(&[
        "--model",
        base.to_str().unwrap(),
        "--weights",
        "bf16",
        "--lora",
        adapter.to_str().unwrap(),
    ]);
    assert_ne!(bf16, bf16_plain, "adapters apply beside packed weights");

    let v7 = fixtures().join("rwkv7/weights.pth");
    let refused = Command::new(env!("CARGO_BIN_EXE_rwkv"))
        .args(["generate", "--prompt", "x", "--model", v7.to_str().unwrap()])
        .arg("--lora")
        .arg(&adapter)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("adapter.safetensors"), "{stderr}");
}

/// `logits` of `model` for the format fixtures' tokens, as f32 values.
fn cli_logits(model: &str, dir: &std::path::Path, name: &str) -> Vec<f32> {
    let out = dir.join(name);
    let tokens =
        "188,48,38,49,205,188,94,90,240,193,201,214,134,45,208,134,120,20,104,66,246,131,226,246";
    rwkv(
        &[
            "logits",
            "--model",
            model,
            "--weights",
            "f32",
            "--tokens",
            tokens,
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    let tensors = rwkv_burn::safetensors_io::read(&out).unwrap();
    let logits = tensors.into_iter().find(|t| t.name == "logits").unwrap();
    logits.data.try_to_vec::<f32>().unwrap()
}

/// GGUF files and Hugging Face folders run through the CLI, bring their tokenizer, show their
/// metadata, and convert to official checkpoints that give the same logits.
#[test]
fn downloaded_formats_run_show_and_convert() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = fixtures().join("gguf_rwkv7/model-q4_0.gguf");
    let gguf = gguf.to_str().unwrap();
    let info = rwkv(&["info", "--model", gguf], None);
    let info = String::from_utf8_lossy(&info.stdout);
    for needle in [
        "architecture rwkv7",
        "Q4_0 x13",
        "rwkv7.wkv.head_size = 32",
        "runs as:     q4",
    ] {
        assert!(info.contains(needle), "{needle}: {info}");
    }

    // The folder's vocabulary (ids 1..=255 are bytes 0x00..=0xFE) is the tokenizer: byte
    // 0xFF has no token in it, while the byte tokenizer a 256-token model would get has one.
    let folder = fixtures().join("hf_rwkv7_sharded");
    let folder = folder.to_str().unwrap();
    let prompt = dir.path().join("prompt.bin");
    std::fs::write(&prompt, b"A\xff").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_rwkv"))
        .args(["generate", "--model", folder, "--prompt-file"])
        .arg(&prompt)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("0xff has no token"),
        "{stderr}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_rwkv"))
        .args([
            "generate",
            "--model",
            folder,
            "--vocab",
            "bytes",
            "--max-tokens",
            "2",
        ])
        .arg("--prompt-file")
        .arg(&prompt)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Converted to official files, every layout gives its own logits back.
    for (source, out) in [
        (folder.to_string(), "sharded.pth"),
        (
            fixtures()
                .join("gguf_rwkv6/model-q8_0.gguf")
                .to_string_lossy()
                .into_owned(),
            "v6.safetensors",
        ),
    ] {
        let converted = dir.path().join(out);
        rwkv(
            &[
                "convert",
                "--model",
                &source,
                "--out",
                converted.to_str().unwrap(),
            ],
            None,
        );
        let before = cli_logits(&source, dir.path(), "a.safetensors");
        let after = cli_logits(converted.to_str().unwrap(), dir.path(), "b.safetensors");
        // The same f32 values in both (quantized blocks dequantized): the same logits.
        assert!(before == after, "{source}: converted logits differ");
    }
    let refused = Command::new(env!("CARGO_BIN_EXE_rwkv"))
        .args(["convert", "--model", gguf, "--out"])
        .arg(dir.path().join("x.gguf"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&refused.stderr).contains("*.pth or *.safetensors"));
}

/// A file with a tensor no model reads is refused by name; the flag lets it run.
#[test]
fn unused_tensors_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors =
        rwkv_burn::safetensors_io::read(&fixtures().join("rwkv7/weights.safetensors")).unwrap();
    let data = tensors[0].data.clone();
    tensors.push(rwkv_burn::safetensors_io::NamedTensor::new(
        "blocks.0.att.receptance.lora_A",
        data,
    ));
    let path = dir.path().join("m.safetensors");
    rwkv_burn::safetensors_io::write(&path, &tensors).unwrap();
    let path = path.to_str().unwrap();
    let args = [
        "generate",
        "--model",
        path,
        "--prompt",
        "a",
        "--max-tokens",
        "2",
    ];
    let refused = Command::new(env!("CARGO_BIN_EXE_rwkv"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("blocks.0.att.receptance.lora_A")
            && stderr.contains("--allow-unused-tensors"),
        "{stderr}"
    );
    rwkv(&[&args[..], &["--allow-unused-tensors"]].concat(), None);
}
