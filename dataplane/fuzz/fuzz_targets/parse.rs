//! `cargo +nightly fuzz run parse`: the parser must never panic or read out of
//! bounds, whatever the bytes; and marking what it parsed must keep the frame
//! parseable to the same flow key.
#![no_main]

use dataplane::wire::{self, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the direction and the marks, the rest is the frame.
    let Some((&knobs, frame)) = data.split_first() else {
        return;
    };
    let inbound = knobs & 0x80 != 0;
    if let Parsed::Ip(info) = wire::parse(frame, inbound) {
        let mut marked = frame.to_vec();
        wire::set_dscp(&mut marked, &info, knobs & 0x3f);
        wire::set_pcp(&mut marked, &info, knobs >> 4);
        assert_eq!(wire::dscp(&marked, &info), Some(knobs & 0x3f));
        match wire::parse(&marked, inbound) {
            Parsed::Ip(again) => assert_eq!(again.key, info.key),
            other => panic!("marking changed the parse: {other:?}"),
        }
    }
});
