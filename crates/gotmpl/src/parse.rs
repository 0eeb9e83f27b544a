//! The parser: tokens into a tree, with the checks Go makes at parse time (functions and
//! variables must exist, `break` only inside `range`, only the first stage of a pipeline may be
//! a constant, ...). Recursive descent after Go's `text/template/parse`, with a nesting bound.

use std::collections::BTreeMap;

use crate::lex::{Kw, LexError, Tok, Token, lex};
use crate::value::Value;
use crate::{Error, ErrorKind, Funcs};

/// Deepest nesting of control structures and parenthesised pipelines.
const MAX_DEPTH: usize = 100;

/// The built-in functions (Go's `builtins()`).
pub(crate) const BUILTINS: &[&str] = &[
    "and", "call", "html", "index", "slice", "js", "len", "not", "or", "print", "printf",
    "println", "urlquery", "eq", "ge", "gt", "le", "lt", "ne",
];

#[derive(Clone, Debug)]
pub(crate) enum Node {
    Text(String),
    Action(Pipe),
    If(Box<Branch>),
    With(Box<Branch>),
    Range(Box<Branch>),
    Template {
        pos: usize,
        name: String,
        pipe: Option<Pipe>,
    },
    Break,
    Continue,
}

/// The body of `if`, `with` or `range`.
#[derive(Clone, Debug)]
pub(crate) struct Branch {
    pub(crate) pipe: Pipe,
    pub(crate) list: Vec<Node>,
    pub(crate) else_list: Option<Vec<Node>>,
}

#[derive(Clone, Debug)]
pub(crate) struct Pipe {
    /// Variables declared (`:=`) or assigned (`=`).
    pub(crate) decl: Vec<String>,
    pub(crate) is_assign: bool,
    pub(crate) cmds: Vec<Cmd>,
}

#[derive(Clone, Debug)]
pub(crate) struct Cmd {
    pub(crate) pos: usize,
    pub(crate) end: usize,
    pub(crate) args: Vec<Arg>,
}

#[derive(Clone, Debug)]
pub(crate) struct Arg {
    pub(crate) pos: usize,
    pub(crate) end: usize,
    pub(crate) kind: ArgKind,
}

#[derive(Clone, Debug)]
pub(crate) enum ArgKind {
    Dot,
    Nil,
    /// A constant: bool, number, string or character.
    Const(Value),
    /// `.A.B`.
    Field(Vec<String>),
    /// `$x.A.B` (the chain may be empty).
    Var(String, Vec<String>),
    /// A function name.
    Ident(String),
    /// `(pipeline).A.B`.
    Pipe(Box<Pipe>, Vec<String>),
}

pub(crate) struct Parsed {
    pub(crate) root: Vec<Node>,
    pub(crate) defs: BTreeMap<String, Vec<Node>>,
}

/// Parses a template's text.
pub(crate) fn parse(name: &str, src: &str, funcs: &Funcs) -> Result<Parsed, Error> {
    let toks = lex(src).map_err(|LexError { pos, msg }| {
        Error::new(
            ErrorKind::Parse,
            format!("template: {name}:{}: {msg}", line_of(src, pos)),
        )
    })?;
    let mut p = Parser {
        name,
        src,
        toks,
        i: 0,
        funcs,
        vars: vec!["$".to_owned()],
        range_depth: 0,
        depth: 0,
        defs: BTreeMap::new(),
    };
    let root = p.top()?;
    Ok(Parsed { root, defs: p.defs })
}

/// The 1-based line of byte offset `pos`.
pub(crate) fn line_of(src: &str, pos: usize) -> usize {
    src.get(..pos).map_or(1, |s| s.matches('\n').count() + 1)
}

/// What `text_or_action` found: a node, or the `{{end}}` / `{{else}}` closing a list.
enum Item {
    Node(Node),
    End,
    Else,
}

struct Parser<'s> {
    name: &'s str,
    src: &'s str,
    toks: Vec<Token>,
    i: usize,
    funcs: &'s Funcs,
    vars: Vec<String>,
    range_depth: usize,
    depth: usize,
    defs: BTreeMap<String, Vec<Node>>,
}

impl Parser<'_> {
    fn err<T>(&self, pos: usize, msg: impl std::fmt::Display) -> Result<T, Error> {
        Err(Error::new(
            ErrorKind::Parse,
            format!("template: {}:{}: {msg}", self.name, line_of(self.src, pos)),
        ))
    }

    fn next(&mut self) -> Token {
        let t = self.toks[self.i.min(self.toks.len() - 1)].clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }

    fn backup(&mut self) {
        self.i = self.i.saturating_sub(1);
    }

    fn peek(&self) -> &Token {
        &self.toks[self.i.min(self.toks.len() - 1)]
    }

    /// Skips spaces; the next token, not consumed.
    fn peek_non_space(&mut self) -> &Token {
        while self.peek().tok == Tok::Space {
            self.i += 1;
        }
        self.peek()
    }

    fn next_non_space(&mut self) -> Token {
        self.peek_non_space();
        self.next()
    }

    /// Where the last consumed token ended.
    fn last_end(&self) -> usize {
        self.toks[self.i.saturating_sub(1)].end
    }

    fn describe(&self, t: &Token) -> String {
        match &t.tok {
            Tok::Eof => "EOF".to_owned(),
            Tok::Keyword(_) => format!("<{}>", &self.src[t.pos..t.end]),
            _ => {
                let s = self.src.get(t.pos..t.end).unwrap_or("");
                if s.chars().count() > 10 {
                    let head: String = s.chars().take(10).collect();
                    format!("{head:?}...")
                } else {
                    format!("{s:?}")
                }
            }
        }
    }

    fn unexpected<T>(&self, t: &Token, context: &str) -> Result<T, Error> {
        self.err(
            t.pos,
            format!("unexpected {} in {context}", self.describe(t)),
        )
    }

    fn expect_right(&mut self, context: &str) -> Result<(), Error> {
        let t = self.next_non_space();
        if t.tok == Tok::Right {
            Ok(())
        } else {
            self.unexpected(&t, context)
        }
    }

    fn enter(&mut self, pos: usize) -> Result<(), Error> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err(pos, "template nesting too deep");
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    /// The top level: text, actions and `{{define}}`s.
    fn top(&mut self) -> Result<Vec<Node>, Error> {
        let mut root = Vec::new();
        loop {
            match self.peek().tok {
                Tok::Eof => return Ok(root),
                Tok::Left => {
                    let save = self.i;
                    self.next();
                    if self.peek_non_space().tok == Tok::Keyword(Kw::Define) {
                        self.next();
                        self.definition()?;
                        continue;
                    }
                    self.i = save;
                }
                _ => {}
            }
            let pos = self.peek().pos;
            match self.text_or_action()? {
                Item::Node(n) => root.push(n),
                Item::End => return self.err(pos, "unexpected {{end}}"),
                Item::Else => return self.err(pos, "unexpected {{else}}"),
            }
        }
    }

    /// `{{define "name"}} ... {{end}}`.
    fn definition(&mut self) -> Result<(), Error> {
        let t = self.next_non_space();
        let Tok::Str(name) = t.tok else {
            return self.unexpected(&t, "define clause");
        };
        self.expect_right("define clause")?;
        let list = self.template_body(t.pos, "define clause")?;
        self.define(name, list);
        Ok(())
    }

    /// The body of a `define` or `block` up to its `{{end}}`, parsed with only `$` defined and
    /// outside any `range`.
    fn template_body(&mut self, pos: usize, context: &str) -> Result<Vec<Node>, Error> {
        let vars = std::mem::replace(&mut self.vars, vec!["$".to_owned()]);
        let range_depth = std::mem::replace(&mut self.range_depth, 0);
        let r = self.item_list();
        self.vars = vars;
        self.range_depth = range_depth;
        match r? {
            (list, Item::End) => Ok(list),
            _ => self.err(pos, format!("unexpected {{{{else}}}} in {context}")),
        }
    }

    /// Adds a named template; an empty redefinition keeps the earlier body (as Go does).
    fn define(&mut self, name: String, list: Vec<Node>) {
        let empty = list
            .iter()
            .all(|n| matches!(n, Node::Text(s) if s.trim().is_empty()));
        if empty && self.defs.contains_key(&name) {
            return;
        }
        self.defs.insert(name, list);
    }

    /// Nodes up to the `{{end}}` or `{{else}}` that closes them.
    fn item_list(&mut self) -> Result<(Vec<Node>, Item), Error> {
        let mut list = Vec::new();
        loop {
            let t = self.peek_non_space().clone();
            if t.tok == Tok::Eof {
                return self.err(t.pos, "unexpected EOF");
            }
            match self.text_or_action()? {
                Item::Node(n) => list.push(n),
                other => return Ok((list, other)),
            }
        }
    }

    fn text_or_action(&mut self) -> Result<Item, Error> {
        let t = self.next_non_space();
        match t.tok {
            Tok::Text(s) => Ok(Item::Node(Node::Text(s))),
            Tok::Left => self.action(),
            _ => self.unexpected(&t, "input"),
        }
    }

    fn action(&mut self) -> Result<Item, Error> {
        let t = self.next_non_space();
        let node = match t.tok {
            Tok::Keyword(Kw::Block) => self.block(&t)?,
            Tok::Keyword(Kw::Break) | Tok::Keyword(Kw::Continue) => {
                let is_break = t.tok == Tok::Keyword(Kw::Break);
                let word = if is_break { "break" } else { "continue" };
                if self.range_depth == 0 {
                    return self.err(t.pos, format!("{{{{{word}}}}} outside {{{{range}}}}"));
                }
                self.expect_right(&format!("{{{{{word}}}}}"))?;
                if is_break {
                    Node::Break
                } else {
                    Node::Continue
                }
            }
            Tok::Keyword(Kw::Else) => {
                // "{{else if ...}}" and "{{else with ...}}" leave the keyword for the caller.
                if !matches!(
                    self.peek_non_space().tok,
                    Tok::Keyword(Kw::If) | Tok::Keyword(Kw::With)
                ) {
                    self.expect_right("else")?;
                }
                return Ok(Item::Else);
            }
            Tok::Keyword(Kw::End) => {
                self.expect_right("end")?;
                return Ok(Item::End);
            }
            Tok::Keyword(Kw::If) => Node::If(Box::new(self.control("if", t.pos)?)),
            Tok::Keyword(Kw::With) => Node::With(Box::new(self.control("with", t.pos)?)),
            Tok::Keyword(Kw::Range) => Node::Range(Box::new(self.control("range", t.pos)?)),
            Tok::Keyword(Kw::Template) => {
                const CONTEXT: &str = "template clause";
                let nt = self.next_non_space();
                let Tok::Str(name) = nt.tok else {
                    return self.unexpected(&nt, CONTEXT);
                };
                let pipe = if self.next_non_space().tok == Tok::Right {
                    None
                } else {
                    self.backup();
                    Some(self.pipeline(CONTEXT, &Tok::Right)?)
                };
                Node::Template {
                    pos: t.pos,
                    name,
                    pipe,
                }
            }
            Tok::Keyword(Kw::Define) => return self.unexpected(&t, "command"),
            _ => {
                self.backup();
                Node::Action(self.pipeline("command", &Tok::Right)?)
            }
        };
        Ok(Item::Node(node))
    }

    /// `{{block "name" pipeline}} body {{end}}`: defines `name` and calls it.
    fn block(&mut self, t: &Token) -> Result<Node, Error> {
        const CONTEXT: &str = "block clause";
        let nt = self.next_non_space();
        let Tok::Str(name) = nt.tok else {
            return self.unexpected(&nt, CONTEXT);
        };
        let pipe = self.pipeline(CONTEXT, &Tok::Right)?;
        let list = self.template_body(t.pos, CONTEXT)?;
        self.define(name.clone(), list);
        Ok(Node::Template {
            pos: t.pos,
            name,
            pipe: Some(pipe),
        })
    }

    /// `if`, `with` or `range`: pipeline, body, optional else (or else-if chain), end.
    fn control(&mut self, context: &str, pos: usize) -> Result<Branch, Error> {
        self.enter(pos)?;
        let mark = self.vars.len();
        let pipe = self.pipeline(context, &Tok::Right)?;
        let is_range = context == "range";
        if is_range {
            self.range_depth += 1;
        }
        let body = self.item_list();
        if is_range {
            self.range_depth -= 1;
        }
        let (list, next) = body?;
        let mut else_list = None;
        if let Item::Else = next {
            let chained = match (context, &self.peek().tok) {
                ("if", Tok::Keyword(Kw::If)) => Some(true),
                ("with", Tok::Keyword(Kw::With)) => Some(false),
                _ => None,
            };
            else_list = Some(match chained {
                Some(is_if) => {
                    let t = self.next();
                    let inner = self.control(context, t.pos)?;
                    vec![if is_if {
                        Node::If(Box::new(inner))
                    } else {
                        Node::With(Box::new(inner))
                    }]
                }
                None => {
                    let at = self.peek().pos;
                    let (list, end) = self.item_list()?;
                    if !matches!(end, Item::End) {
                        return self.err(at, "expected end; found {{else}}");
                    }
                    list
                }
            });
        }
        self.vars.truncate(mark);
        self.leave();
        Ok(Branch {
            pipe,
            list,
            else_list,
        })
    }

    /// `[$x :=] command [| command]...` up to `end` (`}}` or `)`), which is consumed.
    fn pipeline(&mut self, context: &str, end: &Tok) -> Result<Pipe, Error> {
        let start = self.peek_non_space().pos;
        self.enter(start)?;
        let mut pipe = Pipe {
            decl: Vec::new(),
            is_assign: false,
            cmds: Vec::new(),
        };
        loop {
            let save = self.i;
            let v = self.peek_non_space().clone();
            let Tok::Var(name) = v.tok else { break };
            self.next();
            let after = self.peek_non_space().clone();
            match after.tok {
                Tok::Declare | Tok::Assign => {
                    self.next();
                    if after.tok == Tok::Assign {
                        pipe.is_assign = true;
                        if !self.vars.contains(&name) {
                            return self.err(v.pos, format!("undefined variable {name:?}"));
                        }
                    } else {
                        self.vars.push(name.clone());
                    }
                    pipe.decl.push(name);
                    break;
                }
                Tok::Comma => {
                    self.next();
                    pipe.decl.push(name.clone());
                    self.vars.push(name);
                    if context == "range" && pipe.decl.len() < 2 {
                        match self.peek_non_space().tok {
                            Tok::Var(_) | Tok::Right | Tok::RParen => continue,
                            _ => return self.err(v.pos, "range can only initialize variables"),
                        }
                    }
                    return self.err(v.pos, format!("too many declarations in {context}"));
                }
                _ => {
                    self.i = save;
                    break;
                }
            }
        }
        loop {
            let t = self.next_non_space();
            if &t.tok == end {
                self.check_pipeline(&pipe, context, t.pos)?;
                self.leave();
                return Ok(pipe);
            }
            match t.tok {
                Tok::Bool(_)
                | Tok::Char(_)
                | Tok::Dot
                | Tok::Field(_)
                | Tok::Ident(_)
                | Tok::Number(_)
                | Tok::Nil
                | Tok::Str(_)
                | Tok::Var(_)
                | Tok::LParen => {
                    self.backup();
                    let cmd = self.command()?;
                    pipe.cmds.push(cmd);
                }
                _ => return self.unexpected(&t, context),
            }
        }
    }

    fn check_pipeline(&self, pipe: &Pipe, context: &str, pos: usize) -> Result<(), Error> {
        if pipe.cmds.is_empty() {
            return self.err(pos, format!("missing value for {context}"));
        }
        for (i, c) in pipe.cmds.iter().enumerate().skip(1) {
            if matches!(
                c.args[0].kind,
                ArgKind::Const(_) | ArgKind::Dot | ArgKind::Nil
            ) {
                return self.err(
                    c.pos,
                    format!("non executable command in pipeline stage {}", i + 1),
                );
            }
        }
        Ok(())
    }

    /// Operands separated by spaces, up to `|`, `}}` or `)`.
    fn command(&mut self) -> Result<Cmd, Error> {
        let pos = self.peek_non_space().pos;
        let mut args = Vec::new();
        loop {
            self.peek_non_space();
            if let Some(op) = self.operand()? {
                args.push(op);
            }
            let t = self.next();
            match t.tok {
                Tok::Space => continue,
                Tok::Right | Tok::RParen => self.backup(),
                Tok::Pipe => {}
                _ => return self.unexpected(&t, "operand"),
            }
            break;
        }
        let Some(last) = args.last() else {
            return self.err(pos, "empty command");
        };
        Ok(Cmd {
            pos,
            end: last.end,
            args,
        })
    }

    /// A term and the fields chained onto it (`(x).A.B`, `$v.A`).
    fn operand(&mut self) -> Result<Option<Arg>, Error> {
        let Some(mut arg) = self.term()? else {
            return Ok(None);
        };
        if let Tok::Field(_) = self.peek().tok {
            let mut fields = Vec::new();
            while let Tok::Field(f) = &self.peek().tok {
                fields.push(f.clone());
                self.next();
            }
            match &mut arg.kind {
                ArgKind::Field(chain) | ArgKind::Var(_, chain) | ArgKind::Pipe(_, chain) => {
                    chain.extend(fields);
                }
                _ => {
                    return self.err(
                        arg.pos,
                        format!("unexpected . after term {:?}", &self.src[arg.pos..arg.end]),
                    );
                }
            }
            arg.end = self.last_end();
        }
        Ok(Some(arg))
    }

    fn term(&mut self) -> Result<Option<Arg>, Error> {
        let t = self.next_non_space();
        let kind = match t.tok {
            Tok::Ident(name) => {
                if !BUILTINS.contains(&name.as_str()) && self.funcs.get(&name).is_none() {
                    return self.err(t.pos, format!("function {name:?} not defined"));
                }
                ArgKind::Ident(name)
            }
            Tok::Dot => ArgKind::Dot,
            Tok::Nil => ArgKind::Nil,
            Tok::Var(name) => {
                if !self.vars.contains(&name) {
                    return self.err(t.pos, format!("undefined variable {name:?}"));
                }
                ArgKind::Var(name, Vec::new())
            }
            Tok::Field(name) => ArgKind::Field(vec![name]),
            Tok::Bool(b) => ArgKind::Const(Value::Bool(b)),
            Tok::Number(text) => match parse_number(&text) {
                Ok(v) => ArgKind::Const(v),
                Err(e) => return self.err(t.pos, e),
            },
            Tok::Str(s) => ArgKind::Const(Value::String(s)),
            Tok::Char(c) => ArgKind::Const(Value::Int(i64::from(u32::from(c)))),
            Tok::LParen => {
                let p = self.pipeline("parenthesized pipeline", &Tok::RParen)?;
                ArgKind::Pipe(Box::new(p), Vec::new())
            }
            _ => {
                self.backup();
                return Ok(None);
            }
        };
        Ok(Some(Arg {
            pos: t.pos,
            end: self.last_end(),
            kind,
        }))
    }
}

/// A number constant as Go reads it: an integer (with `0x`, `0o`, `0b` or leading-`0` octal
/// prefixes and `_` separators) or, with a point or an exponent, a float.
pub(crate) fn parse_number(text: &str) -> Result<Value, String> {
    let bad = || format!("bad number syntax: {text:?}");
    if text.ends_with('i') {
        return Err(format!("complex numbers are not supported: {text:?}"));
    }
    let clean: String = text.chars().filter(|&c| c != '_').collect();
    let (neg, body) = match clean.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, clean.strip_prefix('+').unwrap_or(&clean)),
    };
    if body.is_empty() {
        return Err(bad());
    }
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if lower.len() > 1 && lower.starts_with('0') && lower.chars().all(|c| c.is_ascii_digit())
    {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    let is_float = match radix {
        16 => {
            if digits.contains(['.', 'p']) {
                return Err(format!(
                    "hexadecimal floating-point numbers are not supported: {text:?}"
                ));
            }
            false
        }
        10 => digits.contains(['.', 'e']),
        _ => false,
    };
    if is_float {
        let f: f64 = body.parse().map_err(|_| bad())?;
        return Ok(Value::Float(if neg { -f } else { f }));
    }
    if digits.is_empty() {
        return Err(bad());
    }
    let mag = u64::from_str_radix(digits, radix).map_err(|e| {
        if e.kind() == &std::num::IntErrorKind::PosOverflow {
            format!("integer overflow: {text:?}")
        } else {
            bad()
        }
    })?;
    if neg {
        if mag <= i64::MAX as u64 + 1 {
            Ok(Value::Int((mag as i128).wrapping_neg() as i64))
        } else {
            Err(format!("integer overflow: {text:?}"))
        }
    } else {
        Ok(i64::try_from(mag).map_or(Value::Uint(mag), Value::Int))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_number("42"), Ok(Value::Int(42)));
        assert_eq!(parse_number("-42"), Ok(Value::Int(-42)));
        assert_eq!(parse_number("+7"), Ok(Value::Int(7)));
        assert_eq!(parse_number("0x1F"), Ok(Value::Int(31)));
        assert_eq!(parse_number("0o17"), Ok(Value::Int(15)));
        assert_eq!(parse_number("017"), Ok(Value::Int(15)));
        assert_eq!(parse_number("0b101"), Ok(Value::Int(5)));
        assert_eq!(parse_number("1_000"), Ok(Value::Int(1000)));
        assert_eq!(parse_number("1.5"), Ok(Value::Float(1.5)));
        assert_eq!(parse_number("1e3"), Ok(Value::Float(1000.0)));
        assert_eq!(parse_number(".5"), Ok(Value::Float(0.5)));
        assert_eq!(
            parse_number("-9223372036854775808"),
            Ok(Value::Int(i64::MIN))
        );
        assert_eq!(
            parse_number("18446744073709551615"),
            Ok(Value::Uint(u64::MAX))
        );
        assert!(parse_number("18446744073709551616").is_err());
        assert!(parse_number("08").is_err());
        assert!(parse_number("-").is_err());
        assert!(parse_number("1i").is_err());
        assert!(parse_number("0x1p3").is_err());
    }
}
