//! The xdplb agent and CLI as a library, so integration tests and `xtask`
//! drive the same code the binary runs.
