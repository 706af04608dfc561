//! CPU lists: `0`, `0-3`, `0,2`, `0-1,4-5`.

use anyhow::{bail, Context, Result};

/// Parses a CPU list into sorted, de-duplicated CPU ids.
pub fn parse_cpu_list(list: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim) {
        if part.is_empty() {
            bail!("empty entry in CPU list {list:?}");
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().with_context(|| format!("bad CPU {a:?} in {list:?}"))?;
                let b: usize = b.trim().parse().with_context(|| format!("bad CPU {b:?} in {list:?}"))?;
                if a > b {
                    bail!("CPU range {part:?} runs backwards");
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().with_context(|| format!("bad CPU {part:?} in {list:?}"))?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// The CPUs this process may run on, in order.
pub fn available_cpus() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    if ids.is_empty() {
        ids.push(0);
    }
    ids.sort_unstable();
    ids
}

/// Checks that every requested CPU is one this process may use.
pub fn check_available(cpus: &[usize]) -> Result<()> {
    let available = available_cpus();
    for cpu in cpus {
        if !available.contains(cpu) {
            bail!("CPU {cpu} is not available to this process (available: {available:?})");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("0-3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_cpu_list("2,0").unwrap(), vec![0, 2]);
        assert_eq!(parse_cpu_list("0-1, 4-5").unwrap(), vec![0, 1, 4, 5]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("").is_err());
    }
}
