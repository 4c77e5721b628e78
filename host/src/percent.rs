//! Percent-encoding for the host, in one place: URL query components and
//! form values are encoded keeping only RFC 3986's unreserved characters
//! (what InfluxDB's `/write?db=` and `/query` forms and a guest's sealed
//! query or form body need), and query values of the admin API are decoded
//! strictly. The `percent-encoding` crate does the work (already linked
//! through `url`, so it adds nothing to the board binaries).

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Everything but the unreserved characters `A-Z a-z 0-9 - . _ ~` is escaped.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Why a query value could not be decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad percent escape in {0:?}")]
    BadEscape(String),
    #[error("{0:?} does not decode to UTF-8")]
    NotUtf8(String),
}

/// `text` as a query-string or form component: `a b&c` is `a%20b%26c`.
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// Decodes a query value: `%XX` escapes, and `+` as a space. Unlike the
/// crate's lenient decoder, a `%` not followed by two hex digits is an
/// error, so a mistyped request is refused rather than read literally.
pub fn decode_query_value(value: &str) -> Result<String, DecodeError> {
    let bad_escape = value.split('%').skip(1).any(|rest| !rest.get(..2).is_some_and(is_hex));
    if bad_escape {
        return Err(DecodeError::BadEscape(value.to_owned()));
    }
    let spaced = value.replace('+', " ");
    let decoded = percent_decode_str(&spaced).decode_utf8();
    decoded.map(|text| text.into_owned()).map_err(|_| DecodeError::NotUtf8(value.to_owned()))
}

fn is_hex(pair: &str) -> bool {
    pair.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreserved_characters_stay_unescaped() {
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(encode("AZaz09-._~"), "AZaz09-._~");
        assert_eq!(encode("+%"), "%2B%25");
    }

    #[test]
    fn a_query_value_decodes_escapes_and_plus_and_refuses_bad_escapes() {
        assert_eq!(decode_query_value("carbon%5Fintensity").unwrap(), "carbon_intensity");
        assert_eq!(decode_query_value("a+b%2Bc").unwrap(), "a b+c");
        assert_eq!(decode_query_value("%zz"), Err(DecodeError::BadEscape("%zz".into())));
        assert_eq!(decode_query_value("x%4"), Err(DecodeError::BadEscape("x%4".into())));
        assert_eq!(decode_query_value("%ff"), Err(DecodeError::NotUtf8("%ff".into())));
    }

    #[test]
    fn what_is_encoded_decodes_back() {
        for text in ["", "plain", "a b&c=d/é", "100%", "+"] {
            assert_eq!(decode_query_value(&encode(text)).unwrap(), text);
        }
    }
}
