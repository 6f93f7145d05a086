//! Splitting a value into words the way systemd does for `Environment=` and
//! quadlet for `Exec=`: whitespace separates, double or single quotes group,
//! backslash escapes the next character.

pub fn split_words(value: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                if let Some(next) = chars.next() {
                    current.push(next);
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
    words
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
    }
}
