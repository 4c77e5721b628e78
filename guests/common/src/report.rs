//! Health and counter reporting through `wattedge:runtime/status`.
//!
//! The standby texts are built by pure functions (tested natively) so the
//! user always sees what is missing and the exact command that fixes it.

use crate::secrets;
use crate::status::{self, CounterValue, Health};

/// Reports `ok`.
pub fn ok() {
    status::report(&Health::Ok);
}

/// Reports `degraded(text)`.
pub fn degraded(text: &str) {
    status::report(&Health::Degraded(text.to_string()));
}

/// Reports `standby(text)`.
pub fn standby(text: &str) {
    status::report(&Health::Standby(text.to_string()));
}

/// Adds one to the `count` counter `name`.
pub fn inc(name: &str) {
    status::increment(name, 1);
}

/// Adds `by` to the `count` counter `name` (skipped when zero).
pub fn inc_by(name: &str, by: u64) {
    if by > 0 {
        status::increment(name, by);
    }
}

/// Sets the `count` counter `name`.
pub fn set_count(name: &str, value: u64) {
    status::set_counter(name, &CounterValue::Count(value));
}

/// Sets the `gauge` counter `name`.
pub fn gauge(name: &str, value: f64) {
    status::set_counter(name, &CounterValue::Gauge(value));
}

/// Sets the `text` counter `name`.
pub fn text(name: &str, value: &str) {
    status::set_counter(name, &CounterValue::Text(value.to_string()));
}

/// The current value of a `count` counter (0 when absent or another kind).
pub fn count_of(name: &str) -> u64 {
    match status::counter(name) {
        Some(CounterValue::Count(v)) => v,
        _ => 0,
    }
}

/// The names among `names` for which `secrets.is-set` is false.
pub fn missing_secrets<'a>(names: &[&'a str]) -> Vec<&'a str> {
    names.iter().copied().filter(|n| !secrets::is_set(n)).collect()
}

/// Reports `standby` naming `names` and the command that sets each; returns
/// the text.
pub fn standby_for_secrets(names: &[&str]) -> String {
    let text = secrets_needed_text(names);
    standby(&text);
    text
}

/// `credentials needed: set A and B with `wattedge secrets set A` and `wattedge secrets set B``.
pub fn secrets_needed_text(names: &[&str]) -> String {
    let commands: Vec<String> = names.iter().map(|n| format!("`wattedge secrets set {n}`")).collect();
    format!(
        "credentials needed: set {} with {}",
        join_and(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>()),
        join_and(&commands)
    )
}

/// Joins with `, ` and a final ` and `.
pub fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_text_names_secrets_and_commands() {
        assert_eq!(
            secrets_needed_text(&["watttime.username", "watttime.password"]),
            "credentials needed: set watttime.username and watttime.password with \
             `wattedge secrets set watttime.username` and `wattedge secrets set watttime.password`"
        );
        assert_eq!(
            secrets_needed_text(&["wattivahti.refresh_token"]),
            "credentials needed: set wattivahti.refresh_token with \
             `wattedge secrets set wattivahti.refresh_token`"
        );
    }

    #[test]
    fn join_three() {
        let v: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(join_and(&v), "a, b and c");
    }
}
