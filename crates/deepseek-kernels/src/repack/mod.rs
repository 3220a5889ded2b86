//! GGML weights repacked once at load into groups of 8 rows, so one SIMD register holds the same
//! columns of 8 rows and decode runs at the memory rate: one file per layout family, what they
//! share in `group`, and the `Layout` enum that names them.

pub mod group;
pub mod iq4;
pub mod k16;
pub mod k4;
pub mod layout;
pub mod q5_0;
pub mod q5_1;
pub mod q8_0;

pub use group::{
    k16_kernels_available, k16_repack_supported, k_and_q5_repack_supported, ActRow, GROUP,
};
pub use iq4::Iq4;
pub use k16::K16;
pub use k4::{
    dot_group_q4k, dot_group_q5k, q4k_group_bytes, q5k_group_bytes, repack_q4_k, repack_q5_k,
    unpack_q4_k_row, unpack_q5_k_row, Q4K_SUPER_BYTES, Q5K_SUPER_BYTES,
};
#[cfg(test)]
pub(crate) use layout::test_weights;
pub use layout::Layout;
pub use q5_0::{
    decode_q5_0_group, dot_group_q5_0, dot_group_q5_0_decoded, q5_0_group_bytes,
    q5_0_predecode_pays, repack_q5_0, unpack_q5_0_row, Q5_0_BLOCK_BYTES, Q5_0_DECODED_BLOCK,
};
pub use q8_0::{dot_group, group_bytes, repack_q8_0, unpack_q8_0_row};
