//! Runs `fio` and reads its JSON output.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::process::run_checked;
use crate::{Error, Result};

/// One fio job group's read figures.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct FioRead {
    pub mib_per_s: f64,
    pub iops: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub bytes: u64,
}

/// Sequential 1 MiB reads of the whole file, split into `jobs` equal ranges read in parallel.
/// Stops at `limit` (the figure is then the rate over what was read, `bytes` < `file_bytes`).
pub fn sequential(
    fio: &Path,
    file: &Path,
    file_bytes: u64,
    jobs: u32,
    limit: Duration,
) -> Result<FioRead> {
    let share = file_bytes / u64::from(jobs);
    let mut c = Command::new(fio);
    c.args([
        "--name=seq",
        "--rw=read",
        "--bs=1M",
        "--ioengine=psync",
        "--readonly",
    ])
    .arg(format!("--filename={}", file.display()))
    .arg(format!("--numjobs={jobs}"))
    .arg(format!("--size={share}"))
    .arg(format!("--offset_increment={share}"))
    .arg(format!("--runtime={}", limit.as_secs().max(1)))
    // The harness decides what is in the page cache (drop_caches); fio must not.
    .args([
        "--invalidate=0",
        "--group_reporting",
        "--output-format=json",
    ]);
    run(c)
}

/// Random 4 KiB reads, one job, queue depth 1: each block of the file at most once (fio's random
/// map), stopping after `seconds`. Not time-based on purpose: repeated passes over a small file
/// would measure the page cache instead of the system.
pub fn random_4k(fio: &Path, file: &Path, file_bytes: u64, seconds: u32) -> Result<FioRead> {
    let mut c = Command::new(fio);
    c.args([
        "--name=rand4k",
        "--rw=randread",
        "--bs=4k",
        "--ioengine=psync",
        "--readonly",
    ])
    .arg(format!("--filename={}", file.display()))
    .arg(format!("--size={file_bytes}"))
    .arg(format!("--runtime={seconds}"))
    .args([
        "--randrepeat=1",
        "--invalidate=0",
        "--group_reporting",
        "--output-format=json",
    ]);
    run(c)
}

fn run(c: Command) -> Result<FioRead> {
    let out = run_checked(c)?;
    parse(&out)
}

pub fn parse(json: &str) -> Result<FioRead> {
    // fio may print warnings before the JSON document.
    let start = json.find('{').ok_or_else(|| Error::Parse {
        what: "fio output".into(),
        detail: "no JSON object".into(),
    })?;
    let v: serde_json::Value = serde_json::from_str(&json[start..]).map_err(|e| Error::Parse {
        what: "fio JSON".into(),
        detail: e.to_string(),
    })?;
    let read = &v["jobs"][0]["read"];
    let num = |x: &serde_json::Value| x.as_f64().unwrap_or(f64::NAN);
    let pct = |p: &str| num(&read["clat_ns"]["percentile"][p]) / 1000.0;
    let bytes = read["io_bytes"].as_u64().unwrap_or(0);
    if bytes == 0 {
        return Err(Error::Parse {
            what: "fio JSON".into(),
            detail: "the job read nothing".into(),
        });
    }
    Ok(FioRead {
        mib_per_s: num(&read["bw_bytes"]) / (1024.0 * 1024.0),
        iops: num(&read["iops"]),
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_group_reported_read() {
        let json = r#"note: both iodepth >= 1 and synchronous I/O engine
{"jobs":[{"read":{"io_bytes":1048576,"bw_bytes":2097152,"iops":512.5,
 "clat_ns":{"percentile":{"50.000000":1500,"99.000000":90000}}}}]}"#;
        let r = parse(json).unwrap();
        assert_eq!(r.mib_per_s, 2.0);
        assert_eq!(r.iops, 512.5);
        assert_eq!(r.p50_us, 1.5);
        assert_eq!(r.p99_us, 90.0);
        assert!(parse(r#"{"jobs":[{"read":{"io_bytes":0}}]}"#).is_err());
    }
}
