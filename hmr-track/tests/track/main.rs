//! Integration tests of the tracking store: accumulator rules, queries and properties.

mod accumulator;
mod properties;
mod queries;
mod support;
