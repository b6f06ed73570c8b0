//! Tokenizers against the official package's and `tokenizers`' outputs.

use crate::common::fixtures;
use rwkv_burn::tokenizer::{
    NeoxTokenizer, StreamDecoder, Tokenizer, WorldTokenizer, load_tokenizer,
};
use serde_json::Value;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn cases(file: &str) -> Value {
    let path = fixtures().join("tokenizer").join(file);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn world() -> WorldTokenizer {
    WorldTokenizer::from_file(fixtures().join("tokenizer/rwkv_vocab_v20230424.txt")).unwrap()
}

#[test]
fn world_vocab_parses_to_the_package_bytes() {
    let t = world();
    let tsv =
        std::fs::read_to_string(fixtures().join("tokenizer/rwkv_vocab_v20230424.hex.tsv")).unwrap();
    let mut count = 0;
    for line in tsv.lines() {
        let (id, bytes) = line.split_once('\t').unwrap();
        let id: u32 = id.parse().unwrap();
        assert_eq!(t.token_bytes(id).unwrap(), hex(bytes), "token {id}");
        count += 1;
    }
    assert_eq!(count, 65529);
    assert_eq!(t.vocab_size(), 65530);
}

#[test]
fn world_cases_encode_and_decode_exactly() {
    let t = world();
    let all = cases("world_cases.json");
    for case in all["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let input = match case["input_bytes_hex"].as_str() {
            Some(h) => hex(h),
            None => case["text"].as_str().unwrap().as_bytes().to_vec(),
        };
        let expected = ids(&case["ids"]);
        assert_eq!(t.encode(&input).unwrap(), expected, "{name}");
        let pieces: Vec<Vec<u8>> = case["token_bytes_hex"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| hex(h.as_str().unwrap()))
            .collect();
        for (id, piece) in expected.iter().zip(&pieces) {
            assert_eq!(&t.token_bytes(*id).unwrap(), piece, "{name}: token {id}");
        }
        assert_eq!(t.decode_bytes(&expected).unwrap(), input, "{name}: bytes");
        assert_eq!(
            t.decode(&expected).unwrap(),
            case["decoded_text"].as_str().unwrap(),
            "{name}"
        );
    }
    for case in all["decode_partial_cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let expected = ids(&case["ids"]);
        assert_eq!(
            t.encode(&hex(case["input_bytes_hex"].as_str().unwrap()))
                .unwrap(),
            expected,
            "{name}"
        );
        let bytes = t.decode_bytes(&expected).unwrap();
        assert_eq!(
            bytes,
            hex(case["decoded_bytes_hex"].as_str().unwrap()),
            "{name}"
        );
        assert_eq!(
            t.decode(&expected).unwrap(),
            case["decoded_text"].as_str().unwrap(),
            "{name}"
        );
        // Streaming holds the incomplete tail back instead of printing a replacement.
        let mut stream = StreamDecoder::new();
        let shown: String = expected
            .iter()
            .map(|id| stream.push(&t.token_bytes(*id).unwrap()))
            .collect();
        assert!(!shown.contains('\u{fffd}'), "{name}: {shown:?}");
    }
    assert!(
        t.token_bytes(0).is_err(),
        "id 0 is end-of-text, not a token"
    );
}

#[test]
fn neox_cases_match_tokenizers() {
    let path = fixtures().join("tokenizer/20B_tokenizer.json");
    let t = NeoxTokenizer::from_file(&path).unwrap();
    assert_eq!(t.vocab_size(), 50277);
    for case in cases("neox20b_cases.json")["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let Some(text) = case["text"].as_str() else {
            continue;
        };
        let expected = ids(&case["ids"]);
        assert_eq!(t.encode(text.as_bytes()).unwrap(), expected, "{name}");
        assert_eq!(
            t.decode(&expected).unwrap(),
            case["decoded_text"].as_str().unwrap(),
            "{name}"
        );
        // Token bytes streamed and joined give the same text as decode.
        let mut stream = StreamDecoder::new();
        let mut streamed: String = expected
            .iter()
            .map(|id| stream.push(&t.token_bytes(*id).unwrap()))
            .collect();
        streamed.push_str(&stream.finish());
        assert_eq!(
            streamed,
            case["decoded_text"].as_str().unwrap(),
            "{name}: streamed"
        );
    }
    assert!(t.encode(&[0xff, 0xfe]).is_err(), "invalid UTF-8 is refused");
}

#[test]
fn load_tokenizer_recognises_both_formats() {
    let dir = fixtures().join("tokenizer");
    assert_eq!(
        load_tokenizer(dir.join("20B_tokenizer.json"))
            .unwrap()
            .vocab_size(),
        50277
    );
    assert_eq!(
        load_tokenizer(dir.join("rwkv_vocab_v20230424.txt"))
            .unwrap()
            .vocab_size(),
        65530
    );
    assert!(load_tokenizer(dir.join("missing.txt")).is_err());
}
