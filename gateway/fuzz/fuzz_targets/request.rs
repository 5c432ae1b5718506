#![no_main]
//! See `flywheel_gateway::fuzzing::request`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| flywheel_gateway::fuzzing::request(data));
