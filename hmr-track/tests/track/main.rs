//! Integration tests of the tracking store: accumulator rules, queries and properties.

mod accumulator;
mod bounded;
mod properties;
mod queries;
mod support;
