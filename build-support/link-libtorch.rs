//! build.rs of bench/ (not published): the same link lines as the CLI's, whose build.rs must live
//! inside its own package to be publishable. See cli/build.rs.
include!("../cli/build.rs");
