//! Throwaway network topologies for integration tests and the demo.

pub mod netns;
