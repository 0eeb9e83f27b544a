//! The lexer: template text into tokens, as Go's `text/template/parse` lexes it (`{{`/`}}`,
//! trim markers, comments dropped, literals left as written for the parser to convert).

/// Keywords of the action language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kw {
    Block,
    Break,
    Continue,
    Define,
    Else,
    End,
    If,
    Range,
    Template,
    With,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Tok {
    /// Plain text between actions (already trimmed by `{{-` / `-}}`).
    Text(String),
    Left,
    Right,
    Space,
    /// `.Name` (without the dot).
    Field(String),
    /// `.` alone.
    Dot,
    /// `$` or `$name` (with the dollar).
    Var(String),
    Ident(String),
    Keyword(Kw),
    Bool(bool),
    Nil,
    /// A string literal, unquoted.
    Str(String),
    /// A character literal, as its code point.
    Char(char),
    /// A number as written.
    Number(String),
    LParen,
    RParen,
    Pipe,
    Declare,
    Assign,
    Comma,
    Eof,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    /// Byte offset of the token's start.
    pub(crate) pos: usize,
    /// Byte offset just past the token.
    pub(crate) end: usize,
}

/// A lexing error at a byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LexError {
    pub(crate) pos: usize,
    pub(crate) msg: String,
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_alnum(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

fn has_left_trim(s: &str) -> bool {
    let mut it = s.chars();
    it.next() == Some('-') && it.next().is_some_and(is_space)
}

fn has_right_trim(s: &str) -> bool {
    let mut it = s.chars();
    it.next().is_some_and(is_space) && it.next() == Some('-')
}

/// Splits `src` into tokens, ending with [`Tok::Eof`].
pub(crate) fn lex(src: &str) -> Result<Vec<Token>, LexError> {
    let mut l = Lexer {
        src,
        pos: 0,
        toks: Vec::new(),
        paren_depth: 0,
        trim_next_text: false,
    };
    l.run()?;
    Ok(l.toks)
}

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
    toks: Vec<Token>,
    paren_depth: usize,
    /// The previous action ended with `-}}`: drop the next text's leading white space.
    trim_next_text: bool,
}

impl Lexer<'_> {
    fn err<T>(&self, pos: usize, msg: impl Into<String>) -> Result<T, LexError> {
        Err(LexError {
            pos,
            msg: msg.into(),
        })
    }

    fn emit(&mut self, tok: Tok, pos: usize) {
        self.toks.push(Token {
            tok,
            pos,
            end: self.pos,
        });
    }

    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn run(&mut self) -> Result<(), LexError> {
        loop {
            // Text up to the next "{{".
            let start = self.pos;
            let next = self.rest().find("{{").map(|i| start + i);
            let text_end = next.unwrap_or(self.src.len());
            let mut text = &self.src[start..text_end];
            if std::mem::take(&mut self.trim_next_text) {
                text = text.trim_start_matches(is_space);
            }
            let Some(open) = next else {
                if !text.is_empty() {
                    self.pos = text_end;
                    self.emit(Tok::Text(text.to_owned()), start);
                }
                self.pos = self.src.len();
                self.emit(Tok::Eof, self.src.len());
                return Ok(());
            };
            let after = &self.src[open + 2..];
            let trim_left = has_left_trim(after);
            if trim_left {
                text = text.trim_end_matches(is_space);
            }
            if !text.is_empty() {
                self.pos = text_end;
                self.emit(Tok::Text(text.to_owned()), start);
            }
            self.pos = open + if trim_left { 4 } else { 2 };
            if self.rest().starts_with("/*") {
                self.comment(open)?;
                continue;
            }
            self.emit(Tok::Left, open);
            self.inside_action()?;
        }
    }

    /// A `/* ... */` comment that must fill the whole action.
    fn comment(&mut self, open: usize) -> Result<(), LexError> {
        let Some(close) = self.rest().find("*/") else {
            return self.err(open, "unclosed comment");
        };
        self.pos += close + 2;
        if has_right_trim(self.rest()) && self.rest()[2..].starts_with("}}") {
            self.pos += 4;
            self.trim_next_text = true;
        } else if self.rest().starts_with("}}") {
            self.pos += 2;
        } else {
            return self.err(open, "comment ends before closing delimiter");
        }
        Ok(())
    }

    /// Whether a `}}` (with or without a trim marker) starts here.
    fn at_right_delim(&self) -> Option<bool> {
        let r = self.rest();
        if has_right_trim(r) && r[2..].starts_with("}}") {
            Some(true)
        } else if r.starts_with("}}") {
            Some(false)
        } else {
            None
        }
    }

    fn inside_action(&mut self) -> Result<(), LexError> {
        loop {
            if let Some(trim) = self.at_right_delim() {
                if self.paren_depth > 0 {
                    return self.err(self.pos, "unclosed left paren");
                }
                if trim {
                    self.pos += 2;
                    self.trim_next_text = true;
                }
                let right = self.pos;
                self.pos += 2;
                self.emit(Tok::Right, right);
                return Ok(());
            }
            let start = self.pos;
            let Some(c) = self.bump() else {
                return self.err(start, "unclosed action");
            };
            match c {
                c if is_space(c) => self.space(start),
                '=' => self.emit(Tok::Assign, start),
                ':' => {
                    if self.bump() != Some('=') {
                        return self.err(start, "expected :=");
                    }
                    self.emit(Tok::Declare, start);
                }
                '|' => self.emit(Tok::Pipe, start),
                '"' => self.quote(start)?,
                '`' => self.raw_quote(start)?,
                '\'' => self.char_const(start)?,
                '$' => self.field_or_var(start, true)?,
                '.' if !self.peek().is_some_and(|d| d.is_ascii_digit()) => {
                    self.field_or_var(start, false)?;
                }
                '.' | '+' | '-' | '0'..='9' => self.number(start)?,
                c if is_alnum(c) => self.identifier(start)?,
                '(' => {
                    self.paren_depth += 1;
                    self.emit(Tok::LParen, start);
                }
                ')' => {
                    if self.paren_depth == 0 {
                        return self.err(start, "unexpected right paren");
                    }
                    self.paren_depth -= 1;
                    self.emit(Tok::RParen, start);
                }
                ',' => self.emit(Tok::Comma, start),
                c => {
                    return self.err(
                        start,
                        format!("unrecognized character in action: U+{:04X} '{c}'", c as u32),
                    );
                }
            }
        }
    }

    /// A run of spaces; a single space before `-}}` belongs to the delimiter.
    fn space(&mut self, start: usize) {
        while self.peek().is_some_and(is_space) {
            self.bump();
        }
        // The last space may start a " -}}".
        let last = self.pos - 1;
        if has_right_trim(&self.src[last..]) && self.src[last + 2..].starts_with("}}") {
            self.pos = last;
            if self.pos == start {
                return;
            }
        }
        self.emit(Tok::Space, start);
    }

    fn at_terminator(&self) -> bool {
        match self.peek() {
            None => true,
            Some(c) if is_space(c) => true,
            Some('.' | ',' | '|' | ':' | ')' | '(') => true,
            _ => self.rest().starts_with("}}"),
        }
    }

    fn field_or_var(&mut self, start: usize, var: bool) -> Result<(), LexError> {
        if self.at_terminator() {
            self.emit(if var { Tok::Var("$".into()) } else { Tok::Dot }, start);
            return Ok(());
        }
        while self.peek().is_some_and(is_alnum) {
            self.bump();
        }
        if !self.at_terminator() {
            let c = self.peek().unwrap_or(' ');
            return self.err(start, format!("bad character U+{:04X} '{c}'", c as u32));
        }
        let text = &self.src[start..self.pos];
        if var {
            self.emit(Tok::Var(text.to_owned()), start);
        } else {
            self.emit(Tok::Field(text[1..].to_owned()), start);
        }
        Ok(())
    }

    fn identifier(&mut self, start: usize) -> Result<(), LexError> {
        while self.peek().is_some_and(is_alnum) {
            self.bump();
        }
        if !self.at_terminator() {
            let c = self.peek().unwrap_or(' ');
            return self.err(start, format!("bad character U+{:04X} '{c}'", c as u32));
        }
        let word = &self.src[start..self.pos];
        let tok = match word {
            "block" => Tok::Keyword(Kw::Block),
            "break" => Tok::Keyword(Kw::Break),
            "continue" => Tok::Keyword(Kw::Continue),
            "define" => Tok::Keyword(Kw::Define),
            "else" => Tok::Keyword(Kw::Else),
            "end" => Tok::Keyword(Kw::End),
            "if" => Tok::Keyword(Kw::If),
            "range" => Tok::Keyword(Kw::Range),
            "template" => Tok::Keyword(Kw::Template),
            "with" => Tok::Keyword(Kw::With),
            "true" => Tok::Bool(true),
            "false" => Tok::Bool(false),
            "nil" => Tok::Nil,
            w => Tok::Ident(w.to_owned()),
        };
        self.emit(tok, start);
        Ok(())
    }

    fn accept(&mut self, set: &str) -> bool {
        match self.peek() {
            Some(c) if set.contains(c) => {
                self.bump();
                true
            }
            _ => false,
        }
    }

    fn accept_run(&mut self, set: &str) {
        while self.accept(set) {}
    }

    /// A number as Go scans it; converted (and validated further) by the parser.
    fn number(&mut self, start: usize) -> Result<(), LexError> {
        self.pos = start;
        self.accept("+-");
        let mut digits = "0123456789_";
        if self.accept("0") {
            if self.accept("xX") {
                digits = "0123456789abcdefABCDEF_";
            } else if self.accept("oO") {
                digits = "01234567_";
            } else if self.accept("bB") {
                digits = "01_";
            }
        }
        self.accept_run(digits);
        if self.accept(".") {
            self.accept_run(digits);
        }
        if digits.len() == 11 && self.accept("eE") {
            self.accept("+-");
            self.accept_run("0123456789_");
        }
        if digits.len() == 23 && self.accept("pP") {
            self.accept("+-");
            self.accept_run("0123456789_");
        }
        self.accept("i");
        if self.peek().is_some_and(is_alnum) {
            self.bump();
            return self.err(
                start,
                format!("bad number syntax: {:?}", &self.src[start..self.pos]),
            );
        }
        self.emit(Tok::Number(self.src[start..self.pos].to_owned()), start);
        Ok(())
    }

    /// Scans to the closing `quote` of a literal opened at `start` (backslash escapes may not
    /// break the line); the unescaped contents.
    fn quoted(&mut self, start: usize, quote: char, what: &str) -> Result<String, LexError> {
        loop {
            match self.bump() {
                Some('\\') => match self.bump() {
                    Some('\n') | None => return self.err(start, format!("unterminated {what}")),
                    Some(_) => {}
                },
                Some('\n') | None => return self.err(start, format!("unterminated {what}")),
                Some(c) if c == quote => break,
                Some(_) => {}
            }
        }
        unescape(&self.src[start + 1..self.pos - 1], quote)
            .map_err(|msg| LexError { pos: start, msg })
    }

    fn quote(&mut self, start: usize) -> Result<(), LexError> {
        let s = self.quoted(start, '"', "quoted string")?;
        self.emit(Tok::Str(s), start);
        Ok(())
    }

    fn raw_quote(&mut self, start: usize) -> Result<(), LexError> {
        let Some(close) = self.rest().find('`') else {
            return self.err(start, "unterminated raw quoted string");
        };
        let s: String = self.rest()[..close]
            .chars()
            .filter(|&c| c != '\r')
            .collect();
        self.pos += close + 1;
        self.emit(Tok::Str(s), start);
        Ok(())
    }

    fn char_const(&mut self, start: usize) -> Result<(), LexError> {
        let s = self.quoted(start, '\'', "character constant")?;
        let raw = &self.src[start + 1..self.pos - 1];
        let mut it = s.chars();
        match (it.next(), it.next()) {
            (Some(c), None) => {
                self.emit(Tok::Char(c), start);
                Ok(())
            }
            _ => self.err(start, format!("malformed character constant: '{}'", &raw)),
        }
    }
}

/// Go's escape sequences inside a `"..."` or `'...'` literal.
fn unescape(raw: &str, quote: char) -> Result<String, String> {
    let mut out = String::new();
    let mut it = raw.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(e) = it.next() else {
            return Err("invalid syntax".into());
        };
        let c = match e {
            'a' => '\x07',
            'b' => '\x08',
            'f' => '\x0c',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\x0b',
            '\\' => '\\',
            q if q == quote => q,
            'x' | 'u' | 'U' => {
                let n = match e {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let hex: String = it.by_ref().take(n).collect();
                let v = u32::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| hex.len() == n && hex.chars().all(|h| h.is_ascii_hexdigit()))
                    .ok_or_else(|| format!("invalid escape \\{e}{hex}"))?;
                if e == 'x' {
                    // A byte; Go keeps it as a byte, which is a char only below 0x80.
                    char::from_u32(v).filter(|_| v < 0x80).unwrap_or('\u{FFFD}')
                } else {
                    char::from_u32(v).ok_or_else(|| format!("invalid escape \\{e}{hex}"))?
                }
            }
            '0'..='7' => {
                let rest: String = it.by_ref().take(2).collect();
                let oct = format!("{e}{rest}");
                let v = u32::from_str_radix(&oct, 8)
                    .ok()
                    .filter(|v| oct.len() == 3 && *v < 256)
                    .ok_or_else(|| format!("invalid escape \\{oct}"))?;
                char::from_u32(v).filter(|_| v < 0x80).unwrap_or('\u{FFFD}')
            }
            other => return Err(format!("invalid escape \\{other}")),
        };
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(src: &str) -> Vec<Tok> {
        lex(src).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn text_and_actions() {
        assert_eq!(
            toks("a{{.Router.Name}}b"),
            vec![
                Tok::Text("a".into()),
                Tok::Left,
                Tok::Field("Router".into()),
                Tok::Field("Name".into()),
                Tok::Right,
                Tok::Text("b".into()),
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("{{$x := 3}}"),
            vec![
                Tok::Left,
                Tok::Var("$x".into()),
                Tok::Space,
                Tok::Declare,
                Tok::Space,
                Tok::Number("3".into()),
                Tok::Right,
                Tok::Eof
            ]
        );
    }

    #[test]
    fn trim_markers_and_comments() {
        assert_eq!(
            toks("a  {{- 1 -}}  b"),
            vec![
                Tok::Text("a".into()),
                Tok::Left,
                Tok::Number("1".into()),
                Tok::Right,
                Tok::Text("b".into()),
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("a {{/* x */}} b"),
            vec![Tok::Text("a ".into()), Tok::Text(" b".into()), Tok::Eof]
        );
        assert_eq!(
            toks("a {{- /* x */ -}} b"),
            vec![Tok::Text("a".into()), Tok::Text("b".into()), Tok::Eof]
        );
        // "-3" is a number, not a trim marker.
        assert_eq!(
            toks("{{-3}}"),
            vec![Tok::Left, Tok::Number("-3".into()), Tok::Right, Tok::Eof]
        );
        assert!(lex("{{/* x */ .}}").is_err());
        assert!(lex("{{/* x").is_err());
    }

    #[test]
    fn literals() {
        assert_eq!(
            toks(r#"{{"a\n\"b" `c\d` 'x' '\n'}}"#),
            vec![
                Tok::Left,
                Tok::Str("a\n\"b".into()),
                Tok::Space,
                Tok::Str("c\\d".into()),
                Tok::Space,
                Tok::Char('x'),
                Tok::Space,
                Tok::Char('\n'),
                Tok::Right,
                Tok::Eof
            ]
        );
        assert!(lex("{{\"abc}}").is_err());
        assert!(lex("{{3x}}").is_err());
        assert!(lex("{{.}").is_err());
        assert!(lex("{{)}}").is_err());
        assert!(lex("{{(}}").is_err());
        assert!(lex("{{#}}").is_err());
    }
}
