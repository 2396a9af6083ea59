//! Integration tests, each on a fresh PostgreSQL database and a fresh SQLite file.

mod common;

mod bad_input;
mod citus;
mod conformance;
mod deploy;
mod estimate;
mod guarantees;
mod health;
mod keys;
mod layering;
mod ownership;
mod partitions;
mod progress;
mod reach;
mod runner;
mod schema;
mod settings;
mod splits;
mod stopping;
mod store;
mod targets;
mod transitions;
mod walks;
