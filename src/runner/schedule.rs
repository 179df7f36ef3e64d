//! Stages run as soon as the stages they read are done, on a bounded number of workers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use polars::prelude::DataFrame;

use crate::core::manifest::StageReport;

/// A stage's index, its frames kept for later stages and its report, or its error.
pub(super) type StageOutcome = Result<(usize, Vec<DataFrame>, StageReport)>;

/// Which stages have started and finished, and how many workers are taking stages.
struct Board {
    /// Per position in `Schedule::order`.
    started: Vec<bool>,
    done: BTreeSet<usize>,
    failed: bool,
    workers: usize,
}

/// Stages run as soon as the stages they read are done, by at most `workers` workers on the
/// stage pool, each taking the first ready stage in `order` when it is free. A worker with
/// nothing ready ends (its thread helps the running stages' parallel work instead of waiting);
/// one that finishes a stage starts more workers when that made several stages ready. After a
/// failure no stage starts; the running ones finish.
pub(super) struct Schedule<'a> {
    order: &'a [usize],
    /// The selected stages each stage of `order` reads.
    upstream: Vec<Vec<usize>>,
    board: Mutex<Board>,
    outputs: &'a Mutex<BTreeMap<usize, Arc<Vec<DataFrame>>>>,
    results: Mutex<Vec<(usize, Result<StageReport>)>>,
    run: &'a (dyn Fn(usize) -> StageOutcome + Sync),
    workers: usize,
}

impl<'a> Schedule<'a> {
    /// Stages `order` (indexes, in the order they are taken), each reading `upstream` (per
    /// position), run by `run` on at most `workers` workers; the frames of finished stages go
    /// into `outputs`.
    pub(super) fn new(
        order: &'a [usize],
        upstream: Vec<Vec<usize>>,
        outputs: &'a Mutex<BTreeMap<usize, Arc<Vec<DataFrame>>>>,
        run: &'a (dyn Fn(usize) -> StageOutcome + Sync),
        workers: usize,
    ) -> Self {
        Schedule {
            order,
            upstream,
            board: Mutex::new(Board {
                started: vec![false; order.len()],
                done: BTreeSet::new(),
                failed: false,
                workers: 0,
            }),
            outputs,
            results: Mutex::new(Vec::new()),
            run,
            workers: workers.max(1),
        }
    }

    /// Each stage's report or error, in the order they finished.
    pub(super) fn into_results(self) -> Vec<(usize, Result<StageReport>)> {
        self.results
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Positions in `order` of the stages not started whose inputs are done.
    fn ready<'b>(&'b self, board: &'b Board) -> impl Iterator<Item = usize> + 'b {
        (0..self.order.len())
            .filter(|&p| !board.started[p] && self.upstream[p].iter().all(|dep| board.done.contains(dep)))
    }

    /// Start as many workers as stages are ready; they start more as stages finish.
    pub(super) fn start<'s>(&'s self, scope: &rayon::Scope<'s>) {
        let workers = {
            let mut board = self.board.lock().expect("schedule lock");
            let ready = self.ready(&board).count().min(self.workers);
            board.workers = ready;
            ready
        };
        for _ in 0..workers {
            scope.spawn(move |scope| self.work(scope));
        }
    }

    fn work<'s>(&'s self, scope: &rayon::Scope<'s>) {
        loop {
            let index = {
                let mut board = self.board.lock().expect("schedule lock");
                let next = if board.failed { None } else { self.ready(&board).next() };
                let Some(position) = next else {
                    board.workers -= 1;
                    return;
                };
                board.started[position] = true;
                self.order[position]
            };
            let outcome = (self.run)(index);
            let more = {
                let mut board = self.board.lock().expect("schedule lock");
                let result = match outcome {
                    Ok((index, frames, report)) => {
                        if !frames.is_empty() {
                            let frames = Arc::new(frames);
                            self.outputs.lock().expect("stage outputs lock").insert(index, frames);
                        }
                        board.done.insert(index);
                        Ok(report)
                    }
                    Err(error) => {
                        board.failed = true;
                        Err(error)
                    }
                };
                self.results.lock().expect("stage results lock").push((index, result));
                // This worker takes one of the ready stages; more workers for the others.
                let ready = if board.failed { 0 } else { self.ready(&board).count() };
                let more = ready.saturating_sub(1).min(self.workers - board.workers);
                board.workers += more;
                more
            };
            for _ in 0..more {
                scope.spawn(move |scope| self.work(scope));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stage 0 is slow; 1 and 2 are quick, and 3 reads 1 and 2 (a later level than 0): on
    /// two workers 3 runs while 0 still does. One worker runs them in order. After stage 1
    /// fails, stage 3 (which reads it) never starts.
    #[test]
    fn stages_start_when_their_inputs_are_done_not_their_level() {
        let order = [0usize, 1, 2, 3];
        let upstream = vec![vec![], vec![], vec![], vec![1, 2]];
        let run_with = |workers: usize, failing: Option<usize>| {
            let events: Mutex<Vec<(usize, &str)>> = Mutex::new(Vec::new());
            let outputs = Mutex::new(BTreeMap::new());
            let run = |index: usize| -> StageOutcome {
                events.lock().unwrap().push((index, "start"));
                std::thread::sleep(std::time::Duration::from_millis(if index == 0 { 300 } else { 20 }));
                events.lock().unwrap().push((index, "end"));
                if failing == Some(index) {
                    anyhow::bail!("stage {index} failed");
                }
                let report = StageReport {
                    stage: index.to_string(),
                    kind: "test".into(),
                    level: 1,
                    duration_seconds: 0.0,
                    tables: Vec::new(),
                };
                Ok((index, vec![DataFrame::empty()], report))
            };
            let schedule = Schedule::new(&order, upstream.clone(), &outputs, &run, workers);
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
            pool.scope(|scope| schedule.start(scope));
            let results: Vec<(usize, bool)> = schedule
                .into_results()
                .into_iter()
                .map(|(index, result)| (index, result.is_ok()))
                .collect();
            let kept: Vec<usize> = outputs.into_inner().unwrap().into_keys().collect();
            (events.into_inner().unwrap(), results, kept)
        };
        let position =
            |events: &[(usize, &str)], event: (usize, &str)| events.iter().position(|e| *e == event).unwrap();

        let (events, results, kept) = run_with(2, None);
        assert!(
            position(&events, (3, "start")) < position(&events, (0, "end")),
            "{events:?}"
        );
        assert!(
            position(&events, (3, "start")) > position(&events, (2, "end")),
            "{events:?}"
        );
        assert_eq!(results.len(), 4);
        assert_eq!(kept, [0, 1, 2, 3]);

        let (events, _, _) = run_with(1, None);
        let starts: Vec<usize> = events.iter().filter(|e| e.1 == "start").map(|e| e.0).collect();
        assert_eq!(starts, [0, 1, 2, 3]);

        let (events, results, kept) = run_with(2, Some(1));
        assert!(!events.contains(&(3, "start")), "{events:?}");
        assert!(
            results.contains(&(1, false)) && results.contains(&(0, true)),
            "{results:?}"
        );
        assert!(!kept.contains(&1));
    }
}
