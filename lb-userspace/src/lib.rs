//! The xdplb agent and CLI as a library, so integration tests and `xtask`
//! drive the same code the binary runs.

pub mod agent;
pub mod cli;
pub mod datapath;
pub mod healthcheck;
pub mod http;
pub mod inspect;
pub mod lb_status;
pub mod lease;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod sockdiag;
pub mod source;
pub mod sync;
