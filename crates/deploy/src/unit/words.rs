//! Splitting a value into words the way systemd does for `Environment=` and
//! quadlet for `Exec=`: whitespace separates, double or single quotes group,
//! backslash escapes the next character.

pub fn split_words(value: &str) -> Vec<String> {
    split(value).words
}

/// What a value that is to become words got wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitError {
    /// A backslash with nothing after it.
    LoneBackslash,
    /// A quote that is never closed.
    UnbalancedQuote,
}

/// [`split_words`], refusing a trailing lone backslash and an unclosed
/// quote (which `split_words` reads leniently, as the readers of existing
/// files do).
pub fn split_words_checked(value: &str) -> Result<Vec<String>, SplitError> {
    let Split {
        words,
        lone_backslash,
        open_quote,
    } = split(value);
    if lone_backslash {
        Err(SplitError::LoneBackslash)
    } else if open_quote {
        Err(SplitError::UnbalancedQuote)
    } else {
        Ok(words)
    }
}

struct Split {
    words: Vec<String>,
    lone_backslash: bool,
    open_quote: bool,
}

fn split(value: &str) -> Split {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut lone_backslash = false;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                match chars.next() {
                    Some(next) => current.push(next),
                    None => lone_backslash = true,
                }
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => current.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (None, c) => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(current);
    }
    Split {
        words,
        lone_backslash,
        open_quote: quote.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_group_and_escapes_escape() {
        assert_eq!(
            split_words(r#"A=1 "B=two words" 'C=x y' D=a\ b"#),
            vec!["A=1", "B=two words", "C=x y", "D=a b"]
        );
        assert_eq!(split_words("  "), Vec::<String>::new());
        assert_eq!(
            split_words(r#"sh -c "exec server""#),
            vec!["sh", "-c", "exec server"]
        );
        assert_eq!(split_words_checked("a \\"), Err(SplitError::LoneBackslash));
        assert_eq!(
            split_words_checked("a 'b"),
            Err(SplitError::UnbalancedQuote)
        );
        assert_eq!(
            split_words_checked(r#"a "b c""#),
            Ok(vec!["a".into(), "b c".into()])
        );
    }
}
