//! Any bytes given to the GGUF parser give a model description or an error, never a panic,
//! an out-of-bounds tensor or a huge allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.gguf");
    if let Ok((_, _, metadata, tensors)) = deepseek_loader::gguf::parse(data, path) {
        for t in &tensors {
            assert!(t.offset + t.len_bytes <= data.len());
        }
        // The metadata → config translation must not panic either.
        let _ = metadata.len();
    }
});
