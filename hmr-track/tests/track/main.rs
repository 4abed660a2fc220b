//! Integration tests of the tracking store: accumulator rules, queries, subjects and properties.

mod accumulator;
mod bounded;
mod properties;
mod queries;
mod runtime;
mod runtime_properties;
mod subjects;
mod support;
