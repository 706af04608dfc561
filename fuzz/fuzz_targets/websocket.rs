#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shotover_protocols::fuzz::websocket(data));
