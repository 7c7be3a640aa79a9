//! Timing helpers shared by the connectors' benchmarks (`cargo bench`), kept here so that
//! every connector reports its ratio to the serde floor the same way.
//!
//! These machines are shared: a neighbour's burst can slow a stretch of a run by half. Timing
//! the floor and the service path in alternation, and taking the median of the per-round
//! ratios, lets such a stretch hit both sides of a ratio alike instead of one of them.

use std::time::Instant;

/// Medians of alternating timings of a floor and a path.
#[derive(Debug, Clone, Copy)]
pub struct Paired {
    /// Median seconds of one pass of the floor.
    pub floor_secs: f64,
    /// Median seconds of one pass of the path.
    pub path_secs: f64,
    /// Median over rounds of floor / path time: the path's throughput as a share of the floor's.
    pub ratio: f64,
}

/// Runs `floor` then `path`, `rounds` times (after one warm-up round of each).
pub fn paired(rounds: usize, mut floor: impl FnMut(), mut path: impl FnMut()) -> Paired {
    floor();
    path();
    let (mut f, mut p, mut r) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        floor();
        let tf = t.elapsed().as_secs_f64();
        let t = Instant::now();
        path();
        let tp = t.elapsed().as_secs_f64();
        f.push(tf);
        p.push(tp);
        r.push(tf / tp);
    }
    Paired { floor_secs: median(&mut f), path_secs: median(&mut p), ratio: median(&mut r) }
}

/// Median seconds of `runs` passes of `f`.
pub fn median_secs(mut f: impl FnMut(), runs: usize) -> f64 {
    let mut t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    median(&mut t)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
