//! Throwaway network topologies for integration tests, the demo, the
//! end-to-end suite and the testbed bench, and the knobs the fuzzers share.

pub mod apps;
pub mod cluster;
pub mod command;
pub mod control_plane;
pub mod lb_pool;
pub mod netns;
pub mod traffic;
pub mod xdp_pass;

/// A fuzzer's budget or seed: the environment variable `name` when set
/// (decimal, or hexadecimal after "0x"), else `default`.
pub fn fuzz_knob(name: &str, default: u64) -> u64 {
    let Ok(value) = std::env::var(name) else {
        return default;
    };
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("{name}={value:?} is not a number"))
}
