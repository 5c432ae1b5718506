//! Writes the demo model repository (`tiny`, `tiny_fixed`, `multi_io`, optionally `heavy`).

use std::path::PathBuf;

use clap::Parser;

/// Write the demo/test model repository.
#[derive(Parser)]
struct Args {
    /// Folder to write `<model>/<version>/model.onnx` into (created if missing).
    dir: PathBuf,
    /// Also write the compute-heavy 256→1024→1024→1 model (~5 MB).
    #[arg(long)]
    heavy: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    flywheel_onnx::fixtures::write_demo_repository(&args.dir, args.heavy)
        .map_err(|e| anyhow::anyhow!("writing model repository {}: {e}", args.dir.display()))?;
    println!("wrote model repository to {}", args.dir.display());
    Ok(())
}
