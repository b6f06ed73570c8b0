//! The shapes of released RWKV models, so benchmarks and tests can build a random model of a
//! real size without a checkpoint.

use crate::config::{LoraRanks, RwkvConfig, Version};

/// Preset names: `<version>-<size>`, e.g. `4-169m`, `7-0.1b`.
pub const PRESET_NAMES: [&str; 21] = [
    "4-169m", "4-430m", "4-1.5b", "4-3b", "4-7b", "4-14b", //
    "5-0.1b", "5-0.4b", "5-1.5b", "5-2.9b", "5-7.2b", //
    "6-0.1b", "6-0.4b", "6-1.5b", "6-2.9b", "6-7.2b", //
    "7-0.1b", "7-0.4b", "7-1.5b", "7-2.9b", "7-7.2b",
];

/// The configuration of a released model size, or `None` for an unknown name.
pub fn preset(name: &str) -> Option<RwkvConfig> {
    let (version, size) = name.split_once('-')?;
    let version = match version {
        "4" => Version::V4,
        "5" => Version::V5 { minor: 2 },
        "6" => Version::V6,
        "7" => Version::V7,
        _ => return None,
    };
    let (n_layer, n_embd) = match (version, size.to_ascii_lowercase().as_str()) {
        (Version::V4, "169m") => (12, 768),
        (Version::V4, "430m") => (24, 1024),
        (Version::V4, "1.5b") => (24, 2048),
        (Version::V4, "3b") => (32, 2560),
        (Version::V4, "7b") => (32, 4096),
        (Version::V4, "14b") => (40, 5120),
        (Version::V4, _) => return None,
        (_, "0.1b") => (12, 768),
        (_, "0.4b") => (24, 1024),
        (_, "1.5b") => (24, 2048),
        (_, "2.9b") => (32, 2560),
        (_, "7.2b") => (32, 4096),
        _ => return None,
    };
    Some(config_for(version, n_layer, n_embd))
}

/// A configuration with the widths the official training code derives from `n_embd`.
pub fn config_for(version: Version, n_layer: usize, n_embd: usize) -> RwkvConfig {
    let c = n_embd;
    let (vocab_size, dim_ffn, head_size) = match version {
        Version::V4 => (50277, 4 * c, None),
        Version::V5 { .. } | Version::V6 => (65536, (c * 7 / 2) / 32 * 32, Some(64)),
        Version::V7 => (65536, 4 * c, Some(64)),
    };
    // RWKV-LM's choices: fixed ranks for v6 (doubled from 4096 wide), sqrt/power laws for v7.
    let rounded = |x: f64| ((x / 32.0).round() as usize * 32).max(32);
    let lora = match version {
        Version::V6 => LoraRanks {
            mix: if c >= 4096 { 64 } else { 32 },
            decay: if c >= 4096 { 128 } else { 64 },
            ..LoraRanks::default()
        },
        Version::V7 => LoraRanks {
            decay: rounded(1.8 * (c as f64).sqrt()),
            a: rounded(1.8 * (c as f64).sqrt()),
            value: rounded(1.3 * (c as f64).sqrt()),
            gate: rounded(0.6 * (c as f64).powf(0.8)),
            ..LoraRanks::default()
        },
        _ => LoraRanks::default(),
    };
    RwkvConfig {
        version,
        n_layer,
        n_embd,
        dim_att: c,
        dim_ffn,
        vocab_size,
        head_size,
        lora,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_resolves_and_sizes_match_the_releases() {
        for name in PRESET_NAMES {
            assert!(preset(name).is_some(), "{name}");
        }
        assert!(preset("7-3b").is_none());
        let v7 = preset("7-0.1b").unwrap();
        assert_eq!(
            (v7.lora.decay, v7.lora.a, v7.lora.value, v7.lora.gate),
            (64, 64, 32, 128)
        );
        assert_eq!(preset("6-1.5b").unwrap().dim_ffn, 7168);
        assert_eq!(preset("4-169m").unwrap().vocab_size, 50277);
    }
}
