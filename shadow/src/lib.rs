//! # Layout
//! Compares two model arms on the same inputs (issue 3): paired output agreement, score deltas
//! with bootstrap intervals, latency distributions, error rates, and the verdict
//! `promote | hold | roll back` with its evidence. Used online by the gateway's canary and shadow
//! arms and offline by the trainer's quality gate. Nothing is implemented yet.
#![forbid(unsafe_code)]
