//! Schedules and modes (their documents are in [`crate::protocol::schedule`]): when
//! they run, and what they ask of the appliance. Pure logic over plain data; the engine
//! that acts on it lives in the processor (`processor::schedules`).

pub mod clock;
pub mod target;
pub mod timing;
