use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Run only what needs no privileges, and say what was left out.
    #[arg(long)]
    pub unprivileged: bool,
}

pub fn run(_args: &Args) -> Result<()> {
    anyhow::bail!("not yet")
}
