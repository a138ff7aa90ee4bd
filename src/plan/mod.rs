//! The planner: pure functions from (desired, recorded, observed) to an ordered plan. No I/O here.

pub mod stage;
