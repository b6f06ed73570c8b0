//! Generation on the fixture models: batching isolation, chat state carry-over, state files,
//! stop strings and seeds.

use burn::tensor::Device;
use rwkv_burn::tokenizer::ByteTokenizer;
use rwkv_burn::{DeviceSpec, Rwkv, State, load_model};
use rwkv_burn_infer::generate::{GenerateOptions, Pipeline, StopReason};
use rwkv_burn_infer::sampler::SamplerConfig;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    std::env::var_os("RWKV_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
}

/// Every compiled device with the fixture models of two generations (vocabulary 256, so the
/// byte-level tokenizer fits).
fn setups() -> Vec<(String, Device, Rwkv)> {
    let mut out = Vec::new();
    for spec in DeviceSpec::available() {
        let device = spec.device().unwrap();
        for version in ["rwkv4", "rwkv7"] {
            let (_, model) = load_model(
                fixtures().join(version).join("weights.safetensors"),
                &device,
            )
            .unwrap();
            out.push((format!("{version} on {spec}"), device.clone(), model));
        }
    }
    out
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampler: SamplerConfig::greedy(),
        stop_tokens: vec![],
        ..GenerateOptions::default()
    }
}

#[test]
fn batched_sequences_do_not_leak_into_each_other() {
    let prompts: Vec<Vec<u32>> = vec![
        b"Hello".map(u32::from).to_vec(),
        b"The quick brown fox".iter().map(|&b| b as u32).collect(),
        vec![7],
    ];
    for (name, device, model) in setups() {
        let pipeline = Pipeline::new(&model, &ByteTokenizer, device.clone());
        let options = greedy(12);
        let batch = pipeline.generate_batch(&prompts, &options).unwrap();
        for (prompt, together) in prompts.iter().zip(&batch) {
            let mut state = State::zeros(&model.config(), 1, &device);
            let alone = pipeline
                .generate(prompt, &mut state, &options, &mut |_| true)
                .unwrap();
            assert_eq!(alone.tokens, together.tokens, "{name}: prompt {prompt:?}");
            assert_eq!(alone.tokens.len(), 12, "{name}");
        }
    }
}

/// The batched path streams each sequence's text, and one sequence can stop early while the
/// others go on to the same tokens as alone.
#[test]
fn batched_sequences_stream_and_stop_one_at_a_time() {
    let prompts: Vec<Vec<u32>> = vec![
        b"In the beginning".iter().map(|&b| b as u32).collect(),
        b"And God said".iter().map(|&b| b as u32).collect(),
        vec![7, 8, 9],
    ];
    for (name, device, model) in setups() {
        let pipeline = Pipeline::new(&model, &ByteTokenizer, device.clone());
        let options = greedy(10);
        let mut streamed = vec![String::new(); prompts.len()];
        let mut calls = vec![0; prompts.len()];
        let batch = pipeline
            .generate_batch_streaming(&prompts, &options, &mut |i, text| {
                streamed[i].push_str(text);
                calls[i] += 1;
                // Sequence 1 stops after its third token.
                !(i == 1 && calls[i] == 3)
            })
            .unwrap();
        assert_eq!(batch[1].stop, StopReason::Cancelled, "{name}");
        assert_eq!(batch[1].tokens.len(), 3, "{name}");
        for (i, (prompt, together)) in prompts.iter().zip(&batch).enumerate() {
            assert_eq!(streamed[i], together.text, "{name}: streamed text {i}");
            let mut state = State::zeros(&model.config(), 1, &device);
            let alone = pipeline
                .generate(prompt, &mut state, &options, &mut |_| true)
                .unwrap();
            let n = together.tokens.len();
            assert_eq!(alone.tokens[..n], together.tokens[..], "{name}: prompt {i}");
            if i != 1 {
                assert_eq!(alone.tokens, together.tokens, "{name}: prompt {i}");
            }
        }
    }
}

#[test]
fn chat_state_carries_over_and_survives_a_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, device, model) in setups() {
        let pipeline = Pipeline::new(&model, &ByteTokenizer, device.clone());
        let config = model.config();
        let turn1: Vec<u32> = b"User: hi\n\nAssistant:"
            .iter()
            .map(|&b| b as u32)
            .collect();
        let turn2: Vec<u32> = b"\n\nUser: more\n\nAssistant:"
            .iter()
            .map(|&b| b as u32)
            .collect();
        let options = greedy(6);

        let mut state = State::zeros(&config, 1, &device);
        let first = pipeline
            .generate(&turn1, &mut state, &options, &mut |_| true)
            .unwrap();
        let path = dir.path().join("chat.safetensors");
        state.save(&path).unwrap();
        let second = pipeline
            .generate(&turn2, &mut state, &options, &mut |_| true)
            .unwrap();

        // The same conversation from scratch, as one prompt.
        let history: Vec<u32> = turn1
            .iter()
            .chain(&first.tokens)
            .chain(&turn2)
            .copied()
            .collect();
        let mut fresh = State::zeros(&config, 1, &device);
        let replay = pipeline
            .generate(&history, &mut fresh, &options, &mut |_| true)
            .unwrap();
        assert_eq!(second.tokens, replay.tokens, "{name}: carried state");

        // And resumed from the saved file.
        let mut loaded = State::load(&path, &config, &device).unwrap();
        let resumed = pipeline
            .generate(&turn2, &mut loaded, &options, &mut |_| true)
            .unwrap();
        assert_eq!(second.tokens, resumed.tokens, "{name}: state file");
    }
}

#[test]
fn stop_strings_end_generation_before_them() {
    for (name, device, model) in setups() {
        let pipeline = Pipeline::new(&model, &ByteTokenizer, device.clone());
        let prompt: Vec<u32> = b"Once upon a time".iter().map(|&b| b as u32).collect();
        let config = model.config();
        let full = pipeline
            .generate(
                &prompt,
                &mut State::zeros(&config, 1, &device),
                &greedy(24),
                &mut |_| true,
            )
            .unwrap();
        // Pick a stop string from the middle of the greedy text, at character boundaries.
        let bounds: Vec<usize> = full.text.char_indices().map(|(i, _)| i).collect();
        assert!(bounds.len() > 8, "{name}: {:?}", full.text);
        let (start, end) = (bounds[4], bounds[7]);
        let stop = full.text[start..end].to_string();
        let first = full.text.find(&stop).unwrap();
        let options = GenerateOptions {
            stop_strings: vec![stop.clone()],
            ..greedy(24)
        };
        let mut streamed = String::new();
        let cut = pipeline
            .generate(
                &prompt,
                &mut State::zeros(&config, 1, &device),
                &options,
                &mut |t| {
                    streamed.push_str(t);
                    true
                },
            )
            .unwrap();
        assert_eq!(cut.stop, StopReason::StopString(stop), "{name}");
        assert_eq!(cut.text, full.text[..first], "{name}");
        assert_eq!(streamed, cut.text, "{name}: streamed text");
    }
}

#[test]
fn seeds_make_sampling_repeatable() {
    for (name, device, model) in setups() {
        let pipeline = Pipeline::new(&model, &ByteTokenizer, device.clone());
        let prompt = [1u32, 2, 3];
        let run = |seed| {
            let options = GenerateOptions {
                max_tokens: 16,
                sampler: SamplerConfig {
                    seed,
                    temperature: 1.5,
                    top_p: 1.0,
                    ..SamplerConfig::default()
                },
                stop_tokens: vec![],
                ..GenerateOptions::default()
            };
            let mut state = State::zeros(&model.config(), 1, &device);
            pipeline
                .generate(&prompt, &mut state, &options, &mut |_| true)
                .unwrap()
                .tokens
        };
        assert_eq!(run(7), run(7), "{name}");
        assert_ne!(run(7), run(8), "{name}");
    }
}

#[test]
fn empty_and_out_of_range_prompts_are_errors() {
    let (_, device, model) = setups().remove(0);
    let pipeline = Pipeline::new(&model, &ByteTokenizer, device.clone());
    let mut state = State::zeros(&model.config(), 1, &device);
    let options = greedy(4);
    assert!(
        pipeline
            .generate(&[], &mut state, &options, &mut |_| true)
            .is_err()
    );
    assert!(
        pipeline
            .generate(&[300], &mut state, &options, &mut |_| true)
            .is_err()
    );
}

#[test]
fn prefix_cache_resumes_from_the_longest_known_prefix() {
    use rwkv_burn_infer::prefix_cache::PrefixCache;
    for (name, device, model) in setups() {
        let pipeline = Pipeline::new(&model, &ByteTokenizer, device.clone());
        let system: Vec<u32> = b"System: be brief.\n\n".iter().map(|&b| b as u32).collect();
        let question: Vec<u32> = system
            .iter()
            .copied()
            .chain(b"User: why?".iter().map(|&b| b as u32))
            .collect();
        let mut cache = PrefixCache::new(4);
        let _ = pipeline.prefill_cached(&system, &mut cache, 8).unwrap();
        assert_eq!(cache.len(), 1);
        let hit = cache
            .lookup(&question)
            .expect("the system prompt is a prefix");
        assert_eq!(hit.len, system.len());
        let (cached_state, cached_logits) =
            pipeline.prefill_cached(&question, &mut cache, 8).unwrap();
        assert_eq!(cache.len(), 2);

        let mut fresh = State::zeros(&model.config(), 1, &device);
        let logits = pipeline
            .prefill(&question, &mut fresh, 8, &mut |_| {})
            .unwrap();
        let close = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= 1e-4 + 1e-4 * y.abs())
        };
        assert!(close(&cached_logits, &logits), "{name}: logits");
        let flat = |s: &State| -> Vec<f32> {
            s.to_official()
                .into_iter()
                .flat_map(|t| t.data.try_to_vec::<f32>().unwrap())
                .collect()
        };
        assert!(close(&flat(&cached_state), &flat(&fresh)), "{name}: state");
    }
}

/// Runs a future to completion on this thread (the browser's event loop stands in for this
/// there); wakes by unparking, so device read-backs that complete later are waited for.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park_timeout(std::time::Duration::from_millis(1));
    }
}

#[test]
fn asynchronous_generation_matches_the_blocking_one() {
    for (name, device, model) in setups() {
        let pipeline = Pipeline::new(&model, &ByteTokenizer, device.clone());
        let prompt: Vec<u32> = b"In the beginning".iter().map(|&b| b as u32).collect();
        let options = GenerateOptions {
            max_tokens: 20,
            sampler: SamplerConfig {
                seed: 7,
                ..SamplerConfig::default()
            },
            stop_tokens: vec![],
            prefill_chunk: 5,
            ..GenerateOptions::default()
        };
        let (mut blocking_state, mut async_state) = (
            State::zeros(&model.config(), 1, &device),
            State::zeros(&model.config(), 1, &device),
        );
        let (mut blocking_text, mut async_text) = (String::new(), String::new());
        let blocking = pipeline
            .generate(&prompt, &mut blocking_state, &options, &mut |t| {
                blocking_text.push_str(t);
                true
            })
            .unwrap();
        let mut pauses = 0;
        let mut collect = |t: &str| {
            async_text.push_str(t);
            true
        };
        let pause = || {
            pauses += 1;
            std::future::ready(())
        };
        let streamed = block_on(pipeline.generate_async(
            &prompt,
            &mut async_state,
            &options,
            &mut collect,
            pause,
        ))
        .unwrap();
        assert_eq!(pauses, 20, "{name}: one pause per generated token");
        assert_eq!(blocking, streamed, "{name}");
        assert_eq!(blocking_text, async_text, "{name}");
        assert_eq!(streamed.tokens.len(), 20, "{name}");
        // The states end in the same place too: the next token's logits agree (to float
        // noise: GPU kernels need not sum in the same order twice).
        let next = |state: &mut State| pipeline.prefill(&[1], state, 8, &mut |_| {}).unwrap();
        let (a, b) = (next(&mut blocking_state), next(&mut async_state));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4 + 1e-4 * y.abs(), "{name}: {x} vs {y}");
        }
    }
}

/// Sequences that join a running batch (as the server's requests do) and leave it in any
/// order decode exactly as they would alone, sampling included.
#[test]
fn sequences_joining_a_running_batch_decode_as_they_would_alone() {
    use rwkv_burn_infer::generate::{Batch, Decoding, read_logits};
    let prompts: Vec<Vec<u32>> = ["Hello", "The quick brown fox", "x", "1 2 3 4"]
        .iter()
        .map(|p| p.bytes().map(u32::from).collect())
        .collect();
    for (name, device, model) in setups() {
        let pipeline = Pipeline::new(&model, &ByteTokenizer, device.clone());
        let options = |i: usize| GenerateOptions {
            max_tokens: 6 + 3 * i,
            sampler: SamplerConfig {
                temperature: if i.is_multiple_of(2) { 0.0 } else { 1.0 },
                seed: i as u64,
                ..SamplerConfig::default()
            },
            stop_tokens: vec![],
            ..GenerateOptions::default()
        };
        let alone: Vec<Vec<u32>> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut state = State::zeros(&model.config(), 1, &device);
                pipeline
                    .generate(p, &mut state, &options(i), &mut |_| true)
                    .unwrap()
                    .tokens
            })
            .collect();
        // Sequence i joins before step 2 * i.
        let mut batch = Batch::empty();
        let mut state = State::zeros(&model.config(), 1, &device);
        let mut lanes = vec![None; prompts.len()];
        let mut results = vec![None; prompts.len()];
        let mut step = 0;
        while results.iter().any(Option::is_none) {
            if step % 2 == 0 && step / 2 < prompts.len() {
                let i = step / 2;
                let mut row = State::zeros(&model.config(), 1, &device);
                let logits = pipeline
                    .prefill(&prompts[i], &mut row, 256, &mut |_| {})
                    .unwrap();
                lanes[i] = Some(batch.join(&mut state, Decoding::new(options(i)), row, logits));
            }
            if let Some(fed) = batch
                .advance(&pipeline, &mut state, &mut |_, _| true)
                .unwrap()
                && batch.wants_logits()
            {
                batch.receive(read_logits(fed).unwrap());
            }
            for (lane, generation) in batch.take_finished(&mut |_, _| true) {
                let i = lanes.iter().position(|l| *l == Some(lane)).unwrap();
                lanes[i] = None; // lane numbers are reused
                results[i] = Some(generation.tokens);
            }
            step += 1;
            assert!(step < 200, "{name}: the batch never finished");
        }
        for (i, (a, r)) in alone.iter().zip(&results).enumerate() {
            assert_eq!(Some(a), r.as_ref(), "{name}: sequence {i}");
        }
    }
}

/// `rwkv chat`'s prompts follow the G1 template: a system turn before the first message,
/// cleaned user text, the thinking prefixes, and after a reply only the part of the turn
/// separator the model has not read.
#[test]
fn chat_prompts_follow_the_g1_template() {
    use rwkv_burn_infer::chat::ChatSession;
    use rwkv_burn_infer::chat_template::{Effort, Think};
    let (_, device, model) = setups().remove(0);
    let pipeline = Pipeline::new(&model, &ByteTokenizer, device.clone());
    let state = State::zeros(&model.config(), 1, &device);
    let session =
        ChatSession::new(&pipeline, state.clone(), greedy(4)).with_system("Be\n\nbrief. ");
    assert_eq!(
        session.prompt(" Hi\r\n\r\nthere "),
        "System: Be\nbrief.\n\nUser: Hi\nthere\n\nAssistant:"
    );
    let thinking =
        ChatSession::new(&pipeline, state.clone(), greedy(4)).with_think(Think::On(Effort::High));
    assert_eq!(
        thinking.prompt("2+2?"),
        "User: 2+2? (think a lot)\n\nAssistant: <think"
    );
    let fake = ChatSession::new(&pipeline, state, greedy(4)).with_think(Think::Fake);
    assert_eq!(fake.prompt("Hi"), "User: Hi\n\nAssistant: <think>\n</think");
    // After a turn the system text is not repeated.
    let mut session = session;
    session.turn("Hi", &mut |_| true).unwrap();
    assert!(
        session
            .prompt("Again")
            .ends_with("User: Again\n\nAssistant:")
    );
    assert!(!session.prompt("Again").contains("System:"));
}
