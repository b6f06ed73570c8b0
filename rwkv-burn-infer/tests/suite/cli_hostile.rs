//! The `rwkv` binary against hostile use: closed and full output streams, outputs that name
//! inputs or special files, numbers out of range, endless inputs, and signals. Each must end
//! with a typed error (or, for a closed stdout, quietly with status 141), never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn fixtures() -> PathBuf {
    std::env::var_os("RWKV_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
}

fn model() -> String {
    fixtures()
        .join("rwkv7/weights.safetensors")
        .to_string_lossy()
        .into_owned()
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rwkv"));
    command.args(args).stdin(Stdio::null());
    command
}

fn no_panic(args: &[&str], output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("panicked") && output.status.code() != Some(101),
        "rwkv {args:?} panicked: {stderr}"
    );
    assert!(
        output.status.code().is_some(),
        "rwkv {args:?} died by a signal"
    );
}

/// Runs `rwkv args`, expecting it to fail with a message containing `needle`.
fn refused(args: &[&str], needle: &str) -> String {
    let output = command(args).output().unwrap();
    no_panic(args, &output);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "rwkv {args:?}: {stderr}");
    assert!(stderr.contains(needle), "rwkv {args:?}: {stderr}");
    stderr
}

/// Every command that prints, with arguments that make it print.
fn printing_commands(dir: &Path) -> Vec<(Vec<String>, Option<&'static [u8]>)> {
    let text = dir.join("text.txt");
    std::fs::write(&text, "Hello there, a text of some bytes.").unwrap();
    let text = text.to_string_lossy().into_owned();
    let m = model();
    let v = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        (
            v(&["generate", "--prompt", "Hi", "--max-tokens", "8"]),
            None,
        ),
        (v(&["info", "--model", &m]), None),
        (v(&["tokenize", "--vocab", "bytes", "--input", &text]), None),
        (
            v(&["detokenize", "--vocab", "bytes", "--ids", "72,105"]),
            None,
        ),
        (v(&["eval", "--model", &m, "--input", &text]), None),
        (
            v(&[
                "bench",
                "--model",
                &m,
                "--prefill",
                "4",
                "--decode",
                "2",
                "--batch",
                "1",
            ]),
            None,
        ),
        (
            v(&["chat", "--model", &m, "--max-tokens", "4"]),
            Some(b"hi\n".as_slice()),
        ),
    ]
}

fn run_with(args: &[String], stdin: Option<&[u8]>, stdout: Stdio, stderr: Stdio) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_rwkv"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        let _ = input.write_all(bytes);
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// `rwkv ... | head -c 0`: the reader has gone before anything is written.
#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    for (args, stdin) in printing_commands(dir.path()) {
        // A pipe whose read end is closed at once.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = run_with(&args, stdin, Stdio::from(writer), Stdio::piped());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(141), "rwkv {args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("error"),
            "{stderr}"
        );
    }
}

/// `> /dev/full`: a clear error and a failing status, for every command; with stderr full
/// too, still no panic.
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_is_an_error_not_a_lost_output() {
    let dir = tempfile::tempdir().unwrap();
    let full = || Stdio::from(std::fs::File::create("/dev/full").unwrap());
    for (args, stdin) in printing_commands(dir.path()) {
        let output = run_with(&args, stdin, full(), Stdio::piped());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "rwkv {args:?}: {stderr}");
        assert!(stderr.contains("writing to standard output"), "{stderr}");
        assert_eq!(stderr.matches("No space left").count(), 1, "{stderr}");
        let output = run_with(&args, stdin, full(), full());
        assert_eq!(
            output.status.code(),
            Some(1),
            "rwkv {args:?} with stderr full"
        );
    }
}

#[test]
fn outputs_never_replace_inputs_directories_or_read_only_files() {
    let dir = tempfile::tempdir().unwrap();
    let model_copy = dir.path().join("model.safetensors");
    std::fs::copy(model(), &model_copy).unwrap();
    let m = model_copy.to_string_lossy().into_owned();
    let before = std::fs::read(&model_copy).unwrap();
    let logits = |out: &str| {
        vec!["logits", "--model", &m, "--tokens", "1,2", "--out", out]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let run = |v: Vec<String>| {
        let args: Vec<&str> = v.iter().map(String::as_str).collect();
        let output = command(&args).output().unwrap();
        no_panic(&args, &output);
        output
    };
    // The model itself, and a symlink to it.
    let output = run(logits(&m));
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("input"));
    #[cfg(unix)]
    {
        let link = dir.path().join("link.safetensors");
        std::os::unix::fs::symlink(&model_copy, &link).unwrap();
        let output = run(logits(&link.to_string_lossy()));
        assert_eq!(output.status.code(), Some(1));
    }
    assert_eq!(std::fs::read(&model_copy).unwrap(), before);
    // A directory.
    let output = run(logits(&dir.path().to_string_lossy()));
    assert_eq!(output.status.code(), Some(1));
    // A read-only file stays as it was.
    let ro = dir.path().join("ro.safetensors");
    std::fs::write(&ro, b"keep").unwrap();
    let mut perms = std::fs::metadata(&ro).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&ro, perms).unwrap();
    let output = run(logits(&ro.to_string_lossy()));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(std::fs::read(&ro).unwrap(), b"keep");
    // A symlink to a new file's place is written through, and stays a link.
    #[cfg(unix)]
    {
        let target = dir.path().join("real.safetensors");
        std::fs::write(&target, b"old").unwrap();
        let link = dir.path().join("out-link.safetensors");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let output = run(logits(&link.to_string_lossy()));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(std::fs::read(&target).unwrap().len() > 100);
    }
    // A device is written into, not replaced.
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let output = run(logits("/dev/null"));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            std::fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }
    // Nothing but the files made here is left in the folder (no temporaries).
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn state_out_may_be_state_in_but_not_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.safetensors");
    let s = state.to_string_lossy().into_owned();
    let m = model();
    let first = command(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        "Hi",
        "--max-tokens",
        "2",
        "--state-out",
        &s,
    ])
    .output()
    .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let again = command(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        "Hi",
        "--max-tokens",
        "2",
        "--state-in",
        &s,
        "--state-out",
        &s,
    ])
    .output()
    .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // The prompt file is an input too.
    let prompt = dir.path().join("prompt.txt");
    std::fs::write(&prompt, "Hi").unwrap();
    let p = prompt.to_string_lossy().into_owned();
    refused(
        &[
            "generate",
            "--model",
            &m,
            "--prompt-file",
            &p,
            "--state-out",
            &p,
        ],
        "input",
    );
    assert_eq!(std::fs::read(&prompt).unwrap(), b"Hi");
}

#[test]
fn numbers_out_of_range_are_refused() {
    let m = model();
    let gen_with = |flag: &str, value: &str| {
        vec![
            "generate".to_string(),
            "--model".into(),
            m.clone(),
            "--prompt".into(),
            "Hi".into(),
            // `--flag=value`, so that clap takes `-1` as a value, not a flag.
            format!("--{flag}={value}"),
        ]
    };
    for (flag, value) in [
        ("temperature", "nan"),
        ("temperature", "inf"),
        ("temperature", "-1"),
        ("top-p", "2"),
        ("top-p", "nan"),
        ("min-p", "-0.5"),
        ("penalty-decay", "1.5"),
        ("presence-penalty", "inf"),
        ("frequency-penalty", "1e30"),
        ("top-k", "18446744073709551615"),
        ("top-k", "257"),
        ("ban", "256"),
        ("max-tokens", "0"),
        ("prefill-chunk", "0"),
        ("prefill-chunk", "100000000"),
    ] {
        let args = gen_with(flag, value);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&args, flag);
    }
    refused(&["--threads", "100000", "info"], "--threads");
    refused(&["--threads", "0", "info"], "--threads");
    for (flag, value) in [
        ("prefill", "0"),
        ("decode", "0"),
        ("batch", "0"),
        ("batch", "100000"),
    ] {
        refused(&["bench", "--model", &m, &format!("--{flag}"), value], flag);
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let o = out.to_string_lossy().into_owned();
    refused(&["bench", "--model", &m, "--save-model", &o], "preset");
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "some text to score").unwrap();
    let t = text.to_string_lossy().into_owned();
    refused(
        &["eval", "--model", &m, "--input", &t, "--chunk", "0"],
        "--chunk",
    );
    refused(
        &[
            "logits",
            "--model",
            &m,
            "--tokens",
            "1,2",
            "--chunks",
            "18446744073709551615,1",
            "--out",
            &o,
        ],
        "chunk",
    );
    refused(
        &["logits", "--model", &m, "--tokens", "1,999", "--out", &o],
        "999",
    );
}

#[test]
fn endless_and_oversized_inputs_are_refused() {
    #[cfg(unix)]
    {
        refused(&["generate", "--prompt-file", "/dev/zero"], "regular file");
        refused(
            &["tokenize", "--vocab", "bytes", "--input", "/dev/zero"],
            "regular file",
        );
        refused(&["info", "--model", "/dev/zero"], "regular file");
    }
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "abc").unwrap();
    let t = text.to_string_lossy().into_owned();
    for id in ["18446744073709551615", "100000000000", "4194304"] {
        let vocab = dir.path().join(format!("v{id}.txt"));
        std::fs::write(&vocab, format!("1 'a' 1\n{id} 'b' 1\n")).unwrap();
        let v = vocab.to_string_lossy().into_owned();
        refused(&["tokenize", "--vocab", &v, "--input", &t], "id");
    }
}

#[test]
fn bad_state_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let m = model();
    // A state of another model (the RWKV-4 fixture's) for the RWKV-7 model.
    let other = dir.path().join("other-model-state.safetensors");
    let o = other.to_string_lossy().into_owned();
    let v4 = fixtures()
        .join("rwkv4/weights.pth")
        .to_string_lossy()
        .into_owned();
    let made = command(&[
        "generate",
        "--model",
        &v4,
        "--prompt",
        "Hi",
        "--max-tokens",
        "1",
        "--state-out",
        &o,
    ])
    .output()
    .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    refused(
        &[
            "generate",
            "--model",
            &m,
            "--prompt",
            "Hi",
            "--state-in",
            &o,
        ],
        "other-model-state.safetensors",
    );
}

/// SIGTERM while an output is being written leaves neither the output nor its temporary file.
#[cfg(unix)]
#[test]
fn a_signal_during_a_write_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("big.safetensors");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rwkv"))
        .args([
            "bench",
            "--preset",
            "7-0.1b",
            "--prefill",
            "1",
            "--decode",
            "1",
            "--batch",
            "1",
        ])
        .arg("--save-model")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let temporary = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with('.'))
    };
    while !temporary() {
        if start.elapsed().as_secs() > 300 || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("no temporary file appeared while the model was written");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_model_larger_than_the_device_buffers_is_refused_before_it_runs() {
    // Any device, with the limit lowered below the fixture's tensors: the first tensor above
    // it that cannot be split (a low-rank factor here) is named, and nothing runs.
    let m = model();
    let args = [
        "generate",
        "--model",
        &m,
        "--prompt",
        "Hi",
        "--max-tokens",
        "2",
    ];
    let output = command(&args)
        .env(rwkv_burn::device::MAX_BUFFER_ENV, "256")
        .output()
        .unwrap();
    no_panic(&args, &output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("more than the device allows in one (256 bytes)")
            && stderr.contains("tensor '"),
        "{stderr}"
    );

    // The embedding and the projections are held in blocks of rows below the limit
    // (`model::embedding`); one of their rows above it is refused, naming the tensor.
    let output = command(&args)
        .env(rwkv_burn::device::MAX_BUFFER_ENV, "128")
        .output()
        .unwrap();
    no_panic(&args, &output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "tensor 'emb.weight' needs a buffer of 256 bytes, more than the device allows in one (128 bytes)"
        ),
        "{stderr}"
    );
}
