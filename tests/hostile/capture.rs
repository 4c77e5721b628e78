//! Attacks of issue 21 (see main.rs).
