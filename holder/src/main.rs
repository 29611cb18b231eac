//! `strata-holder`: keeps FUSE connections open across agent restarts (see the library).

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "strata-holder",
    version,
    about = "Holds Strata's FUSE mounts while agents come and go"
)]
struct Cli {
    #[command(flatten)]
    args: strata_holder::HolderArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    strata_holder::init_logging();
    match strata_holder::run(cli.args.into_config()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
