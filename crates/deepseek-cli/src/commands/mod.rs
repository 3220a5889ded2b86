pub mod bench;
pub mod chat;
pub mod forward;
pub mod generate;
pub mod info;
pub mod synth;
pub mod template;
pub mod tokenize;
