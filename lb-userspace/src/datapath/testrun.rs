use std::sync::OnceLock;

use anyhow::Result;
use aya::programs::{TestRun, TestRunOptions, TestRunResult, Xdp};

/// What one `BPF_PROG_TEST_RUN` returned.
#[derive(Debug)]
pub struct FrameResult {
    pub action: u32,
    pub frame: Vec<u8>,
    pub duration: std::time::Duration,
}

/// Headroom for frames the program grows (an ICMP error quotes the packet).
const GROWTH: usize = 256;

/// Runs `frame` through `prog` (XDP or tc) `repeat` times on one buffer.
pub fn run_frame<P>(prog: &P, frame: &[u8], repeat: u32) -> Result<FrameResult>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    run(prog, frame, None, repeat)
}

/// Runs `data` through `prog` with the context `ctx`, if any.
fn run<P>(prog: &P, data: &[u8], ctx: Option<&[u8]>, repeat: u32) -> Result<FrameResult>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; data.len() + GROWTH];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(data);
    opts.data_out = Some(&mut out);
    opts.ctx_in = ctx;
    opts.repeat = repeat;
    let r = prog.test_run(opts)?;
    out.truncate(r.data_size_out as usize);
    Ok(FrameResult {
        action: r.return_value,
        frame: out,
        duration: r.duration,
    })
}

/// The metadata length `run_frame_with_full_meta` found the kernel to take.
static FULL_META: OnceLock<usize> = OnceLock::new();

/// Runs `frame` once through the XDP program `prog` behind as much zeroed
/// metadata (left by another program) as the kernel takes, so that the
/// frame has no room for more: the metadata limit runs out first (32
/// bytes on older kernels), or the headroom (on this 6.18 kernel, which
/// lets metadata grow past 32 bytes). The longest a test run takes is
/// probed downwards, once. Returns the result, whose frame starts with
/// that metadata, and the metadata's length.
pub fn run_frame_with_full_meta(prog: &Xdp, frame: &[u8]) -> Result<(FrameResult, usize)> {
    if let Some(&meta) = FULL_META.get() {
        return Ok((run_behind_meta(prog, frame, meta)?, meta));
    }
    let mut refused = None;
    // Metadata comes in 4-byte words and stays under 256 bytes.
    for meta in (4..256).step_by(4).rev() {
        match run_behind_meta(prog, frame, meta) {
            Ok(r) => {
                let _ = FULL_META.set(meta);
                return Ok((r, meta));
            }
            Err(e) => refused = Some(e),
        }
    }
    Err(refused
        .expect("lengths tried")
        .context("no metadata length taken"))
}

fn run_behind_meta(prog: &Xdp, frame: &[u8], meta: usize) -> Result<FrameResult> {
    let mut data = vec![0u8; meta];
    data.extend_from_slice(frame);
    // `struct xdp_md`: data, data_end, data_meta (offsets into the input),
    // ingress_ifindex, rx_queue_index, egress_ifindex.
    let ctx: Vec<u8> = [meta, data.len(), 0, 0, 0, 0]
        .into_iter()
        .flat_map(|v| (v as u32).to_ne_bytes())
        .collect();
    run(prog, &data, Some(&ctx), 1)
}
