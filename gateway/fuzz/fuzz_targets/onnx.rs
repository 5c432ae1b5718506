#![no_main]
//! Our own ONNX reader (warm starts read the champion's file back): any bytes, no panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = flywheel_onnx::Mlp::from_onnx(data);
});
