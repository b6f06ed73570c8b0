//! The formats people download: Hugging Face RWKV-7 folders (fla-hub, rwkv7-hf, sharded) and
//! llama.cpp's GGUF (RWKV-6, RWKV-7; F32, F16, Q8_0, Q4_0), against the official package's
//! outputs on the same (dequantized) weights; their bad inputs; tensors no model reads.

use crate::common::{assert_matches, devices, fixtures};
use crate::fixtures::check_model;
use rwkv_burn::LoadError;
use rwkv_burn::load::Checkpoint;
use rwkv_burn::load::gguf::{Gguf, Value};
use rwkv_burn::safetensors_io::{NamedTensor, read, write};
use std::path::{Path, PathBuf};

const HF_FOLDERS: [&str; 3] = ["hf_rwkv7_fla", "hf_rwkv7_hf", "hf_rwkv7_sharded"];
const GGUF_TYPES: [&str; 4] = ["f32", "f16", "q8_0", "q4_0"];

#[test]
fn hugging_face_rwkv7_folders_match_the_package() {
    for folder in HF_FOLDERS {
        let dir = fixtures().join(folder);
        check_model(&dir, &dir, "expected.safetensors", &devices(), false);
    }
}

/// `a` and `b` hold the same tensors (an official model's, at least `emb.weight`) under the
/// same names, with the same values.
fn assert_same_tensors(a: &Checkpoint, b: &Checkpoint, what: &str) {
    let names: Vec<&str> = a.names().collect();
    assert_eq!(names, b.names().collect::<Vec<_>>(), "{what}");
    assert!(names.contains(&"emb.weight"), "{what}: {names:?}");
    for name in names {
        assert_eq!(
            a.read_f32(name).unwrap(),
            b.read_f32(name).unwrap(),
            "{what} {name}"
        );
    }
}

/// A safetensors file in parts (the browser page's way past wasm32's 2 GiB allocations)
/// reads as the whole file does, wherever the parts are cut: at tensor boundaries, through
/// tensors (copied out), into a part of one byte; a header that does not fit in the first
/// part is refused naming the upload.
#[test]
fn safetensors_parts_read_as_the_file_does() {
    let path = fixtures().join("rwkv7/weights.safetensors");
    let whole = std::fs::read(&path).unwrap();
    let from_disk = Checkpoint::open(&path).unwrap();
    let header = 8 + u64::from_le_bytes(whole[..8].try_into().unwrap()) as usize;
    let n = whole.len();
    for cuts in [
        vec![header],
        vec![header + 1, n / 3, n / 3 + 1, 2 * n / 3],
        vec![header + 4096, n - 1],
        vec![n],
    ] {
        let mut parts = Vec::new();
        let mut at = 0;
        for cut in cuts.iter().copied().chain([n]) {
            parts.push(whole[at..cut].to_vec());
            at = cut;
        }
        let from_parts = Checkpoint::from_safetensors_parts(parts, "up.safetensors").unwrap();
        assert_same_tensors(&from_disk, &from_parts, &format!("{cuts:?}"));
    }
    let parts = vec![whole[..header - 1].to_vec(), whole[header - 1..].to_vec()];
    let err = Checkpoint::from_safetensors_parts(parts, "split.safetensors").unwrap_err();
    assert!(err.to_string().contains("split.safetensors"), "{err}");
}

/// A folder's `model.safetensors` on its own (what a browser page is given: one file, no
/// config) maps its layout the same way and matches the package, read from disk and from
/// memory alike.
#[test]
fn lone_hugging_face_rwkv7_files_match_the_package() {
    for folder in ["hf_rwkv7_fla", "hf_rwkv7_hf"] {
        let dir = fixtures().join(folder);
        let file = dir.join("model.safetensors");
        check_model(&dir, &file, "expected.safetensors", &devices(), false);
        let from_folder = Checkpoint::open(&dir).unwrap();
        let from_bytes =
            Checkpoint::from_safetensors_bytes(std::fs::read(&file).unwrap(), "up").unwrap();
        assert_same_tensors(&from_folder, &from_bytes, folder);
    }
}

/// Every GGUF file of `arch` against the package on that file's dequantized weights.
fn check_gguf(arch: &str) {
    let dir = fixtures().join(arch);
    for kind in GGUF_TYPES {
        let model = dir.join(format!("model-{kind}.gguf"));
        let expected = format!("expected-{kind}.safetensors");
        check_model(&dir, &model, &expected, &devices(), false);
    }
}

/// A GGUF file read from memory (the browser page's way) holds the same tensors under the
/// same official names as the file opened from disk.
#[test]
fn gguf_bytes_read_as_the_file_does() {
    for arch in ["gguf_rwkv7", "gguf_rwkv6"] {
        for kind in GGUF_TYPES {
            let path = fixtures().join(arch).join(format!("model-{kind}.gguf"));
            let from_disk = Checkpoint::open(&path).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let from_bytes = Checkpoint::from_gguf_bytes(bytes, "upload.gguf").unwrap();
            assert_same_tensors(&from_disk, &from_bytes, &format!("{arch} {kind}"));
        }
    }
    // Cut short in memory: refused with the label, not a panic.
    let path = fixtures().join("gguf_rwkv7/model-q8_0.gguf");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() / 2);
    let err = Checkpoint::from_gguf_bytes(bytes, "half.gguf").unwrap_err();
    assert!(err.to_string().contains("half.gguf"), "{err}");
}

/// A `.pth` read from memory (the browser page's way: `torch_zip.rs` and `pickle.rs`) holds
/// what pytorch-reader reads from the file: the same names, shapes, element types and values
/// (and the same refusal of a type we have not got). For the fixtures, and for two files
/// PyTorch 2.9 wrote (`tests/data/make_views_pth.py`): tensors saved as views (a transpose,
/// an offset into a shared storage), a parameter, f16/bf16/f64, an int64, an empty and a 0-d
/// tensor, nested under `state_dict` beside other values at pickle protocol 2, flat at 4.
#[test]
fn pth_bytes_read_as_the_file_does() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut paths: Vec<PathBuf> = ["rwkv4", "rwkv5", "rwkv6", "rwkv7"]
        .iter()
        .map(|v| fixtures().join(v).join("weights.pth"))
        .collect();
    paths.extend([data.join("views.pth"), data.join("views-p4.pth")]);
    for path in &paths {
        let from_disk = Checkpoint::open(path).unwrap();
        let from_bytes =
            Checkpoint::from_pth_bytes(std::fs::read(path).unwrap(), "up.pth").unwrap();
        let names: Vec<&str> = from_disk.names().collect();
        assert_eq!(names, from_bytes.names().collect::<Vec<_>>(), "{path:?}");
        assert!(names.len() >= 8, "{path:?}: {names:?}");
        for name in names {
            match (from_disk.read_f32(name), from_bytes.read_f32(name)) {
                (Ok(disk), Ok(bytes)) => assert_eq!(disk, bytes, "{path:?} {name}"),
                (Err(LoadError::UnsupportedDType { dtype: a, .. }), Err(e)) => assert!(
                    matches!(&e, LoadError::UnsupportedDType { dtype, .. } if *dtype == a),
                    "{path:?} {name}: {a} vs {e}"
                ),
                (disk, bytes) => panic!("{path:?} {name}: {:?} vs {:?}", disk.err(), bytes.err()),
            }
        }
    }
    // Against the values PyTorch printed (the script's output), not only the other reader.
    for file in ["views.pth", "views-p4.pth"] {
        let bytes = std::fs::read(data.join(file)).unwrap();
        let c = Checkpoint::from_pth_bytes(bytes, file).unwrap();
        // PyTorch printed the f32 values in f64 (exact), hence the widening.
        let first = |name: &str| {
            let (values, shape) = c.read_f32(name).unwrap();
            let values: Vec<f64> = values.iter().take(4).map(|&v| v.into()).collect();
            (values, shape)
        };
        let key = [
            -1.1258398294448853,
            -0.31601276993751526,
            0.16645534336566925,
            2.0049805641174316,
        ];
        let value = [
            -0.31601276993751526,
            -2.1152193546295166,
            0.46809640526771545,
            -0.1577124446630478,
        ];
        assert_eq!(first("blocks.0.att.key.weight"), (key.to_vec(), vec![6, 4]));
        assert_eq!(
            first("blocks.0.att.value.weight"),
            (value.to_vec(), vec![2, 6])
        );
        let ln = [0.37109375, 1.453125, 0.94140625, 0.7734375];
        assert_eq!(first("blocks.0.ln1.weight"), (ln.to_vec(), vec![5]));
        let head = [1.263671875, -1.2900390625, -0.791015625, -0.0208740234375];
        assert_eq!(first("head.weight"), (head.to_vec(), vec![3, 2]));
        assert_eq!(first("empty"), (vec![], vec![0, 3]));
        assert_eq!(first("scalar"), (vec![1.5], vec![]));
    }
    // Refusals name the upload: cut short, the legacy stream, a zip that is not PyTorch's.
    let mut bytes = std::fs::read(fixtures().join("rwkv7/weights.pth")).unwrap();
    bytes.truncate(bytes.len() / 2);
    let err = Checkpoint::from_pth_bytes(bytes, "half.pth").unwrap_err();
    assert!(matches!(&err, LoadError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("half.pth"), "{err}");
    let err = Checkpoint::from_pth_bytes(b"\x80\x02}q\x00.".to_vec(), "old.pth").unwrap_err();
    assert!(err.to_string().contains("rwkv convert"), "{err}");
    let mut zip = std::io::Cursor::new(Vec::new());
    {
        let mut w = zip::ZipWriter::new(&mut zip);
        w.start_file(
            "archive/notes.txt",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        std::io::Write::write_all(&mut w, b"hello").unwrap();
        w.finish().unwrap();
    }
    let err = Checkpoint::from_pth_bytes(zip.into_inner(), "notes.pth").unwrap_err();
    assert!(err.to_string().contains("data.pkl"), "{err}");
}

#[test]
fn gguf_rwkv7_files_match_the_package_on_their_dequantized_weights() {
    check_gguf("gguf_rwkv7");
}

#[test]
fn gguf_rwkv6_files_match_the_package_on_their_dequantized_weights() {
    check_gguf("gguf_rwkv6");
}

/// The weights of every layout, read back under official names, equal the official file's
/// (or, for the quantized GGUF files, the fixture's own dequantization) bit for bit.
#[test]
fn every_layout_reads_back_the_official_weights_bit_for_bit() {
    let official = |version: &str, file: &str| -> Vec<NamedTensor> {
        read(&fixtures().join(version).join(file)).unwrap()
    };
    let mut cases: Vec<(PathBuf, Vec<NamedTensor>)> = Vec::new();
    for folder in HF_FOLDERS {
        cases.push((
            fixtures().join(folder),
            official("rwkv7", "weights.safetensors"),
        ));
    }
    for (arch, version) in [("gguf_rwkv7", "rwkv7"), ("gguf_rwkv6", "rwkv6")] {
        let dir = fixtures().join(arch);
        cases.push((
            dir.join("model-f32.gguf"),
            official(version, "weights.safetensors"),
        ));
        for kind in ["q8_0", "q4_0"] {
            cases.push((
                dir.join(format!("model-{kind}.gguf")),
                read(&dir.join(format!("dequant-{kind}.safetensors"))).unwrap(),
            ));
        }
    }
    for (path, want) in cases {
        let checkpoint = Checkpoint::open(&path).unwrap();
        // Layer 0's value residual is unused; the HF and GGUF layouts do not carry it.
        let want: Vec<_> = want
            .into_iter()
            .filter(|t| {
                !["blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2"]
                    .contains(&t.name.as_str())
            })
            .collect();
        let mut names: Vec<&str> = checkpoint.names().collect();
        names.sort();
        let mut want_names: Vec<&str> = want.iter().map(|t| t.name.as_str()).collect();
        want_names.sort();
        assert_eq!(names, want_names, "{}", path.display());
        for tensor in &want {
            let (values, shape) = checkpoint.read_f32(&tensor.name).unwrap();
            assert_eq!(
                shape,
                tensor.data.shape().to_vec(),
                "{}: {}",
                path.display(),
                tensor.name
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let expected = tensor
                .data
                .clone()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap();
            assert!(
                bits(&values) == bits(&expected),
                "{}: {} differs",
                path.display(),
                tensor.name
            );
        }
    }
}

/// Quantized GGUF matrices run packed as stored (nothing re-quantized), on flex, and with
/// exact products still match the package on the dequantized weights.
#[test]
fn quantized_gguf_runs_packed_as_stored() {
    let flex = rwkv_burn::DeviceSpec::Flex.device().unwrap();
    for (arch, kind, format) in [
        ("gguf_rwkv7", "q8_0", rwkv_burn::WeightFormat::Q8),
        ("gguf_rwkv7", "q4_0", rwkv_burn::WeightFormat::Q4),
        ("gguf_rwkv6", "q8_0", rwkv_burn::WeightFormat::Q8),
        ("gguf_rwkv6", "f16", rwkv_burn::WeightFormat::F16),
    ] {
        let dir = fixtures().join(arch);
        let checkpoint = Checkpoint::open(dir.join(format!("model-{kind}.gguf"))).unwrap();
        assert_eq!(rwkv_burn::load::stored_format(&checkpoint), format);
        let config = rwkv_burn::load::detect_config(&checkpoint).unwrap();
        let (model, _) = rwkv_burn::model::build_with(&checkpoint, &config, &flex, format).unwrap();
        model.set_exact_products(true);
        let expected =
            crate::common::Expected::open(dir.join(format!("expected-{kind}.safetensors")));
        let tokens: Vec<i64> = expected.tokens("tokens");
        let mut state = rwkv_burn::State::zeros(&config, 1, &flex);
        let logits = model
            .forward(crate::common::token_tensor(&tokens, 1, &flex), &mut state)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_matches(
            &logits,
            &expected.f32("logits_full"),
            &format!("{arch} {kind} packed"),
        );
    }
}

/// The tokenizer comes with the model: a folder's vocabulary file, a GGUF file's World
/// vocabulary (llama.cpp's escaped strings); both the fixture's truncated World vocabulary.
#[test]
fn models_bring_their_tokenizer() {
    let vocab = rwkv_burn::tokenizer::WorldTokenizer::from_file(
        fixtures().join("hf_rwkv7_fla/rwkv_vocab_v20230424.txt"),
    )
    .unwrap();
    use rwkv_burn::tokenizer::Tokenizer;
    let text = b"Hello\n\t\\ 'x' \"y\" \x00\xfe";
    let want = vocab.encode(text).unwrap();
    for path in [
        fixtures().join("hf_rwkv7_fla"),
        fixtures().join("hf_rwkv7_sharded"),
        fixtures().join("gguf_rwkv7/model-q8_0.gguf"),
        fixtures().join("gguf_rwkv6/model-f32.gguf"),
    ] {
        let checkpoint = Checkpoint::open(&path).unwrap();
        let tokenizer = checkpoint.tokenizer().unwrap().expect("a tokenizer");
        assert_eq!(tokenizer.vocab_size(), 256, "{}", path.display());
        for id in 1..256u32 {
            assert_eq!(
                tokenizer.decode(&[id]).unwrap(),
                vocab.decode(&[id]).unwrap(),
                "{} id {id}",
                path.display()
            );
        }
        assert_eq!(tokenizer.encode(text).unwrap(), want, "{}", path.display());
    }
    // Official files carry none.
    let official = Checkpoint::open(fixtures().join("rwkv7/weights.safetensors")).unwrap();
    assert!(official.tokenizer().unwrap().is_none());
}

fn load_err(path: &Path) -> LoadError {
    let device = rwkv_burn::DeviceSpec::Flex.device().unwrap();
    match rwkv_burn::load_model(path, &device) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e,
    }
}

/// A checkpoint with one tensor no model reads is refused, naming it; allowed, it loads.
#[test]
fn unknown_tensors_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = read(&fixtures().join("rwkv7/weights.safetensors")).unwrap();
    let extra = tensors
        .iter()
        .find(|t| t.name == "blocks.1.att.k_k")
        .unwrap()
        .data
        .clone();
    tensors.push(NamedTensor::new("blocks.1.att.deep_emb", extra));
    let path = dir.path().join("extra.safetensors");
    write(&path, &tensors).unwrap();
    match load_err(&path) {
        LoadError::UnusedTensors { names, .. } => assert_eq!(names, ["blocks.1.att.deep_emb"]),
        other => panic!("expected UnusedTensors, got {other}"),
    }
    let device = rwkv_burn::DeviceSpec::Flex.device().unwrap();
    let checkpoint = Checkpoint::open(&path).unwrap().allow_unused();
    rwkv_burn::load::load_checkpoint(&checkpoint, &device).unwrap();

    // An unmerged LoRA in a GGUF or HF layout is named in that layout's words.
    let folder = copy_folder("hf_rwkv7_fla", dir.path());
    let weights = folder.join("model.safetensors");
    let mut tensors = read(&weights).unwrap();
    let extra = tensors[0].data.clone();
    tensors.push(NamedTensor::new("model.layers.0.attn.r_proj.lora_A", extra));
    write(&weights, &tensors).unwrap();
    match load_err(&folder) {
        LoadError::UnusedTensors { names, .. } => {
            assert_eq!(names, ["model.layers.0.attn.r_proj.lora_A"])
        }
        other => panic!("expected UnusedTensors, got {other}"),
    }
}

fn copy_folder(name: &str, into: &Path) -> PathBuf {
    let from = fixtures().join(name);
    let to = into.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        std::fs::copy(entry.path(), &target).unwrap();
        let mut perms = std::fs::metadata(&target).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&target, perms).unwrap();
    }
    to
}

/// Edits a JSON file of a copied folder.
fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

#[test]
fn bad_hugging_face_folders_are_refused_with_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let expect = |folder: &Path, needle: &str| {
        let err = load_err(folder);
        let text = err.to_string();
        assert!(
            matches!(err, LoadError::BadConfig { .. }) && text.contains(needle),
            "{needle}: {text}"
        );
    };
    // A config that disagrees with the tensors, field by field.
    for (field, value) in [
        ("hidden_size", 128),
        ("num_hidden_layers", 3),
        ("vocab_size", 65536),
        ("head_dim", 64),
        ("decay_low_rank_dim", 64),
        ("v_low_rank_dim", 32),
    ] {
        let folder = copy_folder("hf_rwkv7_hf", &tmp.path().join(field));
        edit_json(&folder.join("config.json"), |c| c[field] = value.into());
        expect(&folder, &format!("config.json says {field} = {value}"));
    }
    let index = "model.safetensors.index.json";
    let shard2 = "model-00002-of-00002.safetensors";
    // A missing shard.
    let folder = copy_folder("hf_rwkv7_sharded", &tmp.path().join("missing"));
    std::fs::remove_file(folder.join(shard2)).unwrap();
    expect(&folder, "is missing");
    // An index that names a tensor no shard has.
    let folder = copy_folder("hf_rwkv7_sharded", &tmp.path().join("phantom"));
    edit_json(&folder.join(index), |i| {
        i["weight_map"]["model.layers.0.attn.phantom"] = shard2.into()
    });
    expect(&folder, "does not hold it");
    // Two shards with the same tensor.
    let folder = copy_folder("hf_rwkv7_sharded", &tmp.path().join("twice"));
    let head = read(&folder.join(shard2))
        .unwrap()
        .into_iter()
        .find(|t| t.name == "lm_head.weight")
        .unwrap();
    let extra = NamedTensor::new("model.norm.extra", head.data.clone());
    write(&folder.join("model-extra.safetensors"), &[head, extra]).unwrap();
    edit_json(&folder.join(index), |i| {
        i["weight_map"]["model.norm.extra"] = "model-extra.safetensors".into()
    });
    expect(&folder, "is in both");
    // A shard outside the folder.
    let folder = copy_folder("hf_rwkv7_sharded", &tmp.path().join("escape"));
    edit_json(&folder.join(index), |i| {
        i["weight_map"]["lm_head.weight"] = "../x.safetensors".into()
    });
    expect(&folder, "not a file name");
}

/// A GGUF file rebuilt from parts, so that one part at a time can be damaged.
struct GgufParts {
    version: u32,
    metadata: Vec<(String, Value)>,
    /// name, ne, ggml type id, data.
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
    /// Overrides: tensor count, offset of tensor 0.
    tensor_count: Option<u64>,
    first_offset: Option<u64>,
}

impl GgufParts {
    fn from_file(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap();
        let gguf = Gguf::parse(&bytes, path).unwrap();
        Self {
            version: gguf.version,
            metadata: gguf.metadata.clone(),
            tensors: gguf
                .tensors
                .iter()
                .map(|t| {
                    let ne = t.ne.iter().map(|&d| d as u64).collect();
                    (
                        t.name.clone(),
                        ne,
                        t.kind.id(),
                        bytes[t.start..t.end].to_vec(),
                    )
                })
                .collect(),
            tensor_count: None,
            first_offset: None,
        }
    }

    fn set(&mut self, key: &str, value: Value) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key.into(), value)),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        fn value(out: &mut Vec<u8>, v: &Value, tagged: bool) {
            let tag = |out: &mut Vec<u8>, t: u32| {
                if tagged {
                    out.extend(t.to_le_bytes())
                }
            };
            match v {
                Value::Uint(x) => {
                    tag(out, 4);
                    out.extend((*x as u32).to_le_bytes())
                }
                Value::Int(x) => {
                    tag(out, 5);
                    out.extend((*x as i32).to_le_bytes())
                }
                Value::Float(x) => {
                    tag(out, 6);
                    out.extend((*x as f32).to_le_bytes())
                }
                Value::Bool(x) => {
                    tag(out, 7);
                    out.push(*x as u8)
                }
                Value::String(s) => {
                    tag(out, 8);
                    string(out, s)
                }
                Value::Array(items) => {
                    tag(out, 9);
                    let item = match items.first() {
                        Some(Value::Int(_)) => 5u32,
                        Some(Value::String(_)) => 8,
                        Some(Value::Float(_)) => 6,
                        _ => 4,
                    };
                    out.extend(item.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    for i in items {
                        value(out, i, false);
                    }
                }
            }
        }
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        let count = self.tensor_count.unwrap_or(self.tensors.len() as u64);
        out.extend(count.to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            string(&mut out, k);
            value(&mut out, v, true);
        }
        let mut offset = 0u64;
        let mut data = Vec::new();
        for (i, (name, ne, kind, bytes)) in self.tensors.iter().enumerate() {
            string(&mut out, name);
            out.extend((ne.len() as u32).to_le_bytes());
            for d in ne {
                out.extend(d.to_le_bytes());
            }
            out.extend(kind.to_le_bytes());
            let at = match (i, self.first_offset) {
                (0, Some(o)) => o,
                _ => offset,
            };
            out.extend(at.to_le_bytes());
            data.extend(bytes);
            data.resize(data.len().next_multiple_of(32), 0);
            offset = data.len() as u64;
        }
        out.resize(out.len().next_multiple_of(32), 0);
        out.extend(data);
        out
    }
}

#[test]
fn bad_gguf_files_are_refused_with_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let source = fixtures().join("gguf_rwkv7/model-q8_0.gguf");
    let path = tmp.path().join("bad.gguf");
    let parts = || GgufParts::from_file(&source);
    let check = |bytes: Vec<u8>, what: &str, ok: &dyn Fn(&LoadError) -> bool| {
        std::fs::write(&path, bytes).unwrap();
        let err = load_err(&path);
        assert!(ok(&err), "{what}: {err}");
        assert!(err.to_string().contains("bad.gguf"), "{what}: {err}");
    };
    let truncated = |needle: &'static str| {
        move |e: &LoadError| {
            matches!(e, LoadError::Truncated { .. }) && e.to_string().contains(needle)
        }
    };
    // Rebuilt unchanged, it loads (so every refusal below is the damage's).
    std::fs::write(&path, parts().bytes()).unwrap();
    let device = rwkv_burn::DeviceSpec::Flex.device().unwrap();
    rwkv_burn::load_model(&path, &device).unwrap();

    let mut bytes = parts().bytes();
    bytes[3] = b'X';
    check(bytes, "magic", &|e| {
        matches!(e, LoadError::NotACheckpoint { .. })
    });
    let mut p = parts();
    p.version = 4;
    check(p.bytes(), "version", &|e| {
        e.to_string().contains("GGUF version 4")
    });
    let mut p = parts();
    p.tensor_count = Some(1 << 40);
    check(p.bytes(), "tensor count", &truncated("tensors declared"));
    let mut bytes = parts().bytes();
    // The first key's length (after magic, version and the two counts).
    bytes[24..32].copy_from_slice(&(1u64 << 50).to_le_bytes());
    check(bytes, "key length", &truncated("string bytes declared"));
    let mut p = parts();
    p.set(
        "tokenizer.ggml.tokens",
        Value::Array(vec![Value::String("a".into())]),
    );
    let mut bytes = p.bytes();
    let at = find(&bytes, b"tokenizer.ggml.tokens") + "tokenizer.ggml.tokens".len() + 8;
    bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    check(bytes, "array length", &truncated("array items declared"));
    let mut p = parts();
    p.first_offset = Some(1 << 40);
    check(p.bytes(), "offset", &truncated("needs bytes"));
    let mut p = parts();
    p.first_offset = Some(3);
    check(
        p.bytes(),
        "alignment",
        &truncated("not a multiple of the alignment"),
    );
    let mut p = parts();
    p.tensors[0].2 = 99;
    check(
        p.bytes(),
        "unknown type",
        &truncated("unknown ggml type 99"),
    );
    let mut p = parts();
    p.tensors[0].2 = 10;
    check(
        p.bytes(),
        "Q2_K",
        &|e| matches!(e, LoadError::UnsupportedDType { dtype, .. } if dtype.starts_with("Q2_K")),
    );
    let mut p = parts();
    p.tensors[0].2 = 12;
    check(p.bytes(), "Q4_K rows", &truncated("not whole Q4_K blocks"));
    let mut p = parts();
    p.tensors[0].1 = vec![1 << 40, 1 << 40];
    check(p.bytes(), "dims", &truncated("hold more values"));
    let mut p = parts();
    p.tensors[0].1 = vec![1 << 32, 1 << 32, 1 << 32, 1 << 32];
    check(p.bytes(), "dims overflow", &truncated("hold more values"));
    let mut p = parts();
    p.set("general.architecture", Value::String("llama".into()));
    check(p.bytes(), "llama", &|e| {
        matches!(e, LoadError::UnknownArchitecture { .. }) && e.to_string().contains("'llama'")
    });
    let mut p = parts();
    p.set("rwkv7.block_count", Value::Uint(3));
    check(p.bytes(), "block count", &|e| {
        matches!(e, LoadError::BadConfig { .. }) && e.to_string().contains("block_count")
    });
    let mut p = parts();
    p.set("rwkv7.wkv.head_size", Value::Uint(0));
    check(p.bytes(), "head size", &|e| {
        e.to_string().contains("head_size")
    });
    let mut p = parts();
    let extra = p.tensors[0].clone();
    p.tensors.push(extra);
    check(p.bytes(), "duplicate", &truncated("twice"));
    let mut p = parts();
    let mut extra = p.tensors[0].clone();
    extra.0 = "blk.0.time_mix_deep_emb.weight".into();
    p.tensors.push(extra);
    check(
        p.bytes(),
        "unknown tensor",
        &|e| matches!(e, LoadError::UnusedTensors { names, .. } if names == &["blk.0.time_mix_deep_emb.weight"]),
    );
    let mut bytes = parts().bytes();
    bytes.truncate(bytes.len() - 100);
    check(bytes, "truncated", &truncated("needs bytes"));
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

/// llama.cpp divides RWKV-6 block `i`'s output matrices by `2^(i / rescale_every_n_layers)`;
/// loading multiplies them back exactly, in F32 files and in Q8_0 blocks (whose f16 scales
/// carry the factor).
#[test]
fn rwkv6_rescaled_gguf_files_load_the_original_weights() {
    let tmp = tempfile::tempdir().unwrap();
    for kind in ["f32", "q8_0"] {
        let source = fixtures().join(format!("gguf_rwkv6/model-{kind}.gguf"));
        let mut parts = GgufParts::from_file(&source);
        parts.set("rwkv6.rescale_every_n_layers", Value::Uint(1));
        for (name, _, ty, data) in &mut parts.tensors {
            if !(name == "blk.1.time_mix_output.weight" || name == "blk.1.channel_mix_value.weight")
            {
                continue;
            }
            match *ty {
                0 => {
                    for v in data.chunks_exact_mut(4) {
                        let x = f32::from_le_bytes(v.try_into().unwrap()) / 2.0;
                        v.copy_from_slice(&x.to_le_bytes());
                    }
                }
                8 => {
                    for block in data.chunks_exact_mut(34) {
                        let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32() / 2.0;
                        block[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
                    }
                }
                other => panic!("{name}: type {other}"),
            }
        }
        let path = tmp.path().join(format!("rescaled-{kind}.gguf"));
        std::fs::write(&path, parts.bytes()).unwrap();
        let (original, rescaled) = (
            Checkpoint::open(&source).unwrap(),
            Checkpoint::open(&path).unwrap(),
        );
        for name in original.names() {
            assert_eq!(
                original.read_f32(name).unwrap(),
                rescaled.read_f32(name).unwrap(),
                "{kind}: {name}"
            );
        }
        assert_eq!(
            rescaled.block_format("blocks.1.att.output.weight"),
            original.block_format("blocks.1.att.output.weight")
        );
    }
}

/// A Python with llama.cpp's gguf-py (`scripts/setup-torch.sh` installs it into the tests'
/// venv). Missing, the K-quant test says so and passes, except in CI (`CI` set), where
/// setup installed it and its absence is a failure.
fn python_with_gguf() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = std::env::var_os("RWKV_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("HOME")
                .map(|h| Path::new(&h).join(".cache/rwkv-burn/torch-venv/bin/python")),
        )
        .collect();
    let found = candidates.iter().find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import gguf"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no Python with gguf among {candidates:?}; run scripts/setup-torch.sh"
        );
        eprintln!("skipped: no Python with gguf among {candidates:?}");
    }
    found.cloned()
}

/// Q4_K, Q5_K and Q6_K matrices (random blocks, sane scales) read back bit-identical to
/// gguf-py's dequantization, and the model built from them runs.
#[test]
fn k_quantized_gguf_tensors_match_ggml_dequantization() {
    let Some(python) = python_with_gguf() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = rwkv_burn::random::SplitMix64::new(0x4b5);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ggml_dequantize.py");
    let scale = |rng: &mut rwkv_burn::random::SplitMix64| {
        let unit = (rng.next_u64() % 1000) as f32 / 1000.0;
        half::f16::from_f32(1e-3 + 0.05 * unit).to_le_bytes()
    };
    for (kind, id, block_bytes) in [
        ("Q4_K", 12u32, 144usize),
        ("Q5_K", 13, 176),
        ("Q6_K", 14, 210),
    ] {
        let mut parts = GgufParts::from_file(&fixtures().join("gguf_rwkv7/model-f32.gguf"));
        let mut blocks = Vec::new();
        for (name, ne, ty, data) in &mut parts.tensors {
            if !name.ends_with("channel_mix_value.weight") {
                continue;
            }
            // ne [F = 256, C = 64]: one super-block a row.
            assert_eq!(ne[0], 256);
            let rows = ne[1] as usize;
            let mut bytes: Vec<u8> = (0..rows * block_bytes)
                .map(|_| rng.next_u64() as u8)
                .collect();
            for block in bytes.chunks_exact_mut(block_bytes) {
                if id == 14 {
                    block[208..210].copy_from_slice(&scale(&mut rng));
                } else {
                    block[0..2].copy_from_slice(&scale(&mut rng));
                    block[2..4].copy_from_slice(&scale(&mut rng));
                }
            }
            *ty = id;
            *data = bytes.clone();
            blocks.push((name.clone(), rows, bytes));
        }
        let path = tmp.path().join(format!("{kind}.gguf"));
        std::fs::write(&path, parts.bytes()).unwrap();
        let checkpoint = Checkpoint::open(&path).unwrap();
        for (name, rows, bytes) in blocks {
            let (raw, out) = (tmp.path().join("raw.bin"), tmp.path().join("out.bin"));
            std::fs::write(&raw, &bytes).unwrap();
            let run = std::process::Command::new(&python)
                .arg(&script)
                .args([
                    kind,
                    raw.to_str().unwrap(),
                    &rows.to_string(),
                    out.to_str().unwrap(),
                ])
                .output()
                .unwrap();
            assert!(
                run.status.success(),
                "{}",
                String::from_utf8_lossy(&run.stderr)
            );
            let want: Vec<u32> = std::fs::read(&out)
                .unwrap()
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let official = name
                .replace("blk.", "blocks.")
                .replace("channel_mix_value", "ffn.value");
            let (got, shape) = checkpoint.read_f32(&official).unwrap();
            assert_eq!(shape, [64, 256]);
            let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            assert!(got == want, "{kind} {name}: differs from gguf-py");
        }
        let flex = rwkv_burn::DeviceSpec::Flex.device().unwrap();
        let config = rwkv_burn::load::detect_config(&checkpoint).unwrap();
        for format in [rwkv_burn::WeightFormat::F32, rwkv_burn::WeightFormat::Q8] {
            let (model, _) =
                rwkv_burn::model::build_with(&checkpoint, &config, &flex, format).unwrap();
            let mut state = rwkv_burn::State::zeros(&config, 1, &flex);
            let tokens = crate::common::token_tensor(&[1, 2, 3], 1, &flex);
            let logits = model
                .forward(tokens, &mut state)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            assert!(logits.iter().all(|v| v.is_finite()), "{kind} {format}");
        }
    }
}

/// Older fla checkpoints keep the six token-shift mixes fused in `attn.x_x` `[6, C]` (rows r,
/// w, k, v, a, g; fla's `RWKV7Attention` splits them the same way): the fused form reads back
/// the official tensors.
#[test]
fn fused_fla_mixes_split_into_the_official_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = copy_folder("hf_rwkv7_fla", tmp.path());
    let weights = folder.join("model.safetensors");
    let tensors = read(&weights).unwrap();
    let mut fused: Vec<NamedTensor> = Vec::new();
    for layer in 0..2 {
        let mut values = Vec::new();
        for x in ["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"] {
            let name = format!("model.layers.{layer}.attn.{x}");
            let t = tensors.iter().find(|t| t.name == name).unwrap();
            values.extend(t.data.clone().try_to_vec::<f32>().unwrap());
        }
        let c = values.len() / 6;
        fused.push(NamedTensor::new(
            format!("model.layers.{layer}.attn.x_x"),
            burn::tensor::TensorData::new(values, [6, c]),
        ));
    }
    let mut rest: Vec<NamedTensor> = tensors
        .into_iter()
        .filter(|t| !t.name.contains(".attn.x_") || t.name.ends_with("x_x"))
        .collect();
    rest.extend(fused);
    write(&weights, &rest).unwrap();
    let (ours, official) = (
        Checkpoint::open(&folder).unwrap(),
        Checkpoint::open(fixtures().join("hf_rwkv7_fla")).unwrap(),
    );
    assert_eq!(
        ours.names().collect::<Vec<_>>(),
        official.names().collect::<Vec<_>>()
    );
    for name in official.names() {
        assert_eq!(
            ours.read_f32(name).unwrap(),
            official.read_f32(name).unwrap(),
            "{name}"
        );
    }
    // Both forms at once hold one tensor twice.
    let mut both = read(&fixtures().join("hf_rwkv7_fla/model.safetensors")).unwrap();
    both.push(rest.pop().unwrap());
    write(&weights, &both).unwrap();
    let err = load_err(&folder).to_string();
    assert!(err.contains("both hold"), "{err}");
}

/// BF16 GGUF tensors are read as stored: the model runs in bf16 by default, on the bf16
/// values of the F32 file.
#[test]
fn bf16_gguf_tensors_load_as_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let source = fixtures().join("gguf_rwkv7/model-f32.gguf");
    let mut parts = GgufParts::from_file(&source);
    for (_, ne, ty, data) in &mut parts.tensors {
        if ne.len() == 2 && ne[0] % 32 == 0 && ne[1] > 1 {
            *ty = 30;
            *data = data
                .chunks_exact(4)
                .flat_map(|c| {
                    let v = f32::from_le_bytes(c.try_into().unwrap());
                    half::bf16::from_f32(v).to_le_bytes()
                })
                .collect();
        }
    }
    let path = tmp.path().join("bf16.gguf");
    std::fs::write(&path, parts.bytes()).unwrap();
    let (bf16, f32) = (
        Checkpoint::open(&path).unwrap(),
        Checkpoint::open(&source).unwrap(),
    );
    assert_eq!(
        rwkv_burn::load::stored_format(&bf16),
        rwkv_burn::WeightFormat::Bf16
    );
    for name in ["blocks.0.att.key.weight", "head.weight", "blocks.1.att.w1"] {
        let want: Vec<f32> = f32
            .read_f32(name)
            .unwrap()
            .0
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        assert_eq!(bf16.read_f32(name).unwrap().0, want, "{name}");
    }
    let flex = rwkv_burn::DeviceSpec::Flex.device().unwrap();
    let config = rwkv_burn::load::detect_config(&bf16).unwrap();
    let (model, _) =
        rwkv_burn::model::build_with(&bf16, &config, &flex, rwkv_burn::WeightFormat::Bf16).unwrap();
    assert_eq!(model.head.format(), rwkv_burn::WeightFormat::Bf16);
}
