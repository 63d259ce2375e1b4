//! Watched trees outside the kernel: the selectors that start them ([`selector`]), what /proc
//! says about their processes ([`proc`]), and adopting trees that already run ([`adopt`]).

pub mod adopt;
pub mod proc;
pub mod selector;
