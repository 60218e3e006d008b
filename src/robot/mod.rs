//! Robots: what each kind may do in each state ([`machine`]), the daemon's
//! bookkeeping of the fleet as events in and effects out ([`fleet`]), both free of I/O,
//! and a robot simulator that speaks the robot channel ([`sim`]). The processor runs
//! the fleet on its own MQTT connection (`processor::robots`).

pub mod fleet;
pub mod machine;
pub mod sim;
