//! Any JSON given as a model's config.json gives a config or an error naming a field, never a
//! panic, an overflow or a huge allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = deepseek_loader::ModelConfig::from_json(&v);
    }
});
