//! Wire formats, as plain types and functions with no I/O.

pub mod appliance;
pub mod command;
pub mod homeassistant;
pub mod robot;
pub mod topics;
