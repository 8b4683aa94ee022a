//! One job at a time, whoever asks, with asks that come while it runs sharing the next run.
//!
//! A reload must read the policy file as it is when it is asked for, so a caller cannot
//! take the result of a reload already running (it may have read the file before the
//! caller's edit). But callers that ask while one runs can all take the *next* one: eight
//! `POST /-/reload` at once cost two reloads, not eight, and none waits for more than two.

use std::sync::{Condvar, Mutex, MutexGuard};

/// Runs a job for callers on many threads (see the module documentation).
#[derive(Debug)]
pub struct Coalesce<T> {
    state: Mutex<State<T>>,
    done: Condvar,
}

#[derive(Debug)]
struct State<T> {
    running: bool,
    /// Runs started so far.
    started: u64,
    /// The latest run that finished (did not panic): its number and result.
    last: Option<(u64, T)>,
}

impl<T> Default for State<T> {
    fn default() -> State<T> {
        State {
            running: false,
            started: 0,
            last: None,
        }
    }
}

impl<T: Clone> Default for Coalesce<T> {
    fn default() -> Coalesce<T> {
        Coalesce::new()
    }
}

impl<T: Clone> Coalesce<T> {
    pub fn new() -> Coalesce<T> {
        Coalesce {
            state: Mutex::new(State::default()),
            done: Condvar::new(),
        }
    }

    /// The result of a run of `job` that started after this call: this caller's own, or
    /// that of another caller that asked while the same run was running, which then
    /// shares it.
    pub fn run(&self, job: impl FnOnce() -> T) -> T {
        let mut state = self.lock();
        let wanted = state.started + 1;
        loop {
            if let Some((_, result)) = state.last.as_ref().filter(|(n, _)| *n >= wanted) {
                return result.clone();
            }
            if !state.running {
                break;
            }
            state = self.done.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.running = true;
        state.started += 1;
        let number = state.started;
        drop(state);
        // Ends the run even if `job` panics, so that later callers are not stuck.
        let mut finish = Finish {
            owner: self,
            number,
            result: None,
        };
        let result = job();
        finish.result = Some(result.clone());
        result
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Finish<'a, T: Clone> {
    owner: &'a Coalesce<T>,
    number: u64,
    result: Option<T>,
}

impl<T: Clone> Drop for Finish<'_, T> {
    fn drop(&mut self) {
        let mut state = self.owner.lock();
        state.running = false;
        // A run that panicked has no result: its waiters run the job themselves.
        if let Some(result) = self.result.take() {
            state.last = Some((self.number, result));
        }
        drop(state);
        self.owner.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    #[test]
    fn one_caller_runs_the_job_each_time() {
        let c = Coalesce::new();
        assert_eq!(c.run(|| 1), 1);
        assert_eq!(c.run(|| 2), 2, "a new run, not the last result");
    }

    /// Callers that ask while a run is going on share the next one; each gets a run that
    /// started after it asked.
    #[test]
    fn callers_during_a_run_share_the_next() {
        let c = Arc::new(Coalesce::new());
        let runs = Arc::new(AtomicU64::new(0));
        let job = |runs: &AtomicU64| {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::sleep(Duration::from_millis(400));
            n
        };
        // The first run, started before the others ask.
        let first = {
            let (c, runs) = (c.clone(), runs.clone());
            std::thread::spawn(move || c.run(|| job(&runs)))
        };
        while runs.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let asked = Arc::new(Barrier::new(8));
        let later: Vec<_> = (0..8)
            .map(|_| {
                let (c, runs, asked) = (c.clone(), runs.clone(), asked.clone());
                std::thread::spawn(move || {
                    asked.wait();
                    c.run(|| job(&runs))
                })
            })
            .collect();
        assert_eq!(first.join().unwrap(), 1);
        let results: Vec<u64> = later.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(
            results.iter().all(|&r| r >= 2),
            "{results:?}: none took the first run"
        );
        let total = runs.load(Ordering::SeqCst);
        assert!(total <= 3, "{total} runs for 9 callers");
    }

    #[test]
    fn a_run_that_panics_leaves_the_next_caller_free_to_run() {
        let c = Arc::new(Coalesce::new());
        let c2 = c.clone();
        let panicked = std::thread::spawn(move || c2.run(|| -> u32 { panic!("job failed") }));
        assert!(panicked.join().is_err());
        assert_eq!(c.run(|| 7), 7);
    }
}
