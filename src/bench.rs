//! The load generator behind `kvapp-c bench`. (Skeleton: implementation in progress.)

use clap::Args;

use crate::Result;

/// Flags of `kvapp-c bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {}

/// Runs the benchmark and prints its report to standard output.
pub fn main(args: BenchArgs) -> Result<()> {
    let _ = args;
    Err(crate::Error::Failed("bench is not implemented yet".into()))
}
