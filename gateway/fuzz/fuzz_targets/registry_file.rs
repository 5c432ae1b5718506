#![no_main]
//! See `flywheel_gateway::fuzzing::registry_file`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| flywheel_gateway::fuzzing::registry_file(data));
