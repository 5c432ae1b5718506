#![no_main]
//! See `flywheel_gateway::fuzzing::config`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| flywheel_gateway::fuzzing::config(data));
