//! The rules for text a client sends: display names, and the text of chat
//! messages and notifications. Written once, used by sign-in, `pulse token`,
//! token checks, the WebSocket and the notification endpoint alike.
//!
//! Display names are shown to everyone, so they must look like what they
//! are: NFC-normalised (two spellings of "é" are one name), and free of
//! control, format (zero-width, bidi overrides), private-use, unassigned and
//! separator characters, and of letters that render as blank. Message text
//! may hold newlines and tabs, never other control characters (NUL, terminal
//! escapes). Neither may hold the bidi controls that reorder what others see
//! (embeddings, overrides, isolates: `invoice_<U+202E>fdp.exe` shows as
//! `invoice_exe.pdf`): one rule, [`bidi_control`], for both.

use icu_normalizer::ComposingNormalizerBorrowed;
use icu_properties::props::GeneralCategory;
use icu_properties::CodePointMapData;

use crate::protocol::{MAX_NAME_CHARS, MAX_TEXT_CHARS};

/// Letters that render as nothing at all (Hangul fillers, the blank Braille
/// pattern): a name made of them looks empty, and one holding them can
/// impersonate another.
const BLANK_LETTERS: [char; 5] = ['\u{115F}', '\u{1160}', '\u{3164}', '\u{FFA0}', '\u{2800}'];

/// The Unicode bidi embedding, override and isolate controls (U+202A–202E,
/// U+2066–2069).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// The first bidi control in `text` (`what`: "a name", "text"), as the
/// refusal that names it.
pub fn bidi_control(text: &str, what: &str) -> Result<(), String> {
    match text.chars().find(|&c| is_bidi_control(c)) {
        Some(c) => Err(format!(
            "{what} may not contain bidi controls, which reorder what others see (U+{:04X})",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

/// The display name for `raw`: trimmed and NFC-normalised, 1 to
/// [`MAX_NAME_CHARS`] characters of the allowed kinds; else why not.
pub fn display_name(raw: &str) -> Result<String, String> {
    let name = ComposingNormalizerBorrowed::new_nfc().normalize(raw.trim());
    let len = name.chars().count();
    if !(1..=MAX_NAME_CHARS).contains(&len) {
        return Err(format!("a name is 1 to {MAX_NAME_CHARS} characters"));
    }
    bidi_control(&name, "a name")?;
    let categories = CodePointMapData::<GeneralCategory>::new();
    let bad = name.chars().find(|&c| {
        BLANK_LETTERS.contains(&c)
            || matches!(
                categories.get(c),
                GeneralCategory::Control
                    | GeneralCategory::Format
                    | GeneralCategory::PrivateUse
                    | GeneralCategory::Unassigned
                    | GeneralCategory::Surrogate
                    | GeneralCategory::LineSeparator
                    | GeneralCategory::ParagraphSeparator
            )
    });
    if let Some(c) = bad {
        return Err(format!(
            "a name may not contain invisible or control characters (U+{:04X})",
            u32::from(c)
        ));
    }
    Ok(name.into_owned())
}

/// The text of a chat message or notification: trimmed, 1 to
/// [`MAX_TEXT_CHARS`] characters, no control characters but newline and
/// tab; else why not.
pub fn message_text(raw: &str) -> Result<&str, String> {
    let text = raw.trim();
    let chars = text.chars().count();
    if chars == 0 || chars > MAX_TEXT_CHARS {
        return Err(format!(
            "text must be 1-{MAX_TEXT_CHARS} characters after trimming, got {chars}"
        ));
    }
    if let Some(c) = text
        .chars()
        .find(|&c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(format!(
            "text may not contain control characters (U+{:04X}); newline and tab are fine",
            u32::from(c)
        ));
    }
    bidi_control(text, "text")?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_visible() {
        assert_eq!(display_name("  Ada  ").as_deref(), Ok("Ada"));
        // "e" + combining acute is the same name as "é".
        assert_eq!(display_name("Rene\u{301}").as_deref(), Ok("Ren\u{e9}"));
        assert_eq!(display_name("Zoë Wu").as_deref(), Ok("Zoë Wu"));
        assert_eq!(
            display_name(&"x".repeat(MAX_NAME_CHARS)).map(|n| n.len()),
            Ok(32)
        );
        for bad in [
            "",
            "   ",
            "a\u{0}b",
            "zero\u{200B}width",
            "evil\u{202E}txet",
            "\u{3164}",
            "pua\u{E000}",
            "line\u{2028}sep",
            &"x".repeat(MAX_NAME_CHARS + 1),
        ] {
            assert!(display_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn text_keeps_newlines_and_tabs_only() {
        assert_eq!(message_text(" hi\nthere\t! "), Ok("hi\nthere\t!"));
        assert!(message_text("nul\u{0}").is_err());
        assert!(message_text("esc\u{1b}[2J").is_err());
        assert!(message_text("del\u{7f}").is_err());
        assert!(message_text("  ").is_err());
        assert!(message_text(&"x".repeat(MAX_TEXT_CHARS + 1)).is_err());
        // Bidi embeddings, overrides and isolates reorder what others see.
        for c in ['\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}'] {
            let why = message_text(&format!("invoice_{c}fdp.exe")).unwrap_err();
            assert!(why.contains("bidi"), "{why}");
        }
        for c in ['\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}'] {
            assert!(message_text(&format!("a{c}b")).is_err());
            assert!(display_name(&format!("a{c}b"))
                .unwrap_err()
                .contains("bidi"));
        }
        // Right-to-left text itself is fine.
        assert_eq!(message_text("שלום עולם"), Ok("שלום עולם"));
    }
}
