//! Support code for the cross-crate integration tests: sites as network namespaces.
