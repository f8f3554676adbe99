//! Chat text → index terms, each with the bytes of the text it came from
//! (for highlights).
//!
//! # The pipeline
//!
//! 1. **Words** by Unicode word segmentation (UAX #29,
//!    `unicode-segmentation`'s `unicode_word_indices`): spaces and
//!    punctuation separate words; "don't", "e-mail"'s halves, "3.14" and
//!    "user@example" come out as the standard says.
//! 2. **Folding** of each word: compatibility decomposition (NFKD, so
//!    "ﬁ" is "fi" and full-width "Ａ" is "A"), combining marks dropped
//!    (diacritics: "café" is "cafe", "Ångström" is "angstrom"), the rest
//!    recomposed (NFC: Hangul syllables stay syllables), then lower case (full Unicode case mapping: "STRASSE" and "straße" differ,
//!    as they do in every case-folding search engine without a
//!    language-specific rule).
//! 3. **Scripts without spaces** (Han, Hiragana, Katakana): UAX #29 makes
//!    each ideograph a word of its own, so a run of them would otherwise be
//!    searchable only one character at a time. A run of adjacent CJK
//!    characters gives every overlapping **bigram** plus every **unigram**
//!    ("東京都" → 東京, 京都, 東, 京, 都): a query's bigrams, all required,
//!    find the run wherever it occurs (the usual CJK-bigram approach, as
//!    in Lucene's `CJKBigramFilter` with unigrams kept), and a one-character
//!    query still matches. Hangul is written with spaces and is segmented
//!    as words.
//!
//! A term is at most [`MAX_TERM_BYTES`] bytes of UTF-8 (cut at a character
//! boundary) and never contains a NUL (the index key ends a term with one).

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

/// The longest term kept, in bytes: longer words are indexed by their
/// first 64 bytes (a query's word is cut the same way, so it still finds
/// them).
pub const MAX_TERM_BYTES: usize = 64;

/// A term and where in the text it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The folded term.
    pub term: String,
    /// Byte range in the original text.
    pub start: usize,
    /// End of that range (exclusive).
    pub end: usize,
}

/// Whether `c` belongs to a script written without spaces between words,
/// which the tokenizer splits into bigrams and unigrams.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x309F      // Hiragana
        | 0x30A0..=0x30FF    // Katakana
        | 0x31F0..=0x31FF    // Katakana phonetic extensions
        | 0x3400..=0x4DBF    // CJK extension A
        | 0x4E00..=0x9FFF    // CJK unified ideographs
        | 0xF900..=0xFAFF    // CJK compatibility ideographs
        | 0xFF66..=0xFF9F    // half-width Katakana
        | 0x20000..=0x2FFFF  // CJK extensions B and later, compatibility supplement
    )
}

/// `word` folded: NFKD, combining marks dropped, NFC, lower-cased, cut to
/// [`MAX_TERM_BYTES`], NULs dropped.
pub fn fold(word: &str) -> String {
    if word.is_ascii() {
        // The common case, without the normalizers' buffering: ASCII is
        // its own NFKD and NFC, has no combining marks, and lower-cases
        // byte by byte (the model test checks this against the full path).
        let mut out: String = word.chars().filter(|&c| c != '\0').collect();
        out.make_ascii_lowercase();
        out.truncate(MAX_TERM_BYTES);
        return out;
    }
    fold_unicode(word)
}

/// [`fold`] for any text.
fn fold_unicode(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    // Recomposed after the marks are dropped: Hangul syllables (which
    // NFKD splits into jamo) come back whole, and short.
    let bare = word.nfkd().filter(|c| !is_combining_mark(*c) && *c != '\0');
    for c in bare.nfc() {
        for l in c.to_lowercase() {
            if out.len() + l.len_utf8() > MAX_TERM_BYTES {
                return out;
            }
            out.push(l);
        }
    }
    out
}

/// The tokens of `text`, in text order (a CJK run's bigrams first, then
/// its unigrams). Terms repeat when words do.
pub fn tokens(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    // The CJK run being gathered: (start byte, char) of each character.
    let mut run: Vec<(usize, char)> = Vec::new();
    let mut run_end = 0usize;
    for (start, word) in text.unicode_word_indices() {
        let mut chars = word.chars();
        let single_cjk = match (chars.next(), chars.next()) {
            (Some(c), None) if is_cjk(c) => Some(c),
            _ => None,
        };
        if let Some(c) = single_cjk {
            if !run.is_empty() && start != run_end {
                flush_run(&mut run, &mut out);
            }
            run.push((start, c));
            run_end = start + word.len();
            continue;
        }
        flush_run(&mut run, &mut out);
        if word.chars().any(is_cjk) {
            // A word mixing CJK with other letters (a Katakana word, which
            // UAX #29 keeps whole): its CJK characters as a run of their
            // own, the word itself too.
            let mut sub: Vec<(usize, char)> = Vec::new();
            for (i, c) in word.char_indices() {
                if is_cjk(c) {
                    sub.push((start + i, c));
                } else {
                    flush_run(&mut sub, &mut out);
                }
            }
            flush_run(&mut sub, &mut out);
        }
        let term = fold(word);
        if !term.is_empty() {
            out.push(Token {
                term,
                start,
                end: start + word.len(),
            });
        }
    }
    flush_run(&mut run, &mut out);
    out
}

/// Emits a CJK run's bigrams and unigrams, and empties it.
fn flush_run(run: &mut Vec<(usize, char)>, out: &mut Vec<Token>) {
    let span = |i: usize| (run[i].0, run[i].0 + run[i].1.len_utf8());
    for i in 0..run.len().saturating_sub(1) {
        let (start, _) = span(i);
        let (_, end) = span(i + 1);
        let pair: String = [run[i].1, run[i + 1].1].iter().collect();
        out.push(Token {
            term: fold(&pair),
            start,
            end,
        });
    }
    for &(start, c) in run.iter() {
        out.push(Token {
            term: fold(c.encode_utf8(&mut [0; 4])),
            start,
            end: start + c.len_utf8(),
        });
    }
    run.clear();
}

/// The distinct terms of `text`, sorted (what the index stores for a
/// message).
pub fn terms(text: &str) -> Vec<String> {
    let mut t: Vec<String> = tokens(text).into_iter().map(|t| t.term).collect();
    t.sort_unstable();
    t.dedup();
    t
}

/// A query's terms: every term of `query`, all required; the last one a
/// prefix unless the query ends between words (search-as-you-type: "hel"
/// finds "hello", "hello " only "hello"). A CJK query's last run is
/// matched by its bigrams exactly (they are already partial words).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct QueryTerms {
    /// Terms matched exactly.
    pub exact: Vec<String>,
    /// The term matched as a prefix, if any.
    pub prefix: Option<String>,
}

/// Splits a query into the terms it requires (see [`QueryTerms`]).
pub fn query(query: &str) -> QueryTerms {
    let toks = tokens(query);
    let ends_in_word = toks
        .last()
        .is_some_and(|t| t.end == query.len() && !t.term.chars().any(is_cjk));
    let mut exact: Vec<String> = toks.iter().map(|t| t.term.clone()).collect();
    let prefix = if ends_in_word { exact.pop() } else { None };
    exact.sort_unstable();
    exact.dedup();
    if let Some(p) = &prefix {
        // A prefix that is also required whole adds nothing.
        exact.retain(|e| e != p);
    }
    QueryTerms { exact, prefix }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> Vec<String> {
        tokens(text).into_iter().map(|t| t.term).collect()
    }

    #[test]
    fn words_are_split_folded_and_placed() {
        assert_eq!(t("Hello, WORLD!"), ["hello", "world"]);
        assert_eq!(t("Café crème à Zürich"), ["cafe", "creme", "a", "zurich"]);
        assert_eq!(t("ﬁne Ａｐｐｌｅ"), ["fine", "apple"]);
        assert_eq!(t("Ångström"), ["angstrom"]);
        let toks = tokens("say «Grüß» twice");
        assert_eq!(toks[1].term, "gruß");
        assert_eq!(&"say «Grüß» twice"[toks[1].start..toks[1].end], "Grüß");
        assert!(t("  ... !!! ").is_empty());
    }

    #[test]
    fn cjk_runs_give_bigrams_and_unigrams() {
        assert_eq!(t("東京都"), ["東京", "京都", "東", "京", "都"]);
        // A run broken by a space is two runs.
        assert_eq!(t("東 京"), ["東", "京"]);
        // Mixed with Latin words.
        assert_eq!(
            t("meet 東京 tomorrow"),
            ["meet", "東京", "東", "京", "tomorrow"]
        );
        // Hangul is written with spaces: words.
        assert_eq!(t("안녕 하세요"), ["안녕", "하세요"]);
        // Highlights point at the characters.
        let text = "x 東京";
        let toks = tokens(text);
        assert_eq!(&text[toks[1].start..toks[1].end], "東京");
    }

    #[test]
    fn terms_are_bounded_and_never_hold_a_nul() {
        let long = "a".repeat(200);
        assert_eq!(t(&long), ["a".repeat(MAX_TERM_BYTES)]);
        let wide = "é".repeat(100); // 1 byte each once folded
        assert_eq!(t(&wide)[0].len(), MAX_TERM_BYTES);
        let han = "\u{20000}".repeat(30); // 4 bytes each
        assert!(t(&han).iter().all(|x| x.len() <= MAX_TERM_BYTES));
        assert!(t("a\0b").iter().all(|x| !x.contains('\0')));
    }

    proptest::proptest! {
        /// The ASCII shortcut folds exactly as the full pipeline does.
        #[test]
        fn ascii_folds_as_the_full_pipeline_does(word in "[\\x00-\\x7f]{0,80}") {
            proptest::prop_assert_eq!(fold(&word), fold_unicode(&word));
        }
    }

    #[test]
    fn the_last_query_word_is_a_prefix_while_typing() {
        assert_eq!(
            query("Meet hel"),
            QueryTerms {
                exact: vec!["meet".into()],
                prefix: Some("hel".into())
            }
        );
        assert_eq!(
            query("meet hello "),
            QueryTerms {
                exact: vec!["hello".into(), "meet".into()],
                prefix: None
            }
        );
        assert_eq!(query("東京").prefix, None);
        assert_eq!(query("").exact, Vec::<String>::new());
    }
}
