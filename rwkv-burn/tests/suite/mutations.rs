//! Deterministic mutation tests: thousands of damaged checkpoints, state files and
//! vocabularies, each of which must give a typed error or a correct load, never a panic (and,
//! since every case finishes, never a hang). The mutations are the ones that found bugs when
//! tried by hand: flipped bytes in headers and pickles, numbers overwritten with huge values,
//! truncations, and duplicated or dropped spans. A seeded generator makes every run try the
//! same cases; a failure names the case so it can be replayed.

use crate::common::{devices, fixtures};
use rwkv_burn::random::SplitMix64;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

/// One damaged copy of `bytes`: which mutation is picked and where comes from `rng`.
fn mutate(bytes: &[u8], rng: &mut SplitMix64) -> (Vec<u8>, String) {
    let mut out = bytes.to_vec();
    let len = out.len().max(1);
    let mut pick = |n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    // Headers (safetensors JSON, zip directory, pickle opcodes) sit at the ends.
    let head = |pick: &mut dyn FnMut(usize) -> usize| pick(len.min(4096));
    let tail = |pick: &mut dyn FnMut(usize) -> usize| len - 1 - pick(len.min(4096));
    match pick(6) {
        0 => {
            let at = head(&mut pick);
            let bit = pick(8);
            out[at] ^= 1 << bit;
            (out, format!("flip bit {bit} of byte {at}"))
        }
        1 => {
            let at = tail(&mut pick);
            let bit = pick(8);
            out[at] ^= 1 << bit;
            (out, format!("flip bit {bit} of byte {at} (tail)"))
        }
        2 => {
            let at = if pick(2) == 0 {
                head(&mut pick)
            } else {
                tail(&mut pick)
            };
            let fill = [0xFF, 0x7F, 0x00, b'9'][pick(4)];
            let end = (at + 8).min(out.len());
            out[at..end].fill(fill);
            (out, format!("fill {at}..{end} with {fill:#x}"))
        }
        3 => {
            let keep = pick(len);
            out.truncate(keep);
            (out, format!("truncate to {keep}"))
        }
        4 => {
            let at = head(&mut pick);
            let n = 1 + pick(64);
            let end = (at + n).min(out.len());
            out.drain(at..end);
            (out, format!("drop {at}..{end}"))
        }
        _ => {
            let at = head(&mut pick);
            let n = 1 + pick(64);
            let end = (at + n).min(out.len());
            let span = out[at..end].to_vec();
            out.splice(at..at, span);
            (out, format!("repeat {at}..{end}"))
        }
    }
}

/// Runs `check` on `cases` mutations of `original`, written to `path`; fails listing every
/// case that panicked.
fn survive(original: &Path, path: &Path, cases: usize, seed: u64, check: &dyn Fn(&Path)) {
    let bytes = std::fs::read(original).unwrap();
    let mut rng = SplitMix64::new(seed);
    let mut panics = Vec::new();
    for case in 0..cases {
        let (damaged, what) = mutate(&bytes, &mut rng);
        std::fs::write(path, &damaged).unwrap();
        if catch_unwind(AssertUnwindSafe(|| check(path))).is_err() {
            panics.push(format!("case {case} ({what})"));
        }
    }
    assert!(
        panics.is_empty(),
        "{} of {cases} mutations of {} panicked: {panics:?}",
        panics.len(),
        original.display()
    );
}

/// Loading (and, where it succeeds, one forward step) must not panic.
fn load_and_step(path: &Path) {
    if let Ok(checkpoint) = rwkv_burn::load::Checkpoint::open(path) {
        build_and_step(&checkpoint);
    }
}

/// Building an opened checkpoint (and, where it succeeds, one forward step) must not panic.
fn build_and_step(checkpoint: &rwkv_burn::load::Checkpoint) {
    let (_, device) = devices().remove(0);
    let _ = rwkv_burn::load::detect_config(checkpoint);
    let _ = checkpoint.check_finite(&mut |_| {});
    if let Ok((config, model)) = rwkv_burn::load::load_checkpoint(checkpoint, &device) {
        let mut state = rwkv_burn::State::zeros(&config, 1, &device);
        let tokens = burn::tensor::Tensor::<2, burn::tensor::Int>::from_data([[0]], &device);
        let _ = model.forward(tokens, &mut state).into_data();
    }
}

#[test]
fn damaged_checkpoints_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (source, name)) in [
        ("rwkv4/weights.pth", "m.pth"),
        ("rwkv4/weights.safetensors", "m.safetensors"),
        ("rwkv7/weights.pth", "m7.pth"),
        ("rwkv7/weights.safetensors", "m7.safetensors"),
    ]
    .into_iter()
    .enumerate()
    {
        survive(
            &fixtures().join(source),
            &dir.path().join(name),
            200,
            0x5eed + i as u64,
            &load_and_step,
        );
    }
}

/// The in-memory `.pth` reader (the browser page's) on damaged files: a typed error or a
/// model, never a panic; and where pytorch-reader reads the same damaged file too, both
/// give the same tensors.
#[test]
fn damaged_pth_bytes_never_panic() {
    use rwkv_burn::load::Checkpoint;
    let dir = tempfile::tempdir().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for (i, source) in [
        fixtures().join("rwkv7/weights.pth"),
        fixtures().join("rwkv4/weights.pth"),
        data.join("views.pth"),
        data.join("views-p4.pth"),
    ]
    .iter()
    .enumerate()
    {
        survive(
            source,
            &dir.path().join("m.pth"),
            200,
            0xb17e5 + i as u64,
            &|path| {
                let bytes = std::fs::read(path).unwrap();
                let Ok(from_bytes) = Checkpoint::from_pth_bytes(bytes, "up.pth") else {
                    return;
                };
                build_and_step(&from_bytes);
                let Ok(from_disk) = Checkpoint::open(path) else {
                    return;
                };
                if from_disk.names().eq(from_bytes.names()) {
                    for name in from_disk.names() {
                        if let (Ok(a), Ok(b)) =
                            (from_disk.read_f32(name), from_bytes.read_f32(name))
                        {
                            assert!(
                                a.1 == b.1
                                    && a.0
                                        .iter()
                                        .map(|v| v.to_bits())
                                        .eq(b.0.iter().map(|v| v.to_bits())),
                                "{name} differs between the readers"
                            );
                        }
                    }
                }
            },
        );
    }
}

#[test]
fn damaged_hugging_face_folders_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("hf");
    std::fs::create_dir(&folder).unwrap();
    let source = fixtures().join("hf_rwkv4");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(source.join(file), folder.join(file)).unwrap();
    }
    // The config, then the weights, damaged while the other file stays intact.
    for (i, file) in ["config.json", "model.safetensors"].into_iter().enumerate() {
        survive(
            &source.join(file),
            &folder.join(file),
            100,
            0xf01d + i as u64,
            &|_| load_and_step(&folder),
        );
        std::fs::copy(source.join(file), folder.join(file)).unwrap();
    }
}

#[test]
fn damaged_state_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (_, device) = devices().remove(0);
    for version in ["rwkv4", "rwkv7"] {
        let path = fixtures().join(version).join("weights.safetensors");
        let (config, model) = rwkv_burn::load_model(&path, &device).unwrap();
        let good = dir.path().join(format!("{version}-state.st"));
        rwkv_burn::State::zeros(&config, 1, &device)
            .save(&good)
            .unwrap();
        survive(&good, &dir.path().join("damaged.st"), 300, 0x57a7e, &|p| {
            if let Ok(mut state) = rwkv_burn::State::load(p, &config, &device)
                && state.batch_size() == 1
            {
                let tokens =
                    burn::tensor::Tensor::<2, burn::tensor::Int>::from_data([[1]], &device);
                let _ = model.forward(tokens, &mut state).into_data();
            }
        });
    }
}

#[test]
fn damaged_vocabularies_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    // The first lines of the World vocabulary (fast to parse a thousand times), and the
    // GPT-NeoX tokenizer.json.
    let world =
        std::fs::read_to_string(fixtures().join("tokenizer/rwkv_vocab_v20230424.txt")).unwrap();
    let head: String = world.lines().take(400).map(|l| format!("{l}\n")).collect();
    let small = dir.path().join("vocab.txt");
    std::fs::write(&small, head).unwrap();
    let check = |p: &Path| {
        if let Ok(t) = rwkv_burn::tokenizer::load_tokenizer(p)
            && let Ok(ids) = t.encode(b"Hello, world! \xe4\xb8\xad")
        {
            let _ = t.decode(&ids);
        }
    };
    survive(&small, &dir.path().join("damaged.txt"), 400, 0x70c, &check);
    survive(
        &fixtures().join("tokenizer/20B_tokenizer.json"),
        &dir.path().join("damaged.json"),
        40,
        0x20b,
        &check,
    );
}

#[test]
fn damaged_gguf_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    for (i, source) in ["gguf_rwkv7/model-q8_0.gguf", "gguf_rwkv6/model-q4_0.gguf"]
        .into_iter()
        .enumerate()
    {
        let path = dir.path().join("m.gguf");
        survive(
            &fixtures().join(source),
            &path,
            200,
            0x9909 + i as u64,
            &|p| {
                load_and_step(p);
                if let Ok(checkpoint) = rwkv_burn::load::Checkpoint::open(p) {
                    let _ = checkpoint.tokenizer();
                }
            },
        );
    }
}

#[test]
fn damaged_sharded_rwkv7_folders_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("hf");
    std::fs::create_dir(&folder).unwrap();
    let source = fixtures().join("hf_rwkv7_sharded");
    let files = [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "rwkv_vocab_v20230424.txt",
    ];
    for file in files {
        std::fs::write(folder.join(file), std::fs::read(source.join(file)).unwrap()).unwrap();
    }
    // One file at a time damaged while the others stay intact.
    for (i, file) in files.into_iter().enumerate() {
        survive(
            &source.join(file),
            &folder.join(file),
            60,
            0x5a4d + i as u64,
            &|_| {
                load_and_step(&folder);
                if let Ok(checkpoint) = rwkv_burn::load::Checkpoint::open(&folder) {
                    let _ = checkpoint.tokenizer();
                }
            },
        );
        std::fs::write(folder.join(file), std::fs::read(source.join(file)).unwrap()).unwrap();
    }
}
