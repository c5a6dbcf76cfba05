use anyhow::Result;
use aya::programs::{TestRun, TestRunOptions, TestRunResult};

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
    let mut out = vec![0u8; frame.len() + GROWTH];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.repeat = repeat;
    let r = prog.test_run(opts)?;
    out.truncate(r.data_size_out as usize);
    Ok(FrameResult {
        action: r.return_value,
        frame: out,
        duration: r.duration,
    })
}
