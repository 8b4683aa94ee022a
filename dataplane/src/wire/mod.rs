//! Packet formats: zero-copy views per header, the parser and in-place marking.
