//! Wire formats, as plain types and functions with no I/O.

pub mod appliance;
pub mod command;
pub mod homeassistant;
pub mod names;
pub mod robot;
pub mod role;
pub mod schedule;
pub mod topics;
