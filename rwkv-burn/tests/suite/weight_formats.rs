//! Half-precision and quantized weights (`WeightFormat`): a model loaded in a format equals the
//! f32 model run on that format's values (each projection rounded, or quantized and
//! dequantized, by `WeightFormat::round_trip`), on every CPU device and fixture version, in
//! sequence, step and chunked modes. On flex the projections are packed and multiplied by the
//! format kernels (decode's few rows) and by the gemm on the expanded matrix (prefill's many);
//! elsewhere they are f32 copies of the same values.

use crate::common::{assert_matches, devices, fixtures, token_tensor};
use burn::tensor::Device;
use rwkv_burn::load::Checkpoint;
use rwkv_burn::model::build_with;
use rwkv_burn::weights::{LoadError, Role, StoredData, StoredTensor, WeightSource};
use rwkv_burn::{DeviceSpec, Rwkv, RwkvConfig, State, WeightFormat};
use std::path::Path;

/// A checkpoint whose projections read back as the values `format` holds them in: the
/// reference a model in that format must equal.
struct Rounded<'a> {
    inner: &'a Checkpoint,
    format: WeightFormat,
}

impl WeightSource for Rounded<'_> {
    fn path(&self) -> &Path {
        self.inner.path()
    }

    fn contains(&self, name: &str) -> bool {
        WeightSource::contains(self.inner, name)
    }

    fn read(
        &self,
        name: &str,
        expected: &[usize],
        role: Role,
    ) -> Result<StoredTensor<'_>, LoadError> {
        let tensor = self.inner.read(name)?;
        let &[_, cols] = expected else {
            return Ok(tensor);
        };
        let format = self.format.for_tensor(role, cols);
        let shape = tensor.shape.clone();
        Ok(StoredTensor {
            shape,
            data: StoredData::F32(format.round_trip(&tensor.into_f32(), cols)),
        })
    }
}

fn cpu_devices() -> Vec<(DeviceSpec, Device)> {
    devices()
        .into_iter()
        .filter(|(spec, _)| {
            matches!(
                spec,
                DeviceSpec::Flex | DeviceSpec::NdArray | DeviceSpec::LibTorch
            )
        })
        .collect()
}

/// Logits of `tokens` fed in `chunks` from a zero state, and the final state's values.
fn run(
    model: &Rwkv,
    config: &RwkvConfig,
    tokens: &[i64],
    chunks: &[usize],
    device: &Device,
) -> (Vec<f32>, Vec<f32>) {
    let mut state = State::zeros(config, 1, device);
    let mut logits = Vec::new();
    let mut start = 0;
    for &len in chunks {
        let chunk = token_tensor(&tokens[start..start + len], 1, device);
        logits.extend(
            model
                .forward(chunk, &mut state)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
        );
        start += len;
    }
    let state = state
        .sequence_official(0)
        .into_iter()
        .flat_map(|t| t.data.try_to_vec::<f32>().unwrap())
        .collect();
    (logits, state)
}

/// The largest `|got - want|`, and the largest `|want|` to set it against.
fn worst_error(got: &[f32], want: &[f32]) -> (f32, f32) {
    let worst = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    (worst, want.iter().fold(0f32, |m, v| m.max(v.abs())))
}

/// How far 8-bit inputs may move the logits from the exact products on the same weights,
/// relative to the largest logit. Measured on the fixtures (Zen 4, step and chunked modes):
/// worst 0.020 (RWKV-7, q8), 0.006-0.011 elsewhere; the bound is 2.5x the worst. A kernel
/// reading a wrong block, nibble or scale moves them by their own size.
const INT8_INPUTS_BOUND: f32 = 0.05;

fn check(version_dir: &str, weights: &str) {
    check_on(version_dir, weights, cpu_devices(), &WeightFormat::ALL[1..]);
}

/// [`check`] on `devices`, for `formats`.
fn check_on(
    version_dir: &str,
    weights: &str,
    devices: Vec<(DeviceSpec, Device)>,
    formats: &[WeightFormat],
) {
    let checkpoint = Checkpoint::open(fixtures().join(version_dir).join(weights)).unwrap();
    let config = rwkv_burn::load::detect_config(&checkpoint).unwrap();
    // 40 tokens: more than the 16 rows that go through the packed kernels, so the full pass
    // takes the expanded-matrix gemm and the steps the kernels.
    let tokens: Vec<i64> = (0..40)
        .map(|i| (i * 37 + 11) % config.vocab_size as i64)
        .collect();
    let modes: [(&str, Vec<usize>); 3] = [
        ("sequence", vec![tokens.len()]),
        ("step", vec![1; tokens.len()]),
        ("chunks", vec![3, 1, 17, 2, 4, 13]),
    ];
    for (spec, device) in devices {
        for &format in formats {
            let reference = Rounded {
                inner: &checkpoint,
                format,
            };
            let (want_model, _) =
                build_with(&reference, &config, &device, WeightFormat::F32).unwrap();
            let (model, names) = build_with(&checkpoint, &config, &device, format).unwrap();
            // 8-bit blocks on a GPU write the same file as the CPU's packed matrices.
            if model.head.block_matrix().is_some() {
                let (cpu, cpu_names) =
                    build_with(&checkpoint, &config, &Device::flex(), format).unwrap();
                let tensors = |model: &Rwkv, names| -> Vec<(String, Vec<u8>)> {
                    rwkv_burn::export::format_tensors(model, names)
                        .into_iter()
                        .map(|t| (t.name, t.data.as_bytes().to_vec()))
                        .collect()
                };
                assert!(
                    tensors(&model, &names) == tensors(&cpu, &cpu_names),
                    "{version_dir} {format} on {spec}: exported blocks differ from flex's"
                );
            }
            // Packed on flex; bf16/f16 tensors where the device has the type (libtorch, wgpu
            // with shader-f16); elsewhere f32 copies of the format's values.
            let holds = rwkv_burn::load::holds_format(&device, format);
            assert_eq!(
                model.head.format() != WeightFormat::F32,
                holds,
                "{version_dir} {format} on {spec}: held in its format"
            );
            if holds && !format.is_block() {
                assert_eq!(model.head.format(), format, "{version_dir} on {spec}");
            }
            // f32 inputs: the products are exact up to summation order.
            model.set_exact_products(true);
            for (mode, chunks) in &modes {
                let what = format!("{version_dir}/{weights} {format} on {spec}, {mode}");
                let (want, want_state) = run(&want_model, &config, &tokens, chunks, &device);
                let (got, got_state) = run(&model, &config, &tokens, chunks, &device);
                assert_matches(&got, &want, &format!("{what}: logits"));
                assert_matches(&got_state, &want_state, &format!("{what}: state"));
            }
            // 8-bit inputs, where this CPU rounds them (q8/q4 on AVX-512 VNNI): each product
            // is within the kernel's bound (tested in `cpu::int8_dots`); through the whole
            // model the logits move by at most INT8_INPUTS_BOUND of their size.
            model.set_exact_products(false);
            if model.rounds_inputs() {
                for (mode, chunks) in &modes[1..] {
                    let (want, _) = run(&want_model, &config, &tokens, chunks, &device);
                    let (got, _) = run(&model, &config, &tokens, chunks, &device);
                    let (worst, scale) = worst_error(&got, &want);
                    assert!(
                        worst <= INT8_INPUTS_BOUND * scale,
                        "{version_dir} {format} with 8-bit inputs, {mode}: worst error {worst} against logits up to {scale}"
                    );
                }
            }
        }
    }
}

/// The GPU devices of this build (wgpu: lavapipe in CI) hold bf16/f16 weights as tensors of
/// that type where the adapter has it (f16 with `shader-f16`; wgpu has no bf16), q8/q4 as
/// 8-bit blocks for their block kernel, and compute in f32 on the format's values: RWKV-7,
/// every mode (the 17-token chunk runs the block kernel in two passes).
#[test]
fn every_format_on_gpu_devices_equals_f32_on_the_formats_values() {
    let gpus: Vec<_> = devices()
        .into_iter()
        .filter(|(spec, _)| {
            !matches!(
                spec,
                DeviceSpec::Flex | DeviceSpec::NdArray | DeviceSpec::LibTorch
            )
        })
        .collect();
    if gpus.is_empty() {
        eprintln!("skipped: no GPU device in this build");
        return;
    }
    check_on(
        "rwkv7",
        "weights.safetensors",
        gpus,
        &WeightFormat::ALL[1..],
    );
}

#[test]
fn rwkv4_in_every_format_equals_f32_on_the_formats_values() {
    check("rwkv4", "weights.safetensors");
}

#[test]
fn rwkv5_in_every_format_equals_f32_on_the_formats_values() {
    check("rwkv5", "weights.safetensors");
}

#[test]
fn rwkv6_in_every_format_equals_f32_on_the_formats_values() {
    check("rwkv6", "weights.safetensors");
}

#[test]
fn rwkv7_in_every_format_equals_f32_on_the_formats_values() {
    check("rwkv7", "weights.safetensors");
}

/// The formats change the logits by what their rounding costs, no more. Measured on the
/// RWKV-7 fixture (uniform-noise weights, the hardest case for block scales), worst error over
/// the largest logit (6.0): bf16 2.9e-3, f16 3.3e-4, q8 8.3e-3 (1.4e-2 where the CPU also
/// rounds the inputs to 8 bits), q4 0.13 (0.13); the bounds are about 2-3x those. A kernel reading the wrong block or nibble shows up as an error of the logits'
/// own size.
#[test]
fn formats_stay_close_to_f32() {
    let checkpoint = Checkpoint::open(fixtures().join("rwkv7/weights.safetensors")).unwrap();
    let config = rwkv_burn::load::detect_config(&checkpoint).unwrap();
    let device = Device::flex();
    let tokens: Vec<i64> = (0..24).map(|i| (i * 53 + 7) % 256).collect();
    let (f32_model, _) = build_with(&checkpoint, &config, &device, WeightFormat::F32).unwrap();
    let (want, _) = run(&f32_model, &config, &tokens, &[24], &device);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (format, bound) in [
        (WeightFormat::Bf16, 1e-2),
        (WeightFormat::F16, 1e-3),
        (WeightFormat::Q8, 2.5e-2),
        (WeightFormat::Q4, 0.3),
    ] {
        let (model, _) = build_with(&checkpoint, &config, &device, format).unwrap();
        let (got, _) = run(&model, &config, &tokens, &[1; 24], &device);
        let (worst, _) = worst_error(&got, &want);
        assert!(
            worst <= bound * scale,
            "{format}: worst error {worst} against logits up to {scale}"
        );
    }
}

/// A file written in a format (`rwkv quantize`'s writer) loads back in that format to the
/// very same logits as quantizing at load (the levels are taken as stored), and in f32 to the
/// f32 model on the format's values; the bf16/f16 files are plain official checkpoints.
#[test]
fn files_written_in_a_format_load_back_without_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    for version_dir in ["rwkv4", "rwkv7"] {
        let checkpoint =
            Checkpoint::open(fixtures().join(version_dir).join("weights.safetensors")).unwrap();
        let config = rwkv_burn::load::detect_config(&checkpoint).unwrap();
        let tokens: Vec<i64> = (0..20).map(|i| (i * 29 + 3) % 256).collect();
        let chunks = [20];
        for format in [
            WeightFormat::Bf16,
            WeightFormat::F16,
            WeightFormat::Q8,
            WeightFormat::Q4,
        ] {
            let (model, names) = build_with(&checkpoint, &config, &device, format).unwrap();
            let path = dir
                .path()
                .join(format!("{version_dir}-{format}.safetensors"));
            rwkv_burn::export::write_in_format(&model, &names, &path).unwrap();

            let file = Checkpoint::open(&path).unwrap();
            assert_eq!(rwkv_burn::load::detect_config(&file).unwrap(), config);
            // The file runs in its own format by default.
            assert_eq!(rwkv_burn::load::stored_format(&file), format);
            let (again, _) = build_with(&file, &config, &device, format).unwrap();
            let (want, _) = run(&model, &config, &tokens, &chunks, &device);
            let (got, _) = run(&again, &config, &tokens, &chunks, &device);
            assert_eq!(got, want, "{version_dir} {format}: reloaded logits");

            let (unpacked, _) = build_with(&file, &config, &device, WeightFormat::F32).unwrap();
            let reference = Rounded {
                inner: &checkpoint,
                format,
            };
            let (rounded, _) = build_with(&reference, &config, &device, WeightFormat::F32).unwrap();
            let (got, _) = run(&unpacked, &config, &tokens, &chunks, &device);
            let (want, _) = run(&rounded, &config, &tokens, &chunks, &device);
            assert_matches(&got, &want, &format!("{version_dir} {format} read as f32"));
        }
    }
}

/// Damaged block files: a missing half, a scale of the wrong shape, levels of the wrong
/// type, a level of -128: each a typed error naming the tensor, never a panic.
#[test]
fn damaged_block_files_are_refused_by_name() {
    use rwkv_burn::safetensors_io::{NamedTensor, read, write};
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let checkpoint = Checkpoint::open(fixtures().join("rwkv7/weights.safetensors")).unwrap();
    let config = rwkv_burn::load::detect_config(&checkpoint).unwrap();
    let (model, names) = build_with(&checkpoint, &config, &device, WeightFormat::Q8).unwrap();
    let good = dir.path().join("good.safetensors");
    rwkv_burn::export::write_in_format(&model, &names, &good).unwrap();
    let tensors = read(&good).unwrap();
    let key = "blocks.0.att.key.weight";
    type Edit<'a> = Box<dyn Fn(&mut Vec<NamedTensor>) + 'a>;
    let edits: [(&str, Edit); 4] = [
        (
            "no scales",
            Box::new(|t| t.retain(|t| t.name != format!("{key}.q8_scales"))),
        ),
        (
            "short scales",
            Box::new(|t| {
                let s = t
                    .iter_mut()
                    .find(|t| t.name == format!("{key}.q8_scales"))
                    .unwrap();
                let [rows, cols] = s.data.shape().to_vec()[..] else {
                    unreachable!()
                };
                s.data = burn::tensor::TensorData::new(
                    vec![half::f16::ONE; rows * (cols - 1)],
                    [rows, cols - 1],
                );
            }),
        ),
        (
            "f32 levels",
            Box::new(|t| {
                let s = t
                    .iter_mut()
                    .find(|t| t.name == format!("{key}.q8"))
                    .unwrap();
                s.data = s.data.clone().convert::<f32>();
            }),
        ),
        (
            "level -128",
            Box::new(|t| {
                let s = t
                    .iter_mut()
                    .find(|t| t.name == format!("{key}.q8"))
                    .unwrap();
                let shape = s.data.shape().to_vec();
                let mut values = s.data.clone().try_to_vec::<i8>().unwrap();
                values[5] = -128;
                s.data = burn::tensor::TensorData::new(values, shape);
            }),
        ),
    ];
    for (what, edit) in edits {
        let mut damaged = tensors.clone();
        // `read` gives floats back as f32: the scales must go back as F16.
        for t in damaged.iter_mut().filter(|t| t.name.ends_with("_scales")) {
            t.data = t.data.clone().convert::<half::f16>();
        }
        edit(&mut damaged);
        let path = dir.path().join("damaged.safetensors");
        write(&path, &damaged).unwrap();
        // Every device, whatever it makes of the blocks (flex packs them, wgpu lays them out
        // for its block kernel, ndarray and libtorch compute on their f32 values).
        for (spec, device) in devices() {
            let err = Checkpoint::open(&path)
                .and_then(|file| {
                    let config = rwkv_burn::load::detect_config(&file)?;
                    build_with(&file, &config, &device, WeightFormat::Q8).map(drop)
                })
                .expect_err(what);
            assert!(
                matches!(&err, LoadError::BadBlocks { name, .. } if name.starts_with(key)),
                "{what} on {spec}: {err}"
            );
        }
    }
}

/// An official bf16 checkpoint (what BlinkDL releases; here the fixture exported in bf16)
/// runs in bf16 by default, its embedding kept in bf16 too, to the logits of the same file
/// loaded in f32: its values are already bf16, so nothing is rounded.
#[test]
fn an_official_bf16_checkpoint_runs_in_bf16_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let fixture = fixtures().join("rwkv7/weights.safetensors");
    let (_, model, names) = rwkv_burn::load::load_model_named(&fixture, &device).unwrap();
    let path = dir.path().join("bf16.pth");
    let tensors = rwkv_burn::export::official_tensors(&model, &names);
    rwkv_burn::export::write_official(&path, &tensors, rwkv_burn::export::StorageDType::BF16)
        .unwrap();

    let file = Checkpoint::open(&path).unwrap();
    let config = rwkv_burn::load::detect_config(&file).unwrap();
    let format = rwkv_burn::load::stored_format(&file);
    assert_eq!(format, WeightFormat::Bf16);
    let (model, _) = build_with(&file, &config, &device, format).unwrap();
    assert_eq!(model.emb.dtype(), burn::tensor::DType::BF16);
    assert_eq!(model.head.format(), WeightFormat::Bf16);
    let (reference, _) = build_with(&file, &config, &device, WeightFormat::F32).unwrap();
    let tokens: Vec<i64> = (0..30).map(|i| (i * 41 + 5) % 256).collect();
    for chunks in [vec![30], vec![1; 30]] {
        let (got, got_state) = run(&model, &config, &tokens, &chunks, &device);
        let (want, want_state) = run(&reference, &config, &tokens, &chunks, &device);
        assert_matches(&got, &want, "bf16 checkpoint: logits");
        assert_matches(&got_state, &want_state, "bf16 checkpoint: state");
    }

    // Quantized from it, the file keeps the embedding in bf16, and reloads to the same logits.
    let (q8, names) = build_with(&file, &config, &device, WeightFormat::Q8).unwrap();
    let written = dir.path().join("q8.safetensors");
    rwkv_burn::export::write_in_format(&q8, &names, &written).unwrap();
    let again = Checkpoint::open(&written).unwrap();
    assert_eq!(
        again.stored_dtype("emb.weight"),
        Some(rwkv_burn::dtype::SourceDType::BF16)
    );
    let (reloaded, _) = build_with(&again, &config, &device, WeightFormat::Q8).unwrap();
    let (want, _) = run(&q8, &config, &tokens, &[30], &device);
    let (got, _) = run(&reloaded, &config, &tokens, &[30], &device);
    assert_eq!(got, want, "q8 from a bf16 checkpoint, reloaded");
}
