//! Provisioning: what a node installs and how it gets it. `profile` renders a node's
//! install profile from the configuration database (roles, profiles, attributes, groups;
//! docs/provisioning.md). It never talks to hosts or nodes itself.

pub mod profile;
