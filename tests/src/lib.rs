//! Shared helpers live in `host::testkit`; this crate only holds the test files.
