//! `drover::fuzz::dns_answer` under libFuzzer: must never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| drover::fuzz::dns_answer(data));
