//! Schedules and modes: the documents, when they run, and what they ask of the
//! appliance. Pure logic over plain data; the engine that acts on it lives in the
//! processor (`processor::schedules`).

pub mod clock;
pub mod model;
pub mod target;
pub mod timing;
