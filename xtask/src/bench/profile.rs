//! `cargo xtask bench --profile ROW`: where one repeated row of the
//! datapath benchmark spends its time, by source line of the programs.
//!
//! The benchmark repeats the row under BPF_PROG_TEST_RUN, its path
//! counters proving every round took the row's path, while `perf record
//! -a` samples both CPUs. Samples inside the jited programs are mapped to
//! source lines through the programs' jited line info, read here with
//! bpf(2): perf annotates BPF programs only when built with libopcodes,
//! which Debian's perf is not, and aya's `ProgramInfo` does not carry line
//! info. A sample lands on the instruction after the one that stalled, so
//! read a hot line together with the line before it.
use std::{
    collections::HashMap,
    ffi::CStr,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};

use crate::{bootstrap::run, ebpf};

/// Lines printed per program.
const TOP_LINES: usize = 30;
/// Symbols printed of the whole machine.
const TOP_SYMBOLS: usize = 12;

/// The row that profiles the programs loaded now instead of a benchmark's.
pub const LIVE: &str = "live";

pub fn run_cmd(row: &str, seconds: u64) -> Result<()> {
    let out_dir = ebpf::workspace_root().join("target/bench-profile");
    std::fs::create_dir_all(&out_dir)?;
    let data = out_dir.join("perf.data");
    if row == LIVE {
        return live(&data, seconds);
    }
    ebpf::build()?;
    let bench = build_bench()?;

    let mut child = Command::new(&bench)
        .arg("--bench")
        .env("XDPLB_BENCH_ROW", row)
        // Time to read the programs and start perf before the rounds end.
        .env("XDPLB_BENCH_SECONDS", (seconds + 10).to_string())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", bench.display()))?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().context("benchmark's stdout")?;
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(120))
        .context("the benchmark did not get ready")?;
    let ids: Vec<u32> = ready
        .strip_prefix("ready ")
        .with_context(|| format!("unexpected first line {ready:?}"))?
        .split(' ')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let programs = ids
        .iter()
        .map(|&id| Program::read(id))
        .collect::<Result<Vec<_>>>()?;
    let recorded = record(&data, seconds);
    let _ = child.kill();
    let _ = child.wait();
    recorded?;
    let rounds: Vec<String> = rx.try_iter().collect();

    let samples = samples(&data)?;
    report(row, &rounds, &samples, &programs);
    println!("\nperf data: {}", data.display());
    Ok(())
}

/// Samples every CPU for `seconds` into `data`.
fn record(data: &Path, seconds: u64) -> Result<()> {
    run(Command::new("perf")
        .args(["record", "-a", "-F", "4999", "-q", "-o"])
        .arg(data)
        .args(["--", "sleep", &seconds.to_string()]))
}

/// Where the packet programs loaded on this machine now (`lb*`, of every
/// interface: a testbed's nodes, or a node's agent) spend their time, while
/// whatever traffic runs: the programs in place, behind their hooks and
/// with the caches the rest of the stack leaves them, where the benchmark
/// rows repeat one packet on a warm cache.
fn live(data: &Path, seconds: u64) -> Result<()> {
    let programs = loaded_ids()
        .into_iter()
        .filter_map(|id| Program::read(id).ok())
        .filter(|p| p.name.starts_with("lb"))
        .collect::<Vec<_>>();
    ensure!(!programs.is_empty(), "no lb program is loaded");
    record(data, seconds)?;
    report(LIVE, &[], &samples(data)?, &programs);
    println!("\nperf data: {}", data.display());
    Ok(())
}

/// The ids of every loaded BPF program.
fn loaded_ids() -> Vec<u32> {
    let mut ids = Vec::new();
    // `start_id`, then `next_id`, which the kernel fills in.
    let mut attr = [0u32; 3];
    // Fails with ENOENT after the last.
    while bpf(
        BPF_PROG_GET_NEXT_ID,
        attr.as_mut_ptr().cast(),
        size_of_val(&attr),
    )
    .is_ok()
    {
        ids.push(attr[1]);
        attr[0] = attr[1];
    }
    ids
}

/// Builds the datapath benchmark and returns its executable.
fn build_bench() -> Result<std::path::PathBuf> {
    let out = super::cargo_bench()
        .args([
            "--bench",
            "datapath",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(ebpf::workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("building the datapath benchmark")?;
    ensure!(
        out.status.success(),
        "building the datapath benchmark failed"
    );
    String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "datapath")
        .find_map(|m| m["executable"].as_str().map(Into::into))
        .context("cargo named no datapath benchmark executable")
}

/// One sample: the instruction pointer and perf's symbol for it.
struct Sample {
    ip: u64,
    symbol: String,
}

fn samples(data: &Path) -> Result<Vec<Sample>> {
    let out = Command::new("perf")
        .args(["script", "-F", "ip,sym", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("running perf script")?;
    ensure!(out.status.success(), "perf script failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (ip, symbol) = l.trim().split_once(' ')?;
            Some(Sample {
                ip: u64::from_str_radix(ip, 16).ok()?,
                symbol: symbol.trim().to_string(),
            })
        })
        .collect())
}

fn is_idle(symbol: &str) -> bool {
    symbol.contains("idle") || symbol.contains("safe_halt")
}

fn report(row: &str, rounds: &[String], samples: &[Sample], programs: &[Program]) {
    let busy: Vec<&Sample> = samples.iter().filter(|s| !is_idle(&s.symbol)).collect();
    println!(
        "\n{row}: {} samples, {} of them not idle",
        samples.len(),
        busy.len()
    );
    let mut ns: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r.rsplit_once(": ")?.1.strip_suffix(" ns")?.parse().ok())
        .collect();
    ns.sort_by(f64::total_cmp);
    if let (Some(min), Some(max)) = (ns.first(), ns.last()) {
        println!(
            "{} rounds of the benchmark's median of 5 x 1,000,000: median {:.1} ns, {min:.1}-{max:.1}",
            ns.len(),
            ns[ns.len() / 2]
        );
    }
    if busy.is_empty() {
        return;
    }
    let share = |n: usize, of: usize| 100.0 * n as f64 / of as f64;
    println!("\nwhere the CPUs were, share of the samples not idle:");
    let mut by_symbol: HashMap<&str, usize> = HashMap::new();
    for s in &busy {
        *by_symbol.entry(&s.symbol).or_default() += 1;
    }
    let mut by_symbol: Vec<_> = by_symbol.into_iter().collect();
    by_symbol.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (symbol, n) in by_symbol.iter().take(TOP_SYMBOLS) {
        println!("{:>6.1}%  {symbol}", share(*n, busy.len()));
    }
    for p in programs {
        let mut by_line: HashMap<&str, usize> = HashMap::new();
        let mut total = 0;
        for s in &busy {
            if let Some(line) = p.line_at(s.ip) {
                *by_line.entry(line).or_default() += 1;
                total += 1;
            }
        }
        if total == 0 {
            continue;
        }
        println!(
            "\n{} ({:.1}% of the samples not idle), by source line:",
            p.name,
            share(total, busy.len())
        );
        let mut by_line: Vec<_> = by_line.into_iter().collect();
        by_line.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        for (line, n) in by_line.iter().take(TOP_LINES) {
            println!("{:>6.1}%  {line}", share(*n, total));
        }
    }
}

/// A loaded program's jited code range and source lines.
struct Program {
    name: String,
    /// Start and end of each jited function.
    ranges: Vec<(u64, u64)>,
    /// Jited address of each line info record and its line, by address.
    lines: Vec<(u64, String)>,
}

impl Program {
    fn line_at(&self, ip: u64) -> Option<&str> {
        if !self
            .ranges
            .iter()
            .any(|&(start, end)| (start..end).contains(&ip))
        {
            return None;
        }
        let i = self.lines.partition_point(|(addr, _)| *addr <= ip);
        Some(&self.lines[i.checked_sub(1)?].1)
    }

    fn read(id: u32) -> Result<Program> {
        let fd = Fd::of_prog(id)?;
        let mut info = ProgInfo::default();
        obj_info(&fd, &mut info)?;
        let name = CStr::from_bytes_until_nul(&info.name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        ensure!(
            info.nr_jited_line_info == info.nr_line_info,
            "{name}: {} jited lines for {} line records",
            info.nr_jited_line_info,
            info.nr_line_info
        );
        let mut ksyms = vec![0u64; info.nr_jited_ksyms as usize];
        let mut lens = vec![0u32; info.nr_jited_func_lens as usize];
        let mut lines = vec![LineInfo::default(); info.nr_line_info as usize];
        let mut jited_lines = vec![0u64; info.nr_jited_line_info as usize];
        let mut want = ProgInfo {
            nr_jited_ksyms: info.nr_jited_ksyms,
            nr_jited_func_lens: info.nr_jited_func_lens,
            jited_ksyms: ksyms.as_mut_ptr() as u64,
            jited_func_lens: lens.as_mut_ptr() as u64,
            nr_line_info: info.nr_line_info,
            line_info: lines.as_mut_ptr() as u64,
            line_info_rec_size: size_of::<LineInfo>() as u32,
            nr_jited_line_info: info.nr_jited_line_info,
            jited_line_info: jited_lines.as_mut_ptr() as u64,
            jited_line_info_rec_size: size_of::<u64>() as u32,
            ..ProgInfo::default()
        };
        obj_info(&fd, &mut want)?;
        ensure!(
            ksyms.iter().all(|&k| k != 0),
            "{name}: the kernel hid the jited addresses (kptr_restrict?)"
        );
        let strings = btf_strings(want.btf_id)?;
        let string = |off: u32| -> String {
            strings
                .get(off as usize..)
                .and_then(|s| CStr::from_bytes_until_nul(s).ok())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let mut lines: Vec<(u64, String)> = lines
            .iter()
            .zip(&jited_lines)
            .map(|(l, &addr)| {
                let file = string(l.file_name_off);
                let file = file.rsplit('/').next().unwrap_or_default();
                let source = string(l.line_off);
                (
                    addr,
                    format!("{file}:{}  {}", l.line_col >> 10, source.trim()),
                )
            })
            .collect();
        lines.sort_by_key(|(addr, _)| *addr);
        Ok(Program {
            // Each interface has its own instance of a program.
            name: format!("{name} (id {id})"),
            ranges: ksyms
                .iter()
                .zip(&lens)
                .map(|(&start, &len)| (start, start + len as u64))
                .collect(),
            lines,
        })
    }
}

/// `struct bpf_prog_info` of the kernel's UAPI, up to the fields read.
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
    ifindex: u32,
    gpl_compatible: u32,
    netns_dev: u64,
    netns_ino: u64,
    nr_jited_ksyms: u32,
    nr_jited_func_lens: u32,
    jited_ksyms: u64,
    jited_func_lens: u64,
    btf_id: u32,
    func_info_rec_size: u32,
    func_info: u64,
    nr_func_info: u32,
    nr_line_info: u32,
    line_info: u64,
    jited_line_info: u64,
    nr_jited_line_info: u32,
    line_info_rec_size: u32,
    jited_line_info_rec_size: u32,
    /// Named, so that it is zero rather than padding: the kernel writes
    /// this many tags to `prog_tags`, which lies beyond `info_len`.
    nr_prog_tags: u32,
}

const _: () = assert!(size_of::<ProgInfo>() == 184);

/// `struct bpf_line_info`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct LineInfo {
    insn_off: u32,
    file_name_off: u32,
    line_off: u32,
    line_col: u32,
}

/// `struct bpf_btf_info`, up to the fields read.
#[repr(C)]
#[derive(Default)]
struct BtfInfo {
    btf: u64,
    btf_size: u32,
    id: u32,
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;

struct Fd(libc::c_int);

impl Fd {
    fn of_prog(id: u32) -> Result<Fd> {
        Self::by_id(BPF_PROG_GET_FD_BY_ID, id).with_context(|| format!("program {id}"))
    }

    fn of_btf(id: u32) -> Result<Fd> {
        Self::by_id(BPF_BTF_GET_FD_BY_ID, id).with_context(|| format!("BTF {id}"))
    }

    fn by_id(cmd: libc::c_long, id: u32) -> Result<Fd> {
        // The id, then `next_id` and `open_flags`, both zero.
        let attr = [id, 0, 0];
        let fd = bpf(cmd, attr.as_ptr().cast(), size_of_val(&attr))?;
        Ok(Fd(fd as libc::c_int))
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        unsafe { libc::close(self.0) };
    }
}

fn bpf(cmd: libc::c_long, attr: *const u8, size: usize) -> Result<libc::c_long> {
    // SAFETY: `attr` points to `size` bytes of a bpf_attr for `cmd`, and
    // the pointers inside it to buffers as large as the counts it gives.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if r < 0 {
        bail!("bpf({cmd}): {}", std::io::Error::last_os_error());
    }
    Ok(r)
}

/// Fills `info` (`struct bpf_prog_info` or `bpf_btf_info`) for `fd`.
fn obj_info<T>(fd: &Fd, info: &mut T) -> Result<()> {
    #[repr(C)]
    struct Attr {
        fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = Attr {
        fd: fd.0 as u32,
        info_len: size_of::<T>() as u32,
        info: info as *mut T as u64,
    };
    bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        (&raw const attr).cast(),
        size_of::<Attr>(),
    )?;
    Ok(())
}

/// The string section of BTF object `id`.
fn btf_strings(id: u32) -> Result<Vec<u8>> {
    let fd = Fd::of_btf(id)?;
    let mut info = BtfInfo::default();
    obj_info(&fd, &mut info)?;
    let mut raw = vec![0u8; info.btf_size as usize];
    let mut want = BtfInfo {
        btf: raw.as_mut_ptr() as u64,
        btf_size: info.btf_size,
        ..BtfInfo::default()
    };
    obj_info(&fd, &mut want)?;
    // `struct btf_header`: magic, version, flags, hdr_len, then the type
    // and string sections' offsets and lengths after the header.
    let word = |at: usize| -> Result<usize> {
        let b = raw.get(at..at + 4).context("BTF header cut short")?;
        Ok(u32::from_le_bytes(b.try_into()?) as usize)
    };
    let (hdr_len, str_off, str_len) = (word(4)?, word(16)?, word(20)?);
    let start = hdr_len + str_off;
    Ok(raw
        .get(start..start + str_len)
        .context("BTF strings out of bounds")?
        .to_vec())
}
