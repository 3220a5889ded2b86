//! Any bytes given to the safetensors header parser give tensor infos inside the file, or an
//! error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.safetensors");
    if let Ok(tensors) = deepseek_loader::safetensors_store::parse_header(data, path) {
        for (_, t) in &tensors {
            assert!(t.offset + t.len_bytes <= data.len());
        }
    }
});
