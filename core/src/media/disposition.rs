//! What media is served with: the `Content-Disposition` the client API and federation share.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// RFC 8187's `attr-char` may stay as is; everything else is percent-encoded, so no quote,
/// space or newline in a file name can break the header.
const RFC8187_ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// Types a browser may show inline, the list Synapse uses: none of them can run script in the
/// server's origin.
const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// `Content-Disposition` for serving media: `inline` only for types a browser cannot run script
/// in, `attachment` otherwise.
pub fn content_disposition(content_type: &str, filename: Option<&str>) -> String {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let kind = if INLINE_TYPES.contains(&essence.as_str()) {
        "inline"
    } else {
        "attachment"
    };
    match filename {
        // RFC 6266 / 8187: percent-encoded UTF-8, so no quote or newline can break the header.
        Some(name) => {
            let encoded = percent_encoding::utf8_percent_encode(name, RFC8187_ESCAPED);
            format!("{kind}; filename*=utf-8''{encoded}")
        }
        None => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_types_are_inline_and_names_cannot_break_the_header() {
        assert_eq!(content_disposition("image/png", None), "inline");
        assert_eq!(content_disposition("text/html", None), "attachment");
        assert_eq!(
            content_disposition("text/plain; charset=utf-8", Some("a \"b\"\r\n.txt")),
            "inline; filename*=utf-8''a%20%22b%22%0D%0A.txt"
        );
    }
}

/// Fuzzing: whatever type and name an uploader gave, the header value carries no character that
/// could end the header or start another.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn the_header_is_always_one_clean_value(kind in any::<String>(), name in proptest::option::of(any::<String>())) {
            let value = content_disposition(&kind, name.as_deref());
            prop_assert!(value.starts_with("inline") || value.starts_with("attachment"));
            prop_assert!(value.bytes().all(|b| (0x20..0x7f).contains(&b)), "{value:?}");
        }
    }
}
