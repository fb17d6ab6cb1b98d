//! The outbox: every access to the `jobs` table, and the runner that drives
//! jobs through it.
//!
//! A job is work still to do. Workers claim a batch with
//! `FOR UPDATE SKIP LOCKED`, which moves each job's `run_at` to the lease end
//! and stamps a fresh `lease_token`; the slow HTTP work then happens outside any
//! transaction. Outcomes of concurrent jobs are written together by the
//! [`Outcomes`] group writer, one statement per kind and batch, each row first
//! matching `(id, lease_token)`: a worker whose lease expired (and whose job another
//! worker re-claimed) writes nothing. Finished jobs are deleted, so the
//! `run_at` index only covers live work. An expired lease needs no reaper: its
//! `run_at` is in the past, so the job is simply ready again.
//!
//! No write of the hot path sends `NOTIFY` (it would serialise their commits):
//! after committing new work, a writer tells its process's [`Signals`], which
//! wake the runner of the same process at once and announce the work to other
//! processes with one coalesced `NOTIFY hookrelay_jobs` of their own.
//!
//! - [`store`]: the claim, lease renewal and release, deferral, quarantine,
//!   and the timing reads;
//! - [`outcomes`]: the outcome rows ([`Finish`], [`AttemptRecord`]) and their
//!   group writer ([`Outcomes`]);
//! - [`signal`]: the wake-ups after a commit ([`Signals`]);
//! - [`runner`]: the claim loop, which knows no job kind; the kinds plug in
//!   through [`BackgroundJob`] (implemented in `crate::jobs`).

pub mod outcomes;
pub mod runner;
pub mod signal;
pub mod store;

pub use outcomes::{
    attempt_batch, finish_batch, AfterAttempt, AttemptRecord, Finish, Outcome, Outcomes, Trigger,
};
pub use runner::{BackgroundJob, Claimed, Runner, RunnerSettings};
pub use signal::Signals;
pub use store::{oldest_ready_age, ready_backlog, time_to_next_job, CHANNEL};
