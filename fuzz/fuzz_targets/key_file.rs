#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| keyraft_fuzz_targets::key_file(data));
