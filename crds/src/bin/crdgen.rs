//! Prints Strata's CRDs as YAML, or writes one file per CRD.
//!
//! Regenerate the committed copies with
//! `cargo run -p strata-crds --bin crdgen -- --out-dir crds/generated --out-dir charts/strata/crds`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

/// Prints the Strata CustomResourceDefinitions.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Write `<plural>.strata.dev.yaml` files into this directory instead of
    /// printing to stdout. Repeat to write several copies (crds/generated, the chart).
    #[arg(long = "out-dir", env = "STRATA_CRDGEN_OUT_DIR", value_delimiter = ',')]
    out_dirs: Vec<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let crds = strata_crds::crds();
    if args.out_dirs.is_empty() {
        for crd in &crds {
            print!("---\n{}", strata_crds::crd_yaml(crd)?);
        }
        return Ok(());
    }
    for dir in &args.out_dirs {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for crd in &crds {
            let path = dir.join(strata_crds::crd_file_name(crd));
            std::fs::write(&path, strata_crds::crd_yaml(crd)?)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
