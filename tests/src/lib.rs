//! End-to-end test support for assetsync: vendor simulators and the local AWS stack.

pub mod capacity;
pub mod cli;
pub mod faults;
pub mod harness;
pub mod pages;
pub mod sim;
pub mod stack;
