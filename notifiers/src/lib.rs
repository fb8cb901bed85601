//! Notification channels: each adapter turns workflow events into messages and inbound clicks into votes.
#![forbid(unsafe_code)]
