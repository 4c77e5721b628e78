//! Scrubbing secret values out of text a guest (or the log) receives, in
//! time linear in the text: each value is looked for with `memchr`'s
//! `memmem` (Two-Way, O(text + value) even for adversarial inputs), and
//! every byte inside any occurrence of any value is covered. A run of
//! covered bytes becomes one [`REDACTED`], so where values overlap or one
//! contains another, the longest reach wins and no part of either survives.
//!
//! Callers scrub whole texts and clip afterwards: clipping first could cut
//! a value in two and leave its prefix behind, where no search finds it.

use std::borrow::Cow;

use memchr::memmem::Finder;

/// Replaces any secret value found in scrubbed text.
pub const REDACTED: &str = "[redacted]";

/// Shorter values are not looked for: they would match ordinary text.
pub const MIN_SCRUB_LEN: usize = 4;

/// A set of values to scrub, each prepared for searching once.
pub struct Scrubber {
    finders: Vec<Finder<'static>>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print values.
        f.debug_struct("Scrubber").field("values", &self.finders.len()).finish()
    }
}

impl Scrubber {
    /// A scrubber for `values`, without short or duplicate ones.
    pub fn new(values: impl IntoIterator<Item = String>) -> Scrubber {
        let mut values: Vec<String> = values.into_iter().filter(|v| v.len() >= MIN_SCRUB_LEN).collect();
        values.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        let finders = values.into_iter().map(|v| Finder::new(v.as_bytes()).into_owned()).collect();
        Scrubber { finders }
    }

    /// True when there is nothing to look for.
    pub fn is_empty(&self) -> bool {
        self.finders.is_empty()
    }

    /// Whether `bytes` contains any of the values.
    pub fn finds_any(&self, bytes: &[u8]) -> bool {
        self.finders.iter().any(|f| f.find(bytes).is_some())
    }

    /// `bytes` with every occurrence replaced; None when nothing matched.
    pub fn scrub(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let covered = self.cover(bytes)?;
        let mut out = Vec::with_capacity(bytes.len());
        let mut at = 0;
        while at < bytes.len() {
            if covered[at] {
                out.extend_from_slice(REDACTED.as_bytes());
                while at < bytes.len() && covered[at] {
                    at += 1;
                }
            } else {
                let run = covered[at..].iter().position(|&c| c).map_or(bytes.len(), |n| at + n);
                out.extend_from_slice(&bytes[at..run]);
                at = run;
            }
        }
        Some(out)
    }

    /// `text` with every occurrence replaced.
    pub fn scrub_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.scrub(text.as_bytes()) {
            // Values are UTF-8, so matches start and end on character
            // boundaries and the result is UTF-8 too; lossy is a fallback.
            Some(clean) => Cow::Owned(
                String::from_utf8(clean).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
            None => Cow::Borrowed(text),
        }
    }

    /// Which bytes lie inside an occurrence of some value; None when none
    /// does. Each value's occurrences are found left to right without
    /// overlap, so marking costs at most the text's length per value.
    fn cover(&self, bytes: &[u8]) -> Option<Vec<bool>> {
        let mut covered: Option<Vec<bool>> = None;
        for finder in &self.finders {
            let len = finder.needle().len();
            for start in finder.find_iter(bytes) {
                let mask = covered.get_or_insert_with(|| vec![false; bytes.len()]);
                mask[start..start + len].fill(true);
            }
        }
        covered
    }
}

/// `values` and their JSON-escaped forms (how a value appears inside a JSON
/// string an upstream sends back).
pub fn with_json_forms(values: Vec<String>) -> Vec<String> {
    let mut all = Vec::with_capacity(values.len() * 2);
    for value in values {
        all.push(json_form(&value));
        all.push(value);
    }
    all
}

/// `value` as it is written inside a JSON string (without the quotes).
pub fn json_form(value: &str) -> String {
    let quoted = serde_json::Value::String(value.to_string()).to_string();
    quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubbed(scrubber: &Scrubber, text: &str) -> String {
        scrubber.scrub_str(text).into_owned()
    }

    #[test]
    fn every_value_is_replaced_the_longest_reach_winning() {
        let s = Scrubber::new(["abc".into(), "secret-1".into(), "secret-1-long".into(), "secret-1".into()]);
        assert_eq!(scrubbed(&s, "a secret-1-long b secret-1 c secret-1"), "a [redacted] b [redacted] c [redacted]");
        assert_eq!(scrubbed(&s, "abc is too short to look for"), "abc is too short to look for");
        assert_eq!(s.scrub(b"clean"), None);
    }

    #[test]
    fn overlapping_values_leave_no_part_of_either() {
        let s = Scrubber::new(["abcdef".into(), "defghi".into()]);
        assert_eq!(scrubbed(&s, "x abcdefghi y"), "x [redacted] y");
        let s = Scrubber::new(["aXaX".into()]);
        assert_eq!(scrubbed(&s, "aXaXaXaX!"), "[redacted]!");
    }

    #[test]
    fn json_forms_are_found_too() {
        let s = Scrubber::new(with_json_forms(vec!["pa\"ss/wörd".into()]));
        assert_eq!(scrubbed(&s, r#"{"p":"pa\"ss/wörd"}"#), r#"{"p":"[redacted]"}"#);
        assert!(s.finds_any("pa\"ss/wörd".as_bytes()));
    }

    #[test]
    fn a_long_value_in_a_long_text_takes_linear_time() {
        // The quadratic search took minutes on this; linear is milliseconds.
        let value = "a".repeat(2 << 20) + "b";
        let text = "a".repeat(4 << 20);
        let s = Scrubber::new([value]);
        let began = std::time::Instant::now();
        assert_eq!(s.scrub(text.as_bytes()), None);
        assert!(began.elapsed() < std::time::Duration::from_secs(2), "{:?}", began.elapsed());
    }
}
