//! Real clients through the real gateway.
